"""Where a training step's CPU time goes: each 3x3 conv layer's forward, input gradient and
weight gradient (XLA's lowering against ``conv3x3_weight_grad``), at batch 128.

    python benchmarks/bench_conv.py
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from mnist_cnn_model import _conv_same, conv3x3_weight_grad

LAYERS = [(28, 1, 32), (28, 32, 32), (14, 32, 64), (14, 64, 64), (7, 64, 128), (7, 128, 128)]


def ms(fn, *args, repeat=10):
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn(*args)
    jax.block_until_ready(out)
    return 1000 * (time.perf_counter() - t0) / repeat


def main(batch=128):
    rng = np.random.default_rng(0)
    print(f"| layer (batch {batch}) | forward | input gradient | weight gradient (XLA) | weight gradient (ours) |")
    print("|---|---|---|---|---|")
    for h, cin, cout in LAYERS:
        x = rng.random((batch, h, h, cin), np.float32)
        w = rng.random((3, 3, cin, cout), np.float32)
        g = rng.random((batch, h, h, cout), np.float32)
        fwd = jax.jit(_conv_same)
        dx = jax.jit(lambda x, w, g: jax.vjp(lambda x_: _conv_same(x_, w), x)[1](g)[0])
        dw_xla = jax.jit(lambda x, w, g: jax.vjp(lambda w_: _conv_same(x, w_), w)[1](g)[0])
        dw_ours = jax.jit(conv3x3_weight_grad)
        err = float(np.abs(dw_ours(x, g) - dw_xla(x, w, g)).max() / np.abs(dw_xla(x, w, g)).max())
        assert err < 1e-4, err
        print(f"| {h}×{h}, {cin}→{cout} | {ms(fwd, x, w):.1f} ms | {ms(dx, x, w, g):.1f} ms "
              f"| {ms(dw_xla, x, w, g):.1f} ms | {ms(dw_ours, x, g):.1f} ms |")


if __name__ == "__main__":
    main()

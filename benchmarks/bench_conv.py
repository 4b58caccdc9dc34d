"""Where a training step's CPU time goes: each 3x3 conv layer's forward, input gradient and
weight gradient, XLA's own lowering against the project's ``conv3x3`` (chunked im2col
matmuls), at batch 128.

    python benchmarks/bench_conv.py
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from mnist_cnn_model import _conv_same, conv3x3

LAYERS = [(28, 1, 32), (28, 32, 32), (14, 32, 64), (14, 64, 64), (7, 64, 128), (7, 128, 128)]


def ms(fn, *args, repeat=10):
    """Best of three means over ``repeat`` calls, in milliseconds."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeat):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, 1000 * (time.perf_counter() - t0) / repeat)
    return best


def timings(conv, x, w, g):
    fwd = jax.jit(conv)
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0])
    both = jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g))
    return [ms(fwd, x, w), ms(dx, x, w, g), ms(dw, x, w, g), ms(both, x, w, g)]


def main(batch=128):
    rng = np.random.default_rng(0)
    print(f"batch {batch}, ms per call, XLA / ours")
    print("| layer | forward | input gradient | weight gradient | both gradients |")
    print("|---|---|---|---|---|")
    total = np.zeros((2, 4))
    for h, cin, cout in LAYERS:
        x = rng.random((batch, h, h, cin), np.float32)
        w = rng.random((3, 3, cin, cout), np.float32)
        g = rng.random((batch, h, h, cout), np.float32)
        ref, ours = timings(_conv_same, x, w, g), timings(conv3x3, x, w, g)
        total += [ref, ours]
        print(f"| {h}×{h}, {cin}→{cout} | " + " | ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(ref, ours)) + " |")
    print("| all six | " + " | ".join(f"{a:.1f} / {b:.1f}" for a, b in total.T) + " |")


if __name__ == "__main__":
    main()

"""Where a training step's CPU time goes, one 3x3 conv layer at a time, batch 128.

Compares XLA's own lowering with two alternatives: the weight gradient of the model's
``conv3x3`` (chunked im2col matmuls; its forward and input gradient are XLA's), and a fully
im2col conv defined below (forward and input gradient as chunked im2col matmuls too), which
wins layer by layer but lost in the real workloads once the CPU is split into one JAX device
per core (README_MNIST_XAI.md, "Where the CPU time goes"), so the model does not use it.

    python benchmarks/bench_conv.py
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import cli  # noqa: E402
from mnist_cnn_model import _conv_same, _patches3x3, conv3x3_weight_grad, images_per_chunk

LAYERS = [(28, 1, 32), (28, 32, 32), (14, 32, 64), (14, 64, 64), (7, 64, 128), (7, 128, 128)]
CHUNK_BYTES = 1 << 21  # ~2 MB of patches per chunk: the best of 1-16 MB here


def _patch_matmul(x, w2d):
    k, h, w, c = x.shape
    return (_patches3x3(x).reshape(-1, 9 * c) @ w2d).reshape(k, h, w, w2d.shape[-1])


def _im2col_forward(x, w):
    n, h, wd, c = x.shape
    if c == 1:
        return _conv_same(x, w)
    k = images_per_chunk(n, h * wd * 9 * c * 4, CHUNK_BYTES)
    w2d = w.reshape(9 * c, w.shape[-1])
    return lax.map(lambda xc: _patch_matmul(xc, w2d), x.reshape(n // k, k, h, wd, c)).reshape(n, h, wd, -1)


@jax.custom_vjp
def im2col_conv(x, w):
    """3x3 SAME conv whose forward, dx and dw are all chunked im2col matmuls."""
    return _im2col_forward(x, w)


def _fwd(x, w):
    return _im2col_forward(x, w), (x, w)


def _bwd(res, g):
    x, w = res
    n, h, wd, c = x.shape
    o = g.shape[-1]
    if c == 1:
        return jax.vjp(lambda x_: _conv_same(x_, w), x)[1](g)[0], conv3x3_weight_grad(x, g)
    w_t = jnp.flip(w, (0, 1)).swapaxes(2, 3).reshape(9 * o, c)  # dx = conv(g, flipped kernel)
    k = images_per_chunk(n, h * wd * 9 * max(c, o) * 4, CHUNK_BYTES)

    def body(acc, xg):
        xc, gc = xg
        acc = acc + lax.dot_general(_patches3x3(xc).reshape(-1, 9 * c), gc.reshape(-1, o),
                                    (((0,), (0,)), ((), ())))
        return acc, _patch_matmul(gc, w_t)

    dw, dx = lax.scan(body, jnp.zeros((9 * c, o), jnp.float32),
                      (x.reshape(n // k, k, h, wd, c), g.reshape(n // k, k, h, wd, o)))
    return dx.reshape(x.shape), dw.reshape(w.shape)


im2col_conv.defvjp(_fwd, _bwd)


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
    ref = jax.vjp(_conv_same, x, w)[1](g)
    for a, b in zip(both(x, w, g), ref):  # same numbers first
        assert float(jnp.abs(a - b).max() / jnp.abs(b).max()) < 1e-4
    return [ms(fwd, x, w), ms(dx, x, w, g), ms(dw, x, w, g), ms(both, x, w, g)]


def main(batch=128):
    rng = np.random.default_rng(0)
    print(f"batch {batch}, ms per call, XLA's conv / all-im2col conv (dw: the model's conv3x3 weight gradient)")
    print("| layer | forward | input gradient | weight gradient | both gradients |")
    print("|---|---|---|---|---|")
    total = np.zeros((2, 4))
    for h, cin, cout in LAYERS:
        x = jnp.asarray(rng.random((batch, h, h, cin), np.float32))
        w = jnp.asarray(rng.random((3, 3, cin, cout), np.float32))
        g = jnp.asarray(rng.random((batch, h, h, cout), np.float32))
        ref, ours = timings(_conv_same, x, w, g), timings(im2col_conv, x, w, g)
        total += [ref, ours]
        print(f"| {h}×{h}, {cin}→{cout} | " + " | ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(ref, ours)) + " |")
    print("| all six | " + " | ".join(f"{a:.1f} / {b:.1f}" for a, b in total.T) + " |")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    args = parser.parse_args()
    if args.batch_size < 1:
        parser.error(f"--batch-size: expected a positive integer, got {args.batch_size}")
    main(args.batch_size)

"""Where an explanation call's time goes: the compiled work alone against the whole call.

    python benchmarks/bench_xai_overhead.py --data-dir ../shared/data/mnist --num-images 10000
    python benchmarks/bench_xai_overhead.py --methods integrated_gradients --chunk-sizes 80,163,400

For each method (and each call size given), on the shipped checkpoint:

* ``whole``: ``explainer.attribute(params, batch_stats, images)`` from host numpy to host
  numpy, as a user calls it (input checks, chunking, transfers included);
* ``device``: the same compiled calls on inputs already on the device, outputs left there,
  waited for once at the end: the floor the whole call could reach.

Both after an untimed warm-up that compiles the shapes; the best of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cpu_devices import use_one_device_per_core  # noqa: E402

use_one_device_per_core()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mnist_xai_visualizations as X  # noqa: E402
from mnist_checkpoint import load_checkpoint  # noqa: E402
from mnist_data import load_test_split  # noqa: E402


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--num-images", type=int, default=10000)
    p.add_argument("--methods", default="gradcam,saliency,integrated_gradients,occlusion")
    p.add_argument("--chunk-sizes", default="", help="comma-separated call sizes (default: each method's own)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    params, batch_stats, model, _ = load_checkpoint(None)
    variables = {"params": params, "batch_stats": batch_stats}
    images = load_test_split(args.data_dir).images[:args.num_images].astype(np.float32) / 255.0
    n = len(images)
    sizes = [int(c) for c in args.chunk_sizes.split(",") if c] or [None]
    print(f"# {n} digits on {jax.devices()[0].device_kind}, jax {jax.__version__}; best of {args.repeats}\n")
    print("| method | images a call | whole call maps/s | compiled work alone maps/s | share outside |")
    print("|---|---|---|---|---|")
    for name in args.methods.split(","):
        for size in sizes:
            kw = {"steps": 50} if name == "integrated_gradients" else {}
            e = X.METHODS[name](model, chunk_size=size, **kw)
            c = e.chunk_size
            e.attribute(params, batch_stats, images[:c])  # compiles the call's shape
            whole = best_of(args.repeats, lambda: e.attribute(params, batch_stats, images))
            pad = (-n) % c if n > c else 0
            x = np.concatenate([images, np.zeros((pad, 28, 28, 1), np.float32)])
            chunks = [jax.device_put(x[i:i + min(c, n)]) for i in range(0, len(x), min(c, n))]
            t = jnp.full((len(chunks[0]),), -1, jnp.int32)
            key = jax.random.PRNGKey(0)
            jax.block_until_ready(e._jitted(variables, chunks[0], t, key))

            def device_only():
                jax.block_until_ready([e._jitted(variables, xc, t, key) for xc in chunks])
            alone = best_of(args.repeats, device_only)
            print(f"| {name} | {c} | {n / whole:,.0f} | {n / alone:,.0f} | {1 - alone / whole:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

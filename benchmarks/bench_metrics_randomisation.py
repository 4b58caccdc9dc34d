"""Time each randomisation metric beside Quantus 0.6.0 on the same maps, randomised weights,
other classes and noise, in one process.

    /work/refvenv/bin/python benchmarks/bench_metrics_randomisation.py [--images 64] [--smooth-samples 10]

``rows(n_images)`` -> ``[{"name", "n", "ours_s", "quantus_s", "ratio"}]`` (``ratio`` = Quantus's
seconds / ours), for ``benchmarks/bench_metrics.py``. Setup as bench_metrics_robustness.py
(``bench_input``) and make_reference_metrics_randomisation.py: the re-initialised groups are
``gaussian_params(params, PRNGKey(7))``, given to Quantus by replacing its layer generator
with our stages ported to torch (``our_stages``; the porting is inside Quantus's timed loop, as
its own ``reset_parameters`` would be), its ``np.random`` calls answered with our draws. Ours is
timed on its second call (the first compiles the explainer for each batch shape).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench_metrics_robustness import bench_input, timed  # noqa: E402
from make_reference_metrics_randomisation import PER_IMAGE, fresh_for, our_stages, patched_numpy_random  # noqa: E402

SMOOTH_SAMPLES = 10


def rows(n_images: int = 64, smooth_samples: int = SMOOTH_SAMPLES) -> list[dict]:
    import quantus

    from mnist_xai.metrics import evaluate
    from mnist_xai.metrics import randomisation as RA

    warnings.filterwarnings("ignore")
    inp, net = bench_input(n_images)
    fresh = fresh_for(inp.params)
    bs = inp.batch_stats
    x_nchw = np.ascontiguousarray(inp.images.transpose(0, 3, 1, 2))
    common = dict(model=net, x_batch=x_nchw, y_batch=inp.targets, channel_first=True, explain_func=quantus.explain,
                  explain_func_kwargs={"method": "Saliency"}, batch_size=n_images)
    a_batch = inp.maps[:, None]

    def row(name, ours, theirs):
        ours()  # compile
        ours_s = timed(ours)
        quantus_s = timed(theirs)
        return {"name": name, "n": n_images, "ours_s": ours_s, "quantus_s": quantus_s, "ratio": quantus_s / ours_s}

    out = []

    def mprt():
        with our_stages(RA.cascade(inp, fresh, None, "top_down"), bs):
            quantus.MPRT(layer_order="top_down", normalise_func_kwargs=PER_IMAGE, disable_warnings=True)(
                a_batch=a_batch, **common)
    out.append(row("model_parameter_randomisation",
                   lambda: evaluate("model_parameter_randomisation", inp, fresh_params=fresh), mprt))

    off = RA.off_targets(jax.random.fold_in(inp.key, RA.OFF_CLASS_SALT), inp.targets, 10)
    idx = off - (off > inp.targets)

    def random_logit():
        with patched_numpy_random("randint", lambda low, high, size=None: idx.copy()):
            quantus.RandomLogit(num_classes=10, normalise_func_kwargs=PER_IMAGE, disable_warnings=True)(
                a_batch=a_batch, **common)
    out.append(row("random_logit", lambda: evaluate("random_logit", inp), random_logit))

    noisy = RA.smooth_inputs(inp, RA.smooth_noise(inp, smooth_samples), 0.1)
    std = 0.1 * (x_nchw.max(axis=(1, 2, 3), keepdims=True) - x_nchw.min(axis=(1, 2, 3), keepdims=True))
    eps = [(np.ascontiguousarray(c.transpose(0, 3, 1, 2)) - x_nchw) / std for c in noisy[:-1]]
    calls = [0]

    def randn(*shape):
        calls[0] += 1
        return eps[(calls[0] - 1) % len(eps)]

    def smooth():
        with our_stages(RA.cascade(inp, fresh, None, "bottom_up"), bs), patched_numpy_random("randn", randn):
            quantus.SmoothMPRT(nr_samples=smooth_samples, noise_magnitude=0.1, layer_order="bottom_up",
                               normalise_func_kwargs=PER_IMAGE, disable_warnings=True)(a_batch=None, **common)
    out.append(row("smooth_mprt", lambda: evaluate("smooth_mprt", inp, fresh_params=fresh, samples=smooth_samples),
                   smooth))

    def efficient():
        with our_stages(RA.cascade(inp, fresh, None, "bottom_up"), bs):
            quantus.EfficientMPRT(complexity_func_kwargs={"n_bins": 100}, disable_warnings=True)(
                a_batch=a_batch, **common)
    out.append(row("efficient_mprt", lambda: evaluate("efficient_mprt", inp, fresh_params=fresh), efficient))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--smooth-samples", type=int, default=SMOOTH_SAMPLES)
    args = parser.parse_args(argv)
    if args.images < 1 or args.smooth_samples < 2:
        print("error: --images: expected a whole number >= 1, --smooth-samples >= 2", file=sys.stderr)
        return 2
    table = rows(args.images, args.smooth_samples)
    print(f"{'metric':32s} {'n':>4s} {'ours s':>8s} {'quantus s':>10s} {'ratio':>7s}")
    for r in table:
        print(f"{r['name']:32s} {r['n']:4d} {r['ours_s']:8.2f} {r['quantus_s']:10.2f} {r['ratio']:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

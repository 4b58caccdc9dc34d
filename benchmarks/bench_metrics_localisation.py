"""Localisation metrics, ours beside Quantus 0.6.0, on the same maps and masks, in one process.

    /work/refvenv/bin/python benchmarks/bench_metrics_localisation.py [--n-images 64]   # the reference venv

``rows(n_images)``: the first ``n_images`` sample digits (sample_data/mnist_test_sample.npz,
cycled past 200), maps jax.random.normal(PRNGKey(0)) (no ties), masks ``ink_masks``; each
metric with the options of its first config in make_reference_metrics_localisation.CONFIGS.
Ours is timed on its second call (the first one warms up; these metrics are numpy, nothing
compiles, so the two differ little), Quantus on one call; seconds are wall-clock, best of
``repeats``. The lead's benchmarks/bench_metrics.py collects every family's ``rows``.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402

FAMILY = "localisation"


def sample_digits(n_images: int) -> np.ndarray:
    with np.load(ROOT / "sample_data" / "mnist_test_sample.npz") as d:
        images = d["images"].astype(np.float32) / 255.0
    return np.resize(images, (n_images, 28, 28)).reshape(n_images, 28, 28, 1)


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def first_configs(configs) -> dict:
    """Our metric name -> (Quantus class, options) of its first config."""
    out = {}
    for cls, metric, options in configs.values():
        out.setdefault(metric, (cls, options))
    return out


def time_maps_metrics(configs, images, maps, masks, repeats: int = 3) -> list[dict]:
    """Rows for metrics that read maps (and masks) only."""
    import quantus

    from make_reference_metrics_localisation import PER_MAP
    from mnist_xai.metrics import MetricInput, evaluate

    inp = MetricInput(images, targets=0, maps=maps, masks=masks)
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    s = None if masks is None else masks[:, None]
    rows = []
    for metric, (cls, options) in first_configs(configs).items():
        evaluate(metric, inp, **options)  # warm-up
        ours = best_of(lambda: evaluate(metric, inp, **options), repeats)
        q = getattr(quantus, cls)(disable_warnings=True, normalise_func_kwargs=PER_MAP, **options)
        theirs = best_of(lambda: q(model=None, x_batch=x, y_batch=np.zeros(len(x), int),
                                   a_batch=maps.astype(np.float64), s_batch=s), repeats)
        rows.append({"name": metric, "n": len(images), "ours_s": ours, "quantus_s": theirs, "ratio": theirs / ours})
    return rows


def rows(n_images: int = 64) -> list[dict]:
    import jax

    from make_reference_metrics_localisation import CONFIGS
    from mnist_xai.metrics.localisation import ink_masks

    warnings.filterwarnings("ignore")
    images = sample_digits(n_images)
    maps = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (n_images, 28, 28)), np.float32)
    return time_maps_metrics(CONFIGS, images, maps, ink_masks(images))


def print_table(family: str, table: list[dict]) -> None:
    print(f"| {family} metric | images | ours (s) | Quantus 0.6.0 (s) | Quantus / ours |")
    print("|---|---|---|---|---|")
    for r in table:
        print(f"| {r['name']} | {r['n']} | {r['ours_s']:.4f} | {r['quantus_s']:.4f} | {r['ratio']:.1f}x |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-images", type=int, default=64)
    args = p.parse_args(argv)
    if args.n_images < 1:
        p.exit(2, "error: --n-images: expected an integer >= 1\n")
    print_table(FAMILY, rows(args.n_images))


if __name__ == "__main__":
    main()

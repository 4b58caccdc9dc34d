"""Complexity metrics, ours beside Quantus 0.6.0, on the same maps, in one process.

    /work/refvenv/bin/python benchmarks/bench_metrics_complexity.py [--n-images 64]   # the reference venv

As bench_metrics_localisation.py (same digits and maps; ours timed after a warm-up call, best
of 3, wall-clock): each metric with the options of its first config in
make_reference_metrics_complexity.CONFIGS.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402

from bench_metrics_localisation import print_table, sample_digits, time_maps_metrics  # noqa: E402

FAMILY = "complexity"


def rows(n_images: int = 64) -> list[dict]:
    import jax

    from make_reference_metrics_complexity import CONFIGS

    warnings.filterwarnings("ignore")
    images = sample_digits(n_images)
    maps = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (n_images, 28, 28)), np.float32)
    return time_maps_metrics(CONFIGS, images, maps, None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-images", type=int, default=64)
    args = p.parse_args(argv)
    if args.n_images < 1:
        p.exit(2, "error: --n-images: expected an integer >= 1\n")
    print_table(FAMILY, rows(args.n_images))


if __name__ == "__main__":
    main()

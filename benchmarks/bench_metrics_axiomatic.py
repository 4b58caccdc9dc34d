"""Axiomatic metrics, ours beside Quantus 0.6.0, same weights and maps, in one process.

    /work/refvenv/bin/python benchmarks/bench_metrics_axiomatic.py [--n-images 64]   # the reference venv

Models as in make_reference_metrics_axiomatic.py: completeness and non-sensitivity on the
``cnn`` MNISTCNN of tests/fixtures/reference_maps.npz (ported to torch by
``bench_xai.build_torch_model``), input invariance on its ``InvarianceNet`` (Quantus needs a
first conv without padding). Images: the first ``n_images`` sample digits; maps: our Saliency
of them (Quantus is given the same array). Non-sensitivity with Quantus's defaults (one pixel a
step: 784 forward passes an image on either side). Ours is timed on its second call (the first
compiles), best of ``repeats`` (1 for non-sensitivity), Quantus on one call each; wall-clock.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import numpy as np  # noqa: E402

from bench_metrics_localisation import best_of, print_table, sample_digits  # noqa: E402

FAMILY = "axiomatic"


def rows(n_images: int = 64, repeats: int = 3) -> list[dict]:
    import bench_xai  # noqa: F401  (JAX CPU devices as the other benchmarks)
    import quantus
    import torch

    import mnist_xai.methods as X
    from make_reference_metrics_axiomatic import (PER_MAP, InvarianceNet, inputs, invariance_params,
                                                  torch_invariance_net)
    from mnist_cnn_model import MNISTCNN
    from mnist_xai.metrics import MetricInput, evaluate

    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    _, _, variables, _ = inputs()
    images = sample_digits(n_images)
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    e = X.Saliency(MNISTCNN())
    maps = e.attribute(variables["params"], variables["batch_stats"], images)
    targets = np.asarray(e.logits(e.target.variables(variables["params"], variables["batch_stats"], images.shape[1:]),
                                  images)).argmax(1)
    inp = MetricInput(images, targets=targets, maps=maps, explainer=e, params=variables["params"],
                      batch_stats=variables["batch_stats"])
    net = bench_xai.build_torch_model(variables["params"], variables["batch_stats"], tie_splitting_pool=False)
    a64 = maps.astype(np.float64)
    out = []

    def row(name, ours_fn, theirs_fn, reps):
        ours_fn()  # warm-up: compiles
        ours = best_of(ours_fn, reps)
        theirs = best_of(theirs_fn, 1)
        out.append({"name": name, "n": n_images, "ours_s": ours, "quantus_s": theirs, "ratio": theirs / ours})

    q = quantus.Completeness(normalise=False, abs=False, disable_warnings=True)
    row("completeness", lambda: evaluate("completeness", inp, baseline="black"),
        lambda: q(model=net, x_batch=x, y_batch=targets, a_batch=a64, batch_size=64), repeats)
    q = quantus.NonSensitivity(disable_warnings=True, normalise_func_kwargs=PER_MAP)
    row("non_sensitivity", lambda: evaluate("non_sensitivity", inp),
        lambda: q(model=net, x_batch=x, y_batch=targets, a_batch=a64, batch_size=64), 1)

    params = invariance_params()
    s = X.Saliency(InvarianceNet())
    inv = MetricInput(images, targets=targets, maps=s.attribute(params, None, images, targets), explainer=s,
                      params=params)
    q = quantus.InputInvariance(disable_warnings=True)
    tnet = torch_invariance_net(params)
    row("input_invariance", lambda: evaluate("input_invariance", inv),
        lambda: q(model=tnet, x_batch=x, y_batch=targets, a_batch=None, explain_func=quantus.explain,
                  explain_func_kwargs={"method": "Saliency"}, batch_size=64), repeats)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-images", type=int, default=64)
    args = p.parse_args(argv)
    if args.n_images < 1:
        p.exit(2, "error: --n-images: expected an integer >= 1\n")
    print_table(FAMILY, rows(args.n_images))


if __name__ == "__main__":
    main()

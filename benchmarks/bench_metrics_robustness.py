"""Time each robustness metric beside Quantus 0.6.0 (and Captum's sensitivity_max) on the same
maps and perturbations, in one process.

    /work/refvenv/bin/python benchmarks/bench_metrics_robustness.py [--images 64] [--samples 50]

``rows(n_images)`` -> ``[{"name", "n", "ours_s", "quantus_s", "ratio"}]`` (``ratio`` = Quantus's
seconds / ours), for ``benchmarks/bench_metrics.py``. Setup as
make_reference_metrics_robustness.py: MNISTCNN with the weights of tests/fixtures/reference_maps.npz
(torch twin for Quantus), the first ``n_images`` digits of sample_data/mnist_test_sample.npz,
their predicted classes, our Saliency maps given to both; each perturbation drawn by our
``perturbations`` and fed to Quantus through ``perturb_func`` (its own noise is not timed;
ours is). Quantus explains with ``quantus.explain(method="Saliency")`` (captum), ``batch_size``
= n_images. Ours is timed on its SECOND call (the first compiles the explainer for the
perturbed batch shape); Quantus has nothing to compile. Torch uses the process's CPU threads
(``torch.get_num_threads()``), JAX its XLA CPU devices.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import bench_xai  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from make_reference_metrics_robustness import CASES, feeder  # noqa: E402
from reference_models import unflatten  # noqa: E402

SAMPLES = 50


def bench_input(n_images: int):
    """(our MetricInput of n digits with maps, the torch twin)."""
    from mnist_cnn_model import MNISTCNN
    import mnist_xai_visualizations as X
    from mnist_xai.metrics import MetricInput

    with np.load(ROOT / "tests" / "fixtures" / "reference_maps.npz") as d:
        params, bs = unflatten(d, "cnn/params"), unflatten(d, "cnn/batch_stats")
    with np.load(ROOT / "sample_data" / "mnist_test_sample.npz") as d:
        images = d["images"][:n_images].astype(np.float32) / 255.0
    if len(images) < n_images:
        raise SystemExit(f"error: --images: expected at most {len(images)} (the shipped sample), got {n_images}")
    inp = MetricInput(images[..., None] if images.ndim == 3 else images, explainer=X.Saliency(MNISTCNN()),
                      params=params, batch_stats=bs, key=jax.random.PRNGKey(0))
    inp.maps = inp.explain()
    return inp, bench_xai.build_torch_model(params, bs, tie_splitting_pool=False)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rows(n_images: int = 64, samples: int = SAMPLES) -> list[dict]:
    import quantus
    import torch
    from captum.attr import Saliency
    from captum.metrics import sensitivity_max

    from mnist_xai.metrics import evaluate
    from mnist_xai.metrics import robustness as R

    warnings.filterwarnings("ignore")
    inp, net = bench_input(n_images)
    x_nchw = np.ascontiguousarray(inp.images.transpose(0, 3, 1, 2))
    out = []
    for name, (cls, kwargs, options, (kind, a, b)) in CASES.items():
        def ours():
            evaluate(name, inp, samples=samples, **options)
        ours()  # compile
        ours_s = timed(ours)
        xp = R.perturbations(inp, range(samples), kind, a, b)
        metric = getattr(quantus, cls)(nr_samples=samples, perturb_func=feeder(xp), disable_warnings=True, **kwargs)
        quantus_s = timed(lambda: metric(model=net, x_batch=x_nchw, y_batch=inp.targets, a_batch=inp.maps[:, None],
                                         channel_first=True, explain_func=quantus.explain,
                                         explain_func_kwargs={"method": "Saliency"}, batch_size=n_images))
        out.append({"name": name, "n": n_images, "ours_s": ours_s, "quantus_s": quantus_s,
                    "ratio": quantus_s / ours_s})

    radius = 0.02
    xp = R.perturbations(inp, range(samples), "uniform", -radius, radius)
    expanded = torch.from_numpy(np.ascontiguousarray(xp.transpose(1, 0, 4, 2, 3)).reshape(-1, *x_nchw.shape[1:]))

    def captum():
        sensitivity_max(lambda x, target: Saliency(net).attribute(x, target=target, abs=True),
                        torch.from_numpy(x_nchw), perturb_func=lambda x, r: expanded, perturb_radius=radius,
                        n_perturb_samples=samples, target=torch.as_tensor(inp.targets, dtype=torch.long))

    def ours():
        evaluate("max_sensitivity", inp, samples=samples, radius=radius)
    ours()
    ours_s = timed(ours)
    captum_s = timed(captum)
    out.append({"name": "max_sensitivity (vs captum sensitivity_max)", "n": n_images, "ours_s": ours_s,
                "quantus_s": captum_s, "ratio": captum_s / ours_s})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--samples", type=int, default=SAMPLES)
    args = parser.parse_args(argv)
    if args.images < 1 or args.samples < 1:
        print("error: --images and --samples: expected whole numbers >= 1", file=sys.stderr)
        return 2
    table = rows(args.images, args.samples)
    print(f"{'metric':48s} {'n':>4s} {'ours s':>8s} {'quantus s':>10s} {'ratio':>7s}   ({args.samples} perturbations)")
    for r in table:
        print(f"{r['name']:48s} {r['n']:4d} {r['ours_s']:8.2f} {r['quantus_s']:10.2f} {r['ratio']:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

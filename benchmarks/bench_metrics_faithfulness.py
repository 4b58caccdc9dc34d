"""Speed of the faithfulness metrics beside Quantus 0.6.0 (and Captum's infidelity), same maps, one process.

    /work/refvenv/bin/python benchmarks/bench_metrics_faithfulness.py --num-images 64   # the reference venv

``rows(n_images)`` returns one dict per metric (name, n, ours_s, quantus_s, ratio = quantus_s /
ours_s); ``main()`` prints them as a markdown table. ``benchmarks/bench_metrics.py`` calls
``rows`` of every family.

What is timed
-------------
* Net and images: the shipped checkpoint's MNISTCNN as stored in tests/fixtures/reference_maps.npz
  (bfloat16-rounded weights) and its torch port (``bench_xai.build_torch_model``, eval mode,
  logits checked equal to 1e-4), on the first ``n_images`` digits of sample_data; maps: our
  Saliency of them (max |value| 1 per map, so both sides' normalisation is the identity).
* Ours: ``evaluate(name, MetricInput(...), **options)`` timed on its second call (the first
  compiles the forward for the block shapes; the report says so), on all CPU cores XLA uses.
* Quantus: the metric's ``__call__`` with the same options, ``batch_size=64``, ``device="cpu"``,
  torch on the same threads (``torch.set_num_threads(os.cpu_count())``). Infidelity:
  ``captum.metrics.infidelity`` with the same Gaussian noise (Quantus's Infidelity perturbs
  patches instead: see faithfulness.infidelity).
* Options (``OPTIONS``): Quantus's defaults, except where its default would take tens of
  minutes here (pixel-flipping, estimate and monotonicity at 8 features per step, monotonicity
  correlation at 56 features and 10 samples, faithfulness correlation at 100 runs); the same
  options on both sides. IROF: both sides on our 4 px grid segments (Quantus's slic replaced by
  it, so the segmentation's cost is not counted for Quantus).

Measured (2026-12-03, 64 digits, the 2-core CPU shared with six other jobs, load average ~20, so
both sides ran at a fraction of a core; ratios, Quantus s / ours s): pixel-flipping 8.3x
(284 / 34), region perturbation 5.7x, selectivity 5.1x, faithfulness correlation 3.7x,
faithfulness estimate 3.9x, monotonicity 6.1x, monotonicity correlation 7.5x, IROF 6.7x,
infidelity (vs Captum) 3.7x, sufficiency 4.1x. Both sides run the same forward passes (the same
number of perturbed images through the same network), and a profile of ours shows 99% of the
time inside the compiled forward (region perturbation: 18.7 of 18.9 s), so what is left to gain
is the forward's own speed, not the loop around it: the >= 20x of issue 24 is not reached on this
CPU by batching alone.

Rerun on the idle machine (2026-12-04 02:46 UTC, load 0.7 before it): pixel-flipping 1.4x
(1.57 / 1.12 s), region perturbation 1.3x, selectivity 1.5x, faithfulness correlation 1.3x (0.9x
at 02:41, before ``random_subsets`` moved from XLA's sort to numpy's), faithfulness estimate 1.5x,
monotonicity 1.5x, monotonicity correlation 1.7x, IROF 1.6x, infidelity (vs Captum) 5.8x,
sufficiency 2.7x. The loaded run's ratios measured the load: torch's
two threads wait for each other at every operation and slow down several times more than XLA
when another job takes a core. Idle, both sides run at their forward's speed: pixel-flipping's
6,272 perturbed digits at 6,150/s here (the shared forward alone: 6,313/s) and 4,150/s in torch.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import numpy as np  # noqa: E402

OPTIONS = {
    "pixel_flipping": {"features_in_step": 8},
    "region_perturbation": {"patch_size": 4},
    "selectivity": {"patch_size": 4},
    "faithfulness_correlation": {"nr_runs": 100, "subset_size": 224},
    "faithfulness_estimate": {"features_in_step": 8},
    "monotonicity": {"features_in_step": 8},
    "monotonicity_correlation": {"nr_samples": 10, "features_in_step": 56},
    "irof": {"segment_size": 4},
    "infidelity": {"n_perturb_samples": 10, "noise_std": 0.1},
    "sufficiency": {"threshold": 0.6},
}


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rows(n_images: int = 64) -> list[dict]:
    import jax
    import quantus
    import torch
    from captum.metrics import infidelity as captum_infidelity

    import bench_xai
    from make_reference_maps import OUT as MAPS
    from mnist_cnn_model import MNISTCNN
    from mnist_xai.metrics import MetricInput, evaluate
    from mnist_xai.metrics import faithfulness as F
    from mnist_xai_visualizations import Saliency
    from reference_models import unflatten

    warnings.filterwarnings("ignore")
    if not hasattr(np, "trapz"):  # numpy 2.4 removed it; Quantus 0.6.0's calculate_auc calls it
        np.trapz = np.trapezoid
    torch.set_num_threads(os.cpu_count() or 1)
    with np.load(MAPS) as d:
        ref = {k: d[k] for k in d.files}
    params, stats = unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats")
    net = bench_xai.build_torch_model(params, stats, tie_splitting_pool=False).eval()
    with np.load(ROOT / "sample_data" / "mnist_test_sample.npz") as d:
        x = (d["images"][:n_images] / 255.0).astype(np.float32).reshape(-1, 28, 28, 1)
    n = len(x)
    ex = Saliency(MNISTCNN())
    maps = ex.attribute(params, stats, x)
    maps = maps / np.abs(maps).reshape(n, -1).max(1)[:, None, None]
    inp = MetricInput(x, explainer=ex, params=params, batch_stats=stats, maps=maps)
    t = inp.targets.astype(np.int64)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        gap = np.abs(net(xt).numpy() - inp.logits(x)).max()
    assert gap < 1e-4, f"torch port differs from Flax by {gap}"
    call = dict(model=net, x_batch=x.transpose(0, 3, 1, 2).copy(), y_batch=t, a_batch=maps[:, None].copy(),
                device="cpu", batch_size=64)
    common = dict(normalise=False, disable_warnings=True, display_progressbar=False)
    o = OPTIONS
    grid = F.grid_segments(28, 28, o["irof"]["segment_size"])
    means = np.broadcast_to(x.reshape(n, -1).mean(1)[:, None, None, None], call["x_batch"].shape).copy()
    noise = torch.from_numpy(F.infidelity_noise(inp.key, n, 10, (28, 28, 1), 0.1).reshape(-1, 28, 28, 1)
                             .transpose(0, 3, 1, 2).copy())

    def ours_opts(name):
        return {k: v for k, v in o[name].items()}

    theirs = {
        "pixel_flipping": lambda: quantus.PixelFlipping(features_in_step=8, **common)(**call),
        "region_perturbation": lambda: quantus.RegionPerturbation(patch_size=4, **common)(**call),
        "selectivity": lambda: quantus.Selectivity(patch_size=4, **common)(**call),
        "faithfulness_correlation": lambda: quantus.FaithfulnessCorrelation(
            nr_runs=100, subset_size=224, return_aggregate=False, **common)(**call),
        "faithfulness_estimate": lambda: quantus.FaithfulnessEstimate(features_in_step=8, **common)(**call),
        "monotonicity": lambda: quantus.Monotonicity(features_in_step=8, **common)(**call),
        "monotonicity_correlation": lambda: quantus.MonotonicityCorrelation(
            nr_samples=10, features_in_step=56, **common)(**call),
        "irof": lambda: _irof(quantus, grid, means, common, call),
        "infidelity": lambda: captum_infidelity(net, lambda z: (noise, z - noise), xt,
                                                torch.from_numpy(maps[:, None].copy()), target=torch.from_numpy(t),
                                                n_perturb_samples=10),
        "sufficiency": lambda: quantus.Sufficiency(threshold=0.6, disable_warnings=True, normalise=False)(**call),
    }
    out = []
    for name, quantus_fn in theirs.items():
        evaluate(name, inp, **ours_opts(name))  # warm-up: compiles the forward for these block shapes
        ours_s = _timed(lambda: evaluate(name, inp, **ours_opts(name)))
        try:
            with torch.no_grad():
                quantus_s = _timed(quantus_fn)
        except Exception as e:  # noqa: BLE001 - a reference that breaks must not lose the other rows
            print(f"  {name}: the reference failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            quantus_s = float("nan")
        out.append({"name": name, "n": n, "ours_s": ours_s, "quantus_s": quantus_s, "ratio": quantus_s / ours_s,
                    "options": o[name]})
        print(f"  {name}: ours {ours_s:.2f} s, reference {quantus_s:.2f} s", file=sys.stderr, flush=True)
    del jax
    return out


def _irof(quantus, grid, means, common, call):
    from quantus.helpers import utils
    with _patched(utils, "get_superpixel_segments", lambda img, segmentation_method: grid.copy()):
        return quantus.IROF(perturb_baseline=means, return_aggregate=False, **common)(**call)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=64)
    args = p.parse_args(argv)
    if args.num_images < 2:
        print("error: --num-images: expected an integer >= 2", file=sys.stderr)
        raise SystemExit(2)
    table = rows(args.num_images)
    print(f"| metric | images | ours (s) | Quantus (s) | Quantus / ours | options |\n|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['name']} | {r['n']} | {r['ours_s']:.2f} | {r['quantus_s']:.2f} | {r['ratio']:.1f}x | "
              f"{r['options']} |")


if __name__ == "__main__":
    main()

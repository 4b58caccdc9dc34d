"""Regenerate tests/fixtures/quantus_faithfulness.npz: Quantus 0.6.0's faithfulness metrics (and
Captum's infidelity) on the shipped CNN's torch port, fed the same maps and the same random draws.

    /work/refvenv/bin/python benchmarks/make_reference_metrics_faithfulness.py   # the reference venv (requirements-reference.txt); ~1 min

(``--out PATH`` writes elsewhere.) tests/test_metrics_faithfulness.py compares ours with it; the
tests need no torch.

What it does
------------
* Net, images, targets: the ``cnn`` of tests/fixtures/reference_maps.npz (the shipped checkpoint's
  MNISTCNN, weights rounded to bfloat16 and stored there), ported to torch by
  ``bench_xai.build_torch_model`` (eval mode; the script stops unless torch's logits equal Flax's
  to 1e-4), on that fixture's digits ``DIGITS`` (four explained as their label, four as
  (label + 3) % 10), NCHW for Quantus.
* Maps ("maps", stored): the fixture's Saliency maps plus N(0, 0.05) noise (numpy seed 0, so they
  are signed and have no ties: Quantus sorts with quicksort, ours stably, and the two orders agree
  only without ties), each divided by its max |value|. With every max |value| exactly 1,
  Quantus's normalise_by_max over the whole batch and ours per image are both the identity, so
  ``normalise=False`` is passed to Quantus and the stored maps are what both sides rank.
* Random draws, made by OUR functions with jax.random.PRNGKey(0) (``MetricInput``'s default key)
  and fed to Quantus / Captum:
    - FaithfulnessCorrelation: ``np.random.choice`` (faithfulness_correlation.py:333-336, one call
      per run and image, run-major) is replaced for the call by an iterator over
      ``faithfulness.random_subsets(key, runs, n, 784, subset_size)``.
    - MonotonicityCorrelation: its "uniform" baseline calls ``np.random.uniform(size=batch)`` once
      per perturbation (helpers/utils.py:163-168, group-major, sample inner); replaced for the call
      by an iterator over ``jax.random.uniform(key, (groups, samples, n))``, as ours draws.
    - Infidelity (Captum): ``perturb_func`` returns our ``faithfulness.infidelity_noise`` I and
      x - I; Captum repeat-interleaves the inputs (row i * S + j = image i, sample j,
      captum/metrics/_core/infidelity.py:521-523), as our (N, S, ...) noise is laid out.
* IROF: Quantus's segmentation (``utils.get_superpixel_segments``, skimage slic) is replaced by
  our ``grid_segments(28, 28, 4)``, and ``perturb_baseline`` is an array of each image's own mean
  (Quantus's "mean" would be the mean of the whole current batch, see faithfulness.irof).
* numpy >= 2.4 has no ``np.trapz``, which Quantus 0.6.0's ``utils.calculate_auc`` calls (IROF):
  the script sets ``np.trapz = np.trapezoid`` (the same rule).
* Sufficiency runs on all 32 digits of reference_maps.npz ("maps32"): among 8 digits hardly two
  share a predicted class, and every value would be 0.
* Curves Quantus does not return (Monotonicity's booleans): a torch wrapper records every softmax
  output the metric asks for, and the target's column of each call is stored ("…/recorded").

Keys: "digits", "targets", "maps", "versions", and per metric "<metric>" (Quantus's per-image
return: curves (N, S) or values (N,)), "<metric>/options" (a JSON string of the options used).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import bench_xai  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from make_reference_maps import OUT as MAPS  # noqa: E402
from mnist_xai.metrics import faithfulness as F  # noqa: E402
from reference_models import unflatten  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "quantus_faithfulness.npz"
DIGITS = np.array([0, 1, 2, 3, 16, 17, 18, 19])
KEY = jax.random.PRNGKey(0)

#: the options of each metric, both sides (Quantus's names; ours take the same)
OPTIONS = {
    "pixel_flipping": {"features_in_step": 1, "perturb_baseline": "black"},
    "region_perturbation": {"patch_size": 8, "regions_evaluation": 100, "order": "morf", "perturb_baseline": "black"},
    "region_perturbation_lerf": {"patch_size": 4, "regions_evaluation": 20, "order": "lerf",
                                 "perturb_baseline": "black"},
    "selectivity": {"patch_size": 4, "perturb_baseline": "black"},
    "faithfulness_correlation": {"nr_runs": 30, "subset_size": 224, "perturb_baseline": "black"},
    "faithfulness_estimate": {"features_in_step": 7, "perturb_baseline": "black"},
    "monotonicity": {"features_in_step": 98, "perturb_baseline": "black"},
    "monotonicity_correlation": {"nr_samples": 6, "features_in_step": 56},
    "infidelity": {"n_perturb_samples": 12, "noise_std": 0.1},
    "sufficiency": {"threshold": 0.7},
    "sufficiency_default": {"threshold": 0.6},
    "irof": {"segment_size": 4},
}


def reference_inputs(ref, digits=DIGITS):
    """(images (N, 28, 28, 1), targets (N,), maps (N, 28, 28) float32 without ties, max |.| = 1)."""
    x = ref["images"][digits].astype(np.float32)
    t = ref["targets"][digits].astype(np.int64)
    rng = np.random.default_rng(0)
    m = ref["cnn/saliency"][digits].astype(np.float64)
    m = m / np.abs(m).reshape(len(m), -1).max(1)[:, None, None] + rng.normal(0, 0.05, m.shape)
    m = (m / np.abs(m).reshape(len(m), -1).max(1)[:, None, None]).astype(np.float32)
    assert all(len(np.unique(r)) == r.size for r in m.reshape(len(m), -1)), "maps with ties"
    assert np.all(np.abs(m).reshape(len(m), -1).max(1) == 1.0)
    return x, t, m


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def main(argv=None):
    import quantus
    import torch
    from captum.metrics import infidelity as captum_infidelity

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    if not hasattr(np, "trapz"):  # numpy 2.4 removed it; Quantus 0.6.0's calculate_auc (helpers/utils.py:1032) calls it
        np.trapz = np.trapezoid
    with np.load(MAPS) as d:
        ref = {k: d[k] for k in d.files}
    params, stats = unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats")
    net = bench_xai.build_torch_model(params, stats, tie_splitting_pool=False).eval()
    x, t, maps = reference_inputs(ref)
    n = len(x)

    from mnist_cnn_model import MNISTCNN
    ours = np.asarray(MNISTCNN().apply({"params": params, "batch_stats": stats}, x))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        theirs = net(xt).numpy()
    assert np.abs(ours - theirs).max() < 1e-4, f"torch port differs from Flax by {np.abs(ours - theirs).max()}"

    recorded: list = []

    class Recorder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            out = self.inner(z)
            recorded.append(torch.softmax(out, 1).detach().numpy())
            return out

    rec = Recorder(net).eval()
    xq, aq = x.transpose(0, 3, 1, 2).copy(), maps[:, None].copy()
    call = dict(model=net, x_batch=xq, y_batch=t, a_batch=aq, device="cpu", batch_size=64)
    common = dict(normalise=False, disable_warnings=True, display_progressbar=False)
    out = {"digits": DIGITS, "targets": t, "maps": maps}

    def q(name, metric, **kw):
        start = time.time()
        res = np.asarray(metric(**{**call, **kw}), np.float64)
        print(f"  ({time.time() - start:.1f} s)", end=" ")
        out[name] = res
        out[f"{name}/options"] = json.dumps(OPTIONS[name])
        print(f"{name:28s} {res.shape} {np.round(res.ravel()[:6], 4)}")

    o = OPTIONS
    q("pixel_flipping", quantus.PixelFlipping(features_in_step=o["pixel_flipping"]["features_in_step"],
                                              perturb_baseline="black", **common))
    for name in ("region_perturbation", "region_perturbation_lerf"):
        op = o[name]
        q(name, quantus.RegionPerturbation(patch_size=op["patch_size"], regions_evaluation=op["regions_evaluation"],
                                           order=op["order"], perturb_baseline="black", **common))
    q("selectivity", quantus.Selectivity(patch_size=o["selectivity"]["patch_size"], perturb_baseline="black",
                                         **common))

    fc = o["faithfulness_correlation"]
    subsets = F.random_subsets(KEY, fc["nr_runs"], n, 784, fc["subset_size"])  # (R, N, k)
    draws = iter(subsets.reshape(-1, fc["subset_size"]))
    with patched(np.random, "choice", lambda *a, **k: next(draws)):
        q("faithfulness_correlation", quantus.FaithfulnessCorrelation(
            nr_runs=fc["nr_runs"], subset_size=fc["subset_size"], perturb_baseline="black", return_aggregate=False,
            **common))
    assert next(draws, None) is None, "FaithfulnessCorrelation drew a different number of subsets"

    q("faithfulness_estimate", quantus.FaithfulnessEstimate(
        features_in_step=o["faithfulness_estimate"]["features_in_step"], perturb_baseline="black", **common))

    recorded.clear()
    q("monotonicity", quantus.Monotonicity(features_in_step=o["monotonicity"]["features_in_step"],
                                           perturb_baseline="black", **common), model=rec)
    out["monotonicity/recorded"] = np.stack([r[np.arange(n), t] for r in recorded], 1)  # (N, steps)

    mc = o["monotonicity_correlation"]
    groups = -(-784 // mc["features_in_step"])
    u = np.asarray(jax.random.uniform(KEY, (groups, mc["nr_samples"], n)), np.float64)
    uniforms = iter(u.reshape(-1, n))
    real_uniform = np.random.uniform

    def our_uniform(low=0.0, high=1.0, size=None):
        assert size == n and (low, high) == (0.0, 1.0), (low, high, size)
        return next(uniforms)

    with patched(np.random, "uniform", our_uniform):
        q("monotonicity_correlation", quantus.MonotonicityCorrelation(
            nr_samples=mc["nr_samples"], features_in_step=mc["features_in_step"], perturb_baseline="uniform",
            **common))
    assert next(uniforms, None) is None and np.random.uniform is real_uniform

    inf = o["infidelity"]
    noise = F.infidelity_noise(KEY, n, inf["n_perturb_samples"], (28, 28, 1), inf["noise_std"])  # (N, S, 28, 28, 1)
    noise_t = torch.from_numpy(noise.reshape(-1, 28, 28, 1).transpose(0, 3, 1, 2).copy())

    def perturb(inputs):
        assert inputs.shape[0] == noise_t.shape[0], inputs.shape
        return noise_t, inputs - noise_t

    for normalize in (False, True):
        name = "infidelity_normalized" if normalize else "infidelity"
        res = captum_infidelity(net, perturb, xt, torch.from_numpy(np.repeat(maps[:, None], 1, 1)),
                                target=torch.from_numpy(t), n_perturb_samples=inf["n_perturb_samples"],
                                normalize=normalize)
        out[name] = res.detach().numpy().astype(np.float64)
        out[f"{name}/options"] = json.dumps({**inf, "normalize": normalize})
        print(f"{name:28s} {np.round(out[name], 4)}")

    # Sufficiency needs images that share a predicted class: all 32 digits of reference_maps.npz.
    x32, t32, m32 = reference_inputs(ref, np.arange(32))
    call32 = {**call, "x_batch": x32.transpose(0, 3, 1, 2).copy(), "y_batch": t32, "a_batch": m32[:, None].copy()}
    out["maps32"] = m32
    for name in ("sufficiency", "sufficiency_default"):
        res = quantus.Sufficiency(threshold=o[name]["threshold"], disable_warnings=True, normalise=False,
                                  abs=True)(**call32)
        out[name] = np.asarray(res, np.float64)
        out[f"{name}/options"] = json.dumps(o[name])
        print(f"{name:28s} {np.round(out[name], 3)}")

    grid = F.grid_segments(28, 28, o["irof"]["segment_size"])
    means = np.broadcast_to(xq.reshape(n, -1).mean(1)[:, None, None, None], xq.shape).copy()
    with patched(quantus.helpers.utils, "get_superpixel_segments", lambda img, segmentation_method: grid.copy()):
        q("irof", quantus.IROF(perturb_baseline=means, return_aggregate=False, **common))

    out["versions"] = json.dumps({k: importlib.metadata.version(k) for k in ("quantus", "torch", "captum", "jax")})
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()

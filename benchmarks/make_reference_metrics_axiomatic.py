"""Regenerate tests/fixtures/quantus_axiomatic.npz: Quantus 0.6.0's Completeness, NonSensitivity and
InputInvariance on ported weights.

    /work/refvenv/bin/python benchmarks/make_reference_metrics_axiomatic.py   # the reference venv, ~1 min

Inputs (``inputs()``, read the same way by tests/test_metrics_axiomatic.py): digits ``DIGITS`` of
tests/fixtures/reference_maps.npz (four explained as their label, four as (label + 3) % 10), its
targets and its ``cnn`` net (the shipped MNISTCNN, weights rounded to bfloat16 precision, stored
there), ported to torch by ``bench_xai.build_torch_model`` (the script stops unless the logits
agree to 1e-4), and that fixture's Captum maps of it (``MAPS``).

* Completeness (completeness.py:296-311) returns ``sum(a) == f(x) - f(x')``; its ``output_func``
  (identity by default, applied to f(x) - f(x')) is replaced by one that records that difference,
  so the fixture holds Quantus's f(x) - f(x') ("completeness/<map>/delta") next to its verdict
  ("completeness/<map>/equal"). ``normalise=False`` (Quantus's default True divides the map by
  its max before summing it), ``perturb_baseline="black"`` (each image's minimum: 0 here).
* NonSensitivity (non_sensitivity.py:317-356): defaults (eps 1e-5, one pixel a step, "black",
  abs, normalise) with ``normalise_func_kwargs={"normalise_axes": (1, 2, 3)}`` (each map by its own
  max, ours); configs ``NON_SENSITIVITY``; keys "non_sensitivity/<config>/<map>".
* InputInvariance (input_invariance.py:280-305): Quantus shifts the model by editing its FIRST
  module's bias (pytorch_model.py:378-416), exact only for a first conv without padding, so it
  runs on ``InvarianceNet`` (below: a VALID 3x3 conv first), random weights from
  jax PRNGKey(0), stored ("invariance_net/params/..."), ported to torch. ``explain_func=
  quantus.explain`` with method "Saliency", "InputXGradient" (Captum, as ours: |gradient|,
  gradient x input); shift -1. A fault of Quantus is corrected for the call: its
  ``perturb_batch`` (quantus/functions/perturb_func.py:62-64) hands each image
  ``indices[i][1:]``, so the first pixel of every image is never shifted and even Saliency
  fails the test on every digit (stored as "input_invariance_unpatched/<method>");
  ``perturb_batch_all`` passes every index. Keys "input_invariance/<method>" (bool per digit).

``--only-invariance`` recomputes just the input invariance keys of an existing fixture (the
non-sensitivity part takes ~40 min of a loaded 2-core machine; torch runs 784 passes a map).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "quantus_axiomatic.npz"
MAPS_FIXTURE = ROOT / "tests" / "fixtures" / "reference_maps.npz"
DIGITS = np.array([0, 1, 2, 3, 16, 17, 18, 19])
MAPS = ("saliency", "gradient_x_input", "integrated_gradients", "gradcam")
PER_MAP = {"normalise_axes": (1, 2, 3)}
#: config -> options given to both sides
NON_SENSITIVITY = {"default": {}, "eps_1e-3": {"eps": 1e-3}}
#: Quantus explain method -> our method
INVARIANCE_METHODS = {"Saliency": "saliency", "InputXGradient": "gradient_x_input"}
INPUT_SHIFT = -1.0


class InvarianceNet(nn.Module):
    """Conv 8 (3x3 VALID) -> ReLU -> Conv 16 (3x3, stride 2, VALID) -> ReLU -> mean -> Dense 10."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding="VALID", name="conv1")(x))
        x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2), padding="VALID", name="conv2")(x))
        return nn.Dense(10, name="dense")(x.mean(axis=(1, 2)))


def invariance_params(seed: int = 0):
    import jax
    import jax.numpy as jnp

    return jax.device_get(InvarianceNet().init(jax.random.PRNGKey(seed), jnp.zeros((1, 28, 28, 1)))["params"])


def inputs():
    """``(images (8, 28, 28, 1), targets (8,), cnn variables, {map: (8, 28, 28)})`` from reference_maps.npz."""
    from reference_models import unflatten

    with np.load(MAPS_FIXTURE) as d:
        ref = {k: d[k] for k in d.files}
    variables = {"params": unflatten(ref, "cnn/params"), "batch_stats": unflatten(ref, "cnn/batch_stats")}
    maps = {m: ref[f"cnn/{m}"][DIGITS] for m in MAPS}
    return ref["images"][DIGITS], ref["targets"][DIGITS], variables, maps


def torch_invariance_net(params):
    import torch
    from torch import nn as tnn

    class Mean(tnn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    net = tnn.Sequential(tnn.Conv2d(1, 8, 3), tnn.ReLU(), tnn.Conv2d(8, 16, 3, stride=2), tnn.ReLU(), Mean(),
                         tnn.Linear(16, 10))
    t = lambda a: torch.from_numpy(np.array(a, np.float32))  # noqa: E731
    with torch.no_grad():
        for i, name in ((0, "conv1"), (2, "conv2")):
            net[i].weight.copy_(t(params[name]["kernel"]).permute(3, 2, 0, 1))
            net[i].bias.copy_(t(params[name]["bias"]))
        net[5].weight.copy_(t(params["dense"]["kernel"]).T)
        net[5].bias.copy_(t(params["dense"]["bias"]))
    return net.eval()


def check_logits(name, ours, net, x):
    import torch

    with torch.no_grad():
        theirs = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    gap = float(np.abs(np.asarray(ours) - theirs).max())
    print(f"{name}: max |flax - torch| logit = {gap:.2e}")
    if gap >= 1e-4:
        raise SystemExit(f"error: {name}: torch port does not match Flax (logit gap {gap:.2e})")


def main():
    import bench_xai  # noqa: F401  (one JAX CPU device per core, as the other reference scripts)
    import quantus
    import torch

    from mnist_cnn_model import MNISTCNN

    torch.manual_seed(0)
    torch.set_num_threads(2)
    images, targets, variables, maps = inputs()
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    net = bench_xai.build_torch_model(variables["params"], variables["batch_stats"], tie_splitting_pool=False)
    check_logits("cnn", MNISTCNN().apply(variables, images), net, images)
    fixture = {}

    for m, a in maps.items():
        deltas = []

        def record(d):
            deltas.append(np.asarray(d, np.float64))
            return d

        metric = quantus.Completeness(normalise=False, abs=False, output_func=record, disable_warnings=True)
        equal = metric(model=net, x_batch=x, y_batch=targets, a_batch=a.astype(np.float64), batch_size=64)
        fixture[f"completeness/{m}/delta"] = np.concatenate(deltas)
        fixture[f"completeness/{m}/equal"] = np.asarray(equal, bool)

    for config, options in NON_SENSITIVITY.items():
        for m, a in maps.items():
            metric = quantus.NonSensitivity(disable_warnings=True, normalise_func_kwargs=PER_MAP, **options)
            fixture[f"non_sensitivity/{config}/{m}"] = np.asarray(
                metric(model=net, x_batch=x, y_batch=targets, a_batch=a.astype(np.float64), batch_size=64), np.float64)
            print(config, m, fixture[f"non_sensitivity/{config}/{m}"])

    fixture.update(input_invariance_scores(images, targets))
    write(fixture)


def perturb_batch_all(perturb_func, indices, arr, **kwargs):
    """Quantus's ``perturb_batch`` (functions/perturb_func.py:28-71) without its ``[1:]``: every index."""
    arr = arr.copy()
    for i in range(len(arr)):
        arr[i] = perturb_func(arr=arr[i], indices=indices[i], **kwargs)
    return arr


def input_invariance_scores(images, targets) -> dict:
    """Quantus's InputInvariance verdicts on InvarianceNet, with and without ``perturb_batch_all``,
    and the net's weights."""
    import quantus
    import quantus.metrics.axiomatic.input_invariance as qi

    from reference_models import flatten

    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    params = invariance_params()
    inet = torch_invariance_net(params)
    check_logits("invariance_net", InvarianceNet().apply({"params": params}, images), inet, images)
    out = flatten(params, "invariance_net/params")
    original = qi.perturb_batch
    for key, fn in (("input_invariance_unpatched", original), ("input_invariance", perturb_batch_all)):
        qi.perturb_batch = fn
        try:
            for method in INVARIANCE_METHODS:
                metric = quantus.InputInvariance(input_shift=INPUT_SHIFT, disable_warnings=True)
                out[f"{key}/{method}"] = np.asarray(
                    metric(model=inet, x_batch=x, y_batch=targets, a_batch=None, explain_func=quantus.explain,
                           explain_func_kwargs={"method": method}, batch_size=64), bool)
                print(key, method, out[f"{key}/{method}"])
        finally:
            qi.perturb_batch = original
    return out


def write(fixture):
    import importlib.metadata

    fixture["versions"] = np.array(" ".join(f"{p}=={importlib.metadata.version(p)}"
                                            for p in ("quantus", "torch", "captum", "numpy", "jax", "flax")))
    np.savez_compressed(OUT, **fixture)
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size / 1024:.0f} KiB)")


def only_invariance():
    images, targets, _, _ = inputs()
    with np.load(OUT) as d:
        fixture = {k: d[k] for k in d.files if not k.startswith(("input_invariance", "invariance_net"))}
    fixture.update(input_invariance_scores(images, targets))
    write(fixture)


if __name__ == "__main__":
    only_invariance() if "--only-invariance" in sys.argv[1:] else main()

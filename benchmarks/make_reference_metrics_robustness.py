"""Regenerate tests/fixtures/quantus_robustness.npz: Quantus 0.6.0's robustness metrics (and
Captum's ``sensitivity_max``) on our weights, our maps and OUR perturbations.

    /work/refvenv/bin/python benchmarks/make_reference_metrics_robustness.py   # the reference venv (~2 min)

What it does
------------
* Net: the shipped MNISTCNN with the weights stored in tests/fixtures/reference_maps.npz
  ("cnn/params", "cnn/batch_stats", bfloat16-rounded), ported to torch by
  ``bench_xai.build_torch_model`` (eval mode; logits checked against Flax to 1e-4).
* Images: that fixture's first ``N`` digits in [0, 1]; targets its "targets" (label for the
  first 16). Maps: OUR Saliency maps (|d logit / dx|), given to Quantus as ``a_batch``; both
  sides re-explain perturbed inputs with Saliency (Quantus: ``quantus.explain(method="Saliency")``,
  i.e. captum Saliency, abs=True).
* Same perturbations: every perturbed image is drawn by OUR ``robustness.perturbations`` (the
  step-s noise from ``fold_in(PRNGKey(0), s)``, clipped to [0, 1]) and handed to Quantus through
  its ``perturb_func`` argument: a function that ignores Quantus's RNG and returns the next
  step's images (Quantus calls it once per step, in step order, on the whole batch:
  ``batch_size=N``). Captum's ``sensitivity_max`` gets them through its ``perturb_func`` too
  (it repeat_interleaves the inputs: row i*S + j = image i, step j).
* Settings per metric (``CASES``): Quantus's defaults except ``nr_samples`` (``SAMPLES``), the
  per-image ``normalise_axes`` of ``LocalLipschitzEstimate`` (see robustness.py's docstring: its
  default divides by the batch max) and, for the relative stabilities, a small positive noise
  U(0, 0.05): Quantus's U(0.02, 0.2) flips the shipped model's prediction for 94% of these
  digits (all-NaN rows), so nothing would be compared. ``RelativeRepresentationStability`` gets
  ``layer_names=["dropout"]``: the torch twin's ``dropout`` (identity in eval) is relu(dense1),
  our default layer (asserted equal here).
* Quantus takes np.max over the samples, NaN when any sample flips the prediction; ours the max
  over unflipped samples. The per-step values are stored too ("<metric>/steps", from an
  instrumented run of Quantus's own objective), so the tests compare each step.

Keys: "<metric>" (N,) Quantus's scores, "captum_sensitivity_max" (N,), "images", "targets",
"maps" (ours, given to Quantus), "versions".
"""
from __future__ import annotations

import importlib.metadata
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import bench_xai  # noqa: E402,F401  (one JAX CPU device per core, as the other reference scripts)
import jax  # noqa: E402
import numpy as np  # noqa: E402

from make_reference_maps import OUT as MAPS  # noqa: E402
from reference_models import unflatten  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "quantus_robustness.npz"
N = 8
SAMPLES = 10
CAPTUM_SAMPLES, CAPTUM_RADIUS = 10, 0.02
LOW, HIGH = 0.0, 0.05  # the relative stabilities' noise here (see the docstring)

#: name -> (Quantus class, its kwargs, our options, our noise (kind, a, b))
CASES = {
    "max_sensitivity": ("MaxSensitivity", {}, {}, ("uniform", -0.2, 0.2)),
    "avg_sensitivity": ("AvgSensitivity", {}, {}, ("uniform", -0.2, 0.2)),
    "local_lipschitz_estimate": ("LocalLipschitzEstimate", {"normalise_func_kwargs": {"normalise_axes": (1, 2, 3)}},
                                 {}, ("normal", 0.0, 0.1)),
    "relative_input_stability": ("RelativeInputStability", {}, {"low": LOW, "high": HIGH}, ("uniform", LOW, HIGH)),
    "relative_output_stability": ("RelativeOutputStability", {}, {"low": LOW, "high": HIGH}, ("uniform", LOW, HIGH)),
    "relative_representation_stability": ("RelativeRepresentationStability", {"layer_names": ["dropout"]},
                                          {"low": LOW, "high": HIGH}, ("uniform", LOW, HIGH)),
}


def setup():
    """(our MetricInput on the first N digits, the weights (params, batch_stats)); no torch needed."""
    from mnist_cnn_model import MNISTCNN
    import mnist_xai_visualizations as X
    from mnist_xai.metrics import MetricInput

    with np.load(MAPS) as d:
        ref = {k: d[k] for k in d.files}
    params, bs = unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats")
    images, targets = ref["images"][:N], ref["targets"][:N].astype(np.int32)
    explainer = X.Saliency(MNISTCNN())
    inp = MetricInput(images, targets=targets, explainer=explainer, params=params, batch_stats=bs,
                      key=jax.random.PRNGKey(0))
    inp.maps = inp.explain()
    return inp, (params, bs)


def feeder(xp_nhwc):
    """A Quantus ``perturb_func`` returning our step-s images on its s-th call."""
    it = iter(list(xp_nhwc))

    def perturb(arr, indices=None, **kwargs):
        x = next(it)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(arr.shape).astype(arr.dtype)
    return perturb


def main():
    import torch
    import quantus
    from captum.attr import Saliency
    from captum.metrics import sensitivity_max

    from mnist_xai.metrics import robustness as R

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    inp, (params, bs) = setup()
    net = bench_xai.build_torch_model(params, bs, tie_splitting_pool=False)
    x_nchw = np.ascontiguousarray(inp.images.transpose(0, 3, 1, 2))
    with torch.no_grad():
        gap = float(np.abs(net(torch.from_numpy(x_nchw)).numpy() - inp.logits(inp.images)).max())
    assert gap < 1e-4, f"torch port's logits differ from Flax's by {gap:.2e}"
    # Our default representation layer is the twin's `dropout` output.
    ours = R.representation_fn(inp, None)(inp.images)
    hidden = {}
    net.dropout.register_forward_hook(lambda m, i, o: hidden.__setitem__("h", o.detach().numpy()))
    with torch.no_grad():
        net(torch.from_numpy(x_nchw))
    assert R.default_representation_layer(inp) == "dropout"
    assert np.abs(hidden["h"] - ours).max() < 1e-4 * max(1.0, np.abs(ours).max())

    a_batch = inp.maps[:, None]
    out = {"images": inp.images, "targets": inp.targets, "maps": inp.maps}
    for name, (cls, kwargs, _options, (kind, a, b)) in CASES.items():
        xp = R.perturbations(inp, range(SAMPLES), kind, a, b)
        metric = getattr(quantus, cls)(nr_samples=SAMPLES, perturb_func=feeder(xp), disable_warnings=True, **kwargs)
        steps = []
        for objective in ("relative_input_stability_objective", "relative_output_stability_objective",
                          "relative_representation_stability_objective"):
            if hasattr(metric, objective):  # record each step's value, as Quantus computed it
                inner = getattr(metric, objective)
                setattr(metric, objective, lambda *args, _f=inner: steps.append(np.asarray(_f(*args))) or steps[-1])
        scores = metric(model=net, x_batch=x_nchw, y_batch=inp.targets, a_batch=a_batch, channel_first=True,
                        explain_func=quantus.explain, explain_func_kwargs={"method": "Saliency"}, batch_size=N,
                        softmax=False)
        out[name] = np.asarray(scores, np.float64)
        if steps:
            out[f"{name}/steps"] = np.stack(steps)
        print(f"{name}: {np.round(out[name], 5)}")

    xp = R.perturbations(inp, range(CAPTUM_SAMPLES), "uniform", -CAPTUM_RADIUS, CAPTUM_RADIUS)
    expanded = torch.from_numpy(np.ascontiguousarray(xp.transpose(1, 0, 4, 2, 3)).reshape(-1, *x_nchw.shape[1:]))

    def perturb(inputs, radius):
        assert inputs.shape == expanded.shape and radius == CAPTUM_RADIUS
        return expanded

    def explanation(inputs, target):
        return Saliency(net).attribute(inputs, target=target, abs=True)
    out["captum_sensitivity_max"] = sensitivity_max(
        explanation, torch.from_numpy(x_nchw), perturb_func=perturb, perturb_radius=CAPTUM_RADIUS,
        n_perturb_samples=CAPTUM_SAMPLES, target=torch.as_tensor(inp.targets, dtype=torch.long)).numpy().astype(np.float64)
    print("captum sensitivity_max:", np.round(out["captum_sensitivity_max"], 5))
    out["versions"] = np.array([f"{p} {importlib.metadata.version(p)}"
                                for p in ("quantus", "torch", "captum", "jax", "numpy")])
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.1f} kB, {len(out)} arrays)")


if __name__ == "__main__":
    main()

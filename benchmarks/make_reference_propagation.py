"""Regenerate tests/fixtures/reference_propagation.npz: Captum's propagation maps (Guided Backprop,
Deconvolution, Guided Grad-CAM, DeepLift, DeepLiftShap) on the weights of tests/fixtures/reference_maps.npz.

    /tmp/refvenv/bin/python benchmarks/make_reference_propagation.py   # the reference venv (requirements-reference.txt)

Same 32 digits, targets and weights as reference_maps.npz, read from that fixture, and the same
torch twins (``cnn``: bench_xai.build_torch_model, nn.MaxPool2d; ``refnet``:
make_reference_maps.torch_refnet), so this one stores maps and DeepLiftShap's baselines only.

Captum 0.9.0, read from its source:

* GuidedBackprop / Deconvolution (attr/_core/guided_backprop_deconvnet.py:80-91): every nn.ReLU's
  backward returns F.relu(grad_input) (guided) or F.relu(grad_output) (deconvolution).
* GuidedGradCam (attr/_core/guided_grad_cam.py:190-230): LayerGradCam(relu_attributions=True)
  on ``layer`` (cnn ``features[-1]``, refnet ``block3.conv2``), nearest-upsampled to 28x28,
  times GuidedBackprop.
* DeepLift (attr/_core/deep_lift.py): image and baseline run as one batch of 2N; the gradient of
  the target logit of both halves (:378-386); nn.ReLU: ``nonlinear`` (:901-920), nn.MaxPool2d:
  ``maxpool`` (:1004-1068); attribution (x - x0) * gradient (:329-336); eps 1e-10. Baseline:
  0 (cnn, black) and LO (refnet, black standardised).
  Two slips in Captum's hooks, which we do not copy; the maps stored are Captum's with both
  corrected, and the script prints how far Captum's maps as shipped are from them:
  (1) Stale grad_output after a hooked module. ``_register_backward_hook`` (captum/_utils/
  common.py:861-910) records a module's grad_output with a hook on its output tensor, and the
  next module's rule replaces the gradient with a hook on its input tensor: where a ReLU feeds
  a MaxPool2d directly (both nets, twice) these are the same tensor, the ReLU's hook runs first
  and records the plain max-pool gradient, so the ReLU's rule multiplies dy/dx by that
  gradient instead of the max-pool's DeepLIFT multiplier (which reaches only the |dx| < eps
  branch). Corrected by a copy between them (``Copy``, ``x.clone()``: the values are the
  same, and the ReLU's grad_output is then what the max-pool's rule returned).
  (2) ``maxpool``'s last line falls back to ``grad_input[0]`` where |x - x0| < eps: the FIRST
  image's gradient broadcast to the whole batch (``grad_input`` is a tensor there, not a
  tuple). Ours takes each image's own gradient; corrected by that line reading ``grad_input``
  (``corrected_maxpool``).
* DeepLiftShap (deep_lift.py:850-898): each image repeated per baseline, DeepLift, mean over
  the baselines. Baselines: ``SHAP_BASELINES`` images uniform in [0, 1] from
  numpy's default_rng(0) ("dlshap_baselines"; refnet: the same standardised, "refnet/dlshap_baselines").

Keys: "<net>/<method>" (32, 28, 28) for methods guided_backprop, deconvolution, guided_gradcam,
deeplift, deeplift_shap; "<net>/deeplift_captum_as_shipped" (neither slip corrected),
"<net>/deeplift_stale_corrected_only" (slip 1 corrected, not 2); "dlshap_baselines", "refnet/dlshap_baselines".
"""
from __future__ import annotations

import importlib.metadata
import inspect
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import bench_xai  # noqa: E402
import numpy as np  # noqa: E402

from make_reference_maps import OUT as MAPS, round_maps, torch_refnet  # noqa: E402
from reference_models import LO, standardise, unflatten  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "reference_propagation.npz"
SHAP_BASELINES = 4


class corrected_maxpool:
    """Captum's deep_lift.maxpool with ``grad_input[0]`` read as ``grad_input`` (see the docstring)."""

    def __enter__(self):
        from captum.attr._core import deep_lift
        self.module, self.original = deep_lift, deep_lift.maxpool
        source = inspect.getsource(deep_lift.maxpool)
        assert source.count("grad_input[0]") == 1, "captum's maxpool changed: read it again"
        namespace = dict(vars(deep_lift))
        exec(compile(source.replace("grad_input[0]", "grad_input"), deep_lift.__file__, "exec"), namespace)
        deep_lift.maxpool = namespace["maxpool"]

    def __exit__(self, *exc):
        self.module.maxpool = self.original


def with_copies_before_pools(net):
    """``net`` (modified in place) with a ``Copy`` before every nn.MaxPool2d (slip 1)."""
    from torch import nn

    class Copy(nn.Module):
        def forward(self, x):
            return x.clone()

    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.Sequential(Copy(), child))
    return net


def main():
    import torch
    from captum import attr as ca

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    with np.load(MAPS) as d:
        ref = {k: d[k] for k in d.files}
    t = torch.as_tensor(ref["targets"], dtype=torch.long)
    shap01 = np.random.default_rng(0).uniform(size=(SHAP_BASELINES, 28, 28, 1)).astype(np.float32)
    out = {"dlshap_baselines": shap01, "refnet/dlshap_baselines": standardise(shap01)}
    cnn = bench_xai.build_torch_model(unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats"),
                                      tie_splitting_pool=False)
    rnet = torch_refnet(unflatten(ref, "refnet/params"), unflatten(ref, "refnet/batch_stats"))
    nets = {"cnn": (cnn, cnn.features[-1], ref["images"], 0.0, out["dlshap_baselines"]),
            "refnet": (rnet, rnet.block3.conv2, ref["refnet/images"], float(LO), out["refnet/dlshap_baselines"])}
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 3, 1, 2)))  # noqa: E731
    fixed = {"cnn": with_copies_before_pools(bench_xai.build_torch_model(
                 unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats"), tie_splitting_pool=False)),
             "refnet": with_copies_before_pools(torch_refnet(unflatten(ref, "refnet/params"),
                                                             unflatten(ref, "refnet/batch_stats")))}
    for name, (net, layer, images, baseline, shap) in nets.items():
        x = nchw(images)
        with torch.no_grad():
            gap = float(np.abs(net(x).numpy() - ref[f"{name}/torch_logits"]).max())
        assert gap < 1e-4, f"{name}: the torch port's logits moved ({gap:.2e})"
        np32 = lambda a: np.asarray(a.detach().numpy(), np.float32).reshape(len(x), 28, 28)  # noqa: E731
        out[f"{name}/guided_backprop"] = round_maps(np32(ca.GuidedBackprop(net).attribute(x, target=t)))
        out[f"{name}/deconvolution"] = round_maps(np32(ca.Deconvolution(net).attribute(x, target=t)))
        out[f"{name}/guided_gradcam"] = round_maps(np32(ca.GuidedGradCam(net, layer).attribute(x, target=t)))
        with torch.no_grad():
            assert torch.equal(fixed[name](x), net(x)), f"{name}: the copies changed the logits"
        shipped = np32(ca.DeepLift(net).attribute(x, baselines=baseline, target=t))
        stale_fixed = np32(ca.DeepLift(fixed[name]).attribute(x, baselines=baseline, target=t))
        with corrected_maxpool():
            dl = np32(ca.DeepLift(fixed[name]).attribute(x, baselines=baseline, target=t))
            out[f"{name}/deeplift_shap"] = round_maps(np32(ca.DeepLiftShap(fixed[name]).attribute(
                x, baselines=nchw(shap), target=t)))
        out[f"{name}/deeplift"] = round_maps(dl)
        out[f"{name}/deeplift_captum_as_shipped"] = round_maps(shipped)
        out[f"{name}/deeplift_stale_corrected_only"] = round_maps(stale_fixed)
        peak = np.abs(dl).reshape(len(dl), -1).max(1)
        for what, m in (("as shipped", shipped), ("slip 1 corrected only", stale_fixed)):
            print(f"{name}: Captum's DeepLift {what} vs both corrected: worst per-digit gap / peak "
                  f"{(np.abs(m - dl).reshape(len(dl), -1).max(1) / peak).max():.3e}")
    out["versions"] = np.array([f"{p} {importlib.metadata.version(p)}" for p in ("torch", "captum", "numpy")])
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(out)} arrays)")


if __name__ == "__main__":
    main()

"""Regenerate tests/fixtures/reference_cams.npz: pytorch-grad-cam 1.5.7's HiResCAM, XGradCAM,
LayerCAM, EigenCAM, EigenGradCAM and AblationCAM maps on the weights of tests/fixtures/reference_maps.npz.

    /tmp/refvenv/bin/python benchmarks/make_reference_cams.py   # the reference venv (requirements-reference.txt)

Same 32 digits, targets and weights as reference_maps.npz, read from it, so this one stores maps
only. Layers as make_reference_maps.py: ``cnn``: the last conv block's ReLU output
(``net.features[-1]``); ``refnet``: ``block3.conv2`` (a ConvBNReLU: post-ReLU too).

Keys, per net and method (``<net>/pgc_<method>...``):

* ``pgc_<m>`` (32, 28, 28): the map pytorch-grad-cam returns (min-max scaled, resized, scaled again).
* ``pgc_<m>_7x7``: ``get_cam_image``'s output after BaseCAM's ReLU (base_cam.py:170-171), before scaling.
* ``pgc_eigencam_signed``, ``pgc_eigengradcam_signed``: ``get_cam_image``'s output BEFORE the ReLU (the
  signed first-component projection), so the tests can compare modulo the SVD's arbitrary sign.

Nothing random: no samples to inject. AblationCAM (batch_size=32): AblationLayer writes 0 for an
ablated channel when the image's activations have minimum 0 (ablation_layer.py:80-83); this
script checks that every image's layer minimum is 0 (both layers end in a ReLU), so the
reference's zero-ablation is what is stored.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import bench_xai  # noqa: E402
import numpy as np  # noqa: E402

from make_reference_maps import OUT as MAPS, round_maps, torch_refnet  # noqa: E402
from reference_models import unflatten  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "reference_cams.npz"
METHODS = ("hirescam", "xgradcam", "layercam", "eigencam", "eigengradcam", "ablationcam")
SIGNED = ("eigencam", "eigengradcam")


def reference_cams(net, layer, x, targets):
    import torch
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = {"hirescam": pgc.HiResCAM, "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM,
               "eigencam": pgc.EigenCAM, "eigengradcam": pgc.EigenGradCAM, "ablationcam": pgc.AblationCAM}
    seen = []
    hook = layer.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        net(x)
    hook.remove()
    assert float(seen[0].amin(dim=(1, 2, 3)).max()) == 0.0, "a layer minimum is not 0: AblationLayer would not write 0"
    out = {}
    for name in METHODS:
        cam = classes[name](model=net, target_layers=[layer])
        raw = []
        get_cam_image = cam.get_cam_image
        cam.get_cam_image = lambda *a, **k: raw.append(get_cam_image(*a, **k)) or raw[-1]
        with contextlib.redirect_stderr(io.StringIO()):  # AblationCAM's tqdm bar per image
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in targets])
        cam.activations_and_grads.release()
        out[f"pgc_{name}"] = round_maps(np.float32(maps))
        out[f"pgc_{name}_7x7"] = np.float32(np.maximum(raw[0], 0))
        if name in SIGNED:
            out[f"pgc_{name}_signed"] = np.float32(raw[0])
    return out


def main():
    import torch

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message=".*Setting forward, backward hooks.*")
    with np.load(MAPS) as d:
        ref = {k: d[k] for k in d.files}
    nets = {
        "cnn": bench_xai.build_torch_model(unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats"),
                                           tie_splitting_pool=False),
        "refnet": torch_refnet(unflatten(ref, "refnet/params"), unflatten(ref, "refnet/batch_stats")),
    }
    out = {}
    for name, net in nets.items():
        images = ref["images"] if name == "cnn" else ref["refnet/images"]
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        with torch.no_grad():
            gap = float(np.abs(net(x).numpy() - ref[f"{name}/torch_logits"]).max())
        assert gap < 1e-4, f"{name}: the torch port's logits moved ({gap:.2e})"
        layer = net.features[-1] if name == "cnn" else net.block3.conv2
        out.update({f"{name}/{k}": v for k, v in reference_cams(net, layer, x, ref["targets"]).items()})
    out["versions"] = np.array([f"{p} {importlib.metadata.version(p)}" for p in ("torch", "grad-cam", "numpy")])
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(out)} arrays)")


if __name__ == "__main__":
    main()

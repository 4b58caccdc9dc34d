"""HiResCAM, XGrad-CAM, LayerCAM, Eigen-CAM, Eigen-Grad-CAM and Ablation-CAM against
pytorch-grad-cam 1.5.7 on the same weights, digits and targets as tests/test_reference_maps.py.

The references are in tests/fixtures/reference_cams.npz, made by benchmarks/make_reference_cams.py
(its docstring lists what is stored). No torch is needed here. Nothing is random in these
methods, so no samples are shared. Each method is judged per digit with ``parity.assert_close_per_digit``
(every digit within 1e-4 of its reference map's max), on the 28x28 maps after pytorch-grad-cam's
min-max scaling (``pgc_scaling``) and on the 7x7 CAMs before any scaling.

Eigen-CAM and Eigen-Grad-CAM: the first singular vector's sign is arbitrary, and pytorch-grad-cam
1.5.7 (utils/svd_on_activations.py:5-21) does not fix it, nor do we; so they are compared modulo
sign: per digit, the sign that best aligns our signed projection (``relu=False``) with the
reference's (``pgc_<m>_signed``) is applied to ours, then the ReLU'd 7x7 and scaled 28x28 maps are
compared. Ablation-CAM: both layers end in a ReLU, so pytorch-grad-cam's AblationLayer writes 0, as
we do (its min - 1e7 for layers with negative values is not followed; see AblationCAM's docstring).

Measured gaps (max over the 32 digits, of each map's max), AVX-512 / AVX2: see MEASURED below.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mnist_xai_visualizations as X
from mnist_cnn_model import MNISTCNN
from parity import assert_close_per_digit
from reference_models import RefNet, unflatten
from test_reference_maps import FIXTURE as MAPS, pgc_scaling

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "reference_cams.npz"
LAYER = "block3/conv2"
NETS = ("cnn", "refnet")
CLASSES = {"hirescam": X.HiResCAM, "xgradcam": X.XGradCAM, "layercam": X.LayerCAM, "eigencam": X.EigenCAM,
           "eigengradcam": X.EigenGradCAM, "ablationcam": X.AblationCAM}
SIGNED = ("eigencam", "eigengradcam")


@pytest.fixture(scope="module")
def ref():
    out = {}
    for path in (MAPS, FIXTURE):
        with np.load(path) as d:
            out.update({k: d[k] for k in d.files})
    return out


def explainer(net, method, **kw):
    model, layer = (MNISTCNN(), None) if net == "cnn" else (RefNet(), LAYER)
    return CLASSES[method](model, layer=layer, **kw)


_cache: dict = {}


def ours(ref, net, method):
    """(maps (N, 28, 28), raw 7x7 CAMs (N, 7, 7), signed 7x7 (relu=False)), computed once per module."""
    if (net, method) not in _cache:
        params, stats = unflatten(ref, f"{net}/params"), unflatten(ref, f"{net}/batch_stats")
        x = ref["images"] if net == "cnn" else ref["refnet/images"]
        e = explainer(net, method)
        raw = e.raw_cam(params, stats, x, ref["targets"])
        signed = explainer(net, method, relu=False).raw_cam(params, stats, x, ref["targets"]) \
            if method in SIGNED else None
        _cache[net, method] = np.asarray(e.attribute(params, stats, x, ref["targets"])), raw, signed
    return _cache[net, method]


def aligned(ref, net, method):
    """Ours (maps, raw) with Eigen-*'s per-digit sign matched to the reference's projection."""
    maps, raw, signed = ours(ref, net, method)
    if method not in SIGNED:
        return maps, raw
    theirs = ref[f"{net}/pgc_{method}_signed"]
    sign = np.where((signed * theirs).sum(axis=(1, 2)) < 0, -1.0, 1.0)[:, None, None]
    raw = np.maximum(sign * signed, 0)
    maps = np.where(sign > 0, maps, np.asarray(X.upsample(raw.astype(np.float32))))
    return maps, raw


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("method", CLASSES)
def test_matches_pytorch_grad_cam(ref, net, method):
    maps, _ = aligned(ref, net, method)
    assert_close_per_digit(pgc_scaling(maps), ref[f"{net}/pgc_{method}"], f"{net}/{method}")


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("method", CLASSES)
def test_raw_cam_matches_pytorch_grad_cam(ref, net, method):
    _, raw = aligned(ref, net, method)
    assert_close_per_digit(raw, ref[f"{net}/pgc_{method}_7x7"], f"{net}/{method} 7x7")


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("method", SIGNED)
def test_signed_projection_matches_modulo_sign(ref, net, method):
    _, _, signed = ours(ref, net, method)
    theirs = ref[f"{net}/pgc_{method}_signed"]
    sign = np.where((signed * theirs).sum(axis=(1, 2)) < 0, -1.0, 1.0)[:, None, None]
    assert_close_per_digit(sign * signed, theirs, f"{net}/{method} signed projection")

"""Our explanation maps against Captum's and pytorch-grad-cam's on the same weights.

The references are in tests/fixtures/reference_maps.npz, made by
benchmarks/make_reference_maps.py (torch 2.14.1, captum 0.9.0, grad-cam 1.5.7; its docstring
lists each library's conventions, read from their source). No torch is needed here. Two nets:

* ``cnn``: ``MNISTCNN`` with the fixture's weights (the shipped checkpoint's, rounded to
  bfloat16 precision), images in [0, 1], the default one-line calls (``X.GradCAM(model)``, ...).
* ``refnet``: ``tests/reference_models.RefNet`` (no ``features``/``head`` methods, BatchNorm
  inside submodules, STANDARDISED input in [LO, HI]), explained through ``layer="block3/conv2"``
  for the CAMs, baselines LO and ``input_range=(LO, HI)``.

32 digits; targets: the label for the first 16, (label + 3) % 10 for the last 16.

The measure (``worst_relative_gap``): the largest |ours - reference| over a map divided by
that reference map's max |value|, worst over the 32 maps; ``TOLERANCE`` = 1e-4, except
where float32 itself cannot do better (``LOOSE``): Integrated Gradients on ``cnn`` and
SmoothGrad on both nets. Their 1,600 / 800 back-propagations (32 digits x 50 steps / 25 samples) pass through inputs
where a ReLU or a 2x2 max-pool sits at a near-tie, and float32 rounding flips the decision,
moving a whole gradient to another unit. Torch's own float32 maps differ from the same maps
computed in float64 by 1.3e-3 (IG, cnn), 0.9e-3 (SmoothGrad, cnn) and 1.2e-3 (SmoothGrad,
refnet) of the map's max; ours differ from torch's float32 maps by 1.3e-3 and 1.7e-3 on cnn
(whose BatchNorm we fold into the convs, so rounding differs) and 8e-6 on refnet (same
rounding as torch, here). These flips are local: a wrong formula changes most pixels, a
flip a few, so the loose ones must also have at most ``MAX_SHARE_OFF`` = 1% of their pixels
off by more than 1e-4 (measured: 0.25% and 0.44% on cnn).

pytorch-grad-cam's maps are min-max scaled per image (twice: on the 7x7 map before
cv2.resize and on the 28x28 result, base_cam.py:172/181), so ours are compared after the
same scaling of our 28x28 map (``pgc_scaling``; the first scaling is affine and cancels). Its
7x7 CAMs (before any scaling) are compared with our ``raw_cam`` directly.

``worst_relative_gap`` is importable, so a scratch script can run deliberately broken
explainers against the fixture and check that the gap flags them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mnist_xai_visualizations as X
from mnist_cnn_model import MNISTCNN
from reference_models import HI, LO, RefNet, unflatten

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "reference_maps.npz"
TOLERANCE = 1e-4  # of the reference map's max |value|; the stored maps are rounded to 7.6e-6 of it
LOOSE = {("cnn", "integrated_gradients"): 3e-3, ("cnn", "smoothgrad"): 3e-3, ("refnet", "smoothgrad"): 3e-3}
MAX_SHARE_OFF = 0.01  # of the pixels, for the LOOSE ones: float flips are local
LOGIT_TOLERANCE = 1e-4
LAYER = "block3/conv2"

CAPTUM_METHODS = ("gradcam", "saliency", "gradient_x_input", "integrated_gradients", "smoothgrad", "occlusion")
PGC_METHODS = ("gradcam", "gradcam++", "scorecam")
NETS = ("cnn", "refnet")


def worst_relative_gap(ours, ref) -> float:
    """max over maps of max|ours - ref| / max|ref| (maps: the leading axis; (H, W) is one map).

    A reference map that is all zeros is measured against the largest |value| of all the
    reference maps instead (1 if they are all zero), so ours must be ~0 there too.
    """
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shapes differ: ours {ours.shape}, reference {ref.shape}")
    if ref.ndim == 2:
        ours, ref = ours[None], ref[None]
    n = len(ref)
    peak = np.abs(ref).reshape(n, -1).max(1)
    fallback = peak.max() if peak.max() > 0 else 1.0
    peak = np.where(peak > 0, peak, fallback)
    gap = np.abs(ours - ref).reshape(n, -1).max(1) / peak
    return float(gap.max())


def share_off(ours, ref, tolerance: float = TOLERANCE) -> float:
    """The fraction of pixels where |ours - ref| exceeds ``tolerance`` of their map's max |ref|."""
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    peak = np.abs(ref).reshape(len(ref), -1).max(1)
    peak = np.where(peak > 0, peak, peak.max() if peak.max() > 0 else 1.0).reshape(-1, *([1] * (ref.ndim - 1)))
    return float((np.abs(ours - ref) > tolerance * peak).mean())


def pgc_scaling(maps) -> np.ndarray:
    """pytorch-grad-cam's utils/image.py ``scale_cam_image`` without the resize, per map:
    (m - min) / (1e-7 + max(m - min))."""
    m = np.asarray(maps, np.float64)
    m = m - m.min(axis=(-2, -1), keepdims=True)
    return m / (1e-7 + m.max(axis=(-2, -1), keepdims=True))


# ----------------------------------------------------------------------------- fixture and explainers


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as d:
        return {k: d[k] for k in d.files}


def weights(ref, net):
    return unflatten(ref, f"{net}/params"), unflatten(ref, f"{net}/batch_stats")


def inputs(ref, net):
    return ref["images"] if net == "cnn" else ref["refnet/images"]


def make_explainer(net: str, method: str):
    """The explainer under test for ``net`` ("cnn" or "refnet") and ``method`` (Captum's or
    pytorch-grad-cam's name, without the "pgc_" prefix)."""
    if net == "cnn":
        m = MNISTCNN()
        return {
            "gradcam": lambda: X.GradCAM(m),
            "gradcam++": lambda: X.GradCAMPlusPlus(m),
            "scorecam": lambda: X.ScoreCAM(m),
            "saliency": lambda: X.Saliency(m),
            "gradient_x_input": lambda: X.GradientXInput(m),
            "integrated_gradients": lambda: X.IntegratedGradients(m, steps=50),
            "smoothgrad": lambda: X.SmoothGrad(m, samples=25, noise_level=0.15),
            "occlusion": lambda: X.Occlusion(m, patch=4, stride=2),
        }[method]()
    m = RefNet()
    return {
        "gradcam": lambda: X.GradCAM(m, layer=LAYER),
        "gradcam++": lambda: X.GradCAMPlusPlus(m, layer=LAYER),
        "scorecam": lambda: X.ScoreCAM(m, layer=LAYER),
        "saliency": lambda: X.Saliency(m),
        "gradient_x_input": lambda: X.GradientXInput(m),
        "integrated_gradients": lambda: X.IntegratedGradients(m, steps=50, baseline=LO),
        "smoothgrad": lambda: X.SmoothGrad(m, samples=25, noise_level=0.15, input_range=(LO, HI)),
        "occlusion": lambda: X.Occlusion(m, patch=4, stride=2, baseline=LO),
    }[method]()


_maps_cache: dict = {}


def our_maps(ref, net, method):
    """(N, 28, 28) maps of our method for the fixture's images and targets (computed once per module)."""
    if (net, method) not in _maps_cache:
        params, batch_stats = weights(ref, net)
        explainer = make_explainer(net, method)
        _maps_cache[net, method] = np.asarray(
            explainer.attribute(params, batch_stats, inputs(ref, net), ref["targets"]))
    return _maps_cache[net, method]


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("net", NETS)
def test_logits_match_torch(ref, net):
    params, batch_stats = weights(ref, net)
    model = MNISTCNN() if net == "cnn" else RefNet()
    logits = np.asarray(model.apply({"params": params, "batch_stats": batch_stats}, inputs(ref, net)))
    gap = np.abs(logits - ref[f"{net}/torch_logits"]).max()
    assert gap < LOGIT_TOLERANCE, f"{net}: max |flax - torch| logit {gap:.2e}"


@pytest.mark.parametrize("net", NETS)
def test_fixture_conventions(ref, net):
    """No code under test: the fixture's maps relate as its docstring says, through our
    ``X.upsample`` (half-pixel bilinear = torch align_corners=False = cv2 INTER_LINEAR)."""
    up = lambda m: np.asarray(X.upsample(np.asarray(m, np.float32)))  # noqa: E731
    assert worst_relative_gap(up(ref[f"{net}/gradcam_7x7"]), ref[f"{net}/gradcam"]) <= TOLERANCE
    assert worst_relative_gap(ref[f"{net}/pgc_gradcam_7x7"], ref[f"{net}/gradcam_7x7"]) <= TOLERANCE
    for m in PGC_METHODS:
        gap = worst_relative_gap(pgc_scaling(up(ref[f"{net}/pgc_{m}_7x7"])), ref[f"{net}/pgc_{m}"])
        assert gap <= TOLERANCE, f"{net}/pgc_{m}: min-max of the upsampled 7x7 CAM is off by {gap:.2e}"


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("method", CAPTUM_METHODS)
def test_matches_captum(ref, net, method):
    ours, theirs = our_maps(ref, net, method), ref[f"{net}/{method}"]
    bound = LOOSE.get((net, method), TOLERANCE)
    gap = worst_relative_gap(ours, theirs)
    assert gap <= bound, f"{net}/{method}: worst |ours - Captum| = {gap:.2e} of the map's max (bound {bound:g})"
    if bound > TOLERANCE:
        share = share_off(ours, theirs)
        assert share <= MAX_SHARE_OFF, f"{net}/{method}: {share:.2%} of the pixels off by more than {TOLERANCE:g}"


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("method", PGC_METHODS)
def test_matches_pytorch_grad_cam(ref, net, method):
    gap = worst_relative_gap(pgc_scaling(our_maps(ref, net, method)), ref[f"{net}/pgc_{method}"])
    assert gap <= TOLERANCE, f"{net}/{method}: worst |ours - pytorch-grad-cam| = {gap:.2e} (maps in [0, 1])"


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("method", PGC_METHODS)
def test_raw_cam_matches_pytorch_grad_cam(ref, net, method):
    """The 7x7 CAM before any scaling (post-ReLU), against pytorch-grad-cam's get_cam_image."""
    params, batch_stats = weights(ref, net)
    explainer = make_explainer(net, method)
    ours = explainer.raw_cam(params, batch_stats, inputs(ref, net), ref["targets"])
    gap = worst_relative_gap(ours, ref[f"{net}/pgc_{method}_7x7"])
    assert gap <= TOLERANCE, f"{net}/{method}: raw_cam off by {gap:.2e} of the map's max"

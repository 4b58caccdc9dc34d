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

Measured worst per-digit gaps (of each reference map's max; 28x28 scaled / 7x7 raw), the same on
AVX-512 and with XLA_FLAGS=--xla_cpu_max_isa=AVX2, no digit off, no flips allowed:

    cnn:    HiResCAM 2.8e-5 / 3.8e-6, XGrad-CAM 2.8e-5 / 3.7e-6, LayerCAM 5.2e-6 / 3.7e-7,
            Eigen-CAM 4.3e-6 / 7.8e-7, Eigen-Grad-CAM 7.4e-6 / 1.2e-6, Ablation-CAM 1.9e-5 / 2.2e-5
    refnet: HiResCAM 4.9e-6 / 2.4e-6, XGrad-CAM 5.0e-6 / 2.6e-6, LayerCAM 4.5e-6 / 1.1e-6,
            Eigen-CAM 4.4e-6 / 1.2e-6, Eigen-Grad-CAM 6.6e-6 / 5.4e-6, Ablation-CAM 8.0e-6 / 2.3e-5

Our SVD's sign differs from numpy's on 0 digits (cnn, both Eigen-*; refnet Eigen-CAM) and 4 of 32
(refnet Eigen-Grad-CAM): the sign is arbitrary on both sides, so this is no disagreement.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

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
    """(maps (N, 28, 28), raw 7x7 CAMs, signed 7x7 for Eigen-*) for the fixture's digits, from
    ONE compiled call per net and method (a compile costs more than the maps): ``_maps`` (what
    ``attribute`` runs per chunk) and ``low_res_cam`` (what ``raw_cam`` runs); ``test_attribute_is_maps``
    checks the public calls once."""
    if (net, method) not in _cache:
        params, stats = unflatten(ref, f"{net}/params"), unflatten(ref, f"{net}/batch_stats")
        images = ref["images"] if net == "cnn" else ref["refnet/images"]
        e = explainer(net, method)
        low = explainer(net, method, relu=False) if method in SIGNED else e  # Eigen-*: the signed projection
        x, variables, t = e._prepare(params, stats, images, ref["targets"])
        low._prepare(params, stats, images, ref["targets"])
        both = jax.jit(lambda v, x, t: (e._maps(v, x, t, None)[0], low.low_res_cam(v, x, t)[0]))
        maps, cam = map(np.asarray, both(variables, x, t))
        raw = np.maximum(cam, 0)  # relu(low_res_cam without its ReLU) = low_res_cam
        _cache[net, method] = maps, raw, (cam if method in SIGNED else None)
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


def test_attribute_is_maps(ref):
    """The public calls give the maps the tests above judge (refnet, HiResCAM, 4 digits)."""
    params, stats = unflatten(ref, "refnet/params"), unflatten(ref, "refnet/batch_stats")
    e = explainer("refnet", "hirescam")
    x, t = ref["refnet/images"][:4], ref["targets"][:4]
    maps, raw, _ = ours(ref, "refnet", "hirescam")
    np.testing.assert_allclose(e.attribute(params, stats, x, t), maps[:4], rtol=0, atol=1e-6 * maps.max())
    np.testing.assert_allclose(e.raw_cam(params, stats, x, t), raw[:4], rtol=0, atol=1e-6 * raw.max())


def test_hirescam_is_gradcam_under_mean_pooling(ref):
    """RefNet's head averages block3/conv2 over its 7x7 grid, so dy/dA is constant over space, its
    spatial mean is itself, and HiResCAM = Grad-CAM (as Draelos & Carin note for such heads): against
    Captum's Grad-CAM in reference_maps.npz."""
    _, raw, _ = ours(ref, "refnet", "hirescam")
    assert_close_per_digit(raw, ref["refnet/gradcam_7x7"], "refnet: HiResCAM vs Grad-CAM")


class Linear(nn.Module):
    """A = (x, x^2) (two channels); logits = Dense(sum over space of A): dy^c/dA^k = W[k, c]."""

    def setup(self):
        self.dense = nn.Dense(2)

    def features(self, x):
        return jnp.concatenate([x, x ** 2], -1)

    def head(self, a):
        return self.dense(a.sum(axis=(1, 2)))

    def __call__(self, x):
        return self.head(self.features(x))


def test_known_answers_on_a_linear_head():
    """Closed forms where the gradient is the Dense kernel W: HiResCAM = sum_k W_kc A^k, LayerCAM =
    sum_k ReLU(W_kc) A^k, XGrad-CAM's w_k = W_kc S_k / (S_k + 1e-7), Ablation-CAM's
    w_k = W_kc S_k / y_c (S_k = sum_ij A^k_ij), all before the ReLU; Eigen-CAM of the rank-one
    A = x (1, 1): +-sqrt(2) (x - mean x)."""
    model = Linear()
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 28, 28, 1))
    params = model.init(jax.random.PRNGKey(2), x)["params"]
    w, b = np.asarray(params["dense"]["kernel"], np.float64), np.asarray(params["dense"]["bias"], np.float64)
    w[0, 1] = -abs(w[0, 1])  # one negative weight, so LayerCAM's ReLU matters
    params = {"dense": {"kernel": jnp.asarray(w, jnp.float32), "bias": jnp.asarray(b, jnp.float32)}}
    t = np.array([0, 1, 1])
    a = np.concatenate([x, x ** 2], -1).astype(np.float64)
    s = a.sum(axis=(1, 2))  # (3, 2)
    y = (s @ w + b)[np.arange(3), t]
    wt = w[:, t].T  # (3, 2): W_k,c for each image's target
    expected = {
        "hirescam": np.einsum("nhwk,nk->nhw", a, wt),
        "layercam": np.einsum("nhwk,nk->nhw", a, np.maximum(wt, 0)),
        "xgradcam": np.einsum("nhwk,nk->nhw", a, wt * s / (s + 1e-7)),
        "ablationcam": np.einsum("nhwk,nk->nhw", a, wt * s / y[:, None]),
    }
    for name, want in expected.items():
        got = CLASSES[name](model, relu=False).raw_cam(params, None, x, t)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=name)
    got = X.EigenCAM(Single(), relu=False).raw_cam({}, None, x, t)
    want = np.sqrt(2) * (np.asarray(x)[..., 0] - np.asarray(x).mean(axis=(1, 2, 3))[:, None, None])
    got = got * np.sign((got * want).sum(axis=(1, 2)))[:, None, None]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


class Single(nn.Module):
    """A = (x, x): rank one over channels; a parameter-free head."""

    def features(self, x):
        return jnp.concatenate([x, x], -1)

    def head(self, a):
        return jnp.stack([a.sum(axis=(1, 2, 3)), -a.sum(axis=(1, 2, 3))], -1)

    def __call__(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("method", CLASSES)
def test_option_errors(method):
    with pytest.raises(ValueError, match=r"^layer: expected a layer path such as 'block3/conv2' \(or None\), got 3$"):
        CLASSES[method](MNISTCNN(), layer=3)
    with pytest.raises(ValueError, match="relu"):
        X.make_explainer(method, MNISTCNN(), relu="yes")

"""Feature Ablation, Shapley Value Sampling, KernelSHAP, LIME and RISE against their references.

tests/fixtures/reference_perturbation.npz (made by benchmarks/make_reference_perturbation.py,
torch 2.14.1, captum 0.9.0, scikit-learn 1.9.1, scikit-image 0.26.0; its docstring says how each
reference was fed our samples) holds Captum's ``FeatureAblation``, ``ShapleyValueSampling``,
``KernelShap`` and ``Lime`` maps, and RISE by the authors' formula in numpy, for 8 of
reference_maps.npz's digits on both nets (``cnn`` in [0, 1], baseline 0; ``refnet`` standardised,
baseline LO), 4x4 patches (49 features), with the samples our methods draw from PRNGKey(0)
(stored too, and checked here against what our functions draw).

Two conventions differ from Captum's defaults, and the reference reproduces ours:
* LIME's surrogate is ridge regression (alpha 1, sklearn ``Ridge`` = Captum's ``SkLearnRidge``),
  not Captum's default ``SkLearnLasso(alpha=0.01)`` (iterative, converged only to a tolerance).
* KernelSHAP's weighted least squares: Captum hands sklearn float32 data, whose lstsq lands
  4e-4..2e-3 of the map's max from the float64 fit on every digit (the 1e6 weights of the
  all-on/all-off coalitions make the system stiff); ours (QR, rows by decreasing weight) is
  ~1e-6 from it, and the reference is Captum's KernelShap with its surrogate fitted in float64.

Bound: every digit within 1e-4 of its reference map's max (``parity.assert_close_per_digit``,
no flips: these methods take no gradients, so no ReLU/max-pool decision can move a map).
Measured on this 2-core AMD EPYC, AVX-512 and ``XLA_FLAGS=--xla_cpu_max_isa=AVX2`` alike: every
digit of every method at 2e-6..1.1e-5 (worst: refnet Feature Ablation 1.13e-5), the fixture's
rounding (7.6e-6) plus float32.
RISE's softmax scores are compared on refnet only (the same code path as the logits'; one
compilation fewer for the time budget).
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mnist_xai_visualizations as X
from mnist_cnn_model import MNISTCNN
from mnist_xai.methods.perturbation import (kernel_shap_coalitions, lime_coalitions, patch_features, rise_masks,
                                            shapley_permutations)
from parity import assert_close_per_digit
from reference_models import LO, RefNet, unflatten

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NETS = {"cnn": (MNISTCNN, "images", 0.0), "refnet": (RefNet, "refnet/images", float(np.float32(LO)))}
#: the methods as the fixture was made (sample counts: benchmarks/make_reference_perturbation.py)
METHODS = {
    "feature_ablation": lambda m, b: X.FeatureAblation(m, baseline=b, chunk_size=8),
    "shapley_sampling": lambda m, b: X.ShapleyValueSampling(m, samples=2, baseline=b, chunk_size=8),
    "kernel_shap": lambda m, b: X.KernelSHAP(m, samples=100, baseline=b, chunk_size=8),
    "lime": lambda m, b: X.LIME(m, samples=100, alpha=1.0, kernel_width=1.0, baseline=b, chunk_size=8),
    "rise": lambda m, b: X.RISE(m, samples=100, grid=7, probability=0.5, baseline=b, chunk_size=8),
    "rise_softmax": lambda m, b: X.RISE(m, samples=100, grid=7, probability=0.5, baseline=b, softmax=True,
                                        chunk_size=8),
}
CASES = [(net, method) for net in NETS for method in METHODS if (net, method) != ("cnn", "rise_softmax")]


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES / "reference_maps.npz") as d, np.load(FIXTURES / "reference_perturbation.npz") as p:
        r = {k: d[k] for k in d.files}
        r.update({f"p:{k}": p[k] for k in p.files})
    return r


@pytest.fixture(scope="module")
def ours(ref):
    """Every method's maps on both nets, computed once (the digits of the fixture)."""
    digits = ref["p:digits"]
    out = {}
    for net, (cls, images, baseline) in NETS.items():
        p, b = unflatten(ref, f"{net}/params"), unflatten(ref, f"{net}/batch_stats")
        for name, make in METHODS.items():
            if (net, name) not in CASES:
                continue
            out[net, name] = make(cls(), baseline).attribute(p, b, ref[images][digits], ref["targets"][digits])
    return out


@pytest.mark.parametrize("net, method", CASES)
def test_maps_match_the_reference(ref, ours, net, method):
    assert_close_per_digit(ours[net, method], ref[f"p:{net}/{method}"], f"{net}/{method}")


def test_the_samples_are_the_fixtures(ref):
    """Our draws from PRNGKey(0) are the samples the reference was fed (and RISE's masks are
    skimage's resize of them: the generator asserts it; the first 16 are stored)."""
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(shapley_permutations(key, 2, 49), ref["p:shapley/permutations"])
    np.testing.assert_array_equal(kernel_shap_coalitions(key, 100, 49), ref["p:kernel_shap/coalitions"])
    np.testing.assert_array_equal(lime_coalitions(key, 100, 49), ref["p:lime/coalitions"])
    masks, cells, shifts = rise_masks(key, 100, 7, 0.5, (28, 28))
    np.testing.assert_array_equal(cells, ref["p:rise/cells"])
    np.testing.assert_array_equal(shifts, ref["p:rise/shifts"])
    np.testing.assert_allclose(masks[:16], ref["p:rise/masks"], rtol=0, atol=1e-6)
    z = np.asarray(kernel_shap_coalitions(key, 100, 49))
    assert z[0].all() and not z[1].any() and (0 < z[2:].sum(1)).all() and (z[2:].sum(1) < 49).all()
    assert sorted(np.asarray(shapley_permutations(key, 3, 49))[2].tolist()) == list(range(49))


# ----------------------------------------------------------------------------- known answers

W = np.random.default_rng(0).normal(size=(28 * 28, 10)).astype(np.float32)
IMAGES = np.random.default_rng(1).uniform(size=(3, 28, 28, 1)).astype(np.float32)
TARGETS = [2, 5, 7]


def linear(x):
    return x.reshape(len(x), -1) @ W


def linear_answer(baseline, mask=None):
    """phi_f = sum over feature f's pixels of w_p (x_p - baseline), painted on its pixels."""
    fm = patch_features((28, 28), 4) if mask is None else mask
    num = int(fm.max()) + 1
    return np.stack([np.bincount(fm.ravel(), W[:, c] * (IMAGES[i].ravel() - baseline), num)[fm]
                     for i, c in enumerate(TARGETS)])


@pytest.mark.parametrize("make", [
    lambda: X.FeatureAblation(linear, baseline=0.3),
    lambda: X.ShapleyValueSampling(linear, samples=1, baseline=0.3),
    lambda: X.ShapleyValueSampling(linear, samples=3, baseline=0.3),
    lambda: X.KernelSHAP(linear, samples=80, baseline=0.3),
    lambda: X.LIME(linear, samples=80, alpha=0.0, baseline=0.3),
], ids=["feature_ablation", "shapley_1", "shapley_3", "kernel_shap", "lime_alpha0"])
def test_a_linear_model_gets_its_exact_shapley_values(make):
    """On a linear logits function every method here is exact: ablation, each order's
    marginals, and a linear surrogate all give w_f . (x_f - baseline) summed over feature f."""
    a, expect = make().attribute(None, None, IMAGES, TARGETS), linear_answer(0.3)
    np.testing.assert_allclose(a, expect, rtol=0, atol=5e-5 * np.abs(expect).max())


V = np.random.default_rng(2).normal(size=(28 * 28, 16)).astype(np.float32) / 10
U = np.random.default_rng(3).normal(size=(16, 10)).astype(np.float32)


def mlp(x):
    return np.tanh(x.reshape(len(x), -1) @ V) @ U if isinstance(x, np.ndarray) else \
        jax.numpy.tanh(x.reshape(len(x), -1) @ V) @ U


@pytest.mark.parametrize("samples", [1, 3])
def test_shapley_sampling_is_efficient_for_every_order_count(samples):
    """sum_f phi_f = y(x) - y(baseline) on a nonlinear model, whatever the number of orders."""
    a = X.ShapleyValueSampling(mlp, samples=samples, baseline=0.2).attribute(None, None, IMAGES, TARGETS)
    per_feature = a.reshape(3, -1).sum(1) / 16  # every 4x4 feature paints 16 pixels
    y = mlp(IMAGES)[np.arange(3), TARGETS] - mlp(np.full_like(IMAGES, 0.2))[np.arange(3), TARGETS]
    np.testing.assert_allclose(per_feature, y, rtol=0, atol=2e-5 * np.abs(y).max())


def test_kernel_shap_nearly_enforces_efficiency():
    """The 1e6 weights of the all-on/all-off coalitions make sum phi = y(x) - y(baseline), to ~1e-4."""
    a = X.KernelSHAP(mlp, samples=60, baseline=0.2).attribute(None, None, IMAGES, TARGETS)
    y = mlp(IMAGES)[np.arange(3), TARGETS] - mlp(np.full_like(IMAGES, 0.2))[np.arange(3), TARGETS]
    np.testing.assert_allclose(a.reshape(3, -1).sum(1) / 16, y, rtol=1e-3, atol=1e-4)


def test_rise_of_a_constant_score_is_the_mean_mask():
    """A model whose target logit is c everywhere: S = c sum_i M_i / (N p)."""
    def constant(x):
        return jax.numpy.ones((len(x), 10)) * 2.5

    s = X.RISE(constant, samples=50, grid=7, probability=0.25).attribute(None, None, IMAGES, TARGETS)
    masks, _, _ = rise_masks(jax.random.PRNGKey(0), 50, 7, 0.25, (28, 28))
    np.testing.assert_allclose(s, np.broadcast_to(2.5 * np.asarray(masks).sum(0) / (50 * 0.25), s.shape), rtol=1e-5)


def test_feature_masks_any_ids_and_one_per_image():
    """A custom (H, W) mask (ids in any order, one id unused) and an (N, H, W) mask per image."""
    stripes = (np.arange(28)[:, None] // 7 * 2 + np.zeros((1, 28), int)).astype(np.int64)  # ids 0, 2, 4, 6
    a = X.FeatureAblation(linear, feature_mask=stripes).attribute(None, None, IMAGES, TARGETS)
    np.testing.assert_allclose(a, linear_answer(0.0, stripes), rtol=0, atol=2e-5 * np.abs(a).max())
    per_image = np.stack([stripes, stripes.T, patch_features((28, 28), 7)])
    b = X.ShapleyValueSampling(linear, samples=2, feature_mask=per_image).attribute(None, None, IMAGES, TARGETS)
    for i in range(3):
        one = X.ShapleyValueSampling(linear, samples=2, feature_mask=per_image[i]).attribute(
            None, None, IMAGES[i:i + 1], TARGETS[i:i + 1])
        np.testing.assert_allclose(b[i], one[0], rtol=0, atol=1e-5 * np.abs(one).max())


def test_forward_passes_in_blocks_change_nothing():
    """``lax.map`` over blocks of perturbed copies (the last one padded) equals one big batch."""
    e = X.ShapleyValueSampling(mlp, samples=2, baseline=0.2)
    a = e.attribute(None, None, IMAGES, TARGETS)
    e.forward_block = 37  # 3 x 99 copies: 9 blocks, the last padded
    b = e.attribute(None, None, IMAGES, TARGETS, key=jax.random.PRNGKey(0))
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * np.abs(a).max())


def test_noise_tunnel_wraps_a_feature_method():
    """The (H, W)-mask path that NoiseTunnel takes is the one ``attribute`` takes."""
    a = X.FeatureAblation(linear, baseline=0.3).attribute(None, None, IMAGES, TARGETS)
    b = X.NoiseTunnel(linear, "feature_ablation", samples=1, noise_level=0.0, input_range=(0.0, 1.0),
                      method_options={"baseline": 0.3}).attribute(None, None, IMAGES, TARGETS)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


# ----------------------------------------------------------------------------- option errors


@pytest.mark.parametrize("make, match", [
    (lambda m: X.FeatureAblation(m, patch=0), r"patch: expected an integer in 1-28, got 0"),
    (lambda m: X.FeatureAblation(m, baseline="black"), r"baseline: expected a finite number, got 'black'"),
    (lambda m: X.FeatureAblation(m, feature_mask=np.zeros((28, 28))),
     r"feature_mask: expected non-negative integer feature ids, \(H, W\) or \(N, H, W\), got shape \(28, 28\) dtype float64"),
    (lambda m: X.FeatureAblation(m, feature_mask=-np.ones((28, 28), int)),
     r"feature_mask: expected non-negative .* values in \[-1, -1\]"),
    (lambda m: X.ShapleyValueSampling(m, samples=0), r"samples: expected an integer in 1-100000, got 0"),
    (lambda m: X.KernelSHAP(m, samples=1), r"samples: expected an integer in 2-100000, got 1"),
    (lambda m: X.LIME(m, kernel_width=0.0), r"kernel_width: expected a finite number >= 1e-06, got 0.0"),
    (lambda m: X.LIME(m, alpha=-1), r"alpha: expected a finite number >= 0, got -1"),
    (lambda m: X.RISE(m, samples=2.5), r"samples: expected an integer in 1-100000, got 2.5"),
    (lambda m: X.RISE(m, probability=0.0), r"probability: expected a number in \(0, 1\], got 0.0"),
    (lambda m: X.RISE(m, grid=0), r"grid: expected an integer >= 1, got 0"),
    (lambda m: X.RISE(m, softmax="yes"), r"softmax: expected True or False, got 'yes'"),
])
def test_bad_options(make, match):
    with pytest.raises(ValueError, match=match):
        make(MNISTCNN())


@pytest.mark.parametrize("make, match", [
    (lambda: X.FeatureAblation(linear, feature_mask=np.zeros((14, 14), int)),
     r"feature_mask: expected shape \(3, 28, 28\) or \(28, 28\) for these images, got \(14, 14\)"),
    (lambda: X.FeatureAblation(linear, feature_mask=np.zeros((2, 28, 28), int)),
     r"feature_mask: expected shape \(3, 28, 28\) or \(28, 28\) for these images, got \(2, 28, 28\)"),
    (lambda: X.KernelSHAP(linear, feature_mask=np.zeros((28, 28), int)),
     r"feature_mask: expected at least 2 features, got 1"),
    (lambda: X.FeatureAblation(linear, patch=29), r"patch: expected at most the image side \(28\), got 29"),
    (lambda: X.RISE(linear, grid=29), r"grid: expected at most the image side \(28\), got 29"),
])
def test_options_checked_against_the_images(make, match):
    with pytest.raises(ValueError, match=match):
        make().attribute(None, None, IMAGES, TARGETS)


def test_kernel_shap_with_fewer_coalitions_than_features_gives_the_minimum_norm_fit():
    """24 coalitions for 49 features: an underdetermined fit, solved as sklearn's lstsq does
    (minimum norm), not a shape error; the all-on/all-off rows still pin the sum."""
    w = np.random.default_rng(0).normal(size=(28 * 28,)).astype(np.float32)

    def logits_fn(images):
        s = images.reshape(len(images), -1) @ w
        return jnp.stack([s, -s], 1)

    x = np.random.default_rng(1).random((1, 28, 28, 1)).astype(np.float32)
    maps = X.KernelSHAP(logits_fn, samples=24).attribute(None, None, x, [0])
    assert np.isfinite(maps).all()
    per_feature = maps[0, ::4, ::4]  # every pixel of a 4x4 patch carries its feature's value (as Captum)
    np.testing.assert_allclose(per_feature.sum(), float(logits_fn(x)[0, 0] - logits_fn(np.zeros_like(x))[0, 0]),
                               rtol=1e-3)

"""The randomisation metrics (mnist_xai/metrics/randomisation.py): against Quantus 0.6.0 on the
same weights, maps, randomised weights, other classes and noise; known answers on a linear
model whose maps are its weights; every metric on the shipped model and a 32x32 RGB model.

The reference is tests/fixtures/quantus_randomisation.npz (benchmarks/make_reference_metrics_randomisation.py:
MNISTCNN with the weights of reference_maps.npz, 8 digits, Saliency, re-initialised groups
``gaussian_params(params, PRNGKey(7))`` fed to Quantus in place of its own randomisation).
Bounds (measured on this 2-core AMD EPYC, AVX-512, and with XLA_FLAGS=--xla_cpu_max_isa=AVX2):

- random logit, per digit |ours - Quantus| < 1e-6 (measured 4e-8): SSIM of the same maps.
- MPRT, per digit and stage |rho - rho_Quantus| < 1e-4 for the first five stages (measured 1.6e-5)
  and < 3e-3 once conv3 and below are re-initialised (measured 8.9e-4): the saliency of a
  mostly random network has many near-equal pixels whose float32 order differs between jax and
  torch, and Spearman counts every swap. A wrong formula (no |.|, the wrong stage, the wrong
  order) moves rho by > 0.05 (see the known answers).
- smooth MPRT, per digit and stage < 1e-2 (measured 4.1e-3): the same near-ties in 5 copies.
- efficient MPRT, per digit < 1e-2 (measured 2.8e-3): a pixel on a bin edge of the 100-bin
  histogram falls on the other side in float32 (one pixel moves H by ~1e-3).
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import mnist_xai_metrics as M
import mnist_xai_visualizations as X
from mnist_cnn_model import MNISTCNN
from mnist_xai.metrics import MetricInput, evaluate, metric_names
from mnist_xai.metrics import randomisation as RA
from reference_models import ResNet32, unflatten

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FRESH_KEY, SMOOTH_SAMPLES, SMOOTH_NOISE = 7, 5, 0.1  # the fixture's
MNIST_STAGES = ["dense2", "dense1", "conv6+bn6", "conv5+bn5", "conv4+bn4", "conv3+bn3", "conv2+bn2", "conv1+bn1"]


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "quantus_randomisation.npz") as d:
        fx = {k: d[k] for k in d.files}
    with np.load(FIXTURES / "reference_maps.npz") as d:
        ref = {k: d[k] for k in d.files}
    params, bs = unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats")
    inp = MetricInput(fx["images"], targets=fx["targets"], explainer=X.Saliency(MNISTCNN()), params=params,
                      batch_stats=bs, key=jax.random.PRNGKey(0))
    inp.maps = inp.explain()
    np.testing.assert_allclose(inp.maps, fx["maps"], rtol=0, atol=1e-6 * np.abs(fx["maps"]).max())
    return inp, fx, RA.gaussian_params(params, jax.random.PRNGKey(FRESH_KEY))


def test_model_parameter_randomisation_equals_quantus_mprt_stage_by_stage(reference):
    inp, fx, fresh = reference
    r = evaluate("model_parameter_randomisation", inp, fresh_params=fresh)
    assert r.details["layers"] == MNIST_STAGES == [str(s) for s in fx["mprt/stages"][1:]]
    q = np.stack([fx[f"mprt/{s}"] for s in MNIST_STAGES])
    gap = np.abs(r.details["rho"] - q)
    assert gap[:5].max() < 1e-4 and gap.max() < 3e-3, gap.max(1)
    np.testing.assert_array_equal(r.values, r.details["rho"][-1])


def test_random_logit_equals_quantus_with_the_same_other_classes(reference):
    inp, fx, _ = reference
    r = evaluate("random_logit", inp)
    np.testing.assert_array_equal(r.details["off_classes"], fx["random_logit/off_classes"])
    assert np.abs(r.values - fx["random_logit"]).max() < 1e-6


def test_smooth_mprt_equals_quantus_stage_by_stage(reference):
    inp, fx, fresh = reference
    r = evaluate("smooth_mprt", inp, fresh_params=fresh, samples=SMOOTH_SAMPLES, noise=SMOOTH_NOISE)
    assert r.details["layers"] == MNIST_STAGES[::-1]
    q = np.stack([fx[f"smooth_mprt/{s}"] for s in r.details["layers"]])
    assert np.abs(r.details["rho"] - q).max() < 1e-2
    np.testing.assert_allclose(r.values, r.details["rho"].mean(0))


def test_efficient_mprt_equals_quantus(reference):
    inp, fx, fresh = reference
    r = evaluate("efficient_mprt", inp, fresh_params=fresh)
    assert np.abs(r.values - fx["efficient_mprt"]).max() < 1e-2


# ----------------------------------------------------------------------------- known answers


class Linear(nn.Module):
    """logits = x . W (no bias): Saliency's map of class c is |W[:, c]| for every image."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, use_bias=False, name="dense")(x.reshape(len(x), -1))


class TwoLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(6, use_bias=False, name="first")(x.reshape(len(x), -1))
        return nn.Dense(4, use_bias=False, name="second")(h)


@pytest.fixture(scope="module")
def linear():
    model = Linear()
    x = np.random.default_rng(0).uniform(0, 1, (3, 8, 9, 1)).astype(np.float32)
    params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
    fresh = model.init(jax.random.PRNGKey(1), x[:1])["params"]
    inp = MetricInput(x, targets=[0, 1, 3], explainer=X.Saliency(model), params=params, key=jax.random.PRNGKey(2))
    inp.maps = inp.explain()
    w, w2 = np.asarray(params["dense"]["kernel"]), np.asarray(fresh["dense"]["kernel"])
    np.testing.assert_allclose(inp.maps, np.abs(w[:, [0, 1, 3]].T).reshape(3, 8, 9), rtol=1e-6)
    return inp, fresh, w, w2


def test_mprt_of_a_linear_model_is_the_rank_correlation_of_its_weights(linear):
    from scipy.stats import spearmanr

    inp, fresh, w, w2 = linear
    r = evaluate("model_parameter_randomisation", inp, fresh_params=fresh)
    expected = [spearmanr(np.abs(w[:, t]), np.abs(w2[:, t]))[0] for t in inp.targets]
    np.testing.assert_allclose(r.values, expected, rtol=1e-9)
    assert r.details["layers"] == ["dense"]
    same = evaluate("model_parameter_randomisation", inp, fresh_params=inp.params)  # nothing changes
    np.testing.assert_allclose(same.values, 1.0, rtol=1e-12)
    # A signed method (Gradient x Input: w_t x): |.| by default, as Quantus's abs=True; abs=False keeps signs.
    from mnist_xai.methods.gradient import GradientXInput

    gxi = MetricInput(inp.images, targets=inp.targets, explainer=GradientXInput(Linear()), params=inp.params)
    gxi.maps = gxi.explain()
    xs = inp.images.reshape(3, -1)
    for use_abs, f in ((True, np.abs), (False, lambda v: v)):
        expected_gxi = [spearmanr(f(w[:, t] * xi), f(w2[:, t] * xi))[0] for t, xi in zip(inp.targets, xs)]
        np.testing.assert_allclose(evaluate("model_parameter_randomisation", gxi, fresh_params=fresh,
                                            abs=use_abs).values, expected_gxi, rtol=1e-6)
    # sMPRT: a linear model's map does not move with the noise, so it is the same correlation.
    np.testing.assert_allclose(evaluate("smooth_mprt", inp, fresh_params=fresh, samples=3).values, expected, rtol=1e-9)


class WeightedSquare(nn.Module):
    """logits = (s, -s), s = sum(w x^2) / 2: Saliency's map is |w x|, so it moves with the noise."""

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.normal(1.0), (int(np.prod(x.shape[1:])),))
        s = 0.5 * (w * x.reshape(len(x), -1) ** 2).sum(-1)
        return jnp.stack([s, -s], -1)


def test_smooth_mprt_averages_the_maps_of_noisy_copies_scaled_by_each_images_range():
    from scipy.stats import spearmanr

    model = WeightedSquare()
    x = np.random.default_rng(5).uniform(1.0, 3.0, (2, 6, 6, 1)).astype(np.float32)
    x[1] *= 0.5  # another range, so each image's own noise level matters
    params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
    fresh = model.init(jax.random.PRNGKey(1), x[:1])["params"]
    inp = MetricInput(x, targets=0, explainer=X.Saliency(model), params=params, key=jax.random.PRNGKey(2))
    z = RA.smooth_noise(inp, 4)
    std = 0.1 * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    copies = [x + std[:, None, None, None] * zk for zk in z] + [x]  # the last copy is noise-free
    xbar = np.mean([np.abs(c[..., 0]) for c in copies], 0)
    w, w2 = (np.asarray(p["w"]).reshape(6, 6) for p in (params, fresh))
    smoothed = RA.smoothed_maps(inp, params, RA.smooth_inputs(inp, z, 0.1))
    np.testing.assert_allclose(smoothed, np.abs(w) * xbar, rtol=1e-5)
    expected = [spearmanr((np.abs(w) * xb).ravel(), (np.abs(w2) * xb).ravel())[0] for xb in xbar]
    np.testing.assert_allclose(evaluate("smooth_mprt", inp, fresh_params=fresh, samples=4).values, expected,
                               rtol=1e-9)


def test_random_logit_of_a_linear_model_is_the_ssim_of_two_weight_columns(linear):
    from skimage.metrics import structural_similarity

    inp, _, w, _ = linear
    r = evaluate("random_logit", inp)
    off = r.details["off_classes"]
    assert np.all(off != inp.targets) and np.all((off >= 0) & (off < 4))
    expected = []
    for t, o in zip(inp.targets, off):
        a, b = np.abs(w[:, t]) / np.abs(w[:, t]).max(), np.abs(w[:, o]) / np.abs(w[:, o]).max()
        both = np.concatenate([a, b])
        expected.append(structural_similarity(a, b, data_range=both.max() - both.min()))
    np.testing.assert_allclose(r.values, expected, rtol=1e-6)
    two_d = evaluate("random_logit", inp, flat=False, off_classes=off)
    for i, (t, o) in enumerate(zip(inp.targets, off)):
        a, b = (np.abs(w[:, c]).reshape(8, 9) / np.abs(w[:, c]).max() for c in (t, o))
        both = np.concatenate([a.ravel(), b.ravel()])
        assert two_d.values[i] == pytest.approx(structural_similarity(a, b, data_range=both.max() - both.min()),
                                                rel=1e-6)


def test_discrete_entropy_and_efficient_mprt_of_a_linear_model_by_numpys_histogram(linear):
    from scipy.stats import entropy

    inp, fresh, w, w2 = linear
    rng = np.random.default_rng(4)
    maps = rng.normal(size=(5, 7, 7))
    expected = [entropy(np.histogram(m, bins=13)[0]) for m in maps]
    np.testing.assert_allclose(RA.discrete_entropy(maps, 13), expected, rtol=1e-12)
    assert RA.discrete_entropy(np.ones((1, 3, 3)), 10)[0] == 0.0
    h = lambda m: entropy(np.histogram(m, bins=100)[0])  # noqa: E731
    expected = [(h(np.abs(w2[:, t])) - h(np.abs(w[:, t]))) / h(np.abs(w[:, t])) for t in inp.targets]
    np.testing.assert_allclose(evaluate("efficient_mprt", inp, fresh_params=fresh).values, expected, rtol=1e-9)


def test_cascade_orders_and_groups():
    model = TwoLayer()
    x = np.zeros((2, 3, 3, 1), np.float32)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    fresh = model.init(jax.random.PRNGKey(1), x)["params"]
    inp = MetricInput(x, targets=0, explainer=X.Saliency(model), params=params)
    stage = lambda order: [(n, [k for k in p if p[k] is fresh[k]]) for n, p in RA.cascade(inp, fresh, order=order)]  # noqa: E731
    assert stage("top_down") == [("second", ["second"]), ("first", ["first", "second"])]
    assert stage("bottom_up") == [("first", ["first"]), ("second", ["first", "second"])]
    assert stage("independent") == [("second", ["second"]), ("first", ["first"])]
    assert [n for n, _ in RA.cascade(inp, fresh, layers=[("first", "second")])] == ["first+second"]
    mnist = {k: None for k in ("bn1", "bn2", "conv1", "conv2", "dense1", "dense2")}
    assert RA.stages_of(mnist) == [("dense2",), ("dense1",), ("conv2", "bn2"), ("conv1", "bn1")]


def test_randomization_test_wraps_the_registered_metric(linear):
    inp, fresh, _, _ = linear
    wrapped = M.randomization_test(inp.explainer, inp.params, None, fresh, inp.images, inp.targets)
    r = evaluate("model_parameter_randomisation", inp, fresh_params=fresh)
    assert wrapped == [("dense", pytest.approx(float(r.values.mean()), rel=1e-12))]


# ----------------------------------------------------------------------------- any model


def test_every_randomisation_metric_runs_on_the_shipped_model_and_a_32x32_rgb_resnet():
    import mnist_checkpoint as ckpt

    params, bs, model, _ = ckpt.load_checkpoint(ckpt.default_checkpoint())
    with np.load(Path(__file__).resolve().parents[1] / "sample_data" / "mnist_test_sample.npz") as d:
        digits = d["images"][:3].astype(np.float32) / 255.0
    resnet = ResNet32()
    v = resnet.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))
    stats = jax.tree_util.tree_map(lambda a: a + 0.1, v["batch_stats"])
    rgb = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    assert metric_names("randomisation") == ["efficient_mprt", "model_parameter_randomisation", "random_logit",
                                             "smooth_mprt"]
    runs = ((model, params, bs, digits, RA.gaussian_params(params, jax.random.PRNGKey(1))),
            (resnet, v["params"], stats, rgb, None))  # None: ResNet32's own init (fresh_params_of)
    for m, p, s, x, fresh in runs:
        inp = MetricInput(x, explainer=X.Saliency(m), params=p, batch_stats=s)
        inp.maps = inp.explain()
        for name in metric_names("randomisation"):
            options = {"fresh_params": fresh} if name != "random_logit" else {}
            if name == "smooth_mprt":
                options["samples"] = 2
            r = evaluate(name, inp, **options)
            assert r.values.shape == (len(x),) and np.isfinite(r.values).all(), name
            if name == "model_parameter_randomisation":
                assert len(r.details["layers"]) == (8 if m is model else 5)
    assert [n for n, _ in RA.cascade(inp)] == ["classifier", "block2", "block1", "stem_bn", "stem"]



@pytest.mark.parametrize("family", ["nnx", "equinox"])
def test_randomisation_of_an_nnx_or_equinox_model_reinitialises_its_own_parameters(family):
    """Models that carry their own state: the cascade runs over their top-level attributes, and
    the fully randomised stage's maps are those of the model rebuilt by hand with the fresh
    weights; the fresh weights equal to the model's own leave every map as it was."""
    T = pytest.importorskip("test_model_families")
    import equinox as eqx
    from flax import nnx

    from mnist_xai.model import explained

    model, _, _, _, _ = T.build(family, T.CHANNELS[family])
    x = np.clip(T._images(T.CHANNELS[family]), 0, 1)
    inp = MetricInput(x, explainer=X.Saliency(model), key=jax.random.PRNGKey(0))
    inp.maps = inp.explain()
    own = explained(model).param_groups()
    assert set(own) == {"stem", "block", "head"} | ({"bn"} if family == "nnx" else set())
    same = evaluate("model_parameter_randomisation", inp, fresh_params=own, abs=False)
    np.testing.assert_allclose(same.details["rho"], 1.0, atol=1e-12)
    fresh = RA.gaussian_params(own, jax.random.PRNGKey(5))
    r = evaluate("model_parameter_randomisation", inp, fresh_params=fresh, keep_maps=True)
    assert r.details["layers"][-1] == "stem" and np.isfinite(r.values).all()
    if family == "nnx":
        rebuilt = nnx.clone(model)
        weights = nnx.state(rebuilt, nnx.Param)
        nnx.replace_by_pure_dict(weights, fresh)
        nnx.update(rebuilt, weights)
    else:
        rebuilt = model
        for name, sub in fresh.items():
            static = eqx.partition(getattr(model, name), eqx.is_array)[1]
            rebuilt = eqx.tree_at(lambda m, name=name: getattr(m, name), rebuilt, eqx.combine(sub, static))
    by_hand = X.Saliency(rebuilt).attribute(None, None, x, inp.targets)
    scale = np.abs(by_hand).max()
    np.testing.assert_allclose(r.details["maps"][-1], by_hand, rtol=1e-5, atol=1e-5 * scale)
    assert np.abs(by_hand - inp.maps).max() > 0.1 * scale  # the fresh weights do change the maps
    for after, before in zip(jax.tree_util.tree_leaves(explained(model).param_groups()), jax.tree_util.tree_leaves(own)):
        np.testing.assert_array_equal(after, before)  # the user's model is left alone
    with pytest.raises(ValueError, match=r"^params: a .* Module takes None \(its own state\) or some of its "
                                         r"parameter groups .*got a mismatch in nope$"):
        X.Saliency(model).attribute({"nope": np.zeros(3)}, None, x)

def test_wrong_options_say_so_in_one_line(linear):
    inp, fresh, _, _ = linear
    cases = [("model_parameter_randomisation", {"order": "sideways"},
              r"^order: expected one of top_down, bottom_up, independent, got 'sideways'$"),
             ("model_parameter_randomisation", {"layers": ["dense", "nope"]},
              r"^layers: expected parameter groups of the model \(dense\), got 'nope'$"),
             ("efficient_mprt", {"fresh_params": {"other": 1}},
              r"^fresh_params: expected the groups \['dense'\], got \['other'\]$"),
             ("smooth_mprt", {"samples": 0}, r"^samples: expected a whole number > 0, got 0$"),
             ("random_logit", {"off_classes": inp.targets},
              r"^off_classes: expected classes in \[0, 4\) other than the targets, got")]
    for name, options, message in cases:
        with pytest.raises(ValueError, match=message):
            evaluate(name, inp, **({"fresh_params": fresh} | options if name != "random_logit" else options))
    fn = MetricInput(inp.images, targets=0, maps=inp.maps, explainer=X.Saliency(lambda x: x.reshape(len(x), -1)))
    with pytest.raises(ValueError, match=r"^params: a randomisation metric re-initialises parameter groups"):
        evaluate("model_parameter_randomisation", fn)

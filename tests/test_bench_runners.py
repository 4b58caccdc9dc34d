"""benchmarks/bench_xai.py and reference_runners.py without torch: every registered method is
timed (the LRP rules are bench_lrp.py's), both sides get the same options and draws, and the
image counts follow the registry's cost classes. FeatureAblation's fast path is taken."""
import argparse
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_xai  # noqa: E402
import reference_runners as refs  # noqa: E402

import mnist_xai_visualizations as X  # noqa: E402
from mnist_data import load_sample_digits  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    from mnist_checkpoint import load_checkpoint
    return load_checkpoint(str(ROOT / "pretrained"))


@pytest.fixture(scope="module")
def ctx():
    return refs.make_context(load_sample_digits().images[-8:].astype(np.float32) / 255, 100, 1000)


def test_every_registered_method_is_benched_beside_a_reference():
    assert set(bench_xai.BENCHED) == {m for m in X.SPECS if not m.startswith("lrp")}
    assert set(refs.NEW) == set(bench_xai.BENCHED) - set(bench_xai.FIRST_EIGHT)
    assert len(refs.NEW) == 23
    assert [m for m, e in refs.NEW.items() if not e.library] == ["rise"]  # the one without a library class
    assert {refs.NEW[m].library for m in ("guided_ig", "blur_ig", "xrai")} == {"PAIR saliency"}
    assert {refs.NEW[m].library for m in refs.PGC_CAMS} == {"pytorch-grad-cam"}


def test_image_counts_follow_the_cost_class():
    args = argparse.Namespace(captum_max_images=50, slow_max_images=8)
    assert [bench_xai.newer_images(m, 200, args) for m in ("hirescam", "vargrad", "guided_ig")] == [200, 50, 8]
    assert bench_xai.newer_images("guided_ig", 5, args) == 5


def test_both_sides_get_the_same_baselines(shipped, ctx):
    _, _, model, _ = shipped
    gs = X.METHODS["gradient_shap"](model, **refs.our_kwargs("gradient_shap", ctx))
    np.testing.assert_array_equal(gs.baselines, ctx.baseline_images)
    assert gs.stdevs == 0.0 and gs.samples == 25
    eg = X.METHODS["expected_gradients"](model, **refs.our_kwargs("expected_gradients", ctx))
    np.testing.assert_array_equal(eg.baselines, ctx.baseline_images)
    dls = X.METHODS["deeplift_shap"](model, **refs.our_kwargs("deeplift_shap", ctx))
    np.testing.assert_array_equal(dls.baselines, ctx.uniform_baselines)
    assert ctx.uniform_baselines.min() >= 0 and ctx.uniform_baselines.max() <= 1
    assert "baselines: 8 images" in refs.describe_ours("gradient_shap", gs)
    assert refs.our_kwargs("lime", ctx) == {}  # the defaults: 200 samples, ridge alpha 1, 4x4 patches
    assert ctx.per_pass(25) == 10 and ctx.per_pass(5) == 5


def test_the_noise_fed_to_captum_is_our_noise(shipped, ctx):
    """SmoothGrad² of one digit from the z the reference is fed (mean over j of |grad(x + 0.15 z_j)|^2)
    equals our SmoothGradSquared: the injected draws are the ones our method uses."""
    params, batch_stats, model, _ = shipped
    x = load_sample_digits().images[:1].astype(np.float32) / 255
    z = refs.our_draws_for("smoothgrad_sq", ctx)  # (25, 28, 28, 1)
    variables = {"params": params, "batch_stats": batch_stats}
    target = int(np.argmax(model.apply(variables, x)[0]))
    grads = jax.grad(lambda v: model.apply(variables, v)[:, target].sum())(x + 0.15 * z)  # noisy: outside [0, 1]
    want = (np.asarray(grads)[..., 0] ** 2).mean(0)
    got = X.SmoothGradSquared(model).attribute(params, batch_stats, x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_perturbation_draws_are_our_methods_draws(ctx):
    from mnist_xai.methods.perturbation import kernel_shap_coalitions, lime_coalitions, shapley_permutations

    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(refs.our_draws_for("lime", ctx), lime_coalitions(key, 200, 49))
    np.testing.assert_array_equal(refs.our_draws_for("kernel_shap", ctx), kernel_shap_coalitions(key, 200, 49))
    np.testing.assert_array_equal(refs.our_draws_for("shapley_sampling", ctx), shapley_permutations(key, 25, 49))


def test_gradient_shap_draws_are_tiled_per_image_and_restored():
    index, alpha = np.array([3, 1, 4]), np.array([0.25, 0.5, 0.75])
    choice = np.random.choice
    with refs.our_draws(index, alpha):
        np.testing.assert_array_equal(np.random.choice(8, 6), [3, 1, 4, 3, 1, 4])  # row i*S + j gets draw j
        np.testing.assert_array_equal(np.random.uniform(0.0, 1.0, 6), np.tile(alpha, 2))
    assert np.random.choice is choice


def test_feature_ablation_takes_the_incremental_path_only_for_tiling_patches(shipped):
    _, _, model, _ = shipped
    assert X.FeatureAblation(model)._as_occlusion is not None            # 4 divides 28
    assert X.FeatureAblation(model, patch=3)._as_occlusion is None       # edge squares: general path
    mask = np.arange(784).reshape(28, 28) // 98
    assert X.FeatureAblation(model, feature_mask=mask)._as_occlusion is None

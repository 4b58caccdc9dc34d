"""The explanation core on models other than MNISTCNN: any flax.linen module, any layer, any
image size and channel count; and the general path equal to MNISTCNN's fast paths."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import mnist_xai_metrics as M
import mnist_xai_visualizations as X
from mnist_cnn_model import initialize_model, max_pool_2x2
from reference_models import ResNet32
from quick_options import quick

CAMS = X.method_names(family="cam")


@pytest.fixture(scope="module")
def cnn():
    params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)
    return params, batch_stats, model, x


@pytest.fixture(scope="module")
def resnet():
    model = ResNet32()
    variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))
    # Non-trivial BatchNorm statistics, so that inference is not the identity there.
    stats = jax.tree_util.tree_map(lambda a: a + 0.1, variables["batch_stats"])
    x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)  # standardised RGB
    return model, variables["params"], stats, x


# ----------------------------------------------------------------------------- max-pool ties


def test_max_pool_gradient_goes_to_the_first_maximum():
    x = jnp.array([[1.0, 1.0, 0.0, 2.0],
                   [1.0, 1.0, 2.0, 2.0],
                   [0.0, 0.0, 5.0, 3.0],
                   [0.0, 3.0, 3.0, 5.0]]).reshape(1, 4, 4, 1)
    g = np.asarray(jax.grad(lambda v: max_pool_2x2(v).sum())(x))[0, ..., 0]
    # Each window's gradient goes to its first maximum in row-major order, as PyTorch's
    # MaxPool2d, TensorFlow and XLA's select_and_scatter do: all-tied -> top-left.
    expected = np.array([[1, 0, 0, 1],
                         [0, 0, 0, 0],
                         [0, 0, 1, 0],
                         [0, 1, 0, 0]], np.float32)
    np.testing.assert_array_equal(g, expected)
    np.testing.assert_array_equal(np.asarray(max_pool_2x2(x))[0, ..., 0], [[1, 2], [3, 5]])
    # The same gradient as flax's nn.max_pool (XLA reduce_window), on random ties too.
    y = jnp.round(jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3)) * 2)  # many ties
    w = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 3))
    ours = jax.grad(lambda v: (max_pool_2x2(v) * w).sum())(y)
    xla = jax.grad(lambda v: (nn.max_pool(v, (2, 2), (2, 2)) * w).sum())(y)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(xla))


# ----------------------------------------------------------------------------- MNISTCNN: general path == fast path


@pytest.mark.parametrize("name", CAMS)
def test_named_layer_equals_the_fast_path_on_mnistcnn(name, cnn):
    """``layer="block3"`` reaches MNISTCNN's last conv block through method interception; the
    maps equal the features/head fast path's (folded BatchNorm) to float rounding."""
    params, batch_stats, model, x = cnn
    fast = X.make_explainer(name, model)
    general = X.make_explainer(name, model, layer="block3")
    targets = [1, 4, 7]
    a = fast.attribute(params, batch_stats, x, targets)
    b = general.attribute(params, batch_stats, x, targets)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
    np.testing.assert_allclose(general.raw_cam(params, batch_stats, x, targets),
                               fast.raw_cam(params, batch_stats, x, targets), rtol=0, atol=1e-5 * np.abs(a).max())


@pytest.mark.parametrize("name", ["saliency", "gradient_x_input", "integrated_gradients", "smoothgrad", "occlusion"])
def test_a_plain_logits_function_equals_the_module(name, cnn):
    """The same model handed over as a function ``images -> logits`` (no Flax, no fast paths)."""
    params, batch_stats, model, x = cnn
    variables = {"params": params, "batch_stats": batch_stats}

    def logits_fn(images):
        return model.apply(variables, images)

    opts = {"input_range": (0.0, 1.0)} if name == "smoothgrad" else {}
    a = X.make_explainer(name, model).attribute(params, batch_stats, x, [0, 5, 9])
    b = X.make_explainer(name, logits_fn, **opts).attribute(None, None, x, [0, 5, 9])
    # Float rounding only (the function closes over the weights, so XLA folds them differently):
    # occlusion subtracts logits of ~10 units; IG sums 100 gradients of this untrained net's
    # tiny maps (max ~3e-3), where rounding reaches 2.5e-4 of the maximum.
    scale = {"occlusion": 10.0, "integrated_gradients": 10 * np.abs(a).max()}.get(name, np.abs(a).max())
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * scale)


# ----------------------------------------------------------------------------- a 32x32 RGB residual net


def test_every_method_on_a_32x32_rgb_resnet(resnet):
    model, params, stats, x = resnet
    before = x.copy()
    for name in X.METHODS:
        opts = {"layer": "block2"} if name in CAMS else {}
        maps, logits = X.make_explainer(name, model, **opts, **quick(name)).attribute(params, stats, x, [0, 1, 2, 4],
                                                                        return_logits=True)
        assert maps.shape == (4, 32, 32) and np.isfinite(maps).all(), name
        assert logits.shape == (4, 5)
        assert np.abs(maps).max() > 0, name
    np.testing.assert_array_equal(x, before)  # inputs are never mutated


def test_gradcam_on_resnet_equals_the_gap_dense_formula(resnet):
    """The explained layer feeds a global average pool and one Dense layer, so
    d y^c / d A^k_ij = W[k, c] / (h w): Grad-CAM is ReLU(sum_k A^k W[k, c]) / (h w) (the CAM of
    Zhou et al. 2016), with A read independently through capture_intermediates."""
    model, params, stats, x = resnet
    variables = {"params": params, "batch_stats": stats}
    _, state = model.apply(variables, x, capture_intermediates=lambda m, _: m.name == "block2",
                           mutable=["intermediates"])
    a = np.asarray(state["intermediates"]["block2"]["__call__"][0])  # (4, 16, 16, 32)
    w = np.asarray(params["classifier"]["kernel"])  # (32, 5)
    targets = np.array([0, 1, 2, 4])
    cam = np.maximum(np.einsum("nhwk,kn->nhw", a, w[:, targets]), 0) / (a.shape[1] * a.shape[2])
    raw = X.GradCAM(model, layer="block2").raw_cam(params, stats, x, targets)
    np.testing.assert_allclose(raw, cam, rtol=1e-4, atol=1e-6 * np.abs(cam).max())
    assert raw.shape == (4, 16, 16)


def test_saliency_on_rgb_is_the_channel_max_of_the_gradient(resnet):
    model, params, stats, x = resnet
    variables = {"params": params, "batch_stats": stats}
    grads = jax.grad(lambda v: model.apply(variables, v)[:, 3].sum())(jnp.asarray(x))
    expected = np.abs(np.asarray(grads)).max(-1)
    np.testing.assert_allclose(X.Saliency(model).attribute(params, stats, x, 3), expected, rtol=1e-5, atol=1e-8)
    gxi = X.GradientXInput(model).attribute(params, stats, x, 3)
    np.testing.assert_allclose(gxi, (np.asarray(grads) * x).sum(-1), rtol=1e-4, atol=1e-7)


def test_integrated_gradients_completeness_on_resnet(resnet):
    model, params, stats, x = resnet
    ig = X.IntegratedGradients(model, steps=128, baseline=-1.0)  # a baseline in the model's own range
    gap, delta = ig.completeness_gap(params, stats, x)
    assert np.all(np.abs(delta) > 1e-3)
    # The ReLU kinks slow Gauss-Legendre's convergence: 0.2-2.4% here at 128 steps (2-13% at 32).
    assert np.all(np.abs(gap) <= 0.03 * np.abs(delta)), (gap, delta)


def test_smoothgrad_uses_each_images_range_without_a_declared_one(resnet):
    model, params, stats, x = resnet
    variables = {"params": params, "batch_stats": stats}
    sg = X.SmoothGrad(model, samples=4, noise_level=0.1)
    key = jax.random.PRNGKey(7)
    z = jax.random.normal(key, (4, 1, 32, 32, 3))
    sigma = 0.1 * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))  # PAIR's convention
    noisy = (x[None] + sigma[None, :, None, None, None] * z).reshape(-1, 32, 32, 3)
    grads = jax.grad(lambda v: model.apply(variables, v)[:, 2].sum())(noisy).reshape(4, 4, 32, 32, 3)
    expected = np.abs(np.asarray(grads)).mean(0).max(-1)
    np.testing.assert_allclose(sg.attribute(params, stats, x, 2, key=key), expected, rtol=1e-4, atol=1e-7)


def test_deletion_insertion_on_resnet_with_its_own_black(resnet):
    model, params, stats, x = resnet
    maps = X.Saliency(model).attribute(params, stats, x, [0, 1, 2, 3])
    out = M.deletion_insertion(model, params, stats, x, maps, [0, 1, 2, 3], steps=4, baseline=-1.0)
    variables = {"params": params, "batch_stats": stats}
    probs = np.asarray(jax.nn.softmax(model.apply(variables, x)))
    np.testing.assert_allclose(out["deletion_curve"][:, 0], probs[np.arange(4), [0, 1, 2, 3]], rtol=1e-5)
    black = np.asarray(jax.nn.softmax(model.apply(variables, np.full((1, 32, 32, 3), -1.0, np.float32))))[0]
    np.testing.assert_allclose(out["deletion_curve"][:, -1], black[[0, 1, 2, 3]], rtol=1e-5)


# ----------------------------------------------------------------------------- Score-CAM's own map


def test_scorecam_raw_cam_is_its_own_and_relu_is_respected(cnn):
    params, batch_stats, model, x = cnn
    score = X.ScoreCAM(model).raw_cam(params, batch_stats, x, [1, 2, 3])
    grad = X.GradCAM(model).raw_cam(params, batch_stats, x, [1, 2, 3])
    assert not np.allclose(score / score.max(), grad / grad.max(), atol=1e-3)  # not Grad-CAM's map
    maps = X.ScoreCAM(model).attribute(params, batch_stats, x, [1, 2, 3])
    np.testing.assert_allclose(maps, np.asarray(X.upsample(score)), rtol=1e-5, atol=1e-7)
    signed = X.ScoreCAM(model, relu=False).raw_cam(params, batch_stats, x, [1, 2, 3])
    np.testing.assert_allclose(np.maximum(signed, 0), score, rtol=1e-5, atol=1e-7)


def test_align_corners_upsampling_hits_the_corners():
    m = np.arange(4.0, dtype=np.float32).reshape(1, 2, 2)
    up = np.asarray(X.upsample(m, (3, 3), align_corners=True))[0]
    np.testing.assert_allclose(up, [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]])


# ----------------------------------------------------------------------------- bad input


class NoBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(3, name="out")(x.mean((1, 2)))


class FlatDense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10, name="dense")(x.reshape(x.shape[0], -1))


class NotAClassifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(2, (3, 3), name="conv")(x)


def test_a_model_without_batchnorm_takes_empty_batch_stats():
    model = NoBatchNorm()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 12, 2)))["params"]
    x = np.random.default_rng(0).random((2, 10, 12, 2)).astype(np.float32)
    for stats in ({}, None):
        maps = X.GradCAM(model).attribute(params, stats, x)  # layer=None: the last spatial layer
        assert maps.shape == (2, 10, 12)
    np.testing.assert_allclose(X.GradCAM(model).attribute(params, None, x),
                               X.GradCAM(model, layer="conv").attribute(params, None, x))


@pytest.mark.parametrize("make, images, match", [
    (lambda m: X.GradCAM(m, layer="blok2"), None,
     r"layer: expected one of ResNet32's layers \(stem, stem_bn, block1/conv1, .*block2, classifier\), got 'blok2'"),
    (lambda m: X.GradCAM(m, layer="classifier"), None,
     r"layer 'classifier': expected a spatial output \(N, h, w, C\), got shape \(1, 5\) for one image"),
    (lambda m: X.ScoreCAM(m, layer=3), None, r"layer: expected a layer path such as 'block3/conv2' \(or None\), got 3"),
    (lambda m: X.Saliency(m), np.zeros((2, 32, 32, 3), np.uint8), r"images: expected float images in the model's"),
    (lambda m: X.Saliency(m), np.zeros((2, 32, 32, 3, 1), np.float32), r"images: expected \(N, H, W, C\)"),
    (lambda m: X.Saliency(m), np.zeros((2, 32, 32, 1), np.float32),
     r"params/batch_stats do not fit ResNet32: params/stem/kernel expected \(3, 3, 1, 16\), got \(3, 3, 3, 16\)"),
    (lambda m: X.IntegratedGradients(m, baseline=np.zeros((28, 28))), None,
     r"baseline: expected a scalar or one 32x32 image \(\(32, 32, 3\)\), got shape \(28, 28\)"),
    (lambda m: X.Occlusion(m, patch=40), None, r"patch: expected at most the image side \(32\), got 40"),
])
def test_bad_input_on_a_general_model(make, images, match, resnet):
    model, params, stats, x = resnet
    with pytest.raises(ValueError, match=match):
        make(model).attribute(params, stats, x if images is None else images)


def test_images_that_do_not_fit_and_models_that_do_not_classify():
    flat = FlatDense()
    params = flat.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    with pytest.raises(ValueError, match=r"params/batch_stats do not fit FlatDense: params/dense/kernel expected "
                                         r"\(1024, 10\), got \(784, 10\)"):
        X.Saliency(flat).attribute(params, None, np.zeros((1, 32, 32, 1), np.float32))
    with pytest.raises(ValueError, match=r"images: shape \(1, 32, 32, 1\) does not fit logits_fn: "):
        X.Saliency(lambda v: flat.apply({"params": params}, v)).attribute(None, None, np.zeros((1, 32, 32, 1), np.float32))
    conv = NotAClassifier()
    params = conv.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]
    with pytest.raises(ValueError, match=r"model: expected NotAClassifier to return logits of shape \(N, classes\), "
                                         r"got \(1, 8, 8, 2\) for one image"):
        X.Saliency(conv).attribute(params, {}, np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"layer: a CAM method needs a flax.linen Module"):
        X.GradCAM(lambda v: v.mean((1, 2))).attribute(None, None, np.zeros((1, 8, 8, 3), np.float32))

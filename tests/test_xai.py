"""Explanation methods: known answers, axioms, batching, bad input."""
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import mnist_xai_visualizations as X
from mnist_cnn_model import initialize_model
from quick_options import quick


class GapDenseNet(nn.Module):
    """features: 4x4 average pool of the image into 2 channels; head: GAP -> Dense (a CAM net)."""

    def setup(self):
        self.conv = nn.Conv(2, (1, 1))
        self.dense = nn.Dense(10)

    def features(self, images):
        pooled = images.reshape(-1, 7, 4, 7, 4, 1).mean(axis=(2, 4))  # (N, 7, 7, 1)
        return self.conv(pooled)  # (N, 7, 7, 2)

    def head(self, feature_map):
        return self.dense(feature_map.mean(axis=(1, 2)))

    def __call__(self, images):
        return self.head(self.features(images))


class LinearNet(nn.Module):
    """logits = W . flatten(x) + b; features is the image itself."""

    def setup(self):
        self.dense = nn.Dense(10)

    def features(self, images):
        return images

    def head(self, feature_map):
        return self.dense(feature_map.reshape(feature_map.shape[0], -1))

    def __call__(self, images):
        return self.head(self.features(images))


def _init(module):
    variables = module.init(jax.random.PRNGKey(1), jnp.zeros((1, 28, 28, 1)))
    return variables["params"], variables.get("batch_stats", {})


@pytest.fixture(scope="module")
def cnn():
    params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
    return params, batch_stats, model


@pytest.fixture(scope="module")
def digits():
    rng = np.random.default_rng(0)
    return rng.random((3, 28, 28, 1)).astype(np.float32)


def test_gradcam_equals_cam_on_gap_dense_head():
    model = GapDenseNet()
    params, batch_stats = _init(model)
    x = np.random.default_rng(1).random((4, 28, 28, 1)).astype(np.float32)
    targets = np.array([0, 3, 7, 9])
    # CAM (Zhou et al. 2016): M_c = sum_k w_k^c A_k, computed by hand from the weights.
    fmap = np.asarray(model.apply({"params": params}, x, method=model.features))
    w = np.asarray(params["dense"]["kernel"])  # (2, 10)
    cam = np.einsum("nhwk,kn->nhw", fmap, w[:, targets])
    raw = X.GradCAM(model, relu=False).raw_cam(params, batch_stats, x, targets)
    np.testing.assert_allclose(raw, cam / 49, rtol=1e-5, atol=1e-7)  # alpha_k = w_k^c / (7 * 7)
    relu_cam = X.GradCAM(model).raw_cam(params, batch_stats, x, targets)
    np.testing.assert_allclose(relu_cam, np.maximum(cam, 0) / 49, rtol=1e-5, atol=1e-7)


def test_gradcam_hand_built_7x7_literal():
    model = GapDenseNet()
    params, batch_stats = _init(model)
    # Channel 0 = pooled image, channel 1 = 0.5 everywhere; class 0 weights (2, -1).
    params = jax.tree_util.tree_map(np.zeros_like, params)
    params["conv"]["kernel"] = np.array([[[[1.0, 0.0]]]], np.float32)
    params["conv"]["bias"] = np.array([0.0, 0.5], np.float32)
    params["dense"]["kernel"] = np.zeros((2, 10), np.float32)
    params["dense"]["kernel"][:, 0] = [2.0, -1.0]
    image = np.zeros((28, 28), np.float32)
    image[:4, :4] = 1.0  # exactly the top-left pooling cell
    raw = X.GradCAM(model).raw_cam(params, batch_stats, image, [0])[0]
    expected = np.zeros((7, 7), np.float32)
    expected[0, 0] = (2 * 1.0 - 1 * 0.5) / 49  # elsewhere 2*0 - 0.5 < 0, cut by the ReLU
    np.testing.assert_allclose(raw, expected, atol=1e-7)
    heatmap, pred, score = X.GradCAM(model).compute_gradcam(params, batch_stats, image, target_class=0)
    assert heatmap.shape == (28, 28) and heatmap.max() == pytest.approx(1.0) and heatmap.min() == 0.0
    assert heatmap[1, 1] > heatmap[27, 27]
    assert score == pytest.approx(2 * (1 / 49) - 0.5)  # GAP of channel 0 is 1/49


def test_saliency_of_linear_model_is_abs_weights():
    model = LinearNet()
    params, batch_stats = _init(model)
    x = np.random.default_rng(2).random((3, 28, 28)).astype(np.float32)
    targets = np.array([1, 4, 8])
    maps = X.Saliency(model).attribute(params, batch_stats, x, targets)
    w = np.asarray(params["dense"]["kernel"])  # (784, 10)
    np.testing.assert_allclose(maps, np.abs(w[:, targets]).T.reshape(3, 28, 28), rtol=1e-6)
    signed = X.Saliency(model, absolute=False).attribute(params, batch_stats, x, targets)
    np.testing.assert_allclose(signed, w[:, targets].T.reshape(3, 28, 28), rtol=1e-6)
    gxi = X.GradientXInput(model).attribute(params, batch_stats, x, targets)
    np.testing.assert_allclose(gxi, x * w[:, targets].T.reshape(3, 28, 28), rtol=1e-5, atol=1e-7)


def test_integrated_gradients_exact_on_linear_model():
    model = LinearNet()
    params, batch_stats = _init(model)
    x = np.random.default_rng(3).random((2, 28, 28)).astype(np.float32)
    ig = X.IntegratedGradients(model, steps=8).attribute(params, batch_stats, x, [5, 6])
    w = np.asarray(params["dense"]["kernel"])
    np.testing.assert_allclose(ig, x * w[:, [5, 6]].T.reshape(2, 28, 28), rtol=1e-5, atol=1e-7)


def test_integrated_gradients_completeness_random_cnn(cnn, digits):
    params, batch_stats, model = cnn
    ig = X.IntegratedGradients(model)
    gap, delta = ig.completeness_gap(params, batch_stats, digits)
    assert np.all(np.abs(gap) <= 0.01 * np.abs(delta) + 1e-4)
    # Maps already at hand give the same answer without a second IG pass.
    maps = ig.attribute(params, batch_stats, digits)
    gap2, delta2 = ig.completeness_gap(params, batch_stats, digits, maps=maps)
    np.testing.assert_allclose(gap2, gap, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(delta2, delta, rtol=1e-6)
    with pytest.raises(ValueError, match=r"maps: expected shape \(3, 28, 28\), got \(2, 28, 28\)"):
        ig.completeness_gap(params, batch_stats, digits, maps=maps[:2])


ALL_METHODS = list(X.METHODS)
SUBTRACTS_LOGITS = ("occlusion", "ablationcam")  # map = difference of two forward passes
# Ablation-CAM divides that difference by the score: on this untrained net's small logits the
# rounding of a batch's blocking reaches ~3e-5 of the map's max, so 1e-4 of it (the parity bound).
ATOL = {"ablationcam": 1e-4}


@pytest.fixture(scope="module")
def explainer_of(cnn):
    """One explainer a method for this module's tests on the CNN, so that a method's batch of
    three compiles once for all of them (three images, any targets: one compiled call)."""
    made = {}

    def get(name):
        if name not in made:
            made[name] = X.make_explainer(name, cnn[2], **quick(name))
        return made[name]
    return get


@pytest.mark.parametrize("name", ALL_METHODS)
def test_batched_equals_one_at_a_time_and_no_mutation(name, cnn, digits, explainer_of):
    params, batch_stats, model = cnn
    explainer = explainer_of(name)
    before = digits.copy()
    targets = np.array([2, 5, 7])
    maps, preds, scores = explainer.explain(params, batch_stats, digits, targets)
    assert maps.shape == (3, 28, 28) and np.isfinite(maps).all()
    np.testing.assert_array_equal(digits, before)
    logits = model.apply({"params": params, "batch_stats": batch_stats}, digits)
    for i in range(3):
        one = explainer.attribute(params, batch_stats, digits[i, :, :, 0], targets[i])
        # Occlusion and Ablation-CAM subtract two forward passes: float32 rounding, which depends
        # on how a batch's matmuls are blocked, leaves ~1e-6 of the network's largest logit (~10),
        # however small the difference itself is.
        scale = max(np.abs(maps[i]).max(), np.abs(logits[i]).max() if name in SUBTRACTS_LOGITS else 0.0)
        np.testing.assert_allclose(one[0], maps[i], rtol=1e-4, atol=ATOL.get(name, 1e-6) * scale)
    np.testing.assert_array_equal(preds, np.asarray(logits).argmax(-1))
    np.testing.assert_allclose(scores, np.asarray(logits)[np.arange(3), targets], rtol=1e-5)
    same_maps, all_logits = explainer.attribute(params, batch_stats, digits, targets, return_logits=True)
    np.testing.assert_array_equal(same_maps, maps)
    np.testing.assert_allclose(all_logits, np.asarray(logits), rtol=1e-5, atol=1e-5)  # of the images as given


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("name", ALL_METHODS)
def test_flat_images_give_finite_maps(name, cnn, explainer_of):
    """Black, grey and white images (zero gradients, zero-variance activations, one-segment
    pictures): finite maps, and finite once normalised for display, with no 0/0 warning."""
    params, batch_stats, _ = cnn
    flat = np.stack([np.full((28, 28, 1), fill, np.float32) for fill in (0.0, 0.5, 1.0)])  # one image a row
    maps = explainer_of(name).attribute(params, batch_stats, flat)
    assert maps.shape == (3, 28, 28) and np.isfinite(maps).all()
    assert np.isfinite(np.asarray(X.normalize_maps(maps))).all()


def test_chunking_matches_single_call(cnn):
    params, batch_stats, model = cnn
    x = np.random.default_rng(4).random((7, 28, 28, 1)).astype(np.float32)
    whole = X.Saliency(model).attribute(params, batch_stats, x)
    done = []
    chunked = X.Saliency(model, chunk_size=3).attribute(params, batch_stats, x,
                                                        progress=done.append)  # 3 + 3 + 1 (padded)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-8)
    assert done == [3, 3, 1]  # progress counts real images, not the padding


def test_normalize_maps_guards_flat_maps():
    out = np.asarray(X.normalize_maps(np.stack([np.full((28, 28), 3.0), np.arange(784.0).reshape(28, 28)])))
    np.testing.assert_array_equal(out[0], 0.0)
    assert out[1].min() == 0.0 and out[1].max() == 1.0


def test_uint8_images_are_scaled(cnn):
    params, batch_stats, model = cnn
    img = (np.random.default_rng(5).random((28, 28)) * 255).astype(np.uint8)
    a = X.Saliency(model).attribute(params, batch_stats, img)
    b = X.Saliency(model).attribute(params, batch_stats, img.astype(np.float32) / 255)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_overlay_heatmap_pure_and_checked():
    img = np.linspace(0, 1, 784, dtype=np.float32).reshape(28, 28)
    hm = img[::-1].copy()
    out = X.overlay_heatmap(img, hm, alpha=0.0)
    assert out.shape == (28, 28, 3)
    np.testing.assert_allclose(out[..., 0], img)
    with pytest.raises(ValueError, match=r"heatmap values expected in \[0, 1\], got 2"):
        X.overlay_heatmap(img, hm * 2 + 0.5)
    with pytest.raises(ValueError, match="heatmap expected shape"):
        X.overlay_heatmap(img, np.zeros((7, 7)))


@pytest.mark.parametrize("images, match", [
    (np.zeros((28, 28, 3), np.float32), "1 grayscale channel, got 3"),
    (np.zeros((2, 32, 32, 1), np.float32), r"expected \(N, 28, 28, 1\).*got shape \(2, 32, 32, 1\)"),
    (np.zeros((28,), np.float32), r"got shape \(28,\)"),
    (np.zeros((0, 28, 28, 1), np.float32), "empty batch"),
    (np.full((28, 28), np.nan, np.float32), "finite pixel values, got 784 NaN/inf"),
    (np.full((28, 28), np.inf, np.float32), "finite pixel values"),
    (np.array([["a"] * 28] * 28), "float or uint8"),
    (np.full((28, 28), 255.0, np.float32), r"float pixels in \[0, 1\].*got values in \[255, 255\]"),
    (np.full((28, 28), -0.42, np.float32), r"float pixels in \[0, 1\]"),  # standardised input
    (np.full((28, 28), 256, np.int64), "integer pixels in 0-255"),
])
def test_bad_images(images, match, cnn):
    params, batch_stats, model = cnn
    with pytest.raises(ValueError, match=match):
        X.GradCAM(model).attribute(params, batch_stats, images)


@pytest.mark.parametrize("targets, match", [
    ([10], "classes in 0-9, got 10"),
    ([-1], "classes in 0-9, got -1"),
    ([1, 2], r"one class per image \(1\), got shape \(2,\)"),
    ([1.5], "expected integers"),
])
def test_bad_targets(targets, match, cnn, digits):
    params, batch_stats, model = cnn
    with pytest.raises(ValueError, match=match):
        X.Saliency(model).attribute(params, batch_stats, digits[:1], targets)


def test_bad_method_name_and_model():
    with pytest.raises(ValueError, match="method: expected one of gradcam"):
        X.make_explainer("no_such_method", LinearNet())
    with pytest.raises(ValueError, match=r"model: expected a flax.linen or flax.nnx Module, an Equinox Module, a Haiku "
                                         r"transform \(hk.transform / hk.transform_with_state\) or a function "
                                         r"images -> logits, got object"):
        X.GradCAM(object())


@pytest.mark.parametrize("make, match", [
    (lambda m: X.IntegratedGradients(m, steps=2.5), r"steps: expected an integer >= 1, got 2.5"),
    (lambda m: X.IntegratedGradients(m, steps="10"), r"steps: expected an integer >= 1, got '10'"),
    (lambda m: X.SmoothGrad(m, samples=0), r"samples: expected an integer >= 1, got 0"),
    (lambda m: X.SmoothGrad(m, noise_level=float("inf")), r"noise_level: expected a finite number >= 0, got inf"),
    (lambda m: X.Occlusion(m, patch=29), r"patch: expected an integer in 1-28, got 29"),
    (lambda m: X.Occlusion(m, stride=True), r"stride: expected an integer in 1-28, got True"),
    (lambda m: X.Occlusion(m, baseline=float("nan")), r"baseline: expected a finite number, got nan"),
    (lambda m: X.Saliency(m, chunk_size=0), r"chunk_size: expected an integer >= 1, got 0"),
    (lambda m: X.make_explainer("gradcam", m, steps=10), r"gradcam: expected options among chunk_size, layer, relu, got steps"),
    (lambda m: X.make_explainer(["gradcam"], m), r"method: expected one of gradcam"),
])
def test_bad_method_options(make, match, cnn):
    with pytest.raises(ValueError, match=match):
        make(cnn[2])


def test_weights_of_another_architecture_are_refused(cnn, digits):
    from mnist_cnn_model import MNISTCNN, initialize_model
    params, batch_stats, model = cnn
    other_params, other_stats, _ = initialize_model(jax.random.PRNGKey(0), MNISTCNN(widths=(16, 32, 64)))
    with pytest.raises(ValueError, match=r"do not fit MNISTCNN: batch_stats/bn1/mean expected \(32,\), got \(16,\)"):
        X.GradCAM(model).compute_gradcam(other_params, other_stats, digits[0])
    with pytest.raises(ValueError, match="batch_stats: expected the MNISTCNN's batch_stats"):
        X.Saliency(model).attribute(params, None, digits[:1])


def test_compute_gradcam_rejects_a_batch(cnn, digits):
    params, batch_stats, model = cnn
    with pytest.raises(ValueError, match="expected one image, got a batch of 3"):
        X.GradCAM(model).compute_gradcam(params, batch_stats, digits)


def test_integrated_gradients_completeness_on_real_digits_with_shipped_checkpoint():
    """Sundararajan et al.'s completeness axiom: within 1% on average at the default steps,
    and within 3% on every digit (the ReLU network's kinks make single digits harder)."""
    from mnist_checkpoint import load_checkpoint
    from mnist_data import load_sample_digits
    params, batch_stats, model, _ = load_checkpoint()  # pretrained/
    digits = load_sample_digits()
    x = digits.images[::10].astype(np.float32) / 255  # 20 real test digits, two per class
    gap, delta = X.IntegratedGradients(model).completeness_gap(params, batch_stats, x)
    assert np.all(np.abs(delta) > 0.5)  # a real difference between digit and black baseline
    error = np.abs(gap) / np.abs(delta)
    assert error.mean() < 0.01 and error.max() < 0.03, (error.mean(), error.max())




@pytest.fixture(scope="module")
def shipped():
    from mnist_checkpoint import load_checkpoint
    from mnist_data import load_sample_digits
    params, batch_stats, model, _ = load_checkpoint()  # pretrained/
    return params, batch_stats, model, load_sample_digits().images[::25].astype(np.float32) / 255


@pytest.mark.parametrize("patch, stride", [(4, 2), (3, 1), (5, 3), (1, 1), (7, 7), (14, 14), (28, 1)])
def test_incremental_occlusion_equals_occluding_the_whole_image(patch, stride, shipped):
    """Recomputing only what a window changes gives the logits of the whole occluded image:
    border windows, odd strides (the last window is appended off the grid), one pixel, large
    patches; a 28x28 patch leaves nothing to save and runs in full."""
    params, batch_stats, model, x = shipped  # real digits, trained BatchNorm statistics
    x = x[:3] if stride > 1 else x[:1]  # stride 1: 600-800 windows a digit
    variables = {"params": params, "batch_stats": batch_stats}
    fast = X.Occlusion(model, patch, stride)
    full = X.Occlusion(model, patch, stride, incremental=False)
    assert full.plan == [] and (fast.plan == []) == (patch == 28)
    got = np.asarray(jax.jit(fast.occluded_logits)(variables, x))
    want = np.asarray(jax.jit(full.occluded_logits)(variables, x))
    assert got.shape == want.shape == (len(x), len(fast.masks), 10)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())
    if (patch, stride) == (4, 2):  # the default: the maps too
        np.testing.assert_allclose(fast.attribute(params, batch_stats, x), full.attribute(params, batch_stats, x),
                                   rtol=0, atol=2e-6 * np.abs(want).max())


@pytest.mark.parametrize("baseline", [0.7, -0.4])
def test_incremental_occlusion_occludes_with_a_nonzero_baseline(baseline, shipped):
    """Issue 24: the incremental path puts the patch in as ``stem(baseline)``; ignoring the
    baseline there (occluding with 0, black) went unnoticed, as every other test occludes
    with 0. At a non-zero baseline the fast logits must equal occluding the whole image, and
    differ from occluding with 0 by far more than the bound (so a baseline ignored fails)."""
    params, batch_stats, model, x = shipped
    x = x[:2]
    variables = {"params": params, "batch_stats": batch_stats}
    fast = X.Occlusion(model, 4, 2, baseline=baseline)
    assert fast.plan  # the incremental path runs
    got = np.asarray(jax.jit(fast.occluded_logits)(variables, x))
    want = np.asarray(jax.jit(X.Occlusion(model, 4, 2, baseline=baseline, incremental=False).occluded_logits)(
        variables, x))
    black = np.asarray(jax.jit(X.Occlusion(model, 4, 2, incremental=False).occluded_logits)(variables, x))
    bound = 2e-6 * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=bound)
    assert np.abs(want - black).max() > 1000 * bound  # the baseline matters: ignoring it cannot pass


def test_occlusion_plan_covers_every_changed_row():
    """Each window's recomputed pooled rows include every row its patch can reach through
    the block's two 3x3 convs, and the crops are smaller than the maps they replace."""
    for patch, stride in [(4, 2), (3, 1), (5, 3), (6, 4)]:
        starts = X.Occlusion(LinearNet(), patch, stride).starts
        plan = X.occlusion_plan(starts, patch, [((0, 1), True), ((2, 3), True), ((4, 5), False)])
        assert [p["size"] for p in plan] == [28, 14]
        lo, hi = np.asarray(starts), np.asarray(starts) + patch
        for p in plan:
            lo, hi = np.maximum(lo - 2, 0) // 2, (np.minimum(hi + 2, p["size"]) + 1) // 2  # changed pooled rows
            assert (p["out"] <= lo).all() and (hi <= p["out"] + p["out_size"]).all()
            assert p["crop"] == 2 * p["out_size"] + 4 and (p["start"] % 2 == 0).all()
            assert p["crop"] <= p["size"]
    assert X.occlusion_plan([0], 28, [((0, 1), True)]) == []  # nothing to save


_TWO_DEVICE_SCRIPT = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "tests")]
from quick_options import quick
import jax, numpy as np
import mnist_xai_visualizations as X
from mnist_cnn_model import initialize_model
assert len(jax.local_devices()) == 2
params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
x = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)
out = {}
from quick_options import TWO_DEVICE_METHODS
for name in TWO_DEVICE_METHODS:
    e = X.make_explainer(name, model, chunk_size=2, **quick(name))  # 3 images: two chunks, the last padded
    out[name] = e.attribute(params, batch_stats, x, [2, 5, 7])
    out[name + "/one"] = e.attribute(params, batch_stats, x[0], [2])  # one image, padded to 2
import mnist_xai_metrics as M
curves = M.deletion_insertion(model, params, batch_stats, x, out["saliency"],
                              np.array([2, 5, 7]), steps=8, chunk=2)
out["deletion_curve"], out["insertion_curve"] = curves["deletion_curve"], curves["insertion_curve"]
np.savez(sys.argv[2], **out)
"""


_EIGEN_TWO_DEVICE_SCRIPT = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path[:0] = [sys.argv[1]]
import jax, numpy as np
import mnist_xai_visualizations as X
from mnist_cnn_model import initialize_model
assert len(jax.local_devices()) == 2
params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
x = np.random.default_rng(1).random((64, 28, 28, 1)).astype(np.float32)
np.savez(sys.argv[2], **{c.__name__: c(model, relu=False).attribute(params, batch_stats, x)
                         for c in (X.EigenCAM, X.EigenGradCAM)})
"""


def test_eigencams_finish_on_two_devices_with_one_chunk_of_64(cnn, tmp_path):
    """EigenCAM's SVD on two host devices (the scripts' default on a 2-core CPU): a batched
    ``jnp.linalg.svd`` of 64+ images there hung XLA's CPU runtime every time; one SVD an image
    does not, and gives the one-device maps."""
    script, out = tmp_path / "eigen.py", tmp_path / "eigen.npz"
    script.write_text(_EIGEN_TWO_DEVICE_SCRIPT)
    try:
        subprocess.run([sys.executable, str(script), str(Path(X.__file__).parent), str(out)], check=True,
                       timeout=120, env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    except subprocess.TimeoutExpired:
        pytest.fail("EigenCAM/EigenGradCAM on two devices did not finish in 120 s (the batched-SVD hang)")
    two = np.load(out)
    params, batch_stats, model = cnn
    x = np.random.default_rng(1).random((64, 28, 28, 1)).astype(np.float32)
    for cls in (X.EigenCAM, X.EigenGradCAM):
        one = cls(model, relu=False).attribute(params, batch_stats, x)
        # the singular vector's sign is LAPACK's on both sides (same matrices, same routine)
        np.testing.assert_allclose(two[cls.__name__], one, rtol=1e-4, atol=1e-5 * np.abs(one).max(),
                                   err_msg=cls.__name__)


def test_two_devices_give_the_same_maps_as_one(cnn, digits, tmp_path):
    """With two local devices each chunk is split across them (shard_map); same maps."""
    script, out = tmp_path / "two.py", tmp_path / "two.npz"
    script.write_text(_TWO_DEVICE_SCRIPT)
    subprocess.run([sys.executable, str(script), str(Path(X.__file__).parent), str(out)], check=True,
                   env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    two = np.load(out)
    params, batch_stats, model = cnn
    logits = np.asarray(model.apply({"params": params, "batch_stats": batch_stats}, digits))
    from quick_options import TWO_DEVICE_METHODS
    for name in TWO_DEVICE_METHODS:
        one = X.make_explainer(name, model, **quick(name)).attribute(params, batch_stats, digits, [2, 5, 7])
        for i, got in enumerate([two[name][0], two[name][1], two[name][2]]):
            scale = max(np.abs(one[i]).max(), np.abs(logits[i]).max() if name in SUBTRACTS_LOGITS else 0.0)
            np.testing.assert_allclose(got, one[i], rtol=1e-4, atol=ATOL.get(name, 1e-6) * scale, err_msg=name)
        np.testing.assert_allclose(two[name + "/one"][0], two[name][0], rtol=1e-4,
                                   atol=ATOL.get(name, 1e-6) * max(np.abs(one[0]).max(), np.abs(logits[0]).max()),
                                   err_msg=name)
    # The deletion/insertion curves split their chunks over the devices too.
    import mnist_xai_metrics as M
    curves = M.deletion_insertion(model, params, batch_stats, digits,
                                  two["saliency"], np.array([2, 5, 7]), steps=8)
    for kind in ("deletion_curve", "insertion_curve"):
        np.testing.assert_allclose(two[kind], curves[kind], rtol=1e-4, atol=1e-6, err_msg=kind)


def test_integer_pixels_are_read_like_uint8(cnn, digits):
    params, batch_stats, model = cnn
    u8 = (np.asarray(digits[:2]) * 255).round().astype(np.uint8)
    expected = X.Saliency(model).attribute(params, batch_stats, u8)
    for dtype in (np.int64, np.int32, np.uint16):
        np.testing.assert_array_equal(X.Saliency(model).attribute(params, batch_stats, u8.astype(dtype)), expected)
    np.testing.assert_array_equal(X.Saliency(model).attribute(params, batch_stats, u8.astype(np.float32) / 255), expected)


def test_clip_to_percentile_scales_as_pair_displays_saliency():
    """PAIR's VisualizeImageGrayscale: (m - min) / (p-th percentile - min), clipped to [0, 1]."""
    m = np.arange(100, dtype=np.float32).reshape(10, 10)  # 0..99: the 90th percentile is 89.1
    out = X.clip_to_percentile(m, 90)
    np.testing.assert_allclose(out, np.clip(m / 89.1, 0, 1), rtol=1e-6)
    assert (out[m >= 89.1] == 1).all() and out[0, 0] == 0
    batch = X.clip_to_percentile(np.stack([m, 2 * m + 5, np.zeros_like(m)]), 90)  # per map; flat map: zeros
    np.testing.assert_allclose(batch[1], out, rtol=1e-6)
    assert (batch[2] == 0).all()
    with pytest.raises(ValueError, match=r"percentile: expected a number in \(0, 100\], got 0"):
        X.clip_to_percentile(m, 0)

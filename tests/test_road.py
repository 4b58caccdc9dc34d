"""ROAD (mnist_xai_metrics.road / linear_imputation): the imputation against a direct sparse
solve and a ramp it must recover exactly, and the curves of a model that is a known linear function."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import mnist_xai_metrics as M
from mnist_cnn_model import initialize_model

# pytorch-grad-cam 1.5.5, metrics/road.py (from Rong et al.'s code): (offset, weight) of the neighbours
NEIGHBOURS = [((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
              ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)]


def reference_imputation(img, removed):
    """pytorch-grad-cam's NoisyLinearImputer (noise 0) in float64: its sparse system, scipy's spsolve."""
    from scipy.sparse import csc_matrix, lil_matrix
    from scipy.sparse.linalg import spsolve

    h, w = img.shape
    keep, flat = (~removed).ravel(), img.ravel().astype(np.float64)
    idx = np.flatnonzero(~keep)
    var = np.zeros(h * w, int)
    var[idx] = np.arange(len(idx))
    a, b, total = lil_matrix((len(idx), len(idx))), np.zeros(len(idx)), np.ones(len(idx))
    for (dy, dx), weight in NEIGHBOURS:
        r, c = idx // w + dy, idx % w + dx
        valid = (r >= 0) & (c >= 0) & (r < h) & (c < w)
        nb, rows = (r * w + c)[valid], np.flatnonzero(valid)
        known = keep[nb]
        b[rows[known]] -= weight * flat[nb[known]]
        a[rows[~known], var[nb[~known]]] = weight
        total[~valid] -= weight
    a[np.arange(len(idx)), np.arange(len(idx))] = -total
    out = flat.copy()
    out[idx] = spsolve(csc_matrix(a), b)
    return out.reshape(h, w)


def _masks(rng):
    corner = np.ones((28, 28), bool)
    corner[:9, :9] = False  # 90% removed as one block: the slowest case for the iteration
    almost_all = np.ones((28, 28), bool)
    almost_all[27, 26:] = False  # all but two pixels
    return {"corner": corner, "almost_all": almost_all, "random": rng.random((28, 28)) < 0.6,
            "edges": np.pad(np.zeros((26, 26), bool), 1, constant_values=True)}


def test_imputation_matches_a_direct_sparse_solve():
    rng = np.random.default_rng(0)
    img = rng.random((28, 28)).astype(np.float32)
    masks = _masks(rng)
    filled, residual = jax.jit(M.linear_imputation)(np.stack([img] * len(masks)), np.stack(list(masks.values())))
    for k, (name, m) in enumerate(masks.items()):
        ref = reference_imputation(img, m)
        np.testing.assert_allclose(np.asarray(filled[k]), ref, atol=1e-4, err_msg=name)
        np.testing.assert_array_equal(np.asarray(filled[k])[~m], img[~m])  # known pixels untouched
        assert residual[k] < 1e-4, name


def test_more_iterations_change_nothing_once_converged():
    rng = np.random.default_rng(1)
    img = rng.random((1, 28, 28)).astype(np.float32)
    m = (rng.random((1, 28, 28)) < 0.9)
    a, _ = jax.jit(M.linear_imputation, static_argnums=2)(img, m, 128)
    b, res = jax.jit(M.linear_imputation, static_argnums=2)(img, m, 1024)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert res[0] < 1e-5
    few, res_few = jax.jit(M.linear_imputation, static_argnums=2)(img, m, 4)
    assert res_few[0] > 1e-3  # the residual reports a solve that has not converged


def ramp(a=0.1, b=0.02, c=0.01):
    yy, xx = np.mgrid[0:28, 0:28]
    return (a + b * yy + c * xx).astype(np.float32)  # in [0.1, 0.91]


def test_a_linear_ramp_is_recovered_exactly_inside_the_image():
    rng = np.random.default_rng(2)
    r = ramp()
    interior = np.zeros((28, 28), bool)
    interior[1:27, 1:27] = True
    masks = np.stack([interior & (rng.random((28, 28)) < f) for f in (0.2, 0.6, 0.95)] + [interior])
    filled, residual = jax.jit(M.linear_imputation)(np.broadcast_to(r, masks.shape), masks)
    np.testing.assert_allclose(np.asarray(filled), np.broadcast_to(r, masks.shape), atol=2e-5)
    # On the image's edge the neighbours are one-sided, so a ramp is not reproduced there.
    edge = np.zeros((1, 28, 28), bool)
    edge[0, 0, 5:20] = True
    assert np.abs(np.asarray(jax.jit(M.linear_imputation)(r[None], edge)[0]) - r).max() > 1e-3


class LinearLogit(nn.Module):
    """Class 0's logit is sum(w * x); the other nine are 0."""

    @nn.compact
    def __call__(self, x, train=False):
        w = self.param("w", nn.initializers.zeros, (28, 28))
        z = (x.reshape(x.shape[0], 28, 28) * w).sum((1, 2))
        return jnp.zeros((x.shape[0], 10)).at[:, 0].set(z)


def _bump_setup():
    """Ramp images with a 6x6 bump (a 'stroke') at rows/cols 10-15; a map that ranks the bump first
    and a 6x6 block at rows/cols 18-23 last."""
    bump = np.zeros((28, 28), bool)
    bump[10:16, 10:16] = True
    quiet = np.zeros((28, 28), bool)
    quiet[18:24, 18:24] = True
    r = ramp()
    images = np.stack([r + 0.08 * bump, r + 0.05 * bump])[..., None].astype(np.float32)
    maps = np.stack([2.0 * bump + 1.0 - quiet] * 2).astype(np.float32)
    return images, maps, bump, quiet


def test_road_on_a_linear_model_gives_the_known_drop():
    """Unsaturated probabilities (0.3-0.7), so MoRF and LeRF give different known answers: swapping
    the two orders, or imputing the removed block with anything but the ramp, fails."""
    images, maps, bump, quiet = _bump_setup()
    left_of = lambda block: np.roll(block, -8 if block is bump else -16, axis=1)  # 6x6 blocks at cols 2-7, rank 1
    w = (0.25 * (bump.astype(np.float32) + quiet - left_of(bump) - left_of(quiet))).astype(np.float32)
    params = {"w": w}
    frac = 36 / 784  # exactly the 6x6 block
    out = M.road(LinearLogit(), params, {}, images, maps, [0, 0], fractions=[frac], noise=0.0)
    logit_ramp = float((w * ramp()).sum())  # 0.25 x (8 + 16) columns x 0.01 x 36 px = 2.16
    p = lambda z: float(jax.nn.softmax(jnp.array([z] + [0.0] * 9))[0])
    original = [p(logit_ramp + 0.25 * 0.08 * 36), p(logit_ramp + 0.25 * 0.05 * 36)]
    assert 0.3 < p(logit_ramp) < 0.55 < original[1] < original[0] < 0.7  # far from saturation
    # MoRF: the bump is imputed from the ramp around it: the logit loses exactly the bump's w-sum.
    np.testing.assert_allclose(out["morf_curve"][:, 0], p(logit_ramp), rtol=1e-5)
    # LeRF: the quiet block lies on the ramp (and is read by w), so imputing it changes nothing.
    np.testing.assert_allclose(out["lerf_curve"][:, 0], original, rtol=1e-5)
    np.testing.assert_allclose(out["original"], original, rtol=1e-5)
    np.testing.assert_allclose(out["combined"], (np.asarray(original) - p(logit_ramp)) / 2, rtol=1e-5)
    np.testing.assert_allclose(out["fractions"], [frac])
    assert (out["residual"] < 1e-4).all()


def test_temperature_divides_the_logits():
    """ROAD with temperature T tracks softmax(logits / T): the same curves as a model whose weights are w / T."""
    images, maps, bump, quiet = _bump_setup()
    w = np.full((28, 28), 0.05, np.float32)
    kw = dict(fractions=[36 / 784, 0.5], noise=0.0)
    hot = M.road(LinearLogit(), {"w": w}, {}, images, maps, [0, 0], temperature=2.5, **kw)
    scaled = M.road(LinearLogit(), {"w": w / 2.5}, {}, images, maps, [0, 0], **kw)
    plain = M.road(LinearLogit(), {"w": w}, {}, images, maps, [0, 0], **kw)
    for k in ("morf_curve", "lerf_curve", "original"):
        np.testing.assert_allclose(hot[k], scaled[k], rtol=1e-5)
    assert not np.allclose(hot["morf_curve"], plain["morf_curve"], rtol=1e-3)


def test_noise_is_per_image_reproducible_and_of_the_stated_size():
    images, maps, bump, _ = _bump_setup()
    images = np.concatenate([images] * 50)  # 100 images
    maps = np.concatenate([maps] * 50)
    params = {"w": 0.1 * bump.astype(np.float32)}  # the logit reads the removed block only
    frac, sigma = 36 / 784, 0.2
    key = jax.random.PRNGKey(3)
    run = lambda chunk, noise, key=key: M.road(LinearLogit(), params, {}, images, maps, np.zeros(100, int),
                                              fractions=[frac], noise=noise, key=key, chunk=chunk)
    a, b = run(10, sigma), run(25, sigma)
    np.testing.assert_allclose(a["morf_curve"], b["morf_curve"], rtol=1e-6)  # chunking does not change the noise
    c = run(10, sigma, jax.random.PRNGKey(4))
    assert not np.allclose(a["morf_curve"], c["morf_curve"])
    # logit = 0.1 x sum over the block of (ramp + noise): the noise's part has std 0.1 x 6 sigma
    p = a["morf_curve"][:, 0].astype(np.float64)
    z = np.log(p * 9 / (1 - p))  # invert p = e^z / (e^z + 9)
    z0 = 0.1 * float((ramp() * bump).sum())
    spread = 0.1 * 6 * sigma
    assert abs(np.std(z - z0) / spread - 1) < 0.2 and abs(np.mean(z - z0)) < 3 * spread / 10


def test_road_on_the_cnn_shapes_and_order():
    params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    images = rng.random((5, 28, 28, 1)).astype(np.float32)
    maps = rng.random((5, 28, 28)).astype(np.float32)
    out = M.road(model, params, batch_stats, images, maps, np.arange(5), chunk=2, progress=(done := []).append)
    assert sum(done) == 5
    assert out["morf_curve"].shape == out["lerf_curve"].shape == (5, 9)
    np.testing.assert_allclose(out["fractions"], np.round(np.arange(1, 10) / 10 * 784) / 784)
    np.testing.assert_allclose(out["morf_auc"], out["morf_curve"].mean(1), rtol=1e-6)
    assert (out["residual"] < 1e-4).all() and np.isfinite(out["morf_curve"]).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"fractions": [0.0, 0.5]}, r"fractions: expected fractions of pixels to remove in \(0, 1\)"),
    ({"fractions": []}, "fractions: expected fractions"),
    ({"noise": -0.1}, "noise: expected a finite number >= 0"),
    ({"temperature": 0.0}, "temperature: expected a finite number > 0, got 0.0"),
    ({"iterations": 2.5}, "iterations: expected an integer >= 1"),
    ({"targets": None}, "targets: expected one class"),
    ({"maps": np.zeros((3, 28, 28))}, r"maps: expected one 28x28 map per image, \(2, 28, 28\)"),
    ({"probs": np.zeros((3, 10))}, r"probs: expected one row of class probabilities per image \(2\)"),
    ({"params": {"w": np.zeros((27, 28), np.float32)}}, "params/batch_stats do not fit LinearLogit"),
])
def test_road_bad_input_is_one_line(kwargs, match):
    images, maps, _, _ = _bump_setup()
    args = {"params": {"w": np.zeros((28, 28), np.float32)}, "maps": maps, "targets": [0, 0], **kwargs}
    with pytest.raises(ValueError, match=match) as e:
        M.road(LinearLogit(), args.pop("params"), {}, images, args.pop("maps"), args.pop("targets"), **args)
    assert "\n" not in str(e.value)

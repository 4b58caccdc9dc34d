"""Are the explanations faithful? Batched, compiled metrics for the explanation methods.

- ``deletion_insertion``: Petsiuk et al., "RISE", BMVC 2018 (arXiv:1806.07421), sec. 4.1.
  Pixels are removed (set to black, 0) or inserted (into a black image) in attribution
  order, in ``steps`` equal steps; the target class's softmax probability is recorded after
  each step and the area under the curve (x from 0 to 1) summarises it. Good attributions
  give a low deletion AUC and a high insertion AUC. All perturbed images of a chunk go
  through the network as one batch.
- ``randomization_test``: Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018
  (arXiv:1810.03292), sec. 3: cascading re-initialisation from the top layer down; Spearman
  rank correlation between the maps of the trained and the randomised model.
- ``ink_share``: the share of positive attribution that falls on ink pixels (pixel > 0.5),
  against the ink's share of the image (what a uniformly random map would score).
- Baselines: ``random_attribution`` and ``sobel_attribution`` (an edge detector that
  knows nothing of the model). A method that cannot beat them is not explaining the model.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mnist_xai_visualizations import (as_image_batch, as_targets, explained, finite_number, in_chunks, on_cpu,
                                      split_over_devices, whole_number)

INK_THRESHOLD = 0.5


# ----------------------------------------------------------------------------- baselines


def random_attribution(key: jax.Array, n: int) -> np.ndarray:
    """Uniform random maps (n, 28, 28): the chance baseline."""
    return np.asarray(jax.random.uniform(key, (whole_number("n", n), 28, 28)))


def sobel_attribution(images) -> np.ndarray:
    """Gradient magnitude of the image (Sobel), (N, 28, 28): an edge map that ignores the model."""
    x = jnp.asarray(as_image_batch(images)[..., 0])
    kx = jnp.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], jnp.float32)
    conv = jax.vmap(lambda im, k: jax.scipy.signal.convolve2d(im, k, mode="same"), in_axes=(0, None))
    return np.asarray(jnp.hypot(conv(x, kx), conv(x, kx.T)))


def _as_maps(maps, n: int, hw: tuple[int, int] = (28, 28)) -> np.ndarray:
    """Attribution maps as float32 (n, H, W), finite; ValueError otherwise."""
    maps = np.asarray(maps, np.float32)
    if maps.shape == tuple(hw):
        maps = maps[None]
    if maps.shape != (n, *hw):
        raise ValueError(f"maps: expected one {hw[0]}x{hw[1]} map per image, ({n}, {hw[0]}, {hw[1]}), "
                         f"got shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError("maps: expected finite values, got NaN/inf")
    return maps


# ----------------------------------------------------------------------------- deletion / insertion


def _auc(curve: jax.Array) -> jax.Array:
    """Trapezoidal area under curves (..., S+1) sampled at x = 0, 1/S, ..., 1."""
    s = curve.shape[-1] - 1
    return (curve[..., 1:] + curve[..., :-1]).sum(-1) / (2 * s)


def _interior_curves(target, steps: int, baseline: float):
    """For a chunk: deletion and insertion probabilities at the interior steps 1..steps-1."""

    def curves(variables, images, maps, targets):
        n, h, w, c = images.shape
        counts = np.round(np.linspace(0, h * w, steps + 1)).astype(np.int32)[1:-1]  # pixels changed per step
        # rank[i, p] = position of pixel p in descending attribution order (0 = most important)
        order = jnp.argsort(-maps.reshape(n, -1), axis=1, stable=True)
        rank = jnp.argsort(order, axis=1).reshape(n, h, w, 1)
        top = rank[None] < jnp.asarray(counts)[:, None, None, None, None]  # (S-1, n, H, W, 1)
        deleted = jnp.where(top, baseline, images[None])
        inserted = jnp.where(top, images[None], baseline)
        batch = jnp.concatenate([deleted, inserted]).reshape(-1, h, w, c)
        probs = jax.nn.softmax(target.logits(variables, batch)).reshape(2, steps - 1, n, -1)
        p = jnp.take_along_axis(probs, targets[None, None, :, None], 3)[..., 0]  # (2, S-1, n)
        return p[0].T, p[1].T

    return curves


@functools.lru_cache(maxsize=16)
def _compiled_curves(target, steps: int, baseline: float):
    return split_over_devices(_interior_curves(target, steps, baseline), (False, True, True, True))


def deletion_insertion(model, params, batch_stats, images, maps, targets, steps: int = 16, chunk: int | None = None,
                       probs=None, progress=None, baseline: float = 0.0):
    """Curves (N, steps + 1) and AUCs (N,) for deletion and insertion, as a dict of numpy arrays.

    ``model, params, batch_stats, images`` as for the explainers (any flax module or logits
    function; ``mnist_xai_visualizations`` documents the contract); ``maps`` (N, H, W) rank the
    pixels (ties are broken by pixel order); ``targets`` (N,) the class whose probability is
    tracked. Removed pixels become ``baseline`` (0: black for MNISTCNN; give the model's own
    black for a model with standardised inputs), inserted ones go into a ``baseline`` image.
    The ends of the curves do not depend on the map (the image itself, and the baseline
    image), so they take two forward passes in all; ``probs`` (N, classes), the softmax of
    the unperturbed images, saves one of them when several maps of the same images are scored.
    Chunks of ``chunk`` images x 2 (steps - 1) perturbed images go through the network as
    one batch, split over the local devices; by default 4 on a CPU (small calls stay in
    cache), 64 on accelerators. ``progress(images_done)`` is called after each chunk.
    """
    target = explained(model)
    images = target.images(images)
    variables = target.variables(params, batch_stats, images.shape[1:])
    n = len(images)
    maps = _as_maps(maps, n, images.shape[1:3])
    if targets is None:
        raise ValueError("targets: expected one class per image, got None")
    targets = as_targets(targets, n, target.num_classes(variables, images))
    steps = whole_number("steps", steps, 2)
    baseline = finite_number("baseline", baseline)
    chunk = whole_number("chunk", chunk if chunk is not None else 4 if on_cpu() else 64)
    if probs is not None and np.shape(probs)[:1] != (n,):
        raise ValueError(f"probs: expected one row of class probabilities per image ({n}), got shape {np.shape(probs)}")
    if probs is None:
        forward = jax.jit(lambda v, x: jax.nn.softmax(target.logits(v, x)))
        (probs,) = in_chunks(lambda x: (forward(variables, x),), (images,), 1000)
    original = np.asarray(probs)[np.arange(n), targets]
    empty = np.full((1, *images.shape[1:]), baseline, np.float32)
    black = np.asarray(jax.nn.softmax(target.logits(variables, empty)))[0, targets]
    fn, devices = _compiled_curves(target, int(steps), baseline)
    chunk = -(-chunk // devices) * devices
    deleted, inserted = in_chunks(lambda x, m, t: fn(variables, x, m, t), (images, maps, targets), chunk, devices,
                                  progress)
    deletion = np.concatenate([original[:, None], deleted, black[:, None]], axis=1)
    insertion = np.concatenate([black[:, None], inserted, original[:, None]], axis=1)
    return {"deletion_curve": deletion, "insertion_curve": insertion,
            "deletion_auc": np.asarray(_auc(deletion)), "insertion_auc": np.asarray(_auc(insertion))}


def bootstrap_ci(values, key: int = 0, resamples: int = 1000, level: float = 0.95):
    """Mean and percentile-bootstrap interval of the mean, over images."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(key)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), float(lo), float(hi)


# ----------------------------------------------------------------------------- localisation


def ink_share(images, maps, threshold: float = INK_THRESHOLD):
    """Per image: share of positive attribution on ink pixels, and the ink's share of pixels."""
    ink = as_image_batch(images)[..., 0] > threshold
    pos = np.maximum(_as_maps(maps, len(ink)), 0)
    total = pos.sum((1, 2))
    on_ink = (pos * ink).sum((1, 2)) / np.where(total > 0, total, 1)
    return np.where(total > 0, on_ink, np.nan), ink.mean((1, 2))


# ----------------------------------------------------------------------------- randomisation


def spearman_rows(a, b) -> np.ndarray:
    """Spearman rank correlation of each row pair of a, b (N, ...) with average ranks for ties;
    NaN where a row is constant."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim < 2 or not len(a):
        raise ValueError(f"spearman_rows: expected two arrays of the same shape (N, ...), got {a.shape} and {b.shape}")
    a = rankdata(a.reshape(len(a), -1), axis=1)
    b = rankdata(b.reshape(len(b), -1), axis=1)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), np.nan)


def cascading_layers(params) -> list[str]:
    """Top-level parameter groups from the output down (dense2, dense1, conv6, ..., conv1)."""
    order = ["dense2", "dense1"] + [f"conv{i}" for i in range(6, 0, -1)]
    return [k for k in order if k in params] + sorted(k for k in params if k not in order and not k.startswith("bn"))


def randomized_params(params, fresh_params, layers: list[str]):
    """``params`` with the named layers (and their BatchNorm, for convs) replaced by ``fresh_params``."""
    out = dict(params)
    for name in layers:
        out[name] = fresh_params[name]
        if name.startswith("conv") and f"bn{name[4:]}" in params:
            out[f"bn{name[4:]}"] = fresh_params[f"bn{name[4:]}"]
    return out


def randomization_test(explainer, params, batch_stats, fresh_params, images, targets, key=None, maps=None,
                       progress=None, return_details=False):
    """Cascading model-parameter randomisation. Returns [(layers randomised so far, mean
    Spearman correlation of |map| with the trained model's |map|)], top layer first.
    ``maps``: the trained model's maps of ``images`` when already computed (same targets and key).
    ``progress(images_done)`` is called after each chunk of each stage.
    ``return_details=True`` also returns ``{"rho": (stages, N) per-image correlations,
    "maps": (stages, N, 28, 28) the randomised models' maps}``, e.g. for intervals and the
    figure of one digit's maps as the layers are re-initialised (Adebayo et al.'s fig. 2)."""
    if maps is None:
        maps = explainer.attribute(params, batch_stats, images, targets, key=key)
    base = np.abs(np.asarray(maps).reshape(len(images), 28, 28))
    results, done, rhos, stage_maps = [], [], [], []
    for layer in cascading_layers(params):
        done.append(layer)
        rand = np.asarray(explainer.attribute(randomized_params(params, fresh_params, done), batch_stats,
                                              images, targets, key=key, progress=progress))
        rho = spearman_rows(base, np.abs(rand))
        results.append((layer, float(np.nanmean(rho))))
        if return_details:
            rhos.append(rho)
            stage_maps.append(rand)
    if return_details:
        return results, {"rho": np.stack(rhos), "maps": np.stack(stage_maps)}
    return results


def completeness_error(ig_explainer, params, batch_stats, images, targets=None, maps=None):
    """Integrated Gradients: |sum(IG) - (f(x) - f(x'))| / |f(x) - f(x')| per image
    (``maps``: the explainer's attributions when already computed)."""
    gap, delta = ig_explainer.completeness_gap(params, batch_stats, images, targets, maps=maps)
    return np.abs(gap) / np.maximum(np.abs(delta), 1e-6)

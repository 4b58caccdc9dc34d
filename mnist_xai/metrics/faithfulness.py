"""Faithfulness metrics on the contract (``base``): does removing what a map calls relevant hurt the model?

Every metric here perturbs the images in an order (or at random positions) the map decides, and
reads the model's target score on the perturbed images. All perturbed images of a block of
images and steps go through ``MetricInput.logits`` (one compiled forward, in chunks), not one
call per step as Quantus does (its ``evaluate_batch`` loops over steps); ``_perturbed_scores``
is that one loop.

Metrics (``name``: reference, paper; the value per image):

- ``deletion`` / ``insertion``: Petsiuk et al. 2018 (RISE, sec. 4.1), as the project's
  ``mnist_xai_metrics.deletion_insertion``: AUC of the target probability as the top-ranked
  pixels are removed (set to ``baseline``) or inserted into a ``baseline`` image, x from 0 to 1.
- ``road``: Rong et al., ICML 2022: MoRF / LeRF with noisy linear imputation (``linear_imputation``);
  the value is ``(lerf_auc - morf_auc) / 2`` (pytorch-grad-cam's ROADCombined).
- ``pixel_flipping``: quantus.PixelFlipping (Bach et al. 2015).
- ``region_perturbation``: quantus.RegionPerturbation (Samek et al. 2015), AOPC.
- ``selectivity``: quantus.Selectivity (Montavon et al. 2018).
- ``faithfulness_correlation``: quantus.FaithfulnessCorrelation (Bhatt et al. 2020).
- ``faithfulness_estimate``: quantus.FaithfulnessEstimate (Alvarez-Melis & Jaakkola 2018).
- ``monotonicity``: quantus.Monotonicity (Arya et al. 2019).
- ``monotonicity_correlation``: quantus.MonotonicityCorrelation (Nguyen & Martinez 2020).
- ``infidelity``: captum.metrics.infidelity (Yeh et al. 2019), Gaussian-noise perturbations.
- ``sufficiency``: quantus.Sufficiency (Dasgupta et al. 2022).
- ``irof``: quantus.IROF (Rieger & Hansen 2020), on a square grid of segments by default.

Conventions shared by all (Quantus 0.6.0 file:line are under quantus/):

- Scores are the target class's softmax probability (``kind="probs"``, Quantus's ``softmax=True``)
  or its logit (``kind="logits"``), each metric defaulting to Quantus's ``__call__`` default: logits
  for faithfulness correlation, faithfulness estimate (faithfulness_correlation.py:178,
  faithfulness_estimate.py:159) and infidelity (infidelity.py:191), probabilities for the rest.
- A "feature" is a pixel, all channels together. Quantus broadcasts an (N, 1, H, W) map to the
  image's channels and flips channel values one by one (pixel_flipping.py:306-312); on one-channel
  images the two agree, on RGB ours removes whole pixels (what a map of pixels ranks).
- Ties in a map are broken by pixel order (a stable sort); Quantus uses ``np.argsort``'s quicksort,
  whose order among ties is unspecified. The parity tests use maps without ties.
- ``baseline``: ``"black"`` (the image's minimum, as Quantus's utils.get_baseline_dict,
  helpers/utils.py:169), ``"white"`` (its maximum), ``"mean"`` (its mean, of the unperturbed image),
  a number, or an array broadcastable to the images (N, H, W, C).
- ``normalise=True`` divides each map by its max |value| (Quantus's normalise_by_max, but per image:
  Quantus divides the whole ``a_batch`` by one max, functions/normalise_func.py:42-49 called at
  metrics/base.py:453, so a map's scale depends on the other images passed with it). Only
  infidelity depends on the scale; the correlations and orders do not.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import finite_number, positive, whole_number
from ..runtime import split_over_devices
from .base import MetricInput, register_metric

#: perturbed images built (host side) per block before the shared forward; bounds host memory
BLOCK_IMAGES = 8192


# ----------------------------------------------------------------------------- shared helpers


def _kind(kind: str) -> str:
    if kind not in ("probs", "logits"):
        raise ValueError(f"kind: expected 'probs' or 'logits', got {kind!r}")
    return kind


def _scores_of(logits: np.ndarray, targets: np.ndarray, kind: str, temperature: float = 1.0) -> np.ndarray:
    """The target's softmax(logits / T) probability or logit, per row, float64."""
    z = np.asarray(logits, np.float64)
    if kind == "logits":
        return z[np.arange(len(z)), targets]
    z = z / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e[np.arange(len(z)), targets] / e.sum(1)


def _perturbed_scores(inp: MetricInput, build, steps: int, kind: str = "probs", temperature: float = 1.0,
                      progress=None, params=None) -> np.ndarray:
    """Scores (N, steps) of the perturbed images ``build(i0, i1, s0, s1) -> (i1 - i0, s1 - s0, H, W, C)``
    (images i0:i1, steps s0:s1), in blocks of about ``BLOCK_IMAGES`` images through the shared
    compiled forward. ``progress(images_done)`` after each block of whole images."""
    n = len(inp)
    per = max(1, BLOCK_IMAGES // max(steps, 1))
    step_block = min(steps, BLOCK_IMAGES)
    out = np.empty((n, steps), np.float64)
    for i0 in range(0, n, per):
        i1 = min(n, i0 + per)
        for s0 in range(0, steps, step_block):
            s1 = min(steps, s0 + step_block)
            x = np.asarray(build(i0, i1, s0, s1), np.float32)
            logits = inp.logits(x.reshape(-1, *x.shape[2:]), params=params)
            t = np.repeat(inp.targets[i0:i1], s1 - s0)
            out[i0:i1, s0:s1] = _scores_of(logits, t, kind, temperature).reshape(i1 - i0, s1 - s0)
        if progress is not None:
            progress(i1 - i0)
    return out


def _original_scores(inp: MetricInput, kind: str, temperature: float = 1.0) -> np.ndarray:
    return _scores_of(inp.logits(inp.images), inp.targets, kind, temperature)


def _maps(inp: MetricInput, abs: bool = False, normalise: bool = False) -> np.ndarray:
    """The input's maps (N, H, W) as float64, finite, optionally |.| and divided by each map's max |.|."""
    a = np.asarray(inp.maps, np.float64)
    if not np.isfinite(a).all():
        raise ValueError("maps: expected finite values, got NaN/inf")
    if normalise:
        m = np.abs(a).reshape(len(a), -1).max(1)
        a = a / np.where(m > 0, m, 1.0)[:, None, None]
    if abs:
        a = np.abs(a)
    return a


def fill_values(images: np.ndarray, baseline) -> np.ndarray:
    """What removed pixels become, broadcastable to ``images`` (N, H, W, C): see the module docstring."""
    n = len(images)
    if isinstance(baseline, str):
        flat = images.reshape(n, -1)
        ops = {"black": flat.min, "white": flat.max, "mean": flat.mean}
        if baseline not in ops:
            raise ValueError(f"baseline: expected 'black', 'white', 'mean', a number or an array, got {baseline!r}")
        return ops[baseline](1).astype(np.float32)[:, None, None, None]
    b = np.asarray(baseline, np.float32)
    if b.ndim == 0:
        return np.full((n, 1, 1, 1), finite_number("baseline", float(b)), np.float32)
    try:
        return np.broadcast_to(b, images.shape).astype(np.float32)
    except ValueError:
        raise ValueError(f"baseline: expected a number or an array broadcastable to the images {images.shape}, "
                         f"got shape {b.shape}") from None


def pixel_ranks(values: np.ndarray, descending: bool = True) -> np.ndarray:
    """rank[i, p] = position of element p of row i when sorted (0 first), ties by index (stable)."""
    v = np.asarray(values, np.float64).reshape(len(values), -1)
    order = np.argsort(-v if descending else v, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(v.shape[1])[None].repeat(len(v), 0), 1)
    return rank


def _ordered_scores(inp: MetricInput, rank: np.ndarray, lo, hi, fill, insert: bool = False, kind="probs",
                    temperature: float = 1.0, progress=None, source=None) -> np.ndarray:
    """Scores (N, S) of the images with the units of rank in [lo[s], hi[s]) replaced by ``fill``
    (``insert=False``) or, with ``insert=True``, of ``fill`` images with those units put back.

    ``rank`` (N, H, W) int: the position of each pixel's unit (pixel, patch, segment) in the order;
    ``lo``, ``hi`` (S,) int; ``fill`` broadcastable to (N, H, W, C); ``source``: the images to
    perturb (default the input's)."""
    x = inp.images if source is None else source
    lo, hi = np.asarray(lo), np.asarray(hi)
    fill = np.broadcast_to(fill, x.shape)

    def build(i0, i1, s0, s1):
        r = rank[i0:i1, None, :, :, None]  # (n, 1, H, W, 1)
        on = (r >= lo[s0:s1, None, None, None]) & (r < hi[s0:s1, None, None, None])  # (n, s, H, W, 1)
        xi, fi = x[i0:i1, None], fill[i0:i1, None]
        return np.where(on, xi, fi) if insert else np.where(on, fi, xi)

    return _perturbed_scores(inp, build, len(lo), kind, temperature, progress)


def _rows_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair (N, S); NaN where a row is constant (as scipy's pearsonr)."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def _rows_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row pair (average ranks for ties), as scipy.stats.spearmanr."""
    from scipy.stats import rankdata

    return _rows_corr(rankdata(a, axis=1), rankdata(b, axis=1))


def _step_bounds(n_features: int, features_in_step: int):
    """Quantus's steps: ceil(P / k) steps of k features, the last one shorter (pixel_flipping.py:316)."""
    k = whole_number("features_in_step", features_in_step)
    s = -(-n_features // k)
    lo = np.arange(s) * k
    return lo, np.minimum(lo + k, n_features)


def _trapz(curve: np.ndarray) -> np.ndarray:
    """np.trapz(curve, dx=1) per row (Quantus's utils.calculate_auc, helpers/utils.py:1015-1032)."""
    return (curve[:, 1:] + curve[:, :-1]).sum(1) / 2 if curve.shape[1] > 1 else np.zeros(len(curve))


def patch_grid(h: int, w: int, patch: int, centre_padding: bool = True) -> np.ndarray:
    """Patch index of each pixel (H, W) for square ``patch`` x ``patch`` patches, row-major.

    As Quantus (region_perturbation.py:309-318, helpers/utils.py:719-735): the image is padded to
    a multiple of ``patch``, floor(pad / 2) before and the rest after, so an edge patch may be
    partly outside the image (it then covers fewer pixels)."""
    patch = whole_number("patch_size", patch)
    pad = [((-d) % patch) // 2 if centre_padding else 0 for d in (h, w)]
    rows = (np.arange(h) + pad[0]) // patch
    cols = (np.arange(w) + pad[1]) // patch
    n_cols = -(-(w + (-w) % patch) // patch)
    return rows[:, None] * n_cols + cols[None, :]


def _unit_ranks(values_per_unit: np.ndarray, units: np.ndarray, descending: bool = True) -> np.ndarray:
    """(N, U) values of the units -> (N, H, W) rank of each pixel's unit (``units`` (N, H, W) or (H, W))."""
    r = pixel_ranks(values_per_unit, descending)  # (N, U)
    u = np.broadcast_to(units, (len(r), *np.shape(units)[-2:]))
    return np.take_along_axis(r, u.reshape(len(r), -1), 1).reshape(u.shape)


def _unit_sums(a: np.ndarray, units: np.ndarray, n_units: int, mean: bool = False) -> np.ndarray:
    """(N, U) sum (or mean) of the maps ``a`` (N, H, W) over each unit; ``units`` (N, H, W) or (H, W) int."""
    n = len(a)
    u = np.broadcast_to(units, a.shape).reshape(n, -1)
    idx = u + n_units * np.arange(n)[:, None]
    s = np.bincount(idx.ravel(), weights=a.reshape(n, -1).ravel(), minlength=n * n_units).reshape(n, n_units)
    if mean:
        c = np.bincount(idx.ravel(), minlength=n * n_units).reshape(n, n_units)
        s = s / np.maximum(c, 1)
    return s


# ----------------------------------------------------------------------------- deletion / insertion (RISE)


def deletion_insertion_curves(inp: MetricInput, steps: int = 16, baseline=0.0, temperature: float = 1.0,
                              original=None, progress=None):
    """Deletion and insertion curves (N, steps + 1), x = 0, 1/steps, ..., 1 of the pixels.

    Petsiuk et al. 2018, sec. 4.1: the round(k H W / steps) top-ranked pixels (by the maps,
    descending, ties by pixel order) are set to ``baseline`` (deletion) or copied into a
    ``baseline`` image (insertion); the target's softmax(logits / T) probability is tracked.
    The curves' ends do not depend on the map: the image (``original`` (N,), if given, is used)
    and the baseline image."""
    steps = whole_number("steps", steps, 2)
    memo = None
    if original is None and isinstance(baseline, (int, float, str)):  # the registered metrics' call
        memo = ("deletion_insertion", steps, baseline, float(temperature))
        if memo in inp.shared:
            return inp.shared[memo]
    n, h, w = inp.images.shape[:3]
    counts = np.round(np.linspace(0, h * w, steps + 1)).astype(np.int64)[1:-1]
    rank = pixel_ranks(inp.maps, True).reshape(n, h, w)
    x = inp.images
    f = np.broadcast_to(fill_values(inp.images, baseline), x.shape)
    k_all = np.r_[counts, counts]  # deletion's steps, then insertion's: 2 (steps - 1) images per image

    def build(i0, i1, s0, s1):
        top = rank[i0:i1, None, :, :, None] < k_all[s0:s1][None, :, None, None, None]
        inserted = (np.arange(s0, s1) >= len(counts))[None, :, None, None, None]
        return np.where(top ^ inserted, f[i0:i1, None], x[i0:i1, None])

    curves = _perturbed_scores(inp, build, 2 * len(counts), "probs", temperature, progress)
    if original is None:
        original = _original_scores(inp, "probs", temperature)
    empty = _scores_of(inp.logits(f), inp.targets, "probs", temperature)
    deleted, inserted = curves[:, :len(counts)], curves[:, len(counts):]
    deletion = np.concatenate([np.asarray(original, np.float64)[:, None], deleted, empty[:, None]], 1)
    insertion = np.concatenate([empty[:, None], inserted, np.asarray(original, np.float64)[:, None]], 1)
    if memo is not None:
        inp.shared[memo] = deletion, insertion
    return deletion, insertion


def rise_auc(curve: np.ndarray) -> np.ndarray:
    """Trapezoidal area under curves (N, S + 1) sampled at x = 0, 1/S, ..., 1."""
    return _trapz(curve) / (curve.shape[1] - 1)


@register_metric("deletion", title="Deletion AUC", family="faithfulness", higher_is_better=False,
                 reference="mnist_xai_metrics.deletion_insertion (RISE's deletion game)",
                 paper="Petsiuk et al., RISE, BMVC 2018, sec. 4.1",
                 summary="Area under the target probability as the top-ranked pixels are removed (lower: more faithful)")
def deletion(inp: MetricInput, steps: int = 16, baseline=0.0, temperature: float = 1.0):
    """Deletion AUC (x in [0, 1]) of softmax(logits / ``temperature``); details: ``curve`` (N, steps + 1)."""
    d, _ = deletion_insertion_curves(inp, steps, baseline, positive("temperature", temperature))
    return rise_auc(d), {"curve": d}


@register_metric("insertion", title="Insertion AUC", family="faithfulness", higher_is_better=True,
                 reference="mnist_xai_metrics.deletion_insertion (RISE's insertion game)",
                 paper="Petsiuk et al., RISE, BMVC 2018, sec. 4.1",
                 summary="Area under the target probability as the top-ranked pixels are inserted into a blank image")
def insertion(inp: MetricInput, steps: int = 16, baseline=0.0, temperature: float = 1.0):
    """Insertion AUC (x in [0, 1]) of softmax(logits / ``temperature``); details: ``curve`` (N, steps + 1)."""
    _, i = deletion_insertion_curves(inp, steps, baseline, positive("temperature", temperature))
    return rise_auc(i), {"curve": i}


# ----------------------------------------------------------------------------- ROAD

# Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022
# (arXiv:2202.00449): removed pixels are refilled by noisy linear imputation, so that the
# refill does not itself tell the model which pixels were removed (a black patch does).
# Weights of the 8 neighbours, as in their code and pytorch-grad-cam's metrics/road.py:
# 1/6 for the 4 edge neighbours, 1/12 for the 4 corners.
ROAD_WEIGHTS = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], np.float32)
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ROAD_NOISE = 0.01  # standard deviation of the noise added to imputed pixels, in [0, 1] pixel units
# Conjugate-gradient iterations of the imputation solve. Against scipy's direct sparse solve of
# the same system (float64), measured on a random 28x28 image: 90% removed as one block (a 9x9 corner
# kept) reaches a relative residual of 4e-6 (pixels within 1.3e-5) after 96 iterations, all but
# 2 pixels removed 1.3e-5 (4e-5) after 128, 90% removed at random 1e-6 after 64; the iteration
# stops itself at float32 precision. tests/test_road.py checks this. Larger images need more
# (CG's iterations grow with the image's side): the residual is returned so a caller can check.
ROAD_ITERATIONS = 128


def _neighbour_sum(x: jax.Array) -> jax.Array:
    """(B, H, W) -> the ROAD-weighted sum of each pixel's 8 neighbours, outside the image counting 0."""
    h, w = x.shape[1:]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1)))
    return sum(float(ROAD_WEIGHTS[dy, dx]) * xp[:, dy:dy + h, dx:dx + w]
               for dy in range(3) for dx in range(3) if ROAD_WEIGHTS[dy, dx])


def linear_imputation(images: jax.Array, removed: jax.Array, iterations: int = ROAD_ITERATIONS):
    """Refill the ``removed`` pixels (B, H, W) bool of ``images`` (B, H, W) by ROAD's linear imputation
    (no noise): each removed pixel equals the weighted mean of its neighbours inside the image, known
    or removed alike -- a sparse linear system in the removed pixels (a discrete Laplace equation with
    the known pixels as boundary values). Traceable (use under ``jax.jit``).

    Solved by at most ``iterations`` steps of Jacobi-preconditioned conjugate gradients (fewer when
    every system of the batch converges sooner), matrix-free (the operator is a 3x3 stencil): the system is symmetric positive definite whenever at least one
    pixel is known. Returns ``(filled images, relative residual ||b - Au|| / ||b|| per image)``.
    """
    x = images.astype(jnp.float32)
    r = removed.astype(jnp.float32)
    deg = _neighbour_sum(jnp.ones_like(x[:1]))  # sum of the weights of the neighbours inside the image

    def op(u):
        return r * (deg * u - _neighbour_sum(r * u))

    b = r * _neighbour_sum((1 - r) * x)
    inv_diag = r / deg

    def dot(a, c):
        return (a * c).sum((1, 2), keepdims=True)

    def safe_div(a, c):
        return jnp.where(c > 0, a / jnp.where(c > 0, c, 1.0), 0.0)

    z0 = inv_diag * b
    rz0 = dot(b, z0)

    def live_of(rz):  # not yet converged to float32 precision (further steps only add rounding)
        return rz > 1e-14 * rz0

    def step(s):
        i, u, res, p, rz = s
        live = live_of(rz)
        ap = op(p)
        alpha = jnp.where(live, safe_div(rz, dot(p, ap)), 0.0)
        u, res = u + alpha * p, res - alpha * ap
        z = inv_diag * res
        rz_new = jnp.where(live, dot(res, z), rz)
        return i + 1, u, res, jnp.where(live, z + safe_div(rz_new, rz) * p, p), rz_new

    # A converged system's steps change nothing (alpha = 0), so the loop stops when every system
    # of the batch has converged: the same result as all ``iterations`` steps, in fewer. On ROAD's
    # masks of real digits (10-90% removed by a saliency map) the systems converge after 24
    # steps (median; 56 at the 90th percentile, 87 at most).
    _, u, _, _, _ = jax.lax.while_loop(lambda s: (s[0] < iterations) & live_of(s[4]).any(), step,
                                       (0, jnp.zeros_like(x), b, z0, rz0))
    residual = jnp.sqrt(safe_div(dot(b - op(u), b - op(u)), dot(b, b)))[:, 0, 0]
    return (1 - r) * x + r * u, residual


#: imputation systems solved together: each group stops when its own systems have converged
#: (``linear_imputation``), so small groups stop sooner; a group's arrays stay in cache
IMPUTATION_GROUP = 64


def _impute_groups(images, removed, eps, iterations):
    """``_noisy_imputation`` of a block whose size is a multiple of ``IMPUTATION_GROUP``: groups in turn."""
    b, h, w, c = images.shape

    def one(args):
        x, m, e = args
        x = jnp.moveaxis(x, 3, 1).reshape(-1, h, w)
        filled, residual = linear_imputation(x, jnp.repeat(m, c, axis=0), iterations)
        filled = jnp.moveaxis(filled.reshape(-1, c, h, w), 1, 3) + m[..., None] * e
        return filled, residual.reshape(-1, c).max(1)

    g = IMPUTATION_GROUP
    filled, residual = jax.lax.map(one, (images.reshape(b // g, g, h, w, c), removed.reshape(b // g, g, h, w),
                                         eps.reshape(b // g, g, h, w, c)))
    return filled.reshape(b, h, w, c), residual.reshape(b)


@functools.lru_cache(maxsize=8)
def _imputation_call(iterations: int):
    """The compiled ``_impute_groups`` split over the local devices (the solves are elementwise
    work, which XLA's CPU backend runs on one thread a device), and the device count."""
    return split_over_devices(functools.partial(_impute_groups, iterations=iterations), (True, True, True))


def _noisy_imputation(images, removed, eps, iterations):
    """ROAD's refill of a block: ``images`` (B, H, W, C), ``removed`` (B, H, W), ``eps`` (B, H, W, C)
    standard-normal noise (already scaled); each channel imputed with the same mask (as
    pytorch-grad-cam's NoisyLinearImputer). Returns (filled (B, H, W, C), residual (B,)).
    Zero-padded to whole groups on every device (a padded system has nothing removed: it
    converges at once); compiled once per padded shape and ``iterations``."""
    call, devices = _imputation_call(int(iterations))
    b = images.shape[0]
    pad = (-b) % (IMPUTATION_GROUP * devices)
    if pad:
        images, removed, eps = (jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
                                for a in (images, removed, eps))
    filled, residual = call(images, removed, eps)
    return filled[:b], residual[:b]


@functools.partial(jax.jit, static_argnums=(1,))
def _road_noise(keys, shape):
    """Standard-normal noise ``shape`` per image key (n, *shape): the same for an image whatever its block."""
    return jax.vmap(lambda k: jax.random.normal(k, shape))(keys)


def road_curves(inp: MetricInput, fractions=ROAD_FRACTIONS, noise: float = ROAD_NOISE, key=None,
                iterations: int = ROAD_ITERATIONS, temperature: float = 1.0, progress=None) -> dict:
    """ROAD's MoRF and LeRF curves (N, P) of the target's softmax(logits / T) probability.

    For each fraction f the round(f H W) most relevant (MoRF: descending map, ties by pixel order)
    or least relevant (LeRF) pixels are refilled by ``linear_imputation`` plus Gaussian noise of
    standard deviation ``noise`` (drawn from ``key`` per image: chunking does not change it).
    Returns ``fractions`` (P,) as counted, ``morf_curve``, ``lerf_curve``, their means over the
    fractions ``morf_auc`` / ``lerf_auc``, ``combined`` = (lerf - morf) / 2 and ``residual`` (N,)
    the largest relative residual of the image's solves."""
    n, h, w, c = inp.images.shape
    fr = np.asarray(fractions, np.float64).reshape(-1)
    if not fr.size or not np.all((fr > 0) & (fr < 1)):
        raise ValueError(f"fractions: expected fractions of pixels to remove in (0, 1), got {fractions!r}")
    counts = np.clip(np.round(fr * h * w), 1, h * w - 1).astype(np.int64)
    noise = finite_number("noise", noise, 0.0)
    iterations = whole_number("iterations", iterations, 1)
    key = inp.key if key is None else key
    keys = jax.random.split(key, n)
    p = len(counts)
    most = pixel_ranks(inp.maps, True).reshape(n, h, w)
    least = pixel_ranks(inp.maps, False).reshape(n, h, w)
    residual = np.zeros(n)

    def build(i0, i1, s0, s1):
        k = np.r_[counts, counts][s0:s1][None, :, None, None]
        mor = (np.arange(s0, s1) < p)[None, :, None, None]
        removed = np.where(mor, most[i0:i1, None] < k, least[i0:i1, None] < k)  # (m, s, H, W)
        x = np.broadcast_to(inp.images[i0:i1, None], (i1 - i0, s1 - s0, h, w, c))
        eps = noise * np.asarray(_road_noise(keys[i0:i1], (2 * p, h, w, c)))[:, s0:s1]
        filled, res = _noisy_imputation(jnp.asarray(x.reshape(-1, h, w, c)), jnp.asarray(removed.reshape(-1, h, w)),
                                        jnp.asarray(eps.reshape(-1, h, w, c)), iterations)
        residual[i0:i1] = np.maximum(residual[i0:i1], np.asarray(res).reshape(i1 - i0, -1).max(1))
        return np.asarray(filled).reshape(i1 - i0, s1 - s0, h, w, c)

    curves = _perturbed_scores(inp, build, 2 * p, "probs", temperature, progress)
    morf, lerf = curves[:, :p], curves[:, p:]
    morf_auc, lerf_auc = morf.mean(1), lerf.mean(1)
    return {"fractions": counts / (h * w), "morf_curve": morf, "lerf_curve": lerf, "morf_auc": morf_auc,
            "lerf_auc": lerf_auc, "combined": (lerf_auc - morf_auc) / 2, "residual": residual}


@register_metric("road", title="ROAD (LeRF - MoRF) / 2", family="faithfulness", higher_is_better=True,
                 reference="pytorch-grad-cam ROADCombined; quantus.ROAD (MoRF accuracy)",
                 paper="Rong et al., ICML 2022",
                 summary="(LeRF - MoRF) / 2 of the target probability with noisy linear imputation")
def road(inp: MetricInput, fractions=ROAD_FRACTIONS, noise: float = ROAD_NOISE, iterations: int = ROAD_ITERATIONS,
         temperature: float = 1.0):
    """(lerf_auc - morf_auc) / 2 per image of softmax(logits / ``temperature``); details: the
    curves, AUCs, fractions and residuals."""
    out = road_curves(inp, fractions, noise, inp.key, iterations, positive("temperature", temperature))
    return out["combined"], out


# ----------------------------------------------------------------------------- Quantus's perturbation curves


@register_metric("pixel_flipping", title="Pixel-flipping AUC", family="faithfulness", higher_is_better=False,
                 reference="quantus.PixelFlipping (return_auc_per_sample=True)",
                 paper="Bach et al., PLOS ONE 2015",
                 summary="Area (dx = 1 per step) under the target score as pixels are flipped, most relevant first")
def pixel_flipping(inp: MetricInput, features_in_step: int = 1, baseline="black", abs: bool = False,
                   kind: str = "probs"):
    """Quantus's PixelFlipping (pixel_flipping.py:287-358): the pixels, most relevant first, are
    cumulatively set to ``baseline`` ``features_in_step`` at a time; the curve of the target score
    after each step (ceil(H W / k) points, the unperturbed image not among them) and its
    ``np.trapz`` area with dx = 1 (``return_auc_per_sample``). Details: ``curve``."""
    a = _maps(inp, abs)
    n, h, w = a.shape
    lo, hi = _step_bounds(h * w, features_in_step)
    curve = _ordered_scores(inp, pixel_ranks(a).reshape(n, h, w), np.zeros_like(lo), hi,
                            fill_values(inp.images, baseline), kind=_kind(kind))
    return _trapz(curve), {"curve": curve}


def _patch_order(inp, a, patch_size, order="morf", key=None):
    """(N, H, W) rank of each pixel's patch by the patch's attribution sum (region_perturbation.py:331-347)."""
    n, h, w = a.shape
    grid = patch_grid(h, w, patch_size)
    n_units = int(grid.max()) + 1
    sums = _unit_sums(a, grid, n_units)
    if order == "random":
        sums = np.asarray(jax.random.uniform(inp.key if key is None else key, sums.shape))
    elif order not in ("morf", "lerf"):
        raise ValueError(f"order: expected 'morf', 'lerf' or 'random', got {order!r}")
    return _unit_ranks(sums, grid, descending=order != "lerf"), n_units


@register_metric("region_perturbation", title="Region perturbation AOPC", family="faithfulness",
                 higher_is_better=True, reference="quantus.RegionPerturbation",
                 paper="Samek et al., IEEE TNNLS 2017 (arXiv:1509.06321)",
                 summary="Mean drop of the target score as patches are removed, most relevant first (AOPC)")
def region_perturbation(inp: MetricInput, patch_size: int = 8, order: str = "morf", regions_evaluation: int = 100,
                        baseline="black", abs: bool = False, kind: str = "probs"):
    """Quantus's RegionPerturbation (region_perturbation.py:284-412): non-overlapping ``patch_size``
    patches (``patch_grid``) ranked by their attribution sum (``order``: morf, lerf or random) are
    cumulatively set to ``baseline``; the curve holds f(x) - f(x after k patches) for the first
    ``regions_evaluation`` patches. The value is the curve's mean: Samek's AOPC without its k = 0
    term (which is 0), as Quantus's curve omits it. Details: ``curve``."""
    a = _maps(inp, abs)
    rank, n_units = _patch_order(inp, a, patch_size, order)
    k = min(whole_number("regions_evaluation", regions_evaluation), n_units)
    y = _original_scores(inp, _kind(kind))
    perturbed = _ordered_scores(inp, rank, np.zeros(k, np.int64), np.arange(1, k + 1),
                                fill_values(inp.images, baseline), kind=kind)
    curve = y[:, None] - perturbed
    return curve.mean(1), {"curve": curve}


@register_metric("selectivity", title="Selectivity AUC", family="faithfulness", higher_is_better=False,
                 reference="quantus.Selectivity", paper="Montavon et al., Digital Signal Processing 2018",
                 summary="Area (dx = 1 per patch) under the target score as patches are removed, most relevant first")
def selectivity(inp: MetricInput, patch_size: int = 8, baseline="black", abs: bool = False, kind: str = "probs"):
    """Quantus's Selectivity (selectivity.py:269-380): as region perturbation in MoRF order over all
    patches, the curve of the target score itself; the value is its ``np.trapz`` area (dx = 1),
    Quantus's ``get_auc_score`` of the curve (lower: the score falls faster). Details: ``curve``."""
    a = _maps(inp, abs)
    rank, n_units = _patch_order(inp, a, patch_size, "morf")
    curve = _ordered_scores(inp, rank, np.zeros(n_units, np.int64), np.arange(1, n_units + 1),
                            fill_values(inp.images, baseline), kind=_kind(kind))
    return _trapz(curve), {"curve": curve}


def random_subsets(key, runs: int, n: int, n_features: int, subset_size: int) -> np.ndarray:
    """(runs, n, subset_size) distinct feature indices per run and image, drawn from ``key``
    (faithfulness correlation's subsets; the reference script feeds these to Quantus)."""
    u = np.asarray(jax.random.uniform(key, (runs, n, n_features)))
    # numpy's stable sort: the same indices as jnp.argsort (stable too), 3x faster than XLA's CPU
    # sort (6,400 rows of 784: 0.20 s against 0.65 s, a third of the metric's time at 64 digits)
    return np.argsort(u, axis=-1, kind="stable")[..., :subset_size]


@register_metric("faithfulness_correlation", title="Faithfulness correlation", family="faithfulness",
                 higher_is_better=True, reference="quantus.FaithfulnessCorrelation",
                 paper="Bhatt et al., IJCAI 2020",
                 summary="Pearson correlation of the attribution of random pixel subsets with the score drop on removing them")
def faithfulness_correlation(inp: MetricInput, nr_runs: int = 100, subset_size: int = 224, baseline="black",
                             abs: bool = False, kind: str = "logits"):
    """Quantus's FaithfulnessCorrelation (faithfulness_correlation.py:300-373): ``nr_runs`` random
    subsets of ``subset_size`` pixels (``random_subsets`` from the input's key; Quantus draws with
    ``np.random.choice``) are each set to ``baseline`` in the unperturbed image; the value is the
    Pearson correlation over the runs of the subset's attribution sum with f(x) - f(x_perturbed).
    NaN where either is constant. Scores are logits by default, as Quantus's (``softmax=False``,
    faithfulness_correlation.py:178). Details: ``att_sums``, ``deltas`` (N, runs)."""
    a = _maps(inp, abs)
    n, h, w = a.shape
    runs = whole_number("nr_runs", nr_runs, 2)
    k = whole_number("subset_size", subset_size, 1, h * w)
    idx = random_subsets(inp.key, runs, n, h * w, k)  # (R, N, k)
    chosen = np.zeros((n, runs, h * w), bool)
    np.put_along_axis(chosen, idx.transpose(1, 0, 2), True, 2)
    chosen = chosen.reshape(n, runs, h, w, 1)
    fill = np.broadcast_to(fill_values(inp.images, baseline), inp.images.shape)
    x = inp.images
    y = _original_scores(inp, _kind(kind))
    scores = _perturbed_scores(inp, lambda i0, i1, s0, s1: np.where(chosen[i0:i1, s0:s1], fill[i0:i1, None],
                                                                    x[i0:i1, None]), runs, kind)
    att = (chosen[..., 0] * a[:, None]).reshape(n, runs, -1).sum(-1)
    deltas = y[:, None] - scores
    return _rows_corr(att, deltas), {"att_sums": att, "deltas": deltas}


@register_metric("faithfulness_estimate", title="Faithfulness estimate", family="faithfulness",
                 higher_is_better=True, reference="quantus.FaithfulnessEstimate",
                 paper="Alvarez-Melis & Jaakkola, NeurIPS 2018",
                 summary="Pearson correlation of each pixel group's attribution with the score drop on removing it alone")
def faithfulness_estimate(inp: MetricInput, features_in_step: int = 1, baseline="black", abs: bool = False,
                          kind: str = "logits"):
    """Quantus's FaithfulnessEstimate (faithfulness_estimate.py:287-359): the pixels, most relevant
    first, in groups of ``features_in_step``; each group ALONE is set to ``baseline``; the value is
    the Pearson correlation over the groups of their attribution sum with f(x) - f(x_perturbed).
    Scores are logits by default, as Quantus's (``softmax=False``, faithfulness_estimate.py:159).
    Details: ``att_sums``, ``deltas``."""
    a = _maps(inp, abs)
    n, h, w = a.shape
    lo, hi = _step_bounds(h * w, features_in_step)
    rank = pixel_ranks(a).reshape(n, h, w)
    y = _original_scores(inp, _kind(kind))
    scores = _ordered_scores(inp, rank, lo, hi, fill_values(inp.images, baseline), kind=kind)
    sorted_a = np.sort(a.reshape(n, -1), 1)[:, ::-1]  # the values in rank order (ties: equal anyway)
    att = np.add.reduceat(sorted_a, lo, axis=1)
    deltas = y[:, None] - scores
    return _rows_corr(att, deltas), {"att_sums": att, "deltas": deltas}


@register_metric("monotonicity", title="Monotonicity (Arya)", family="faithfulness", higher_is_better=True,
                 reference="quantus.Monotonicity", paper="Arya et al., arXiv:1909.03012 (2019)",
                 summary="1 if the target score never falls as pixels are added to a blank image, least relevant first")
def monotonicity(inp: MetricInput, features_in_step: int = 1, baseline="black", abs: bool = True,
                 kind: str = "probs"):
    """Quantus's Monotonicity (monotonicity.py:280-364): starting from an all-``baseline`` image,
    the pixels are put back in ascending order of the map (|map| by default, ``abs=True`` as
    Quantus), ``features_in_step`` at a time; 1.0 if the target score never decreases over the
    steps, else 0.0. Details: ``curve``.

    Departure: Quantus 0.6.0 never puts a pixel back. Its loop calls the baseline-replacement
    ``perturb_func`` on the all-baseline image (monotonicity.py:339-349), which writes the
    baseline over the baseline, so every step scores the blank image and the value is always 1
    (tests/test_metrics_faithfulness.py shows it on the fixture). Ours inserts the image's pixels,
    as Arya et al. (and Luss et al.'s monotonicity) define it."""
    a = _maps(inp, abs)
    n, h, w = a.shape
    lo, hi = _step_bounds(h * w, features_in_step)
    curve = _ordered_scores(inp, pixel_ranks(a, descending=False).reshape(n, h, w), np.zeros_like(lo), hi,
                            fill_values(inp.images, baseline), insert=True, kind=_kind(kind))
    return np.all(np.diff(curve, axis=1) >= 0, axis=1).astype(np.float64), {"curve": curve}


@register_metric("monotonicity_correlation", title="Monotonicity correlation (Nguyen)", family="faithfulness",
                 higher_is_better=True, reference="quantus.MonotonicityCorrelation",
                 paper="Nguyen & Martinez, arXiv:2007.07584 (2020)",
                 summary="Spearman correlation of each pixel group's attribution with the score's variance when it is noised")
def monotonicity_correlation(inp: MetricInput, nr_samples: int = 100, features_in_step: int = 1, eps: float = 1e-5,
                             abs: bool = True, kind: str = "probs", uniforms=None):
    """Quantus's MonotonicityCorrelation (monotonicity_correlation.py:291-389): the pixels in
    ascending order of |map|, in groups of ``features_in_step``; for each group ``nr_samples`` copies
    of the image with that group alone set to one uniform(0, 1) value per copy (Quantus's
    ``perturb_baseline="uniform"``: one value per image and call, helpers/utils.py:163-168); the
    group's variance = mean((f(x_perturbed) - f(x))^2) / f(x)^2 (1 instead of 1 / f(x)^2 where
    |f(x)| < ``eps``); the value is the Spearman correlation of the groups' attribution sums with
    their variances. ``uniforms`` (S, R, N) replaces the draws (default: from the input's key).
    Details: ``att_sums``, ``variances``."""
    a = _maps(inp, abs)
    n, h, w = a.shape
    lo, hi = _step_bounds(h * w, features_in_step)
    r = whole_number("nr_samples", nr_samples)
    s = len(lo)
    eps = finite_number("eps", eps, 0.0)
    u = (np.asarray(jax.random.uniform(inp.key, (s, r, n))) if uniforms is None
         else np.asarray(uniforms, np.float32).reshape(s, r, n))
    rank = pixel_ranks(a, descending=False).reshape(n, h, w)
    x = inp.images
    y = _original_scores(inp, _kind(kind))

    def build(i0, i1, s0, s1):  # "steps" here are (group, sample) pairs, group-major
        g = np.arange(s0, s1) // r
        on = (rank[i0:i1, None] >= lo[g][None, :, None, None]) & (rank[i0:i1, None] < hi[g][None, :, None, None])
        val = u[g, np.arange(s0, s1) % r][:, i0:i1].T  # (m, s)
        return np.where(on[..., None], val[:, :, None, None, None], x[i0:i1, None])

    scores = _perturbed_scores(inp, build, s * r, kind).reshape(n, s, r)
    inv = np.where(np.abs(y) >= eps, 1.0 / np.where(np.abs(y) > 0, np.abs(y), 1.0), 1.0) ** 2
    variances = ((scores - y[:, None, None]) ** 2).mean(2) * inv[:, None]
    sorted_a = np.sort(a.reshape(n, -1), 1)
    att = np.add.reduceat(sorted_a, lo, axis=1)
    return _rows_spearman(att, variances), {"att_sums": att, "variances": variances}


# ----------------------------------------------------------------------------- infidelity, sufficiency, IROF


def infidelity_noise(key, n: int, samples: int, shape, std: float) -> np.ndarray:
    """The perturbations I (n, samples, H, W, C) ~ N(0, std^2) of infidelity, drawn from ``key``."""
    return std * np.asarray(jax.random.normal(key, (n, samples, *shape)))


@register_metric("infidelity", title="Infidelity", family="faithfulness", higher_is_better=False,
                 reference="captum.metrics.infidelity; quantus.Infidelity",
                 paper="Yeh et al., NeurIPS 2019",
                 summary="Mean squared error between the attribution's prediction of a noise's effect and the effect")
def infidelity(inp: MetricInput, n_perturb_samples: int = 10, noise_std: float = 0.1, normalize: bool = False,
               kind: str = "logits", abs: bool = False, normalise: bool = False, perturbations=None):
    """Yeh et al.'s infidelity as captum.metrics.infidelity computes it (captum/metrics/_core/
    infidelity.py:142-480): E_I[(sum(I * a) - (f(x) - f(x - I)))^2] over ``n_perturb_samples``
    Gaussian perturbations I ~ N(0, ``noise_std``^2) per pixel and channel (Yeh's sec. 3 noise; the
    map is broadcast over the channels); ``normalize=True`` first scales the attribution term by
    beta = E[I.a (f(x) - f(x - I))] / E[(I.a)^2] (Captum's ``normalize``). Quantus's Infidelity
    (infidelity.py:325-402) perturbs square patches with a baseline instead, deterministically, ten
    times over; we follow Yeh and Captum. ``perturbations`` (N, S, H, W, C) replaces the draws.
    Scores are logits by default (Quantus's ``softmax=False``). Details: ``dot``, ``deltas``."""
    a = _maps(inp, abs, normalise)
    n, h, w, c = inp.images.shape
    s = whole_number("n_perturb_samples", n_perturb_samples)
    std = finite_number("noise_std", noise_std, 0.0)
    pert = (infidelity_noise(inp.key, n, s, (h, w, c), std) if perturbations is None
            else np.asarray(perturbations, np.float32).reshape(n, s, h, w, c))
    y = _original_scores(inp, _kind(kind))
    x = inp.images
    scores = _perturbed_scores(inp, lambda i0, i1, s0, s1: x[i0:i1, None] - pert[i0:i1, s0:s1], s, kind)
    deltas = y[:, None] - scores  # (N, S)
    dot = (pert.astype(np.float64) * a[:, None, :, :, None]).reshape(n, s, -1).sum(-1)
    if normalize:
        den = (dot * dot).mean(1)
        beta = np.where(den != 0, (dot * deltas).mean(1) / np.where(den != 0, den, 1.0), 0.0)
        dot = beta[:, None] * dot
    return ((dot - deltas) ** 2).mean(1), {"dot": dot, "deltas": deltas}


@register_metric("sufficiency", title="Sufficiency", family="faithfulness", higher_is_better=True,
                 reference="quantus.Sufficiency", paper="Dasgupta et al., ICML 2022 (arXiv:2202.00734)",
                 summary="Share of the images with a similar map that the model puts in the same class")
def sufficiency(inp: MetricInput, threshold: float = 0.6, abs: bool = True, normalise: bool = True,
                batch_size: int | None = None):
    """Quantus's Sufficiency (sufficiency.py:230-318): the standardised Euclidean distance between
    the (|.|, max-normalised) maps of every pair of images (scipy's ``seuclidean``: each pixel
    divided by its variance over the images, ddof 1), divided by the largest distance; images
    within ``threshold`` of image i are its neighbours; the value is the share of i's neighbours
    (i excluded) predicted as i is (the model's argmax, not ``targets``), 0 with no neighbour.
    Quantus computes it within each batch of its ``batch_size`` (64): ``batch_size=None`` (ours)
    takes all the images at once, a number takes Quantus's batches. Pixels constant over the maps
    (variance 0) are left out; scipy would make every distance NaN."""
    a = _maps(inp, abs, normalise).reshape(len(inp), -1)
    threshold = finite_number("threshold", threshold)
    preds = inp.logits(inp.images).argmax(1)
    n = len(a)
    bs = n if batch_size is None else whole_number("batch_size", batch_size)
    out = np.empty(n)
    for i0 in range(0, n, bs):
        ab, pb = a[i0:i0 + bs], preds[i0:i0 + bs]
        var = ab.var(0, ddof=1) if len(ab) > 1 else np.zeros(ab.shape[1])
        keep = var > 0
        z = ab[:, keep] / np.sqrt(var[keep])
        sq = (z * z).sum(1)
        d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * z @ z.T, 0.0))
        np.fill_diagonal(d, 0.0)
        m = np.abs(d).max()
        d = d / m if m > 0 else d
        sim = (d <= threshold).astype(np.float64)
        np.fill_diagonal(sim, 0.0)
        same = pb[None] == pb[:, None]
        total = sim.sum(1)
        out[i0:i0 + bs] = np.where(total > 0, (same * sim).sum(1) / np.where(total > 0, total, 1.0), 0.0)
    return out


def grid_segments(h: int, w: int, size: int = 4) -> np.ndarray:
    """IROF's default segmentation: square ``size`` x ``size`` cells (H, W) int, row-major, from the
    top-left corner (the last row/column of cells is cut by the image's edge)."""
    return patch_grid(h, w, size, centre_padding=False)


@register_metric("irof", title="IROF", family="faithfulness", higher_is_better=True,
                 reference="quantus.IROF", paper="Rieger & Hansen, arXiv:2003.08747 (2020)",
                 summary="Area over the relative target score as segments are removed, most relevant (mean) first")
def irof(inp: MetricInput, segments=None, segment_size: int = 4, baseline="mean", abs: bool = False,
         kind: str = "probs"):
    """Quantus's IROF (irof.py:296-389): segments ranked by their MEAN attribution are cumulatively
    set to ``baseline`` (default the image's mean); the curve holds f(x_k) / f(x) after k segments;
    the value is (number of segments) - np.trapz(curve, dx=1), the area over the curve.

    Segmentation: ``segments`` (N, H, W) or (H, W) int labels 0..S-1 if given (e.g. skimage's
    ``slic(img, start_label=0)``, which Quantus runs, helpers/utils.py:54-55, and Rieger & Hansen
    use); by default ``grid_segments`` cells of ``segment_size`` px. Why a grid: SLIC is not a
    project dependency, runs per image on the host (the slow part of Quantus's IROF), and on
    28x28 digits makes segments of very different sizes that mostly follow the background; a
    grid is the same for every image and every method, so only the ranking differs.

    Baseline: Quantus's "mean" for IROF is the mean of the whole current batch array, perturbed
    segments included (baseline_replacement_by_mask is called unbatched, functions/
    perturb_func.py:169-190 -> helpers/utils.py:156-162), so it depends on the other images and
    drifts over the steps; ours is each unperturbed image's mean (what the paper describes).
    With segments of unequal counts per image the shorter curves are padded as Quantus does."""
    a = _maps(inp, abs)
    n, h, w = a.shape
    if segments is None:
        seg = np.broadcast_to(grid_segments(h, w, whole_number("segment_size", segment_size)), (n, h, w))
    else:
        seg = np.asarray(segments)
        if seg.shape not in ((h, w), (n, h, w)) or not np.issubdtype(seg.dtype, np.integer) or seg.min() < 0:
            raise ValueError(f"segments: expected non-negative integer labels of shape ({h}, {w}) or ({n}, {h}, {w}), "
                             f"got {seg.dtype} {seg.shape}")
        seg = np.broadcast_to(seg, (n, h, w))
    n_units = int(seg.max()) + 1
    counts = np.stack([np.bincount(s.ravel(), minlength=n_units) for s in seg])  # (N, U)
    present = counts > 0
    means = _unit_sums(a, seg, n_units, mean=True)
    means = np.where(present, means, -np.inf)  # absent labels rank last, never removed
    rank = _unit_ranks(means, seg)
    n_seg = present.sum(1)
    y = _original_scores(inp, _kind(kind))
    curve = _ordered_scores(inp, rank, np.zeros(n_units, np.int64), np.arange(1, n_units + 1),
                            fill_values(inp.images, baseline), kind=kind) / y[:, None]
    live = np.arange(n_units)[None] < n_seg[:, None]
    curve = np.where(live, curve, 0.0)
    return n_seg - _trapz(curve), {"curve": curve}

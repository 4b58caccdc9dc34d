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
- ``localisation`` / ``localisation_by_class``: the share of positive attribution on the
  image's outer 4-px frame and on ink, and its ratio to the region's area (what a uniform map
  gets), per image and per class (issue 15: GradCAM of the shipped model glows along the frame).
- ``road``: ROAD, Rong et al., ICML 2022 (arXiv:2202.00449): the most / least relevant x% of
  pixels removed and refilled by noisy linear imputation (``linear_imputation``: a sparse
  linear system solved by conjugate gradients), so the refill does not reveal the mask.
- Baselines: ``random_attribution`` and ``sobel_attribution`` (an edge detector that
  knows nothing of the model). A method that cannot beat them is not explaining the model.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mnist_xai.base import Explainer
from mnist_xai.checks import positive
from mnist_xai.metrics import MetricInput
from mnist_xai.metrics import faithfulness as F
from mnist_xai.metrics.randomisation import spearman_rows  # noqa: F401  (this module's name for it)
from mnist_xai_visualizations import as_image_batch, as_targets, explained, finite_number, whole_number

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


def positive_temperature(value) -> float:
    """A softmax temperature: a finite number > 0 (ValueError naming ``temperature`` otherwise)."""
    return positive("temperature", value)


def _auc(curve) -> np.ndarray:
    """Trapezoidal area under curves (..., S+1) sampled at x = 0, 1/S, ..., 1."""
    c = np.asarray(curve)
    return F.rise_auc(c.reshape(-1, c.shape[-1])).reshape(c.shape[:-1])


@functools.lru_cache(maxsize=16)
def _cached_explainer(model):
    return Explainer(model)


def _explainer_for(model):
    """One ``Explainer`` per model (its compiled forward is cached on it); unhashable models get a fresh one."""
    try:
        return _cached_explainer(model)
    except TypeError:
        return Explainer(model)


def deletion_insertion(model, params, batch_stats, images, maps, targets, steps: int = 16, chunk: int | None = None,
                       probs=None, progress=None, baseline: float = 0.0, temperature: float = 1.0):
    """Curves (N, steps + 1) and AUCs (N,) for deletion and insertion, as a dict of numpy arrays.

    A wrapper of the registered metrics ``deletion``/``insertion``
    (``mnist_xai.metrics.faithfulness.deletion_insertion_curves``), kept for its callers.
    ``model, params, batch_stats, images`` as for the explainers (any flax module or logits
    function; ``mnist_xai_visualizations`` documents the contract); ``maps`` (N, H, W) rank the
    pixels (ties are broken by pixel order); ``targets`` (N,) the class whose probability is
    tracked. Removed pixels become ``baseline`` (0: black for MNISTCNN; give the model's own
    black for a model with standardised inputs), inserted ones go into a ``baseline`` image.
    ``probs`` (N, classes), the softmax of the unperturbed images, saves their forward pass
    when several maps of the same images are scored. ``chunk`` is checked and kept for
    compatibility: the perturbed images now go through the shared compiled forward in blocks
    (``MetricInput.logits``). ``progress(images_done)`` is called after each block of images.
    ``temperature`` T > 0: the curves track softmax(logits / T), the calibrated probability of a
    checkpoint that stores its T (``mnist_calibration``); ``probs``, if given, must use the same T.
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
    temperature = positive_temperature(temperature)
    whole_number("chunk", chunk if chunk is not None else 4)
    if probs is not None and np.shape(probs)[:1] != (n,):
        raise ValueError(f"probs: expected one row of class probabilities per image ({n}), got shape {np.shape(probs)}")
    inp = MetricInput(images, targets, maps, _explainer_for(model), params, batch_stats)
    original = None if probs is None else np.asarray(probs)[np.arange(n), targets]
    deletion, insertion = F.deletion_insertion_curves(inp, steps, baseline, temperature, original, progress)
    return {"deletion_curve": deletion, "insertion_curve": insertion,
            "deletion_auc": F.rise_auc(deletion), "insertion_auc": F.rise_auc(insertion)}


def bootstrap_ci(values, key: int = 0, resamples: int = 1000, level: float = 0.95):
    """Mean and percentile-bootstrap interval of the mean, over images."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(key)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), float(lo), float(hi)


# ----------------------------------------------------------------------------- ROAD


# ROAD (Rong et al., ICML 2022): the imputation and the curves live in mnist_xai.metrics.faithfulness
# (the registered metric "road"); the names below are kept for their callers.
ROAD_WEIGHTS, ROAD_FRACTIONS, ROAD_NOISE, ROAD_ITERATIONS = (F.ROAD_WEIGHTS, F.ROAD_FRACTIONS, F.ROAD_NOISE,
                                                             F.ROAD_ITERATIONS)
linear_imputation = F.linear_imputation
_neighbour_sum = F._neighbour_sum


def _model_variables(model, params, batch_stats, image_shape=(28, 28, 1)) -> dict:
    """``{"params", "batch_stats"}`` for ``model.apply`` (an empty batch_stats left out), checked by
    tracing one image of ``image_shape`` through the model: ValueError (one line) if the weights do not fit it."""
    if not callable(getattr(model, "apply", None)):
        raise ValueError(f"model: expected a flax module (called as model.apply(variables, images)), "
                         f"got {type(model).__name__}")
    variables = {"params": params}
    if batch_stats is not None and not (hasattr(batch_stats, "keys") and not len(batch_stats)):
        variables["batch_stats"] = batch_stats
    try:
        out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    except Exception as e:  # noqa: BLE001 - whatever flax/XLA raise for weights of another shape
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ValueError(f"params/batch_stats do not fit {type(model).__name__}: {msg}") from None
    if getattr(out, "shape", None) is None or len(out.shape) != 2:
        raise ValueError(f"model: expected {type(model).__name__} to return logits (N, classes), "
                         f"got {getattr(out, 'shape', type(out).__name__)}")
    return variables


def road(model, params, batch_stats, images, maps, targets, fractions=ROAD_FRACTIONS, noise: float = ROAD_NOISE,
         key=None, iterations: int = ROAD_ITERATIONS, chunk: int | None = None, probs=None, progress=None,
         temperature: float = 1.0) -> dict:
    """ROAD (Rong et al., ICML 2022): MoRF and LeRF curves with noisy linear imputation.

    A wrapper of the registered metric ``road`` (``mnist_xai.metrics.faithfulness.road_curves``),
    kept for its callers; any (N, H, W, C) images the flax module ``model`` takes
    (``model.apply({"params": params, "batch_stats": batch_stats}, images) -> logits``).

    For each fraction f (default 10%, ..., 90%) the round(f H W) most relevant pixels of each
    image (MoRF: ranked by ``maps``, descending, ties by pixel order) or the least relevant ones
    (LeRF) are removed and refilled by ``linear_imputation`` plus Gaussian noise of standard
    deviation ``noise`` (pixel units; drawn from ``key``, per image, so chunking does not change
    it); the model's softmax probability of ``targets`` (of logits / ``temperature``, as in
    ``deletion_insertion``) is recorded.

    Percentiles: pytorch-grad-cam's ``ROADMostRelevantFirst(p)`` keeps the pixels below the p-th
    percentile of the map, i.e. removes the top (100 - p)%, and its ``...Average`` averages
    p = 10..90; here f is the fraction *removed*, counted exactly (a map's ties, e.g. GradCAM's
    zeros, do not remove more pixels than asked).

    Returns numpy arrays: ``fractions`` (P,), ``morf_curve`` / ``lerf_curve`` (N, P), their means
    over the fractions ``morf_auc`` (lower is better) / ``lerf_auc`` (higher is better) per image,
    ``combined`` = (lerf_auc - morf_auc) / 2 (pytorch-grad-cam's ROADCombined, higher is better),
    ``original`` (N,) the unperturbed probability, and ``residual`` (N,) the largest relative
    residual of the image's imputation solves (a check that ``iterations`` sufficed).
    ``chunk`` is checked and kept for compatibility (the shared forward chunks the batch).
    """
    target = explained(model)
    images = target.images(images)
    n = len(images)
    maps = _as_maps(maps, n, images.shape[1:3])
    if targets is None:
        raise ValueError("targets: expected one class (0-9) per image, got None")
    targets = as_targets(targets, n)
    fr = np.asarray(fractions, np.float64).reshape(-1)
    if not fr.size or not np.all((fr > 0) & (fr < 1)):
        raise ValueError(f"fractions: expected fractions of pixels to remove in (0, 1), got {fractions!r}")
    noise = finite_number("noise", noise, 0.0)
    iterations = whole_number("iterations", iterations, 1)
    temperature = positive_temperature(temperature)
    whole_number("chunk", chunk if chunk is not None else 4)
    key = jax.random.PRNGKey(0) if key is None else key
    _model_variables(model, params, batch_stats, images.shape[1:])
    if probs is not None and np.shape(probs)[:1] != (n,):
        raise ValueError(f"probs: expected one row of class probabilities per image ({n}), got shape {np.shape(probs)}")
    inp = MetricInput(images, targets, maps, _explainer_for(model), params, batch_stats, key=key)
    out = F.road_curves(inp, fr, noise, key, iterations, temperature, progress)
    original = (F._original_scores(inp, "probs", temperature) if probs is None
                else np.asarray(probs)[np.arange(n), targets])
    return {**out, "original": original}


# ----------------------------------------------------------------------------- localisation


def ink_share(images, maps, threshold: float = INK_THRESHOLD):
    """Per image: share of positive attribution on ink pixels, and the ink's share of pixels."""
    ink = as_image_batch(images)[..., 0] > threshold
    pos = np.maximum(_as_maps(maps, len(ink)), 0)
    total = pos.sum((1, 2))
    on_ink = (pos * ink).sum((1, 2)) / np.where(total > 0, total, 1)
    return np.where(total > 0, on_ink, np.nan), ink.mean((1, 2))


FRAME_BORDER = 4  # px: the 28x28 map's outer 4-pixel ring is the 7x7 CAM's outer ring of cells


def frame_mask(border: int = FRAME_BORDER, size: int = 28) -> np.ndarray:
    """Boolean (size, size): True on the outer ``border`` pixels (4 px of 28: 49% of the area)."""
    border = whole_number("border", border, 1)
    if 2 * border >= size:
        raise ValueError(f"border: expected fewer than {size // 2 + size % 2} px, so the frame leaves "
                         f"an interior in a {size}x{size} image, got {border}")
    mask = np.ones((size, size), bool)
    mask[border:size - border, border:size - border] = False
    return mask


def localisation(images, maps, border: int = FRAME_BORDER, threshold: float = INK_THRESHOLD) -> dict:
    """Where does a map put its positive attribution? Per image (numpy arrays (N,)):

    - ``frame_share``: share of positive attribution on the outer ``border`` pixels;
      ``frame_area``: the frame's share of the image (what a uniform map gets, 0.49 at 4 px);
      ``frame_ratio`` = ``frame_share / frame_area`` (1: no preference; 2.04 = all in the frame)
    - ``ink_share``: share of positive attribution on ink (pixels > ``threshold``, as ``ink_share``);
      ``ink_area``: ink's share of the image; ``ink_ratio`` = ``ink_share / ink_area``
    - ``empty``: True where a map has no positive attribution at all (all <= 0).

    Negative values are ignored (only evidence *for* the class counts). A map with no positive
    mass says nothing, so it is scored as a uniform map would be: shares equal to the areas,
    ratios 1 (``empty`` marks it); an image without ink gets ink ratio 1. No NaN is returned.
    """
    images = as_image_batch(images)
    n = len(images)
    maps = _as_maps(maps, n)
    threshold = finite_number("threshold", threshold)
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold: expected an ink threshold in [0, 1), got {threshold}")
    frame = frame_mask(border)
    ink = images[..., 0] > threshold
    pos = np.maximum(maps, 0).astype(np.float64)
    total = pos.sum((1, 2))
    empty = ~(total > 0)
    safe_total = np.where(empty, 1.0, total)
    frame_area = np.full(n, frame.mean())
    ink_area = ink.mean((1, 2))
    frame_share = np.where(empty, frame_area, (pos * frame).sum((1, 2)) / safe_total)
    ink_share_ = np.where(empty, ink_area, (pos * ink).sum((1, 2)) / safe_total)
    ink_ratio = np.where(ink_area > 0, ink_share_ / np.where(ink_area > 0, ink_area, 1.0), 1.0)
    return {"frame_share": frame_share, "frame_area": frame_area, "frame_ratio": frame_share / frame_area,
            "ink_share": ink_share_, "ink_area": ink_area, "ink_ratio": ink_ratio, "empty": empty}


def by_class(values, classes, num_classes: int = 10) -> np.ndarray:
    """Mean of ``values`` (N,) per class of ``classes`` (N,), shape (num_classes,); NaN for a class
    absent from ``classes``."""
    values = np.asarray(values, np.float64)
    classes = np.asarray(classes)
    if values.ndim != 1 or classes.shape != values.shape:
        raise ValueError(f"by_class: expected values and classes of the same shape (N,), got "
                         f"{values.shape} and {classes.shape}")
    if classes.size and (not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0
                         or classes.max() >= num_classes):
        raise ValueError(f"classes: expected integers in 0-{num_classes - 1}, got dtype {classes.dtype}"
                         + (f" values in [{classes.min()}, {classes.max()}]" if classes.size else ""))
    counts = np.bincount(classes, minlength=num_classes)
    sums = np.bincount(classes, weights=values, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def localisation_by_class(images, maps, classes, border: int = FRAME_BORDER,
                          threshold: float = INK_THRESHOLD, num_classes: int = 10) -> dict:
    """``localisation`` aggregated per class (e.g. the predicted class): for each of frame_share,
    frame_ratio, ink_share, ink_ratio a list of ``num_classes`` means, plus the overall mean of
    each, the per-class counts, the areas a uniform map gets (``frame_area``, ``ink_area``, both
    means over the images) and the number of empty maps. JSON-ready (floats, NaN for an absent class)."""
    loc = localisation(images, maps, border, threshold)
    classes = np.asarray(classes)
    out = {k: [float(v) for v in by_class(loc[k], classes, num_classes)]
           for k in ("frame_share", "frame_ratio", "ink_share", "ink_ratio")}
    out.update({f"{k}_mean": float(loc[k].mean()) for k in ("frame_share", "frame_ratio", "ink_share", "ink_ratio")})
    out.update({"count": [int(c) for c in np.bincount(classes, minlength=num_classes)],
                "frame_area": float(loc["frame_area"].mean()), "ink_area": float(loc["ink_area"].mean()),
                "empty_maps": int(loc["empty"].sum()), "border": int(border), "threshold": float(threshold)})
    return out


# ----------------------------------------------------------------------------- randomisation


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
    "maps": (stages, N, H, W) the randomised models' maps}``, e.g. for intervals and the
    figure of one digit's maps as the layers are re-initialised (Adebayo et al.'s fig. 2).

    A wrapper over the registered metric ``"model_parameter_randomisation"``
    (``mnist_xai.metrics.randomisation``), with the stages of ``cascading_layers`` /
    ``randomized_params``."""
    from mnist_xai.metrics import MetricInput
    from mnist_xai.metrics.randomisation import model_parameter_randomisation

    images = explainer.target.images(images)
    if maps is None:
        maps = explainer.attribute(params, batch_stats, images, targets, key=key)
    inp = MetricInput(images, targets=targets, maps=maps, explainer=explainer, params=params,
                      batch_stats=batch_stats, key=key)
    stages = [(name, f"bn{name[4:]}") if name.startswith("conv") and f"bn{name[4:]}" in params else (name,)
              for name in cascading_layers(params)]
    _, details = model_parameter_randomisation(inp, fresh_params=fresh_params, layers=stages,
                                               keep_maps=return_details, progress=progress,
                                               explain_predicted=targets is None)
    results = [(stage[0], float(np.nanmean(rho))) for stage, rho in zip(stages, details["rho"])]
    if return_details:
        return results, {"rho": details["rho"], "maps": details["maps"]}
    return results


def completeness_error(ig_explainer, params, batch_stats, images, targets=None, maps=None):
    """Integrated Gradients: |sum(IG) - (f(x) - f(x'))| / |f(x) - f(x')| per image
    (``maps``: the explainer's attributions when already computed)."""
    gap, delta = ig_explainer.completeness_gap(params, batch_stats, images, targets, maps=maps)
    return np.abs(gap) / np.maximum(np.abs(delta), 1e-6)

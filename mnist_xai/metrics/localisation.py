"""Localisation metrics: does a map's relevance fall on the object? Quantus 0.6.0's six, plus the
project's ink and frame shares.

The object is ``MetricInput.masks`` (N, H, W) bool. On MNIST it is the ink: ``ink_masks(images)``
marks the pixels brighter than ``INK_THRESHOLD`` (0.5 of the [0, 1] range, the same threshold as
``mnist_xai_metrics.ink_share``), i.e. the digit's strokes without their anti-aliased rim. For
RGB or other images ``ink_masks`` thresholds the mean over channels, which only means "the
object" for bright strokes on a dark ground; otherwise pass your own masks (a segmentation, or
a bounding box painted True), one (H, W) bool array per image, in ``MetricInput(masks=...)``.

Every metric takes Quantus's preprocessing options: ``normalise`` (divide each map by its
max |value|) then ``abs`` (take |value|), with Quantus's default per metric. Variant: Quantus's
``normalise_by_max`` (quantus/functions/normalise_func.py:15-50) divides the whole batch by the
batch's largest |value| (``normalise_axes=None`` spans the batch axis too); here each map is
divided by its own, so a map's score never depends on the other maps it is scored with.
Quantus's ``normalise_func_kwargs={"normalise_axes": (1, 2, 3)}`` is this choice; every metric
of this module is unchanged by a positive scale anyway, except the tiny epsilons noted.

An empty mask gives NaN, as in Quantus (``MetricResult`` leaves NaN out of the mean).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from mnist_xai.checks import finite_number, whole_number

from .base import MetricInput, register_metric

INK_THRESHOLD = 0.5  # as mnist_xai_metrics.INK_THRESHOLD
FRAME_BORDER = 4  # px: the 28x28 map's outer 4-pixel ring is the 7x7 CAM's outer ring of cells
ZHANG = "Zhang et al., 'Top-down neural attention by excitation backprop', IJCV 2018"
KOHLBRENNER = "Kohlbrenner et al., 'Towards best practice in explaining neural network decisions with LRP', IJCNN 2020"
ARRAS = "Arras et al., 'CLEVR-XAI: a benchmark dataset for the ground truth evaluation of neural network explanations', Inf. Fusion 2022"
THEINER = "Theiner et al., 'Interpretable semantic photo geolocation', WACV 2022 (arXiv 2021)"
FAWCETT = "Fawcett, 'An introduction to ROC analysis', Pattern Recognit. Lett. 2006"


def ink_masks(images, threshold: float = INK_THRESHOLD) -> np.ndarray:
    """The object masks of MNIST digits: (N, H, W) bool, True where the pixel (the mean over
    channels for RGB) is brighter than ``threshold`` (pixels in [0, 1]). Pass them as
    ``MetricInput(masks=ink_masks(images))``."""
    threshold = finite_number("threshold", threshold)
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"images: expected (N, H, W, C), got shape {x.shape}")
    return x.mean(-1) > threshold


def frame_masks(shape, border: int = FRAME_BORDER) -> np.ndarray:
    """(H, W) bool, True on the outer ``border`` pixels of an H x W image (4 px of 28: 49%)."""
    h, w = shape
    border = whole_number("border", border, 1)
    if 2 * border >= min(h, w):
        raise ValueError(f"border: expected fewer than {(min(h, w) + 1) // 2} px, so the frame leaves an "
                         f"interior in a {h}x{w} image, got {border}")
    mask = np.ones((h, w), bool)
    mask[border:h - border, border:w - border] = False
    return mask


def prepared_maps(inp: MetricInput, abs: bool, normalise: bool) -> np.ndarray:
    """The maps as Quantus prepares them (normalise, then abs), flat: (N, H*W) float64.

    ``normalise``: each map divided by its max |value| (an all-zero map stays zero); see the
    module's docstring for how this departs from Quantus's whole-batch division."""
    a = np.asarray(inp.maps, np.float64).reshape(len(inp), -1)
    if not np.isfinite(a).all():
        raise ValueError("maps: expected finite values, got NaN/inf")
    if normalise:
        peak = np.abs(a).max(1, keepdims=True)
        a = a / np.where(peak > 0, peak, 1.0)
    return np.abs(a) if abs else a


def _flat_masks(inp: MetricInput) -> np.ndarray:
    return np.asarray(inp.masks, bool).reshape(len(inp), -1)


def _nan_where_empty(values, masks) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return np.where(masks.sum(1) > 0, values, np.nan)


def _descending_order(a: np.ndarray) -> np.ndarray:
    """Pixel indices by descending value, ties by pixel order (stable). Quantus uses
    ``np.argsort(-a)`` (quicksort, not stable): on ties at a cut-off the two may pick different
    pixels; a map without ties there gets the same score."""
    return np.argsort(-a, axis=1, kind="stable")


@register_metric("pointing_game", title="Pointing game", family="localisation", higher_is_better=True,
                 needs=("maps", "masks"), reference="quantus.PointingGame", paper=ZHANG)
def pointing_game(inp: MetricInput, weighted: bool = False, abs: bool = False, normalise: bool = True):
    """1 if the map's maximum lies on the object, else 0 (ties at the maximum: any of them).

    Quantus pointing_game.py:287-296. Variant with ``weighted=True``: a hit scores
    1 - (object area / image area), a miss 0; Quantus writes that float into a bool array
    (:293), so its weighted hit is always 1. Quantus also writes NaN into that bool array for
    an empty mask (:296), which reads as a hit; here it is NaN.
    """
    a, s = prepared_maps(inp, abs, normalise), _flat_masks(inp)
    hit = (s & (a == a.max(1, keepdims=True))).any(1).astype(np.float64)
    if weighted:
        hit = hit * (1 - s.mean(1))
    return _nan_where_empty(hit, s)


@register_metric("attribution_localisation", title="Attribution localisation", family="localisation",
                 higher_is_better=True, needs=("maps", "masks"), reference="quantus.AttributionLocalisation",
                 paper=KOHLBRENNER)
def attribution_localisation(inp: MetricInput, weighted: bool = False, positive_attributions: bool = False,
                             abs: bool = True, normalise: bool = True):
    """Share of the map's relevance inside the object: sum(a on mask) / (sum(a) + 1e-9).

    Quantus attribution_localisation.py:299-330: ``positive_attributions`` clips negative
    relevance first; NaN for an empty mask and where the share exceeds 1 (negative relevance
    outside). ``weighted``: the share times the object's area share. Variant: Quantus divides
    the object's area by ``x_batch[2:].size`` (:311), the size of all but the first two images
    of the batch, not of one image; here it is the image's H*W.
    """
    a, s = prepared_maps(inp, abs, normalise), _flat_masks(inp)
    if positive_attributions:
        a = np.clip(a, 0, None)
    share = (a * s).sum(1) / (a.sum(1) + 1e-9)
    share = np.where(share > 1, np.nan, share)
    if weighted:
        share = share * s.mean(1)
    return _nan_where_empty(share, s)


@register_metric("relevance_mass_accuracy", title="Relevance mass accuracy", family="localisation",
                 higher_is_better=True, needs=("maps", "masks"), reference="quantus.RelevanceMassAccuracy",
                 paper=ARRAS)
def relevance_mass_accuracy(inp: MetricInput, abs: bool = False, normalise: bool = True):
    """Relevance inside the object over the total relevance: sum(a on mask) / sum(a).

    Quantus relevance_mass_accuracy.py:274-287 (no epsilon: a map summing to 0 gives NaN/inf,
    as there). NaN for an empty mask."""
    a, s = prepared_maps(inp, abs, normalise), _flat_masks(inp)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nan_where_empty((a * s).sum(1) / a.sum(1), s)


@register_metric("relevance_rank_accuracy", title="Relevance rank accuracy", family="localisation",
                 higher_is_better=True, needs=("maps", "masks"), reference="quantus.RelevanceRankAccuracy",
                 paper=ARRAS)
def relevance_rank_accuracy(inp: MetricInput, abs: bool = False, normalise: bool = True):
    """Of the K most relevant pixels (K = the object's pixel count), the share on the object.

    Quantus relevance_rank_accuracy.py:277-295; ties broken by pixel order (``_descending_order``).
    NaN for an empty mask."""
    a, s = prepared_maps(inp, abs, normalise), _flat_masks(inp)
    k = s.sum(1)
    ranked = np.take_along_axis(s, _descending_order(a), 1)  # object membership by rank
    in_top = np.arange(a.shape[1])[None] < k[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nan_where_empty((ranked & in_top).sum(1) / k, s)


@register_metric("top_k_intersection", title="Top-k intersection", family="localisation", higher_is_better=True,
                 needs=("maps", "masks"), reference="quantus.TopKIntersection", paper=THEINER)
def top_k_intersection(inp: MetricInput, k: int | None = None, concept_influence: bool = False, abs: bool = False,
                       normalise: bool = True):
    """Share of the ``k`` most relevant pixels that lie on the object.

    Quantus top_k_intersection.py:283-301; ties by pixel order. ``concept_influence``: times
    (image area / object area). Variant: Quantus's default ``k=1000`` is 2% of a 224x224 image
    and more than a 28x28 digit has (its assert refuses k >= H*W); here ``k=None`` takes 10% of
    the pixels, round(0.1 * H * W) (78 of 784). NaN for an empty mask.
    """
    a, s = prepared_maps(inp, abs, normalise), _flat_masks(inp)
    p = a.shape[1]
    k = max(1, int(round(0.1 * p))) if k is None else whole_number("k", k, 1)
    if k >= p:
        raise ValueError(f"k: expected fewer than the image's {p} pixels, got {k}")
    hits = np.take_along_axis(s, _descending_order(a)[:, :k], 1).mean(1)
    if concept_influence:
        with np.errstate(invalid="ignore", divide="ignore"):
            hits = hits * p / s.sum(1)
    return _nan_where_empty(hits, s)


@register_metric("auc", title="AUC (localisation)", family="localisation", higher_is_better=True,
                 needs=("maps", "masks"), reference="quantus.AUC", paper=FAWCETT)
def auc(inp: MetricInput, abs: bool = False, normalise: bool = True):
    """Area under the ROC curve of the map as a pixel classifier of the object.

    Quantus auc.py:272-280 calls sklearn's ``roc_curve`` and ``auc`` per image; here the same
    area in closed form, batched: the Mann-Whitney statistic (rank sum of the object's pixels,
    average ranks for ties, which is the trapezoid rule over tied scores that roc_curve draws).
    NaN for an empty mask and for a mask covering the whole image (no negatives: sklearn's
    false-positive rate is NaN there too).
    """
    a, s = prepared_maps(inp, abs, normalise), _flat_masks(inp)
    pos = s.sum(1).astype(np.float64)
    neg = s.shape[1] - pos
    ranks = rankdata(a, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        area = ((ranks * s).sum(1) - pos * (pos + 1) / 2) / (pos * neg)
    return np.where(neg > 0, _nan_where_empty(area, s), np.nan)


def _positive_share(inp: MetricInput, region: np.ndarray):
    """Share of each map's positive attribution on ``region`` (N, H*W); NaN for a map with no
    positive attribution (it says nothing about where the evidence is)."""
    pos = np.maximum(np.asarray(inp.maps, np.float64).reshape(len(inp), -1), 0)
    if not np.isfinite(pos).all():
        raise ValueError("maps: expected finite values, got NaN/inf")
    total = pos.sum(1)
    return np.where(total > 0, (pos * region).sum(1) / np.where(total > 0, total, 1.0), np.nan)


@register_metric("ink_share", title="Ink share", family="localisation", higher_is_better=True, needs=("maps",),
                 reference="mnist_xai_metrics.ink_share", paper="this project (issue 15)")
def ink_share(inp: MetricInput, threshold: float = INK_THRESHOLD):
    """Share of the map's positive attribution on the object: ``MetricInput.masks`` if given,
    else the ink (``ink_masks(images, threshold)``). NaN for a map with no positive attribution.

    Details: ``area``, the object's share of the image (what a uniform map scores) and
    ``ratio`` = share / area (1: no preference for the object)."""
    region = _flat_masks(inp) if inp.masks is not None else ink_masks(inp.images, threshold).reshape(len(inp), -1)
    share = _positive_share(inp, region)
    area = region.mean(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(area > 0, share / area, np.nan)
    return share, {"area": area, "ratio": ratio}


@register_metric("frame_share", title="Frame share", family="localisation", higher_is_better=False,
                 needs=("maps",), reference="mnist_xai_metrics.localisation", paper="this project (issue 15)")
def frame_share(inp: MetricInput, border: int = FRAME_BORDER):
    """Share of the map's positive attribution on the image's outer ``border`` pixels (where
    a digit has no ink; the shipped GradCAM glows there). NaN for a map with no positive
    attribution. Details: ``area`` (0.49 of a 28x28 image at 4 px) and ``ratio`` = share / area."""
    frame = frame_masks(inp.images.shape[1:3], border).reshape(1, -1)
    share = _positive_share(inp, frame)
    area = np.full(len(inp), frame.mean())
    return share, {"area": area, "ratio": share / area}

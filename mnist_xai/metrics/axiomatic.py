"""Axiomatic metrics: does a map obey a property every faithful attribution should? Quantus
0.6.0's three: completeness, non-sensitivity, input invariance.

The model's scores come from ``MetricInput``'s shared compiled forward (``target_scores``);
input invariance explains again with the explainer's own class and options, on a shifted copy
of the model (``shifted_explainer``).
"""
from __future__ import annotations

import numpy as np

from mnist_xai.checks import finite_number, whole_number

from .base import MetricInput, register_metric
from .localisation import prepared_maps

SUNDARARAJAN = "Sundararajan et al., 'Axiomatic attribution for deep networks', ICML 2017"
NGUYEN = "Nguyen & Martinez, 'On quantitative aspects of model interpretability', arXiv:2007.07584, 2020"
KINDERMANS = "Kindermans et al., 'The (un)reliability of saliency methods', in Explainable AI (Springer) 2019, arXiv:1711.00867"
#: how many perturbed images ``non_sensitivity`` builds at once (then ``MetricInput.chunk`` a call)
PERTURBED_PER_BLOCK = 4096


def _baseline_images(inp: MetricInput, baseline) -> np.ndarray:
    """The baseline as (N, 1, 1, C) or (N, H, W, C) float32: a number, ``"black"`` (each image's
    minimum, Quantus's ``perturb_baseline="black"``: quantus/helpers/utils.py ``get_baseline_dict``,
    ``arr.min()`` per image) or one image (H, W, C)."""
    x = inp.images
    if isinstance(baseline, str):
        if baseline != "black":
            raise ValueError(f"baseline: expected a number, 'black' or one image {x.shape[1:]}, got {baseline!r}")
        return x.reshape(len(x), -1).min(1).reshape(-1, 1, 1, 1)
    b = np.asarray(baseline, np.float32)
    if b.ndim == 0:
        return np.full((len(x), 1, 1, 1), finite_number("baseline", baseline), np.float32)
    if b.shape not in (x.shape[1:], x.shape[1:3]) or not np.isfinite(b).all():
        raise ValueError(f"baseline: expected a number, 'black' or one finite image {x.shape[1:]}, got shape {b.shape}")
    return np.broadcast_to(b.reshape(*x.shape[1:3], -1), x.shape[1:])[None]


def _score_kind(kind: str) -> str:
    if kind not in ("logits", "probs"):
        raise ValueError(f"kind: expected 'logits' or 'probs', got {kind!r}")
    return kind


@register_metric("completeness", title="Completeness", family="axiomatic", higher_is_better=False,
                 needs=("model", "maps"), reference="quantus.Completeness", paper=SUNDARARAJAN)
def completeness(inp: MetricInput, baseline=None, kind: str = "logits"):
    """Completeness error |sum(a) - (f(x) - f(x'))| / |f(x) - f(x')| per image (0: complete).

    f: the target logit (``kind="probs"``: its softmax probability); x': the ``baseline``
    image, by default the explainer's own ``baseline`` when it has one (Integrated Gradients,
    DeepLift), else 0 (``"black"``: each image's minimum, as Quantus's default). The same value
    as ``mnist_xai_metrics.completeness_error`` (the denominator floored at 1e-6).

    Quantus completeness.py:296-311 returns ``sum(a) == f(x) - f(x')``, an exact float equality
    (False for any float32 map of a real model), and normalises the map by its max first
    (``normalise=True`` by default), which breaks the sum; here no normalisation, and the
    relative error instead, with the equality in ``details["quantus"]``. Details also hold
    ``attribution_sum`` and ``delta`` = f(x) - f(x').
    """
    kind = _score_kind(kind)
    if baseline is None:
        own = getattr(inp.explainer, "baseline", None)
        baseline = 0.0 if own is None or isinstance(own, str) else own
    base = np.broadcast_to(_baseline_images(inp, baseline), inp.images.shape)
    delta = (inp.target_scores(inp.images, kind).astype(np.float64)
             - inp.target_scores(np.ascontiguousarray(base), kind).astype(np.float64))
    total = np.asarray(inp.maps, np.float64).reshape(len(inp), -1).sum(1)
    error = np.abs(total - delta) / np.maximum(np.abs(delta), 1e-6)
    return error, {"attribution_sum": total, "delta": delta, "quantus": total == delta}


@register_metric("non_sensitivity", title="Non-sensitivity", family="axiomatic", higher_is_better=False,
                 needs=("model", "maps"), reference="quantus.NonSensitivity", paper=NGUYEN)
def non_sensitivity(inp: MetricInput, eps: float = 1e-5, features_in_step: int = 1, baseline="black",
                    abs: bool = True, normalise: bool = True, kind: str = "probs"):
    """How many features break "zero attribution <=> no effect": the count of features where
    (|f(x with the feature set to ``baseline``) - f(x)| < eps) XOR (attribution < eps).

    Quantus non_sensitivity.py:317-356: features are the flat pixels in order, taken
    ``features_in_step`` at a time, each group set to the baseline alone (from the original
    image, not cumulatively), one forward pass a group; f is the target's softmax probability
    (Quantus's ``__call__`` default ``softmax=True``, non_sensitivity.py:166; ``kind="logits"``: the logit); the map is normalised and made absolute first (Quantus's defaults).
    Variants: a feature is a pixel with all its channels (Quantus broadcasts the map over
    channels and perturbs each channel-pixel alone: C times the passes; the same for C = 1);
    with ``features_in_step`` > 1 a group counts as unattributed when all its pixels are
    (Quantus XORs the (N, groups) output test with the (N, pixels) attribution test, which only
    runs for a step of 1). Lower is better; 0: the map's zeros are exactly the pixels without effect.
    """
    eps = finite_number("eps", eps)
    kind = _score_kind(kind)
    n, h, w, c = inp.images.shape
    p = h * w
    step = whole_number("features_in_step", features_in_step, 1, p)
    if p % step:
        raise ValueError(f"features_in_step: expected a divisor of the {p} pixels, got {step}")
    groups = p // step
    a = prepared_maps(inp, abs, normalise).reshape(n, groups, step)
    unattributed = (a < eps).all(2)  # (N, groups)
    member = np.zeros((groups, p), np.float32)
    member[np.repeat(np.arange(groups), step), np.arange(p)] = 1
    member = member.reshape(groups, h, w, 1)
    base = _baseline_images(inp, baseline)
    y = inp.target_scores(inp.images, kind)
    per_block = max(1, PERTURBED_PER_BLOCK // groups)
    moved = np.zeros((n, groups), bool)
    for i in range(0, n, per_block):
        x = inp.images[i:i + per_block]
        b = base[i:i + per_block] if len(base) > 1 else base
        copies = x[:, None] * (1 - member[None]) + b[:, None] * member[None]  # (n_b, groups, H, W, C)
        t = np.repeat(inp.targets[i:i + per_block], groups)
        scores = inp.target_scores(copies.reshape(-1, h, w, c), kind, targets=t).reshape(len(x), groups)
        moved[i:i + per_block] = ~(np.abs(scores - y[i:i + per_block, None]) < eps)
    insensitive = ~moved
    return (insensitive ^ unattributed).sum(1).astype(np.float64)


def _input_method(explainer):
    """The explainer's MethodSpec; ValueError for a layer method or an unregistered class."""
    from mnist_xai.base import CAMExplainer

    spec = getattr(explainer, "spec", None)
    if spec is None or isinstance(explainer, CAMExplainer):
        what = getattr(spec, "name", type(explainer).__name__)
        raise ValueError(f"input_invariance: expected a registered method that explains the input, not a layer "
                         f"(a shifted model is a function, with no layers), got {what}")
    return spec


def shifted_explainer(explainer, variables, shift: float):
    """The same method (class and options) explaining g(z) = f(z - shift), the model with the
    constant input shift absorbed (Kindermans et al. sec. 3: the first layer's bias b - W m).

    Variant: Quantus (helpers/model/pytorch_model.py:378-416) edits the first conv's bias by one
    value of its response to a constant image, which is the shift only away from zero-padded
    borders (for a SAME-padded first conv its "shifted" model is another function); composing
    with the shift is the same function everywhere. g is a function of the images, so methods
    that read a named layer (the CAMs) cannot explain it: ValueError.
    """
    spec = _input_method(explainer)
    target = explainer.target

    def shifted(z):
        return target.logits(variables, z - shift)

    shifted.__name__ = f"{target.name}_shifted"
    options = {o.name: getattr(explainer, o.name) for o in spec.options if hasattr(explainer, o.name)}
    return spec.cls(shifted, **options)


#: the last few shifted explainers, each with what it was made from (matched by identity: the
#: variables are baked into its compiled program, so other weights make another explainer)
_SHIFTED: list = []
_SHIFTED_KEPT = 4


def _shifted_for(inp: MetricInput, shift: float):
    """``shifted_explainer`` of ``inp``'s explainer and weights, made once per (explainer, shift,
    params, batch_stats) and reused: a new one is a new function, and so a new compilation on
    every call (input invariance ran at 0.1x Quantus's speed before)."""
    for explainer, s, params, batch_stats, made in _SHIFTED:
        if explainer is inp.explainer and s == shift and params is inp.params and batch_stats is inp.batch_stats:
            return made
    made = shifted_explainer(inp.explainer, inp.variables, shift)
    _SHIFTED.insert(0, (inp.explainer, shift, inp.params, inp.batch_stats, made))
    del _SHIFTED[_SHIFTED_KEPT:]
    return made


@register_metric("input_invariance", title="Input invariance", family="axiomatic", higher_is_better=True,
                 needs=("explainer", "maps"), reference="quantus.InputInvariance", paper=KINDERMANS)
def input_invariance(inp: MetricInput, input_shift: float = -1.0, atol: float = 1e-4):
    """1 if the map is unchanged when the input is shifted by a constant and the model absorbs
    the shift (``shifted_explainer``), else 0.

    Quantus input_invariance.py:280-305: x' = x + ``input_shift`` (default -1), the shifted
    model explained at x', and ``all(isclose(a, a', atol))`` (numpy's default rtol 1e-5) with
    no normalisation or abs (Quantus's defaults). ``inp.maps`` must be the explainer's maps of
    ``inp.images`` for ``inp.targets`` (key ``inp.key``). Details: ``max_abs_difference``.
    Saliency passes; Gradient x Input and Integrated Gradients from a zero baseline do not.
    Departure: Quantus's ``perturb_batch`` (quantus/functions/perturb_func.py:62-64) hands each
    image ``indices[i][1:]``, so its first pixel is never shifted and even Saliency fails there
    (on every digit of the parity fixture); here every pixel is shifted.
    """
    input_shift = finite_number("input_shift", input_shift)
    atol = finite_number("atol", atol, 0.0)
    _input_method(inp.explainer)
    shifted = _shifted_for(inp, input_shift)
    moved = np.asarray(shifted.attribute(None, None, inp.images + np.float32(input_shift), inp.targets, key=inp.key))
    a = np.asarray(inp.maps, np.float32)
    same = np.isclose(a, moved, atol=atol).reshape(len(inp), -1).all(1)
    return same.astype(np.float64), {"max_abs_difference": np.abs(a - moved).reshape(len(inp), -1).max(1)}


"""Complexity metrics: how concentrated is a map? Quantus 0.6.0's three, on maps only.

Preprocessing as in ``localisation.prepared_maps``: ``normalise`` divides each map by its own
max |value| (Quantus divides the whole batch by the batch's; the same as Quantus's
``normalise_func_kwargs={"normalise_axes": (1, 2, 3)}``), then ``abs``. Sparseness and
complexity are unchanged by a positive scale but for their epsilons; effective complexity's
threshold is on the normalised map, so there the per-map choice matters: with Quantus's default
a map's count would depend on the other maps of its batch.
"""
from __future__ import annotations

import numpy as np

from mnist_xai.checks import finite_number

from .base import MetricInput, register_metric
from .localisation import prepared_maps

CHALASANI = "Chalasani et al., 'Concise explanations of neural networks using adversarial training', ICML 2020"
BHATT = "Bhatt et al., 'Evaluating and aggregating feature-based model explanations', IJCAI 2020"
NGUYEN = "Nguyen & Martinez, 'On quantitative aspects of model interpretability', arXiv:2007.07584, 2020"


@register_metric("sparseness", title="Sparseness", family="complexity", higher_is_better=True, needs=("maps",),
                 reference="quantus.Sparseness", paper=CHALASANI)
def sparseness(inp: MetricInput, abs: bool = True, normalise: bool = True):
    """Gini index of the map's values: 0 for a uniform map, 1 - 1/P for all relevance on one pixel.

    Quantus sparseness.py:256-265: a += 1e-7 (so an all-zero map scores 0, not 0/0), sorted
    ascending, sum_i (2i - P - 1) a_(i) / (P sum a), i = 1..P."""
    a = np.sort(prepared_maps(inp, abs, normalise) + 1e-7, axis=1)
    p = a.shape[1]
    i = np.arange(1, p + 1)
    return ((2 * i - p - 1) * a).sum(1) / (p * a.sum(1))


@register_metric("complexity", title="Complexity", family="complexity", higher_is_better=False, needs=("maps",),
                 reference="quantus.Complexity", paper=BHATT)
def complexity(inp: MetricInput, abs: bool = True, normalise: bool = True):
    """Entropy (nats) of the map read as a distribution p = a / sum|a|: 0 for one pixel, log P
    for a uniform map. Quantus complexity.py:252-256: -sum p log(p + 1e-12); an all-zero map
    gives NaN (0/0), as there."""
    a = prepared_maps(inp, abs, normalise)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = a / np.abs(a).sum(1, keepdims=True)
        return -(q * np.log(q + 1e-12)).sum(1)


@register_metric("effective_complexity", title="Effective complexity", family="complexity", higher_is_better=False,
                 needs=("maps",), reference="quantus.EffectiveComplexity", paper=NGUYEN)
def effective_complexity(inp: MetricInput, eps: float = 1e-5, abs: bool = True, normalise: bool = True):
    """Number of pixels whose (normalised, absolute) relevance exceeds ``eps``.

    Quantus effective_complexity.py:252-254: ``sum(a > eps)``, a count (not a share)."""
    eps = finite_number("eps", eps)
    return (prepared_maps(inp, abs, normalise) > eps).sum(1).astype(np.float64)

"""Toy metrics with known answers, for the tests of evaluate_xai (tests/test_evaluate_xai.py).

Importing this module registers them in ``mnist_xai.metrics.METRICS`` (the tests remove them
again with a fixture); ``evaluate_xai.py --import tests/toy_metrics.py`` registers them in a
subprocess. They stand in for the metric families, so evaluate_xai is tested on its own:

- ``toy_target_prob`` (faithfulness, ↑): the softmax probability of the explained class of the
  unperturbed image, with the per-image "curve" (p, p / 2) as a detail;
- ``toy_map_mean`` (complexity, ↓): the mean of each map;
- ``toy_reexplain`` (randomisation, ↓, needs the explainer): the largest |difference| between the
  map and the explainer's map computed again (0 for a deterministic method); it applies only to
  the gradient family (``applies``), and raises ``NotApplicable`` for an image count of 1
  (a metric that finds out while running).
"""
import numpy as np

from mnist_xai.metrics import register_metric
from mnist_xai.metrics.base import NotApplicable

TOY = ("toy_target_prob", "toy_map_mean", "toy_reexplain")


@register_metric("toy_target_prob", title="Toy target probability", family="faithfulness", higher_is_better=True,
                 needs=("model", "maps"))
def toy_target_prob(inp, scale: float = 1.0):
    """The explained class's probability of the image (times ``scale``)."""
    p = scale * inp.target_scores(inp.images)
    return p, {"curve": np.stack([p, p / 2], 1), "fractions": np.array([0.0, 1.0])}


@register_metric("toy_map_mean", title="Toy map mean", family="complexity", higher_is_better=False, needs=("maps",))
def toy_map_mean(inp):
    """The mean of each map."""
    return inp.maps.reshape(len(inp), -1).mean(1)


def _gradient_only(explainer):
    from mnist_xai.registry import SPECS
    fam = {s.cls: s.family for s in SPECS.values()}.get(type(explainer))
    return None if fam == "gradient" else "toy_reexplain needs a gradient method"


@register_metric("toy_reexplain", title="Toy re-explain gap", family="randomisation", higher_is_better=False,
                 needs=("model", "maps", "explainer"), applies=_gradient_only)
def toy_reexplain(inp):
    """The largest |map - map explained again| of each image."""
    if len(inp) == 1:
        raise NotApplicable("toy_reexplain needs two images or more a block")
    return np.abs(inp.explain() - inp.maps).reshape(len(inp), -1).max(1)

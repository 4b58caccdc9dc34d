"""Metrics of explanations on one contract (``base``): Quantus's six families, for any model.

Each family module registers its metrics on import; ``METRICS`` then holds them all.
"""
from .base import (FAMILIES, METRICS, MetricInput, MetricResult, MetricSpec, bootstrap_ci, evaluate,  # noqa: F401
                   metric_names, register_metric)
from . import robustness  # noqa: E402,F401
from . import randomisation  # noqa: E402,F401

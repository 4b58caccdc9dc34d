"""Metrics of explanations on one contract (``base``): Quantus's six families, for any model.

Each family module registers its metrics on import; ``METRICS`` then holds them all.
"""
from .base import (FAMILIES, METRICS, MetricInput, MetricResult, MetricSpec, bootstrap_ci, evaluate,  # noqa: F401
                   metric_names, register_metric)
from . import localisation  # noqa: F401,E402  (registers its metrics)
from . import complexity  # noqa: F401,E402
from . import axiomatic  # noqa: F401,E402

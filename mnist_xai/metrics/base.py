"""The metric contract: every metric declares its facts once and is called one way.

A metric is a function ``fn(inp: MetricInput, **options) -> np.ndarray`` of per-image values
(shape (N,), float64; NaN where a value is undefined for an image, e.g. a constant map in a
correlation). ``@register_metric`` on it records a ``MetricSpec`` in ``METRICS``:

    @register_metric("sparseness", title="Sparseness", family="complexity", higher_is_better=True,
                     needs=("maps",), reference="quantus.Sparseness", paper="Chalasani et al., ICML 2020")
    def sparseness(inp, abs=True): ...

``evaluate(name, inp, **options)`` checks what the metric needs, runs it, and returns a
``MetricResult``: the per-image values, their mean and a bootstrap interval, and the direction.
``evaluate_xai``, the tables and the charts read the registry; a new metric appears everywhere
once registered.

``MetricInput`` carries what metrics need, for any model the explainers take (linen, nnx,
Equinox, Haiku, a function) and any (N, H, W, C) images:

- ``images`` (N, H, W, C) float32, ``targets`` (N,) int (the explained class of each image),
- ``maps`` (N, H, W) float32: the attributions being judged,
- ``explainer`` with ``params``/``batch_stats``: to run the model (``logits``, ``probs``: one
  batched, compiled forward, shared by every metric) and to explain again (``explain``) on
  perturbed inputs or randomised parameters,
- ``masks`` (N, H, W) bool: the object (localisation metrics; on MNIST the ink mask),
- ``key``: a ``jax.random`` key, the only source of randomness of every metric.

A metric that makes sense only for some methods (completeness: a path method's baseline)
says so with ``applies=`` in ``register_metric``: ``applies(explainer) -> None`` (it applies)
or a one-line reason why not. ``evaluate`` then raises ``NotApplicable`` (a ``ValueError``)
with that reason, and ``evaluate_xai`` shows the reason in its table instead of a value;
``not_applicable(name, explainer)`` asks without running anything. A metric may also raise
``NotApplicable`` itself when it finds out only while running.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

#: The families, in the order tables and charts show them (Quantus's six).
FAMILIES: tuple[tuple[str, str], ...] = (
    ("faithfulness", "Faithfulness"),
    ("robustness", "Robustness"),
    ("localisation", "Localisation"),
    ("complexity", "Complexity"),
    ("randomisation", "Randomisation"),
    ("axiomatic", "Axiomatic"),
)
NEEDS = ("model", "maps", "explainer", "masks")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    title: str
    family: str
    higher_is_better: bool
    needs: tuple[str, ...]
    reference: str
    paper: str
    fn: Callable
    summary: str = ""  # one line: what the value means
    applies: Callable | None = None  # applies(explainer) -> None, or why the metric does not apply

    def __call__(self, inp: "MetricInput", **options) -> "MetricResult":
        return evaluate(self.name, inp, **options)


METRICS: dict[str, MetricSpec] = {}


class NotApplicable(ValueError):
    """The metric does not apply to this method or input; the message says why (one line)."""


def register_metric(name: str, *, title: str, family: str, higher_is_better: bool, needs=("model", "maps"),
                    reference: str = "", paper: str = "", summary: str = "", applies: Callable | None = None):
    """Record ``fn`` as metric ``name`` (see the module's docstring)."""
    if family not in dict(FAMILIES):
        raise ValueError(f"family: expected one of {', '.join(dict(FAMILIES))}, got {family!r}")
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"needs: expected a subset of {NEEDS}, got {sorted(unknown)}")
    if applies is not None and not callable(applies):
        raise ValueError(f"applies: expected a function explainer -> None or a reason, got {type(applies).__name__}")

    def wrap(fn):
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        METRICS[name] = MetricSpec(name, title, family, bool(higher_is_better), tuple(needs), reference, paper, fn,
                                   summary or (doc[0] if doc else ""), applies)
        return fn
    return wrap


def metric_names(family: str | None = None) -> list[str]:
    """Registered metrics, by family (FAMILIES' order) then name."""
    order = {f: i for i, (f, _) in enumerate(FAMILIES)}
    specs = [s for s in METRICS.values() if family is None or s.family == family]
    return [s.name for s in sorted(specs, key=lambda s: (order[s.family], s.name))]


def bootstrap_ci(values, key: int = 0, resamples: int = 1000, level: float = 0.95):
    """Mean and percentile-bootstrap interval of the mean over the finite values (NaN: none)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(key)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), float(lo), float(hi)


@dataclass
class MetricResult:
    """Per-image ``values`` (N,) and their summary: ``mean`` with a 95% bootstrap interval."""

    name: str
    values: np.ndarray
    higher_is_better: bool
    mean: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    details: dict = field(default_factory=dict)  # curves, per-stage values: what a figure draws

    def __post_init__(self):
        self.values = np.asarray(self.values, np.float64).reshape(-1)
        self.mean, self.low, self.high = bootstrap_ci(self.values)

    def summary(self) -> dict:
        return {"mean": self.mean, "ci95": [self.low, self.high], "n": int(np.isfinite(self.values).sum()),
                "higher_is_better": self.higher_is_better}


@functools.lru_cache(maxsize=64)
def _compiled_logits(explainer):
    return jax.jit(explainer.logits)


@dataclass
class MetricInput:
    """What a metric is given (see the module's docstring)."""

    images: Any
    targets: Any = None
    maps: Any = None
    explainer: Any = None
    params: Any = None
    batch_stats: Any = None
    masks: Any = None
    key: Any = None
    chunk: int = 256
    #: what metrics on this same input share (deletion and insertion: one run of both curves);
    #: a new input (``dataclasses.replace`` too) starts empty.
    shared: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.images = np.asarray(self.images, np.float32)
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if self.images.ndim != 4:
            raise ValueError(f"images: expected (N, H, W, C), got shape {self.images.shape}")
        n, h, w = self.images.shape[:3]
        if self.maps is not None:
            self.maps = np.asarray(self.maps, np.float32).reshape(n, h, w)
        if self.masks is not None:
            self.masks = np.asarray(self.masks, bool).reshape(n, h, w)
        if self.key is None:
            self.key = jax.random.PRNGKey(0)
        if self.targets is None and self.explainer is not None:
            self.targets = self.logits(self.images).argmax(-1)
        if self.targets is not None:
            self.targets = np.broadcast_to(np.asarray(self.targets, np.int32), (n,)).copy()

    def __len__(self) -> int:
        return len(self.images)

    @property
    def variables(self):
        """The model's variables as the explainer's adapter builds them from params/batch_stats."""
        return self.explainer.target.variables(self.params, self.batch_stats, self.images.shape[1:])

    def logits(self, images, params=None) -> np.ndarray:
        """Logits (N, classes) of ``images`` (N, H, W, C), one compiled forward in chunks;
        ``params`` replaces the input's (a randomised model, say)."""
        x = np.asarray(images, np.float32)
        if x.ndim == 3:
            x = x[..., None]
        variables = self.explainer.target.variables(self.params if params is None else params, self.batch_stats,
                                                    x.shape[1:])
        f = _compiled_logits(self.explainer)
        out = []
        for i in range(0, len(x), self.chunk):
            part = x[i:i + self.chunk]
            k = len(part)
            # a short last chunk is zero-padded to the next power of two (at most log2(chunk) + 1 shapes
            # compile, whatever the batch sizes the metrics send; rows are independent at inference)
            size = min(self.chunk, 1 << (k - 1).bit_length())
            if size > k:
                part = np.concatenate([part, np.zeros((size - k, *part.shape[1:]), part.dtype)])
            out.append(np.asarray(f(variables, jnp.asarray(part)))[:k])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def probs(self, images, params=None) -> np.ndarray:
        return np.asarray(jax.nn.softmax(self.logits(images, params), -1))

    def target_scores(self, images, kind: str = "probs", params=None, targets=None) -> np.ndarray:
        """The target class's softmax probability (``kind="probs"``) or logit, per image."""
        t = self.targets if targets is None else np.asarray(targets)
        s = self.probs(images, params) if kind == "probs" else self.logits(images, params)
        return s[np.arange(len(s)), t]

    def explain(self, images=None, targets=None, params=None, key=None) -> np.ndarray:
        """The explainer's maps (N, H, W) of ``images`` (default: the input's) for ``targets``."""
        images = self.images if images is None else images
        targets = self.targets if targets is None else targets
        return np.asarray(self.explainer.attribute(self.params if params is None else params, self.batch_stats,
                                                   images, targets, key=self.key if key is None else key))


def not_applicable(name: str, explainer) -> str | None:
    """Why metric ``name`` does not apply to ``explainer`` (its ``applies``), or None when it does."""
    if name not in METRICS:
        raise ValueError(f"metric: expected one of {', '.join(metric_names())}, got {name!r}")
    applies = METRICS[name].applies
    reason = applies(explainer) if applies is not None else None
    return None if reason is None else str(reason)


def evaluate(name: str, inp: MetricInput, **options) -> MetricResult:
    """Run the registered metric ``name`` on ``inp``; one ``ValueError`` line if it is unknown or
    ``inp`` lacks what it needs."""
    if name not in METRICS:
        raise ValueError(f"metric: expected one of {', '.join(metric_names())}, got {name!r}")
    spec = METRICS[name]
    missing = []
    for need in spec.needs:
        if need == "maps" and inp.maps is None:
            missing.append("maps")
        elif need in ("model", "explainer") and inp.explainer is None:
            missing.append("an explainer (model and params)")
        elif need == "masks" and inp.masks is None:
            missing.append("masks")
    if missing:
        raise ValueError(f"{name}: needs {', '.join(missing)}; the MetricInput has none")
    reason = not_applicable(name, inp.explainer)
    if reason is not None:
        raise NotApplicable(f"{name}: {reason}")
    out = spec.fn(inp, **options)
    details = {}
    if isinstance(out, tuple):
        out, details = out
    return MetricResult(name, out, spec.higher_is_better, details=details)

"""Robustness: how much does an explanation move when the input barely does?

Every metric here perturbs each image ``samples`` times, re-explains the perturbed copies with
the input's own explainer (``MetricInput.explain``) and compares the maps. The perturbed copies of
all images for ``steps_per_call`` steps go through ONE explain call (the explainer chunks it), so
the cost is ``samples * N`` explained images in a handful of compiled calls, where Quantus 0.6.0
runs one framework explain call per step and a Python loop per image around it.

Metrics (names as registered; Quantus 0.6.0 classes in ``quantus/metrics/robustness/``):

- ``max_sensitivity`` / ``avg_sensitivity``: Yeh et al., "On the (In)fidelity and Sensitivity of
  Explanations", NeurIPS 2019 (arXiv:1901.09392), eq. 3 with Quantus's relative form
  (max_sensitivity.py:277-287, avg_sensitivity.py:276-286): ``||a - a'||_2 / ||a||_2`` over
  uniform noise in [-``radius``, ``radius``] (Quantus ``lower_bound=0.2``), the max / the mean
  over ``samples`` (200). Captum's ``sensitivity_max`` (captum/metrics/_core/sensitivity.py) is
  the same max with ``radius=0.02`` and 10 samples (its defaults; pass them).
- ``local_lipschitz_estimate``: Alvarez-Melis & Jaakkola, "On the Robustness of
  Interpretability Methods", ICML WHI 2018 (arXiv:1806.08049), eq. 4 sampled as Quantus
  (local_lipschitz_estimate.py:268-291, similarity_func.lipschitz_constant):
  ``max ||a - a'||_2 / (||x - x'||_2 + 1e-10)`` over Gaussian noise N(0, ``sigma`` = 0.1), maps
  normalised by their max |value| first (Quantus ``normalise=True``).
- ``relative_input_stability`` / ``relative_output_stability`` /
  ``relative_representation_stability``: Agarwal et al., "Rethinking Stability for Attribution
  based Explanations", ICLR 2022 PAIR2Struct (arXiv:2203.06877), eqs. 2, 3, 5, as Quantus
  (relative_input_stability.py:245-266, relative_output_stability.py:255-275,
  relative_representation_stability.py:263-281): numerator ``||(a - a') / a||_2`` (a == 0 ->
  ``eps_min``); denominator ``||(x - x') / x||_2`` (RIS), ``||h(x) - h(x')||_2`` of the logits (ROS, as
  the paper: not relative), ``||(L(x) - L(x')) / L(x)||_2`` of an internal representation (RRS); a
  zero denominator becomes ``eps_min`` (1e-6). Noise uniform in [0.02, 0.2] (Quantus's default for
  these three: ``make_perturb_func(..., upper_bound=0.2)`` with ``lower_bound`` 0.02).

The representation of RRS: the output of the model's submodule ``layer``, reached by name
through the explainers' model adapter (``ExplainedModel.layer_call``, the same names a CAM's
``layer=`` takes: "dense1" for MNISTCNN, "block2" or "block2/conv1" for a linen ResNet, "a.b" for
nnx/Equinox, the module name for Haiku). By default it is the input of the model's last layer:
the last submodule called before the one that produces the logits (MNISTCNN: ``dropout``, i.e.
the 256 ReLU features of dense1, as the paper's "logits' preceding layer"); list the names with
``explained(model).layers(variables, image_shape)``. Quantus's default concatenates EVERY
layer's output (pytorch_model.py:get_hidden_representations); give it ``layer_names=[...]`` to
compare one layer.

Choices, where they depart from Quantus 0.6.0 (each is an option):

- The perturbed image is clipped to the model's declared ``input_range`` (MNISTCNN: [0, 1]),
  so it stays a valid input (the project's models refuse pixels outside it); Quantus does not
  clip. ``clip=False`` turns it off. The reference script feeds Quantus the same clipped images.
- ``normalise`` divides each map by ITS OWN max |value|; Quantus's ``normalise_by_max`` with no
  ``normalise_axes`` divides by the max over the whole batch (base.py:453, normalise_func.py:42),
  so a score depends on the batch an image was scored in. The reference script passes
  ``normalise_func_kwargs={"normalise_axes": (1, 2, 3)}``, which is ours.
- A perturbation that changes the predicted class is left out where
  ``nan_when_prediction_changes`` (default for the three relative stabilities, as Quantus),
  and the max is over the others (Agarwal et al. maximise over x' with the same prediction);
  Quantus takes ``np.max`` of a row with NaNs (relative_input_stability.py:309), i.e. NaN for an
  image as soon as one of its 200 perturbations flips. NaN here only when every one does, with a
  RuntimeWarning saying for how many images (Quantus's default noise flips every one of the
  shipped model's predictions on most digits: pass a smaller ``high``).

Randomness: the noise of step ``s`` is drawn from ``jax.random.fold_in(inp.key, s)`` for all
images at once (``perturbations``), so a score does not depend on how steps are grouped.
"""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .base import MetricInput, register_metric

#: perturbed images per explain call (for a 28x28x1 image; scaled by pixel count)
CALL_PIXELS = 4096 * 784
EPS_MIN = 1e-6
LIPSCHITZ_EPS = 1e-10  # quantus/functions/similarity_func.py:201


def _positive(name: str, value, integer: bool = False):
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.integer, np.floating))
    if isinstance(value, bool) or not ok or not np.isfinite(value) or value <= 0:
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"{name}: expected {kind} > 0, got {value!r}")
    return int(value) if integer else float(value)


def draw_noise(key, shape, noise: str, low: float, high: float) -> jax.Array:
    """One step's noise for all images: ``"uniform"`` in [low, high] or ``"normal"`` with mean
    ``low`` and standard deviation ``high``."""
    if noise == "uniform":
        return jax.random.uniform(key, shape, jnp.float32, low, high)
    if noise == "normal":
        return low + high * jax.random.normal(key, shape, jnp.float32)
    raise ValueError(f"noise: expected 'uniform' or 'normal', got {noise!r}")


def _clip_range(inp: MetricInput, clip: bool):
    rng = getattr(inp.explainer.target, "input_range", None) if inp.explainer is not None else None
    return tuple(rng) if clip and rng is not None else None


def perturbations(inp: MetricInput, steps, noise: str, low: float, high: float, clip: bool = True) -> np.ndarray:
    """The perturbed images of steps ``steps`` (an iterable of ints): (len(steps), N, H, W, C),
    ``x + noise`` (clipped to the model's input range when ``clip``), the noise of step ``s``
    drawn from ``fold_in(inp.key, s)``. The reference scripts feed these to Quantus."""
    rng = _clip_range(inp, clip)
    out = []
    for s in steps:
        x = inp.images + np.asarray(draw_noise(jax.random.fold_in(inp.key, int(s)), inp.images.shape, noise, low, high))
        out.append(np.clip(x, *rng) if rng is not None else x)
    return np.stack(out).astype(np.float32) if out else np.zeros((0, *inp.images.shape), np.float32)


def prepare_maps(maps, normalise: bool, abs: bool) -> np.ndarray:
    """Maps (..., H, W) as the metrics compare them, float64: each divided by its own max |value|
    (``normalise``; an all-zero map stays zero, as quantus normalise_by_max), then |.| (``abs``)."""
    a = np.asarray(maps, np.float64)
    if normalise:
        peak = np.abs(a).max(axis=(-2, -1), keepdims=True)
        a = a / np.where(peak > 0, peak, 1.0)
    return np.abs(a) if abs else a


def _steps_per_call(inp: MetricInput, samples: int, steps_per_call) -> int:
    if steps_per_call is not None:
        return _positive("steps_per_call", steps_per_call, integer=True)
    pixels = int(np.prod(inp.images.shape[1:]))
    return int(max(1, min(samples, CALL_PIXELS // max(1, pixels * len(inp)))))


def perturbed_scores(inp: MetricInput, score, samples: int, noise: str, low: float, high: float, *, clip: bool,
                     normalise: bool, abs: bool, nan_when_prediction_changes: bool, steps_per_call=None,
                     need_logits: bool = False, representation=None, name: str = "robustness",
                     noise_option: str = "the noise") -> np.ndarray:
    """(samples, N) values of ``score(a, b, x, xp, extra)``: for each step, every image perturbed
    once and re-explained, all images of ``steps_per_call`` steps in one explain call. ``a`` (N, D)
    the input's maps, ``b`` (k, N, D) the perturbed maps, ``x`` (N, D), ``xp`` (k, N, D) the images;
    ``extra``: ``(h, hp)`` logits when ``need_logits``, representations when ``representation``
    (a function of images -> (M, R)). NaN where the prediction changed (if asked), with a one-line
    RuntimeWarning naming ``name`` and ``noise_option`` when every perturbation of an image changed it
    (Quantus's default U(0.02, 0.2) of the relative stabilities did so for each of 3 shipped digits tried)."""
    samples = _positive("samples", samples, integer=True)
    n = len(inp)
    a = prepare_maps(inp.maps, normalise, abs).reshape(n, -1)
    x = inp.images.reshape(n, -1).astype(np.float64)
    h = inp.logits(inp.images).astype(np.float64) if (need_logits or nan_when_prediction_changes) else None
    r = representation(inp.images) if representation is not None else None
    k = _steps_per_call(inp, samples, steps_per_call)
    out = np.full((samples, n), np.nan)
    kept = np.zeros(n, np.int64)  # perturbations that left the prediction as it was
    for s0 in range(0, samples, k):
        steps = range(s0, min(samples, s0 + k))
        xp = perturbations(inp, steps, noise, low, high, clip)
        flat = xp.reshape(-1, *inp.images.shape[1:])
        b = prepare_maps(inp.explain(flat, np.tile(inp.targets, len(steps))), normalise, abs).reshape(len(steps), n, -1)
        extra = None
        if need_logits or nan_when_prediction_changes:
            hp = inp.logits(flat).astype(np.float64).reshape(len(steps), n, -1)
            extra = (h, hp)
        if representation is not None:
            extra = (r, representation(flat).reshape(len(steps), n, -1))
        vals = score(a, b, x, xp.reshape(len(steps), n, -1).astype(np.float64), extra)
        if nan_when_prediction_changes:
            same = hp.argmax(-1) == h.argmax(-1)
            kept += same.sum(0)
            vals = np.where(same, vals, np.nan)
        out[s0:s0 + len(steps)] = vals
    lost = int((kept == 0).sum()) if nan_when_prediction_changes else 0
    if lost:
        shown = f"U({low:g}, {high:g})" if noise == "uniform" else f"N({low:g}, {high:g}^2)"
        warnings.warn(f"{name}: the prediction changed under all {samples} perturbations of {lost} of {n} images "
                      f"(noise {shown}), whose values are NaN; less noise ({noise_option}) keeps more",
                      RuntimeWarning, stacklevel=4)
    return out


def _nan_reduce(values: np.ndarray, how: str) -> np.ndarray:
    finite = np.isfinite(values)
    if how == "max":
        red = np.where(finite, values, -np.inf).max(0)
    else:
        red = np.where(finite, values, 0.0).sum(0) / np.maximum(finite.sum(0), 1)
    return np.where(finite.any(0), red, np.nan)


def _norm(v):
    return np.sqrt((v * v).sum(-1))


def _relative(v, ref, eps):
    """(v) / (ref + (ref == 0) * eps), as Quantus's relative stabilities."""
    return v / (ref + (ref == 0) * eps)


def _details(values):
    return {"per_sample": values}


_NOISE_DOC = ("``samples`` perturbations per image; ``clip`` to the model's input range; "
              "``steps_per_call`` steps per explain call (default: ~4096 images of 28x28x1 per call)")


@register_metric("max_sensitivity", title="Max-sensitivity", family="robustness", higher_is_better=False,
                 needs=("explainer", "maps"), reference="quantus.MaxSensitivity; captum.metrics.sensitivity_max",
                 paper="Yeh et al., NeurIPS 2019",
                 summary="largest relative change ||a - a'|| / ||a|| of the map under small uniform noise")
def max_sensitivity(inp: MetricInput, samples: int = 200, radius: float = 0.2, normalise: bool = False,
                    abs: bool = False, clip: bool = True, nan_when_prediction_changes: bool = False,
                    steps_per_call=None, return_samples: bool = False):
    """Max over ``samples`` uniform perturbations in [-radius, radius] of ||a - a'||_2 / ||a||_2
    (module docstring; NaN for an all-zero map). ``normalise``/``abs``: as Quantus's, off by default."""
    radius = _positive("radius", radius)

    def score(a, b, x, xp, _):
        with np.errstate(divide="ignore", invalid="ignore"):
            return _norm(a[None] - b) / np.where(_norm(a) > 0, _norm(a), np.nan)[None]
    vals = perturbed_scores(inp, score, samples, "uniform", -radius, radius, clip=clip, normalise=normalise, abs=abs,
                            nan_when_prediction_changes=nan_when_prediction_changes, steps_per_call=steps_per_call,
                            name="max_sensitivity", noise_option="a smaller radius=")
    red = _nan_reduce(vals, "max")
    return (red, _details(vals)) if return_samples else red


@register_metric("avg_sensitivity", title="Avg-sensitivity", family="robustness", higher_is_better=False,
                 needs=("explainer", "maps"), reference="quantus.AvgSensitivity", paper="Yeh et al., NeurIPS 2019",
                 summary="mean relative change ||a - a'|| / ||a|| of the map under small uniform noise")
def avg_sensitivity(inp: MetricInput, samples: int = 200, radius: float = 0.2, normalise: bool = False,
                    abs: bool = False, clip: bool = True, nan_when_prediction_changes: bool = False,
                    steps_per_call=None, return_samples: bool = False):
    """Mean over ``samples`` uniform perturbations in [-radius, radius] of ||a - a'||_2 / ||a||_2."""
    radius = _positive("radius", radius)

    def score(a, b, x, xp, _):
        with np.errstate(divide="ignore", invalid="ignore"):
            return _norm(a[None] - b) / np.where(_norm(a) > 0, _norm(a), np.nan)[None]
    vals = perturbed_scores(inp, score, samples, "uniform", -radius, radius, clip=clip, normalise=normalise, abs=abs,
                            nan_when_prediction_changes=nan_when_prediction_changes, steps_per_call=steps_per_call,
                            name="avg_sensitivity", noise_option="a smaller radius=")
    red = _nan_reduce(vals, "mean")
    return (red, _details(vals)) if return_samples else red


@register_metric("local_lipschitz_estimate", title="Local Lipschitz estimate", family="robustness",
                 higher_is_better=False, needs=("explainer", "maps"), reference="quantus.LocalLipschitzEstimate",
                 paper="Alvarez-Melis & Jaakkola, ICML WHI 2018",
                 summary="largest ||a - a'|| / ||x - x'|| under Gaussian input noise (maps max-normalised)")
def local_lipschitz_estimate(inp: MetricInput, samples: int = 200, sigma: float = 0.1, mean: float = 0.0,
                             normalise: bool = True, abs: bool = False, clip: bool = True,
                             nan_when_prediction_changes: bool = False, steps_per_call=None,
                             return_samples: bool = False):
    """Max over ``samples`` perturbations x' = x + N(mean, sigma^2) of ||a - a'||_2 / (||x - x'||_2 + 1e-10)."""
    sigma = _positive("sigma", sigma)

    def score(a, b, x, xp, _):
        return _norm(a[None] - b) / (_norm(x[None] - xp) + LIPSCHITZ_EPS)
    vals = perturbed_scores(inp, score, samples, "normal", float(mean), sigma, clip=clip, normalise=normalise, abs=abs,
                            nan_when_prediction_changes=nan_when_prediction_changes, steps_per_call=steps_per_call,
                            name="local_lipschitz_estimate", noise_option="a smaller sigma= or mean=")
    red = _nan_reduce(vals, "max")
    return (red, _details(vals)) if return_samples else red


def _stability(name, inp, denominator, samples, low, high, eps_min, normalise, abs, clip, nan_when_prediction_changes,
               steps_per_call, return_samples, need_logits=False, representation=None):
    eps_min = _positive("eps_min", eps_min)
    low, high = float(low), float(high)
    if not high > low:
        raise ValueError(f"noise: expected low < high, got low={low!r}, high={high!r}")

    def score(a, b, x, xp, extra):
        num = _norm(_relative(a[None] - b, a[None], eps_min))
        den = denominator(x, xp, extra)
        return num / (den + (den == 0) * eps_min)
    vals = perturbed_scores(inp, score, samples, "uniform", low, high, clip=clip, normalise=normalise, abs=abs,
                            nan_when_prediction_changes=nan_when_prediction_changes, steps_per_call=steps_per_call,
                            need_logits=need_logits, representation=representation, name=name,
                            noise_option="a smaller high=, e.g. 0.05 on inputs in [0, 1]")
    red = _nan_reduce(vals, "max")
    return (red, _details(vals)) if return_samples else red


@register_metric("relative_input_stability", title="Relative input stability", family="robustness",
                 higher_is_better=False, needs=("explainer", "maps"), reference="quantus.RelativeInputStability",
                 paper="Agarwal et al., 2022 (arXiv:2203.06877)",
                 summary="largest relative map change over the relative input change, same prediction")
def relative_input_stability(inp: MetricInput, samples: int = 200, low: float = 0.02, high: float = 0.2,
                             eps_min: float = EPS_MIN, normalise: bool = False, abs: bool = False, clip: bool = True,
                             nan_when_prediction_changes: bool = True, steps_per_call=None,
                             return_samples: bool = False):
    """Max over x' = x + U(low, high) of ||(a - a')/a|| / ||(x - x')/x|| (module docstring)."""
    def den(x, xp, _):
        return _norm(_relative(x[None] - xp, x[None], eps_min))
    return _stability("relative_input_stability", inp, den, samples, low, high, eps_min, normalise, abs, clip,
                      nan_when_prediction_changes, steps_per_call, return_samples)


@register_metric("relative_output_stability", title="Relative output stability", family="robustness",
                 higher_is_better=False, needs=("explainer", "maps"), reference="quantus.RelativeOutputStability",
                 paper="Agarwal et al., 2022 (arXiv:2203.06877)",
                 summary="largest relative map change over the change of the logits, same prediction")
def relative_output_stability(inp: MetricInput, samples: int = 200, low: float = 0.02, high: float = 0.2,
                              eps_min: float = EPS_MIN, normalise: bool = False, abs: bool = False, clip: bool = True,
                              nan_when_prediction_changes: bool = True, steps_per_call=None,
                              return_samples: bool = False):
    """Max over x' = x + U(low, high) of ||(a - a')/a|| / ||h(x) - h(x')|| (h: the logits)."""
    def den(x, xp, extra):
        h, hp = extra
        return _norm(h[None] - hp)
    return _stability("relative_output_stability", inp, den, samples, low, high, eps_min, normalise, abs, clip,
                      nan_when_prediction_changes, steps_per_call, return_samples, need_logits=True)


@functools.lru_cache(maxsize=32)
def _compiled_layer(target, layer: str):
    return jax.jit(lambda v, x: target.layer_call(v, x, layer)[1])


def default_representation_layer(inp: MetricInput) -> str:
    """The last submodule the forward pass calls before the one that returns the logits (module
    docstring); ValueError for a model without named layers."""
    target = inp.explainer.target
    if target.family == "function":
        raise ValueError(f"layer: relative_representation_stability needs a model with named layers (a flax.linen, "
                         f"nnx or Equinox Module, a Haiku transform), got the function {target.name}")
    seen = target.layers(inp.variables, inp.images.shape[1:])
    top = [name for name, _ in seen]
    if len(top) < 2:
        raise ValueError(f"layer: {target.name} calls fewer than two submodules ({', '.join(top) or 'none'}); "
                         f"pass layer= explicitly")
    return top[-2]


def representation_fn(inp: MetricInput, layer: str | None):
    """images -> (M, R) float64: the flattened output of submodule ``layer`` (default:
    ``default_representation_layer``), one compiled call per chunk."""
    target = inp.explainer.target
    layer = default_representation_layer(inp) if layer is None else layer
    if not isinstance(layer, str):
        raise ValueError(f"layer: expected a layer name (str), got {layer!r}")
    names = dict(target.layers(inp.variables, inp.images.shape[1:]))
    name = target.canonical(layer)
    if name not in names:
        raise ValueError(f"layer: expected one of {target.name}'s layers ({', '.join(names)}), got {layer!r}")
    f = _compiled_layer(target, name)
    variables = inp.variables

    def rep(images):
        x = np.asarray(images, np.float32)
        out = [np.asarray(f(variables, jnp.asarray(x[i:i + inp.chunk]))) for i in range(0, len(x), inp.chunk)]
        return np.concatenate(out).reshape(len(x), -1).astype(np.float64)
    return rep


@register_metric("relative_representation_stability", title="Relative representation stability",
                 family="robustness", higher_is_better=False, needs=("explainer", "maps"),
                 reference="quantus.RelativeRepresentationStability", paper="Agarwal et al., 2022 (arXiv:2203.06877)",
                 summary="largest relative map change over the relative change of an internal layer, same prediction")
def relative_representation_stability(inp: MetricInput, samples: int = 200, low: float = 0.02, high: float = 0.2,
                                      layer: str | None = None, eps_min: float = EPS_MIN, normalise: bool = False,
                                      abs: bool = False, clip: bool = True, nan_when_prediction_changes: bool = True,
                                      steps_per_call=None, return_samples: bool = False):
    """Max over x' = x + U(low, high) of ||(a - a')/a|| / ||(L(x) - L(x'))/L(x)||, L the output of
    submodule ``layer`` (module docstring: which layer by default, how to name one)."""
    rep = representation_fn(inp, layer)

    def den(x, xp, extra):
        r, rp = extra
        return _norm(_relative(r[None] - rp, r[None], eps_min))
    return _stability("relative_representation_stability", inp, den, samples, low, high, eps_min, normalise, abs, clip,
                      nan_when_prediction_changes, steps_per_call, return_samples, representation=rep)

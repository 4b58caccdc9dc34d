"""Gradient methods: the target logit's gradient with respect to the input, and NoiseTunnel
(SmoothGrad, SmoothGrad², VarGrad) around any method."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..base import Explainer
from ..checks import finite_number, whole_number
from ..display import normalize_maps
from ..model import explained
from ..ops import _channels_max, _resolve_targets
from ..registry import Option, SPECS, register, spec

ABSOLUTE = Option("absolute", bool, "absolute gradients, largest over channels (False: signed, summed)")


@register("saliency", title="Saliency", family="gradient", cost="fast", options=(ABSOLUTE,),
          signed=False, unsigned_by="absolute", reference="Captum Saliency; PAIR GradientSaliency",
          paper="Simonyan et al., ICLR-W 2014, arXiv:1312.6034")
class Saliency(Explainer):
    """Vanilla gradient saliency (Simonyan et al., ICLR-W 2014, arXiv:1312.6034), eq. 2 / sec. 3.1.

    M_ij = max_c |d y^c / d x_ijc|: the largest absolute gradient over the colour channels (the
    paper's rule for colour images, as PAIR saliency); for grayscale, |gradient| itself.
    ``absolute=False`` gives the signed gradient, summed over channels.
    """

    cpu_chunk_size = 64

    def __init__(self, model, absolute: bool = True, chunk_size: int | None = None):
        self.absolute = absolute
        super().__init__(model, chunk_size)

    def _channel_maps(self, variables, images, targets, key):
        grads, logits = self.target_logit_grad(variables, images, targets)
        return (jnp.abs(grads) if self.absolute else grads), logits

    def reduce_channels(self, attributions):
        return _channels_max(attributions) if self.absolute else attributions.sum(-1)


@register("gradient_x_input", title="Gradient×Input", family="gradient", cost="fast", signed=True,
          reference="Captum InputXGradient", paper="Shrikumar et al. 2016, arXiv:1605.01713")
class GradientXInput(Explainer):
    """Gradient x Input (Shrikumar et al. 2016, arXiv:1605.01713; Ancona et al., ICLR 2018, eq. 3).

    R_ij = sum_c x_ijc * d y^c / d x_ijc (signed; Captum's InputXGradient summed over channels).
    """

    cpu_chunk_size = 64

    def _channel_maps(self, variables, images, targets, key):
        grads, logits = self.target_logit_grad(variables, images, targets)
        return grads * images, logits


def _input_range(value):
    if value is None:
        return None
    lo, hi = (finite_number("input_range", v) for v in np.ravel(value)) if np.size(value) == 2 else (np.nan, np.nan)
    if not hi > lo:
        raise ValueError(f"input_range: expected (low, high) with low < high, got {value!r}")
    return lo, hi


NOISE_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
SAMPLES = Option("samples", int, "noisy copies an image", low=1, high=100_000, choices=(10, 25, 50))
NOISE = Option("noise_level", float, "noise sigma as a fraction of the input range", low=0.0,
               choices=(0.05, 0.1, 0.15, 0.25, 0.4))
INPUT_RANGE = Option("input_range", None, "(low, high) the noise is relative to (default: the model's; "
                     "else each image's own)", nullable=True)


class NoiseTunnel(Explainer):
    """NoiseTunnel around any registered method, as Captum's ``NoiseTunnel`` (a wrapper, not
    registered itself: SmoothGrad, SmoothGrad² and VarGrad are the registered uses).

    The method's attributions of ``samples`` noisy copies x + sigma z_k, z_k ~ N(0, 1), are
    combined per input element (before the method's channel reduction, as Captum does):
    ``kind="smoothgrad"`` their mean (Smilkov et al. 2017, eq. 3), ``"smoothgrad_sq"`` the
    mean of their squares, ``"vargrad"`` their variance (Adebayo et al. 2018). sigma =
    ``noise_level`` * (hi - lo) of ``input_range`` (default: the model's, so 0.15 for a [0, 1]
    model; without one, each image's own max - min, as PAIR). The target is the clean image's
    prediction unless given. Noise comes from the explicit ``key`` of ``attribute`` (default
    PRNGKey(0)): the same z_k for every image of the call, so a map depends only on its image
    and the key. A method that samples gets ``fold_in(key, 1)``.
    """

    def __init__(self, model, method: str = "saliency", samples: int = 25, noise_level: float = 0.15,
                 kind: str = "smoothgrad", input_range=None, method_options: dict | None = None,
                 chunk_size: int | None = None):
        if not isinstance(method, str) or method not in SPECS:
            raise ValueError(f"method: expected a registered method ({', '.join(SPECS)}), got {method!r}")
        if kind not in NOISE_KINDS:
            raise ValueError(f"kind: expected one of {', '.join(NOISE_KINDS)}, got {kind!r}")
        if method_options is not None and not isinstance(method_options, dict):
            raise ValueError(f"method_options: expected a dict of the method's options, got {method_options!r}")
        self.method, self.kind = method, kind
        self.inner = spec(method).cls(model, **spec(method).parse_options(dict(method_options or {})))
        self.samples = whole_number("samples", samples)
        self.noise_level = finite_number("noise_level", noise_level, 0.0)
        self.input_range = _input_range(input_range) or explained(model).input_range
        inner = self.inner.chunk_size
        self.chunk_size = max(1, 8192 // self.samples, inner // self.samples)  # ~8,192 noisy copies a call
        self.cpu_chunk_size = max(1, (self.inner.cpu_chunk_size or 64) // self.samples)
        super().__init__(model, chunk_size)

    @property
    def signed(self) -> bool:
        return self.kind == "smoothgrad" and self.inner.signed

    def _check(self, variables, images):
        self.inner._check(variables, images)

    def sigma(self, images):
        if self.input_range is not None:
            return self.noise_level * (self.input_range[1] - self.input_range[0])
        return self.noise_level * (images.max(axis=(1, 2, 3), keepdims=True)  # (N, 1, 1, 1)
                                   - images.min(axis=(1, 2, 3), keepdims=True))

    def _channel_maps(self, variables, images, targets, key):
        logits = self.logits(variables, images)
        t = _resolve_targets(logits, targets)
        z = jax.random.normal(key, (self.samples, 1, *images.shape[1:]), images.dtype)
        noisy = (images[None] + self.sigma(images) * z).reshape(-1, *images.shape[1:])
        a, _ = self.inner._channel_maps(variables, noisy, jnp.tile(t, self.samples), jax.random.fold_in(key, 1))
        a = a.reshape(self.samples, len(images), *a.shape[1:])
        if self.kind == "smoothgrad":
            return a.mean(0), logits
        if self.kind == "smoothgrad_sq":
            return (a ** 2).mean(0), logits
        return a.var(0), logits  # vargrad: E[a^2] - E[a]^2, as Captum

    def reduce_channels(self, attributions):
        return self.inner.reduce_channels(attributions)


@register("smoothgrad", title="SmoothGrad", family="gradient", cost="medium", random=True,
          options=(SAMPLES, NOISE, ABSOLUTE, INPUT_RANGE), unsigned_by="absolute",
          reference="Captum NoiseTunnel(Saliency), nt_type='smoothgrad'",
          paper="Smilkov et al. 2017, arXiv:1706.03825")
class SmoothGrad(NoiseTunnel):
    """SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825), eq. 3, of the saliency map.

    M = max_c (1/n) sum_k |d y^c / d x (x + N(0, sigma^2))|: ``NoiseTunnel`` around
    ``Saliency``, with its noise rule. ``absolute=False`` averages signed gradients instead
    (summed over channels).
    """

    kind_ = "smoothgrad"

    def __init__(self, model, samples: int = 25, noise_level: float = 0.15, absolute: bool = True,
                 input_range=None, chunk_size: int | None = None):
        self.absolute = absolute
        super().__init__(model, "saliency", samples, noise_level, self.kind_, input_range,
                         {"absolute": absolute}, chunk_size)

    @property
    def signed(self) -> bool:
        return self.kind == "smoothgrad" and not self.absolute


@register("smoothgrad_sq", title="SmoothGrad²", family="gradient", cost="medium", random=True,
          options=(SAMPLES, NOISE, ABSOLUTE, INPUT_RANGE),
          reference="Captum NoiseTunnel(Saliency), nt_type='smoothgrad_sq'",
          paper="Hooker et al., NeurIPS 2019, arXiv:1806.10758")
class SmoothGradSquared(SmoothGrad):
    """SmoothGrad² (Hooker et al. 2019): the mean of the squared saliency of noisy copies."""

    kind_ = "smoothgrad_sq"


@register("vargrad", title="VarGrad", family="gradient", cost="medium", random=True,
          options=(SAMPLES, NOISE, ABSOLUTE, INPUT_RANGE),
          reference="Captum NoiseTunnel(Saliency), nt_type='vargrad'",
          paper="Adebayo et al. 2018, arXiv:1810.03307")
class VarGrad(SmoothGrad):
    """VarGrad (Adebayo et al. 2018): the variance of the saliency of noisy copies."""

    kind_ = "vargrad"


def compute_saliency(model, params, batch_stats, image, target_class: int | None = None):
    """One image's saliency: (|d logit / d x| scaled to [0, 1] (H, W), pred, logit)."""
    maps, preds, scores = Saliency(model).explain(
        params, batch_stats, image, None if target_class is None else [target_class])
    if len(maps) != 1:
        raise ValueError(f"compute_saliency: expected one image, got a batch of {len(maps)}")
    return np.asarray(normalize_maps(maps[0])), int(preds[0]), float(scores[0])


__all__ = ["GradientXInput", "NoiseTunnel", "Saliency", "SmoothGrad", "SmoothGradSquared", "VarGrad", "compute_saliency"]

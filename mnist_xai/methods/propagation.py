"""Propagation methods: the target logit sent back through the model with replaced backward rules.

Every method here is a rule table for ``mnist_xai.jaxpr_rules``, which interprets the model's
traced jaxpr (what ``Explainer.logits`` computes: any model the adapter takes) and applies the
rule each primitive on the path gets; nothing is written per model. ReLU is ``max(x, 0)``
(``jax.nn.relu``, ``nn.relu``, ``jnp.maximum(x, 0)``), a max-pool is ``reduce_max`` (the
project's ``max_pool_2x2``) or ``reduce_window_max`` (``nn.max_pool``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import jaxpr_rules as jr
from ..base import Explainer
from ..checks import _baseline, _baseline_for, finite_number, whole_number
from ..model import explained
from ..ops import _resolve_targets
from ..registry import Option, register
from .cam import GradCAM, LAYER


class PropagationExplainer(Explainer):
    """Base: ``rules`` (a ``jaxpr_rules.Rules``) applied to the one-hot target logit; the
    attributions (N, H, W, C) are the input's cotangent (``multiply_by_input``: times the input)."""

    cpu_chunk_size = 64
    rules: jr.Rules = jr.Rules("gradient")

    def propagated(self, variables, images, targets):
        """``(input cotangent (N, H, W, C), logits)`` under ``self.rules``."""
        def fn(x):
            return self.logits(variables, x)
        logits = fn(images)
        t = _resolve_targets(logits, targets)
        (grads,), (out,) = jr.propagate(fn, [images], [jax.nn.one_hot(t, logits.shape[-1], dtype=logits.dtype)],
                                        self.rules)
        return grads, out

    def _channel_maps(self, variables, images, targets, key):
        return self.propagated(variables, images, targets)


def _guided_relu(i):
    def rule(eqn, ins, outs, cts):  # Captum: F.relu(grad_input), grad_input = g * (x > 0)
        r = [None, None]
        r[i] = [jax.nn.relu(g * (x > 0).astype(g.dtype)) for x, g in zip(ins[i], cts[0])]
        return r
    return rule


def _deconv_relu(i):
    def rule(eqn, ins, outs, cts):  # Captum: F.relu(grad_output)
        r = [None, None]
        r[i] = [jax.nn.relu(g) for g in cts[0]]
        return r
    return rule


def _relu_rule(make):
    def choose(eqn, trace):
        i = jr.relu_operand(eqn, trace)
        return None if i is None else make(i)
    return choose


GUIDED = jr.Rules("guided_backprop", _relu_rule(_guided_relu))
DECONV = jr.Rules("deconvolution", _relu_rule(_deconv_relu))


@register("guided_backprop", title="Guided Backprop", family="propagation", cost="fast", signed=True,
          reference="Captum GuidedBackprop (attr/_core/guided_backprop_deconvnet.py)",
          paper="Springenberg et al., ICLR-W 2015, arXiv:1412.6806")
class GuidedBackprop(PropagationExplainer):
    """Guided Backpropagation (Springenberg et al., ICLR-W 2015, arXiv:1412.6806), sec. 3.4 / fig. 1.

    The gradient of the target logit, except that each ReLU y = max(x, 0) passes back
    R_in = ReLU(R_out * 1[x > 0]): only positive signal where the unit was active. Captum 0.9's
    ``ModifiedReluGradientAttribution._backward_hook`` (guided_backprop_deconvnet.py:80-91)
    returns ``F.relu(grad_input)`` on every ``nn.ReLU``; here every ``max(x, 0)`` of the jaxpr.
    Max-pools pass the signal to the first maximum, as the gradient (and Captum) do.
    """

    rules = GUIDED


@register("deconvolution", title="Deconvolution", family="propagation", cost="fast", signed=True,
          reference="Captum Deconvolution (attr/_core/guided_backprop_deconvnet.py)",
          paper="Zeiler & Fergus, ECCV 2014, arXiv:1311.2901")
class Deconvolution(PropagationExplainer):
    """Deconvolution (Zeiler & Fergus, ECCV 2014, arXiv:1311.2901), sec. 2.1, as Springenberg et
    al. (arXiv:1412.6806) fig. 1 state it: each ReLU passes back R_in = ReLU(R_out), whatever
    the forward activation (Captum 0.9 guided_backprop_deconvnet.py:80-91, ``use_relu_grad_output``);
    every other primitive its gradient (convolutions their transpose, max-pools the switches).
    """

    rules = DECONV


def nearest_upsample(maps, size):
    """(N, h, w) -> (N, *size), nearest neighbour as torch's ``F.interpolate(mode="nearest")``
    (Captum's ``LayerAttribution.interpolate`` default): source index floor(i * h / H)."""
    rows = (np.arange(size[0]) * maps.shape[1]) // size[0]
    cols = (np.arange(size[1]) * maps.shape[2]) // size[1]
    return maps[:, rows][:, :, cols]


@register("guided_gradcam", title="Guided Grad-CAM", family="propagation", cost="fast", signed=True,
          options=(LAYER,), reference="Captum GuidedGradCam (attr/_core/guided_grad_cam.py)",
          paper="Selvaraju et al., ICCV 2017, arXiv:1610.02391")
class GuidedGradCAM(PropagationExplainer):
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391), sec. 3.1.

    Guided Backprop times the Grad-CAM map (``GradCAM``, with its ReLU) at the layer's
    resolution, upsampled to the image by nearest neighbour, as Captum 0.9's ``GuidedGradCam``
    (guided_grad_cam.py:190-230: ``relu_attributions=True``, ``interpolate_mode="nearest"``).
    ``layer``: as GradCAM's.
    """

    def __init__(self, model, layer: str | None = None, chunk_size: int | None = None):
        self.layer = layer
        self.gradcam = GradCAM(model, layer=layer)
        super().__init__(model, chunk_size)

    rules = GUIDED

    def _check(self, variables, images):
        self.gradcam._check(variables, images)

    def _channel_maps(self, variables, images, targets, key):
        cam, _ = self.gradcam.low_res_cam(variables, images, targets)  # (N, h, w), ReLU'd
        guided, logits = self.propagated(variables, images, targets)
        return guided * nearest_upsample(cam, images.shape[1:3])[..., None], logits


# ----------------------------------------------------------------------------- DeepLIFT

RESCALE_EPS = 1e-10  # Captum's DeepLift(eps=1e-10): below this |x - x0| the gradient is used

#: Primitives linear in their operands on the path (with the others fixed): DeepLIFT's
#: multiplier through them is the gradient (the linear rule).
LINEAR = {"add", "add_any", "sub", "neg", "mul", "div", "dot_general", "conv_general_dilated", "reshape",
          "broadcast_in_dim", "transpose", "reduce_sum", "convert_element_type", "squeeze", "expand_dims",
          "slice", "dynamic_slice", "pad", "concatenate", "select_n", "copy", "copy_p", "rev", "gather",
          "reduce_precision", "cumsum", "real", "imag"}
#: Elementwise nonlinearities of one operand on the path: DeepLIFT's Rescale rule.
ELEMENTWISE = {"max", "min", "tanh", "logistic", "exp", "exp2", "log", "log1p", "expm1", "sin", "cos", "abs",
               "integer_pow", "square", "sqrt", "rsqrt", "erf", "pow"}


def _rescale(eps, gradient):
    def rule(eqn, ins, outs, cts):
        """Captum deep_lift.py:901-920 ``nonlinear``: m = where(|dx| < eps, g f'(x), g dy / dx),
        in each world, with dx = x - x0 and dy = f(x) - f(x0) shared by both."""
        i = eqn.live.index(True)
        grads = gradient(eqn, ins, outs, cts)
        dx = ins[i][0] - ins[i][1]
        dy = outs[0][0] - outs[0][1]
        small = jnp.abs(dx) < eps
        safe = jnp.where(small, 1.0, dx)
        r = [None] * len(ins)
        r[i] = [jnp.where(small, gi, g * dy / safe) for gi, g in zip(grads[i], cts[0])]
        return r
    return rule


def _maxpool(eps):
    def rule(eqn, ins, outs, cts):
        """Captum deep_lift.py:1004-1068 ``maxpool``: the cross maximum m = max(y, y0) splits
        y - y0 into (m - y0), sent back through x's maxima with x's multiplier, and (y - m),
        through x0's maxima with x0's; their sum over dx is the multiplier of both worlds
        (the gradient where |dx| < eps)."""
        (x, x0), (y, y0), (g, g0) = ins[0], outs[0], cts[0]
        m = jnp.maximum(y, y0)
        s = jr.unpool(eqn, x, y, g * (m - y0)) + jr.unpool(eqn, x0, y0, g0 * (y - m))
        dx = x - x0
        small = jnp.abs(dx) < eps
        safe = jnp.where(small, 1.0, dx)
        plain = [jr.unpool(eqn, x, y, g), jr.unpool(eqn, x0, y0, g0)]
        return [[jnp.where(small, p, s / safe) for p in plain]] + [None] * (len(ins) - 1)
    return rule


def deeplift_rules(eps: float) -> jr.Rules:
    pool = _maxpool(eps)

    def choose(eqn, trace):
        if eqn.name in jr.POOLS and eqn.live[0]:
            return pool
        if eqn.name in LINEAR:
            if eqn.name in ("mul", "div", "dot_general", "conv_general_dilated") and sum(eqn.live) > 1:
                raise jr.UnsupportedPrimitive(
                    f"deeplift: unsupported primitive {eqn.name!r} of two operands on the explained path "
                    f"(DeepLIFT's rules cover linear maps, elementwise nonlinearities and max-pools)")
            return None
        if eqn.name in ELEMENTWISE and sum(eqn.live) == 1:
            i = jr.relu_operand(eqn, trace)  # the ReLU's gradient is 0 at 0, as torch's
            return _rescale(eps, jr.vjp_rule if i is None else jr.relu_gradient_rule(i))
        raise jr.UnsupportedPrimitive(
            f"deeplift: unsupported primitive {eqn.name!r} on the explained path (DeepLIFT's rules cover "
            f"linear maps, elementwise nonlinearities and max-pools)")

    return jr.Rules("deeplift", choose)


EPS = Option("eps", float, "below this |x - x0| a unit passes its gradient (Captum's 1e-10)", low=0.0)


@register("deeplift", title="DeepLIFT", family="propagation", cost="fast", signed=True,
          options=(Option("baseline", None, "a scalar or one image, in the model's input range (default 0)"), EPS),
          reference="Captum DeepLift (attr/_core/deep_lift.py), Rescale rule",
          paper="Shrikumar et al., ICML 2017, arXiv:1704.02685")
class DeepLift(PropagationExplainer):
    """DeepLIFT with the Rescale rule (Shrikumar et al., ICML 2017, arXiv:1704.02685), sec. 3.3-3.5.

    Multipliers m = dC/dx are propagated with the chain rule (eq. 3) from the one-hot target
    logit, for the image x and the baseline x0 together (both worlds start from the one-hot, as
    Captum's forward_fn selects the target of both halves, deep_lift.py:378-386); linear maps (dense, conv, bias,
    folded or separate BatchNorm, sums, pooling by mean) pass the gradient; an elementwise
    nonlinearity y = f(x) (ReLU, tanh, ...) passes m_in = m_out (f(x) - f(x0)) / (x - x0), the
    gradient where |x - x0| < ``eps`` (Captum 0.9 deep_lift.py:901-920). The attribution is
    (x - x0) * m_x (Captum's ``multiply_by_inputs``); summation-to-delta: its sum is
    y_c(x) - y_c(x0).

    Max-pool: Captum's rule (deep_lift.py:1004-1068), which we follow: with m = max(y, y0),
    (m - y0) goes back through x's window maxima and (y - m) through x0's, and their sum over
    (x - x0) is the multiplier. The paper (sec. 3.5 and DeepLIFT's own code, ``MaxPoolDeepLiftMode.
    gradient``) passes the gradient through x's maxima instead; the two agree where the
    baseline's window maximum does not exceed the image's. Captum's rule has one slip we do not
    copy: where |x - x0| < eps it falls back to ``grad_input[0]``, the first image's gradient
    broadcast to the batch (the tensor's first row, a remnant of a tuple API); we take each
    image's own gradient there, and the reference maps are made with that line so corrected
    (benchmarks/make_reference_propagation.py).

    ``baseline``: a scalar or one image in the model's input range (default 0: black for MNISTCNN).
    """

    def __init__(self, model, baseline=0.0, eps: float = RESCALE_EPS, chunk_size: int | None = None):
        self.baseline = _baseline(baseline)
        image_shape = explained(model).image_shape
        if image_shape is not None:
            self.baseline = _baseline_for(self.baseline, tuple(image_shape))
        self.eps = finite_number("eps", eps, 0.0)
        self.rules = deeplift_rules(self.eps)
        super().__init__(model, chunk_size)

    def _check(self, variables, images):
        _baseline_for(self.baseline, images.shape[1:])

    def deeplift(self, variables, images, baselines, targets):
        """(x - x0) * m_x for images (N, ...) and baselines (N, ...), and the logits."""
        def fn(x):
            return self.logits(variables, x)
        logits = fn(images)
        t = _resolve_targets(logits, targets)
        onehot = jax.nn.one_hot(t, logits.shape[-1], dtype=logits.dtype)
        (m, _), _ = jr.propagate(fn, [images, baselines], [onehot, onehot], self.rules)
        return (images - baselines) * m, logits

    def _channel_maps(self, variables, images, targets, key):
        base = jnp.broadcast_to(jnp.asarray(_baseline_for(self.baseline, images.shape[1:])), images.shape)
        return self.deeplift(variables, images, base, targets)


@register("deeplift_shap", title="DeepLIFT SHAP", family="propagation", cost="medium", signed=True, random=True,
          options=(Option("baselines", None, "baseline images (B, H, W, C) in the model's input range; None: "
                                             "`samples` uniform random images in it, drawn from the key"),
                   Option("samples", int, "random baselines when `baselines` is None", low=1, high=10_000,
                          choices=(4, 8, 16, 32)), EPS),
          reference="Captum DeepLiftShap (attr/_core/deep_lift.py)",
          paper="Lundberg & Lee, NeurIPS 2017, arXiv:1705.07874")
class DeepLiftShap(DeepLift):
    """DeepLIFT SHAP (Lundberg & Lee, NeurIPS 2017, arXiv:1705.07874, sec. 4.2 "Deep SHAP"):
    the mean over a set of baselines x0_b of DeepLIFT's (x - x0_b) * m_x(x0_b), as Captum 0.9's
    ``DeepLiftShap`` (deep_lift.py:850-898: each image repeated once per baseline, the
    attributions averaged over the baselines). Its sum is y_c(x) - mean_b y_c(x0_b).

    ``baselines``: (B, H, W, C) images (B >= 1); None: ``samples`` images uniform in the model's
    input range (``input_range``; [0, 1] without one), from ``jax.random.uniform(key)``.
    """

    def __init__(self, model, baselines=None, samples: int = 8, eps: float = RESCALE_EPS,
                 chunk_size: int | None = None):
        self.samples = whole_number("samples", samples)
        if baselines is None:
            self.baselines = None
        else:
            b = _baseline(baselines, "baselines")
            if b.ndim < 2:
                raise ValueError(f"baselines: expected images (B, H, W[, C]), got shape {b.shape}")
            self.baselines = b
        self.input_range = explained(model).input_range or (0.0, 1.0)
        super().__init__(model, 0.0, eps, chunk_size)
        count = self.samples if self.baselines is None else len(self.baselines)
        self.cpu_chunk_size = max(1, 64 // count)
        self.chunk_size = max(1, 4096 // count)

    def _check(self, variables, images):
        if self.baselines is not None and self.baselines[0].size != int(np.prod(images.shape[1:])):
            raise ValueError(f"baselines: expected images shaped {tuple(images.shape[1:])}, got shape "
                             f"{self.baselines.shape}")

    def _channel_maps(self, variables, images, targets, key):
        n, shape = len(images), images.shape[1:]
        if self.baselines is None:
            lo, hi = self.input_range
            base = jax.random.uniform(key, (self.samples, *shape), images.dtype, lo, hi)
        else:
            base = jnp.asarray(self.baselines.reshape(-1, *shape))
        k = len(base)
        x = jnp.repeat(images, k, axis=0)  # row i*k + b: image i, baseline b (Captum's order)
        b = jnp.tile(base, (n, *([1] * len(shape))))
        a, logits = self.deeplift(variables, x, b, jnp.repeat(targets, k))
        return a.reshape(n, k, *shape).mean(1), logits.reshape(n, k, -1)[:, 0]


__all__ = ["Deconvolution", "DeepLift", "DeepLiftShap", "GuidedBackprop", "GuidedGradCAM"]

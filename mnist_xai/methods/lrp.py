"""LRP: zennit's rules and composites on the traced program of any model (mnist_xai/lrp_rules.py).

``LRP(model, composite="epsilon_plus", layer_rules=None, ...)`` is the general explainer; the
registered methods fix its composite:

    lrp_epsilon            Epsilon(epsilon) on every conv and dense layer
    lrp_gamma              Gamma(gamma) on every conv and dense layer
    lrp_alpha_beta         AlphaBeta(alpha, beta) on every conv and dense layer
    lrp_epsilon_plus       zennit EpsilonPlus: z+ on convs, epsilon on dense layers
    lrp_epsilon_gamma_box  zennit EpsilonGammaBox: z^B (low, high) on the first conv, gamma on
                           the other convs, epsilon on dense layers
    lrp_epsilon_plus_flat  zennit EpsilonPlusFlat: flat on the first layer, z+ on the other
                           convs, epsilon on dense layers

Average pools and sums of two branches always take Norm, activations Pass, max-pools the
gradient (zennit's ``layer_map_base``). A rule per layer by path:
``LRP(model, "epsilon_plus", layer_rules={"block3/conv2": lrp_rules.Gamma(0.5)})``, by the
model family's own layer names (as ``GradCAM``'s ``layer``: ``"block3/conv2"`` for
flax.linen, ``"block.conv2"`` for flax.nnx and Equinox, the module name for Haiku); a path
also names every layer inside that submodule. Layer kinds (``"conv"``, ``"dense"``,
``"pool"``) are keys too. The map is the relevance of each input pixel, summed over channels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import jaxpr_rules as jr
from .. import lrp_rules as lr
from ..model import explained
from ..ops import _resolve_targets
from ..registry import Option, register
from .propagation import PropagationExplainer

COMPOSITES = ("epsilon", "gamma", "alpha_beta", "zplus", "epsilon_plus", "epsilon_gamma_box",
              "epsilon_plus_flat", "epsilon_alpha2_beta1")


def _composite(name, epsilon, gamma, alpha, beta, stabilizer):
    if name == "epsilon":
        return lr.single("epsilon", lr.Epsilon(epsilon), stabilizer)
    if name == "gamma":
        return lr.single("gamma", lr.Gamma(gamma, stabilizer), stabilizer)
    if name == "alpha_beta":
        return lr.single("alpha_beta", lr.AlphaBeta(alpha, beta, stabilizer), stabilizer)
    if name == "zplus":
        return lr.single("zplus", lr.ZPlus(stabilizer), stabilizer)
    if name == "epsilon_plus":
        return lr.epsilon_plus(epsilon, stabilizer)
    if name == "epsilon_gamma_box":
        return lr.epsilon_gamma_box(epsilon, gamma, stabilizer)
    if name == "epsilon_plus_flat":
        return lr.epsilon_plus_flat(epsilon, stabilizer)
    if name == "epsilon_alpha2_beta1":
        return lr.epsilon_alpha2_beta1(epsilon, stabilizer)
    raise ValueError(f"composite: expected one of {', '.join(COMPOSITES)}, got {name!r}")


def _bound(name, value):
    """``low``/``high``: a finite scalar or image, as float32."""
    try:
        a = None if isinstance(value, str) else np.asarray(value, np.float32)
    except (TypeError, ValueError):
        a = None
    if a is None or not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected a finite number or one image in the model's input space, got {value!r}")
    return a


class LRP(PropagationExplainer):
    """Layer-wise Relevance Propagation (Bach et al., PLoS ONE 2015, doi:10.1371/journal.pone.0130140;
    Montavon et al. 2019, "Layer-wise relevance propagation: an overview") with zennit 0.5.1's
    rules and composites (module docstring of mnist_xai/lrp_rules.py, which cites each).

    ``composite``: one of ``COMPOSITES``; ``layer_rules``: ``{layer path or kind: rule}`` that
    take precedence (rules: ``lrp_rules.Epsilon(...)``, ``Gamma``, ``AlphaBeta``, ``ZPlus``,
    ``ZBox``, ``Flat``, ``Norm``, or their names "epsilon", "gamma", ... with this explainer's
    parameters). ``epsilon`` (epsilon rule), ``gamma``, ``alpha``/``beta`` (alpha - beta = 1),
    ``stabilizer`` (every other rule's denominator) as zennit's defaults. ``low``/``high``
    (the z^B rule): the lowest and highest input, a scalar or one image in the MODEL's input
    space (default: the model's ``input_range``, [0, 1] for MNISTCNN; without one, each
    image's own minimum and maximum), carried to the first layer's input space through the
    operations before it.

    BatchNorm after a conv or dense layer is merged into it, as zennit's
    ``SequentialMergeBatchNorm`` canonizer does (lrp_rules.fuse).
    """

    #: 32 images a call on a CPU: the weight-splitting rules keep several activations per layer
    #: live, and at 64 they leave the cache (2-core EPYC, 2026-12-04: z+ / gamma / alpha-beta
    #: 1.2-1.6x faster at 32 than at 64, epsilon the same; docs/benchmarks.md)
    cpu_chunk_size = 32

    def __init__(self, model, composite: str = "epsilon_plus", layer_rules: dict | None = None,
                 epsilon: float = 1e-6, gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0,
                 stabilizer: float = 1e-6, low=None, high=None, chunk_size: int | None = None):
        if not isinstance(composite, str):
            raise ValueError(f"composite: expected one of {', '.join(COMPOSITES)}, got {composite!r}")
        self.epsilon = lr._check_eps("epsilon", epsilon)
        self.gamma = lr._check_eps("gamma", gamma)
        self.stabilizer = lr._check_eps("stabilizer", stabilizer)
        base = _composite(composite, self.epsilon, gamma, alpha, beta, self.stabilizer)
        target = explained(model)
        names_map, kinds = [], []
        for key, rule in (layer_rules or {}).items():
            if isinstance(rule, str):
                rule = self._named_rule(rule, alpha, beta)
            if not callable(rule):
                raise ValueError(f"layer_rules[{key!r}]: expected a rule (lrp_rules.Epsilon(...), ...) or one of "
                                 f"{', '.join(sorted(lr.RULES))}, got {rule!r}")
            if not isinstance(key, str):
                raise ValueError(f"layer_rules: expected layer paths or kinds ({', '.join(lr.KINDS)}) as keys, "
                                 f"got {key!r}")
            if key in lr.KINDS:
                kinds.append(((key,), rule))
            else:
                names_map.append((target.canonical(key), rule))
        self.composite = lr.Composite(base.name, tuple(kinds) + base.kinds, base.first, tuple(names_map),
                                      self.stabilizer)
        self.layer_rules = dict(layer_rules or {})
        self.uses_box = any(isinstance(r, lr.ZBox) for _, r in (*self.composite.kinds, *self.composite.first,
                                                                  *self.composite.names))
        lo_hi = target.input_range or (None, None)
        self.low = None if low is None and lo_hi[0] is None else _bound("low", lo_hi[0] if low is None else low)
        self.high = None if high is None and lo_hi[1] is None else _bound("high", lo_hi[1] if high is None else high)
        super().__init__(model, chunk_size)

    def _named_rule(self, name, alpha, beta):
        s = self.stabilizer
        made = {"epsilon": lambda: lr.Epsilon(self.epsilon), "norm": lambda: lr.Norm(s),
                "zplus": lambda: lr.ZPlus(s), "alpha_beta": lambda: lr.AlphaBeta(alpha, beta, s),
                "gamma": lambda: lr.Gamma(self.gamma, s), "zbox": lambda: lr.ZBox(s), "flat": lambda: lr.Flat(s)}
        if name not in made:
            raise ValueError(f"layer_rules: expected a rule or one of {', '.join(sorted(made))}, got {name!r}")
        return made[name]()

    def _check(self, variables, images):
        if not self.uses_box:
            return
        for name, b in (("low", self.low), ("high", self.high)):
            if b is None:
                continue
            try:
                ok = np.broadcast_shapes(b.shape, images.shape[1:]) == tuple(images.shape[1:])
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{name}: expected a scalar or one image shaped {tuple(images.shape[1:])}, "
                                 f"got shape {b.shape}")

    def propagated(self, variables, images, targets):
        names: list = []

        def scope(name):
            names.append(name)
            return jax.named_scope(f"{lr.SCOPE}{len(names) - 1}")

        target = self.target

        def fn(x):
            return target.scoped_logits(variables, x, scope)

        worlds = [images]
        if self.uses_box:
            axes = tuple(range(1, images.ndim))  # no bound given or declared: each image's own range
            own = (images.min(axes, keepdims=True), images.max(axes, keepdims=True))
            worlds += [jnp.broadcast_to(jnp.asarray(b, images.dtype) if b is not None else o, images.shape)
                       for b, o in zip((self.low, self.high), own)]

        def start(outputs):  # the one-hot of the target (zennit's attr_output), in the image's world only
            t = _resolve_targets(outputs[0], targets)
            onehot = jax.nn.one_hot(t, outputs[0].shape[-1], dtype=outputs[0].dtype)
            return [onehot] + [jnp.zeros_like(onehot)] * (len(worlds) - 1)

        grads, outs = jr.propagate(fn, worlds, start, lr.lrp_rules(self.composite, names))
        return grads[0], outs[0]


EPSILON = Option("epsilon", float, "the epsilon rule's stabiliser (zennit's 1e-6; larger: sparser maps)", low=0.0)
GAMMA = Option("gamma", float, "the gamma rule's boost of positive weights (zennit's 0.25)", low=0.0)
ALPHA = Option("alpha", float, "weight of positive contributions (alpha - beta = 1)", low=1.0)
BETA = Option("beta", float, "weight of negative contributions (alpha - beta = 1)", low=0.0)
LOW = Option("low", None, "z^B: the lowest input, a scalar or one image in the model's input space "
                          "(default: its input_range, else each image's minimum)")
HIGH = Option("high", None, "z^B: the highest input (default: the model's input_range, else each image's maximum)")

REF = "zennit 0.5.1 {} (zennit/rules.py, composites.py)"
PAPER = "Bach et al., PLoS ONE 2015; Montavon et al. 2019"


@register("lrp_epsilon", title="LRP-epsilon", family="propagation", cost="fast", signed=True, options=(EPSILON,),
          reference=REF.format("Epsilon"), paper=PAPER)
class LRPEpsilon(LRP):
    """LRP-epsilon (Bach et al., PLoS ONE 2015) on every conv and dense layer.

    R_x = x * W'^T (R / stab_eps(z)) (zennit rules.py:96-124); epsilon 0 is LRP-0, a larger
    epsilon absorbs weak, contradictory relevance."""

    def __init__(self, model, epsilon: float = 1e-6, chunk_size: int | None = None):
        super().__init__(model, "epsilon", epsilon=epsilon, chunk_size=chunk_size)


@register("lrp_gamma", title="LRP-gamma", family="propagation", cost="fast", signed=True, options=(GAMMA,),
          reference=REF.format("Gamma"), paper=PAPER)
class LRPGamma(LRP):
    """LRP-gamma (Montavon et al. 2019, "Layer-wise relevance propagation: an overview") on
    every conv and dense layer, zennit's generalised form for inputs of both signs
    (rules.py:127-187)."""

    def __init__(self, model, gamma: float = 0.25, chunk_size: int | None = None):
        super().__init__(model, "gamma", gamma=gamma, chunk_size=chunk_size)


@register("lrp_alpha_beta", title="LRP-alpha-beta", family="propagation", cost="fast", signed=True,
          options=(ALPHA, BETA), reference=REF.format("AlphaBeta"), paper=PAPER)
class LRPAlphaBeta(LRP):
    """LRP-alpha-beta (Bach et al., PLoS ONE 2015) on every conv and dense layer
    (zennit rules.py:221-281), alpha - beta = 1."""

    def __init__(self, model, alpha: float = 2.0, beta: float = 1.0, chunk_size: int | None = None):
        super().__init__(model, "alpha_beta", alpha=alpha, beta=beta, chunk_size=chunk_size)


@register("lrp_epsilon_plus", title="LRP EpsilonPlus", family="propagation", cost="fast", signed=True,
          options=(EPSILON,), reference=REF.format("EpsilonPlus"), paper=PAPER)
class LRPEpsilonPlus(LRP):
    """LRP EpsilonPlus (Kohlbrenner et al., IJCNN 2020, arXiv:1910.09840): z+ on convs, epsilon
    on dense layers, as zennit's composite (composites.py:306-337)."""

    def __init__(self, model, epsilon: float = 1e-6, chunk_size: int | None = None):
        super().__init__(model, "epsilon_plus", epsilon=epsilon, chunk_size=chunk_size)


@register("lrp_epsilon_gamma_box", title="LRP EpsilonGammaBox", family="propagation", cost="fast", signed=True,
          options=(EPSILON, GAMMA, LOW, HIGH), reference=REF.format("EpsilonGammaBox"), paper=PAPER)
class LRPEpsilonGammaBox(LRP):
    """LRP EpsilonGammaBox (Montavon et al. 2019, "Layer-wise relevance propagation: an
    overview"): z^B on the first conv (``low``, ``high`` in the model's input space), gamma
    on the other convs, epsilon on dense layers, as zennit's composite (composites.py:248-303)."""

    def __init__(self, model, epsilon: float = 1e-6, gamma: float = 0.25, low=None, high=None,
                 chunk_size: int | None = None):
        super().__init__(model, "epsilon_gamma_box", epsilon=epsilon, gamma=gamma, low=low, high=high,
                         chunk_size=chunk_size)


@register("lrp_epsilon_plus_flat", title="LRP EpsilonPlusFlat", family="propagation", cost="fast", signed=True,
          options=(EPSILON,), reference=REF.format("EpsilonPlusFlat"), paper=PAPER)
class LRPEpsilonPlusFlat(LRP):
    """LRP EpsilonPlusFlat (Lapuschkin et al., Nat. Commun. 2019, arXiv:1902.10178, the flat
    rule): flat on the first layer, z+ on the other convs, epsilon on dense layers, as
    zennit's composite (composites.py:378-419)."""

    def __init__(self, model, epsilon: float = 1e-6, chunk_size: int | None = None):
        super().__init__(model, "epsilon_plus_flat", epsilon=epsilon, chunk_size=chunk_size)


__all__ = ["LRP", "LRPAlphaBeta", "LRPEpsilon", "LRPEpsilonGammaBox", "LRPEpsilonPlus", "LRPEpsilonPlusFlat",
           "LRPGamma"]

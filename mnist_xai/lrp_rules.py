"""Layer-wise Relevance Propagation on a traced jaxpr: zennit's rules and composites, for any model.

LRP (Bach et al., PLoS ONE 2015; Montavon et al., "Layer-wise relevance propagation: an
overview", 2019) sends the target logit back layer by layer, each linear layer dividing the
relevance R of its outputs among its inputs by a rule. Here the "layers" are found in the
model's jaxpr (``jaxpr_rules.forward``), so nothing is written per model:

* **A linear layer** is a ``conv_general_dilated`` (kind ``"conv"``) or ``dot_general``
  (kind ``"dense"``) with one operand on the path from the input (the other is its weight),
  or a ``reduce_sum`` / ``reduce_window_sum`` (kind ``"pool"``: global or windowed average
  pooling, ``x.mean((1, 2))``). It is **fused with the elementwise affine chain that follows
  it** (add/sub/mul/div by values off the path, negation, and reshape/squeeze/transpose/
  expand_dims/convert_element_type between them), as long as each value in the chain has
  exactly one consumer: the bias add, and an inference BatchNorm ``(u - mean) * scale /
  sqrt(var + eps) + beta``. The fused unit is ``z = s * P(L(x, W)) + t`` per output unit, with
  ``s`` and ``t`` composed from the chain's constants (``P``: the chain's reshapes). That is
  zennit's BatchNorm canonizer (zennit/canonizers.py:60-151 ``MergeBatchNorm.merge_batch_norm``:
  ``W' = W * scale / sqrt(var + eps)``, ``b' = (b - mean) * scale / sqrt(var + eps) + beta``,
  used through ``SequentialMergeBatchNorm``), done in the jaxpr: every rule below sees the
  merged weights ``W' = s * W`` (per output unit: the signs of ``s`` are honoured, so a
  negative BatchNorm scale swaps ``W'``'s positive and negative parts as merging would) and
  the merged bias ``b' = t``. A BatchNorm that follows no linear layer (or one whose input is
  also used elsewhere) stays an elementwise affine map and passes its gradient; zennit, without
  a canonizer for it, applies its ``Pass`` rule there (composites.py:239 ``layer_map_base``).
* **Activations** (ReLU as ``max(x, 0)``, and every other elementwise nonlinearity of one
  operand): relevance passes unchanged (zennit's ``Pass``, rules.py:352-360).
* **Max-pools** (``reduce_max``, ``reduce_window_max``): the gradient, to the first maximum of
  each window (zennit has no rule for them: torch's MaxPool2d gradient).
* **Sums of two values on the path** (skip connections, ``a + b``): zennit's ``Sum`` layer with
  ``Norm`` (its ResNet canonizer, composites.py:239): ``R_a = a R / stab(a + b)``.
* **Everything else that is linear** (reshape, transpose, broadcast, slicing, the input's
  standardisation ``(x - mean) / std`` before the first layer, ...): the gradient, as zennit
  leaves non-module operations to autograd. Anything else on the path: one-line ValueError.

The rules (zennit 0.5.1 zennit/rules.py; ``stab(z) = z + eps * (sign(z) + [z == 0])``,
core.py:89-115 ``stabilize``; ``x+ = max(x, 0)``, ``x- = min(x, 0)``, ``W'+``/``W'-`` the
positive/negative parts of the merged weights, ``A_V(v) = conv or dense of v with weights V``,
``A_V^T`` its transpose, the bias counted in ``z`` only where said):

* ``Epsilon(eps)`` (rules.py:96-124): ``R_x = x * A_W'^T(R / stab_eps(z))``, ``z`` with bias.
* ``Norm(eps)`` (rules.py:363-381): the same, for pools and sums (no weights).
* ``Gamma(gamma)`` (rules.py:127-187, the generalised rule that also takes negative inputs):
  with ``W+g = W' + gamma W'+`` and ``W-g = W' + gamma W'-``,
  ``o0 = A_W+g(x+) + b' + gamma b'+``, ``o1 = A_W-g(x-)``, ``o2 = A_W-g(x+) + b' + gamma b'-``,
  ``o3 = A_W+g(x-)``; ``g01 = [z > 0] R / stab(o0 + o1)``, ``g23 = [z < 0] R / stab(o2 + o3)``;
  ``R_x = x+ A_W+g^T(g01) + x- A_W-g^T(g01) + x+ A_W-g^T(g23) + x- A_W+g^T(g23)``.
* ``AlphaBeta(alpha, beta)`` (rules.py:221-281): ``a = R / stab(A_W'+(x+) + b'+ + A_W'-(x-))``,
  ``b = R / stab(A_W'-(x+) + b'- + A_W'+(x-))``;
  ``R_x = alpha (x+ A_W'+^T a + x- A_W'-^T a) - beta (x+ A_W'-^T b + x- A_W'+^T b)``.
* ``ZPlus`` (rules.py:190-218): ``g = R / stab(A_W'+(x+) + b'+ + A_W'-(x-))``,
  ``R_x = x+ A_W'+^T g + x- A_W'-^T g`` (alpha 1, beta 0 with negative inputs allowed).
* ``ZBox(low, high)`` (rules.py:284-330): ``g = R / stab(z - (A_W'+(l) + b'+) - (A_W'-(h) + b'-))``,
  ``R_x = x A_W'^T g - l A_W'+^T g - h A_W'-^T g``, with ``l``/``h`` the lowest/highest input
  in the layer's own input space (see ``ZBox``).
* ``Flat`` (rules.py:409-433): weights all ones, no bias, input ones:
  ``R_x = A_1^T(R / stab(A_1(1)))``, whatever the weights and the input.

**Inputs known to be >= 0.** ``nonnegative`` reads the tape once: a value made by
``max(v, c)`` with a constant ``c >= 0`` (ReLU), then moved by max-pools, reshapes, slices,
sums and sign-keeping average pools, is >= 0 whatever the image. A layer fed by one has
x- = 0, so the rules above lose every term on x- (zennit computes them, on zeros): Gamma,
AlphaBeta and ZPlus cost two convolutions and two transposed ones there instead of four and
four, and ZPlus, whose beta terms are all zero, one and one where no merged scale is negative
(``_zplus_nonneg``). Nothing is assumed of the model's input, or of a value such as
``relu(v) - 0.5``; the maps are the same to float rounding (tests/test_lrp.py).

Where zennit and Captum disagree (Captum 0.9 captum/attr/_core/lrp.py and
attr/_utils/lrp_rules.py): Captum has no BatchNorm merging (it applies its epsilon rule to
``BatchNorm2d`` as a layer of its own, with the BatchNorm's shift as a bias), applies the
epsilon rule to max-pools (``x * grad(R / stab(z))``: the gradient up to ``z / stab(z)``), and
its stabiliser is ``z + eps * sign(z)`` (0 at ``z == 0``, zennit's ``+eps``). We follow zennit.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import jaxpr_rules as jr

#: linear primitives with a weight operand -> the layer kind
WEIGHTED = {"conv_general_dilated": "conv", "dot_general": "dense"}
#: sums over axes or windows (average pooling, x.mean(...)) -> kind "pool"
SUMS = ("reduce_sum", "reduce_window_sum")
AFFINE = ("add", "sub", "mul", "div", "neg")
#: unary relabelings allowed inside a layer's affine chain (bijective: a unit stays a unit)
RELABEL = ("reshape", "squeeze", "expand_dims", "transpose", "convert_element_type", "copy", "copy_p")
#: linear structure passed back by its gradient (also the elementwise affine maps off a layer)
GRADIENT = {"add", "add_any", "sub", "neg", "mul", "div", "reshape", "broadcast_in_dim", "transpose",
            "convert_element_type", "squeeze", "expand_dims", "slice", "dynamic_slice", "pad", "concatenate",
            "select_n", "copy", "copy_p", "rev", "gather", "reduce_precision", "cumsum", "reduce_max",
            "reduce_window_max"}
#: elementwise nonlinearities of one operand: zennit's Pass
ACTIVATIONS = {"max", "min", "tanh", "logistic", "exp", "exp2", "log", "log1p", "expm1", "sin", "cos", "abs",
               "integer_pow", "square", "sqrt", "rsqrt", "erf", "pow", "sign", "clamp"}
SCOPE = "lrp_layer_"
_SCOPE_RE = re.compile(SCOPE + r"(\d+)")


def stabilize(z, eps):
    """zennit core.py:89-115 ``stabilize``: z + eps * sign(z), with sign(0) = +1."""
    return z + eps * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


# ----------------------------------------------------------------------------- the fused layer


class _Fused:
    """The pseudo-primitive of a fused layer in the rewritten tape."""

    name = "lrp_layer"
    multiple_results = False


FUSED = _Fused()


@dataclass
class Layer:
    """One fused layer: ``z = s * P(L(x, W)) + t``.

    ``linear``: the conv/dot_general/reduce_sum equation; ``operand``: x's index in it;
    ``weight``: W (None for a sum); ``relabel``: the equations P; ``s``, ``t``: shaped as z;
    ``kind``: "conv", "dense" or "pool"; ``index``: its place among the layers, input first;
    ``names``: the submodules it was traced in, outermost first (see ``LRP``)."""

    linear: jr.Eqn
    operand: int
    weight: object
    relabel: list
    s: object
    t: object
    kind: str
    index: int = 0
    names: tuple = ()
    #: the chain keeps a value >= 0 non-negative (relabels, mul/add by constants >= 0, div by
    #: constants > 0): a pool of non-negative values is non-negative (``nonnegative``)
    keeps_sign: bool = False
    #: the layer's input is provably >= 0 in every world (``nonnegative``): x- = 0, so every
    #: term of a rule on x- vanishes and is skipped
    nonneg: bool = False

    def lin(self, v, w=None):
        """P(L(v, w)) (w: the layer's own weights when None; ignored for a sum)."""
        args = [None] * len(self.linear.ins)
        args[self.operand] = v
        if self.weight is not None:
            args[1 - self.operand] = self.weight if w is None else w
        y = jr.bind(self.linear, args)
        for e in self.relabel:
            y = jr.bind(e, [y])
        return y

    def lin_t(self, g, like, w=None):
        """The transpose of ``v -> P(L(v, w))`` applied to ``g`` (``like``: an input, for its shape)."""
        return jax.linear_transpose(lambda v: self.lin(v, w), like)(g)[0]

    # The merged weights W' = s * W per output unit. With P = A_{W+} and N = A_{W-} (the
    # positive and negative parts of the layer's own weights), every weight variant a rule
    # needs is a combination of the two: A_{W'}(v) = s P(v) + s N(v), A_{W'+}(v) = s+ P(v) + s- N(v),
    # A_{W'-}(v) = s- P(v) + s+ N(v) (a negative s swaps the parts, as merging would). So a rule
    # costs two convolutions per input variant and two transposed ones per output (``pn``, ``pn_t``).

    def parts(self, v):
        """(P(v), N(v))."""
        w = self.weight
        return self.lin(v, jnp.maximum(w, 0)), self.lin(v, jnp.minimum(w, 0))

    def parts_t(self, gp, gn, like):
        """P^T(gp) + N^T(gn): the transpose of ``parts``, as one ``linear_transpose``."""
        w = self.weight
        wp, wn = jnp.maximum(w, 0), jnp.minimum(w, 0)
        return jax.linear_transpose(lambda v: (self.lin(v, wp), self.lin(v, wn)), like)((gp, gn))[0]

    def pn(self, v0, v1):
        """((P(v0), N(v0)), (P(v1), N(v1)))."""
        return self.parts(v0), self.parts(v1)

    def pn_t(self, gp0, gn0, gp1, gn1, like):
        """(P^T(gp0) + N^T(gn0), P^T(gp1) + N^T(gn1)): the transpose of ``pn``."""
        return self.parts_t(gp0, gn0, like), self.parts_t(gp1, gn1, like)

    def signs(self):
        """(s, s+, s-)."""
        return self.s, jnp.maximum(self.s, 0), jnp.minimum(self.s, 0)


def _scaled(s, t, eqn, i, c):
    """(s, t) after the affine equation ``eqn`` (live operand ``i``, the other's value ``c``), or None."""
    name = eqn.name
    if name == "neg":
        return -s, -t
    if name == "add":
        return s, t + c
    if name == "sub":
        return (s, t - c) if i == 0 else (-s, c - t)
    if name == "mul":
        return s * c, t * c
    if name == "div" and i == 0:
        return s / c, t / c
    return None


def fuse(trace: jr.Trace, x_key, out_key, names: list | None = None):
    """Rewrite ``trace.tape``: each linear layer and the affine chain after it become one
    ``FUSED`` equation whose ``params["layer"]`` is its ``Layer`` (module docstring)."""
    tape = trace.tape
    consumers = defaultdict(list)
    for i, e in enumerate(tape):
        for k, live in zip(e.ins, e.live):
            if live:
                consumers[k].append(i)
    value = lambda k: trace.values[k][0]  # noqa: E731 - off the path: the same in every world
    skip, new, count = set(), [], 0
    for i, e in enumerate(tape):
        if i in skip:
            continue
        kind = WEIGHTED.get(e.name) or ("pool" if e.name in SUMS else None)
        if kind is None or sum(e.live) != 1 or (kind != "pool" and len(e.ins) != 2):
            new.append(e)
            continue
        op = e.live.index(True)
        key = e.outs[0]
        u = value(key)
        s, t = jnp.ones(u.shape, u.dtype), jnp.zeros(u.shape, u.dtype)
        relabel, chain, keeps = [], [], True
        while key != out_key and len(consumers[key]) == 1:
            j = consumers[key][0]
            c = tape[j]
            if sum(c.live) != 1 or len(c.outs) != 1:
                break
            li = c.live.index(True)
            if c.name in RELABEL and len(c.ins) == 1:
                s, t = jr.bind(c, [s]), jr.bind(c, [t])
                relabel.append(c)
            elif c.name in AFFINE and jnp.shape(value(c.outs[0])) == jnp.shape(value(key)):
                other = value(c.ins[1 - li]) if len(c.ins) == 2 else None
                st = _scaled(s, t, c, li, other)
                if st is None:
                    break
                s, t = st
                keeps = keeps and _keeps_sign(c, li, trace)
            else:
                break
            chain.append(j)
            key = c.outs[0]
        skip.update(chain)
        weight = value(e.ins[1 - op]) if kind != "pool" else None
        layer = Layer(e, op, weight, relabel, s, t, kind, count, _names(e.scope, names), keeps)
        count += 1
        new.append(jr.Eqn(FUSED, {"layer": layer}, [e.ins[op]], [key], (True,), e.scope))
    trace.tape = new


def _names(scope: str, names: list | None) -> tuple:
    if not names:
        return ()
    return tuple(names[int(m)] for m in _SCOPE_RE.findall(scope) if int(m) < len(names))


# ----------------------------------------------------------------------------- sign analysis

#: structure whose result is >= 0 wherever every floating-point operand is (operands off the
#: path must be concrete constants >= 0); ``max`` needs one operand >= 0 only
SIGN_KEEPING = {"reshape", "squeeze", "expand_dims", "transpose", "broadcast_in_dim", "convert_element_type",
                "copy", "copy_p", "slice", "dynamic_slice", "rev", "gather", "pad", "concatenate", "select_n",
                "reduce_max", "reduce_window_max", "reduce_min", "reduce_window_min", "reduce_sum",
                "reduce_window_sum", "cumsum", "reduce_precision", "add", "add_any", "mul", "min"}
#: elementwise maps whose result is >= 0 whatever the operand
NONNEG_RESULT = {"abs", "exp", "exp2", "logistic", "square"}


def _concrete_sign(trace: jr.Trace, key, positive=False) -> bool:
    """The value of ``key`` is a constant known while tracing, >= 0 (> 0: ``positive``) everywhere."""
    c = trace.concrete.get(key)
    if c is None:
        return False
    c = np.asarray(c)
    return bool(np.all(c > 0) if positive else np.all(c >= 0))


def _keeps_sign(eqn: jr.Eqn, live: int, trace: jr.Trace) -> bool:
    """The affine step ``eqn`` of a layer's chain (live operand ``live``) maps values >= 0 to values >= 0."""
    other = eqn.ins[1 - live] if len(eqn.ins) == 2 else None
    if eqn.name in ("add", "mul"):
        return _concrete_sign(trace, other)
    if eqn.name == "div":
        return live == 0 and _concrete_sign(trace, other, positive=True)
    return False


def nonnegative(trace: jr.Trace, x_key) -> set:
    """The keys of the values on the path that are provably >= 0 in every world, from the
    tape's structure alone (nothing is assumed of the input ``x_key``): ``max(v, c)`` with a
    constant ``c >= 0`` (ReLU), then whatever ``SIGN_KEEPING`` / ``NONNEG_RESULT`` structure
    (max-pools, reshapes, sums of such values, ...) and sign-keeping pools (``Layer.keeps_sign``)
    make of them. A layer whose input is in the set has x- = 0: its rule skips every term on
    x- (zennit computes them, and they are zero there: rules.py:127-281)."""
    known: set = set()

    def sure(key, positive=False):
        return key in known or _concrete_sign(trace, key, positive)

    for e in trace.tape:
        floats = [k for k in e.ins if jnp.issubdtype(jnp.result_type(trace.values[k][0]), jnp.inexact)]
        name = e.name
        if e.primitive is FUSED:
            layer = e.params["layer"]
            layer.nonneg = e.ins[0] in known
            ok = layer.kind == "pool" and layer.keeps_sign and layer.nonneg
        elif name == "max":
            ok = any(sure(k) for k in floats)
        elif name == "div":
            ok = len(e.ins) == 2 and sure(e.ins[0]) and _concrete_sign(trace, e.ins[1], positive=True)
        elif name == "clamp":  # clamp(low, x, high)
            ok = sure(e.ins[0])
        elif name == "integer_pow":
            ok = e.params.get("y", 1) % 2 == 0 or sure(e.ins[0])
        elif name in NONNEG_RESULT:
            ok = True
        elif name in SIGN_KEEPING:
            ok = bool(floats) and all(sure(k) for k in floats)
        else:
            ok = False
        if ok:
            known.update(e.outs)
    return known


# ----------------------------------------------------------------------------- the rules


def _check_eps(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Epsilon:
    """LRP-epsilon (zennit rules.py:96-124): R_x = x * A_W'^T(R / stab_eps(z)); epsilon 0 is LRP-0."""

    epsilon: float = 1e-6

    def __post_init__(self):
        _check_eps("epsilon", self.epsilon)

    def __call__(self, layer: Layer, x, z, r, worlds):
        return x * layer.lin_t(layer.s * r / stabilize(z, self.epsilon), x)


@dataclass(frozen=True)
class Norm(Epsilon):
    """zennit's Norm (rules.py:363-381), the rule of average pools and sums: Epsilon with a
    stabiliser only."""


@dataclass(frozen=True)
class ZPlus:
    """LRP-z+ (zennit rules.py:190-218): alpha 1, beta 0, negative inputs allowed."""

    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps("stabilizer", self.stabilizer)

    def __call__(self, layer, x, z, r, worlds):
        return AlphaBeta(1.0, 0.0, self.stabilizer)(layer, x, z, r, worlds)


def _zplus_nonneg(layer, x, r, alpha, stabilizer):
    """z+ on an input >= 0: ``x (P^T(s+ g) + N^T(s- g))``, ``g = alpha R / stab(s+ P(x) + s- N(x) + b'+)``.
    Where no merged scale is negative (s- = 0, the usual BatchNorm) the N terms are zeros, and
    ``lax.cond`` skips them at run time (one convolution and one transpose instead of two of each;
    the same values: s+ P + 0 N = s+ P)."""
    _, sp, sn = layer.signs()
    tp = jnp.maximum(layer.t, 0)

    def both(x, r):
        pp, np_ = layer.parts(x)
        g = r / stabilize(sp * pp + sn * np_ + tp, stabilizer)
        return x * layer.parts_t(alpha * sp * g, alpha * sn * g, x)

    def positive(x, r):
        wp = jnp.maximum(layer.weight, 0)
        g = r / stabilize(sp * layer.lin(x, wp) + tp, stabilizer)
        return x * layer.lin_t(alpha * sp * g, x, wp)

    return jax.lax.cond(jnp.any(layer.s < 0), both, positive, x, r)


@dataclass(frozen=True)
class AlphaBeta:
    """LRP-alpha-beta (zennit rules.py:221-281), alpha - beta = 1, both >= 0."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self):
        a, b = _check_eps("alpha", self.alpha), _check_eps("beta", self.beta)
        if abs(a - b - 1.0) > 1e-12:
            raise ValueError(f"alpha, beta: expected alpha - beta = 1, got alpha={self.alpha!r}, beta={self.beta!r}")
        _check_eps("stabilizer", self.stabilizer)

    def __call__(self, layer, x, z, r, worlds):
        _, sp, sn = layer.signs()
        t = layer.t
        a, b = self.alpha, self.beta
        if layer.nonneg:  # x+ = x, x- = 0: the terms on x- vanish (P(x-) = N(x-) = 0)
            if b == 0:  # ZPlus: no beta terms at all
                return _zplus_nonneg(layer, x, r, a, self.stabilizer)
            pp, np_ = layer.parts(x)
            ga = r / stabilize(sp * pp + sn * np_ + jnp.maximum(t, 0), self.stabilizer)
            gb = r / stabilize(sn * pp + sp * np_ + jnp.minimum(t, 0), self.stabilizer)
            return x * layer.parts_t(a * sp * ga - b * sn * gb, a * sn * ga - b * sp * gb, x)
        xp, xn = jnp.maximum(x, 0), jnp.minimum(x, 0)
        (pp, np_), (pn, nn) = layer.pn(xp, xn)  # P(x+), N(x+), P(x-), N(x-)
        # A_{W'+}(x+) + b'+ + A_{W'-}(x-), and A_{W'-}(x+) + b'- + A_{W'+}(x-)
        ga = r / stabilize(sp * pp + sn * np_ + jnp.maximum(t, 0) + sn * pn + sp * nn, self.stabilizer)
        if b == 0:  # ZPlus: x+ A_{W'+}^T ga + x- A_{W'-}^T ga
            on_pos, on_neg = layer.pn_t(a * sp * ga, a * sn * ga, a * sn * ga, a * sp * ga, x)
            return xp * on_pos + xn * on_neg
        gb = r / stabilize(sn * pp + sp * np_ + jnp.minimum(t, 0) + sp * pn + sn * nn, self.stabilizer)
        # x+ (alpha A_{W'+}^T ga - beta A_{W'-}^T gb) + x- (alpha A_{W'-}^T ga - beta A_{W'+}^T gb)
        on_pos, on_neg = layer.pn_t(a * sp * ga - b * sn * gb, a * sn * ga - b * sp * gb,
                                    a * sn * ga - b * sp * gb, a * sp * ga - b * sn * gb, x)
        return xp * on_pos + xn * on_neg


@dataclass(frozen=True)
class Gamma:
    """Generalised LRP-gamma (zennit rules.py:127-187): favours positive contributions by
    gamma, for positive and negative inputs alike (the original rule when inputs are >= 0)."""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps("gamma", self.gamma)
        _check_eps("stabilizer", self.stabilizer)

    def __call__(self, layer, x, z, r, worlds):
        gm = self.gamma
        s, sp, sn = layer.signs()
        t = layer.t
        # W' + gamma W'+ = (s + gamma s+) on P, (s + gamma s-) on N; W' + gamma W'- the other way
        up_p, up_n = s + gm * sp, s + gm * sn
        down_p, down_n = s + gm * sn, s + gm * sp
        if layer.nonneg:  # x+ = x, x- = 0: o1 = o3 = 0 and the x- terms vanish
            pp, np_ = layer.parts(x)
            o0 = up_p * pp + up_n * np_ + t + gm * jnp.maximum(t, 0)
            o2 = down_p * pp + down_n * np_ + t + gm * jnp.minimum(t, 0)
            g01 = (z > 0).astype(r.dtype) * r / stabilize(o0, self.stabilizer)
            g23 = (z < 0).astype(r.dtype) * r / stabilize(o2, self.stabilizer)
            return x * layer.parts_t(up_p * g01 + down_p * g23, up_n * g01 + down_n * g23, x)
        xp, xn = jnp.maximum(x, 0), jnp.minimum(x, 0)
        (pp, np_), (pn, nn) = layer.pn(xp, xn)
        o0 = up_p * pp + up_n * np_ + t + gm * jnp.maximum(t, 0)   # A_{W'+gW'+}(x+) + b' + g b'+
        o1 = down_p * pn + down_n * nn                             # A_{W'+gW'-}(x-)
        o2 = down_p * pp + down_n * np_ + t + gm * jnp.minimum(t, 0)  # A_{W'+gW'-}(x+) + b' + g b'-
        o3 = up_p * pn + up_n * nn                                 # A_{W'+gW'+}(x-)
        g01 = (z > 0).astype(r.dtype) * r / stabilize(o0 + o1, self.stabilizer)
        g23 = (z < 0).astype(r.dtype) * r / stabilize(o2 + o3, self.stabilizer)
        # x+ (up^T g01 + down^T g23) + x- (down^T g01 + up^T g23)
        on_pos, on_neg = layer.pn_t(up_p * g01 + down_p * g23, up_n * g01 + down_n * g23,
                                    down_p * g01 + up_p * g23, down_n * g01 + up_n * g23, x)
        return xp * on_pos + xn * on_neg


@dataclass(frozen=True)
class ZBox:
    """LRP-z^B (zennit rules.py:284-330) for a bounded input: ``low``/``high`` are in the
    MODEL's input space (e.g. pixels in [0, 1]); they are carried to the layer's own input
    space through the operations before it as two more images (the standardisation
    ``(x - mean) / std`` of MNISTCNN's stem maps 0 and 1 to zennit's ``low``/``high`` for the
    first conv). The worlds ``worlds[1]``, ``worlds[2]`` hold them."""

    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps("stabilizer", self.stabilizer)

    def __call__(self, layer, x, z, r, worlds):
        if len(worlds) < 3:
            raise ValueError("ZBox: expected low and high inputs, got none (give the explainer low= and high=)")
        lo, hi = worlds[1], worlds[2]
        s, sp, sn = layer.signs()
        (pl, nl), (ph, nh) = layer.pn(lo, hi)
        t = layer.t
        low_part = sp * pl + sn * nl + jnp.maximum(t, 0)    # A_{W'+}(l) + b'+
        high_part = sn * ph + sp * nh + jnp.minimum(t, 0)   # A_{W'-}(h) + b'-
        g = r / stabilize(z - low_part - high_part, self.stabilizer)
        # x A_{W'}^T g - l A_{W'+}^T g - h A_{W'-}^T g
        on_lo, on_hi = layer.pn_t(sp * g, sn * g, sn * g, sp * g, x)
        return x * layer.lin_t(s * g, x) - lo * on_lo - hi * on_hi


@dataclass(frozen=True)
class Flat:
    """LRP-flat (zennit rules.py:409-433): relevance spread uniformly over each output's
    receptive field, R_x = A_1^T(R / stab(A_1(1))) with all weights 1 and no bias."""

    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_eps("stabilizer", self.stabilizer)

    def __call__(self, layer, x, z, r, worlds):
        ones_w = None if layer.weight is None else jnp.ones_like(layer.weight)
        ones = jnp.ones_like(x)
        return layer.lin_t(r / stabilize(layer.lin(ones, ones_w), self.stabilizer), x, ones_w)


RULES = {"epsilon": Epsilon, "norm": Norm, "zplus": ZPlus, "alpha_beta": AlphaBeta, "gamma": Gamma,
         "zbox": ZBox, "flat": Flat}
KINDS = ("conv", "dense", "pool")


# ----------------------------------------------------------------------------- composites


@dataclass(frozen=True)
class Composite:
    """Which rule each fused layer gets, as zennit's ``LayerMapComposite`` /
    ``SpecialFirstLayerMapComposite`` (composites.py:27-108): ``names`` (layer path -> rule,
    first match wins; a path names a layer or any submodule around it), then ``first``
    (kinds -> rule, for the first layer of those kinds on the path from the input, in the
    order the forward pass runs them; zennit takes the first in module registration order,
    the same for a model written in order), then ``kinds`` (kind -> rule). Pools default to
    ``Norm(stabilizer)``, as zennit's ``layer_map_base``; a layer no entry covers is an error."""

    name: str
    kinds: tuple = ()
    first: tuple = ()
    names: tuple = ()
    stabilizer: float = 1e-6

    def rule_for(self, layer: Layer, first_index: dict):
        for path, rule in self.names:
            if path in layer.names:
                return rule
        for kinds, rule in self.first:
            if first_index.get(kinds) == layer.index:
                return rule
        for kinds, rule in self.kinds:
            if layer.kind in kinds:
                return rule
        if layer.kind == "pool":
            return Norm(self.stabilizer)
        raise ValueError(f"{self.name}: expected a rule for every layer, got none for a {layer.kind} layer "
                         f"({'/'.join(layer.names) or 'unnamed'}); name one in layer_rules")


def epsilon_plus(epsilon=1e-6, stabilizer=1e-6):
    """zennit EpsilonPlus (composites.py:306-337): z+ on convs, epsilon on dense layers."""
    return Composite("epsilon_plus", ((("conv",), ZPlus(stabilizer)), (("dense",), Epsilon(epsilon))),
                     stabilizer=stabilizer)


def epsilon_gamma_box(epsilon=1e-6, gamma=0.25, stabilizer=1e-6):
    """zennit EpsilonGammaBox (composites.py:248-303): z^B on the first conv, gamma on the
    other convs, epsilon on dense layers."""
    return Composite("epsilon_gamma_box", ((("conv",), Gamma(gamma, stabilizer)), (("dense",), Epsilon(epsilon))),
                     first=((("conv",), ZBox(stabilizer)),), stabilizer=stabilizer)


def epsilon_plus_flat(epsilon=1e-6, stabilizer=1e-6):
    """zennit EpsilonPlusFlat (composites.py:378-419): flat on the first linear layer (conv or
    dense), z+ on the other convs, epsilon on dense layers."""
    return Composite("epsilon_plus_flat", ((("conv",), ZPlus(stabilizer)), (("dense",), Epsilon(epsilon))),
                     first=((("conv", "dense"), Flat(stabilizer)),), stabilizer=stabilizer)


def epsilon_alpha2_beta1(epsilon=1e-6, stabilizer=1e-6):
    """zennit EpsilonAlpha2Beta1 (composites.py:340-375): alpha 2 beta 1 on convs, epsilon on dense layers."""
    return Composite("epsilon_alpha2_beta1", ((("conv",), AlphaBeta(2.0, 1.0, stabilizer)),
                                              (("dense",), Epsilon(epsilon))), stabilizer=stabilizer)


def single(name, rule, stabilizer=1e-6):
    """One rule on every conv and dense layer (pools: Norm), as a zennit ``LayerMapComposite``
    of ``[(Linear, rule)] + layer_map_base`` would."""
    return Composite(name, ((("conv", "dense"), rule),), stabilizer=stabilizer)


# ----------------------------------------------------------------------------- the table


def _pass(eqn, ins, outs, cts):
    """zennit's Pass (rules.py:352-360): the relevance of the output, unchanged."""
    r = [None] * len(ins)
    i = eqn.live.index(True)
    r[i] = [jnp.broadcast_to(c, jnp.shape(v)) for c, v in zip(cts[0], ins[i])]
    return r


def _sum_rule(stabilizer):
    def rule(eqn, ins, outs, cts):
        """zennit's Sum layer with Norm: each term's share of z = a +- b."""
        (a, b), z, r = (ins[0][0], ins[1][0]), outs[0][0], cts[0][0]
        g = r / stabilize(z, stabilizer)
        sign = -1.0 if eqn.name == "sub" else 1.0
        zeros = [jnp.zeros_like(v) for v in ins[0][1:]]
        return [[jnp.broadcast_to(a * g, jnp.shape(a))] + zeros,
                [jnp.broadcast_to(sign * b * g, jnp.shape(b))] + [jnp.zeros_like(v) for v in ins[1][1:]]]
    return rule


def lrp_rules(composite: Composite, names: list | None = None) -> jr.Rules:
    """The ``jaxpr_rules.Rules`` table of ``composite``; ``names``: the submodule names the
    forward pass was traced with (``SCOPE`` + index in the equations' name stacks)."""
    state: dict = {}

    def prepare(trace, x, out):
        fuse(trace, x, out, names)
        nonnegative(trace, x)
        layers = [e.params["layer"] for e in trace.tape if e.primitive is FUSED]
        first = {}
        for kinds, _ in composite.first:
            first[kinds] = next((lay.index for lay in layers if lay.kind in kinds), None)
        state["rules"] = {lay.index: composite.rule_for(lay, first) for lay in layers}

    def layer_rule(eqn, ins, outs, cts):
        layer = eqn.params["layer"]
        rule = state["rules"][layer.index]
        xs = ins[0]
        r = rule(layer, xs[0], outs[0][0], cts[0][0], xs)
        return [[r] + [jnp.zeros_like(v) for v in xs[1:]]]

    sums = _sum_rule(composite.stabilizer)

    def choose(eqn, trace):
        if eqn.primitive is FUSED:
            return layer_rule
        n = sum(eqn.live)
        if eqn.name in ("add", "add_any", "sub") and n == 2:
            return sums
        if eqn.name in ACTIVATIONS and n == 1:
            return _pass
        if eqn.name in GRADIENT and (n == 1 or eqn.name in ("concatenate", "select_n")):
            return jr.Rules("gradient").rule(eqn, trace) if eqn.name == "reduce_max" else jr.vjp_rule
        kind = WEIGHTED.get(eqn.name)
        what = "of two operands " if n > 1 else ""
        raise jr.UnsupportedPrimitive(
            f"{composite.name}: unsupported primitive {eqn.name!r} {what}on the explained path (LRP's rules cover "
            f"convolutions, dense layers, average pools and sums, elementwise affine maps, activations and max-pools)"
            + (f"; a {kind} layer needs its weights off the path" if kind else ""))

    return jr.Rules(composite.name, choose, prepare)

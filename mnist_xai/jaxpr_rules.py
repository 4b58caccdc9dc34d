"""Rule-based back-propagation on a traced jaxpr: one interpreter for every propagation method.

``propagate(fn, worlds, out_cotangent, rules)`` traces ``fn`` (images -> logits, any model the
adapter takes) with ``jax.make_jaxpr``, evaluates the jaxpr forward once per "world" (the
images; DeepLIFT adds its baseline as a second world), keeping every equation's inputs and
outputs, then walks the equations backwards. Each equation on the path from the input gets the
rule its ``Rules`` table chooses for it; every other equation its ordinary VJP (``jax.vjp`` of
the single primitive). Nested jaxprs of call-like primitives (jit/pjit, closed_call,
custom_jvp_call such as ``jax.nn.relu``, custom_vjp_call such as the project's ``conv3x3`` and
``max_pool_2x2``, checkpoint) are inlined: their custom derivative is replaced by the table's
rules, whose gradient defaults keep the conventions those custom rules encode (see
``Rules``). The interpreter runs while ``jax.jit`` traces the method, so the rules compile
into one XLA program; nothing per model.

A rule is ``rule(eqn, ins, outs, cts) -> input cotangents``: ``ins``/``outs`` hold each
operand's value in every world (``ins[i][w]``), ``cts[j][w]`` the incoming cotangent of output
``j`` in world ``w`` (zeros where nothing arrived); it returns one list of per-world cotangents
per operand (None for an operand off the path).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

#: Call-like primitives whose body is inlined, and the parameter holding it.
CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
         "checkpoint": "jaxpr", "remat": "jaxpr", "remat2": "jaxpr"}


@dataclass
class Eqn:
    """One recorded primitive application on the path from the input."""

    primitive: object
    params: dict
    ins: list  # keys of the operands' values
    outs: list  # keys of the results
    live: tuple  # which operands depend on the input (and are floating point)
    scope: str = ""  # the jax name stack it was traced under (flax.linen: the module path)

    @property
    def name(self) -> str:
        return self.primitive.name


@dataclass
class Trace:
    """The forward pass: the tape of equations on the path, and every value in every world."""

    tape: list = field(default_factory=list)
    values: dict = field(default_factory=dict)  # key -> tuple of per-world arrays
    concrete: dict = field(default_factory=dict)  # key -> numpy value of a literal
    live: set = field(default_factory=set)
    counter: int = 0

    def new(self, worlds_values, live=False, concrete=None) -> int:
        self.counter += 1
        self.values[self.counter] = tuple(worlds_values)
        if live:
            self.live.add(self.counter)
        if concrete is not None:
            self.concrete[self.counter] = concrete
        return self.counter


def _inexact(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _record(trace: Trace, jaxpr, consts, in_keys, worlds: int, scope: str = "") -> list:
    env = {}
    for v, c in zip(jaxpr.constvars, consts):
        env[v] = trace.new([c] * worlds, concrete=c if isinstance(c, (np.ndarray, np.generic)) else None)
    for v, k in zip(jaxpr.invars, in_keys):
        env[v] = k

    def key_of(a):
        if isinstance(a, jcore.Literal):
            return trace.new([a.val] * worlds, concrete=np.asarray(a.val))
        return env[a]

    for eqn in jaxpr.eqns:
        keys = [key_of(a) for a in eqn.invars]
        name = eqn.primitive.name
        where = "/".join(p for p in (scope, str(eqn.source_info.name_stack)) if p)
        if name in CALLS and CALLS[name] in eqn.params:
            sub = eqn.params[CALLS[name]]
            sub_jaxpr, sub_consts = (sub.jaxpr, sub.consts) if isinstance(sub, jcore.ClosedJaxpr) else (sub, ())
            outs = _record(trace, sub_jaxpr, sub_consts, keys, worlds, where)
            for v, k in zip(eqn.outvars, outs):
                env[v] = k
            continue
        params = eqn.primitive.get_bind_params(eqn.params)
        results = [eqn.primitive.bind(*[trace.values[k][w] for k in keys], **params) for w in range(worlds)]
        if not eqn.primitive.multiple_results:
            results = [[r] for r in results]
        live = tuple(k in trace.live for k in keys)
        out_keys = [trace.new([results[w][j] for w in range(worlds)],
                              live=any(live) and _inexact(results[0][j]))
                    for j in range(len(eqn.outvars))]
        for v, k in zip(eqn.outvars, out_keys):
            env[v] = k
        if any(live):
            trace.tape.append(Eqn(eqn.primitive, eqn.params, keys, out_keys, live, where))
    return [key_of(a) for a in jaxpr.outvars]


def forward(fn: Callable, worlds: list) -> tuple[Trace, int, int]:
    """``fn`` traced on ``worlds[0]``'s shape and evaluated on each world: ``(trace, input key, output key)``."""
    closed = jax.make_jaxpr(fn)(worlds[0])
    trace = Trace()
    x = trace.new(worlds, live=True)
    (out,) = _record(trace, closed.jaxpr, closed.consts, [x], len(worlds))
    return trace, x, out


def bind(eqn: Eqn, args):
    return eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params))


def vjp_rule(eqn: Eqn, ins, outs, cts):
    """The primitive's ordinary VJP, in each world, with respect to its operands on the path."""
    live = [i for i, l in enumerate(eqn.live) if l]
    result = [None] * len(ins)
    per_world = []
    for w in range(len(cts[0])):
        args = [v[w] for v in ins]

        def f(*lv, args=args):
            a = list(args)
            for i, v in zip(live, lv):
                a[i] = v
            return bind(eqn, a)

        _, back = jax.vjp(f, *[args[i] for i in live])
        g = [c[w] for c in cts]
        per_world.append(back(g if eqn.primitive.multiple_results else g[0]))
    for n, i in enumerate(live):
        result[i] = [per_world[w][n] for w in range(len(cts[0]))]
    return result


# ----------------------------------------------------------------------------- what an equation is


def relu_operand(eqn: Eqn, trace: Trace):
    """The index of x in a ReLU ``max(x, 0)`` (either order; 0 a literal or concrete zeros), else None."""
    if eqn.name != "max" or sum(eqn.live) != 1:
        return None
    i = eqn.live.index(True)
    other = trace.concrete.get(eqn.ins[1 - i])
    return i if other is not None and np.all(np.asarray(other) == 0) else None


def first_max_mask(x, y, axes):
    """1 at the first maximum (row-major over ``axes``) of each reduction of ``x`` to ``y``, else 0:
    the gradient convention of PyTorch's MaxPool2d, XLA's select_and_scatter and the project's
    ``max_pool_2x2`` (JAX's own ``reduce_max`` VJP splits ties evenly)."""
    axes = tuple(sorted(a % x.ndim for a in axes))
    kept = [a for a in range(x.ndim) if a not in axes]
    tied = x == jnp.expand_dims(y, axes)
    moved = jnp.transpose(tied, kept + list(axes))
    flat = moved.reshape(*moved.shape[:len(kept)], -1)
    first = flat & (jnp.cumsum(flat, axis=-1) == 1)
    inverse = np.argsort(kept + list(axes))
    return jnp.transpose(first.reshape(moved.shape), inverse).astype(x.dtype)


def unpool(eqn: Eqn, x, y, g):
    """Back through a max-pool primitive (``reduce_max`` or ``reduce_window_max``) in one world:
    ``g`` (shaped as ``y``) sent to the first maximum of each window of ``x``."""
    if eqn.name == "reduce_max":
        axes = eqn.params["axes"]
        return first_max_mask(x, y, axes) * jnp.expand_dims(g, tuple(sorted(axes)))
    _, back = jax.vjp(lambda v: bind(eqn, [v]), x)  # XLA's select_and_scatter: the first maximum
    return back(g)[0]


POOLS = ("reduce_max", "reduce_window_max")


class UnsupportedPrimitive(ValueError):
    """A primitive on the explained path that the method has no rule for."""


@dataclass
class Rules:
    """A rule table: ``choose(eqn, trace) -> rule or None`` (None: the gradient defaults below).

    Gradient defaults, the conventions of ``jax.nn.relu``'s and the project's custom
    derivatives (inlined, so re-stated here): ReLU ``max(x, 0)`` passes ``g * (x > 0)`` (0 at 0,
    as PyTorch; ``lax.max``'s own VJP gives 1/2 at a tie), and ``reduce_max`` sends the gradient to
    the first maximum (``first_max_mask``). Everything else: ``vjp_rule``.
    """

    name: str
    choose: Callable = lambda eqn, trace: None
    #: ``prepare(trace, input key, output key)``, run once after the forward pass: may rewrite
    #: ``trace.tape`` (LRP fuses each linear layer with its bias and BatchNorm into one equation).
    prepare: Callable | None = None

    def rule(self, eqn: Eqn, trace: Trace):
        chosen = self.choose(eqn, trace)
        if chosen is not None:
            return chosen
        i = relu_operand(eqn, trace)
        if i is not None:
            return relu_gradient_rule(i)
        if eqn.name == "reduce_max" and eqn.live[0]:
            return pool_gradient_rule
        return vjp_rule


def relu_gradient_rule(i):
    def rule(eqn, ins, outs, cts):
        r = [None, None]
        r[i] = [g * (x > 0).astype(g.dtype) for x, g in zip(ins[i], cts[0])]
        return r
    return rule


def pool_gradient_rule(eqn, ins, outs, cts):
    return [[unpool(eqn, x, y, g) for x, y, g in zip(ins[0], outs[0], cts[0])]] + [None] * (len(ins) - 1)


def _zeros_like(v):
    return jnp.zeros(jnp.shape(v), jnp.result_type(v))


def propagate(fn: Callable, worlds: list, out_cotangents: list, rules: Rules):
    """Back-propagate ``out_cotangents`` (one per world, shaped as ``fn``'s output; or a function
    of ``fn``'s outputs in each world that returns them, so the forward pass is not run twice to
    pick the targets) through ``fn`` with ``rules``: the cotangent of the input in each world,
    and ``fn``'s output in each world."""
    trace, x, out = forward(fn, worlds)
    if callable(out_cotangents):
        out_cotangents = out_cotangents(trace.values[out])
    if rules.prepare is not None:
        rules.prepare(trace, x, out)
    cts = {out: list(out_cotangents)}
    for eqn in reversed(trace.tape):
        incoming = [cts.pop(k, None) for k in eqn.outs]
        if all(c is None for c in incoming):
            continue
        ins = [trace.values[k] for k in eqn.ins]
        outs = [trace.values[k] for k in eqn.outs]
        incoming = [c if c is not None else [_zeros_like(v) for v in o] for c, o in zip(incoming, outs)]
        back = rules.rule(eqn, trace)(eqn, ins, outs, incoming)
        for k, live, g in zip(eqn.ins, eqn.live, back):
            if not live or g is None:
                continue
            cts[k] = g if k not in cts else [a + b for a, b in zip(cts[k], g)]
    grads = cts.get(x, [_zeros_like(v) for v in worlds])
    return grads, trace.values[out]

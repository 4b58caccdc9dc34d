"""The model adapter: how the methods and metrics see a model (its input contract, logits,
named layers, variables checked against its architecture), for every JAX model family.

Supported models, and the call each takes (``method.attribute(params, batch_stats, images,
targets)``; images are always NHWC, (N, H, W, C)):

* **flax.linen** ``Module``: ``attribute(params, batch_stats, images)``; a whole variables dict
  ``{"params": ..., "batch_stats": ...}`` may be passed as ``params`` (then ``batch_stats=None``).
  Layers by module path, ``"block3/conv2"``, reached with ``flax.linen.intercept_methods``.
* **flax.nnx** ``Module`` and **Equinox** ``Module``: they carry their own state, so
  ``attribute(None, None, images)``, or ``attribute(groups, None, images)`` with some of
  ``param_groups()``' entries replaced (other weights, e.g. randomised; the model is not changed).
  An Equinox model made with ``eqx.nn.make_with_state``
  (BatchNorm) takes its ``eqx.nn.State`` as ``batch_stats``: ``attribute(None, state, images)``.
  Inference mode is set on a copy (``nnx.view(deterministic=True, use_running_average=True)``,
  ``eqx.nn.inference_mode``); the user's model is never changed. Layers by attribute path,
  ``"block3.conv2"`` (canonical; ``"block3/conv2"`` is accepted, list items are numbers:
  ``"layers.0"``), reached by putting a capturing wrapper in place of that submodule in a
  copy: ``nnx.merge`` of the model's split state (a fresh graph) or ``eqx.tree_at``.
  Equinox's convention is one example per call, channels first: an Equinox model is vmapped
  over the batch and given (C, H, W) images (``adapt`` says otherwise).
* **Haiku** ``hk.transform(f)``: ``attribute(params, None, images)``;
  ``hk.transform_with_state(f)``: ``attribute(params, state, images)``. Layers by module name
  as in ``params`` (``"cnn/~/conv2_d_1"``), reached with ``hk.intercept_methods``.
* **A function** ``images -> logits``: ``attribute(None, None, images)``; no layers.

Training flags are found by name in the call's signature and set for inference:
``train=False``, ``training=False``, ``is_training=False``, ``deterministic=True``,
``inference=True``; ``adapt(model, eval_kwargs={...})`` names others. A layer's output is
always seen as NHWC (N, h, w, C): a channels-first model's activations are transposed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import sys
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from cli import first_line
from mnist_cnn_model import expected_shapes, shape_mismatch

from .checks import IMAGE_HW, as_image_batch, as_images

#: keyword -> the value that means inference, looked up in the model's call signature
EVAL_FLAGS = {"train": False, "training": False, "is_training": False, "deterministic": True, "inference": True}
LAYOUTS = ("NHWC", "NCHW")
SUPPORTED = ("a flax.linen or flax.nnx Module, an Equinox Module, a Haiku transform "
             "(hk.transform / hk.transform_with_state) or a function images -> logits")


@dataclasses.dataclass(frozen=True, eq=False)
class Adapted:
    """A model with the conventions it is called with, where the defaults do not fit
    (made by ``adapt``; pass it wherever a model goes)."""

    model: Any
    layout: str | None = None        # the layout the model itself takes: "NHWC" or "NCHW"
    per_example: bool | None = None  # the model takes one image, and is vmapped over the batch
    eval_kwargs: Mapping | None = None  # the keywords that put it in inference mode


def adapt(model, *, layout: str | None = None, per_example: bool | None = None,
          eval_kwargs: Mapping | None = None) -> Adapted:
    """``model`` with its calling conventions stated: ``layout`` of its own input ("NHWC", or
    "NCHW": images are transposed for it and its layers' outputs back; default NCHW for
    Equinox, else NHWC), ``per_example`` (it maps one image to one row of logits and is
    vmapped; default True for Equinox), ``eval_kwargs`` (the keywords its call takes for
    inference, e.g. ``{"mode": "eval"}``; default: the training flags found by name).

    ``GradCAM(adapt(eqx_model, layout="NHWC"), layer="conv2")``
    """
    if isinstance(model, Adapted):
        raise ValueError("model: expected a model to adapt, got one already adapted")
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if per_example is not None and not isinstance(per_example, bool):
        raise ValueError(f"per_example: expected True or False, got {per_example!r}")
    if eval_kwargs is not None and not (isinstance(eval_kwargs, Mapping) and all(isinstance(k, str) for k in eval_kwargs)):
        raise ValueError(f"eval_kwargs: expected a dict of keyword arguments, got {eval_kwargs!r}")
    return Adapted(model, layout, per_example, None if eval_kwargs is None else dict(eval_kwargs))


def _family(model) -> str:
    """"linen", "nnx", "equinox", "haiku" or "function"; the libraries are only looked up
    where they are already imported (a model of theirs means they are)."""
    if isinstance(model, nn.Module):
        return "linen"
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None and isinstance(model, nnx.Module):
        return "nnx"
    eqx = sys.modules.get("equinox")
    if eqx is not None and isinstance(model, eqx.Module):
        return "equinox"
    hk = sys.modules.get("haiku")
    if hk is not None and isinstance(model, (hk.Transformed, hk.TransformedWithState)):
        return "haiku"
    if callable(model) and not isinstance(model, type):
        return "function"
    raise ValueError(f"model: expected {SUPPORTED}, got {type(model).__name__}")


def _eval_kwargs(fn) -> dict:
    """The training flags ``fn`` takes by name, set for inference."""
    try:
        names = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C function: no signature to read
        return {}
    return {k: v for k, v in EVAL_FLAGS.items() if k in names}


def _haiku_name(transformed) -> str:
    """The name of the function ``hk.transform`` was given (it keeps it in apply's closure)."""
    fn = transformed
    for _ in range(3):  # hk.transform is without_state(transform_with_state(f))
        fn = getattr(fn, "apply", fn)
        try:
            fn = inspect.getclosurevars(fn).nonlocals.get("f")
        except (TypeError, ValueError):
            fn = None
        if fn is None or not hasattr(fn, "apply"):
            break
    name = getattr(fn, "__name__", "<lambda>")
    return "hk_transform" if name == "<lambda>" else name


_NO_SCOPE = contextlib.nullcontext()


class _Hooked:
    """Stands in for a submodule in a copy of the model: calls it and hands its output to
    ``hook(name, output)``, which may return a changed output. Everything else (attributes,
    items) is the submodule's."""

    def __init__(self, inner, name: str, hook: Callable, scope: Callable | None = None):
        self.inner, self.name, self.hook, self.scope = inner, name, hook, scope

    def __call__(self, *args, **kwargs):
        if self.scope is None:
            return self.hook(self.name, self.inner(*args, **kwargs))
        with self.scope(self.name):
            out = self.inner(*args, **kwargs)
        return self.hook(self.name, out)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def __getitem__(self, item):
        return self.inner[item]

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        return iter(self.inner)


def _child(node, key):
    return node[key] if isinstance(key, int) else getattr(node, key)


def _dotted(path) -> str:
    return ".".join(str(k) for k in path)


def _equinox_submodules(node, path=()):
    """``(path, submodule)`` of every Equinox module under ``node`` (fields, lists, tuples)."""
    eqx = sys.modules["equinox"]
    if isinstance(node, eqx.Module):
        if path and callable(node):  # not an eqx.nn.StateIndex, which is looked up, never called
            yield path, node
        for f in dataclasses.fields(node):
            if hasattr(node, f.name):
                yield from _equinox_submodules(getattr(node, f.name), path + (f.name,))
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            yield from _equinox_submodules(item, path + (i,))


class ExplainedModel:
    """How the explainers and metrics see a model (any family in the module docstring): its
    input contract, its logits, and named layers.

    Built once per model (``explained``); every compiled call goes through it.
    """

    def __init__(self, model):
        options = model if isinstance(model, Adapted) else Adapted(model)
        model = options.model
        self.family = _family(model)
        self.raw = model
        self.module = model if self.family == "linen" else None
        self.fn = model if self.family == "function" else None
        self.layout = options.layout or ("NCHW" if self.family == "equinox" else "NHWC")
        self.per_example = options.per_example if options.per_example is not None else self.family == "equinox"
        call = {"linen": lambda: type(model).__call__, "nnx": lambda: type(model).__call__,
                "equinox": lambda: type(model).__call__, "haiku": lambda: model.apply,
                "function": lambda: model}[self.family]()
        self.call_kwargs = dict(options.eval_kwargs) if options.eval_kwargs is not None else _eval_kwargs(call)
        if self.family == "haiku":
            self.stateful = isinstance(model, sys.modules["haiku"].TransformedWithState)
            self.name = _haiku_name(model)
        elif self.family == "function":
            self.name = getattr(model, "__name__", "<lambda>")
        else:
            self.name = type(model).__name__
        if self.name == "<lambda>":
            self.name = "logits_fn"
        self.image_shape = getattr(model, "image_shape", None)   # MNISTCNN: (28, 28, 1)
        self.input_range = getattr(model, "input_range", None)   # MNISTCNN: (0.0, 1.0)
        # The fast paths of a model that offers them: features/head for the CAMs (MNISTCNN's
        # folded last conv block), segments/stem/conv_block for incremental occlusion.
        plain = self.module is not None and options.layout is None and not self.per_example
        self.split = plain and all(callable(getattr(model, m, None)) for m in ("features", "head"))
        self.incremental = plain and all(callable(getattr(model, m, None)) for m in ("segments", "stem", "conv_block"))
        self._graphdef = None  # nnx: the model's graph, from the last split
        self._static = None    # equinox: the model's non-array part
        self._classes: dict = {}  # image shape -> logits' width
        self._layers: dict = {}   # (layer asked for, image shape) -> the layer explained

    # -- input checks (host side, before anything is compiled)

    def images(self, images) -> np.ndarray:
        """The images as a float32 batch (N, H, W, C) the model accepts; ValueError otherwise."""
        shape = np.shape(images)
        if len(shape) == 4 and shape[1] in (1, 3, 4) and shape[3] > 4 \
                and (self.image_shape is None or tuple(shape[1:]) != tuple(self.image_shape)):
            raise ValueError(f"images: expected NHWC images (N, H, W, C), got shape {tuple(shape)}, which is "
                             f"channels-first (N, C, H, W); pass images.transpose(0, 2, 3, 1)")
        if self.image_shape is not None and tuple(self.image_shape) == (*IMAGE_HW, 1) \
                and self.input_range is not None and tuple(self.input_range) == (0.0, 1.0):
            return as_image_batch(images)  # the MNIST digit contract, with its messages
        x = as_images(images, self.input_range)
        if self.image_shape is not None and x.shape[1:] != tuple(self.image_shape):
            raise ValueError(f"images: {self.name} expects images of shape {tuple(self.image_shape)}, "
                             f"got a batch of shape {x.shape}")
        return x

    def _own_state(self, params, batch_stats, state_ok: bool):
        """The check for models that carry their own state (nnx, Equinox)."""
        library = "flax.nnx" if self.family == "nnx" else "Equinox"
        if params is not None:
            raise ValueError(f"params: a{'n' if library == 'Equinox' else ''} {library} Module carries its own "
                             f"state; call attribute(None, None, images, targets), got params of type "
                             f"{type(params).__name__}")
        if batch_stats is not None and not state_ok and not (hasattr(batch_stats, "keys") and not len(batch_stats)):
            hint = (" (an eqx.nn.State goes here for a model made with eqx.nn.make_with_state)"
                    if self.family == "equinox" else "")
            raise ValueError(f"batch_stats: a {library} Module carries its own state; call attribute(None, None, "
                             f"images, targets){hint}, got batch_stats of type {type(batch_stats).__name__}")

    def variables(self, params, batch_stats, image_shape):
        """What the compiled calls take as the model's variables, checked. flax.linen:
        ``{"params": ..., "batch_stats": ...}`` against the shapes ``model.init`` makes for
        ``image_shape`` images (weights of another architecture would otherwise run and explain
        the wrong network); nnx: the model's state; Equinox: its arrays (and State); Haiku:
        ``(params, state)``; a function: None."""
        if self.family == "nnx":
            nnx = sys.modules["flax.nnx"]
            groups = self._groups_given(params)
            self._own_state(None if groups is not None else params, batch_stats, state_ok=False)
            self._graphdef, state = nnx.split(self.raw)
            if groups is not None:
                state = jax.tree_util.tree_map(lambda a: a, state)  # a copy: the model keeps its own
                nnx.replace_by_pure_dict(state, groups)
            return state
        if self.family == "equinox":
            eqx = sys.modules["equinox"]
            is_state = isinstance(batch_stats, eqx.nn.State)
            groups = self._groups_given(params)
            self._own_state(None if groups is not None else params, batch_stats, state_ok=is_state)
            arrays, self._static = eqx.partition(self.raw, eqx.is_array)
            for name, sub in (groups or {}).items():
                arrays = eqx.tree_at(lambda m, name=name: getattr(m, name), arrays, sub)
            return arrays, (batch_stats if is_state else None)
        if self.family == "haiku":
            return self._haiku_variables(params, batch_stats)
        if self.module is None:
            return None
        if hasattr(params, "keys") and "params" in params and hasattr(params["params"], "keys"):
            if batch_stats is not None and (not hasattr(batch_stats, "keys") or len(batch_stats)):
                raise ValueError("batch_stats: expected None when params is a whole variables dict "
                                 "({'params': ..., 'batch_stats': ...}), got both")
            params, batch_stats = params["params"], params.get("batch_stats")
        variables = {"params": params}
        if batch_stats is not None and (not hasattr(batch_stats, "keys") or len(batch_stats)):
            variables["batch_stats"] = batch_stats
        try:
            wanted = {name.split("/")[0] for name in expected_shapes(self.module, tuple(image_shape))}
        except Exception:  # unhashable, or an init that needs more than images: nothing to check against
            return variables
        for c in sorted(wanted):
            if not hasattr(variables.get(c), "keys"):
                got = variables.get(c, batch_stats if c == "batch_stats" else None)
                raise ValueError(f"{c}: expected the {self.name}'s {c} (a dict of arrays), "
                                 f"got {type(got).__name__}")
        mismatch = shape_mismatch(self.module, {c: variables[c] for c in wanted}, tuple(image_shape))
        if mismatch:
            name, want, found = mismatch
            raise ValueError(f"params/batch_stats do not fit {self.name}: {name} expected {want}, got {found}")
        return {c: variables[c] for c in variables if c in wanted or c == "params"}

    def param_groups(self) -> dict:
        """An nnx or Equinox model's own parameters, one entry per top-level submodule (attribute)
        that holds any: ``{"stem": {"kernel": ..., "bias": ...}, ...}`` (nnx: ``nnx.to_pure_dict``
        of its ``nnx.Param`` state, running statistics and RNG state left out; Equinox: the
        arrays of each field). What the randomisation metrics re-initialise group by group, as
        they do a flax.linen or Haiku params dict: ``attribute(groups, None, images)`` explains the
        model with these parameters in place of its own (some groups or all)."""
        if self.family == "nnx":
            nnx = sys.modules["flax.nnx"]
            return dict(nnx.to_pure_dict(nnx.state(self.raw, nnx.Param)))
        if self.family == "equinox":
            eqx = sys.modules["equinox"]
            arrays, _ = eqx.partition(self.raw, eqx.is_array)
            return {f.name: getattr(arrays, f.name) for f in dataclasses.fields(arrays)
                    if jax.tree_util.tree_leaves(getattr(arrays, f.name))}
        raise ValueError(f"param_groups: a {self.family} model's parameters are its params dict; "
                         f"expected a flax.nnx or Equinox Module, got {self.name}")

    def _groups_given(self, params):
        """``params`` when it is a dict of some of ``param_groups``' entries, same structure and
        shapes (nnx, Equinox); None when it is not a dict (``_own_state`` then checks it)."""
        if not isinstance(params, dict):
            return None
        own = self.param_groups()

        def spec(tree):
            leaves, treedef = jax.tree_util.tree_flatten(tree)
            return treedef, [np.shape(a) for a in leaves]
        wrong = [k for k in params if k not in own or spec(params[k]) != spec(own[k])]
        if wrong or not params:
            library = "flax.nnx" if self.family == "nnx" else "Equinox"
            raise ValueError(f"params: a {library} Module takes None (its own state) or some of its parameter "
                             f"groups ({', '.join(own)}) with their own structure and shapes, as "
                             f"explained(model).param_groups() gives them; got "
                             f"{'an empty dict' if not params else 'a mismatch in ' + ', '.join(map(str, wrong))}")
        return params

    def _haiku_variables(self, params, batch_stats):
        if not hasattr(params, "keys"):
            raise ValueError(f"params: expected the Haiku params (a dict of dicts, from f.init), "
                             f"got {type(params).__name__}")
        empty = batch_stats is None or (hasattr(batch_stats, "keys") and not len(batch_stats))
        if self.stateful:
            if batch_stats is None or not hasattr(batch_stats, "keys"):
                raise ValueError(f"batch_stats: expected the Haiku state of hk.transform_with_state "
                                 f"(params, state = f.init(...)), got {type(batch_stats).__name__}")
            return params, batch_stats
        if not empty:
            raise ValueError(f"batch_stats: an hk.transform model has no state; call attribute(params, None, "
                             f"images, targets) (state comes with hk.transform_with_state), got "
                             f"{type(batch_stats).__name__}")
        return params, None

    def num_classes(self, variables, images: np.ndarray) -> int:
        """The logits' width for these images' shape; ValueError if they do not fit the model
        or it does not return (N, classes) logits. Traced once per image shape."""
        key = images.shape[1:]
        if key not in self._classes:
            spec = jax.ShapeDtypeStruct((1, *key), jnp.float32)
            try:
                out = jax.eval_shape(self.logits, variables, spec)
            except Exception as e:  # noqa: BLE001 - whatever the model raises on a wrong shape
                raise ValueError(f"images: shape {images.shape} does not fit {self.name}: {first_line(e, 200)}") from None
            if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 1:
                shape = getattr(out, "shape", type(out).__name__)
                raise ValueError(f"model: expected {self.name} to return logits of shape (N, classes), "
                                 f"got {shape} for one image")
            self._classes[key] = int(out.shape[1])
        return self._classes[key]

    # -- traced

    def _forward(self, variables, x, hook=None, only: str | None = None, scope: Callable | None = None):
        """The model on ``x`` (in its own layout, one image or a batch as it takes them), with
        ``hook(name, output) -> output`` on each submodule's ``__call__`` (only ``only``'s,
        where given and the family wraps submodules one by one), and each such call traced
        inside the context ``scope(name)`` where given (LRP's rules by layer path: a
        ``jax.named_scope`` that the traced equations keep)."""
        kw = self.call_kwargs
        if scope is not None and hook is None:
            hook = lambda name, out: out  # noqa: E731
        enter = scope if scope is not None else (lambda name: _NO_SCOPE)
        if self.family == "function":
            return self.fn(x)
        if self.family == "linen":
            if hook is None:
                return self.module.apply(variables, x, **kw)

            def interceptor(next_fun, args, kwargs, context):
                if context.method_name == "__call__" and context.module.path:
                    name = "/".join(context.module.path)
                    with enter(name):
                        out = next_fun(*args, **kwargs)
                    return hook(name, out)
                return next_fun(*args, **kwargs)

            with nn.intercept_methods(interceptor):
                return self.module.apply(variables, x, **kw)
        if self.family == "haiku":
            hk = sys.modules["haiku"]
            params, state = variables

            def run():
                if self.stateful:
                    return self.raw.apply(params, state, None, x, **kw)[0]
                return self.raw.apply(params, None, x, **kw)
            if hook is None:
                return run()

            def interceptor(next_fun, args, kwargs, context):
                if context.method_name == "__call__":
                    with enter(context.module.module_name):
                        out = next_fun(*args, **kwargs)
                    return hook(context.module.module_name, out)
                return next_fun(*args, **kwargs)

            with hk.intercept_methods(interceptor):
                return run()
        if self.family == "nnx":
            nnx = sys.modules["flax.nnx"]
            m = nnx.merge(self._graphdef, variables)  # a fresh copy: wrapping it leaves the user's model alone
            m = nnx.view(m, deterministic=True, use_running_average=True, raise_if_not_found=False)
            if hook is not None:
                subs = [(p, s) for p, s in nnx.iter_modules(m) if p and (only is None or _dotted(p) == only)]
                for path, sub in sorted(subs, key=lambda ps: -len(ps[0])):  # the deepest first
                    parent = functools.reduce(_child, path[:-1], m)
                    wrapped = _Hooked(sub, _dotted(path), hook, scope)
                    if isinstance(path[-1], int):
                        parent[path[-1]] = wrapped
                    else:
                        setattr(parent, path[-1], wrapped)
            return m(x, **kw)
        # equinox
        eqx = sys.modules["equinox"]
        arrays, state = variables
        m = eqx.nn.inference_mode(eqx.combine(arrays, self._static))
        if hook is not None:
            paths = [p for p, _ in _equinox_submodules(m) if only is None or _dotted(p) == only]
            for path in sorted(paths, key=len, reverse=True):  # the deepest first, each with its hooked children
                where = functools.partial(lambda path, t: functools.reduce(_child, path, t), path)
                m = eqx.tree_at(where, m, _Hooked(where(m), _dotted(path), hook, scope))
        return m(x, **kw) if state is None else m(x, state, **kw)[0]

    def _to_model(self, x):
        """NHWC images (a batch, or one image per example) -> the model's own layout."""
        if self.layout == "NHWC":
            return x
        return jnp.moveaxis(x, -1, -3)

    def _from_model(self, a):
        """A layer's output in the model's layout -> NHWC (spatial outputs only)."""
        spatial = a.ndim == (3 if self.per_example else 4)
        return jnp.moveaxis(a, -3, -1) if self.layout == "NCHW" and spatial else a

    def _run(self, fn, images, *more):
        """``fn(x, *more)`` per example (vmapped) or on the batch, as the model takes them."""
        return jax.vmap(fn)(images, *more) if self.per_example else fn(images, *more)

    def logits(self, variables, images):
        return self._run(lambda x: self._forward(variables, self._to_model(x)), images)

    def scoped_logits(self, variables, images, scope: Callable):
        """``logits``, with every submodule's call traced inside ``scope(name)`` (a function
        only for a plain function, which has no submodules)."""
        if self.family == "function":
            return self.logits(variables, images)
        return self._run(lambda x: self._forward(variables, self._to_model(x), scope=scope), images)

    def canonical(self, layer: str) -> str:
        """A layer's name as the model's family writes it ("a.b" for nnx/Equinox, "a/b" for linen)."""
        if self.family in ("nnx", "equinox"):
            return layer.replace("/", ".")
        return layer

    def layer_call(self, variables, images, layer: str, delta=None):
        """``(logits, the output of submodule ``layer``)`` (NHWC), with ``delta`` added to that
        output (zeros: its gradient is the gradient with respect to the layer's output)."""

        def one(x, d):
            outputs = []

            def hook(name, out):
                if name != layer:
                    return out
                if outputs:
                    raise ValueError(f"layer {layer!r}: expected a layer called once per forward pass, "
                                     f"{self.name} calls it more than once")
                if d is not None:
                    out = out + (d if self.layout == "NHWC" else jnp.moveaxis(d, -1, -3))
                outputs.append(out)
                return out

            logits = self._forward(variables, self._to_model(x), hook, only=layer)
            if not outputs:
                raise ValueError(f"layer {layer!r}: {self.name} did not call it")
            return logits, self._from_model(outputs[0])

        return self._run(one, images, delta)

    def layers(self, variables, image_shape) -> list[tuple[str, tuple]]:
        """Every submodule the forward pass calls, in the order their calls finish, with the
        shape of its output for one image, NHWC: ``[("block1/conv1", (1, 28, 28, 8)), ...]``."""
        seen = []

        def hook(name, out):
            shape = tuple(getattr(out, "shape", ()))
            if self.per_example:
                shape = (1, *shape)
            if self.layout == "NCHW" and len(shape) == 4:
                shape = (shape[0], shape[2], shape[3], shape[1])
            seen.append((name, shape))
            return out

        jax.eval_shape(lambda v, x: self._run(lambda xi: self._forward(v, self._to_model(xi), hook), x),
                       variables, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
        return seen

    def check_layer(self, layer: str | None, variables, image_shape) -> str | None:
        """The layer a CAM explains, checked: None for the features/head fast path, else a
        submodule name whose output is spatial (N, h, w, C). One ValueError line otherwise."""
        if layer is None and self.split:
            return None
        if self.family == "function":
            raise ValueError(f"layer: a CAM method needs a flax.linen Module or another model with named layers "
                             f"(a flax.nnx or Equinox Module, a Haiku transform) to reach a layer in, got {self.name}")
        key = (layer, tuple(image_shape))
        if key in self._layers:
            return self._layers[key]
        seen = self.layers(variables, image_shape)
        shapes = dict(seen)
        name = self.canonical(layer) if isinstance(layer, str) else layer
        if layer is None:
            spatial = [n for n, shape in seen if len(shape) == 4]
            if not spatial:
                raise ValueError(f"layer: {self.name} has no layer with a spatial output (N, h, w, C) to explain")
            chosen = spatial[-1]
        elif not isinstance(layer, str) or name not in shapes:
            raise ValueError(f"layer: expected one of {self.name}'s layers ({', '.join(dict.fromkeys(shapes))}), "
                             f"got {layer!r}")
        elif len(shapes[name]) != 4:
            raise ValueError(f"layer {layer!r}: expected a spatial output (N, h, w, C), got shape "
                             f"{shapes[name]} for one image")
        else:
            chosen = name
        self._layers[key] = chosen
        return chosen


def explained(model) -> ExplainedModel:
    """The ``ExplainedModel`` of ``model``, one per model (flax modules compare by value)."""
    try:
        return _explained_cached(model)
    except TypeError:  # unhashable: a fresh one
        return ExplainedModel(model)


@functools.lru_cache(maxsize=32)
def _explained_cached(model) -> ExplainedModel:
    return ExplainedModel(model)

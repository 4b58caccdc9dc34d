"""The model adapter: how the methods and metrics see a model (its input contract, logits,
named layers, variables checked against its architecture)."""
from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from cli import first_line
from mnist_cnn_model import expected_shapes, shape_mismatch

from .checks import IMAGE_HW, as_image_batch, as_images


class ExplainedModel:
    """How the explainers and metrics see a model: a ``flax.linen`` module (or a plain
    function ``images -> logits``), its input contract, its logits, and named layers.

    Built once per model (``explained``); every compiled call goes through it.
    """

    def __init__(self, model):
        if isinstance(model, nn.Module):
            self.module, self.fn = model, None
            call = inspect.signature(type(model).__call__).parameters
            self.call_kwargs = {"train": False} if "train" in call else {}
        elif callable(model):
            self.module, self.fn, self.call_kwargs = None, model, {}
        else:
            raise ValueError(f"model: expected a flax.linen Module or a function images -> logits, "
                             f"got {type(model).__name__}")
        self.name = type(model).__name__ if self.module is not None else getattr(model, "__name__", "<lambda>")
        if self.name == "<lambda>":
            self.name = "logits_fn"
        self.image_shape = getattr(model, "image_shape", None)   # MNISTCNN: (28, 28, 1)
        self.input_range = getattr(model, "input_range", None)   # MNISTCNN: (0.0, 1.0)
        # The fast paths of a model that offers them: features/head for the CAMs (MNISTCNN's
        # folded last conv block), segments/stem/conv_block for incremental occlusion.
        self.split = self.module is not None and all(callable(getattr(model, m, None)) for m in ("features", "head"))
        self.incremental = self.module is not None and all(
            callable(getattr(model, m, None)) for m in ("segments", "stem", "conv_block"))
        self._classes: dict = {}  # image shape -> logits' width
        self._layers: dict = {}   # (layer asked for, image shape) -> the layer explained

    # -- input checks (host side, before anything is compiled)

    def images(self, images) -> np.ndarray:
        """The images as a float32 batch (N, H, W, C) the model accepts; ValueError otherwise."""
        if self.image_shape is not None and tuple(self.image_shape) == (*IMAGE_HW, 1) \
                and self.input_range is not None and tuple(self.input_range) == (0.0, 1.0):
            return as_image_batch(images)  # the MNIST digit contract, with its messages
        x = as_images(images, self.input_range)
        if self.image_shape is not None and x.shape[1:] != tuple(self.image_shape):
            raise ValueError(f"images: {self.name} expects images of shape {tuple(self.image_shape)}, "
                             f"got a batch of shape {x.shape}")
        return x

    def variables(self, params, batch_stats, image_shape) -> dict | None:
        """``{"params": ..., "batch_stats": ...}`` checked against the shapes ``model.init``
        makes for ``image_shape`` images: weights of another architecture would otherwise
        run (inference reads the kernels directly) and explain the wrong network."""
        if self.module is None:
            return None
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

    def logits(self, variables, images):
        if self.module is None:
            return self.fn(images)
        return self.module.apply(variables, images, **self.call_kwargs)

    def layer_call(self, variables, images, layer: str, delta=None):
        """``(logits, the output of submodule ``layer``)``, with ``delta`` added to that output
        (zeros: its gradient is the gradient with respect to the layer's output)."""
        outputs = []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and "/".join(context.module.path) == layer:
                if outputs:
                    raise ValueError(f"layer {layer!r}: expected a layer called once per forward pass, "
                                     f"{self.name} calls it more than once")
                if delta is not None:
                    out = out + delta
                outputs.append(out)
            return out

        with nn.intercept_methods(interceptor):
            logits = self.module.apply(variables, images, **self.call_kwargs)
        return logits, outputs[0]

    def layers(self, variables, image_shape) -> list[tuple[str, tuple]]:
        """Every submodule the forward pass calls, in the order their calls finish, with the
        shape of its output for one image: ``[("block1/conv1", (1, 28, 28, 8)), ...]``."""
        seen = []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.path:
                seen.append(("/".join(context.module.path), tuple(getattr(out, "shape", ()))))
            return out

        def run(v, x):
            with nn.intercept_methods(interceptor):
                return self.module.apply(v, x, **self.call_kwargs)

        jax.eval_shape(run, variables, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
        return seen

    def check_layer(self, layer: str | None, variables, image_shape) -> str | None:
        """The layer a CAM explains, checked: None for the features/head fast path, else a
        submodule path whose output is spatial (N, h, w, C). One ValueError line otherwise."""
        if layer is None and self.split:
            return None
        if self.module is None:
            raise ValueError(f"layer: a CAM method needs a flax.linen Module to reach a layer in, got {self.name}")
        key = (layer, tuple(image_shape))
        if key in self._layers:
            return self._layers[key]
        seen = self.layers(variables, image_shape)
        shapes = dict(seen)
        if layer is None:
            spatial = [name for name, shape in seen if len(shape) == 4]
            if not spatial:
                raise ValueError(f"layer: {self.name} has no layer with a spatial output (N, h, w, C) to explain")
            chosen = spatial[-1]
        elif not isinstance(layer, str) or layer not in shapes:
            raise ValueError(f"layer: expected one of {self.name}'s layers ({', '.join(dict.fromkeys(shapes))}), "
                             f"got {layer!r}")
        elif len(shapes[layer]) != 4:
            raise ValueError(f"layer {layer!r}: expected a spatial output (N, h, w, C), got shape "
                             f"{shapes[layer]} for one image")
        else:
            chosen = layer
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

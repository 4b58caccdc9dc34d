"""Explanations of image classifiers, batched and jitted: GradCAM and friends for any Flax model.

The MNIST CNN (``mnist_cnn_model.MNISTCNN``) is the model this toolkit ships and knows best,
but every method works on any ``flax.linen`` module (or a plain function) that maps images
to logits. The contract with the model, documented once:

* **Gradient and perturbation methods** (saliency, Gradient x Input, Integrated Gradients,
  SmoothGrad, Occlusion): ``model.apply(variables, images[, train=False]) -> logits (N, K)``
  for images (N, H, W, C); ``train=False`` is passed where ``__call__`` takes it. A plain
  function ``logits_fn(images) -> logits`` works too (then pass ``params=None, batch_stats=None``).
* **CAM methods** (GradCAM, GradCAM++, Score-CAM) also need a spatial layer: ``layer="block3/conv2"``
  names a submodule by its path in the module tree (the path its variables have, joined by
  "/"); its ``__call__`` output (N, h, w, C) is reached with ``flax.linen.intercept_methods``,
  without rewriting the model. ``layer=None`` takes the model's ``features``/``head`` methods
  where it has them (``MNISTCNN``: the last conv block, the fast path), else the last spatial
  layer to finish. A wrong name gets the list of the layers there are.
* ``params`` and ``batch_stats`` are the model's variables; ``batch_stats`` may be ``{}`` or
  ``None`` for a model without BatchNorm. They are checked against the shapes ``model.init``
  makes for the images' shape.
* **Input range.** A model that declares ``input_range`` (``MNISTCNN``: (0, 1)) gets its
  pixels checked against it, and integer pixels are read as 0-255 and scaled to [0, 1].
  Another model's range is its own (standardised inputs work); give IG and Occlusion
  baselines, and SmoothGrad's ``input_range``, in that range.

Images are (N, H, W, C); a single image may be (H, W, C) or (H, W). For MNISTCNN a digit may
also be (28, 28), (28, 28, 1) or (N, 28, 28). "Score" below always means the target class's
**logit** (pre-softmax).

Every method has one batched call, named as in Captum::

    maps = method.attribute(params, batch_stats, images, target_classes=None)  # (N, H, W)
    maps, logits = method.attribute(..., return_logits=True)  # the logits from the same compiled call

``target_classes=None`` explains the predicted class. Raw maps are returned (signed where
the method is signed); ``normalize_maps`` scales them to [0, 1] for display, safely on a
constant map. ``explain`` is ``attribute`` plus the predictions and target logits; the
one-image API works as written::

    gradcam = GradCAM(model)
    heatmap, pred, score = gradcam.compute_gradcam(params, batch_stats, image)

Gradient convention: 2x2 max-pool gradients at tied maxima go to the first maximum, as in
PyTorch, TensorFlow and XLA (``mnist_cnn_model.max_pool_2x2``), so the maps equal Captum's
and pytorch-grad-cam's on the same weights (``tests/test_reference_maps.py``).

Methods: GradCAM, GradCAMPlusPlus, ScoreCAM, Saliency, GradientXInput,
IntegratedGradients, SmoothGrad, Occlusion. Each docstring cites its paper.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, PartitionSpec as P

from cli import first_line
from mnist_cnn_model import expected_shapes, max_pool_2x2, shape_mismatch

NUM_CLASSES = 10
IMAGE_HW = (28, 28)


# ----------------------------------------------------------------------------- input checks


PIXEL_SLACK = 1e-4  # float pixels may stray this far outside [0, 1] (resampling, rounding)


def whole_number(name: str, value, least: int = 1, most: int | None = None) -> int:
    """``value`` as an int in [least, most]; ValueError naming ``name`` for 2.5, "10", True, NaN..."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or value < least or (most is not None and value > most):
        span = f">= {least}" if most is None else f"in {least}-{most}"
        raise ValueError(f"{name}: expected an integer {span}, got {value!r}")
    return int(value)


def finite_number(name: str, value, least: float | None = None) -> float:
    """``value`` as a finite float (>= ``least`` if given); ValueError naming ``name`` otherwise."""
    try:
        v = float(value) if not isinstance(value, (str, bytes, bool)) else float("nan")
    except (TypeError, ValueError):
        v = float("nan")
    if not np.isfinite(v) or (least is not None and v < least):
        bound = "" if least is None else f" >= {least:g}"
        raise ValueError(f"{name}: expected a finite number{bound}, got {value!r}")
    return v


def _describe(x) -> str:
    return f"shape {tuple(np.shape(x))} dtype {np.asarray(x).dtype}"


def _float_pixels(images, integers: bool) -> np.ndarray:
    """``images`` as float32; integer pixels (uint8 or any integer dtype) read as 0-255 and
    scaled to [0, 1] where ``integers`` (a [0, 1] model), refused otherwise."""
    arr = np.asarray(images)
    if np.issubdtype(arr.dtype, np.integer):
        if not integers:
            raise ValueError(f"images: expected float images in the model's input range, got integers "
                             f"({_describe(images)}); only a model with input_range (0, 1) reads 0-255 pixels")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"images: expected integer pixels in 0-255, got values in "
                             f"[{arr.min()}, {arr.max()}] ({_describe(images)})")
        return arr.astype(np.float32) / 255.0
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == bool):
        kinds = "a float or uint8 array" if integers else "a float array"
        raise ValueError(f"images: expected {kinds}, got {_describe(images)}")
    # No copy when the input is float32 already: nothing downstream writes into it
    # (chunks are slices or new padded arrays), so callers' arrays are never touched.
    return arr.astype(np.float32, copy=False)


def as_image_batch(images) -> np.ndarray:
    """Validate and convert to a float32 batch (N, 28, 28, 1) in [0, 1]; never mutates input."""
    arr = _float_pixels(images, integers=True)
    if arr.shape == IMAGE_HW:
        arr = arr[None, :, :, None]
    elif arr.shape == (*IMAGE_HW, 1):
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[1:] == IMAGE_HW:
        arr = arr[..., None]
    elif arr.ndim == 3 and arr.shape[:2] == IMAGE_HW:  # one (28, 28, C) image
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1:3] != IMAGE_HW:
        raise ValueError(f"images: expected (N, 28, 28, 1), (28, 28, 1) or (28, 28) grayscale, "
                         f"got {_describe(images)}")
    if arr.shape[3] != 1:
        raise ValueError(f"images: expected 1 grayscale channel, got {arr.shape[3]} channels "
                         f"({_describe(images)}); convert colour images to gray first")
    if arr.shape[0] == 0:
        raise ValueError(f"images: expected at least one image, got an empty batch ({_describe(images)})")
    if not _all_finite(arr):
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"images: expected finite pixel values, got {bad} NaN/inf values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -PIXEL_SLACK or hi > 1 + PIXEL_SLACK:  # e.g. floats in 0-255, or standardised images
        raise ValueError(f"images: expected float pixels in [0, 1] (the model standardises them itself) "
                         f"or uint8 0-255, got values in [{lo:g}, {hi:g}]")
    return arr


def _all_finite(arr: np.ndarray) -> bool:
    """Whether every value is finite, in one BLAS pass: x . 0 is NaN iff some x is NaN or inf
    (faster than ``np.isfinite(arr).all()``, with no temporary)."""
    flat = arr.reshape(-1)
    with np.errstate(invalid="ignore"):
        return bool(np.isfinite(np.dot(flat, np.zeros_like(flat))))


def as_targets(target_classes, n: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """None -> -1 for every image (meaning: the predicted class); else int32 (N,) in [0, 10)."""
    if target_classes is None:
        return np.full((n,), -1, np.int32)
    t = np.asarray(target_classes)
    if t.ndim == 0:
        t = np.full((n,), t)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"target_classes: expected one class per image ({n}), got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        if not (np.issubdtype(t.dtype, np.floating) and np.all(np.mod(t, 1) == 0)):
            raise ValueError(f"target_classes: expected integers, got dtype {t.dtype}")
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        bad = t[(t < 0) | (t >= num_classes)][0]
        raise ValueError(f"target_classes: expected classes in 0-{num_classes - 1}, got {bad}")
    return t.astype(np.int32)


def as_images(images, input_range=None) -> np.ndarray:
    """Validate and convert to a float32 batch (N, H, W, C) for a model of any image size.

    4-D input is a batch; 3-D input is one (H, W, C) image when its last axis has at most 4
    channels (gray, RGB, RGBA), else a batch of grayscale (N, H, W) images; 2-D is one
    grayscale image. ``input_range=(lo, hi)``: values outside it are refused, and integer
    pixels are read as 0-255 (only for a [0, 1] model); without it any finite floats pass.
    Never mutates the input.
    """
    arr = _float_pixels(images, integers=input_range is not None and tuple(input_range) == (0.0, 1.0))
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        arr = arr[None] if arr.shape[-1] <= 4 else arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"images: expected (N, H, W, C), one (H, W, C) image or one (H, W) image, "
                         f"got {_describe(images)}")
    if arr.shape[0] == 0 or 0 in arr.shape[1:]:
        raise ValueError(f"images: expected at least one image, got an empty batch ({_describe(images)})")
    if not _all_finite(arr):
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"images: expected finite pixel values, got {bad} NaN/inf values")
    if input_range is not None:
        lo, hi = float(arr.min()), float(arr.max())
        a, b = input_range
        if lo < a - PIXEL_SLACK * (b - a) or hi > b + PIXEL_SLACK * (b - a):
            raise ValueError(f"images: expected values in the model's input range [{a:g}, {b:g}], "
                             f"got values in [{lo:g}, {hi:g}]")
    return arr


# ----------------------------------------------------------------------------- display helpers


def normalize_maps(maps, eps: float = 1e-12):
    """Min-max scale each map of (N, H, W) (or one (H, W)) to [0, 1]; a flat map gives zeros."""
    maps = jnp.asarray(maps, jnp.float32)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = maps.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    return jnp.where(span > eps, (maps - lo) / jnp.where(span > eps, span, 1.0), 0.0)


def _align_corners_matrix(out: int, size: int) -> np.ndarray:
    """(out, size) weights of 1-D linear interpolation with the end samples on the end pixels."""
    src = np.arange(out) * ((size - 1) / (out - 1) if out > 1 else 0.0)
    lo = np.minimum(np.floor(src).astype(int), size - 1)
    hi = np.minimum(lo + 1, size - 1)
    frac = (src - lo).astype(np.float32)
    m = np.zeros((out, size), np.float32)
    np.add.at(m, (np.arange(out), lo), 1 - frac)
    np.add.at(m, (np.arange(out), hi), frac)
    return m


def upsample(maps: jax.Array, size=IMAGE_HW, align_corners: bool = False) -> jax.Array:
    """Bilinear upsampling of (N, h, w) maps to (N, *size).

    ``align_corners=False``: half-pixel centres, as ``cv2.resize``, ``F.interpolate`` and
    Captum's ``LayerAttribution.interpolate`` (Grad-CAM's maps). ``align_corners=True``: the
    corner pixels of both grids coincide, as ``torch.nn.UpsamplingBilinear2d``, which
    pytorch-grad-cam's Score-CAM uses for its masks.
    """
    if not align_corners:
        return jax.image.resize(maps, (maps.shape[0], *size), method="bilinear")
    rows = jnp.asarray(_align_corners_matrix(size[0], maps.shape[1]))
    cols = jnp.asarray(_align_corners_matrix(size[1], maps.shape[2]))
    return jnp.einsum("ih,nhw,jw->nij", rows, maps, cols)


def overlay_heatmap(image, heatmap, cmap: str = "jet", alpha: float = 0.45) -> np.ndarray:
    """Blend a heatmap in [0, 1] (H, W) over an image in [0, 1] (gray (H, W[, 1]) or RGB
    (H, W, 3)); returns RGB float (H, W, 3). uint8 images are read as 0-255.

    Pure function: no figure is made. Rejects out-of-range input, quoting the bad value.
    """
    import matplotlib

    img = np.asarray(image)
    if img.dtype == np.uint8:
        img = img / 255.0
    img = img.astype(np.float32)
    if img.ndim == 1 and img.size == 784:  # a flattened digit
        img = img.reshape(IMAGE_HW)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 3)):
        raise ValueError(f"overlay_heatmap: image expected (H, W) grayscale or (H, W, 3) RGB, got {_describe(image)}")
    hm = np.asarray(heatmap, np.float32)
    if hm.shape != img.shape[:2]:
        raise ValueError(f"overlay_heatmap: heatmap expected shape {img.shape[:2]}, got {hm.shape}")
    for name, a in (("image", img), ("heatmap", hm)):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            bad = a[~np.isfinite(a) | (a < 0) | (a > 1)].flat[0]
            raise ValueError(f"overlay_heatmap: {name} values expected in [0, 1], got {bad}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"overlay_heatmap: alpha expected in [0, 1], got {alpha}")
    base = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img
    if cmap not in matplotlib.colormaps:
        raise ValueError(f"cmap: expected a matplotlib colormap name (e.g. 'jet', 'inferno'), got {cmap!r}")
    colour = matplotlib.colormaps[cmap](hm)[..., :3]
    return np.clip((1 - alpha) * base + alpha * colour, 0.0, 1.0)


def explanation_grid(images, rows: Sequence[dict], columns: Sequence[str], titles=None,
                     cmap: str = "jet", figsize_per_cell: float = 1.7):
    """Lay out images and their maps in a matplotlib figure (digit | map | map | ...).

    ``rows``: one dict per image mapping a column name to an (H, W) map in [0, 1]
    (shown as an overlay) — the column "digit" is the image itself. Returns a
    ``matplotlib.figure.Figure`` that belongs to no pyplot state (nothing is shown, the
    backend is left alone, so a notebook keeps its inline figures); the caller saves it or,
    in a notebook, displays it.
    """
    from matplotlib.figure import Figure

    images = as_images(images, (0.0, 1.0))
    n, m = len(rows), len(columns)
    fig = Figure(figsize=(figsize_per_cell * m, figsize_per_cell * n + 0.3))
    axes = fig.subplots(n, m, squeeze=False)
    for i, row in enumerate(rows):
        img = images[i, ..., 0] if images.shape[-1] == 1 else images[i]
        for j, col in enumerate(columns):
            ax = axes[i, j]
            if col == "digit":
                ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(overlay_heatmap(img, np.asarray(row[col]), cmap=cmap))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col, fontsize=8)
        if titles is not None:
            axes[i, 0].set_ylabel(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the model


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


def _resolve_targets(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.where(targets < 0, logits.argmax(-1), targets)


# ----------------------------------------------------------------------------- the methods


def split_over_devices(fn: Callable, batched: Sequence[bool]):
    """``jax.jit(fn)`` with the ``batched`` arguments split over the local devices.

    Rows must be independent (they are at inference: BatchNorm uses running statistics).
    With several local devices (GPUs, or CPU cores split by
    ``XLA_FLAGS=--xla_force_host_platform_device_count``, as the scripts do) the batched
    arguments and every output are sharded along their first axis (``jax.shard_map``); the
    others are replicated. With one device it is a plain jit. Returns ``(jitted, devices)``:
    batch sizes must be a multiple of ``devices``.
    """
    devices = jax.local_devices()
    if len(devices) > 1:
        mesh = Mesh(np.array(devices), ("batch",))
        fn = jax.shard_map(fn, mesh=mesh, in_specs=tuple(P("batch") if b else P() for b in batched),
                           out_specs=P("batch"), check_vma=False)
    return jax.jit(fn), len(devices)


def in_chunks(call: Callable, arrays: Sequence[np.ndarray], chunk: int, multiple: int = 1,
              progress: Callable[[int], object] | None = None) -> list[np.ndarray]:
    """``call(*rows)`` over chunks of ``chunk`` rows of ``arrays``; outputs concatenated as numpy.

    Memory stays bounded by the chunk. The last chunk is zero-padded to the full chunk size
    (or, when everything fits in one chunk, to a multiple of ``multiple``, e.g. the device
    count), so each shape compiles once; the padded rows are dropped from the outputs.
    ``progress(rows)`` (e.g. a tqdm bar's ``update``) is called after each chunk.

    Calls are dispatched one ahead of the copy back to numpy (JAX runs them asynchronously),
    so the device starts the next chunk while the host collects the last one.
    """
    n = len(arrays[0])
    outputs, pending = [], None

    def collect(done):
        outs, k = done
        outputs.append([np.asarray(out)[:k] for out in outs])
        if progress is not None:
            progress(k)

    for start in range(0, n, chunk):
        rows = [a[start:start + chunk] for a in arrays]
        k = len(rows[0])
        pad = (chunk - k) if n > chunk else (-k) % multiple
        if pad:
            rows = [np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) for a in rows]
        launched = (call(*rows), k)
        if pending is not None:
            collect(pending)
        pending = launched
    if pending is not None:
        collect(pending)
    return [np.concatenate(parts) for parts in zip(*outputs)]


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def _channels_max(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H, W): the largest value over channels (the grayscale channel itself)."""
    return x.max(axis=-1)


class Explainer:
    """Base class: the model adapter, input checks, chunking and the one batched call.

    Subclasses implement ``_maps(variables, images, targets, key) -> (maps (n, H, W), logits)``
    for one chunk (traced under ``jax.jit``); ``targets`` holds -1 where the predicted class
    is wanted.
    """

    #: images per compiled call (for 28x28x1 digits; scaled by pixel count for other sizes):
    #: large batches are processed in chunks of this size so that memory stays bounded (the
    #: last chunk is padded, so each size compiles once). Sized for a GPU (docs/benchmarks.md);
    #: pass a smaller ``chunk_size`` on a GPU with little memory.
    chunk_size: int = 4096
    #: the same on a CPU, where smaller calls keep activations in cache (None: ``chunk_size``).
    cpu_chunk_size: int | None = None
    signed: bool = False

    def __init__(self, model, chunk_size: int | None = None):
        self.target = explained(model)
        self.model = model
        if chunk_size is None and self.cpu_chunk_size and on_cpu():
            self.chunk_size = self.cpu_chunk_size
        elif chunk_size is not None:
            self.chunk_size = whole_number("chunk_size", chunk_size)
        # Images are explained independently: each chunk is split over the local devices.
        self._jitted, self.num_devices = split_over_devices(self._maps, (False, True, True, False))
        self.chunk_size = -(-self.chunk_size // self.num_devices) * self.num_devices

    def _chunk_for(self, image_shape) -> int:
        pixels = int(np.prod(image_shape))
        k = self.chunk_size if pixels <= 784 else max(1, self.chunk_size * 784 // pixels)
        return -(-k // self.num_devices) * self.num_devices

    def logits(self, variables, images):
        return self.target.logits(variables, images)

    def target_logit_grad(self, variables, images, targets):
        """d(target logit)/d(images) for a batch, and the logits. Images are independent at
        inference (BatchNorm uses running statistics), so the gradient of the sum is per image."""
        def total(x):
            logits = self.logits(variables, x)
            t = _resolve_targets(jax.lax.stop_gradient(logits), targets)
            return jnp.take_along_axis(logits, t[:, None], 1).sum(), logits
        grads, logits = jax.grad(total, has_aux=True)(images)
        return grads, logits

    def _maps(self, variables, images, targets, key):
        raise NotImplementedError

    def _prepare(self, params, batch_stats, images, target_classes):
        """Checked inputs: ``(images (N, H, W, C), variables, targets (N,))``."""
        x = self.target.images(images)
        variables = self.target.variables(params, batch_stats, x.shape[1:])
        classes = self.target.num_classes(variables, x)
        self._check(variables, x)
        return x, variables, as_targets(target_classes, len(x), classes)

    def _check(self, variables, images: np.ndarray) -> None:
        """Method-specific checks against the images' shape (a layer, a baseline, a patch)."""

    def attribute(self, params, batch_stats, images, target_classes=None, key=None, progress=None,
                  return_logits: bool = False):
        """Raw attribution maps (N, H, W) as numpy, for a batch (a single image is a batch of one).

        ``target_classes``: one class per image, one class for all, or None (the predicted
        class). ``key``: the PRNG key of SmoothGrad's noise (default PRNGKey(0)).
        ``progress(images_done)`` is called after each chunk (e.g. ``tqdm(total=N).update``).
        ``return_logits=True`` returns ``(maps, logits (N, classes))``: the logits of the
        images as given, from the same compiled call (no second forward pass).
        """
        x, variables, t = self._prepare(params, batch_stats, images, target_classes)
        key = jax.random.PRNGKey(0) if key is None else key
        maps, logits = in_chunks(lambda xc, tc: self._jitted(variables, xc, tc, key), (x, t),
                                 self._chunk_for(x.shape[1:]), self.num_devices, progress)
        return (maps, logits) if return_logits else maps

    def explain(self, params, batch_stats, images, target_classes=None, key=None, progress=None):
        """``attribute`` plus what a figure title needs: ``(maps (N, H, W), predictions (N,),
        target_logits (N,))`` as numpy, from the same compiled call."""
        maps, logits = self.attribute(params, batch_stats, images, target_classes, key, progress,
                                      return_logits=True)
        n = len(logits)
        t = as_targets(target_classes, n, logits.shape[1])
        preds = logits.argmax(-1)
        chosen = np.where(t < 0, preds, t)
        return maps, preds, logits[np.arange(n), chosen]


# ---- CAM family


class GradCAM(Explainer):
    """Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391), eqs. 1-2.

    alpha_k = mean_ij d y^c / d A^k_ij   (y^c: target logit, A: the explained layer's output)
    L = ReLU(sum_k alpha_k A^k), at the layer's resolution (7x7 for MNISTCNN), bilinearly
    upsampled to the image (half-pixel centres, as Captum's LayerGradCam + interpolate).

    ``layer``: the submodule whose output is A, by its path ("block3/conv2"); None: the
    model's ``features``/``head`` split (MNISTCNN's last conv block), else its last spatial
    layer. ``relu=False`` keeps negative evidence; ``raw_cam`` gives the map before
    upsampling. ``attribute`` returns the upsampled, unscaled map; ``compute_gradcam``
    returns the display map scaled to [0, 1].
    """

    cpu_chunk_size = 1024  # tuned on a 2-core CPU (docs/benchmarks.md)

    def __init__(self, model, layer: str | None = None, relu: bool = True, chunk_size: int | None = None):
        if layer is not None and not isinstance(layer, str):
            raise ValueError(f"layer: expected a layer path such as 'block3/conv2' (or None), got {layer!r}")
        self.layer, self.relu = layer, relu
        self._layers: dict = {}  # image shape -> the checked layer (None: features/head)
        super().__init__(model, chunk_size)

    def _check(self, variables, images):
        self._layers[images.shape[1:]] = self.target.check_layer(self.layer, variables, images.shape[1:])

    def activations(self, variables, images):
        """``(A (N, h, w, C), logits)``: the explained layer's output, forward only."""
        layer = self._layers[images.shape[1:]]
        if layer is None:
            m = self.target.module
            feature_map = m.apply(variables, images, method=m.features)
            return feature_map, m.apply(variables, feature_map, method=m.head)
        logits, feature_map = self.target.layer_call(variables, images, layer)
        return feature_map, logits

    def activations_and_grads(self, variables, images, targets):
        """``(A, d y^c / d A, logits)`` for the target class of each image."""
        layer = self._layers[images.shape[1:]]
        if layer is None:
            m = self.target.module
            feature_map = m.apply(variables, images, method=m.features)
            logits, back = jax.vjp(lambda a: m.apply(variables, a, method=m.head), feature_map)
        else:
            spec = jax.eval_shape(lambda v, x: self.target.layer_call(v, x, layer)[1], variables, images)
            logits, back, feature_map = jax.vjp(
                lambda d: self.target.layer_call(variables, images, layer, d),
                jnp.zeros(spec.shape, spec.dtype), has_aux=True)
        t = _resolve_targets(logits, targets)
        (grads,) = back(jax.nn.one_hot(t, logits.shape[-1], dtype=logits.dtype))
        return feature_map, grads, logits

    def channel_weights(self, feature_map, grads):
        return grads.mean(axis=(1, 2))  # (N, C)

    def low_res_cam(self, variables, images, targets):
        """``(cam (N, h, w) at the layer's resolution, logits)``."""
        feature_map, grads, logits = self.activations_and_grads(variables, images, targets)
        cam = jnp.einsum("nhwc,nc->nhw", feature_map, self.channel_weights(feature_map, grads))
        return (jax.nn.relu(cam) if self.relu else cam), logits

    def _maps(self, variables, images, targets, key):
        cam, logits = self.low_res_cam(variables, images, targets)
        return upsample(cam, images.shape[1:3]), logits

    def raw_cam(self, params, batch_stats, images, target_classes=None) -> np.ndarray:
        """This method's map before upsampling and scaling, (N, h, w) (7x7 for MNISTCNN)."""
        x, variables, t = self._prepare(params, batch_stats, images, target_classes)
        cam, _ = jax.jit(self.low_res_cam)(variables, x, t)
        return np.asarray(cam)

    def compute_gradcam(self, params, batch_stats, image, target_class: int | None = None):
        """One image -> ``(heatmap (H, W) in [0, 1], predicted class, target logit)``.

        ``score`` is the logit (pre-softmax) of the explained class — the prediction unless
        ``target_class`` is given.
        """
        x = self.target.images(image)
        if len(x) != 1:
            raise ValueError(f"compute_gradcam: expected one image, got a batch of {len(x)}; "
                             f"use attribute() for batches")
        maps, preds, scores = self.explain(params, batch_stats, x,
                                           None if target_class is None else [target_class])
        return np.asarray(normalize_maps(maps[0])), int(preds[0]), float(scores[0])


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, arXiv:1710.11063), eq. 19.

    alpha^kc_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3 + eps), 0 where g = 0, with g = d y^c / d A^k_ij;
    w_k = sum_ij alpha^kc_ij ReLU(g). Written with the exponential-of-score simplification
    that pytorch-grad-cam uses (higher derivatives as powers of the first), and its
    ``eps = 1e-6``: gradients of a logit with respect to a late layer are small (g^2 ~ 1e-6
    here), so the epsilon shapes the weights and is part of the reference's formula.
    """

    def __init__(self, model, layer: str | None = None, relu: bool = True, eps: float = 1e-6,
                 chunk_size: int | None = None):
        self.eps = finite_number("eps", eps, 0.0)
        super().__init__(model, layer, relu, chunk_size)

    def channel_weights(self, feature_map, grads):
        g2 = grads ** 2
        g3 = g2 * grads
        denom = 2 * g2 + feature_map.sum(axis=(1, 2), keepdims=True) * g3 + self.eps
        alpha = jnp.where(grads != 0, g2 / jnp.where(denom != 0, denom, 1.0), 0.0)
        return (alpha * jax.nn.relu(grads)).sum(axis=(1, 2))


class ScoreCAM(GradCAM):
    """Score-CAM (Wang et al., CVPR-W 2020, arXiv:1910.01279), eqs. 6-8.

    Each channel's activation, upsampled to the image (corners aligned, as pytorch-grad-cam's
    ``UpsamplingBilinear2d``) and min-max scaled to [0, 1], masks the input; the channel
    weight is the softmax over channels of the target logit on the masked input; the map is
    ReLU(sum_k w_k A^k) (``relu=False``: without the ReLU). Costs one forward pass per
    channel (128 per image for MNISTCNN): bounded by the forward pass.
    """

    chunk_size = 64  # 8,192 masked digits a call (docs/benchmarks.md)
    cpu_chunk_size = 2  # 256 masked digits a call: small calls stay in a CPU's cache

    def low_res_cam(self, variables, images, targets):
        feature_map, logits = self.activations(variables, images)  # (N, h, w, C)
        t = _resolve_targets(logits, targets)
        n, h, w, c = feature_map.shape
        size = images.shape[1:3]
        masks = normalize_maps(upsample(jnp.moveaxis(feature_map, -1, 1).reshape(n * c, h, w), size,
                                        align_corners=True))
        masked = images[:, None] * masks.reshape(n, c, *size, 1)  # (N, C, H, W, channels)
        scores = self.logits(variables, masked.reshape(n * c, *images.shape[1:])).reshape(n, c, -1)
        target_scores = jnp.take_along_axis(scores, t[:, None, None], 2)[..., 0]  # (N, C)
        weights = jax.nn.softmax(target_scores, axis=1)
        cam = jnp.einsum("nhwc,nc->nhw", feature_map, weights)
        return (jax.nn.relu(cam) if self.relu else cam), logits


# ---- gradient family


class Saliency(Explainer):
    """Vanilla gradient saliency (Simonyan et al., ICLR-W 2014, arXiv:1312.6034), eq. 2 / sec. 3.1.

    M_ij = max_c |d y^c / d x_ijc|: the largest absolute gradient over the colour channels (the
    paper's rule for colour images, as PAIR saliency); for grayscale, |gradient| itself.
    ``absolute=False`` gives the signed gradient, summed over channels.
    """

    cpu_chunk_size = 64

    def __init__(self, model, absolute: bool = True, chunk_size: int | None = None):
        self.absolute = absolute
        self.signed = not absolute
        super().__init__(model, chunk_size)

    def _maps(self, variables, images, targets, key):
        grads, logits = self.target_logit_grad(variables, images, targets)
        return (_channels_max(jnp.abs(grads)) if self.absolute else grads.sum(-1)), logits


class GradientXInput(Explainer):
    """Gradient x Input (Shrikumar et al. 2016, arXiv:1605.01713; Ancona et al., ICLR 2018, eq. 3).

    R_ij = sum_c x_ijc * d y^c / d x_ijc (signed; Captum's InputXGradient summed over channels).
    """

    signed = True
    cpu_chunk_size = 64

    def _maps(self, variables, images, targets, key):
        grads, logits = self.target_logit_grad(variables, images, targets)
        return (grads * images).sum(-1), logits


def _baseline(value, name: str = "baseline"):
    """A scalar or one image, as float32; checked against the images' shape later."""
    b = np.asarray(value, np.float32) if not isinstance(value, (str, bytes)) else np.asarray(np.nan)
    if b.dtype == object or not np.isfinite(b).all():
        raise ValueError(f"{name}: expected a finite number or a finite image, got {value!r}"
                         if b.ndim == 0 else f"{name}: expected finite values, got NaN/inf")
    return b


def _baseline_for(b: np.ndarray, image_shape, name: str = "baseline") -> np.ndarray:
    """``b`` shaped (1, H, W, C) for images of ``image_shape``, or a scalar."""
    if b.ndim == 0:
        return b
    if b.size != int(np.prod(image_shape)):
        hw = "x".join(map(str, image_shape[:2]))
        raise ValueError(f"{name}: expected a scalar or one {hw} image ({tuple(image_shape)}), got shape {b.shape}")
    return b.reshape(1, *image_shape)


class IntegratedGradients(Explainer):
    """Integrated Gradients (Sundararajan et al., ICML 2017, arXiv:1703.01365), eq. 3.

    IG_ij = sum_c (x - x')_ijc * integral_0^1 d y^c(x' + a (x - x')) / d x_ijc da, approximated
    with ``steps`` Gauss-Legendre nodes (Captum's ``method="gausslegendre"``), summed over
    channels. Completeness: sum IG ~= y^c(x) - y^c(x'). The default 100 steps keeps the
    completeness error under 1% on average on real digits with the shipped model (the ReLU
    network's kinks make single digits worse; docs/benchmarks.md has the measurements).
    ``baseline``: a scalar or one image, in the model's input range; default 0 (a black
    digit for MNISTCNN). All interpolants of a chunk go through the network as one batch.
    """

    signed = True

    def __init__(self, model, steps: int = 100, baseline=0.0, chunk_size: int | None = None):
        self.steps = whole_number("steps", steps)
        self.baseline = _baseline(baseline)
        image_shape = explained(model).image_shape
        if image_shape is not None:
            self.baseline = _baseline_for(self.baseline, tuple(image_shape))
        nodes, weights = np.polynomial.legendre.leggauss(self.steps)
        self.alphas = ((nodes + 1) / 2).astype(np.float32)  # in (0, 1)
        self.weights = (weights / 2).astype(np.float32)      # sum to 1
        self.chunk_size = max(1, 8192 // self.steps)  # digits a call: ~8,192 interpolants
        self.cpu_chunk_size = max(1, 64 // self.steps)  # ~64 on a CPU
        super().__init__(model, chunk_size)

    def _check(self, variables, images):
        _baseline_for(self.baseline, images.shape[1:])

    def _maps(self, variables, images, targets, key):
        baseline = jnp.broadcast_to(jnp.asarray(_baseline_for(self.baseline, images.shape[1:])), images.shape)
        logits = self.logits(variables, images)
        t = _resolve_targets(logits, targets)
        a = jnp.asarray(self.alphas).reshape(-1, 1, 1, 1, 1)
        path = baseline[None] + a * (images - baseline)[None]  # (S, N, H, W, C)
        grads, _ = self.target_logit_grad(variables, path.reshape(-1, *images.shape[1:]), jnp.tile(t, self.steps))
        avg = jnp.tensordot(jnp.asarray(self.weights), grads.reshape(self.steps, *images.shape), 1)
        return ((images - baseline) * avg).sum(-1), logits

    def completeness_gap(self, params, batch_stats, images, target_classes=None, maps=None):
        """Per image: sum of attributions minus (f(x) - f(baseline)) for the target logit, and f(x) - f(x').

        ``maps``: this explainer's attributions of ``images`` for ``target_classes`` when
        they are already at hand (e.g. in ``evaluate_xai``); computed here otherwise.
        """
        x, variables, requested = self._prepare(params, batch_stats, images, target_classes)
        if maps is None:
            maps = self.attribute(params, batch_stats, x, target_classes)
        maps = np.asarray(maps, np.float32)
        if maps.shape != x.shape[:3]:
            raise ValueError(f"maps: expected shape {x.shape[:3]}, got {maps.shape}")
        forward = jax.jit(self.logits)
        (logits,) = in_chunks(lambda xc: (forward(variables, xc),), (x,), 1000)
        t = np.where(requested < 0, logits.argmax(-1), requested)
        base = np.broadcast_to(_baseline_for(self.baseline, x.shape[1:]), (1, *x.shape[1:]))
        base_logits = np.asarray(forward(variables, base))[0]
        delta = logits[np.arange(len(x)), t] - base_logits[t]
        return maps.sum(axis=(1, 2)) - delta, delta


class SmoothGrad(Explainer):
    """SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825), eq. 3, of the saliency map.

    M = max_c (1/n) sum_k |d y^c / d x (x + N(0, sigma^2))|, sigma = noise_level * (hi - lo)
    of the input range: ``input_range`` if given, else the model's (MNISTCNN: [0, 1], so
    sigma = noise_level), else each image's own (max - min), as PAIR saliency does.
    ``absolute=False`` averages signed gradients instead (summed over channels). Noise comes
    from the explicit ``key`` passed to ``attribute`` (default PRNGKey(0)): the same
    ``samples`` standard-normal images z_k ~ N(0, 1) of shape (H, W, C) for every image of
    the call, so an image's map depends only on the image and the key, not on its batch.
    """

    def __init__(self, model, samples: int = 25, noise_level: float = 0.15, absolute: bool = True,
                 input_range=None, chunk_size: int | None = None):
        self.samples = whole_number("samples", samples)
        self.noise_level, self.absolute = finite_number("noise_level", noise_level, 0.0), absolute
        if input_range is not None:
            lo, hi = (finite_number("input_range", v) for v in np.ravel(input_range)) \
                if np.size(input_range) == 2 else (np.nan, np.nan)
            if not hi > lo:
                raise ValueError(f"input_range: expected (low, high) with low < high, got {input_range!r}")
            input_range = (lo, hi)
        self.input_range = input_range if input_range is not None else explained(model).input_range
        self.signed = not absolute
        self.chunk_size = max(1, 8192 // self.samples)  # digits a call: ~8,192 noisy copies
        self.cpu_chunk_size = max(1, 64 // self.samples)  # ~64 on a CPU
        super().__init__(model, chunk_size)

    def _maps(self, variables, images, targets, key):
        logits = self.logits(variables, images)
        t = _resolve_targets(logits, targets)
        if self.input_range is not None:
            sigma = self.noise_level * (self.input_range[1] - self.input_range[0])
        else:  # each image's own range, (N, 1, 1, 1)
            sigma = self.noise_level * (images.max(axis=(1, 2, 3), keepdims=True)
                                        - images.min(axis=(1, 2, 3), keepdims=True))
        z = jax.random.normal(key, (self.samples, 1, *images.shape[1:]), images.dtype)
        noisy = (images[None] + sigma * z).reshape(-1, *images.shape[1:])
        grads, _ = self.target_logit_grad(variables, noisy, jnp.tile(t, self.samples))
        grads = grads.reshape(self.samples, *images.shape)
        if self.absolute:
            return _channels_max(jnp.abs(grads).mean(0)), logits
        return grads.mean(0).sum(-1), logits


def occlusion_plan(starts: Sequence[int], patch: int, segments, size: int = 28) -> list[dict]:
    """Crop plan for incremental occlusion (one axis; rows and columns share it).

    A ``patch``-wide window at each of ``starts`` changes only nearby activations of the
    first conv blocks. For each leading block that ends in a 2x2 max-pool, while a crop is
    cheaper than the whole map: ``start`` and ``crop`` (per window start, in the block's input
    coordinates) bound the input rows that block needs, and ``out``/``out_size`` the pooled
    rows it recomputes, which cover every row the window can change. Crops start on even rows
    so that they pool like the whole map. Returns one dict per incremental block (empty: no
    saving, compute every occluded image in full).
    """
    a = np.asarray(starts, np.int64)
    b = a + patch
    plan = []
    for layers, pooled in segments:
        c = len(layers)
        if not pooled or size % 2:
            break
        lo, hi = np.maximum(a - c, 0), np.minimum(b + c, size)  # rows the block's convs change
        out = lo // 2
        out_size = int((-(-hi // 2) - out).max())
        start, crop = 2 * out - c, 2 * out_size + 2 * c
        if sum((crop - 2 * (j + 1)) ** 2 for j in range(c)) >= c * size ** 2:
            break  # the crops would cost as much as the whole map
        if plan and ((plan[-1]["out"] < start).any() or (plan[-1]["out"] + plan[-1]["out_size"] > start + crop).any()):
            break  # the previous block's rows must fit inside this crop
        plan.append(dict(start=start, crop=crop, size=size, out=out, out_size=out_size))
        a, b, size = out, out + out_size, size // 2
    return plan


def _margin(first: np.ndarray, length: int, size: int) -> int:
    """Zero padding a map of ``size`` rows needs so that rows ``first .. first+length`` exist."""
    return int(max(-first.min(), (first + length).max() - size, 0))


def _incremental_occlusion_logits(module, images, baseline: float, starts, patch: int, plan):
    """Logits of every occluded copy of ``images``, (N, W, classes), recomputing only what changes.

    Incremental inference (Nakandala et al., "Incremental and Approximate Inference for Faster
    Occlusion-based Deep CNN Explanations", SIGMOD 2019): the activations of the unoccluded
    image are computed once; for each window, the blocks in ``plan`` run without padding on
    a crop around the window (activations outside the image set to zero, exactly as SAME
    padding sees them) and their pooled output is pasted into the unoccluded activations;
    the remaining blocks and the head run in full. Equal to occluding and running the whole
    network, to float rounding. ``plan`` (``occlusion_plan``) must not be empty.
    """
    n = images.shape[0]
    r = len(starts)
    wr, wc = np.repeat(np.arange(r), r), np.tile(np.arange(r), r)  # window -> (row, column) start
    nw = r * r
    segments = module.segments()

    def per_window(rows_ok):  # (starts, L) bool per axis -> (1, W, L, L, 1): rows and columns both ok
        return jnp.asarray(rows_ok[wr][:, :, None] & rows_ok[wc][:, None, :])[None, ..., None]

    def window_mask(first, length, size):  # inside the map?
        rows = first[:, None] + np.arange(length)
        return per_window((rows >= 0) & (rows < size))

    def crops_of(maps, first, length, margin):  # (N, H, W, C) -> (N, W, length, length, C)
        padded = jnp.pad(maps, ((0, 0), (margin, margin), (margin, margin), (0, 0)))
        crop = lambda m, i, j: jax.lax.dynamic_slice(m, (i, j, 0), (length, length, m.shape[-1]))
        return jax.vmap(jax.vmap(crop, (None, 0, 0)), (0, None, None))(
            padded, jnp.asarray(first[wr] + margin), jnp.asarray(first[wc] + margin))

    paste = jax.vmap(jax.vmap(lambda m, blk, i, j: jax.lax.dynamic_update_slice(m, blk, (i, j, 0)),
                              (0, 0, 0, 0)), (0, 0, None, None))

    # The unoccluded activations entering each incremental block and the first full one.
    levels = [module.stem(images)]
    for layers, _ in segments[:len(plan)]:
        h = levels[-1]
        for k in layers:
            h = module.conv_block(k, h)
        levels.append(max_pool_2x2(h))

    block = None
    for i, (seg, (layers, _)) in enumerate(zip(plan, segments)):
        first, length, size = seg["start"], seg["crop"], seg["size"]
        h = crops_of(levels[i], first, length, _margin(first, length, size))
        if i == 0:  # put the occluding patch in, in the stem's (standardised) units
            rows = first[:, None] + np.arange(length)
            hit = (rows >= np.asarray(starts)[:, None]) & (rows < np.asarray(starts)[:, None] + patch)
            h = jnp.where(per_window(hit), module.stem(jnp.asarray(baseline, jnp.float32)), h)
        else:  # the previous block's recomputed rows replace the unoccluded ones
            prev = plan[i - 1]
            rel = prev["out"] - first
            h = paste(h, block, jnp.asarray(rel[wr]), jnp.asarray(rel[wc]))
        h = h.reshape(n * nw, *h.shape[2:])
        for j, k in enumerate(layers):
            h = module.conv_block(k, h, padding="VALID")
            if j < len(layers) - 1:  # the next conv's SAME padding sees zeros outside the map
                side = length - 2 * (j + 1)
                h = (h.reshape(n, nw, side, side, -1) * window_mask(first + j + 1, side, size)).reshape(h.shape)
        h = max_pool_2x2(h)
        block = h.reshape(n, nw, *h.shape[1:]) * window_mask(seg["out"], seg["out_size"], size // 2)

    # The last block's recomputed rows go into the unoccluded map; the rest runs in full.
    full, last = levels[len(plan)], plan[-1]
    margin = _margin(last["out"], last["out_size"], full.shape[1])
    canvas = jnp.pad(full, ((0, 0), (margin, margin), (margin, margin), (0, 0)))
    canvas = jnp.broadcast_to(canvas[:, None], (n, nw, *canvas.shape[1:]))
    canvas = paste(canvas, block, jnp.asarray(last["out"][wr] + margin), jnp.asarray(last["out"][wc] + margin))
    h = canvas[:, :, margin:margin + full.shape[1], margin:margin + full.shape[2]]
    h = h.reshape(n * nw, *h.shape[2:])
    for layers, pooled in segments[len(plan):]:
        for k in layers:
            h = module.conv_block(k, h)
        if pooled:
            h = max_pool_2x2(h)
    return module.head(h).reshape(n, nw, -1)


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start rows of ``patch``-wide windows every ``stride`` rows, plus one flush with the end."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)  # cover the last rows/columns too
    return starts


class Occlusion(Explainer):
    """Occlusion (Zeiler & Fergus, ECCV 2014, arXiv:1311.2901), sec. 4.2, as in Captum.

    A ``patch`` x ``patch`` square of ``baseline`` (over all channels, in the model's input
    range) slides with ``stride``; each pixel gets the mean drop of the target logit over the
    windows that cover it. Forward passes only.

    With ``MNISTCNN`` (any module with ``segments``, ``stem`` and ``conv_block``) the
    occluded forward passes are incremental (``_incremental_occlusion_logits``): only the
    activations a window can change are recomputed, about 1.6x fewer operations for the
    default 4x4 patch, same maps to float rounding. ``incremental=False`` runs every
    occluded image through the whole network.
    """

    signed = True
    chunk_size = 64  # ~10,800 occluded digits a call (docs/benchmarks.md)
    cpu_chunk_size = 2  # 338 occluded digits a call: small calls stay in a CPU's cache

    def __init__(self, model, patch: int = 4, stride: int = 2, baseline: float = 0.0,
                 chunk_size: int | None = None, incremental: bool = True):
        image_shape = explained(model).image_shape
        side = min(image_shape[:2]) if image_shape is not None else None
        self.patch = whole_number("patch", patch, 1, side)
        self.stride = whole_number("stride", stride, 1, side)
        self.baseline = finite_number("baseline", baseline)
        # The windows of a 28x28 digit (or of the model's declared size); other sizes on demand.
        hw = tuple(image_shape[:2]) if image_shape is not None else IMAGE_HW
        self.starts = window_starts(hw[0], self.patch, self.stride) if self.patch <= min(hw) else None
        self.masks, self.coverage = self.windows(hw) if self.starts else (None, None)  # (W, H, W), (H, W)
        can = incremental and explained(model).incremental and hw[0] == hw[1] and self.starts
        self.plan = occlusion_plan(self.starts, self.patch, model.segments(), hw[0]) if can else []
        super().__init__(model, chunk_size)

    @functools.lru_cache(maxsize=8)
    def windows(self, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(masks (W, H, W) with 1 inside each window, coverage (H, W))`` for images of size ``hw``."""
        rows, cols = (window_starts(s, self.patch, self.stride) for s in hw)
        masks = np.zeros((len(rows) * len(cols), *hw), np.float32)
        for k, (i, j) in enumerate((i, j) for i in rows for j in cols):
            masks[k, i:i + self.patch, j:j + self.patch] = 1
        return masks, masks.sum(0)

    def _check(self, variables, images):
        if self.patch > min(images.shape[1:3]):
            raise ValueError(f"patch: expected at most the image side ({min(images.shape[1:3])}), got {self.patch}")

    def occluded_logits(self, variables, images):
        """Logits of each image with each window occluded, (N, W, classes)."""
        if self.plan and images.shape[1:3] == IMAGE_HW:
            return self.model.apply(variables, images, self.baseline, self.starts, self.patch, self.plan,
                                    method=_incremental_occlusion_logits)
        masks, _ = self.windows(tuple(images.shape[1:3]))
        n, w = images.shape[0], len(masks)
        m = jnp.asarray(masks)[None, :, :, :, None]  # (1, W, H, W, 1)
        occluded = images[:, None] * (1 - m) + self.baseline * m  # (N, W, H, W, C)
        return self.logits(variables, occluded.reshape(n * w, *images.shape[1:])).reshape(n, w, -1)

    def _maps(self, variables, images, targets, key):
        logits = self.logits(variables, images)
        t = _resolve_targets(logits, targets)
        out = self.occluded_logits(variables, images)
        masks, coverage = self.windows(tuple(images.shape[1:3]))
        drop = jnp.take_along_axis(logits, t[:, None], 1) - jnp.take_along_axis(out, t[:, None, None], 2)[..., 0]
        maps = jnp.einsum("nw,whk->nhk", drop, jnp.asarray(masks)) / jnp.asarray(coverage)
        return maps, logits

    def _chunk_for(self, image_shape) -> int:
        # Each image becomes one forward pass per window: keep the occluded copies a call bounded.
        windows = len(self.windows(tuple(image_shape[:2]))[0])
        digit_windows = len(window_starts(28, min(self.patch, 28), self.stride)) ** 2
        k = max(1, self.chunk_size * digit_windows * 784 // (windows * int(np.prod(image_shape))))
        return -(-k // self.num_devices) * self.num_devices


METHODS: dict[str, Callable] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "scorecam": ScoreCAM,
    "saliency": Saliency,
    "gradient_x_input": GradientXInput,
    "integrated_gradients": IntegratedGradients,
    "smoothgrad": SmoothGrad,
    "occlusion": Occlusion,
}


def make_explainer(name: str, model, **kwargs) -> Explainer:
    """Build a method by name (see ``METHODS``)."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {name!r}")
    cls = METHODS[name]
    known = set(inspect.signature(cls.__init__).parameters) - {"self", "model"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"{name}: expected options among {', '.join(sorted(known))}, got {', '.join(unknown)}")
    return cls(model, **kwargs)


def compute_saliency(model, params, batch_stats, image, target_class: int | None = None):
    """One image's saliency: (|d logit / d x| scaled to [0, 1] (H, W), pred, logit)."""
    maps, preds, scores = Saliency(model).explain(
        params, batch_stats, image, None if target_class is None else [target_class])
    if len(maps) != 1:
        raise ValueError(f"compute_saliency: expected one image, got a batch of {len(maps)}")
    return np.asarray(normalize_maps(maps[0])), int(preds[0]), float(scores[0])

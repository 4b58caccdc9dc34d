"""Explanations for the MNIST CNN: GradCAM and friends, batched and jitted.

The contract with the model (``mnist_cnn_model.MNISTCNN`` or any Flax module with the
same two methods):

    model.apply(variables, images, method=model.features)  # (N, 28, 28, 1) -> (N, h, w, C)
    model.apply(variables, feature_map, method=model.head)  # (N, h, w, C) -> logits (N, 10)

Images are float pixels in [0, 1], shape (N, 28, 28, 1); a single image may be given as
(28, 28), (28, 28, 1) or (1, 28, 28, 1). uint8 input is accepted and divided by 255.
"Score" below always means the target class's **logit** (pre-softmax).

Every method has one batched call::

    maps = method.attribute(params, batch_stats, images, target_classes=None)  # (N, 28, 28)

``target_classes=None`` explains the predicted class. Raw maps are returned (signed where
the method is signed); ``normalize_maps`` scales them to [0, 1] for display, safely on a
constant map. The seed's one-image API works as written::

    gradcam = GradCAM(model)
    heatmap, pred, score = gradcam.compute_gradcam(params, batch_stats, image)

Methods: GradCAM, GradCAMPlusPlus, ScoreCAM, Saliency, GradientXInput,
IntegratedGradients, SmoothGrad, Occlusion. Each docstring cites its paper.
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

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


def as_image_batch(images) -> np.ndarray:
    """Validate and convert to a float32 batch (N, 28, 28, 1) in [0, 1]; never mutates input."""
    arr = np.asarray(images)
    if np.issubdtype(arr.dtype, np.integer):  # uint8 and other integer pixels: 0-255
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"images: expected integer pixels in 0-255, got values in "
                             f"[{arr.min()}, {arr.max()}] ({_describe(images)})")
        arr = arr.astype(np.float32) / 255.0
    elif not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == bool):
        raise ValueError(f"images: expected a float or uint8 array, got {_describe(images)}")
    # No copy when the input is float32 already: nothing downstream writes into it
    # (chunks are slices or new padded arrays), so callers' arrays are never touched.
    arr = arr.astype(np.float32, copy=False)
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
    (twice as fast as ``np.isfinite(arr).all()`` on 10,000 digits, with no temporary)."""
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


# ----------------------------------------------------------------------------- display helpers


def normalize_maps(maps, eps: float = 1e-12):
    """Min-max scale each map of (N, H, W) (or one (H, W)) to [0, 1]; a flat map gives zeros."""
    maps = jnp.asarray(maps, jnp.float32)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = maps.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    return jnp.where(span > eps, (maps - lo) / jnp.where(span > eps, span, 1.0), 0.0)


def upsample(maps: jax.Array, size=IMAGE_HW) -> jax.Array:
    """Bilinear upsampling of (N, h, w) maps to (N, 28, 28), half-pixel centres (like cv2.resize)."""
    return jax.image.resize(maps, (maps.shape[0], *size), method="bilinear")


def overlay_heatmap(image, heatmap, cmap: str = "jet", alpha: float = 0.45) -> np.ndarray:
    """Blend a heatmap in [0, 1] (28, 28) over a grayscale digit in [0, 1]; returns RGB float (28, 28, 3).

    Pure function: no figure is made. Rejects out-of-range input, quoting the bad value.
    """
    import matplotlib

    img = np.asarray(image, np.float32).reshape(IMAGE_HW) if np.size(image) == 784 else None
    if img is None:
        raise ValueError(f"overlay_heatmap: image expected 28x28 grayscale, got {_describe(image)}")
    if np.asarray(image).dtype == np.uint8:
        img = img / 255.0
    hm = np.asarray(heatmap, np.float32)
    if hm.shape != IMAGE_HW:
        raise ValueError(f"overlay_heatmap: heatmap expected shape (28, 28), got {hm.shape}")
    for name, a in (("image", img), ("heatmap", hm)):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            bad = a[~np.isfinite(a) | (a < 0) | (a > 1)].flat[0]
            raise ValueError(f"overlay_heatmap: {name} values expected in [0, 1], got {bad}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"overlay_heatmap: alpha expected in [0, 1], got {alpha}")
    gray = np.repeat(img[..., None], 3, axis=-1)
    if cmap not in matplotlib.colormaps:
        raise ValueError(f"cmap: expected a matplotlib colormap name (e.g. 'jet', 'inferno'), got {cmap!r}")
    colour = matplotlib.colormaps[cmap](hm)[..., :3]
    return np.clip((1 - alpha) * gray + alpha * colour, 0.0, 1.0)


def explanation_grid(images, rows: Sequence[dict], columns: Sequence[str], titles=None,
                     cmap: str = "jet", figsize_per_cell: float = 1.7):
    """Lay out digits and their maps in a matplotlib figure (digit | map | map | ...).

    ``rows``: one dict per image mapping a column name to a (28, 28) map in [0, 1]
    (shown as an overlay) — the column "digit" is the image itself. Returns the figure;
    the caller saves it. Only the demos call this.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = as_image_batch(images)[..., 0]
    n, m = len(rows), len(columns)
    fig, axes = plt.subplots(n, m, figsize=(figsize_per_cell * m, figsize_per_cell * n + 0.3),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j, col in enumerate(columns):
            ax = axes[i, j]
            if col == "digit":
                ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(overlay_heatmap(images[i], np.asarray(row[col]), cmap=cmap))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col, fontsize=8)
        if titles is not None:
            axes[i, 0].set_ylabel(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the methods


def _variables(model, params, batch_stats):
    """The variables dict, checked against the shapes ``model`` expects: weights of another
    architecture would otherwise run (inference reads the kernels directly) and explain the
    wrong network."""
    variables = {"params": params, "batch_stats": batch_stats}
    try:
        wanted = {name.split("/")[0] for name in expected_shapes(model)}
    except Exception:  # unhashable, or not an image classifier's init: nothing to check against
        return variables
    for c in sorted(wanted):
        if not hasattr(variables[c], "keys"):
            raise ValueError(f"{c}: expected the {type(model).__name__}'s {c} (a dict of arrays), "
                             f"got {type(variables[c]).__name__}")
    mismatch = shape_mismatch(model, variables)
    if mismatch:
        name, want, found = mismatch
        raise ValueError(f"params/batch_stats do not fit {type(model).__name__}: {name} expected {want}, got {found}")
    return variables


def _resolve_targets(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.where(targets < 0, logits.argmax(-1), targets)


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


class Explainer:
    """Base class: input checks, chunking and the uniform batched call.

    Subclasses implement ``_maps(variables, images, targets, key) -> (maps, logits)`` for one
    chunk (traced under ``jax.jit``); ``targets`` holds -1 where the predicted class is wanted.
    """

    #: images per compiled call; large batches are processed in chunks of this size so that
    #: memory stays bounded (the last chunk is padded, so each size compiles once). Sized for
    #: a GPU: on an H100, saliency ran 114,000 maps/s at 512 a call, 156,000-213,000 at 4,096
    #: (README_MNIST_XAI.md); pass a smaller ``chunk_size`` on a GPU with little memory.
    chunk_size: int = 4096
    #: the same on a CPU, where smaller calls keep activations in cache (None: ``chunk_size``).
    #: The methods that back-propagate to the input run ~64 images a call there: saliency
    #: ~600 maps/s against ~530 at 512 on this project's 2-core machine (README_MNIST_XAI.md).
    cpu_chunk_size: int | None = None
    signed: bool = False

    def __init__(self, model, chunk_size: int | None = None):
        for method in ("features", "head"):
            if not callable(getattr(model, method, None)):
                raise ValueError(f"model: expected a Flax module with a `{method}` method, "
                                 f"got {type(model).__name__}")
        self.model = model
        if chunk_size is None and self.cpu_chunk_size and on_cpu():
            self.chunk_size = self.cpu_chunk_size
        elif chunk_size is not None:
            self.chunk_size = whole_number("chunk_size", chunk_size)
        # Images are explained independently: each chunk is split over the local devices.
        self._jitted, self.num_devices = split_over_devices(self._maps, (False, True, True, False))
        self.chunk_size = -(-self.chunk_size // self.num_devices) * self.num_devices

    # The two halves of the network, for subclasses.
    def features(self, variables, images):
        return self.model.apply(variables, images, method=self.model.features)

    def head(self, variables, feature_map):
        return self.model.apply(variables, feature_map, method=self.model.head)

    def logits(self, variables, images):
        return self.head(variables, self.features(variables, images))

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

    def maps_and_logits(self, params, batch_stats, images, target_classes=None, key=None, progress=None):
        """Return ``(maps (N, 28, 28), logits (N, 10))`` as numpy: the logits of the images as
        given, from the same compiled call (no second forward pass for confidences).

        ``progress(images_done)`` is called after each chunk (e.g. ``tqdm(total=N).update``)."""
        x = as_image_batch(images)
        t = as_targets(target_classes, len(x))
        key = jax.random.PRNGKey(0) if key is None else key
        variables = _variables(self.model, params, batch_stats)
        return in_chunks(lambda xc, tc: self._jitted(variables, xc, tc, key), (x, t),
                         self.chunk_size, self.num_devices, progress)

    def explain(self, params, batch_stats, images, target_classes=None, key=None, progress=None):
        """Return ``(maps (N, 28, 28), predictions (N,), target_logits (N,))`` as numpy."""
        maps, logits = self.maps_and_logits(params, batch_stats, images, target_classes, key, progress)
        n = len(logits)
        t = as_targets(target_classes, n)
        preds = logits.argmax(-1)
        chosen = np.where(t < 0, preds, t)
        return maps, preds, logits[np.arange(n), chosen]

    def attribute(self, params, batch_stats, images, target_classes=None, key=None, progress=None) -> np.ndarray:
        """Raw attribution maps (N, 28, 28) for a batch (a single image is a batch of one)."""
        return self.explain(params, batch_stats, images, target_classes, key, progress)[0]

    __call__ = attribute


# ---- CAM family


class GradCAM(Explainer):
    """Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391), eqs. 1-2.

    alpha_k = mean_ij d y^c / d A^k_ij   (y^c: target logit, A: last conv block's output)
    L = ReLU(sum_k alpha_k A^k), 7x7, bilinearly upsampled to 28x28.

    ``relu=False`` keeps negative evidence; ``raw_cam`` (or ``cam_7x7`` inside a trace) gives
    the raw 7x7 map. ``attribute`` returns the upsampled, unscaled map;
    ``compute_gradcam`` returns the display map scaled to [0, 1].
    """

    cpu_chunk_size = 1024  # its best on this project's 2-core CPU

    def __init__(self, model, relu: bool = True, chunk_size: int | None = None):
        self.relu = relu
        super().__init__(model, chunk_size)

    def channel_weights(self, feature_map, grads):
        return grads.mean(axis=(1, 2))  # (N, C)

    def cam_7x7(self, variables, images, targets):
        feature_map = self.features(variables, images)  # (N, 7, 7, C)
        logits, head_vjp = jax.vjp(lambda a: self.head(variables, a), feature_map)
        t = _resolve_targets(logits, targets)
        (grads,) = head_vjp(jax.nn.one_hot(t, logits.shape[-1], dtype=logits.dtype))
        weights = self.channel_weights(feature_map, grads)  # (N, C)
        cam = jnp.einsum("nhwc,nc->nhw", feature_map, weights)
        return (jax.nn.relu(cam) if self.relu else cam), logits

    def _maps(self, variables, images, targets, key):
        cam, logits = self.cam_7x7(variables, images, targets)
        return upsample(cam), logits

    def raw_cam(self, params, batch_stats, images, target_classes=None) -> np.ndarray:
        """The 7x7 map before upsampling and scaling, (N, 7, 7)."""
        x = as_image_batch(images)
        t = as_targets(target_classes, len(x))
        cam, _ = jax.jit(self.cam_7x7)(_variables(self.model, params, batch_stats), x, t)
        return np.asarray(cam)

    def compute_gradcam(self, params, batch_stats, image, target_class: int | None = None):
        """One image -> ``(heatmap (28, 28) in [0, 1], predicted class, target logit)``.

        ``score`` is the logit (pre-softmax) of the explained class — the prediction unless
        ``target_class`` is given.
        """
        x = as_image_batch(image)
        if len(x) != 1:
            raise ValueError(f"compute_gradcam: expected one image, got a batch of {len(x)}; "
                             f"use attribute() for batches")
        maps, preds, scores = self.explain(params, batch_stats, x,
                                           None if target_class is None else [target_class])
        return np.asarray(normalize_maps(maps[0])), int(preds[0]), float(scores[0])


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, arXiv:1710.11063), eq. 19.

    alpha^kc_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3), with g = d y^c / d A^k_ij;
    w_k = sum_ij alpha^kc_ij ReLU(g). Written with the exponential-of-score simplification
    that pytorch-grad-cam uses (higher derivatives as powers of the first).
    """

    def channel_weights(self, feature_map, grads):
        g2, g3 = grads ** 2, grads ** 3
        denom = 2 * g2 + feature_map.sum(axis=(1, 2), keepdims=True) * g3
        alpha = g2 / jnp.where(denom != 0, denom, 1.0)
        return (alpha * jax.nn.relu(grads)).sum(axis=(1, 2))


class ScoreCAM(GradCAM):
    """Score-CAM (Wang et al., CVPR-W 2020, arXiv:1910.01279), eqs. 6-8.

    Each channel's upsampled activation, min-max scaled to [0, 1], masks the input; the
    channel weight is the softmax over channels of the target logit on the masked input.
    Costs one forward pass per channel (128 per image): bounded by the forward pass.
    """

    chunk_size = 64  # 8,192 masked digits a call: 12,000 maps/s on an H100, 6,500 at 16
    cpu_chunk_size = 2  # 256 masked digits a call: 10.0 against 9.0 maps/s at 16 here

    def _maps(self, variables, images, targets, key):
        feature_map = self.features(variables, images)  # (N, 7, 7, C)
        logits = self.head(variables, feature_map)
        t = _resolve_targets(logits, targets)
        n, _, _, c = feature_map.shape
        masks = normalize_maps(upsample(jnp.moveaxis(feature_map, -1, 1).reshape(n * c, 7, 7)))
        masked = images[:, None] * masks.reshape(n, c, 28, 28, 1)  # (N, C, 28, 28, 1)
        scores = self.logits(variables, masked.reshape(n * c, 28, 28, 1)).reshape(n, c, -1)
        target_scores = jnp.take_along_axis(scores, t[:, None, None], 2)[..., 0]  # (N, C)
        weights = jax.nn.softmax(target_scores, axis=1)
        cam = jax.nn.relu(jnp.einsum("nhwc,nc->nhw", feature_map, weights))
        return upsample(cam), logits


# ---- gradient family


class Saliency(Explainer):
    """Vanilla gradient saliency (Simonyan et al., ICLR-W 2014, arXiv:1312.6034), eq. 2 / sec. 3.1.

    M = |d y^c / d x| for the single grayscale channel; ``absolute=False`` gives the signed
    gradient.
    """

    cpu_chunk_size = 64

    def __init__(self, model, absolute: bool = True, chunk_size: int | None = None):
        self.absolute = absolute
        self.signed = not absolute
        super().__init__(model, chunk_size)

    def _maps(self, variables, images, targets, key):
        grads, logits = self.target_logit_grad(variables, images, targets)
        g = grads[..., 0]
        return (jnp.abs(g) if self.absolute else g), logits


class GradientXInput(Explainer):
    """Gradient x Input (Shrikumar et al. 2016, arXiv:1605.01713; Ancona et al., ICLR 2018, eq. 3).

    R = x * d y^c / d x (signed).
    """

    signed = True
    cpu_chunk_size = 64

    def _maps(self, variables, images, targets, key):
        grads, logits = self.target_logit_grad(variables, images, targets)
        return (grads * images)[..., 0], logits


class IntegratedGradients(Explainer):
    """Integrated Gradients (Sundararajan et al., ICML 2017, arXiv:1703.01365), eq. 3.

    IG_i = (x_i - x'_i) * integral_0^1 d y^c(x' + a (x - x')) / d x_i da, approximated with
    ``steps`` Gauss-Legendre nodes (as Captum does). Completeness: sum_i IG_i ~= y^c(x) - y^c(x').
    The default 100 steps keeps the completeness error under 1% on average on real digits with
    the shipped model (the first 1,000 test digits: 1.77% mean at 50 steps, 0.83% at 100,
    0.41% at 200; the ReLU network's kinks make single digits worse, up to 9% at 100 steps).
    ``baseline``: a scalar pixel value or a (28, 28[, 1]) image; default black (0).
    All interpolants of a chunk go through the network as one batch.
    """

    signed = True

    def __init__(self, model, steps: int = 100, baseline=0.0, chunk_size: int | None = None):
        self.steps = whole_number("steps", steps)
        b = np.asarray(baseline, np.float32)
        if b.ndim and b.size != 784:
            raise ValueError(f"baseline: expected a scalar or a 28x28 image, got shape {b.shape}")
        if not np.isfinite(b).all():
            raise ValueError("baseline: expected finite values, got NaN/inf")
        self.baseline = b.reshape(1, 28, 28, 1) if b.ndim else b
        nodes, weights = np.polynomial.legendre.leggauss(self.steps)
        self.alphas = ((nodes + 1) / 2).astype(np.float32)  # in (0, 1)
        self.weights = (weights / 2).astype(np.float32)      # sum to 1
        self.chunk_size = max(1, 8192 // self.steps)  # digits a call: ~8,192 interpolants
        self.cpu_chunk_size = max(1, 64 // self.steps)  # ~64 on a CPU
        super().__init__(model, chunk_size)

    def _maps(self, variables, images, targets, key):
        n = images.shape[0]
        baseline = jnp.broadcast_to(jnp.asarray(self.baseline), images.shape)
        logits = self.logits(variables, images)
        t = _resolve_targets(logits, targets)
        a = jnp.asarray(self.alphas)[:, None, None, None, None]
        path = baseline[None] + a * (images - baseline)[None]  # (S, N, 28, 28, 1)
        grads, _ = self.target_logit_grad(variables, path.reshape(-1, 28, 28, 1), jnp.tile(t, self.steps))
        avg = jnp.tensordot(jnp.asarray(self.weights), grads.reshape(self.steps, n, 28, 28, 1), 1)
        return ((images - baseline) * avg)[..., 0], logits

    def completeness_gap(self, params, batch_stats, images, target_classes=None, maps=None):
        """Per image: sum of attributions minus (f(x) - f(baseline)) for the target logit, and f(x) - f(x').

        ``maps``: this explainer's attributions of ``images`` for ``target_classes`` when
        they are already at hand (e.g. in ``evaluate_xai``); computed here otherwise.
        """
        x = as_image_batch(images)
        requested = as_targets(target_classes, len(x))
        if maps is None:
            maps = self.attribute(params, batch_stats, x, target_classes)
        maps = np.asarray(maps, np.float32)
        if maps.shape != (len(x), *IMAGE_HW):
            raise ValueError(f"maps: expected shape {(len(x), *IMAGE_HW)}, got {maps.shape}")
        variables = _variables(self.model, params, batch_stats)
        forward = jax.jit(self.logits)
        (logits,) = in_chunks(lambda xc: (forward(variables, xc),), (x,), 1000)
        t = np.where(requested < 0, logits.argmax(-1), requested)
        base_logits = np.asarray(forward(variables, np.broadcast_to(self.baseline, (1, 28, 28, 1))))[0]
        delta = logits[np.arange(len(x)), t] - base_logits[t]
        return maps.sum(axis=(1, 2)) - delta, delta


class SmoothGrad(Explainer):
    """SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825), eq. 3.

    M = (1/n) sum_k |d y^c / d x (x + N(0, sigma^2))|, sigma = noise_level * (max - min) of
    the input range [0, 1]. ``absolute=False`` averages signed gradients instead. Noise comes
    from the explicit ``key`` passed to ``attribute``/``explain`` (default PRNGKey(0)); the
    same ``samples`` noise images are used for every image of the call, so an image's map
    does not depend on the batch it is in.
    """

    def __init__(self, model, samples: int = 25, noise_level: float = 0.15, absolute: bool = True,
                 chunk_size: int | None = None):
        self.samples = whole_number("samples", samples)
        self.noise_level, self.absolute = finite_number("noise_level", noise_level, 0.0), absolute
        self.signed = not absolute
        self.chunk_size = max(1, 8192 // self.samples)  # digits a call: ~8,192 noisy copies
        self.cpu_chunk_size = max(1, 64 // self.samples)  # ~64 on a CPU
        super().__init__(model, chunk_size)

    def _maps(self, variables, images, targets, key):
        n = images.shape[0]
        logits = self.logits(variables, images)
        t = _resolve_targets(logits, targets)
        # One set of noise samples, shared by every image: an image's map then depends only on
        # the image and the key, not on which batch it came in.
        noise = self.noise_level * jax.random.normal(key, (self.samples, 1, *images.shape[1:]), images.dtype)
        noisy = (images[None] + noise).reshape(-1, 28, 28, 1)
        grads, _ = self.target_logit_grad(variables, noisy, jnp.tile(t, self.samples))
        grads = grads.reshape(self.samples, n, 28, 28)
        return (jnp.abs(grads) if self.absolute else grads).mean(0), logits


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


class Occlusion(Explainer):
    """Occlusion (Zeiler & Fergus, ECCV 2014, arXiv:1311.2901), sec. 4.2, as in Captum.

    A ``patch`` x ``patch`` square of ``baseline`` slides with ``stride``; each pixel gets the
    mean drop of the target logit over the windows that cover it. Forward passes only.

    With ``MNISTCNN`` (any module with ``segments``, ``stem`` and ``conv_block``) the
    occluded forward passes are incremental (``_incremental_occlusion_logits``): only the
    activations a window can change are recomputed, about 1.6x fewer operations for the
    default 4x4 patch, same maps to float rounding. ``incremental=False`` runs every
    occluded image through the whole network.
    """

    signed = True
    chunk_size = 64  # ~10,800 occluded digits a call: 19,300 maps/s on an H100, 3,000 at 8
    cpu_chunk_size = 2  # 338 occluded digits a call: 14.0-14.7 against 11.2-12.3 maps/s at 8 here

    def __init__(self, model, patch: int = 4, stride: int = 2, baseline: float = 0.0,
                 chunk_size: int | None = None, incremental: bool = True):
        self.patch = whole_number("patch", patch, 1, 28)
        self.stride = whole_number("stride", stride, 1, 28)
        self.baseline = finite_number("baseline", baseline)
        starts = list(range(0, 28 - self.patch + 1, self.stride))
        if starts[-1] != 28 - self.patch:
            starts.append(28 - self.patch)  # cover the last rows/columns too
        self.starts = starts
        masks = np.zeros((len(starts) ** 2, 28, 28), np.float32)
        for k, (i, j) in enumerate((i, j) for i in starts for j in starts):
            masks[k, i:i + self.patch, j:j + self.patch] = 1
        self.masks = masks  # (W, 28, 28), 1 inside the occluding window
        self.coverage = masks.sum(0)
        can = incremental and all(callable(getattr(model, m, None)) for m in ("segments", "stem", "conv_block"))
        self.plan = occlusion_plan(starts, self.patch, model.segments()) if can else []
        super().__init__(model, chunk_size)

    def occluded_logits(self, variables, images):
        """Logits of each image with each window occluded, (N, W, classes)."""
        if self.plan:
            return self.model.apply(variables, images, self.baseline, self.starts, self.patch, self.plan,
                                    method=_incremental_occlusion_logits)
        n, w = images.shape[0], len(self.masks)
        m = jnp.asarray(self.masks)[None, :, :, :, None]  # (1, W, 28, 28, 1)
        occluded = images[:, None] * (1 - m) + self.baseline * m  # (N, W, 28, 28, 1)
        return self.logits(variables, occluded.reshape(n * w, 28, 28, 1)).reshape(n, w, -1)

    def _maps(self, variables, images, targets, key):
        logits = self.logits(variables, images)
        t = _resolve_targets(logits, targets)
        out = self.occluded_logits(variables, images)
        drop = jnp.take_along_axis(logits, t[:, None], 1) - jnp.take_along_axis(out, t[:, None, None], 2)[..., 0]
        maps = jnp.einsum("nw,whk->nhk", drop, jnp.asarray(self.masks)) / jnp.asarray(self.coverage)
        return maps, logits


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
    """The seed's saliency for one image: (|d logit / d x| scaled to [0, 1] (28, 28), pred, logit)."""
    maps, preds, scores = Saliency(model).explain(
        params, batch_stats, image, None if target_class is None else [target_class])
    if len(maps) != 1:
        raise ValueError(f"compute_saliency: expected one image, got a batch of {len(maps)}")
    return np.asarray(normalize_maps(maps[0])), int(preds[0]), float(scores[0])

"""The base classes every method derives from.

``Explainer``: the model adapter, input checks, chunking and the one batched call;
subclasses write ``_maps`` for one chunk. ``CAMExplainer``: the layer methods, which reach a
spatial layer's activations (and their gradients) and upsample a low-resolution map.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .checks import as_targets, whole_number
from .display import normalize_maps
from .model import explained
from .ops import _resolve_targets, upsample
from .runtime import in_chunks, on_cpu, split_over_devices


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
    #: set by ``registry.register``: the method's declared facts (title, family, options...)
    spec = None

    @property
    def signed(self) -> bool:
        """Whether this instance's maps are signed (its spec, with its own options)."""
        return self.spec.is_signed(vars(self)) if self.spec is not None else False

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
        attributions, logits = self._channel_maps(variables, images, targets, key)
        return self.reduce_channels(attributions), logits

    def _channel_maps(self, variables, images, targets, key):
        """``(attributions, logits)`` before the channel reduction: (n, H, W, C) for a method
        that attributes each input element (what NoiseTunnel averages, as Captum does), else
        the maps (n, H, W) themselves. Write this or ``_maps``."""
        return self._maps(variables, images, targets, key)

    def reduce_channels(self, attributions):
        """(n, H, W, C) attributions -> (n, H, W) maps: their sum over channels by default."""
        return attributions if attributions.ndim == 3 else attributions.sum(-1)

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


class CAMExplainer(Explainer):
    """Base of the layer (CAM) methods: a spatial layer's output A (N, h, w, C), and where a
    method needs them its gradients, give a low-resolution map (N, h, w) that is bilinearly
    upsampled to the image (half-pixel centres, as Captum's ``LayerAttribution.interpolate``
    and pytorch-grad-cam's ``cv2.resize``).

    A gradient CAM writes ``channel_weights(A, dA) -> (N, C)`` (the map is
    ``ReLU(sum_k w_k A^k)``) or, where the weights are per pixel, ``combine(A, dA) -> (N, h, w)``.
    A forward-only CAM sets ``needs_grads = False`` and writes ``combine(A, None)``, or
    overrides ``low_res_cam`` altogether (Score-CAM).

    ``layer``: the submodule whose output is A, by its path ("block3/conv2"); None: the
    model's ``features``/``head`` split (MNISTCNN's last conv block), else its last spatial
    layer. ``relu=False`` keeps negative evidence.
    """

    needs_grads = True
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
        raise NotImplementedError

    def combine(self, feature_map, grads):
        """The map before the ReLU, (N, h, w): sum_k w_k A^k by default."""
        return jnp.einsum("nhwc,nc->nhw", feature_map, self.channel_weights(feature_map, grads))

    def low_res_cam(self, variables, images, targets):
        """``(cam (N, h, w) at the layer's resolution, logits)``."""
        if self.needs_grads:
            feature_map, grads, logits = self.activations_and_grads(variables, images, targets)
        else:
            (feature_map, logits), grads = self.activations(variables, images), None
        cam = self.combine(feature_map, grads)
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
        ``target_class`` is given. (Every CAM has it; the name is GradCAM's.)
        """
        x = self.target.images(image)
        if len(x) != 1:
            raise ValueError(f"compute_gradcam: expected one image, got a batch of {len(x)}; "
                             f"use attribute() for batches")
        maps, preds, scores = self.explain(params, batch_stats, x,
                                           None if target_class is None else [target_class])
        return np.asarray(normalize_maps(maps[0])), int(preds[0]), float(scores[0])

"""CAM (layer) methods: a spatial layer's activations, weighted, upsampled to the image.

Each is a ``CAMExplainer`` with its weighting in a few lines, as in pytorch-grad-cam.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ..base import CAMExplainer
from ..checks import finite_number
from ..display import normalize_maps
from ..ops import _resolve_targets, upsample
from ..registry import Option, register

LAYER = Option("layer", str, "the layer explained, by its module path ('block3/conv2'); None: the model's "
               "features/head split, else its last spatial layer", nullable=True)
RELU = Option("relu", bool, "ReLU on the map (False keeps negative evidence)")


@register("gradcam", title="Grad-CAM", family="cam", cost="fast", options=(LAYER, RELU),
          reference="pytorch-grad-cam GradCAM; Captum LayerGradCam",
          paper="Selvaraju et al., ICCV 2017, arXiv:1610.02391")
class GradCAM(CAMExplainer):
    """Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391), eqs. 1-2.

    alpha_k = mean_ij d y^c / d A^k_ij   (y^c: target logit, A: the explained layer's output)
    L = ReLU(sum_k alpha_k A^k), at the layer's resolution (7x7 for MNISTCNN), bilinearly
    upsampled to the image (half-pixel centres, as Captum's LayerGradCam + interpolate).

    ``raw_cam`` gives the map before upsampling. ``attribute`` returns the upsampled,
    unscaled map; ``compute_gradcam`` returns the display map scaled to [0, 1].
    """

    def channel_weights(self, feature_map, grads):
        return grads.mean(axis=(1, 2))  # (N, C)


@register("gradcam++", title="Grad-CAM++", family="cam", cost="fast",
          options=(LAYER, RELU, Option("eps", float, "the denominator's epsilon (pytorch-grad-cam's 1e-6)", low=0.0)),
          reference="pytorch-grad-cam GradCAMPlusPlus",
          paper="Chattopadhay et al., WACV 2018, arXiv:1710.11063")
class GradCAMPlusPlus(CAMExplainer):
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


@register("scorecam", title="Score-CAM", family="cam", cost="slow", options=(LAYER, RELU),
          reference="pytorch-grad-cam ScoreCAM",
          paper="Wang et al., CVPR-W 2020, arXiv:1910.01279")
class ScoreCAM(CAMExplainer):
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

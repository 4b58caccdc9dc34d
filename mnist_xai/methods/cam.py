"""CAM (layer) methods: a spatial layer's activations, weighted, upsampled to the image.

Each is a ``CAMExplainer`` with its weighting in a few lines, as in pytorch-grad-cam.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

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


@register("hirescam", title="HiResCAM", family="cam", cost="fast", options=(LAYER, RELU),
          reference="pytorch-grad-cam HiResCAM",
          paper="Draelos & Carin, arXiv:2011.08891 (2020)")
class HiResCAM(CAMExplainer):
    """HiResCAM (Draelos & Carin, arXiv:2011.08891), eq. 4: the gradient times the activation,
    elementwise, summed over channels (no spatial averaging of the gradient):

    L_ij = ReLU(sum_k dy^c/dA^k_ij * A^k_ij)

    pytorch-grad-cam 1.5.7 hirescam.py:23-30 (``(grads * activations).sum(axis=1)``). Equals
    Grad-CAM where the gradient is constant over space (a global-average-pooled head: its
    spatial mean is itself).
    """

    def combine(self, feature_map, grads):
        return (grads * feature_map).sum(-1)


@register("xgradcam", title="XGrad-CAM", family="cam", cost="fast", options=(LAYER, RELU),
          reference="pytorch-grad-cam XGradCAM",
          paper="Fu et al., BMVC 2020, arXiv:2008.02312")
class XGradCAM(CAMExplainer):
    """XGrad-CAM (Fu et al., BMVC 2020, arXiv:2008.02312), eq. 13: each gradient weighted by
    its activation's share of the channel's sum,

    w_k = sum_ij (A^k_ij / (sum_ab A^k_ab + eps)) dy^c/dA^k_ij,   L = ReLU(sum_k w_k A^k)

    with pytorch-grad-cam's ``eps = 1e-7`` (xgrad_cam.py:24-31), which keeps an all-zero
    channel's weight 0.
    """

    def channel_weights(self, feature_map, grads):
        total = feature_map.sum(axis=(1, 2), keepdims=True)
        return (grads * feature_map / (total + 1e-7)).sum(axis=(1, 2))


@register("layercam", title="LayerCAM", family="cam", cost="fast", options=(LAYER, RELU),
          reference="pytorch-grad-cam LayerCAM",
          paper="Jiang et al., IEEE TIP 30:5875-5888 (2021), doi:10.1109/TIP.2021.3089943")
class LayerCAM(CAMExplainer):
    """LayerCAM (Jiang et al., IEEE TIP 2021), eqs. 4-5: each activation weighted by its own
    positive gradient,

    L_ij = ReLU(sum_k ReLU(dy^c/dA^k_ij) A^k_ij)

    pytorch-grad-cam 1.5.7 layer_cam.py:27-32 (``np.maximum(grads, 0) * activations``, summed
    over channels).
    """

    def combine(self, feature_map, grads):
        return (jax.nn.relu(grads) * feature_map).sum(-1)


def first_component(a):
    """(N, h, w, C) -> (N, h, w): each image's h*w C-vectors, centred over space, projected on
    their first right-singular vector (pytorch-grad-cam's ``get_2d_projection``,
    utils/svd_on_activations.py:5-21: NaN -> 0, centre, ``np.linalg.svd``, ``X @ VT[0]``).
    The singular vector's sign is whatever the SVD returns (pytorch-grad-cam fixes none)."""
    n, h, w, c = a.shape
    x = jnp.where(jnp.isnan(a), 0.0, a).reshape(n, h * w, c)
    x = x - x.mean(axis=1, keepdims=True)
    # One SVD an image (lax.map), not one batched call: XLA's CPU runtime hung on the batched
    # SVD of 64 or more images with two host devices (one per core, as the scripts run), in
    # every run; the per-image loop gives the same vectors and did not hang in 3 runs of 200.
    v1 = jax.lax.map(lambda xi: jnp.linalg.svd(xi, full_matrices=False)[2][0], x)  # (N, C)
    return jnp.einsum("npc,nc->np", x, v1).reshape(n, h, w)


@register("eigencam", title="Eigen-CAM", family="cam", cost="fast", options=(LAYER, RELU),
          reference="pytorch-grad-cam EigenCAM",
          paper="Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299")
class EigenCAM(CAMExplainer):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299), eqs. 5-6: the activations'
    projection on their first principal component, L = ReLU(X v_1) with X the (h*w, C)
    activations centred over space (``first_component``; pytorch-grad-cam eigen_cam.py:21).

    Class-agnostic (no gradients, the target is ignored). The sign of v_1 is arbitrary (an SVD
    gives v_1 or -v_1): pytorch-grad-cam 1.5.7 does not fix it (its sign-corrected variant,
    ``get_2d_projection_with_sign_correction``, is not what EigenCAM calls), and neither do we,
    so the ReLU may keep the "wrong" half; ``relu=False`` gives the signed projection.
    """

    needs_grads = False

    def combine(self, feature_map, grads):
        return first_component(feature_map)


@register("eigengradcam", title="Eigen-Grad-CAM", family="cam", cost="fast", options=(LAYER, RELU),
          reference="pytorch-grad-cam EigenGradCAM",
          paper="Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299 (Eigen-CAM; pytorch-grad-cam's gradient variant)")
class EigenGradCAM(CAMExplainer):
    """Eigen-Grad-CAM: Eigen-CAM (Muhammad & Yeasin, IJCNN 2020) on dy^c/dA * A instead of A.

    The first-component projection (``first_component``) of the elementwise product, a
    pytorch-grad-cam variant rather than the paper's method (eigen_grad_cam.py:4-21, "Like Eigen
    CAM ... But multiply the activations x gradients"); class-specific through the gradient. The
    same sign caveat as ``EigenCAM``.
    """

    def combine(self, feature_map, grads):
        return first_component(grads * feature_map)


@register("ablationcam", title="Ablation-CAM", family="cam", cost="medium", options=(LAYER, RELU),
          reference="pytorch-grad-cam AblationCAM (AblationLayer)",
          paper="Desai & Ramaswamy, WACV 2020, doi:10.1109/WACV45572.2020.9093360")
class AblationCAM(CAMExplainer):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020), eq. 3: channel k's weight is the relative
    drop of the target logit when its activations are set to 0,

    w_k = (y^c - y^c_k) / y^c,   L = ReLU(sum_k w_k A^k)

    (pytorch-grad-cam 1.5.7 ablation_cam.py:87-149, ``(original - ablated) / original``; its
    ``AblationLayer.__call__``, ablation_layer.py:76-90, writes 0 when the layer's minimum is 0,
    as after a ReLU, else min - 1e7: we always write 0.) The division by y^c is the reference's,
    so a negative target logit flips every weight's sign. One forward pass of the rest of the
    network per channel, all channels of a chunk in one call.
    """

    needs_grads = False
    chunk_size = 64
    cpu_chunk_size = 8

    def low_res_cam(self, variables, images, targets):
        feature_map, logits = self.activations(variables, images)  # (N, h, w, C)
        t = _resolve_targets(logits, targets)
        n, h, w, c = feature_map.shape
        keep = 1.0 - jnp.eye(c, dtype=feature_map.dtype)  # row k: every channel but k
        ablated = (feature_map[:, None] * keep[None, :, None, None, :]).reshape(n * c, h, w, c)
        scores = self.logits_from_layer(variables, jnp.repeat(images, c, axis=0), ablated)
        score = jnp.take_along_axis(logits, t[:, None], 1)  # (N, 1)
        ablated_scores = jnp.take_along_axis(scores.reshape(n, c, -1), t[:, None, None], 2)[..., 0]
        cam = jnp.einsum("nhwc,nc->nhw", feature_map, (score - ablated_scores) / score)
        return (jax.nn.relu(cam) if self.relu else cam), logits

    def logits_from_layer(self, variables, images, feature_map):
        """The logits with the explained layer's output replaced by ``feature_map``."""
        layer = self._layers[images.shape[1:]]
        m = self.target.module
        if layer is None:
            return m.apply(variables, feature_map, method=m.head)

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            hit = context.method_name == "__call__" and "/".join(context.module.path) == layer
            return feature_map if hit else out

        with nn.intercept_methods(interceptor):
            return m.apply(variables, images, **self.target.call_kwargs)


__all__ = ["AblationCAM", "EigenCAM", "EigenGradCAM", "GradCAM", "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "ScoreCAM", "XGradCAM"]

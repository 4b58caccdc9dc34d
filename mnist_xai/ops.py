"""Traced building blocks the methods share: upsampling, target resolution, channel reduction."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .checks import IMAGE_HW


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


def _resolve_targets(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.where(targets < 0, logits.argmax(-1), targets)


def _channels_max(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H, W): the largest value over channels (the grayscale channel itself)."""
    return x.max(axis=-1)

"""Display helpers: scaling maps to [0, 1], overlays, the grid of maps. Nothing here is
traced; the methods return raw maps and these make pictures of them."""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from .checks import IMAGE_HW, _describe, as_images


def normalize_maps(maps, eps: float = 1e-12):
    """Min-max scale each map of (N, H, W) (or one (H, W)) to [0, 1]; a flat map gives zeros."""
    maps = jnp.asarray(maps, jnp.float32)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = maps.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    return jnp.where(span > eps, (maps - lo) / jnp.where(span > eps, span, 1.0), 0.0)


def clip_to_percentile(maps, percentile: float = 99.0):
    """Scale each map of (N, H, W) (or one (H, W)) as PAIR's saliency library displays a
    gradient (``saliency.core.VisualizeImageGrayscale``): (m - min) / (p-th percentile - min),
    clipped to [0, 1]. A few very large gradients then no longer squash the rest of the map
    to black, which min-max scaling does to vanilla saliency. For display only: the methods
    return their raw maps. A map whose percentile equals its minimum gives zeros.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile: expected a number in (0, 100], got {percentile!r}")
    maps = np.asarray(maps, np.float32)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    hi = np.percentile(maps, percentile, axis=(-2, -1), keepdims=True)
    span = hi - lo
    return np.where(span > 0, np.clip((maps - lo) / np.where(span > 0, span, 1.0), 0.0, 1.0), 0.0)


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

"""Perturbation methods: forward passes on changed inputs, no gradients."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mnist_cnn_model import max_pool_2x2

from ..base import Explainer
from ..checks import IMAGE_HW, finite_number, whole_number
from ..model import explained
from ..ops import _resolve_targets
from ..registry import Option, register


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


@register("occlusion", title="Occlusion", family="perturbation", cost="slow", signed=True,
          options=(Option("patch", int, "side of the occluding square, px", low=1, choices=(2, 4, 6, 8)),
                   Option("stride", int, "step between windows, px", low=1),
                   Option("baseline", float, "the occluding value, in the model's input range"),
                   Option("incremental", bool, "recompute only what a window changes (MNISTCNN)")),
          reference="Captum Occlusion", paper="Zeiler & Fergus, ECCV 2014, arXiv:1311.2901")
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

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
from ..runtime import in_chunks, on_cpu, split_over_devices


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


# ----------------------------------------------------------------------------- feature methods
#
# Feature Ablation, Shapley Value Sampling, KernelSHAP and LIME perturb *features*: groups of
# pixels (over all channels) switched between the image and ``baseline`` together. A feature
# mask (H, W) (or one per image, (N, H, W)) holds each pixel's feature id 0..M-1; by default
# square ``patch`` x ``patch`` patches (M = 49 for 4 px on 28x28). Each method scores the M
# features of an image and paints every pixel with its feature's score (Captum's
# ``return_input_shape=True``); with C channels each channel of Captum's attribution holds that
# same score (our maps are not summed over channels, like Occlusion's). Every sample (the
# permutations, the coalitions, RISE's masks) is drawn from the ``key`` of ``attribute``
# (default PRNGKey(0)) by the public functions below, the same for every image of a call.

#: KernelSHAP's weight of the all-on and all-off coalitions (Captum's ``inf_weight``).
KERNEL_SHAP_INF_WEIGHT = 1e6


def patch_features(hw: tuple[int, int], patch: int) -> np.ndarray:
    """(H, W) int32 feature ids of ``patch`` x ``patch`` squares, row by row (edge squares may be smaller)."""
    rows, cols = np.arange(hw[0]) // patch, np.arange(hw[1]) // patch
    return (rows[:, None] * -(-hw[1] // patch) + cols[None, :]).astype(np.int32)


def _feature_mask(value):
    """None, or the feature mask as int32 (H, W) / (N, H, W); one ValueError line otherwise."""
    if value is None:
        return None
    m = np.asarray(value) if not isinstance(value, (str, bytes)) else np.asarray(None)
    ok = m.dtype != bool and np.issubdtype(m.dtype, np.integer) and m.ndim in (2, 3) and m.size > 0
    if not ok or m.min() < 0 or m.max() >= 2 ** 31:
        got = f"shape {m.shape} dtype {m.dtype}" + (f" values in [{m.min()}, {m.max()}]" if ok else "")
        raise ValueError(f"feature_mask: expected non-negative integer feature ids, (H, W) or (N, H, W), got {got}")
    return m.astype(np.int32)


@functools.partial(jax.jit, static_argnums=(1, 2))
def shapley_permutations(key, samples: int, num_features: int) -> jax.Array:
    """(samples, M) int32: one random order of the M features a row (Shapley Value Sampling)."""
    order = jnp.broadcast_to(jnp.arange(num_features, dtype=jnp.int32), (samples, num_features))
    return jax.random.permutation(key, order, axis=1, independent=True)


@functools.partial(jax.jit, static_argnums=(1, 2))
def kernel_shap_coalitions(key, samples: int, num_features: int) -> jax.Array:
    """(samples, M) float32 coalitions (1: the feature is the image's), drawn as Captum's
    ``KernelShap.kernel_shap_perturb_generator``: all on, all off, then for each other row a size
    k in 1..M-1 with p(k) proportional to (M - 1) / (k (M - k)) and a uniformly random k-subset
    (the k largest of M standard normals)."""
    m = num_features
    k_size, k_subset = jax.random.split(key)
    sizes = jnp.arange(1, m)
    logp = jnp.log((m - 1) / (sizes * (m - sizes)).astype(jnp.float32))
    k = jax.random.categorical(k_size, logp, shape=(max(samples - 2, 0),)) + 1
    vals = jax.random.normal(k_subset, (max(samples - 2, 0), m))
    rank = jnp.argsort(jnp.argsort(-vals, axis=1), axis=1)  # 0 for the largest
    rows = jnp.concatenate([jnp.ones((1, m)), jnp.zeros((1, m)), (rank < k[:, None]).astype(jnp.float32)])
    return rows[:samples]


@functools.partial(jax.jit, static_argnums=(1, 2))
def lime_coalitions(key, samples: int, num_features: int) -> jax.Array:
    """(samples, M) float32: each feature on with probability 1/2 (Captum's ``default_perturb_func``)."""
    return jax.random.bernoulli(key, 0.5, (samples, num_features)).astype(jnp.float32)


def _block_logits(logits_fn, images, block: int):
    """``logits_fn`` of (K, H, W, C) images, ``block`` of them at a time (``lax.map``): (K, classes)."""
    k = images.shape[0]
    if k <= block:
        return logits_fn(images)
    nb = -(-k // block)
    x = jnp.pad(images, ((0, nb * block - k),) + ((0, 0),) * (images.ndim - 1))
    out = jax.lax.map(logits_fn, x.reshape(nb, block, *images.shape[1:]))
    return out.reshape(nb * block, -1)[:k]


class _Perturbation(Explainer):
    """Shared by the feature methods and RISE: target logits of perturbed copies, in blocks."""

    chunk_size = 16  # images a call (each becomes tens to thousands of perturbed copies)
    cpu_chunk_size = 1
    #: perturbed copies a forward pass (GPU; 1024 on a CPU): bounds the activations' memory
    forward_block = 8192

    def __init__(self, model, baseline: float, chunk_size: int | None = None):
        self.baseline = finite_number("baseline", baseline)
        super().__init__(model, chunk_size)
        if on_cpu():
            self.forward_block = 1024

    def perturbed_logits(self, variables, images, keep):
        """``(logits of images * keep + baseline * (1 - keep) (n, P, classes), logits of the
        images (n, classes))`` for ``keep`` (n, P, H, W), 1 where a copy keeps the pixel (all
        channels). The images ride along as one more copy: one forward graph to compile."""
        n, p = keep.shape[:2]
        w = jnp.concatenate([jnp.ones((n, 1, *keep.shape[2:]), images.dtype), keep.astype(images.dtype)], 1)
        w = w[..., None]
        copies = (images[:, None] * w + self.baseline * (1 - w)).reshape(n * (p + 1), *images.shape[1:])
        out = _block_logits(lambda x: self.logits(variables, x), copies, self.forward_block).reshape(n, p + 1, -1)
        return out[:, 1:], out[:, 0]

    def perturbed_scores(self, variables, images, keep, targets):
        """``(target logits of the copies (n, P), logits of the images (n, classes))``; the
        target is each image's predicted class where ``targets`` is -1."""
        out, logits = self.perturbed_logits(variables, images, keep)
        t = _resolve_targets(logits, targets)
        return jnp.take_along_axis(out, t[:, None, None], 2)[..., 0], logits


class _FeatureMethod(_Perturbation):
    """A method that scores features: ``feature_scores(...) -> (n, M)``, painted onto the pixels."""

    def __init__(self, model, patch: int, feature_mask, baseline: float, chunk_size: int | None = None):
        image_shape = explained(model).image_shape
        side = min(image_shape[:2]) if image_shape is not None else None
        self.patch = whole_number("patch", patch, 1, side)
        self.feature_mask = _feature_mask(feature_mask)
        super().__init__(model, baseline, chunk_size)
        # Per-image feature masks travel with their images; M is the shape of the last argument.
        self._jitted_masks, _ = split_over_devices(self._masked_maps, (False, True, True, True, False, False))

    least_features = 1

    def _check(self, variables, images):
        n, hw = images.shape[0], tuple(images.shape[1:3])
        m = self.feature_mask
        if m is None and self.patch > min(hw):
            raise ValueError(f"patch: expected at most the image side ({min(hw)}), got {self.patch}")
        if m is not None and (m.shape[-2:] != hw or (m.ndim == 3 and len(m) != n)):
            want = f"({n}, {hw[0]}, {hw[1]}) or ({hw[0]}, {hw[1]})"
            raise ValueError(f"feature_mask: expected shape {want} for these images, got {m.shape}")
        num = int(self.masks_for(images.shape).max()) + 1
        if num < self.least_features:
            raise ValueError(f"feature_mask: expected at least {self.least_features} features, got {num}")

    def masks_for(self, shape) -> np.ndarray:
        """(N, H, W) int32 feature ids for images of ``shape`` (N, H, W, C)."""
        m = self.feature_mask if self.feature_mask is not None else patch_features(tuple(shape[1:3]), self.patch)
        return np.broadcast_to(m, (shape[0], *shape[1:3])) if m.ndim == 2 else m

    def feature_scores(self, variables, images, targets, masks, num_features: int, key):
        """``(scores (n, M), logits (n, classes))`` for images (n, H, W, C) and masks (n, H, W)."""
        raise NotImplementedError

    def keep_of(self, coalitions, masks):
        """(P, M) coalitions -> (n, P, H, W) pixels kept, for masks (n, H, W)."""
        return jnp.moveaxis(jnp.take(coalitions, masks, axis=1), 0, 1)

    def _masked_maps(self, variables, images, targets, masks, key, features):
        scores, logits = self.feature_scores(variables, images, targets, masks, features.shape[0], key)
        n = images.shape[0]
        maps = jnp.take_along_axis(scores, masks.reshape(n, -1), 1).reshape(masks.shape)
        return maps, logits

    def _maps(self, variables, images, targets, key):
        # One feature mask for the whole batch (NoiseTunnel around this method): traced here.
        masks = self.masks_for(images.shape)
        if self.feature_mask is not None and self.feature_mask.ndim == 3:
            raise ValueError("feature_mask: expected one (H, W) mask for a method wrapped by NoiseTunnel, "
                             f"got one per image {self.feature_mask.shape}")
        num = int(masks.max()) + 1
        return self._masked_maps(variables, images, targets, jnp.asarray(masks), key, jnp.zeros(num))

    def attribute(self, params, batch_stats, images, target_classes=None, key=None, progress=None,
                  return_logits: bool = False):
        x, variables, t = self._prepare(params, batch_stats, images, target_classes)
        key = jax.random.PRNGKey(0) if key is None else key
        masks = np.ascontiguousarray(self.masks_for(x.shape))
        features = jnp.zeros(int(masks.max()) + 1)
        maps, logits = in_chunks(lambda xc, tc, mc: self._jitted_masks(variables, xc, tc, mc, key, features),
                                 (x, t, masks), self._chunk_for(x.shape[1:]), self.num_devices, progress)
        return (maps, logits) if return_logits else maps


FEATURE_OPTIONS = (
    Option("patch", int, "side of the square features, px (without a feature_mask)", low=1, choices=(2, 4, 7)),
    Option("feature_mask", None, "integer feature ids, (H, W) or (N, H, W) (None: patch squares)", nullable=True),
    Option("baseline", float, "the value of a feature switched off, in the model's input range"),
)


@register("feature_ablation", title="Feature Ablation", family="perturbation", cost="medium", signed=True,
          options=FEATURE_OPTIONS, reference="Captum FeatureAblation",
          paper="Zeiler & Fergus, ECCV 2014, arXiv:1311.2901 (ablation of feature groups)")
class FeatureAblation(_FeatureMethod):
    """Feature Ablation (Zeiler & Fergus, ECCV 2014, arXiv:1311.2901, sec. 4.2, on feature groups), as Captum.

    phi_f = y^c(x) - y^c(x with feature f set to ``baseline``): one forward pass a feature.
    Captum 0.9.0 ``FeatureAblation`` (attr/_core/feature_ablation.py:714-760 builds
    ``x * (1 - mask) + baseline * mask``; :1166 ``eval_diff = initial_eval - modified_eval``).

    Square patches that tile the image (no ``feature_mask``, ``patch`` dividing both sides)
    are Occlusion's windows at stride = patch, each pixel in one window: on a model with
    incremental occlusion (``MNISTCNN``) ``attribute`` runs ``Occlusion(patch, stride=patch)``,
    which recomputes only the activations a patch changes (the same maps to float rounding,
    2e-7 of the max on the shipped checkpoint; 1.4-1.6x the maps/s on the 2-core CPU,
    docs/benchmarks.md). Any other mask takes the general path.
    """

    def __init__(self, model, patch: int = 4, feature_mask=None, baseline: float = 0.0,
                 chunk_size: int | None = None):
        super().__init__(model, patch, feature_mask, baseline, chunk_size)
        self._as_occlusion = None
        image_shape = explained(model).image_shape
        if (feature_mask is None and image_shape is not None and explained(model).incremental
                and image_shape[0] % self.patch == 0 and image_shape[1] % self.patch == 0):
            occlusion = Occlusion(model, self.patch, self.patch, self.baseline, chunk_size)
            self._as_occlusion = occlusion if occlusion.plan else None

    def attribute(self, params, batch_stats, images, target_classes=None, key=None, progress=None,
                  return_logits: bool = False):
        occlusion = self._as_occlusion
        if occlusion is not None and tuple(np.shape(images)[1:3]) == tuple(occlusion.masks.shape[1:]):
            return occlusion.attribute(params, batch_stats, images, target_classes, key, progress, return_logits)
        return super().attribute(params, batch_stats, images, target_classes, key, progress, return_logits)

    def feature_scores(self, variables, images, targets, masks, num_features, key):
        z = jnp.concatenate([jnp.ones((1, num_features)), 1 - jnp.eye(num_features)])  # the image, then each ablation
        y, logits = self.perturbed_scores(variables, images, self.keep_of(z, masks), targets)
        return y[:, :1] - y[:, 1:], logits


@register("shapley_sampling", title="Shapley Value Sampling", family="perturbation", cost="slow", signed=True,
          random=True, options=(Option("samples", int, "random feature orders", low=1, high=100_000,
                                       choices=(5, 10, 25, 50)),) + FEATURE_OPTIONS,
          reference="Captum ShapleyValueSampling",
          paper="Castro et al., Computers & OR 2009, doi:10.1016/j.cor.2008.04.004; Strumbelj & Kononenko, JMLR 2010")
class ShapleyValueSampling(_FeatureMethod):
    """Shapley Value Sampling (Castro, Gomez & Tejada, Computers & OR 2009; Strumbelj & Kononenko 2010), as Captum.

    For each of ``samples`` random orders pi of the M features, start from the all-baseline
    image and switch features to the image's one by one: phi_f = mean over pi of
    y^c(S_pi,f + f) - y^c(S_pi,f), S_pi,f the features before f in pi. Each order's marginals
    sum to y^c(x) - y^c(baseline) (efficiency), whatever the count. M x samples forward
    passes. Captum 0.9.0 ``ShapleyValueSampling.attribute`` (attr/_core/shapley_value.py:
    345 the baseline's output, 374-458 one order at a time, each eval minus the previous,
    465 divided by the number of orders; :55-57 the orders, ``torch.randperm``, here
    ``shapley_permutations`` of the key, the same orders for every image as Captum's).
    """

    def __init__(self, model, samples: int = 25, patch: int = 4, feature_mask=None, baseline: float = 0.0,
                 chunk_size: int | None = None):
        self.samples = whole_number("samples", samples, 1, 100_000)
        super().__init__(model, patch, feature_mask, baseline, chunk_size)

    def feature_scores(self, variables, images, targets, masks, num_features, key):
        perms = shapley_permutations(key, self.samples, num_features)  # (S, M)
        rank = jnp.argsort(perms, axis=1)  # rank[s, f]: where feature f comes in order s
        steps = jnp.arange(num_features)
        on = (rank[:, None, :] <= steps[None, :, None]).astype(images.dtype)  # (S, M steps, M features)
        z = jnp.concatenate([jnp.zeros((1, num_features)), on.reshape(-1, num_features)])  # the baseline first
        y, logits = self.perturbed_scores(variables, images, self.keep_of(z, masks), targets)
        out = y[:, 1:].reshape(len(images), self.samples, num_features)  # (n, S, step)
        base = jnp.broadcast_to(y[:, :1, None], (len(images), self.samples, 1))
        prev = jnp.concatenate([base, out[:, :, :-1]], axis=2)
        gain = jnp.take_along_axis(out - prev, jnp.broadcast_to(rank[None], out.shape), 2)  # step -> feature
        return gain.sum(1) / self.samples, logits


def _weighted_centered(z, y, w):
    """sklearn's ``_preprocess_data`` and ``_rescale_data``: z and y centred on their
    ``w``-weighted means, rows scaled by sqrt(w)."""
    wn = w / w.sum()
    sw = jnp.sqrt(w)[:, None]
    return (z - wn @ z) * sw, (y - wn @ y) * sw[:, 0]


def _stiff_lstsq(z, y, w):
    """sklearn ``LinearRegression(fit_intercept=True).fit(z, y, sample_weight=w).coef_``, accurate in
    float32 although two rows weigh 1e6 times the others.

    The rows are centred on the weighted means and scaled by sqrt(w) as sklearn does; then a
    Householder QR with the rows sorted by decreasing weight solves it (stable for such stiff
    weighted problems: Powell & Reid 1969; about 1e-6 of the coefficients' max from the float64
    solution here, where an SVD ``lstsq`` in float32 is 1e-4 off and sklearn's float32 one 1e-3).
    Where the centred system is rank-deficient (fewer useful coalitions than features) the SVD
    ``lstsq`` gives the minimum-norm solution, as sklearn's ``scipy.linalg.lstsq(cond=1e-6)``.
    """
    order = jnp.argsort(-w)
    a, b = _weighted_centered(z[order], y[order], w[order])
    if a.shape[0] < a.shape[1]:  # fewer coalitions than features: rank-deficient by shape
        return jnp.linalg.lstsq(a, b, rcond=1e-6)[0]
    q, r = jnp.linalg.qr(a)
    d = jnp.abs(jnp.diagonal(r))
    full_rank = d.min() > 1e-6 * d.max()
    by_qr = jax.scipy.linalg.solve_triangular(r, q.T @ b)
    return jnp.where(full_rank, by_qr, jnp.linalg.lstsq(a, b, rcond=1e-6)[0])


@register("kernel_shap", title="KernelSHAP", family="perturbation", cost="slow", signed=True, random=True,
          options=(Option("samples", int, "coalitions (the first two: all features on, all off)", low=2,
                          high=100_000, choices=(50, 100, 200, 500)),) + FEATURE_OPTIONS,
          reference="Captum KernelShap",
          paper="Lundberg & Lee, NeurIPS 2017, arXiv:1705.07874")
class KernelSHAP(_FeatureMethod):
    """KernelSHAP (Lundberg & Lee, NeurIPS 2017, arXiv:1705.07874, Theorem 2), as Captum's ``KernelShap``.

    phi = argmin over (phi_0, phi) of sum_s w_s (y^c(h(z_s)) - phi_0 - z_s . phi)^2, an
    ordinary weighted least-squares fit with an intercept, over ``samples`` coalitions z_s in
    {0, 1}^M (h: features off set to ``baseline``) sampled with the Shapley kernel
    pi(M, k) = (M - 1) / (C(M, k) k (M - k)): sizes k with p(k) ~ (M - 1) / (k (M - k)), then
    a uniform k-subset, so every drawn row weighs w = 1; the all-on and all-off coalitions
    come first and weigh 1e6, which (nearly) enforces phi_0 = y(baseline) and
    sum phi = y(x) - y(baseline). Captum 0.9.0 attr/_core/kernel_shap.py:278-292 (the size
    distribution), 301-323 (the weights, ``inf_weight``), 325-367 (the sampling, here
    ``kernel_shap_coalitions`` of the key), and ``SkLearnLinearRegression``: sklearn
    ``LinearRegression.fit`` (weighted centring, rows scaled by sqrt(w), ``scipy.linalg.lstsq``),
    here the same system solved by ``_stiff_lstsq``. Captum hands sklearn float32 data
    (lime.py:505-516, ``.float()``), whose SVD solve is ~1e-3 of the map's max away from the
    float64 solution (the 1e6 weights); we solve to ~1e-6 of it in float32 and are compared
    with Captum's KernelShap whose surrogate is fitted in float64. The coalitions are the same
    for every image.
    """

    least_features = 2

    def __init__(self, model, samples: int = 200, patch: int = 4, feature_mask=None, baseline: float = 0.0,
                 chunk_size: int | None = None):
        self.samples = whole_number("samples", samples, 2, 100_000)
        super().__init__(model, patch, feature_mask, baseline, chunk_size)

    def feature_scores(self, variables, images, targets, masks, num_features, key):
        z = kernel_shap_coalitions(key, self.samples, num_features)
        y, logits = self.perturbed_scores(variables, images, self.keep_of(z, masks), targets)  # (n, S)
        size = z.sum(1)
        w = jnp.where((size == 0) | (size == num_features), KERNEL_SHAP_INF_WEIGHT, 1.0)

        return jax.vmap(lambda yi: _stiff_lstsq(z, yi, w))(y), logits


@register("lime", title="LIME", family="perturbation", cost="slow", signed=True, random=True,
          options=(Option("samples", int, "random coalitions", low=1, high=100_000, choices=(50, 100, 200, 500)),
                   Option("kernel_width", float, "width of the exponential kernel on the cosine distance",
                          low=1e-6),
                   Option("alpha", float, "ridge regularisation of the linear surrogate", low=0.0)) + FEATURE_OPTIONS,
          reference="Captum Lime, interpretable_model=SkLearnRidge(alpha=1.0)",
          paper="Ribeiro et al., KDD 2016, arXiv:1602.04938")
class LIME(_FeatureMethod):
    """LIME (Ribeiro, Singh & Guestrin, KDD 2016, arXiv:1602.04938, eq. 1-2), as Captum's ``Lime``.

    ``samples`` coalitions z_s in {0, 1}^M, each feature on with probability 1/2 (Captum's
    ``default_perturb_func``, lime.py:683-695; here ``lime_coalitions`` of the key), become
    images h(z_s) (features off set to ``baseline``); each weighs
    pi_s = exp(-d_s^2 / (2 w^2)), d_s = 1 - cos(x, h(z_s)) on the flattened images and
    w = ``kernel_width`` (Captum's ``get_exp_kernel_similarity_function("cosine", 1.0)``,
    lime.py:628-680: note the 2 in the denominator). The surrogate is ridge regression with an
    intercept: phi = argmin sum_s pi_s (y^c(h(z_s)) - phi_0 - z_s . phi)^2 + alpha |phi|^2,
    solved exactly (centred on the pi-weighted means, then (Z'^T P Z' + alpha I) phi = Z'^T P y'),
    which is sklearn's ``Ridge(alpha)`` with ``sample_weight`` — Captum's ``SkLearnRidge``.
    Captum's default surrogate is ``SkLearnLasso(alpha=0.01)``, an iterative solver that
    only converges to a tolerance; ridge is the surrogate of the LIME paper's own package
    (lime_image: ``Ridge(alpha=1)``), has one exact solution even with fewer samples than
    features, and is what we compare with. The coalitions are the same for every image.
    """

    def __init__(self, model, samples: int = 200, kernel_width: float = 1.0, alpha: float = 1.0, patch: int = 4,
                 feature_mask=None, baseline: float = 0.0, chunk_size: int | None = None):
        self.samples = whole_number("samples", samples, 1, 100_000)
        self.kernel_width = finite_number("kernel_width", kernel_width, 1e-6)
        self.alpha = finite_number("alpha", alpha, 0.0)
        super().__init__(model, patch, feature_mask, baseline, chunk_size)

    def similarity(self, images, keep):
        """pi (n, S): the exponential kernel of the cosine distance between each image and its copies."""
        x = images.reshape(len(images), -1)
        w = jnp.broadcast_to(keep[..., None], (*keep.shape, images.shape[-1])).reshape(*keep.shape[:2], -1)
        copies = x[:, None] * w + self.baseline * (1 - w)  # (n, S, D)
        dot = jnp.einsum("nd,nsd->ns", x, copies)
        norms = jnp.linalg.norm(x, axis=1)[:, None] * jnp.linalg.norm(copies, axis=2)
        distance = 1 - dot / jnp.maximum(norms, 1e-8)  # torch.nn.CosineSimilarity(eps=1e-8)
        return jnp.exp(-distance ** 2 / (2 * self.kernel_width ** 2))

    def feature_scores(self, variables, images, targets, masks, num_features, key):
        z = lime_coalitions(key, self.samples, num_features)
        keep = self.keep_of(z, masks)
        y, logits = self.perturbed_scores(variables, images, keep, targets)  # (n, S)
        pi = self.similarity(images, keep.astype(images.dtype))

        def fit(yi, wi):
            a, b = _weighted_centered(z, yi, wi)
            return jnp.linalg.solve(a.T @ a + self.alpha * jnp.eye(num_features), a.T @ b)
        return jax.vmap(fit)(y, pi), logits


# ----------------------------------------------------------------------------- RISE


def rise_upsampling(cells: int, size: int) -> np.ndarray:
    """(size, cells) float64 matrix of the RISE masks' upsampling: skimage ``resize(order=1,
    mode="reflect", anti_aliasing=False)`` along one axis (scipy ``zoom`` with ``grid_mode``:
    output pixel i samples the grid at (i + 0.5) cells / size - 0.5, linear between the two
    nearest cells, mirrored about the edge cells beyond them)."""
    pos = (np.arange(size) + 0.5) * cells / size - 0.5
    lo = np.floor(pos).astype(int)
    frac = pos - lo

    def mirror(i):
        if cells == 1:
            return np.zeros_like(i)
        period = 2 * (cells - 1)
        i = np.abs(i) % period
        return np.where(i >= cells, period - i, i)

    r = np.zeros((size, cells))
    np.add.at(r, (np.arange(size), mirror(lo)), 1 - frac)
    np.add.at(r, (np.arange(size), mirror(lo + 1)), frac)
    return r


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def rise_masks(key, samples: int, grid: int, probability: float, hw: tuple[int, int]):
    """RISE's random masks (Petsiuk et al. 2018, sec. 3.2; github.com/eclique/RISE ``generate_masks``):
    ``(masks (samples, H, W) float32, cells (samples, grid, grid) in {0, 1}, shifts (samples, 2) int32)``.

    Each grid x grid cell is 1 with ``probability``; the grid is bilinearly upsampled to
    (grid + 1) * cell px (cell = ceil(H / grid)) and cropped to H x W at a random shift in
    [0, cell) per axis.
    """
    cell = tuple(-(-s // grid) for s in hw)
    k_cells, k_row, k_col = jax.random.split(key, 3)
    cells = jax.random.bernoulli(k_cells, probability, (samples, grid, grid)).astype(jnp.float32)
    shifts = jnp.stack([jax.random.randint(k_row, (samples,), 0, cell[0]),
                        jax.random.randint(k_col, (samples,), 0, cell[1])], axis=1).astype(jnp.int32)
    rh = jnp.asarray(rise_upsampling(grid, (grid + 1) * cell[0]), jnp.float32)
    rw = jnp.asarray(rise_upsampling(grid, (grid + 1) * cell[1]), jnp.float32)
    up = jnp.einsum("ia,sab,jb->sij", rh, cells, rw)
    crop = jax.vmap(lambda m, s: jax.lax.dynamic_slice(m, (s[0], s[1]), hw))
    return crop(up, shifts), cells, shifts


@register("rise", title="RISE", family="perturbation", cost="slow", signed=True, random=True,
          options=(Option("samples", int, "random masks", low=1, high=100_000, choices=(500, 1000, 2000, 4000)),
                   Option("grid", int, "cells a side of each mask's random grid", low=1, choices=(4, 7, 8)),
                   Option("probability", float, "probability that a cell keeps the image", low=1e-6, high=1.0),
                   Option("baseline", float, "the value where a mask hides the image, in the model's input range"),
                   Option("softmax", bool, "score the class probability (the paper's) instead of the logit")),
          reference="RISE authors' code (github.com/eclique/RISE, generate_masks / explain)",
          paper="Petsiuk, Das & Saenko, BMVC 2018, arXiv:1806.07421")
class RISE(_Perturbation):
    """RISE (Petsiuk, Das & Saenko, BMVC 2018, arXiv:1806.07421, eq. 6-7): randomized input sampling.

    S = sum_i y^c(x . M_i) M_i / (N p): the target score of the image seen through ``samples``
    random smooth masks M_i (``rise_masks``: grid cells on with probability p, bilinear
    upsampling, a random shift), weighted by the masks. The authors' ``explain`` multiplies the
    image by the mask (a black baseline for [0, 1] images); here x . M + baseline (1 - M), so
    a standardised model's black is reachable. The score is the target logit (``softmax=True``:
    its probability, as the authors' Keras model outputs). The masks come from the key, the
    same for every image.
    """

    chunk_size = 8
    cpu_chunk_size = 1

    def __init__(self, model, samples: int = 1000, grid: int = 7, probability: float = 0.5, baseline: float = 0.0,
                 softmax: bool = False, chunk_size: int | None = None):
        self.samples = whole_number("samples", samples, 1, 100_000)
        self.grid = whole_number("grid", grid, 1)
        p = finite_number("probability", probability)
        if not 0 < p <= 1:
            raise ValueError(f"probability: expected a number in (0, 1], got {probability!r}")
        self.probability = p
        if not isinstance(softmax, (bool, np.bool_)):
            raise ValueError(f"softmax: expected True or False, got {softmax!r}")
        self.softmax = bool(softmax)
        super().__init__(model, baseline, chunk_size)

    def _check(self, variables, images):
        if self.grid > min(images.shape[1:3]):
            raise ValueError(f"grid: expected at most the image side ({min(images.shape[1:3])}), got {self.grid}")

    def _maps(self, variables, images, targets, key):
        masks, _, _ = rise_masks(key, self.samples, self.grid, self.probability, tuple(images.shape[1:3]))
        n, s = len(images), self.samples
        out, logits = self.perturbed_logits(variables, images, jnp.broadcast_to(masks, (n, *masks.shape)))
        t = _resolve_targets(logits, targets)
        if self.softmax:
            out = jax.nn.softmax(out, axis=-1)
        scores = jnp.take_along_axis(out, t[:, None, None], 2)[..., 0]  # (n, S)
        return jnp.einsum("ns,shw->nhw", scores, masks) / (s * self.probability), logits


__all__ = ["FeatureAblation", "KernelSHAP", "LIME", "Occlusion", "RISE", "ShapleyValueSampling", "occlusion_plan", "window_starts"]

"""Turn any picture of a digit into the 28x28 image the model expects, the way MNIST was made.

LeCun, Cortes and Burges made MNIST from NIST's binary digits: each digit's bounding box was
scaled to fit a 20x20 box keeping its aspect ratio (anti-aliased, hence the gray levels), then
placed in a 28x28 field with its centre of mass at the centre. A drawing has to go through the
same steps, or the model sees a digit of a size and position it never met in training::

    from mnist_preprocess import to_mnist
    x = to_mnist(canvas)            # (28, 28) float32 in [0, 1], white ink on black

``to_mnist`` accepts any size, grayscale (H, W) / (H, W, 1), RGB or RGBA (H, W, 3|4), as uint8
(or another unsigned integer type, scaled by its maximum), bool, or float in [0, 1] (float
pixels above 1 are read as 0-255). Polarity:

- with transparency (an RGBA drawing canvas), what is painted is the ink, whatever its colour
  (its contrast against the background it is painted on counts);
- otherwise the background is the median of the border pixels: a light border means black ink
  on white paper, which is inverted; a dark border, white ink on black (MNIST's own form).

Steps: ink = contrast against the background, scaled so the darkest stroke is 1; pixels under
5% of that are noise and set to 0; crop to the ink's bounding box; resize so its longer side is
20 px (aspect ratio kept; Lanczos, anti-aliased when shrinking), its strongest pixel scaled back to
1 (thin strokes shrunk a lot come out faint otherwise); paste into 28x28 at the integer
offset that puts the centre of mass nearest (14, 14) in pixel-index coordinates (the convention
of MNIST's own digits: their centres of mass lie in 13.5-14.5), kept inside the field. A real
MNIST digit comes back nearly unchanged.

A blank image raises ``NoInkError`` (a ``ValueError``) with a message meant for people.
``to_mnist(image, return_info=True)`` also returns a ``Preprocessed`` record whose ``notes``
flag drawings the model cannot read like MNIST (a tiny dot scaled up; ink covering most of the
box).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

SIZE = 28  # the field
BOX = 20  # the digit's bounding box fits this square
MIN_CONTRAST = 0.1  # ink must differ from the background by at least this (of full scale)
NOISE = 0.05  # ink below this share of the strongest stroke is dropped
MAX_SIDE = 1024  # larger inputs are first block-averaged down to at most this (the result is 20 px)
TINY = 0.08  # ink box under this share of the image's shorter side is called tiny
CROWDED = 0.4  # more of the field than this above half intensity: no MNIST digit is (max 27%)


class NoInkError(ValueError):
    """The image holds no ink: blank, or strokes too faint to tell from the background."""


@dataclass(frozen=True)
class Preprocessed:
    image: np.ndarray  # (28, 28) float32 in [0, 1]
    box: tuple[int, int, int, int]  # the ink's bounding box in the input: top, left, height, width
    inverted: bool  # the input was read as dark ink on a light background
    scale: float  # resize factor applied to the ink's box
    notes: tuple[str, ...]  # for people: why the model may not read this like an MNIST digit


def _as_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        return arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"image: expected integer pixels in 0-255, got values in [{arr.min()}, {arr.max()}]")
        return arr.astype(np.float32) / 255.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image: expected uint8, bool or float pixels, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError("image: expected finite pixel values, got NaN/inf")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise ValueError(f"image: expected float pixels in [0, 1] (or 0-255), got values in [{lo:g}, {hi:g}]")
    return arr / 255.0 if hi > 1.0 + 1e-6 else arr


def _shrink(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Block-average a huge (H, W, C) array so that its longer side is at most MAX_SIDE."""
    f = -(-max(arr.shape[:2]) // MAX_SIDE)
    if f <= 1:
        return arr, 1
    h, w = arr.shape[0] // f, arr.shape[1] // f
    blocks = arr[:h * f, :w * f].reshape(h, f, w, f, arr.shape[2])
    return blocks.mean(axis=(1, 3), dtype=np.float32), f


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32) if rgb.shape[-1] == 3 else rgb[..., 0]


def ink_map(image) -> tuple[np.ndarray, bool, int]:
    """White-on-black ink (H', W') in [0, 1] (not yet normalised), whether the input was inverted,
    and the block size a huge input was averaged over (1: none)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image: expected grayscale (H, W), RGB (H, W, 3) or RGBA (H, W, 4), "
                         f"got shape {np.shape(image)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise NoInkError("the image is empty (0 pixels)")
    arr, factor = _shrink(_as_float(arr)) if max(arr.shape[:2]) > MAX_SIDE else (_as_float(arr), 1)
    if arr.shape[2] == 4 and float(arr[..., 3].min()) < 0.999:
        alpha, lum = arr[..., 3], _luminance(arr[..., :3])
        painted = alpha > 0.5
        # Painted on a background that contrasts with the paint: dark strokes count as dark ink
        # on white, light strokes as light ink on black; unpainted pixels are background.
        dark = not painted.any() or float(np.median(lum[painted])) < 0.5
        ink = alpha * ((1.0 - lum) if dark else lum)
        return ink, dark, factor
    gray = _luminance(arr[..., :3])
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    background = float(np.median(border))
    inverted = background > 0.5
    ink = (background - gray) if inverted else (gray - background)
    return np.clip(ink, 0.0, 1.0), inverted, factor


def _resize(ink: np.ndarray, height: int, width: int) -> np.ndarray:
    out = Image.fromarray(np.ascontiguousarray(ink, np.float32), mode="F")
    out = out.resize((width, height), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(out, np.float32), 0.0, 1.0)


def center_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of mass in pixel-index coordinates (pixel centres at 0, 1, ...)."""
    total = float(image.sum())
    rows, cols = np.arange(image.shape[0]), np.arange(image.shape[1])
    return float(image.sum(1) @ rows) / total, float(image.sum(0) @ cols) / total


def to_mnist(image, return_info: bool = False):
    """The (28, 28) float32 image in [0, 1] the model should see (see the module docstring);
    with ``return_info``, ``(image, Preprocessed)``. Raises NoInkError for a blank image and
    ValueError for what is not an image."""
    ink, inverted, factor = ink_map(image)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise NoInkError("no ink found: the image is blank or one flat tone (nothing differs from the "
                         f"background by {MIN_CONTRAST:.0%} or more) - draw a digit")
    ink = ink / peak
    ink[ink < NOISE] = 0.0
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    top, left = rows[0], cols[0]
    h, w = rows[-1] - top + 1, cols[-1] - left + 1
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    digit = _resize(ink[top:top + h, left:left + w], nh, nw)
    if digit.max() <= 0:  # a faint speck resampled away
        raise NoInkError("no ink found: only a faint speck - draw a digit")
    digit /= digit.max()  # thin strokes shrunk a lot come out faint: MNIST's strokes peak at full ink
    cy, cx = center_of_mass(digit)
    oy = int(np.clip(round(SIZE / 2 - cy), 0, SIZE - nh))
    ox = int(np.clip(round(SIZE / 2 - cx), 0, SIZE - nw))
    out = np.zeros((SIZE, SIZE), np.float32)
    out[oy:oy + nh, ox:ox + nw] = digit
    if not return_info:
        return out
    notes = []
    shorter = min(np.shape(image)[:2])
    if max(h, w) * factor < max(4, TINY * shorter):
        notes.append(f"tiny drawing ({h * factor}x{w * factor} px of a {np.shape(image)[0]}x{np.shape(image)[1]} image), "
                     f"scaled up {scale / factor:.1f}x: draw larger for a reading like MNIST's")
    crowded = float((out > 0.5).mean())
    if crowded > CROWDED:
        notes.append(f"ink covers {crowded:.0%} of the 28x28 field (no MNIST digit covers over 27%): "
                     "this is not a digit the model knows, so its answer means little")
    box = (int(top * factor), int(left * factor), int(h * factor), int(w * factor))
    return out, Preprocessed(out, box, inverted, scale / factor, tuple(notes))

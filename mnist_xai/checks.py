"""Input checks shared by every method and metric: images, targets, numbers, baselines.

Each raises one ``ValueError`` line naming the argument, what was expected and what arrived.
"""
from __future__ import annotations

import numpy as np

NUM_CLASSES = 10
IMAGE_HW = (28, 28)


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


def positive(name: str, value) -> float:
    """``value`` as a finite float > 0 (a temperature, a scale); ValueError naming ``name`` otherwise."""
    v = finite_number(name, value)
    if v <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
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

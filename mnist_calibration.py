"""Calibration of the classifier's confidences: expected calibration error and temperature scaling.

- ``expected_calibration_error(probs, labels, bins=15)``: Naeini et al., AAAI 2015; as in Guo et
  al., "On Calibration of Modern Neural Networks", ICML 2017 (arXiv:1706.04599), eq. 3: the
  confidence (top-class probability) is put into ``bins`` equal-width bins of (0, 1], and
  ECE = sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|.
- ``fit_temperature(logits, labels)``: Guo et al.'s temperature scaling, sec. 4.2: one scalar
  T > 0 minimising the negative log-likelihood of softmax(logits / T) on held-out data (the
  validation split, never the test set). The NLL is convex in 1/T, hence unimodal in log T,
  so a golden-section search over log T finds its minimum.

The metrics are pure numpy (float64); the checkpoint helpers at the end (``calibrate_checkpoint``,
``calibrate_workdir``: a temperature stored in a checkpoint's metadata) run the model with JAX.
"""
from __future__ import annotations

import math

import numpy as np

ECE_BINS = 15
T_RANGE = (0.05, 20.0)  # searched for the temperature, on a log scale


def _labels(labels, n: int, num_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels: expected one label per row ({n},), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)):
            raise ValueError(f"labels: expected integer classes, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels: expected classes in 0-{num_classes - 1}, got values in [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _scores(x, name: str) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] < 2:
        raise ValueError(f"{name}: expected a 2-D array (N, classes) with N >= 1 and at least 2 classes, "
                         f"got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite values, got NaN/inf")
    return a


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, in float64 (stable)."""
    from scipy.special import softmax as _softmax  # stable (max-shifted), float64 in, float64 out

    return _softmax(np.asarray(logits, np.float64) / temperature, axis=-1)


def calibration_bins(probs, labels, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin ((k-1)/bins, k/bins]: ``count``, ``accuracy`` and
    ``confidence`` (mean top-class probability), NaN for an empty bin; the reliability diagram."""
    p = _scores(probs, "probs")
    if p.min() < -1e-6 or p.max() > 1 + 1e-6 or np.abs(p.sum(1) - 1).max() > 1e-3:
        raise ValueError("probs: expected rows of class probabilities (in [0, 1], summing to 1); "
                         "pass softmax(logits), not logits")
    y = _labels(labels, len(p), p.shape[1])
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins: expected an integer >= 1, got {bins!r}")
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)  # (k-1)/M < conf <= k/M -> k-1
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, correct, bins) / count
        mean_conf = np.bincount(idx, conf, bins) / count
    return {"count": count, "accuracy": acc, "confidence": mean_conf, "edges": np.linspace(0, 1, bins + 1)}


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width bins (default 15, Guo et al.): sum over bins of the bin's share
    of the samples times |accuracy - mean confidence| in it. 0 is perfectly calibrated."""
    b = calibration_bins(probs, labels, bins)
    full = b["count"] > 0
    gap = np.abs(b["accuracy"][full] - b["confidence"][full])
    return float((b["count"][full] * gap).sum() / b["count"].sum())


def negative_log_likelihood(logits, labels, temperature: float = 1.0) -> float:
    """Mean -log softmax(logits / T)[label], computed stably."""
    z = _scores(logits, "logits") / temperature
    y = _labels(labels, len(z), z.shape[1])
    m = z.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(1))
    return float((lse - z[np.arange(len(z)), y]).mean())


def fit_temperature(logits, labels, bounds=T_RANGE, tol: float = 1e-6) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) against ``labels`` (held-out data).

    Golden-section search on log T within ``bounds`` to ``tol`` in log T (about 35 evaluations
    of the NLL). The NLL is convex in 1/T, so the search finds the global minimum in the bounds;
    a minimum at a bound (e.g. every sample correct: the NLL falls as T -> 0) returns that bound.
    """
    z = _scores(logits, "logits")
    y = _labels(labels, len(z), z.shape[1])
    lo, hi = (float(b) for b in bounds)
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"bounds: expected 0 < low < high, finite, got {bounds!r}")
    f = lambda log_t: negative_log_likelihood(z, y, math.exp(log_t))  # noqa: E731
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return math.exp((a + b) / 2)


def calibration_report(val_logits, val_labels, test_logits, test_labels, bins: int = ECE_BINS) -> dict:
    """T fitted on the validation logits; ECE and NLL on the test set before and after it."""
    t = fit_temperature(val_logits, val_labels)
    out = {"temperature": t, "ece_bins": bins, "fitted_on": f"validation ({len(val_labels)} images)"}
    for name, temp in (("before", 1.0), ("after", t)):
        out[f"test_ece_{name}"] = expected_calibration_error(softmax(test_logits, temp), test_labels, bins)
        out[f"test_nll_{name}"] = negative_log_likelihood(test_logits, test_labels, temp)
        out[f"val_ece_{name}"] = expected_calibration_error(softmax(val_logits, temp), val_labels, bins)
    return out


# ----------------------------------------------------------------------------- checkpoints (JAX)


def model_logits(model, params, batch_stats, images_u8, batch_size: int = 1000) -> np.ndarray:
    """Logits (N, classes) of uint8 images (N, 28, 28, 1), in fixed-size batches (the last padded)."""
    import jax

    fn = jax.jit(lambda v, x: model.apply(v, x.astype("float32") / 255.0))
    variables = {"params": params, "batch_stats": batch_stats}
    out = []
    for start in range(0, len(images_u8), batch_size):
        x = images_u8[start:start + batch_size]
        k = len(x)
        if k < batch_size and len(images_u8) > batch_size:
            x = np.concatenate([x, np.zeros((batch_size - k, *x.shape[1:]), x.dtype)])
        out.append(np.asarray(fn(variables, x))[:k])
    return np.concatenate(out).astype(np.float64)


def calibrate_checkpoint(step_dir, validation, test=None, batch_size: int = 1000, logits=None) -> dict:
    """Fit the temperature of one checkpoint step folder on ``validation`` (a ``mnist_data.Split``:
    the validation split the run held out) and store it in the step's metadata (``temperature``,
    ``calibration``), the JSON file rewritten atomically. With ``test`` the report also holds the
    test set's ECE and NLL before and after. Returns the report.

    ``logits``: ``(validation logits, test logits or None)`` of this step's weights when the caller
    has them already (training has just evaluated both); then the checkpoint is not loaded."""
    from pathlib import Path

    from mnist_checkpoint import resolve_checkpoint_dir

    step_dir = resolve_checkpoint_dir(step_dir)
    if logits is None:
        from mnist_checkpoint import load_checkpoint

        params, batch_stats, model, _ = load_checkpoint(step_dir)
        val_logits = model_logits(model, params, batch_stats, validation.images, batch_size)
        test_logits = model_logits(model, params, batch_stats, test.images, batch_size) if test is not None else None
    else:
        val_logits, test_logits = (None if z is None else np.asarray(z, np.float64) for z in logits)
        if len(val_logits) != len(validation) or (test is not None and len(test_logits) != len(test)):
            raise ValueError(f"logits: expected one row per image of the splits, got {len(val_logits)} and "
                             f"{None if test_logits is None else len(test_logits)}")
    if test is not None:
        report = calibration_report(val_logits, validation.labels, test_logits, test.labels)
    else:
        t = fit_temperature(val_logits, validation.labels)
        report = {"temperature": t, "ece_bins": ECE_BINS, "fitted_on": f"validation ({len(validation)} images)",
                  "val_ece_before": expected_calibration_error(softmax(val_logits), validation.labels),
                  "val_ece_after": expected_calibration_error(softmax(val_logits, t), validation.labels)}
    meta_file = Path(step_dir) / "meta" / "metadata"
    import json

    from cli import write_atomic
    meta = json.loads(meta_file.read_text())
    meta.update({"temperature": report["temperature"], "calibration": report})
    write_atomic(meta_file, json.dumps(meta))  # one line, as orbax writes it
    return report


def calibrate_workdir(workdir, data, batch_size: int = 1000, latest_logits=None) -> dict:
    """After training: a temperature in every step's metadata that the workdir keeps (the latest and
    the best), fitted on ``data.validation``; returns ``{"temperature", "calibration"}`` of the
    latest step (the final weights, which metrics.json's test accuracy is of), with the test ECE.
    ``latest_logits``: the latest step's ``(validation logits, test logits)``, if already computed."""
    from pathlib import Path

    from mnist_checkpoint import CKPT_SUBDIR, step_dirs

    steps = step_dirs(Path(workdir) / CKPT_SUBDIR)
    if not steps:
        return {}
    for step_dir in steps[:-1]:
        calibrate_checkpoint(step_dir, data.validation, None, batch_size)
    report = calibrate_checkpoint(steps[-1], data.validation, data.test, batch_size, latest_logits)
    return {"temperature": report["temperature"], "calibration": {**report, "step": int(steps[-1].name)}}

"""How a map is judged against its reference (Captum, pytorch-grad-cam, PAIR saliency, zennit).

Per digit: ``per_digit_gap`` is max|ours - reference| over a map divided by that reference map's
max |value|. Every digit must be within ``TOLERANCE`` (1e-4), except at most ``flips`` digits that
a stated float32 near-tie moves, and those by at most ``flip_bound``: a method that back-propagates
through many inputs (path steps, noisy copies) meets ReLU or max-pool decisions that float32
rounding takes differently on the two sides, which moves one copy's whole gradient. Such a flip
is local, one digit and a few percent of its map; a wrong formula moves every digit. The count of
flips allowed is measured and stated next to each use, on AVX-512 and on AVX2, and the bound must
hold on both. ``XLA_FLAGS=--xla_cpu_max_isa=AVX2`` on an AVX-512 machine is not enough to see
them: on an AVX2-only EPYC (2026-12-04) the LRP, SmoothGrad, NoiseTunnel and path comparisons
moved digits that the flag left in place (numpy's and scipy's own SIMD paths, used by the blur and
the segmentation, follow the CPU, and the pure-JAX LRP maps moved too, so XLA's results there
differ beyond what the flag limits), so each use's count is the most seen on either.
"""
from __future__ import annotations

import numpy as np

TOLERANCE = 1e-4
FLIP_BOUND = 2e-2


def per_digit_gap(ours, theirs) -> np.ndarray:
    """max|ours - theirs| / max|theirs| for each map along the leading axis (float64).

    A reference map that is all zeros is measured against the largest |value| of all the
    reference maps instead (1 if they are all zero), so ours must be ~0 there too.
    """
    ours = np.asarray(ours, np.float64)
    theirs = np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: ours {ours.shape}, reference {theirs.shape}")
    if theirs.ndim == 2:
        ours, theirs = ours[None], theirs[None]
    n = len(theirs)
    peak = np.abs(theirs).reshape(n, -1).max(1)
    fallback = peak.max() if peak.max() > 0 else 1.0
    peak = np.where(peak > 0, peak, fallback)
    return np.abs(ours - theirs).reshape(n, -1).max(1) / peak


def assert_close_per_digit(ours, theirs, name: str, *, flips: int = 0, tolerance: float = TOLERANCE,
                           flip_bound: float = FLIP_BOUND) -> np.ndarray:
    """Every digit within ``tolerance`` but at most ``flips`` of them, those within ``flip_bound``.

    Returns the per-digit gaps, so a caller can report them.
    """
    gap = per_digit_gap(ours, theirs)
    off = np.flatnonzero(gap > tolerance)
    assert len(off) <= flips, (
        f"{name}: {len(off)} digits off by more than {tolerance:g} of their map's max "
        f"(at most {flips} allowed): digits {off.tolist()[:8]} off by {gap[off][:8].round(6).tolist()}")
    assert gap.max() <= max(flip_bound, tolerance), (
        f"{name}: worst digit {int(gap.argmax())} off by {gap.max():.2e} of its map's max (bound {flip_bound:g})")
    return gap

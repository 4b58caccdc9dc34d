"""Print how closely our maps match Captum's and pytorch-grad-cam's, method by method.

    python benchmarks/parity_table.py            # markdown table, ~1-2 min on a 2-core CPU

Reads the committed references (tests/fixtures/reference_maps.npz, made by
benchmarks/make_reference_maps.py with torch 2.14.1, captum 0.9.0 and grad-cam 1.5.7; no
torch needed here), computes our maps of the same 32 digits on the same weights for both
nets (the shipped MNISTCNN through the default call, and tests/reference_models.RefNet with
standardised input through ``layer="block3/conv2"``), and prints, per method and net, the
largest |ours - reference| over a map divided by that map's max |value| (worst of the 32
maps), how many digits are beyond 1e-4, and the number of near-tie flips
tests/test_reference_maps.py allows there (``FLIPS``). A cell that breaks its bound says
"OVER BOUND". The comparison code is the test's own, so the table and the tests cannot
disagree.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def cell(gap, flips_allowed: int, flip_bound: float, tolerance: float = 1e-4) -> str:
    """'worst; digits beyond the tolerance (allowed)', with OVER BOUND where the test would fail."""
    off = int((gap > tolerance).sum())
    over = off > flips_allowed or gap.max() > max(flip_bound, tolerance)
    text = f"{gap.max():.1e}; {off}/{len(gap)} digits > {tolerance:.0e} (≤ {flips_allowed} allowed)"
    return f"**{text} OVER BOUND**" if over else text


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    import numpy as np
    import test_reference_maps as T

    ref = dict(np.load(T.FIXTURE))
    rows = []
    for method in ("gradcam", "gradcam++", "scorecam", "saliency", "gradient_x_input", "integrated_gradients",
                   "smoothgrad", "occlusion"):
        cells = []
        for net in T.NETS:
            if method in T.CAPTUM_METHODS:
                library, theirs = "Captum", ref[f"{net}/{method}"]
                ours = T.our_maps(ref, net, method)
            else:
                library, theirs = "pytorch-grad-cam", ref[f"{net}/pgc_{method}"]
                ours = T.pgc_scaling(T.our_maps(ref, net, method))
            cells.append(cell(T.per_digit_gap(ours, theirs), T.FLIPS.get((net, method), 0), T.FLIP_BOUND))
        rows.append(f"| {method} | {library} | " + " | ".join(cells) + " |")
    print("| method | reference | MNISTCNN (shipped weights) | RefNet (standardised input, layer=\"block3/conv2\") |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

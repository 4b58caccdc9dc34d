"""Print how closely our maps match their references (Captum, pytorch-grad-cam, PAIR saliency), method by method.

    python benchmarks/parity_table.py            # markdown table, ~5 min on a 2-core CPU

Reads the committed references (tests/fixtures/reference_*.npz, made by the
benchmarks/make_reference_*.py scripts in the reference venv; no torch needed here), computes
our maps on the same weights with the test modules' own code (the shipped MNISTCNN, and
tests/reference_models.RefNet with standardised input through ``layer="block3/conv2"``), and
prints, per method and net, the largest |ours - reference| over a map divided by that map's
max |value| (worst digit), how many digits are beyond 1e-4, and the number of near-tie flips
the tests allow there. A cell that breaks its bound says "OVER BOUND": the table and the
tests cannot disagree.
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


def _load(*named):
    """The fixtures merged as the test modules key them: (prefix, file name) pairs."""
    import numpy as np

    out = {}
    for prefix, name in named:
        with np.load(ROOT / "tests" / "fixtures" / name) as d:
            out.update({f"{prefix}{k}": d[k] for k in d.files})
    return out


def other_rows():
    """(method, reference, {net: cell}) for the methods whose references live in the other
    fixtures, computed with their test modules' own code (the digits and settings they test)."""
    import test_cams as TC
    import test_path as TP
    import test_perturbation as TQ
    import test_reference_maps as T
    import test_registry as TR

    from parity import FLIP_BOUND, per_digit_gap

    rows = []
    ref = _load(("", "reference_maps.npz"), ("", "reference_cams.npz"))
    for method in TC.CLASSES:
        cells = {net: cell(per_digit_gap(T.pgc_scaling(TC.aligned(ref, net, method)[0]), ref[f"{net}/pgc_{method}"]),
                           0, FLIP_BOUND) for net in TC.NETS}
        rows.append((method, "pytorch-grad-cam", cells))
    ref = _load(("", "reference_maps.npz"), ("nt:", "reference_noise_tunnel.npz"))
    for key, make in TR.TUNNELS.items():
        cells = {}
        for net, (cls, images, input_range) in TR.NETS.items():
            ours = make(cls(), input_range).attribute(TR.unflatten(ref, f"{net}/params"),
                                                      TR.unflatten(ref, f"{net}/batch_stats"), ref[images], ref["targets"])
            cells[net] = cell(per_digit_gap(ours, ref[f"nt:{net}/{key}"]), TR.FLIPS_ALLOWED[net], FLIP_BOUND)
        rows.append((key, "Captum NoiseTunnel", cells))
    ref = _load(("", "reference_maps.npz"), ("path:", "reference_path.npz"))
    for method in ("gradient_shap", "expected_gradients", "guided_ig", "blur_ig", "xrai"):
        cells = {}
        for net in TP.NETS:
            if method != "xrai" and (net, method) not in TP.CASES:
                continue
            shap = method in ("gradient_shap", "expected_gradients")
            if method == "xrai":  # as its test judges it: the gains of the digits ranked as PAIR ranks
                # them, and how many were segmented otherwise (tests/test_path.py, XRAI_RESEGMENTED)
                ours, theirs, _, _, same = TP.xrai_beside_pair(ref, net)
                text = cell(per_digit_gap(ours[same], theirs[same]), TP.FLIPS.get((net, method), 0), FLIP_BOUND)
                resegmented = int((~same).sum())
                cells[net] = text + f"; {resegmented} segmented otherwise (≤ {TP.XRAI_RESEGMENTED} allowed)" + (
                    " OVER BOUND" if resegmented > TP.XRAI_RESEGMENTED else "")
                continue
            _, params, stats, images, _ = TP._net(ref, net)
            digits = ref["path:shap_digits"] if shap else ref["path:pair_digits"]
            ours = TP._explainer(ref, net, method).attribute(params, stats, images[digits], ref["targets"][digits])
            cells[net] = cell(per_digit_gap(ours, ref[f"path:{net}/{method}"][:len(digits)]),
                              TP.FLIPS.get((net, method), 0), FLIP_BOUND)
        rows.append((method, "Captum" if shap else "PAIR saliency", cells))
    ref = _load(("", "reference_maps.npz"), ("p:", "reference_perturbation.npz"))
    digits = ref["p:digits"]
    for method, make in TQ.METHODS.items():
        cells = {}
        for net, (cls, images, baseline) in TQ.NETS.items():
            if (net, method) in TQ.CASES:
                ours = make(cls(), baseline).attribute(TQ.unflatten(ref, f"{net}/params"),
                                                       TQ.unflatten(ref, f"{net}/batch_stats"),
                                                       ref[images][digits], ref["targets"][digits])
                cells[net] = cell(per_digit_gap(ours, ref[f"p:{net}/{method}"]), 0, FLIP_BOUND)
        rows.append((method, "the authors' formula" if method.startswith("rise") else "Captum", cells))
    import test_propagation as TG

    ref = _load(("", "reference_maps.npz"), ("prop:", "reference_propagation.npz"))
    for method in TG.METHODS:
        cells = {net: cell(per_digit_gap(TG.ours(ref, net, method)[0], ref[f"prop:{net}/{method}"]), 0, FLIP_BOUND)
                 for net in ("cnn", "refnet")}
        rows.append((method, "Captum (DeepLift's two faults corrected)" if "deeplift" in method else "Captum", cells))
    return rows


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
    for method, library, cells in other_rows():
        rows.append(f"| {method} | {library} | " + " | ".join(cells.get(net, "—") for net in T.NETS) + " |")
    print("| method | reference | MNISTCNN (shipped weights) | RefNet (standardised input, layer=\"block3/conv2\") |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

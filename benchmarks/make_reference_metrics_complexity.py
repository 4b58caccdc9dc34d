"""Regenerate tests/fixtures/quantus_complexity.npz: Quantus 0.6.0's complexity metrics on the maps
of tests/fixtures/reference_maps.npz.

    /work/refvenv/bin/python benchmarks/make_reference_metrics_complexity.py   # the reference venv, ~10 s

The same inputs and the same call as make_reference_metrics_localisation.py (``inputs()``: its
32 digits, the ``cnn`` maps of Captum's Saliency, InputXGradient, IntegratedGradients,
Occlusion and LayerGradCam, and a jax.random.normal(PRNGKey(0)) map; maps fed as float64;
``normalise_func_kwargs={"normalise_axes": (1, 2, 3)}``, each map divided by its own max |value|,
ours). Keys "<config>/<map>" (32,) float64, and "versions".
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402

from make_reference_metrics_localisation import inputs, quantus_scores, versions  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "quantus_complexity.npz"

#: config name -> (Quantus class name, our metric name, options given to both)
CONFIGS = {
    "sparseness": ("Sparseness", "sparseness", {}),
    "sparseness_signed": ("Sparseness", "sparseness", {"abs": False, "normalise": False}),
    "complexity": ("Complexity", "complexity", {}),
    "effective_complexity": ("EffectiveComplexity", "effective_complexity", {}),
    "effective_complexity_1e-2": ("EffectiveComplexity", "effective_complexity", {"eps": 1e-2}),
}


def main():
    images, targets, maps = inputs()
    fixture = quantus_scores(CONFIGS, images, targets, maps, None)
    fixture["versions"] = np.array(versions())
    np.savez_compressed(OUT, **fixture)
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size / 1024:.0f} KiB, {len(fixture) - 1} score arrays)")


if __name__ == "__main__":
    main()

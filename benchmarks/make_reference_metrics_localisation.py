"""Regenerate tests/fixtures/quantus_localisation.npz: Quantus 0.6.0's localisation metrics on the
maps of tests/fixtures/reference_maps.npz.

    /work/refvenv/bin/python benchmarks/make_reference_metrics_localisation.py   # the reference venv, ~10 s

Inputs (read the same way by tests/test_metrics_localisation.py, so only Quantus's scores are
stored): ``inputs()``: reference_maps.npz's 32 digits (N, 28, 28, 1) and its ``cnn`` maps
(Captum's Saliency, InputXGradient, IntegratedGradients, Occlusion and LayerGradCam of the
shipped MNISTCNN, ``MAPS``), plus ``random``: jax.random.normal(PRNGKey(0), (32, 28, 28)) float32,
a map without ties. The object masks are ``ink_masks(images)`` (pixels > 0.5).

Quantus is called as a user would (``metric(model=None, x_batch, y_batch, a_batch, s_batch)``; the
localisation metrics never run the model), channels first, with ``disable_warnings=True`` and
``normalise_func_kwargs={"normalise_axes": (1, 2, 3)}``: each map divided by its own max |value|,
ours (mnist_xai/metrics/localisation.py says why); every other option is the ``CONFIGS`` entry's,
passed to both sides. The maps go to Quantus as float64 (the same values: Quantus keeps the
dtype it is given, and in float32 its sums round at ~1e-5 where signed relevance cancels); keys: "<config>/<map>" (32,) float64, plus "versions".
"""
from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "quantus_localisation.npz"
MAPS_FIXTURE = ROOT / "tests" / "fixtures" / "reference_maps.npz"
MAPS = ("saliency", "gradient_x_input", "integrated_gradients", "occlusion", "gradcam")
PER_MAP = {"normalise_axes": (1, 2, 3)}

#: config name -> (Quantus class name, our metric name, options given to both)
CONFIGS = {
    "pointing_game": ("PointingGame", "pointing_game", {}),
    "pointing_game_abs": ("PointingGame", "pointing_game", {"abs": True}),
    "attribution_localisation": ("AttributionLocalisation", "attribution_localisation", {}),
    "attribution_localisation_positive": ("AttributionLocalisation", "attribution_localisation",
                                          {"abs": False, "positive_attributions": True}),
    "relevance_mass_accuracy": ("RelevanceMassAccuracy", "relevance_mass_accuracy", {}),
    "relevance_mass_accuracy_abs": ("RelevanceMassAccuracy", "relevance_mass_accuracy", {"abs": True}),
    "relevance_rank_accuracy": ("RelevanceRankAccuracy", "relevance_rank_accuracy", {}),
    "relevance_rank_accuracy_abs": ("RelevanceRankAccuracy", "relevance_rank_accuracy", {"abs": True}),
    "top_k_intersection": ("TopKIntersection", "top_k_intersection", {"k": 78}),
    "top_k_intersection_concept": ("TopKIntersection", "top_k_intersection",
                                   {"k": 150, "concept_influence": True, "abs": True}),
    "auc": ("AUC", "auc", {}),
    "auc_abs": ("AUC", "auc", {"abs": True}),
}


def inputs():
    """``(images (32, 28, 28, 1), targets (32,), {map name: (32, 28, 28) float32})``."""
    import jax

    with np.load(MAPS_FIXTURE) as d:
        images, targets = d["images"], d["targets"]
        maps = {name: d[f"cnn/{name}"] for name in MAPS}
    maps["random"] = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (len(images), 28, 28)), np.float32)
    return images, targets, maps


def quantus_scores(configs, images, targets, maps, masks, model=None, **call):
    """Every config on every map, Quantus's way: {"<config>/<map>": scores (N,) float64}."""
    import quantus

    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    s = masks[:, None] if masks is not None else None
    out = {}
    for name, (cls, _, options) in configs.items():
        for m, a in maps.items():
            metric = getattr(quantus, cls)(disable_warnings=True, normalise_func_kwargs=PER_MAP, **options)
            out[f"{name}/{m}"] = np.asarray(metric(model=model, x_batch=x, y_batch=targets, a_batch=a.astype(np.float64),
                                                   s_batch=s, **call), np.float64)
    return out


def versions() -> str:
    return " ".join(f"{p}=={importlib.metadata.version(p)}" for p in ("quantus", "numpy", "scikit-learn", "jax"))


def main():
    from mnist_xai.metrics.localisation import ink_masks

    images, targets, maps = inputs()
    fixture = quantus_scores(CONFIGS, images, targets, maps, ink_masks(images))
    fixture["versions"] = np.array(versions())
    np.savez_compressed(OUT, **fixture)
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size / 1024:.0f} KiB, {len(fixture) - 1} score arrays)")


if __name__ == "__main__":
    main()

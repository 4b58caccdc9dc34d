"""Cheap options for the tests that run every registered method (batching, devices, flat
images, other models): those tests check the contract every method shares, not a method's
numbers (each method's own test compares it with its reference at its real settings). Methods
not named here run at their defaults. ``test_registry`` checks every name here is registered,
so a renamed method cannot silently fall back to its slow defaults.
"""
from __future__ import annotations

QUICK = {
    "feature_ablation": dict(patch=7),
    "shapley_sampling": dict(samples=2, patch=7),
    "kernel_shap": dict(samples=24, patch=7),
    "lime": dict(samples=24, patch=7),
    "rise": dict(samples=64),
    "gradient_shap": dict(samples=4),
    "expected_gradients": dict(samples=4),
    "blur_ig": dict(steps=8, max_sigma=10.0),  # at 50, few steps on a 32x32 image: every point blurred flat, map 0
    "guided_ig": dict(steps=8),
    "xrai": dict(steps=8),
    "deeplift_shap": dict(samples=2),
}


def quick(name: str) -> dict:
    """The options a contract test builds ``name`` with (``make_explainer(name, model, **quick(name))``)."""
    return dict(QUICK.get(name, {}))


# The two-device test compiles each method twice in a subprocess. Splitting a chunk over the
# devices is one piece of code (``Explainer.__init__``: ``split_over_devices`` around
# ``_maps``), so it runs one method of each kind of ``_maps``: a gradient CAM, a gradient, a
# noise tunnel (per-image keys), a path, a sampled baseline and a rule (the jaxpr interpreter),
# and every method whose ``attribute`` or chunking is its own (Score-CAM's mask chunks,
# Ablation-CAM's channel chunks, the incremental occlusion, XRAI's host-side regions,
# KernelSHAP's regression). The methods left out share one of these paths (Grad-CAM++ and
# HiResCAM Grad-CAM's, Gradient x Input saliency's, SmoothGrad² and VarGrad SmoothGrad's).
# EigenCAM's SVD has a test of its own (a hang that needs a full chunk of 64).
TWO_DEVICE_METHODS = ("gradcam", "scorecam", "saliency", "smoothgrad", "integrated_gradients", "occlusion",
                      "ablationcam", "gradient_shap", "xrai", "kernel_shap", "deeplift")

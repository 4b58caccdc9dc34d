"""GradCAM, saliency and every other method of the ``mnist_xai`` package, under the module
name the scripts, notebooks and tests have always imported::

    from mnist_xai_visualizations import GradCAM
    gradcam = GradCAM(model)
    heatmap, pred, score = gradcam.compute_gradcam(params, batch_stats, image)

The code lives in ``mnist_xai/`` (checks, display, the model adapter, the base classes, the
registry, the methods by family); this module re-exports all of it. See ``mnist_xai``'s
docstring for the contract with the model.
"""
from mnist_xai import *  # noqa: F401,F403
from mnist_xai import __all__  # noqa: F401
from mnist_xai.checks import _all_finite, _baseline, _baseline_for, _describe, _float_pixels  # noqa: F401
from mnist_xai.model import _explained_cached  # noqa: F401
from mnist_xai.ops import _align_corners_matrix, _channels_max, _resolve_targets  # noqa: F401
from mnist_xai.methods.perturbation import _incremental_occlusion_logits, _margin  # noqa: F401

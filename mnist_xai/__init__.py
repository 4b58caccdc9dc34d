"""Explanations of image classifiers, batched and jitted: GradCAM and friends for any Flax model.

The MNIST CNN (``mnist_cnn_model.MNISTCNN``) is the model this toolkit ships and knows best,
but every method works on any ``flax.linen`` module (or a plain function) that maps images
to logits. The contract with the model, documented once:

* **Gradient and perturbation methods** (saliency, Gradient x Input, Integrated Gradients,
  SmoothGrad, Occlusion, ...): ``model.apply(variables, images[, train=False]) -> logits (N, K)``
  for images (N, H, W, C); ``train=False`` is passed where ``__call__`` takes it. A plain
  function ``logits_fn(images) -> logits`` works too (then pass ``params=None, batch_stats=None``).
* **CAM methods** (GradCAM, GradCAM++, Score-CAM, ...) also need a spatial layer:
  ``layer="block3/conv2"`` names a submodule by its path in the module tree (the path its
  variables have, joined by "/"); its ``__call__`` output (N, h, w, C) is reached with
  ``flax.linen.intercept_methods``, without rewriting the model. ``layer=None`` takes the
  model's ``features``/``head`` methods where it has them (``MNISTCNN``: the last conv block,
  the fast path), else the last spatial layer to finish. A wrong name gets the list of the
  layers there are.
* ``params`` and ``batch_stats`` are the model's variables; ``batch_stats`` may be ``{}`` or
  ``None`` for a model without BatchNorm. They are checked against the shapes ``model.init``
  makes for the images' shape.
* **Input range.** A model that declares ``input_range`` (``MNISTCNN``: (0, 1)) gets its
  pixels checked against it, and integer pixels are read as 0-255 and scaled to [0, 1].
  Another model's range is its own (standardised inputs work); give IG and Occlusion
  baselines, and SmoothGrad's ``input_range``, in that range.

Images are (N, H, W, C); a single image may be (H, W, C) or (H, W). For MNISTCNN a digit may
also be (28, 28), (28, 28, 1) or (N, 28, 28). "Score" below always means the target class's
**logit** (pre-softmax).

Every method has one batched call, named as in Captum::

    maps = method.attribute(params, batch_stats, images, target_classes=None)  # (N, H, W)
    maps, logits = method.attribute(..., return_logits=True)  # the logits from the same compiled call

``target_classes=None`` explains the predicted class. Raw maps are returned (signed where
the method is signed); ``normalize_maps`` scales them to [0, 1] for display, safely on a
constant map. ``explain`` is ``attribute`` plus the predictions and target logits; the
one-image API works as written::

    gradcam = GradCAM(model)
    heatmap, pred, score = gradcam.compute_gradcam(params, batch_stats, image)

Gradient convention: 2x2 max-pool gradients at tied maxima go to the first maximum, as in
PyTorch, TensorFlow and XLA (``mnist_cnn_model.max_pool_2x2``), so the maps equal Captum's
and pytorch-grad-cam's on the same weights (``tests/test_reference_maps.py``).

The package's layers: ``checks`` (input validation), ``display`` (scaling, overlays,
grids), ``model`` (the model adapter), ``runtime`` (devices, chunks), ``base`` (``Explainer``,
``CAMExplainer``), ``registry`` (``METHODS``, ``SPECS``, ``make_explainer``) and ``methods``
by family (``cam``, ``gradient``, ``path``, ``perturbation``). Each method's docstring cites
its paper; its registry entry names its reference implementation.
"""
from .base import CAMExplainer, Explainer
from .checks import (IMAGE_HW, NUM_CLASSES, PIXEL_SLACK, as_image_batch, as_images, as_targets,
                     finite_number, whole_number)
from .display import explanation_grid, normalize_maps, overlay_heatmap
from .methods import (Deconvolution, DeepLift, DeepLiftShap, GradCAM, GradCAMPlusPlus, GradientXInput, IntegratedGradients, NoiseTunnel, Occlusion,
                      GuidedBackprop, GuidedGradCAM, Saliency, ScoreCAM, SmoothGrad, SmoothGradSquared, VarGrad, compute_saliency,
                      occlusion_plan, window_starts)
from .model import ExplainedModel, explained
from .ops import upsample
from .registry import (COSTS, FAMILIES, METHODS, SPECS, MethodSpec, Option, make_explainer, markdown_table, method_names,
                       parse_method_list, register, spec)
from .runtime import in_chunks, on_cpu, split_over_devices

__all__ = [
    "CAMExplainer", "COSTS", "Deconvolution", "DeepLift", "DeepLiftShap", "GuidedBackprop", "GuidedGradCAM", "ExplainedModel", "Explainer", "FAMILIES", "GradCAM", "GradCAMPlusPlus",
    "GradientXInput", "IMAGE_HW", "IntegratedGradients", "METHODS", "MethodSpec", "NUM_CLASSES", "NoiseTunnel",
    "Occlusion", "Option", "PIXEL_SLACK", "SPECS", "Saliency", "ScoreCAM", "SmoothGrad", "SmoothGradSquared",
    "VarGrad", "as_image_batch", "as_images", "as_targets", "compute_saliency", "explained", "explanation_grid",
    "finite_number", "in_chunks", "make_explainer", "markdown_table", "method_names", "normalize_maps", "occlusion_plan",
    "on_cpu", "overlay_heatmap", "parse_method_list", "register", "spec", "split_over_devices", "upsample",
    "whole_number",
]

"""Models the metric tests run every metric on (issue 24): the shipped MNIST checkpoint and a
tiny 32x32 RGB CNN, each with an explainer, built once per test process (``functools.cache``).

``TinyRGB``: Conv 8 (3x3, SAME) -> ReLU -> Conv 8 (3x3, stride 2) -> ReLU -> global mean ->
Dense(5); random weights from PRNGKey(3), inputs are RGB images in [0, 1]. Small, so that a
metric's forward passes and re-explanations stay quick on a CPU.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn


class TinyRGB(nn.Module):
    num_classes: int = 5

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME", name="conv1")(x))
        x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2), padding="SAME", name="conv2")(x))
        return nn.Dense(self.num_classes, name="classifier")(x.mean(axis=(1, 2)))


@functools.cache
def shipped(n: int = 3):
    """``(model, params, batch_stats, images (n, 28, 28, 1))``: pretrained/ and sample digits."""
    from mnist_checkpoint import load_checkpoint
    from mnist_data import load_sample_digits

    params, batch_stats, model, _ = load_checkpoint()
    return model, params, batch_stats, load_sample_digits().images[:n].astype(np.float32) / 255


@functools.cache
def tiny_rgb(n: int = 2):
    """``(model, params, None, images (n, 32, 32, 3))``."""
    model = TinyRGB()
    params = jax.jit(model.init)(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))["params"]
    return model, params, None, np.random.default_rng(1).random((n, 32, 32, 3)).astype(np.float32)


def metric_input(which: str, method: str = "saliency", masks=None, n: int | None = None):
    """A MetricInput of ``which`` ("shipped" or "rgb") with ``method``'s maps of its images."""
    from mnist_xai.metrics import MetricInput
    from mnist_xai.registry import make_explainer

    model, params, batch_stats, x = (shipped if which == "shipped" else tiny_rgb)()
    x = x if n is None else x[:n]
    e = make_explainer(method, model)
    return MetricInput(x, maps=e.attribute(params, batch_stats, x), explainer=e, params=params,
                       batch_stats=batch_stats, masks=masks)

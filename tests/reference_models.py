"""Flax models the explanation tests use besides ``MNISTCNN``; no ``features``/``head`` methods.

``RefNet``: a small MNIST CNN with other layer names, BatchNorm inside submodules, and
STANDARDISED input ``(x - 0.1307) / 0.3081`` (black is ``LO``, white ``HI``), not [0, 1].
Variables tree: ``params/block1/conv1/conv/kernel``, ``params/block1/conv1/norm/scale``,
``batch_stats/block3/conv2/norm/mean``, ..., ``params/classifier/kernel``. The layer path
``"block3/conv2"`` names that ConvBNReLU's output: post-ReLU, (N, 7, 7, 32).

    block1: conv1, conv2 (ConvBNReLU 8)   -> max_pool 2x2   # (N, 14, 14, 8)
    block2: conv1, conv2 (ConvBNReLU 16)  -> max_pool 2x2   # (N, 7, 7, 16)
    block3: conv1, conv2 (ConvBNReLU 32)                    # (N, 7, 7, 32)
    global average pool -> Dense(10, name="classifier")

``init_refnet(seed) -> (params, batch_stats)``: deterministic weights with BatchNorm that is
not the identity (running mean ~ N(0, 0.1), var ~ U(0.5, 1.5), scale ~ U(0.5, 1.5), bias ~
N(0, 0.1)), He-scaled conv kernels, and a classifier fitted by ridge regression of the
pooled block3 features onto the labels of the 200 shipped sample digits (logit std 3), so
the predictions spread over the classes (87% of those digits right, the ones it was fitted on; a scaled
random classifier predicted one class for every digit). The reference fixture
(tests/fixtures/reference_maps.npz) stores the weights it was made with, so tests never
depend on this function reproducing them bit for bit.

``ResNet32``: a small residual CNN for 32x32 RGB images (synthetic data only, no reference
maps): stem conv 16 -> two residual blocks (the second with stride 2 and a 1x1 projection)
-> global average pool -> Dense(num_classes=5). Its last block's output is ``"block2"``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
LO = (0.0 - MNIST_MEAN) / MNIST_STD  # a black pixel, standardised (-0.4242)
HI = (1.0 - MNIST_MEAN) / MNIST_STD  # a white pixel, standardised (2.8215)


def standardise(images01) -> np.ndarray:
    """Pixels in [0, 1] -> RefNet's input, float32. Computed in float64 and rounded once, so a
    black pixel is exactly ``np.float32(LO)`` and ``x - LO`` is exactly 0 there."""
    return ((np.asarray(images01, np.float64) - MNIST_MEAN) / MNIST_STD).astype(np.float32)


class ConvBNReLU(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (3, 3), padding="SAME", name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="norm")(x)
        return nn.relu(x)


class Block(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvBNReLU(self.features, name="conv1")(x, train)
        return ConvBNReLU(self.features, name="conv2")(x, train)


class RefNet(nn.Module):
    """Standardised (N, 28, 28, 1) -> logits (N, 10)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Block(8, name="block1")(x, train)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = Block(16, name="block2")(x, train)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = Block(32, name="block3")(x, train)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="classifier")(x)


REFNET_BLOCKS = (("block1", 8), ("block2", 16), ("block3", 32))


def init_refnet(seed: int = 0):
    """Deterministic RefNet weights ``(params, batch_stats)`` (plain nested dicts of float32 numpy)."""
    model = RefNet()
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 28, 28, 1), jnp.float32))
    params = jax.tree_util.tree_map(lambda a: np.array(a, np.float32), dict(variables["params"]))
    batch_stats = jax.tree_util.tree_map(lambda a: np.array(a, np.float32), dict(variables["batch_stats"]))
    key = jax.random.PRNGKey(seed + 1000)

    def draw(shape, kind, a, b):
        nonlocal key
        key, sub = jax.random.split(key)
        if kind == "normal":
            return np.asarray(a + b * jax.random.normal(sub, shape), np.float32)
        return np.asarray(jax.random.uniform(sub, shape, minval=a, maxval=b), np.float32)

    for block, _ in REFNET_BLOCKS:
        for layer in ("conv1", "conv2"):
            p, s = params[block][layer], batch_stats[block][layer]
            p["conv"]["kernel"] = p["conv"]["kernel"] * np.float32(np.sqrt(2.0))  # He: keep ReLU activations alive
            p["conv"]["bias"] = draw(p["conv"]["bias"].shape, "normal", 0.0, 0.05)
            c = p["norm"]["scale"].shape
            p["norm"]["scale"] = draw(c, "uniform", 0.5, 1.5)
            p["norm"]["bias"] = draw(c, "normal", 0.0, 0.1)
            s["norm"]["mean"] = draw(c, "normal", 0.0, 0.1)
            s["norm"]["var"] = draw(c, "uniform", 0.5, 1.5)
    # The classifier: a ridge-regression probe of the (random) pooled block3 features onto the
    # labels of the shipped sample digits, so that the predictions spread over the classes
    # (a scaled random classifier predicted one class for every digit).
    feats = pooled_features(params, batch_stats, standardise(_sample_digits()[0]))
    labels = _sample_digits()[1]
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mu) / sd
    y = np.eye(10, dtype=np.float64)[labels] - 0.1
    w = np.linalg.solve(z.T @ z + 1.0 * np.eye(z.shape[1]), z.T @ y)  # (32, 10) on standardised features
    w = w * (3.0 / (z @ w).std())  # logits spread over a few units
    params["classifier"]["kernel"] = (w / sd[:, None]).astype(np.float32)
    params["classifier"]["bias"] = (-(mu / sd) @ w).astype(np.float32)
    return params, batch_stats


def _sample_digits():
    """The shipped 200 test digits in [0, 1] (N, 28, 28, 1) and their labels."""
    from pathlib import Path
    with np.load(Path(__file__).resolve().parents[1] / "sample_data" / "mnist_test_sample.npz") as d:
        return (d["images"].astype(np.float32) / 255.0).reshape(-1, 28, 28, 1), d["labels"].astype(np.int64)


def pooled_features(params, batch_stats, x) -> np.ndarray:
    """RefNet's globally pooled block3 output (N, 32) for standardised ``x``."""
    _, state = RefNet().apply({"params": params, "batch_stats": batch_stats}, jnp.asarray(x),
                              capture_intermediates=lambda mdl, _: mdl.name == "block3", mutable=["intermediates"])
    return np.asarray(state["intermediates"]["block3"]["__call__"][0], np.float64).mean(axis=(1, 2))


class ResBlock(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)  # noqa: E731
        y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), padding="SAME", name="conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = nn.Conv(self.features, (3, 3), padding="SAME", name="conv2")(y)
        y = bn("bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), (self.strides, self.strides), name="proj")(x)
            x = bn("proj_bn")(x)
        return nn.relu(x + y)


class ResNet32(nn.Module):
    """(N, 32, 32, 3) -> logits (N, num_classes); ``"block2"`` is (N, 16, 16, 32)."""

    num_classes: int = 5

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(16, (3, 3), padding="SAME", name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="stem_bn")(x))
        x = ResBlock(16, name="block1")(x, train)
        x = ResBlock(32, strides=2, name="block2")(x, train)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="classifier")(x)


def flatten(tree, prefix: str = "") -> dict:
    """Nested dicts -> ``{"prefix/a/b": array}``."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if hasattr(v, "items"):
            out.update(flatten(v, name))
        else:
            out[name] = np.asarray(v)
    return out


def unflatten(flat: dict, prefix: str) -> dict:
    """``{"prefix/a/b": array}`` (other keys ignored) -> nested dicts ``{"a": {"b": array}}``."""
    out: dict = {}
    for name, v in flat.items():
        if not name.startswith(prefix + "/"):
            continue
        *path, leaf = name[len(prefix) + 1:].split("/")
        node = out
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = np.asarray(v)
    return out

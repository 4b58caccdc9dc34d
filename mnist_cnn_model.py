"""The MNIST CNN shared by training, the demos and the explanation module.

Architecture (input 28x28x1, float pixels in [0, 1]):

    [Conv(32,3x3) -> BatchNorm -> ReLU] x2 -> MaxPool 2   # (N, 14, 14, 32)
    [Conv(64,3x3) -> BatchNorm -> ReLU] x2 -> MaxPool 2   # (N, 7, 7, 64)
    [Conv(128,3x3) -> BatchNorm -> ReLU] x2               # (N, 7, 7, 128)  <- feature_map
    global average pool -> Dense(256) -> ReLU -> Dropout -> Dense(10)  # logits

322,922 trainable parameters (plus 896 BatchNorm running statistics).

The module exposes its two halves as methods so that explanations can reach the
last conv block's output directly (the explainers' fast path):

    feature_map = model.apply(variables, images, method=MNISTCNN.features)  # (N, 7, 7, 128)
    logits = model.apply(variables, feature_map, method=MNISTCNN.head)      # (N, 10)

and marks each conv block's output as a named layer (``block1``, ``block2``, ``block3``:
identity submodules without variables), which any explainer can name like a layer of any
other Flax model: ``GradCAM(model, layer="block2")``.

Quick start:

    import jax
    from mnist_cnn_model import initialize_model
    params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
# Training-set statistics of MNIST pixels scaled to [0, 1]; the model standardises
# its input itself so that every caller (and every explanation baseline) works in [0, 1].
# They are the defaults of MNISTCNN's input_mean/input_std: a training run stores the
# statistics of its own training split (mnist_data.pixel_stats) in the model config, and a
# checkpoint that stores none (the shipped pretrained/ predates them) was trained with these.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def _conv_same(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _patches3x3(x: jax.Array) -> jax.Array:
    """(n, h, w, c) -> (n, h, w, 9c): the zero-padded 3x3 neighbourhood of each pixel, (ky, kx, c) order."""
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)


def images_per_chunk(n: int, bytes_per_image: int, chunk_bytes: int) -> int:
    """The largest divisor of ``n`` whose chunk of ``bytes_per_image``-sized images fits in ``chunk_bytes``."""
    k = max(1, min(n, chunk_bytes // bytes_per_image))
    while n % k:
        k -= 1
    return k


def conv3x3_weight_grad(x: jax.Array, g: jax.Array, chunk_bytes: int = 1 << 22) -> jax.Array:
    """dL/dw of a 3x3 SAME conv as im2col matmuls over cache-sized chunks of the batch.

    XLA's CPU backend lowers this gradient to a convolution whose "kernel" is the whole
    28x28 activation map, which dominated the CPU training step; summing patches^T @ g over
    chunks of a few images is an order of magnitude faster for the same layer (measurements:
    docs/performance-notes.md).
    """
    n, h, w, c = x.shape
    o = g.shape[-1]
    k = images_per_chunk(n, h * w * 9 * c * x.dtype.itemsize, chunk_bytes)

    def accumulate(acc, xg):
        xc, gc = xg
        patches = _patches3x3(xc).reshape(-1, 9 * c)  # (k*h*w, 9c)
        return acc + lax.dot_general(patches, gc.reshape(-1, o), (((0,), (0,)), ((), ()))), None

    xs, gs = x.reshape(n // k, k, h, w, c), g.reshape(n // k, k, h, w, o)
    acc = lax.scan(accumulate, jnp.zeros((9 * c, o), jnp.float32), (xs, gs))[0]
    return acc.reshape(3, 3, c, o)


@jax.custom_vjp
def conv3x3(x: jax.Array, w: jax.Array) -> jax.Array:
    """3x3 stride-1 SAME convolution, NHWC x HWIO, with a CPU-friendly weight gradient
    (``conv3x3_weight_grad`` on a CPU, XLA's own gradient on other backends)."""
    return _conv_same(x, w)


def _conv3x3_fwd(x, w):
    return _conv_same(x, w), (x, w)


def _xla_weight_grad(x: jax.Array, g: jax.Array, w: jax.Array) -> jax.Array:
    """dL/dw as XLA differentiates the conv itself (cuDNN's weight-gradient kernel on a GPU)."""
    return jax.vjp(lambda w_: _conv_same(x, w_), w)[1](g)[0]


def _conv3x3_bwd(residuals, g):
    x, w = residuals
    dx = jax.vjp(lambda x_: _conv_same(x_, w), x)[1](g)[0]  # XLA's transposed conv is fine here
    # The im2col rule is for XLA's CPU backend only; on a GPU its scan over small chunks
    # would serialise what cuDNN does in one kernel. Chosen when the graph is lowered.
    dw = lax.platform_dependent(x, g, w, cpu=lambda x, g, w: conv3x3_weight_grad(x, g).astype(w.dtype),
                                default=_xla_weight_grad)
    return dx, dw


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """Drop-in for ``lax.conv_general_dilated`` as ``nn.Conv`` calls it; uses ``conv3x3``
    for the only case this model has (3x3, stride 1, SAME, no dilation, one group)."""
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    plain = (lhs.ndim == 4 and rhs.shape[:2] == (3, 3) and tuple(window_strides) == (1, 1)
             and (dimension_numbers is None or dimension_numbers == nhwc)
             and all(d in (None, 1) or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
             and feature_group_count == 1 and precision is None and not kwargs
             and (padding == "SAME" or tuple(map(tuple, padding)) == ((1, 1), (1, 1))))
    if plain:
        return conv3x3(lhs, rhs)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision, **kwargs)


def _pool_2x2(x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, whose gradient goes to the first maximum of each window.

    Same values as ``nn.max_pool(x, (2, 2), (2, 2))`` and the same gradient convention as
    PyTorch's ``MaxPool2d``, TensorFlow and XLA's ``select_and_scatter``: where a window holds
    tied maxima (a flat black background after the first convs: all four values equal), the
    whole gradient goes to the first of them in row-major order (top-left, top-right,
    bottom-left, bottom-right). A plain ``x.reshape(...).max(...)`` would split it evenly
    between the ties instead, which moves saliency, Gradient x Input and Integrated Gradients
    on the background by up to half of the map's maximum against Captum's.

    The forward pass is that reshape and max (XLA fuses it into the conv before it); the
    backward pass is an elementwise first-maximum mask, with no ``select_and_scatter``
    (slow on XLA's CPU backend) and less memory traffic than the tie-splitting gradient.
    """
    return _pool_2x2(x)


def _pool_fwd(x):
    y = _pool_2x2(x)
    return y, (x, y)


def _pool_bwd(residuals, g):
    x, y = residuals
    n, h, w, c = x.shape
    tied = x.reshape(n, h // 2, 2, w // 2, 2, c) == y[:, :, None, :, None, :]
    tl, tr = tied[:, :, 0, :, 0], tied[:, :, 0, :, 1]
    bl = tied[:, :, 1, :, 0]
    tr = tr & ~tl
    bl = bl & ~(tl | tr)
    br = ~(tl | tr | bl)
    first = jnp.stack([jnp.stack([tl, tr], axis=-2), jnp.stack([bl, br], axis=-2)], axis=2)  # (n, h/2, 2, w/2, 2, c)
    return ((first * g[:, :, None, :, None, :]).reshape(n, h, w, c).astype(x.dtype),)


max_pool_2x2.defvjp(_pool_fwd, _pool_bwd)


class BlockOutput(nn.Module):
    """The identity, as a named point in the module tree: ``block1``..``block3`` mark each conv
    block's output (after its ReLU, before pooling), so that an explainer can reach it by name
    (``GradCAM(model, layer="block3")``) through Flax's method interception. No variables."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class MNISTCNN(nn.Module):
    """Three conv blocks, global average pooling and a two-layer dense head."""

    num_classes: int = NUM_CLASSES
    widths: Sequence[int] = (32, 64, 128)
    dense_features: int = 256
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    # The input standardisation (x - input_mean) / input_std, x in [0, 1]: the training split's
    # pixel statistics. Not variables: the parameter tree is the same whatever they are.
    input_mean: float = MNIST_MEAN
    input_std: float = MNIST_STD
    # Set during data-parallel training (shard_map) so BatchNorm averages its batch
    # statistics across devices; irrelevant at inference. Not part of ``config()``.
    bn_axis_name: str | None = None

    # The input contract explainers read (class attributes, not constructor arguments):
    # one 28x28 grayscale image per row, float pixels in [0, 1] (uint8 0-255 is scaled).
    image_shape = IMAGE_SHAPE
    input_range = (0.0, 1.0)

    def setup(self):
        # Two 3x3 convs per block, each followed by BatchNorm.
        self.convs = [
            nn.Conv(w, (3, 3), padding="SAME", dtype=self.dtype, name=f"conv{2 * b + i + 1}",
                    conv_general_dilated=conv_general_dilated)
            for b, w in enumerate(self.widths) for i in range(2)
        ]
        self.norms = [
            nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype, axis_name=self.bn_axis_name,
                         name=f"bn{k + 1}")
            for k in range(len(self.convs))
        ]
        self.block_outputs = [BlockOutput(name=f"block{b + 1}") for b in range(len(self.widths))]
        self.dense1 = nn.Dense(self.dense_features, dtype=self.dtype, name="dense1")
        self.dropout = nn.Dropout(self.dropout_rate)
        self.dense2 = nn.Dense(self.num_classes, dtype=self.dtype, name="dense2")

    def segments(self) -> list[tuple[tuple[int, ...], bool]]:
        """The conv layers by block: ``[(layer indices, max-pooled after the block?), ...]``."""
        last = len(self.widths) - 1
        return [((2 * b, 2 * b + 1), b < last) for b in range(len(self.widths))]

    def stem(self, images: jax.Array) -> jax.Array:
        """Images in [0, 1] -> the standardised input of the first conv layer."""
        return (images.astype(self.dtype) - self.input_mean) / self.input_std

    def conv_block(self, k: int, x: jax.Array, train: bool = False, padding: str = "SAME") -> jax.Array:
        """Conv layer ``k`` -> BatchNorm -> ReLU.

        At inference BatchNorm is an affine map per channel, folded into the conv's kernel and
        bias (``folded_conv``): one conv, a bias and a ReLU, the same values to float rounding.
        It speeds up the forward-bound methods (Score-CAM, the deletion/insertion curves;
        docs/performance-notes.md).

        ``padding="VALID"`` (inference only) drops the zero border: a crop of h x w gives
        (h-2) x (w-2) values, equal to the SAME layer's on the crop's interior. Incremental
        occlusion uses it to recompute only the region a patch changes.
        """
        if padding not in ("SAME", "VALID"):
            raise ValueError(f"padding: expected 'SAME' or 'VALID', got {padding!r}")
        if train or self.is_initializing():
            if padding == "VALID":
                raise ValueError("padding='VALID' is for inference only (train=False)")
            return nn.relu(self.norms[k](self.convs[k](x), use_running_average=not train))
        w, b = self.folded_conv(k)
        x = x.astype(self.dtype)
        y = conv3x3(x, w) if padding == "SAME" else lax.conv_general_dilated(
            x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return nn.relu(y + b)

    def folded_conv(self, k: int) -> tuple[jax.Array, jax.Array]:
        """Kernel and bias of conv layer ``k`` with its BatchNorm's running statistics folded in:
        BN(conv(x, W) + c) = conv(x, W * s) + (c - mean) * s + beta, s = gamma / sqrt(var + eps)."""
        conv = self.convs[k].variables["params"]
        norm = self.norms[k]
        stats, affine = norm.variables["batch_stats"], norm.variables["params"]
        s = affine["scale"] * lax.rsqrt(stats["var"] + norm.epsilon)
        bias = (conv["bias"] - stats["mean"]) * s + affine["bias"]
        return (conv["kernel"] * s).astype(self.dtype), bias.astype(self.dtype)

    def features(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Images (N, 28, 28, 1) in [0, 1] -> last conv block's feature map (N, 7, 7, 128)."""
        x = self.stem(images)
        for b, (layers, pooled) in enumerate(self.segments()):
            for k in layers:
                x = self.conv_block(k, x, train)
            x = self.block_outputs[b](x)
            if pooled:
                x = max_pool_2x2(x)
        return x

    def head(self, feature_map: jax.Array, train: bool = False) -> jax.Array:
        """Feature map (N, 7, 7, C) -> logits (N, num_classes), pre-softmax."""
        x = feature_map.mean(axis=(1, 2))  # global average pool, (N, C)
        x = nn.relu(self.dense1(x))
        x = self.dropout(x, deterministic=not train)
        return self.dense2(x).astype(jnp.float32)

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.features(images, train), train)

    def config(self) -> dict:
        """The constructor arguments, JSON-serialisable, to store beside checkpoints."""
        return {
            "num_classes": self.num_classes,
            "widths": list(self.widths),
            "dense_features": self.dense_features,
            "dropout_rate": self.dropout_rate,
            "dtype": jnp.dtype(self.dtype).name,
            "input_mean": float(self.input_mean),
            "input_std": float(self.input_std),
        }

    @classmethod
    def from_config(cls, config: dict) -> "MNISTCNN":
        known = {f.name for f in dataclasses.fields(cls)} & (set(config) - {"bn_axis_name"})
        kwargs = {k: config[k] for k in known}
        if "widths" in kwargs:
            kwargs["widths"] = tuple(kwargs["widths"])
        if "dtype" in kwargs:
            kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
        for name in ("input_mean", "input_std"):  # absent (older checkpoints): MNIST's, the defaults
            if name in kwargs:
                value = kwargs[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or (name == "input_std" and value <= 0):
                    raise ValueError(f"{name}: expected a finite number{' > 0' if name == 'input_std' else ''}, "
                                     f"got {value!r}")
                kwargs[name] = float(value)
        return cls(**kwargs)


def initialize_model(rng: jax.Array, model: MNISTCNN | None = None):
    """Return ``(params, batch_stats, model)`` for a freshly initialised network."""
    model = MNISTCNN() if model is None else model
    variables = jax.jit(model.init)(rng, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))
    return variables["params"], variables["batch_stats"], model


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


@functools.lru_cache(maxsize=8)
def expected_shapes(model: nn.Module, image_shape: tuple[int, ...] = IMAGE_SHAPE) -> dict[str, tuple[int, ...]]:
    """``{"params/conv1/kernel": (3, 3, 1, 32), ...}``: the variables ``model.init`` makes for
    images of ``image_shape`` (traced, nothing computed). Raises whatever init raises."""
    tree = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)))
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(dict(tree))}


def shape_mismatch(model: nn.Module, variables: dict, image_shape: tuple[int, ...] = IMAGE_SHAPE):
    """The first ``(name, expected shape, shape found)`` where ``variables`` ({"params": ...,
    "batch_stats": ...}) do not fit ``model`` ("absent" for a missing or extra array), else None."""
    expected = expected_shapes(model, tuple(image_shape))
    collections = {name.split("/")[0] for name in expected}
    got = {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(jnp.shape(leaf))
           for path, leaf in jax.tree_util.tree_leaves_with_path({c: dict(variables[c]) for c in collections})}
    if got == expected:
        return None
    name = sorted((set(expected) ^ set(got)) or {k for k in expected if expected[k] != got[k]})[0]
    return name, expected.get(name, "absent"), got.get(name, "absent")

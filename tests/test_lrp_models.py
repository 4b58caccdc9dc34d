"""DeepLIFT and LRP on every JAX model family: one small CNN written in flax.linen, flax.nnx,
Equinox and Haiku with the same weights; each family's map must equal the linen model's (whose
maps tests/test_propagation.py and tests/test_lrp.py hold to Captum and zennit).

    stem conv 3x3 (C -> 4) -> ReLU -> block.conv2 3x3 (4 -> 6) -> ReLU -> max-pool 2x2 -> mean -> Dense 5

The methods: DeepLIFT (Rescale, baseline 0), LRP EpsilonGammaBox (z^B with low/high in the
input space, gamma, epsilon), and EpsilonPlus with Gamma(0.5) on the layer named in each
family's own terms (``"block/conv2"``, ``"block.conv2"``, ``"net/block/conv2"``): the
rules by layer path reach the layer in every family. Grad-CAM at a named layer in each
family is tests/test_model_families.py's (against a hand-written Grad-CAM).
The same net with a BatchNorm after the stem, in Equinox (a stateful eqx.nn.BatchNorm, its
State as batch_stats) against linen, checks that both ways of writing the normalisation fuse
into the stem's LRP layer alike.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

eqx = pytest.importorskip("equinox")
hk = pytest.importorskip("haiku")
from flax import linen as nn
from flax import nnx

import mnist_xai_visualizations as X
from mnist_xai import lrp_rules

HW, CLASSES = 8, 5
TARGETS = [0, 3, 1]
LAYER = {"linen": "block/conv2", "nnx": "block.conv2", "equinox": "block.conv2", "haiku": "net/block/conv2"}
#: grayscale and RGB alternate between the families (the adapter does not depend on the channel count)
CASES = [("nnx", 3), ("equinox", 1), ("haiku", 3)]


@functools.lru_cache(maxsize=None)
def weights(channels):
    rng = np.random.default_rng(channels)
    f = lambda *s: (rng.normal(size=s) / np.sqrt(np.prod(s[:-1]))).astype(np.float32)  # noqa: E731
    return {"k1": f(3, 3, channels, 4), "b1": (0.1 * rng.normal(size=4)).astype(np.float32),
            "k2": f(3, 3, 4, 6), "b2": (0.1 * rng.normal(size=6)).astype(np.float32),
            "wd": f(6, CLASSES), "bd": (0.1 * rng.normal(size=CLASSES)).astype(np.float32)}


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(6, (3, 3), name="conv2")(x))


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = LinenBlock(name="block")(nn.relu(nn.Conv(4, (3, 3), name="stem")(x)))
        return nn.Dense(CLASSES, name="head")(nn.max_pool(x, (2, 2), (2, 2)).mean((1, 2)))


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv2 = nnx.Conv(4, 6, (3, 3), rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.conv2(x))


class NNXNet(nnx.Module):
    def __init__(self, channels, rngs):
        self.stem, self.block = nnx.Conv(channels, 4, (3, 3), rngs=rngs), NNXBlock(rngs)
        self.head = nnx.Linear(6, CLASSES, rngs=rngs)

    def __call__(self, x):
        x = self.block(nnx.relu(self.stem(x)))
        return self.head(nnx.max_pool(x, (2, 2), (2, 2)).mean((1, 2)))


class EqxBlock(eqx.Module):
    conv2: eqx.nn.Conv2d

    def __call__(self, x):
        return jax.nn.relu(self.conv2(x))


class EqxNet(eqx.Module):
    """One (C, H, W) image per call, as Equinox writes models."""
    stem: eqx.nn.Conv2d
    block: EqxBlock
    pool: eqx.nn.MaxPool2d
    head: eqx.nn.Linear

    def __call__(self, x):
        x = self.block(jax.nn.relu(self.stem(x)))
        return self.head(self.pool(x).mean((1, 2)))


class HkBlock(hk.Module):
    def __call__(self, x):
        return jax.nn.relu(hk.Conv2D(6, 3, name="conv2")(x))


class HkNet(hk.Module):
    def __init__(self):
        super().__init__(name="net")

    def __call__(self, x):
        x = HkBlock(name="block")(jax.nn.relu(hk.Conv2D(4, 3, name="stem")(x)))
        x = hk.max_pool(x, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return hk.Linear(CLASSES, name="head")(x.mean((1, 2)))


@functools.lru_cache(maxsize=None)
def build(family, channels):
    """``(model, params, batch_stats)`` as ``attribute`` takes them, every family on ``weights(channels)``."""
    w = weights(channels)
    if family == "linen":
        params = {"stem": {"kernel": w["k1"], "bias": w["b1"]},
                  "block": {"conv2": {"kernel": w["k2"], "bias": w["b2"]}},
                  "head": {"kernel": w["wd"], "bias": w["bd"]}}
        return LinenNet(), params, None
    if family == "nnx":
        m = NNXNet(channels, nnx.Rngs(0))
        for conv, k, b in ((m.stem, "k1", "b1"), (m.block.conv2, "k2", "b2"), (m.head, "wd", "bd")):
            conv.kernel[...], conv.bias[...] = jnp.asarray(w[k]), jnp.asarray(w[b])
        return m, None, None
    if family == "equinox":
        k = jax.random.split(jax.random.PRNGKey(0), 3)
        conv = lambda cin, cout, key, kk, bb: eqx.tree_at(  # noqa: E731 - HWIO -> OIHW, bias (O, 1, 1)
            lambda c: (c.weight, c.bias), eqx.nn.Conv2d(cin, cout, 3, padding=1, key=key),
            (jnp.asarray(w[kk]).transpose(3, 2, 0, 1), jnp.asarray(w[bb])[:, None, None]))
        head = eqx.tree_at(lambda h: (h.weight, h.bias), eqx.nn.Linear(6, CLASSES, key=k[2]),
                           (jnp.asarray(w["wd"]).T, jnp.asarray(w["bd"])))
        return EqxNet(conv(channels, 4, k[0], "k1", "b1"), EqxBlock(conv(4, 6, k[1], "k2", "b2")),
                      eqx.nn.MaxPool2d(2, 2), head), None, None
    net = hk.transform(lambda x: HkNet()(x))
    params = {"net/stem": {"w": w["k1"], "b": w["b1"]}, "net/block/conv2": {"w": w["k2"], "b": w["b2"]},
              "net/head": {"w": w["wd"], "b": w["bd"]}}
    init = net.init(jax.random.PRNGKey(0), jnp.zeros((1, HW, HW, channels)))
    assert jax.tree_util.tree_map(jnp.shape, init) == jax.tree_util.tree_map(jnp.shape, params)
    return net, params, None


def images(channels):
    return np.random.default_rng(10 + channels).normal(size=(3, HW, HW, channels)).astype(np.float32)


METHODS = {
    "deeplift": lambda m, fam: X.DeepLift(m, baseline=0.0),
    "lrp_epsilon_gamma_box": lambda m, fam: X.LRPEpsilonGammaBox(m, epsilon=0.01, gamma=0.25, low=-3.0, high=3.0),
    "lrp_by_path": lambda m, fam: X.LRP(m, "epsilon_plus", layer_rules={LAYER[fam]: lrp_rules.Gamma(0.5)}),
}


@functools.lru_cache(maxsize=None)
def maps(family, channels, method):
    model, params, stats = build(family, channels)
    return np.asarray(METHODS[method](model, family).attribute(params, stats, images(channels), TARGETS))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family, channels", CASES, ids=lambda v: str(v))
def test_each_family_equals_the_linen_model(family, channels, method):
    ours, linen = maps(family, channels, method), maps("linen", channels, method)
    assert linen.shape == (3, HW, HW) and np.abs(linen).max() > 0
    np.testing.assert_allclose(ours, linen, rtol=0, atol=1e-5 * np.abs(linen).max())


def test_the_layer_rule_reaches_the_named_layer():
    """On the linen model the rule named for block/conv2 changes the map (so the families'
    equality above means each reached its layer), and DeepLIFT sums to the logit's change."""
    model, params, _ = build("linen", 3)
    plain = X.LRP(model, "epsilon_plus").attribute(params, None, images(3), TARGETS)
    named = maps("linen", 3, "lrp_by_path")
    assert np.abs(named - plain).max() > 1e-3 * np.abs(plain).max()
    x = images(3)
    logits = np.asarray(model.apply({"params": params}, x))
    base = np.asarray(model.apply({"params": params}, np.zeros_like(x)))
    delta = logits[np.arange(3), TARGETS] - base[np.arange(3), TARGETS]
    np.testing.assert_allclose(maps("linen", 3, "deeplift").sum((1, 2)), delta, rtol=1e-4, atol=1e-5)


class LinenBNNet(nn.Module):
    """LinenNet with a BatchNorm (running statistics) between the stem and its ReLU."""
    @nn.compact
    def __call__(self, x):
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn")(nn.Conv(4, (3, 3), name="stem")(x))
        x = LinenBlock(name="block")(nn.relu(x))
        return nn.Dense(CLASSES, name="head")(nn.max_pool(x, (2, 2), (2, 2)).mean((1, 2)))


class EqxBNNet(eqx.Module):
    """EqxNet with a stateful eqx.nn.BatchNorm: its State goes in as batch_stats."""
    stem: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    block: EqxBlock
    pool: eqx.nn.MaxPool2d
    head: eqx.nn.Linear

    def __init__(self, plain: EqxNet, scale, shift):
        self.stem, self.block, self.pool, self.head = plain.stem, plain.block, plain.pool, plain.head
        self.bn = eqx.tree_at(lambda b: (b.weight, b.bias), eqx.nn.BatchNorm(4, axis_name="batch", eps=1e-5, mode="ema"),
                              (jnp.asarray(scale), jnp.asarray(shift)))

    def __call__(self, x, state):
        a, state = self.bn(self.stem(x), state)
        return self.head(self.pool(self.block(jax.nn.relu(a))).mean((1, 2))), state


@pytest.mark.parametrize("method", METHODS)
def test_equinox_with_batchnorm_equals_linen_with_batchnorm(method):
    """Equinox normalises as (x - mean) / sqrt(var + eps) * weight + bias (a div), linen as
    (x - mean) * (scale * rsqrt(var + eps)) + bias (a mul): both must fuse into the stem's LRP
    layer alike, with the running statistics from each family's own state. One BatchNorm
    scale is negative, so the rules' split of the weights into W+ and W- matters."""
    rng = np.random.default_rng(7)
    mean, var = (0.3 * rng.normal(size=4)).astype(np.float32), rng.uniform(0.5, 2.0, size=4).astype(np.float32)
    scale = (rng.uniform(0.5, 1.5, size=4) * [1, -1, 1, 1]).astype(np.float32)
    shift = (0.2 * rng.normal(size=4)).astype(np.float32)
    _, plain_params, _ = build("linen", 1)
    params = {**plain_params, "bn": {"scale": scale, "bias": shift}}
    linen = np.asarray(METHODS[method](LinenBNNet(), "linen").attribute(params, {"bn": {"mean": mean, "var": var}},
                                                                         images(1), TARGETS))
    model, state = eqx.nn.make_with_state(lambda: EqxBNNet(build("equinox", 1)[0], scale, shift))()
    state = state.set(model.bn.ema_state_index, (jnp.asarray(mean), jnp.asarray(var)))
    ours = np.asarray(METHODS[method](model, "equinox").attribute(None, state, images(1), TARGETS))
    assert linen.shape == (3, HW, HW) and np.abs(linen).max() > 0
    # the BatchNorm is live: without it the maps differ
    assert np.abs(linen - maps("linen", 1, method)).max() > 1e-2 * np.abs(linen).max()
    np.testing.assert_allclose(ours, linen, rtol=0, atol=1e-5 * np.abs(linen).max())

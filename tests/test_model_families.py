"""Every JAX model family the adapter takes (mnist_xai/model.py): flax.linen, flax.nnx, Equinox,
Haiku (hk.transform_with_state, with BatchNorm state) and a plain function.

One small CNN per family, on grayscale and RGB images: stem conv -> block (conv1, conv2) ->
[BatchNorm] -> mean -> [Dropout] -> Dense. Grad-CAM at the named layer ``block.conv2`` (each
family's own name for it) is compared with a Grad-CAM written here by hand: the model split
explicitly into ``trunk`` (images -> that layer's output A) and ``top`` (A -> logits), and
jax.grad of the target logit with respect to A. Saliency is compared with jax.grad of the
logit. The one-line errors of the adapter are checked by their messages.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

eqx = pytest.importorskip("equinox")  # requirements-dev.txt / pip install .[models]
hk = pytest.importorskip("haiku")
from flax import linen as nn
from flax import nnx

import mnist_xai_visualizations as X
from mnist_xai import adapt

HW = 12          # image side: small, the compile time is what counts
CLASSES = 5
TARGETS = [0, 3, 1]
FAMILIES = ["linen", "nnx", "equinox", "haiku"]
LAYER = {"linen": "block/conv2", "nnx": "block.conv2", "equinox": "block.conv2", "haiku": "net/~/block/~/conv2"}


# ----------------------------------------------------------------------------- one CNN per family


class LinenBlock(nn.Module):
    def setup(self):
        self.conv1, self.conv2 = nn.Conv(6, (3, 3), name="conv1"), nn.Conv(8, (3, 3), name="conv2")

    def __call__(self, x):
        return self.conv2(nn.relu(self.conv1(x)))


class LinenNet(nn.Module):
    """``train`` is found by name and set False (BatchNorm then reads its running statistics)."""

    def setup(self):
        self.stem, self.block = nn.Conv(4, (3, 3), name="stem"), LinenBlock(name="block")
        self.bn, self.head = nn.BatchNorm(name="bn"), nn.Dense(CLASSES, name="head")

    def trunk(self, x):
        return self.block(nn.relu(self.stem(x)))

    def top(self, a, train: bool = False):
        return self.head(nn.relu(self.bn(a, use_running_average=not train)).mean((1, 2)))

    def __call__(self, x, train: bool = True):
        return self.top(self.trunk(x), train)


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv1, self.conv2 = nnx.Conv(4, 6, (3, 3), rngs=rngs), nnx.Conv(6, 8, (3, 3), rngs=rngs)

    def __call__(self, x):
        return self.conv2(nnx.relu(self.conv1(x)))


class NNXNet(nnx.Module):
    """Dropout and BatchNorm in training mode as built: the adapter views a copy in eval mode."""

    def __init__(self, channels, rngs):
        self.stem, self.block = nnx.Conv(channels, 4, (3, 3), rngs=rngs), NNXBlock(rngs)
        self.bn, self.drop = nnx.BatchNorm(8, rngs=rngs), nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(8, CLASSES, rngs=rngs)

    def trunk(self, x):
        return self.block(nnx.relu(self.stem(x)))

    def top(self, a):
        return self.head(self.drop(nnx.relu(self.bn(a)).mean((1, 2))))

    def __call__(self, x):
        return self.top(self.trunk(x))


class EqxBlock(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv1, self.conv2 = eqx.nn.Conv2d(4, 6, 3, padding=1, key=k1), eqx.nn.Conv2d(6, 8, 3, padding=1, key=k2)

    def __call__(self, x):
        return self.conv2(jax.nn.relu(self.conv1(x)))


class EqxNet(eqx.Module):
    """Equinox's convention: one (C, H, W) image per call; Dropout switched off by inference_mode."""
    stem: eqx.nn.Conv2d
    block: EqxBlock
    drop: eqx.nn.Dropout
    head: eqx.nn.Linear

    def __init__(self, channels, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.stem, self.block = eqx.nn.Conv2d(channels, 4, 3, padding=1, key=k1), EqxBlock(k2)
        self.drop, self.head = eqx.nn.Dropout(0.5), eqx.nn.Linear(8, CLASSES, key=k3)

    def trunk(self, x):  # (C, H, W) -> (8, H, W)
        return self.block(jax.nn.relu(self.stem(x)))

    def top(self, a, key=None):
        return self.head(self.drop(jax.nn.relu(a).mean((1, 2)), key=key))

    def __call__(self, x, *, key=None):
        return self.top(self.trunk(x), key)


class HkBlock(hk.Module):
    def __init__(self, name=None):
        super().__init__(name=name)
        self.conv1, self.conv2 = hk.Conv2D(6, 3, name="conv1"), hk.Conv2D(8, 3, name="conv2")

    def __call__(self, x):
        return self.conv2(jax.nn.relu(self.conv1(x)))


class HkNet(hk.Module):
    def __init__(self):
        super().__init__(name="net")
        self.stem, self.block = hk.Conv2D(4, 3, name="stem"), HkBlock(name="block")
        self.bn = hk.BatchNorm(True, True, 0.9, name="bn")
        self.head = hk.Linear(CLASSES, name="head")

    def trunk(self, x):
        return self.block(jax.nn.relu(self.stem(x)))

    def top(self, a, is_training):
        return self.head(jax.nn.relu(self.bn(a, is_training)).mean((1, 2)))

    def __call__(self, x, is_training=True):  # is_training: found by name, set False
        return self.top(self.trunk(x), is_training)


def _images(channels, n=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, HW, HW, channels)).astype(np.float32)


@functools.lru_cache(maxsize=None)  # each model built and initialised once per module
def build(family, channels):
    """``(model, params, batch_stats, trunk, top)``: what ``attribute`` takes, and the model split
    by hand (trunk: NHWC images -> A (N, h, w, C); top: A -> logits), written here independently."""
    key = jax.random.PRNGKey(channels)
    x0 = jnp.zeros((1, HW, HW, channels))
    if family == "linen":
        model = LinenNet()
        variables = jax.jit(lambda k: model.init(k, x0, train=False))(key)
        stats = jax.tree_util.tree_map(lambda a: a + 0.3, variables["batch_stats"])  # not the identity
        v = {"params": variables["params"], "batch_stats": stats}
        return (model, v, None,  # the whole variables dict as params
                lambda x: model.apply(v, x, method=LinenNet.trunk),
                lambda a: model.apply(v, a, method=LinenNet.top))
    if family == "nnx":
        model = NNXNet(channels, nnx.Rngs(channels))
        model.bn.mean[...] = model.bn.mean[...] + 0.3  # running statistics that are not the identity
        ref = nnx.view(nnx.clone(model), deterministic=True, use_running_average=True)
        return model, None, None, ref.trunk, ref.top
    if family == "equinox":
        model = EqxNet(channels, key)
        ref = eqx.nn.inference_mode(model)
        chw = lambda a: jnp.moveaxis(a, -1, -3)  # noqa: E731
        return (model, None, None,
                lambda x: jnp.moveaxis(jax.vmap(ref.trunk)(chw(x)), -3, -1),
                lambda a: jax.vmap(ref.top)(chw(a)))
    net = hk.transform_with_state(lambda x, is_training=True: HkNet()(x, is_training))
    params, state = jax.jit(net.init)(key, x0)
    trunk = hk.transform_with_state(lambda x: HkNet().trunk(x))
    top = hk.transform_with_state(lambda a: HkNet().top(a, False))
    return (net, params, state,
            lambda x: trunk.apply(params, state, None, x)[0],
            lambda a: top.apply(params, state, None, a)[0])


# Grayscale and RGB alternate between the families to keep the module within CI's 30 s (each
# model's init and each explainer compile once, ~2-5 s apiece on the 2-core CPU); the adapter's
# code does not depend on the channel count. MODEL_FAMILIES_ALL=1 runs every family on both.
CASES = ([(f, c) for f in FAMILIES for c in (1, 3)] if os.environ.get("MODEL_FAMILIES_ALL")
         else [("linen", 1), ("nnx", 3), ("equinox", 1), ("haiku", 3)])
CHANNELS = {"linen": 1, "nnx": 3, "equinox": 1, "haiku": 3}  # the models the other tests reuse


@pytest.fixture(scope="module", params=CASES,
                ids=lambda fc: f"{fc[0]}-{'gray' if fc[1] == 1 else 'rgb'}")
def family(request):
    name, channels = request.param
    return (name, channels, *build(name, channels))


# ----------------------------------------------------------------------------- equal to the hand-written maps


def hand_gradcam(trunk, top, x, targets):
    """Grad-CAM (Selvaraju et al. 2017, eqs. 1-2): alpha_k = mean_ij dy^c/dA^k_ij, ReLU(sum_k alpha_k A^k)."""
    @jax.jit
    def cam(x, targets):
        a = trunk(x)
        grads = jax.grad(lambda act: top(act)[jnp.arange(len(x)), targets].sum())(a)
        return jax.nn.relu(jnp.einsum("nhwk,nk->nhw", a, grads.mean((1, 2))))
    return np.asarray(cam(jnp.asarray(x), jnp.asarray(targets)))


def test_gradcam_at_a_named_layer_equals_the_hand_written_one(family):
    name, channels, model, params, stats, trunk, top = family
    x = _images(channels)
    raw = X.GradCAM(model, layer=LAYER[name]).raw_cam(params, stats, x, TARGETS)
    expected = hand_gradcam(trunk, top, x, TARGETS)
    assert raw.shape == (3, HW, HW) and expected.max() > 0
    np.testing.assert_allclose(raw, expected, rtol=0, atol=1e-5 * expected.max())


def test_saliency_equals_jax_grad(family):
    name, channels, model, params, stats, trunk, top = family
    x = _images(channels, seed=1)
    grads, logits = jax.jit(jax.grad(lambda v: (lambda y: (y[jnp.arange(3), jnp.asarray(TARGETS)].sum(), y))(
        top(trunk(v))), has_aux=True))(jnp.asarray(x))
    expected = np.abs(np.asarray(grads)).max(-1)
    maps, ours = X.Saliency(model).attribute(params, stats, x, TARGETS, return_logits=True)
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6 * expected.max())
    np.testing.assert_allclose(ours, np.asarray(logits), rtol=1e-5, atol=1e-6)  # the model's, in inference mode


def test_a_plain_function_takes_no_variables():
    _, _, _, trunk, top = build("equinox", 1)
    x = _images(1)
    grads = jax.jit(jax.grad(lambda v: top(trunk(v))[:, 2].sum()))(jnp.asarray(x))
    np.testing.assert_allclose(X.Saliency(lambda v: top(trunk(v))).attribute(None, None, x, 2),
                               np.abs(np.asarray(grads))[..., 0], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- layers in each family's terms


def test_nnx_layers_by_attribute_path_either_separator_and_the_model_left_alone():
    model, *_ = build("nnx", 3)
    target = X.explained(model)
    state = target.variables(None, None, (HW, HW, 3))
    assert target.check_layer("block/conv2", state, (HW, HW, 3)) == "block.conv2"
    assert target.check_layer(None, state, (HW, HW, 3)) == "bn"  # the last spatial layer to finish
    X.GradCAM(model, layer="block/conv2").raw_cam(None, None, _images(3), TARGETS)
    assert model.drop.deterministic is False and model.bn.use_running_average is False
    assert type(model.block.conv2) is nnx.Conv  # no wrapper left behind


def test_equinox_with_its_own_layout_per_example_and_state():
    """``adapt``: an Equinox model written for NHWC batches; and a stateful BatchNorm model
    (eqx.nn.make_with_state), whose State goes in as batch_stats."""
    class Batched(eqx.Module):
        conv: eqx.nn.Conv2d
        head: eqx.nn.Linear

        def __call__(self, x):  # (N, H, W, C)
            a = jax.vmap(self.conv)(jnp.moveaxis(x, -1, 1))
            return jax.vmap(self.head)(a.mean((2, 3)))

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    model = Batched(eqx.nn.Conv2d(3, 4, 3, key=k1), eqx.nn.Linear(4, CLASSES, key=k2))
    x = _images(3)
    maps = X.Saliency(adapt(model, layout="NHWC", per_example=False)).attribute(None, None, x, 1)
    grads = jax.grad(lambda v: model(v)[:, 1].sum())(jnp.asarray(x))
    np.testing.assert_allclose(maps, np.abs(np.asarray(grads)).max(-1), rtol=1e-5, atol=1e-7)

    class WithBN(eqx.Module):
        conv: eqx.nn.Conv2d
        bn: eqx.nn.BatchNorm
        head: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.conv, self.bn = eqx.nn.Conv2d(1, 4, 3, key=k1), eqx.nn.BatchNorm(4, axis_name="batch", mode="ema")
            self.head = eqx.nn.Linear(4, CLASSES, key=k2)

        def __call__(self, x, state):
            a, state = self.bn(self.conv(x), state)
            return self.head(jax.nn.relu(a).mean((1, 2))), state

    model, state = eqx.nn.make_with_state(WithBN)(jax.random.PRNGKey(1))
    x = _images(1)
    raw = X.GradCAM(model, layer="conv").raw_cam(None, state, x, TARGETS)
    inference = eqx.nn.inference_mode(model)

    def top(a):  # (N, h, w, C) -> logits, BatchNorm on its running statistics
        def one(ai):
            b, _ = inference.bn(jnp.moveaxis(ai, -1, 0), state)
            return inference.head(jax.nn.relu(b).mean((1, 2)))
        return jax.vmap(one)(a)
    trunk = lambda v: jnp.moveaxis(jax.vmap(model.conv)(jnp.moveaxis(v, -1, 1)), 1, -1)  # noqa: E731
    expected = hand_gradcam(trunk, top, x, TARGETS)
    np.testing.assert_allclose(raw, expected, rtol=0, atol=1e-5 * expected.max())


def test_linen_training_flags_found_by_name():
    """``deterministic`` (inverted) and ``training``: without them Dropout would ask for an rng."""
    class Det(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic: bool = False):
            x = nn.Dropout(0.5, deterministic=deterministic)(nn.Conv(4, (3, 3), name="conv")(x))
            return nn.Dense(CLASSES, name="head")(x.mean((1, 2)))

    class Training(Det):
        def __call__(self, x, training: bool = True):
            return super().__call__(x, deterministic=not training)

    x = _images(1)
    for cls in (Det, Training):
        model = cls()
        params = model.init(jax.random.PRNGKey(0), x[:1], **{"deterministic" if cls is Det else "training":
                                                               cls is Det})["params"]
        maps = X.GradCAM(model, layer="conv").attribute(params, None, x, TARGETS)
        assert maps.shape == (3, HW, HW) and np.isfinite(maps).all()
    told = X.Saliency(adapt(Det(), eval_kwargs={"deterministic": True})).attribute(params, None, x, 1)
    assert np.isfinite(told).all()


# ----------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize("name, call, match", [
    ("nnx", lambda m, p, s, x: X.Saliency(m).attribute(nnx.state(m), None, x),
     r"^params: a flax.nnx Module carries its own state; call attribute\(None, None, images, targets\), "
     r"got params of type State$"),
    ("equinox", lambda m, p, s, x: X.Saliency(m).attribute(eqx.filter(m, eqx.is_array), None, x),
     r"^params: an Equinox Module carries its own state; call attribute\(None, None, images, targets\), "
     r"got params of type EqxNet$"),
    ("nnx", lambda m, p, s, x: X.GradCAM(m, layer="block.conv3").attribute(None, None, x),
     r"^layer: expected one of NNXNet's layers \(stem, block.conv1, block.conv2, block, bn, drop, head\), "
     r"got 'block.conv3'$"),
    ("equinox", lambda m, p, s, x: X.GradCAM(m, layer="head").attribute(None, None, x),
     r"^layer 'head': expected a spatial output \(N, h, w, C\), got shape \(1, 5\) for one image$"),
    ("haiku", lambda m, p, s, x: X.GradCAM(m, layer="block/conv2").attribute(p, s, x),
     r"^layer: expected one of hk_transform's layers \(net/~/stem, net/~/block/~/conv1, net/~/block/~/conv2, "
     r"net/~/block, net/~/bn, net/~/head, net\), got 'block/conv2'$"),
    ("haiku", lambda m, p, s, x: X.Saliency(m).attribute(p, None, x),
     r"^batch_stats: expected the Haiku state of hk.transform_with_state \(params, state = f.init\(...\)\), "
     r"got NoneType$"),
    ("linen", lambda m, p, s, x: X.Saliency(m).attribute(p, {"mean": 1}, x),
     r"^batch_stats: expected None when params is a whole variables dict"),
    ("linen", lambda m, p, s, x: X.Saliency(m).attribute(p, None, np.moveaxis(x, -1, 1)),
     r"^images: expected NHWC images \(N, H, W, C\), got shape \(3, 1, 12, 12\), which is channels-first "
     r"\(N, C, H, W\); pass images.transpose\(0, 2, 3, 1\)$"),
    ("equinox", lambda m, p, s, x: X.Saliency(m).attribute(None, None, np.zeros((2, 3, HW, HW), np.float32)),
     r"^images: expected NHWC images \(N, H, W, C\), got shape \(2, 3, 12, 12\), which is channels-first"),
])
def test_one_line_errors(name, call, match):
    model, params, stats, *_ = build(name, CHANNELS[name])
    with pytest.raises(ValueError, match=match) as err:
        call(model, params, stats, _images(CHANNELS[name]))
    assert "\n" not in str(err.value)


def test_unsupported_models_and_options_say_what_is_supported():
    supported = (r"a flax.linen or flax.nnx Module, an Equinox Module, a Haiku transform "
                 r"\(hk.transform / hk.transform_with_state\) or a function images -> logits, got int")
    with pytest.raises(ValueError, match=rf"^model: expected {supported}$"):
        X.Saliency(3)
    with pytest.raises(ValueError, match=r"^layer: a CAM method needs a flax.linen Module or another model with "
                                         r"named layers \(a flax.nnx or Equinox Module, a Haiku transform\)"):
        X.GradCAM(lambda v: v.mean((1, 2))).attribute(None, None, _images(3))
    with pytest.raises(ValueError, match=r"^layout: expected one of NHWC, NCHW, got 'CHW'$"):
        adapt(LinenNet(), layout="CHW")
    with pytest.raises(ValueError, match=r"^per_example: expected True or False, got 1$"):
        adapt(LinenNet(), per_example=1)
    with pytest.raises(ValueError, match=r"^eval_kwargs: expected a dict of keyword arguments, got \['train'\]$"):
        adapt(LinenNet(), eval_kwargs=["train"])

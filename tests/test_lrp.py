"""LRP (mnist_xai/methods/lrp.py on mnist_xai/lrp_rules.py) against zennit 0.5.1 and Captum 0.9.

The references are in tests/fixtures/reference_lrp.npz, made by benchmarks/make_reference_lrp.py
(its docstring lists the source lines read and each method's settings, ``METHODS``) on the
weights, first 16 digits and targets of reference_maps.npz and the torch twins of
make_reference_propagation.py; zennit merges every BatchNorm into its conv
(SequentialMergeBatchNorm), ours fuses it in the jaxpr (lrp_rules.fuse). No torch here.

The bound, per digit (tests/parity.py): 1e-4 of the reference map's max on every digit, but one
flip allowed on refnet (``FLIPS``). Measured on this project's 2-core AMD EPYC, AVX-512 and with
XLA_FLAGS=--xla_cpu_max_isa=AVX2 (the same figures on both), worst digit of 16:

    method                 cnn       refnet
    lrp_epsilon            7.2e-6    8.9e-6
    lrp_gamma              7.6e-6    7.4e-6
    lrp_alpha_beta         7.6e-6    7.1e-6
    lrp_epsilon_plus       7.2e-6    8.2e-6
    lrp_epsilon_gamma_box  7.4e-6    8.4e-6
    lrp_epsilon_plus_flat  6.9e-6    7.5e-6

(7.6e-6 = 2^-17 is the fixture's rounding, make_reference_maps.round_maps.) On an AVX2-only
AMD EPYC (2026-12-04) every rule moved refnet digit 15, by 7.7e-4 (EpsilonPlus) to 7.0e-3
(gamma) of its map, the other 15 digits as above. That digit is a float32 near-tie of ours: the
same weights and images in float64 (jax_enable_x64) give LRP-epsilon within 7e-6 of zennit on
all 16 digits, and our float32 map of digit 15 is the one 2.8e-3 away from both. A wrong rule
moves every digit.

Where the references disagree: zennit's merged BatchNorm computes x / sqrt(1 + eps), not the
identity (up to 1.2e-4 of a map's max here; corrected in the reference, see the generator);
Captum's LRP multiplies the relevance by the target logit (its maps sum to about the logit,
zennit's and ours to about 1); divided by it, Captum's LRP-epsilon on the BatchNorm-merged
twin equals zennit's. We follow zennit.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import mnist_xai_visualizations as X
from mnist_cnn_model import MNISTCNN
from mnist_xai import lrp_rules
from parity import assert_close_per_digit, per_digit_gap
from reference_models import HI, LO, RefNet, unflatten

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FLIPS = {"cnn": 0, "refnet": 1}  # digits of 16 (module docstring: refnet digit 15 on AVX2)
#: benchmarks/make_reference_lrp.METHODS (that script imports torch; the settings are repeated here)
METHODS = {
    "lrp_epsilon": {"epsilon": 0.25},
    "lrp_gamma": {"gamma": 0.25},
    "lrp_alpha_beta": {"alpha": 2.0, "beta": 1.0},
    "lrp_epsilon_plus": {},
    "lrp_epsilon_gamma_box": {"gamma": 0.5},
    "lrp_epsilon_plus_flat": {},
}
BOX = {"cnn": {}, "refnet": {"low": float(LO), "high": float(HI)}}  # cnn: its input_range (0, 1)


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES / "reference_maps.npz") as d, np.load(FIXTURES / "reference_lrp.npz") as p:
        n = len(p["digits"])
        out = {k: d[k] for k in d.files}
        out.update({f"lrp:{k}": p[k] for k in p.files})
        out["n"] = n
        return out


def weights(ref, net):
    return unflatten(ref, f"{net}/params"), unflatten(ref, f"{net}/batch_stats")


_cache: dict = {}


def ours(ref, net, method):
    if (net, method) not in _cache:
        model = MNISTCNN() if net == "cnn" else RefNet()
        opts = dict(METHODS[method], **(BOX[net] if method == "lrp_epsilon_gamma_box" else {}))
        images = ref["images"] if net == "cnn" else ref["refnet/images"]
        n = ref["n"]
        maps, logits = X.make_explainer(method, model, **opts).attribute(
            *weights(ref, net), images[:n], ref["targets"][:n], return_logits=True)
        _cache[net, method] = np.asarray(maps), np.asarray(logits)
    return _cache[net, method]


@pytest.mark.parametrize("net", ("cnn", "refnet"))
@pytest.mark.parametrize("method", METHODS)
def test_matches_zennit(ref, net, method):
    assert_close_per_digit(ours(ref, net, method)[0], ref[f"lrp:{net}/{method}"], f"{net}/{method}",
                           flips=FLIPS[net])


def test_captum_lrp_is_zennit_times_the_target_logit(ref):
    """Captum's LRP-epsilon (its relevance times the target logit, captum/attr/_core/lrp.py:222-225)
    divided by our logit equals ours, and as returned it does not."""
    maps, logits = ours(ref, "cnn", "lrp_epsilon")
    n = ref["n"]
    logit = logits[np.arange(n), ref["targets"][:n]]
    captum = ref["lrp:cnn/captum_lrp_epsilon"]
    assert_close_per_digit(maps, captum / logit[:, None, None], "cnn/captum_lrp_epsilon")
    assert per_digit_gap(maps, captum).min() > 0.5


# ----------------------------------------------------------------------------- known answers


class Residual(nn.Module):
    """Bias-free ReLU net with a skip connection, BatchNorm without shift (a negative scale
    in some channels), max and average pooling: LRP-0 is Gradient x Input there."""

    @nn.compact
    def __call__(self, x):
        conv = lambda f, name: nn.Conv(f, (3, 3), use_bias=False, name=name)  # noqa: E731
        a = nn.relu(conv(4, "c1")(x))
        b = nn.BatchNorm(use_running_average=True, use_bias=False, name="bn")(conv(4, "c2")(a))
        y = nn.relu(a + b)
        y = nn.max_pool(y, (2, 2), (2, 2))
        y = nn.relu(conv(6, "c3")(y)).mean((1, 2))
        return nn.Dense(3, use_bias=False, name="out")(y)


@pytest.fixture(scope="module")
def residual():
    m = Residual()
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 8, 8, 2)), jnp.float32)
    v = m.init(jax.random.PRNGKey(0), x)
    scale = jnp.asarray([1.5, -0.7, 0.4, -1.2])
    v = {"params": {**v["params"], "bn": {"scale": scale}},
         "batch_stats": {"bn": {"mean": jnp.zeros(4), "var": jnp.full(4, 0.8)}}}
    return m, v, x


def test_lrp0_is_gradient_times_input_on_a_bias_free_relu_net(residual):
    """LRP-0 on a bias-free ReLU network is Gradient x Input (Ancona et al., ICLR 2018, sec. 3),
    divided by the target logit (zennit's, and our, relevance starts from the one-hot: the
    last layer divides it by z): the Epsilon rule at 0, Pass on ReLU, Norm on the sum (the
    skip connection) and the average pool, the gradient through the max-pool, the BatchNorm
    scale merged."""
    m, v, x = residual
    targets = np.array([0, 2, 1])
    lrp = X.LRPEpsilon(m, epsilon=0.0).attribute(v["params"], v["batch_stats"], x, targets)
    logit = lambda z: (m.apply(v, z) * jax.nn.one_hot(targets, 3)).sum(-1)  # noqa: E731
    grads = jax.grad(lambda z: logit(z).sum())(x)
    expected = np.asarray((grads * x).sum(-1)) / np.asarray(logit(x))[:, None, None]
    np.testing.assert_allclose(lrp, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def _merged(v):
    """The Residual net's BatchNorm folded into c2's kernel by hand (W * s, no shift)."""
    s = v["params"]["bn"]["scale"] / jnp.sqrt(v["batch_stats"]["bn"]["var"] + 1e-5)
    p = dict(v["params"])
    p["c2"] = {"kernel": p["c2"]["kernel"] * s}
    return p


class ResidualNoBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        conv = lambda f, name: nn.Conv(f, (3, 3), use_bias=False, name=name)  # noqa: E731
        a = nn.relu(conv(4, "c1")(x))
        y = nn.relu(a + conv(4, "c2")(a))
        y = nn.max_pool(y, (2, 2), (2, 2))
        y = nn.relu(conv(6, "c3")(y)).mean((1, 2))
        return nn.Dense(3, use_bias=False, name="out")(y)


@pytest.mark.parametrize("composite", ["gamma", "alpha_beta", "epsilon_gamma_box"])
def test_batchnorm_with_negative_scales_is_merged_as_a_canonizer_would(residual, composite):
    """The fused BatchNorm (scales of both signs) gives the map of the same net with the
    BatchNorm folded into the conv's weights by hand: the positive/negative parts of W * s."""
    m, v, x = residual
    folded = _merged(v)
    folded.pop("bn")
    kw = dict(low=0.0, high=1.0) if composite == "epsilon_gamma_box" else {}
    a = X.LRP(m, composite, **kw).attribute(v["params"], v["batch_stats"], x, [0, 1, 2])
    b = X.LRP(ResidualNoBN(), composite, **kw).attribute(folded, None, x, [0, 1, 2])
    assert np.abs(b).max() > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_epsilon_rule_by_hand_where_the_logit_is_negative():
    """One dense layer z = W x + b and a target whose z < 0: R_x = x W[:, t] / (z - eps)
    (zennit's stabiliser takes z's sign, core.py:89-115)."""
    rng = np.random.default_rng(4)
    w = rng.normal(size=(12, 3)).astype(np.float32)
    b = np.array([-3.0, 0.5, -2.0], np.float32)
    x = rng.uniform(size=(2, 2, 2, 3)).astype(np.float32)
    xf = x.reshape(2, -1)
    z = xf @ w + b
    targets = [int(np.argmin(z[i])) for i in range(2)]
    assert all(z[i, t] < -0.5 for i, t in enumerate(targets))
    maps = X.LRPEpsilon(lambda v: v.reshape(len(v), -1) @ w + b, epsilon=0.5).attribute(None, None, x, targets)
    expected = [xf[i] * w[:, t] / (z[i, t] - 0.5) for i, t in enumerate(targets)]
    np.testing.assert_allclose(maps, np.asarray(expected).reshape(2, 2, 2, 3).sum(-1), rtol=1e-5, atol=1e-7)


def test_flat_and_box_rules_by_hand():
    """One dense layer z = W x + b: Flat spreads R / (number of inputs) over every input,
    whatever W and x; z^B is R (x W - l W+ - h W-) / (z - l W+ - h W- - b+ - b-) ... with b's parts."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(12, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    x = rng.uniform(size=(2, 2, 2, 3)).astype(np.float32)

    def f(images):
        return images.reshape(len(images), -1) @ w + b

    flat = X.LRP(f, "epsilon", layer_rules={"dense": "flat"}).attribute(None, None, x, [1, 2])
    np.testing.assert_allclose(flat, np.full((2, 2, 2), 3 / 12), rtol=1e-5)
    lo, hi = -0.5, 2.0
    box = X.LRP(f, "epsilon", layer_rules={"dense": "zbox"}, low=lo, high=hi).attribute(None, None, x, [1, 2])
    xf = x.reshape(2, -1)
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    expected = []
    for i, t in enumerate([1, 2]):
        z = xf[i] @ w[:, t] + b[t]
        den = z - (lo * wp[:, t].sum() + max(b[t], 0)) - (hi * wn[:, t].sum() + min(b[t], 0))
        expected.append((xf[i] * w[:, t] - lo * wp[:, t] - hi * wn[:, t]) / (den + 1e-6 * np.sign(den)))
    np.testing.assert_allclose(box, np.asarray(expected).reshape(2, 2, 2, 3).sum(-1), rtol=1e-4, atol=1e-6)


def _stab(z, eps=1e-6):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def _by_hand(rule, a, w, b, r):
    """zennit's AlphaBeta(alpha, beta) / Gamma(gamma) on one dense layer z = a W + b, every term
    on a- kept (rules.py:127-187, 221-281): the relevance of the input ``a`` from ``r``."""
    ap, an, wp, wn = np.maximum(a, 0), np.minimum(a, 0), np.maximum(w, 0), np.minimum(w, 0)
    if rule[0] == "alpha_beta":
        alpha, beta = rule[1], rule[1] - 1
        ga = r / _stab(ap @ wp + np.maximum(b, 0) + an @ wn)
        gb = r / _stab(ap @ wn + np.minimum(b, 0) + an @ wp)
        return alpha * (ap * (ga @ wp.T) + an * (ga @ wn.T)) - beta * (ap * (gb @ wn.T) + an * (gb @ wp.T))
    g = rule[1]
    up, down, z = w + g * wp, w + g * wn, a @ w + b
    g01 = (z > 0) * r / _stab(ap @ up + b + g * np.maximum(b, 0) + an @ down)
    g23 = (z < 0) * r / _stab(ap @ down + b + g * np.minimum(b, 0) + an @ up)
    return ap * (g01 @ up.T) + an * (g01 @ down.T) + ap * (g23 @ down.T) + an * (g23 @ up.T)


def _two_dense(shift):
    """x -> Dense 12->6 -> ReLU (-> minus ``shift``) -> Dense 6->3, and its weights."""
    rng = np.random.default_rng(5)
    w1, b1 = rng.normal(size=(12, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    w2, b2 = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)

    def f(v):
        h = jnp.maximum(v.reshape(len(v), -1) @ w1 + b1, 0)
        return (h - shift if shift else h) @ w2 + b2
    return f, (w1, b1, w2, b2)


@pytest.mark.parametrize("shift", [0.0, 0.5])
@pytest.mark.parametrize("rule", [("alpha_beta", 1.0), ("alpha_beta", 2.0), ("gamma", 0.25)])
def test_inputs_known_nonnegative_skip_the_negative_terms_and_others_keep_them(rule, shift):
    """The sign analysis (lrp_rules.nonnegative): the second layer's input ReLU(.) is >= 0, so
    Gamma/AlphaBeta/ZPlus there drop their x- terms (fewer dot_generals in the program); after
    ``- 0.5`` it is not, and every x- term stays. Both equal zennit's formulas by hand with
    every term kept (a wrong "non-negative" would drop the x- terms of the shifted net)."""
    f, (w1, b1, w2, b2) = _two_dense(shift)
    x = np.random.default_rng(6).uniform(-1, 1, size=(4, 2, 2, 3)).astype(np.float32)
    targets = np.array([0, 1, 2, 1])
    name, value = rule
    if name == "alpha_beta":
        rule_obj = lrp_rules.ZPlus() if value == 1.0 else lrp_rules.AlphaBeta(value, value - 1)
    else:
        rule_obj = lrp_rules.Gamma(value)
    explainer = X.LRP(f, "epsilon", layer_rules={"dense": rule_obj})
    maps = explainer.attribute(None, None, x, targets)
    xf = x.reshape(4, -1)
    h = np.maximum(xf @ w1 + b1, 0) - shift
    r1 = _by_hand(rule, h, w2, b2, np.eye(3, dtype=np.float32)[targets])
    expected = _by_hand(rule, xf, w1, b1, r1).reshape(x.shape).sum(-1)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    jaxpr = str(jax.make_jaxpr(lambda v: explainer._maps(None, v, jnp.asarray(targets), None))(x))
    # the forward pass (2) and four products and four transposes on the first layer (its
    # input, the image, has both signs); on the second two and two if its input is >= 0
    # (ZPlus: one and one more inside lax.cond's branch for negative merged scales)
    second = 8 if shift else (4 if rule != ("alpha_beta", 1.0) else 2 + 4)
    assert jaxpr.count("dot_general[") == 2 + 8 + second


def test_rules_by_layer_path_and_kind(ref):
    """A rule named for one layer path changes that layer only: "block3/conv2" (inside
    submodules) on RefNet with Gamma differs from the composite's z+ there, and naming every
    conv layer by path gives the lrp_gamma map."""
    p, b = weights(ref, "refnet")
    x, t = ref["refnet/images"][:2], ref["targets"][:2]
    plain = X.LRP(RefNet(), "zplus").attribute(p, b, x, t)
    one = X.LRP(RefNet(), "zplus", layer_rules={"block3/conv2": lrp_rules.Gamma(0.25)}).attribute(p, b, x, t)
    assert per_digit_gap(one, plain).min() > 1e-3
    paths = {f"block{i}": "gamma" for i in (1, 2, 3)}
    by_path = X.LRP(RefNet(), "zplus", layer_rules={**paths, "classifier": "gamma"}).attribute(p, b, x, t)
    by_kind = X.LRP(RefNet(), "gamma").attribute(p, b, x, t)
    np.testing.assert_allclose(by_path, by_kind, rtol=1e-5, atol=1e-6 * np.abs(by_kind).max())


# ----------------------------------------------------------------------------- bad input


def test_bad_options_and_primitives_in_one_line():
    m = MNISTCNN()
    for build, match in (
        (lambda: X.LRPEpsilon(m, epsilon=-1.0), r"^epsilon: expected a finite number >= 0, got -1.0$"),
        (lambda: X.LRPAlphaBeta(m, alpha=2.0, beta=2.0), r"^alpha, beta: expected alpha - beta = 1, got alpha=2.0"),
        (lambda: X.LRP(m, "zennit"), r"^composite: expected one of epsilon, gamma, alpha_beta"),
        (lambda: X.LRP(m, layer_rules={"conv1": "sharp"}), r"^layer_rules: expected a rule or one of alpha_beta, "),
        (lambda: X.LRPEpsilonGammaBox(m, low="black"), r"^low: expected a finite number or one image"),
    ):
        with pytest.raises(ValueError, match=match) as err:
            build()
        assert "\n" not in str(err.value)
    x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype(np.float32)
    with pytest.raises(ValueError, match=r"^epsilon: unsupported primitive 'sort' on the explained path"):
        X.LRPEpsilon(lambda v: jnp.sort(v.reshape(len(v), -1), axis=-1)[:, -10:]).attribute(None, None, x, [0, 1])
    with pytest.raises(ValueError, match=r"^epsilon: unsupported primitive 'mul' of two operands"):
        X.LRPEpsilon(lambda v: (v * v).reshape(len(v), -1)[:, :10]).attribute(None, None, x, [0, 1])
    with pytest.raises(ValueError,
                       match=r"^low: expected a scalar or one image shaped \(28, 28, 1\), got shape \(3,\)$"):
        X.LRPEpsilonGammaBox(lambda v: v.reshape(len(v), -1)[:, :10], low=np.zeros(3), high=1.0).attribute(
            None, None, x, [0, 1])

"""Propagation methods (mnist_xai/methods/propagation.py on mnist_xai/jaxpr_rules.py) against Captum.

The references are in tests/fixtures/reference_propagation.npz, made by
benchmarks/make_reference_propagation.py (torch 2.14.1, captum 0.9.0; its docstring lists the
source lines read) on the weights, 32 digits and targets of reference_maps.npz and the same
torch twins; DeepLiftShap's 4 baselines are stored there and given to both sides. No torch here.

The bound, per digit (tests/parity.py): 1e-4 of the reference map's max on every digit, no
flips allowed. Measured on this project's 2-core AMD EPYC, AVX-512 and with
XLA_FLAGS=--xla_cpu_max_isa=AVX2 (the same figures on both), worst digit of 32:

    method            cnn       refnet
    guided_backprop   7.6e-6    7.6e-6
    deconvolution     7.6e-6    7.6e-6
    guided_gradcam    7.6e-6    7.6e-6
    deeplift          7.6e-6    7.6e-6
    deeplift_shap     7.6e-6    7.6e-6

(7.6e-6 = 2^-17 is the fixture's rounding, make_reference_maps.round_maps.)

Conventions: Captum's DeepLift max-pool rule (its cross maximum of y and y0) is followed, not
the paper's gradient rule (see ``DeepLift``). Captum 0.9 has two slips we do not copy (the
generator's docstring): (1) a ReLU feeding a MaxPool2d records the plain max-pool gradient as
its grad_output (hooks on one tensor), so Captum's maps as shipped break summation-to-delta
and are 0.66 (cnn) / 0.79 (refnet) of a map's max from the corrected ones; the reference is
Captum with a copy between ReLU and pool. (2) ``maxpool``'s fallback reads ``grad_input[0]``
(the first image's gradient); corrected too, and it changes nothing here: a pool input equal
to the baseline's has a receptive field where x = x0, so those multipliers meet x - x0 = 0.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mnist_xai_visualizations as X
from mnist_cnn_model import MNISTCNN
from mnist_xai import jaxpr_rules
from parity import assert_close_per_digit, per_digit_gap
from reference_models import LO, RefNet, ResNet32, unflatten

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LAYER = {"cnn": None, "refnet": "block3/conv2"}
BASELINE = {"cnn": 0.0, "refnet": float(LO)}
METHODS = ("guided_backprop", "deconvolution", "guided_gradcam", "deeplift", "deeplift_shap")


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES / "reference_maps.npz") as d, np.load(FIXTURES / "reference_propagation.npz") as p:
        return {**{k: d[k] for k in d.files}, **{f"prop:{k}": p[k] for k in p.files}}


def model(net):
    return MNISTCNN() if net == "cnn" else RefNet()


def weights(ref, net):
    return unflatten(ref, f"{net}/params"), unflatten(ref, f"{net}/batch_stats")


def images(ref, net):
    return ref["images"] if net == "cnn" else ref["refnet/images"]


def make(ref, net, method):
    m = model(net)
    shap = ref["prop:dlshap_baselines" if net == "cnn" else "prop:refnet/dlshap_baselines"]
    return {
        "guided_backprop": lambda: X.GuidedBackprop(m),
        "deconvolution": lambda: X.Deconvolution(m),
        "guided_gradcam": lambda: X.GuidedGradCAM(m, layer=LAYER[net]),
        "deeplift": lambda: X.DeepLift(m, baseline=BASELINE[net]),
        "deeplift_shap": lambda: X.DeepLiftShap(m, baselines=shap),
    }[method]()


_cache: dict = {}


def ours(ref, net, method):
    """(32, 28, 28) maps and logits of our method on the fixture's digits (computed once per module)."""
    if (net, method) not in _cache:
        maps, logits = make(ref, net, method).attribute(*weights(ref, net), images(ref, net), ref["targets"],
                                                        return_logits=True)
        _cache[net, method] = np.asarray(maps), np.asarray(logits)
    return _cache[net, method]


@pytest.mark.parametrize("net", ("cnn", "refnet"))
@pytest.mark.parametrize("method", METHODS)
def test_matches_captum(ref, net, method):
    assert_close_per_digit(ours(ref, net, method)[0], ref[f"prop:{net}/{method}"], f"{net}/{method}")


def test_captum_deeplift_slips_stated_in_the_generator(ref):
    """Slip 2 (grad_input[0]) changes nothing on these nets; slip 1 (stale grad_output) does."""
    for net in ("cnn", "refnet"):
        np.testing.assert_array_equal(ref[f"prop:{net}/deeplift_stale_corrected_only"], ref[f"prop:{net}/deeplift"])
        assert per_digit_gap(ref[f"prop:{net}/deeplift_captum_as_shipped"], ref[f"prop:{net}/deeplift"]).max() > 0.1


# ----------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("net", ("cnn", "refnet"))
def test_deeplift_sums_to_delta(ref, net):
    """Summation-to-delta (Shrikumar et al. 2017, eq. 1): sum of attributions = y_c(x) - y_c(x0)."""
    maps, logits = ours(ref, net, "deeplift")
    m = model(net)
    p, b = weights(ref, net)
    base = np.asarray(X.explained(m).logits({"params": p, "batch_stats": b},
                                            jnp.full((1, 28, 28, 1), BASELINE[net], jnp.float32)))[0]
    t = ref["targets"]
    delta = logits[np.arange(len(t)), t] - base[t]
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), delta, atol=1e-4 * np.abs(delta).max())


def test_deeplift_shap_sums_to_the_mean_delta(ref):
    maps, logits = ours(ref, "cnn", "deeplift_shap")
    p, b = weights(ref, "cnn")
    shap = ref["prop:dlshap_baselines"]
    base = np.asarray(X.explained(MNISTCNN()).logits({"params": p, "batch_stats": b}, shap)).mean(0)
    t = ref["targets"]
    delta = logits[np.arange(len(t)), t] - base[t]
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), delta, atol=1e-4 * np.abs(delta).max())


def _positive_net():
    """A ReLU MLP with non-negative weights: every gradient on the way back is >= 0."""
    rng = np.random.default_rng(0)
    w1 = np.abs(rng.normal(size=(784, 32))).astype(np.float32) * 0.05
    w2 = np.abs(rng.normal(size=(32, 10))).astype(np.float32)
    b1 = rng.normal(size=32).astype(np.float32)

    def logits(x):
        return jax.nn.relu(x.reshape(len(x), -1) @ w1 - b1 * 3) @ w2
    return logits


def test_guided_backprop_is_the_gradient_when_no_gradient_is_negative():
    f = _positive_net()
    x = np.random.default_rng(1).uniform(size=(3, 28, 28, 1)).astype(np.float32)
    guided = X.GuidedBackprop(f).attribute(None, None, x, [1, 4, 7])
    grads = X.Saliency(f, absolute=False).attribute(None, None, x, [1, 4, 7])
    np.testing.assert_allclose(guided, grads, rtol=1e-6, atol=1e-9)


def test_rule_interpreter_is_the_gradient_through_nested_jaxprs_and_skip_connections():
    """With no rule replaced the interpreter is the gradient: ResNet32's skip connections,
    unfolded BatchNorm and stride-2 convs, through pjit/custom_jvp (jax.nn.relu)."""
    m = ResNet32()
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3))
    v = m.init(jax.random.PRNGKey(1), x)
    onehot = jax.nn.one_hot(jnp.array([1, 3]), 5)

    def f(z):
        return m.apply(v, z)
    (g,), _ = jax.jit(lambda z: jaxpr_rules.propagate(f, [z], [onehot], jaxpr_rules.Rules("gradient")))(x)
    expected = jax.grad(lambda z: (f(z) * onehot).sum())(x)
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6 * float(jnp.abs(expected).max()))


def test_deeplift_on_a_residual_net_sums_to_delta():
    m = ResNet32()
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 16, 16, 3))
    v = m.init(jax.random.PRNGKey(1), x)
    maps, logits = X.DeepLift(m, baseline=0.0).attribute(v["params"], v["batch_stats"], x, [1, 3],
                                                          return_logits=True)
    base = np.asarray(m.apply(v, jnp.zeros((1, 16, 16, 3))))[0]
    delta = logits[[0, 1], [1, 3]] - base[[1, 3]]
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), delta, atol=1e-4 * np.abs(delta).max())


def test_an_unsupported_primitive_is_named_in_one_line():
    def logits(x):
        return jnp.sort(x.reshape(len(x), -1), axis=-1)[:, -10:]
    x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype(np.float32)
    with pytest.raises(ValueError, match=r"^deeplift: unsupported primitive 'sort' on the explained path"):
        X.DeepLift(logits).attribute(None, None, x, [0, 1])


def test_bad_options_in_one_line():
    m = MNISTCNN()
    for build, match in (
        (lambda: X.DeepLift(m, eps=-1.0), r"^eps: expected a finite number >= 0, got -1.0$"),
        (lambda: X.DeepLift(m, baseline="black"), r"^baseline: expected a finite number or a finite image, got 'black'$"),
        (lambda: X.DeepLift(m, baseline=np.zeros((3, 3))), r"^baseline: expected a scalar or one 28x28 image"),
        (lambda: X.DeepLiftShap(m, samples=0), r"^samples: expected an integer >= 1, got 0$"),
        (lambda: X.DeepLiftShap(m, baselines=np.zeros(5)), r"^baselines: expected images \(B, H, W\[, C\]\), got shape \(5,\)$"),
        (lambda: X.GuidedGradCAM(m, layer=3), r"^layer: expected a layer path such as 'block3/conv2' \(or None\), got 3$"),
    ):
        with pytest.raises(ValueError, match=match):
            build()
    x = np.zeros((1, 28, 28, 1), np.float32)
    with pytest.raises(ValueError, match=r"^baselines: expected images shaped \(28, 28, 1\), got shape \(2, 7, 7\)$"):
        X.DeepLiftShap(lambda z: z.reshape(len(z), -1)[:, :10], baselines=np.zeros((2, 7, 7))).attribute(None, None, x, [0])


def test_deeplift_shap_random_baselines_come_from_the_key(ref):
    p, b = weights(ref, "cnn")
    x, t = ref["images"][:2], ref["targets"][:2]
    e = X.DeepLiftShap(MNISTCNN(), samples=3)
    a1 = e.attribute(p, b, x, t, key=jax.random.PRNGKey(5))
    a2 = e.attribute(p, b, x, t, key=jax.random.PRNGKey(5))
    a3 = e.attribute(p, b, x, t, key=jax.random.PRNGKey(6))
    np.testing.assert_array_equal(a1, a2)
    assert np.abs(a1 - a3).max() > 1e-3 * np.abs(a1).max()

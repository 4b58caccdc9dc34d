"""Axiomatic metrics (mnist_xai/metrics/axiomatic.py): parity with Quantus 0.6.0
(tests/fixtures/quantus_axiomatic.npz, made by benchmarks/make_reference_metrics_axiomatic.py),
known answers on a linear model, and every metric on the shipped MNIST model and a 32x32 RGB model.

Bounds. The torch port's logits agree with Flax's to 1e-4 (the script stops otherwise; measured
7e-7), so f(x) - f(x') agrees to ``DELTA`` = 1e-4 (measured: 9.5e-7). Non-sensitivity counts pixels whose
one-pixel perturbation moves the target logit by less than eps: a pixel with |change| within the
two sides' float noise (~1e-6) of eps can land on either side, so each count may differ by
``FLIPS`` = 1 (measured, softmax probability as Quantus: at eps 1e-5 one digit differs by one
pixel, on AVX-512 and AVX2 alike; at eps 1e-3 none). Input invariance is a verdict per digit: equal.
"""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import make_reference_metrics_axiomatic as R  # noqa: E402
import mnist_xai.methods as X  # noqa: E402
from mnist_xai.metrics import METRICS, MetricInput, evaluate, metric_names  # noqa: E402

DELTA = 1e-4
FLIPS = 1
FAMILY = ["completeness", "input_invariance", "non_sensitivity"]


@pytest.fixture(scope="module")
def reference():
    from mnist_cnn_model import MNISTCNN

    images, targets, variables, maps = R.inputs()
    with np.load(R.OUT) as q:
        return images, targets, variables, maps, MNISTCNN(), {k: q[k] for k in q.files}


def cnn_input(ref, m):
    images, targets, variables, maps, model, _ = ref
    return MetricInput(images, targets=targets, maps=maps[m], explainer=X.Saliency(model),
                       params=variables["params"], batch_stats=variables["batch_stats"])


def test_the_family_is_registered():
    assert set(FAMILY) <= set(metric_names("axiomatic"))
    assert not METRICS["completeness"].higher_is_better and not METRICS["non_sensitivity"].higher_is_better
    assert METRICS["input_invariance"].higher_is_better and "explainer" in METRICS["input_invariance"].needs


@pytest.mark.parametrize("m", R.MAPS)
def test_completeness_equal_to_quantus(m, reference):
    q = reference[-1]
    r = evaluate("completeness", cnn_input(reference, m), baseline="black")
    np.testing.assert_allclose(r.details["delta"], q[f"completeness/{m}/delta"], rtol=0, atol=DELTA)
    np.testing.assert_array_equal(r.details["quantus"], q[f"completeness/{m}/equal"])
    want = np.abs(r.details["attribution_sum"] - q[f"completeness/{m}/delta"]) / np.abs(q[f"completeness/{m}/delta"])
    np.testing.assert_allclose(r.values, want, rtol=DELTA)


@pytest.mark.parametrize("config", list(R.NON_SENSITIVITY))
@pytest.mark.parametrize("m", R.MAPS)
def test_non_sensitivity_equal_to_quantus(config, m, reference):
    q = reference[-1]
    ours = evaluate("non_sensitivity", cnn_input(reference, m), **R.NON_SENSITIVITY[config]).values
    theirs = q[f"non_sensitivity/{config}/{m}"]
    assert np.abs(ours - theirs).max() <= FLIPS, (ours, theirs)


@pytest.mark.parametrize("method", list(R.INVARIANCE_METHODS))
def test_input_invariance_equal_to_quantus(method, reference):
    images, targets, *_, q = reference
    params = _fixture_params(q)  # the weights Quantus ran with
    e = _make(R.INVARIANCE_METHODS[method])
    maps = e.attribute(params, None, images, targets)
    r = evaluate("input_invariance", MetricInput(images, targets=targets, maps=maps, explainer=e, params=params),
                 input_shift=R.INPUT_SHIFT)
    np.testing.assert_array_equal(r.values.astype(bool), q[f"input_invariance/{method}"])


def _fixture_params(q):
    from reference_models import unflatten
    return unflatten(q, "invariance_net/params")


def _make(name):
    from mnist_xai.registry import make_explainer
    return make_explainer(name, R.InvarianceNet())


# ----------------------------------------------------------------------------- known answers (linear model)

W = np.zeros((4, 4, 1), np.float32)
W[:2] = np.arange(1, 9, dtype=np.float32).reshape(2, 4, 1) * np.array([1, -1, 1, -1], np.float32)[None, :, None]


def linear(x):
    """logit 0 = sum(W * x), logit 1 = 0: only the top two rows matter."""
    s = (x * W).sum((1, 2, 3))
    return jnp.stack([s, jnp.zeros_like(s)], 1)


def linear_input(maps, x=None, method=X.Saliency):
    """(non_sensitivity is given kind="logits" below: the linear model's logit moves by w (x - b))"""
    x = np.ones((2, 4, 4, 1), np.float32) if x is None else x
    return MetricInput(x, targets=0, maps=maps, explainer=method(linear))


def test_completeness_known_answers():
    x = np.stack([np.ones((4, 4, 1)), np.full((4, 4, 1), 0.5)]).astype(np.float32)
    gxi = x[..., 0] * W[..., 0]  # gradient x input of a linear model: complete
    r = evaluate("completeness", linear_input(gxi, x))
    np.testing.assert_allclose(r.values, 0, atol=1e-6)
    np.testing.assert_allclose(r.details["delta"], (x * W).sum((1, 2, 3)), rtol=1e-6)
    sal = np.broadcast_to(np.abs(W[..., 0]), (2, 4, 4))  # |w|: sums to 36, delta is -4 and -2
    np.testing.assert_allclose(evaluate("completeness", linear_input(sal, x)).values, [40 / 4, 38 / 2], rtol=1e-6)
    # baseline 0.5: delta = sum(W (x - 0.5)) = -2 and 0; the second floors at 1e-6
    b = evaluate("completeness", linear_input(gxi, x), baseline=0.5)
    np.testing.assert_allclose(b.details["delta"], [-2, 0], atol=1e-6)
    np.testing.assert_allclose(b.values, [abs(-4 + 2) / 2, 2 / 1e-6], rtol=1e-5)
    # the explainer's own baseline by default (Integrated Gradients from 0.5)
    ig = MetricInput(x, targets=0, maps=gxi, explainer=X.IntegratedGradients(linear, baseline=0.5))
    np.testing.assert_allclose(evaluate("completeness", ig).details["delta"], [-2, 0], atol=1e-6)
    black = evaluate("completeness", linear_input(gxi, x), baseline="black")  # each image's minimum
    np.testing.assert_allclose(black.details["delta"], [0, 0], atol=1e-6)


def test_non_sensitivity_known_answers():
    on = np.broadcast_to(W[..., 0], (2, 4, 4))  # zero exactly where the weight is: no mismatch
    np.testing.assert_array_equal(evaluate("non_sensitivity", kind="logits", inp=linear_input(on), baseline=0.0).values, [0, 0])
    everywhere = np.ones((2, 4, 4), np.float32)  # attributes the 8 pixels without effect
    np.testing.assert_array_equal(evaluate("non_sensitivity", kind="logits", inp=linear_input(everywhere), baseline=0.0).values, [8, 8])
    missing = on.copy()
    missing[1, 0, 0] = 0  # misses one pixel that matters
    np.testing.assert_array_equal(evaluate("non_sensitivity", kind="logits", inp=linear_input(missing), baseline=0.0).values, [0, 1])
    # "black" (the image's minimum, 1 here: x is all ones): no pixel moves the logit
    np.testing.assert_array_equal(evaluate("non_sensitivity", kind="logits", inp=linear_input(on)).values, [8, 8])
    # pairs of pixels: the 4 pairs of the top rows move it, the 4 below do not
    np.testing.assert_array_equal(evaluate("non_sensitivity", kind="logits", inp=linear_input(everywhere), baseline=0.0,
                                           features_in_step=2).values, [4, 4])
    # a pair with one attributed pixel is attributed: pixel (0, 1) zeroed, its pair (0, 0) keeps |w| = 1
    half = on.copy()
    half[:, 0, 1] = 0
    np.testing.assert_array_equal(evaluate("non_sensitivity", kind="logits", inp=linear_input(half), baseline=0.0,
                                           features_in_step=2).values, [0, 0])
    # eps thresholds both: a change of |w| = 1 (pixel (0, 0)) is "no effect" under eps = 1.5, while
    # the map 2|w| (not normalised) attributes it 2
    np.testing.assert_array_equal(evaluate("non_sensitivity", kind="logits", inp=linear_input(2 * on), baseline=0.0, eps=1.5,
                                           normalise=False).values, [1, 1])
    # normalised (|w| / 8 <= 1 < 1.5): every pixel is unattributed, 9 have no effect: 7 mismatches
    np.testing.assert_array_equal(evaluate("non_sensitivity", kind="logits", inp=linear_input(on), baseline=0.0, eps=1.5).values, [7, 7])


def test_input_invariance_known_answers():
    x = np.random.default_rng(0).random((2, 4, 4, 1)).astype(np.float32)
    sal = X.Saliency(linear)
    a = sal.attribute(None, None, x, [0, 0])
    r = evaluate("input_invariance", MetricInput(x, targets=0, maps=a, explainer=sal))
    np.testing.assert_array_equal(r.values, [1, 1])
    np.testing.assert_allclose(r.details["max_abs_difference"], 0, atol=1e-6)
    gxi = X.GradientXInput(linear)
    r = evaluate("input_invariance", MetricInput(x, targets=0, maps=gxi.attribute(None, None, x, [0, 0]), explainer=gxi))
    np.testing.assert_array_equal(r.values, [0, 0])
    np.testing.assert_allclose(r.details["max_abs_difference"], np.abs(W).max(), rtol=1e-5)  # (x - (x - 1)) |w|
    r = evaluate("input_invariance", MetricInput(x, targets=0, maps=gxi.attribute(None, None, x, [0, 0]), explainer=gxi),
                 input_shift=-0.25)
    np.testing.assert_allclose(r.details["max_abs_difference"], 0.25 * np.abs(W).max(), rtol=1e-5)
    ig = X.IntegratedGradients(linear, steps=8)
    r = evaluate("input_invariance", MetricInput(x, targets=0, maps=ig.attribute(None, None, x, [0, 0]), explainer=ig))
    np.testing.assert_array_equal(r.values, [0, 0])  # from a zero baseline: not invariant (Kindermans et al.)



def test_input_invariance_makes_its_shifted_explainer_once_per_weights():
    """The shifted model is built (and compiled) once per explainer and weights, not per call;
    other weights get their own: reusing the first's would compare B's maps with the shifted A."""
    from flax import linen as nn

    from mnist_xai.metrics import axiomatic

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.relu(nn.Dense(8)(x.reshape(len(x), -1))))

    x = np.random.default_rng(1).random((3, 4, 4, 1)).astype(np.float32)
    sal = X.Saliency(Tiny())
    results = []
    for seed in (0, 1):
        params = Tiny().init(jax.random.PRNGKey(seed), x)["params"]
        inp = MetricInput(x, targets=0, maps=sal.attribute(params, None, x, [0, 0, 0]), explainer=sal, params=params)
        first = axiomatic._shifted_for(inp, -1.0)
        assert axiomatic._shifted_for(inp, -1.0) is first
        assert axiomatic._shifted_for(inp, -0.5) is not first
        results.append(evaluate("input_invariance", inp).values)
    np.testing.assert_array_equal(results, np.ones((2, 3)))  # Saliency of a ReLU network is invariant

def test_completeness_equals_the_old_completeness_error():
    from metric_models import metric_input
    import mnist_xai_metrics as M

    inp = metric_input("shipped", "integrated_gradients")
    new = evaluate("completeness", inp).values
    old = M.completeness_error(inp.explainer, inp.params, inp.batch_stats, inp.images, inp.targets, inp.maps)
    np.testing.assert_allclose(new, old, rtol=1e-4, atol=1e-7)
    assert new.max() < 0.03  # IG is complete to about 1% at 100 steps


@pytest.mark.parametrize("call, match", [
    (lambda: evaluate("completeness", linear_input(np.ones((2, 4, 4))), baseline="white"),
     r"baseline: expected a number, 'black' or one image \(4, 4, 1\), got 'white'"),
    (lambda: evaluate("completeness", linear_input(np.ones((2, 4, 4))), baseline=np.ones((3, 3))),
     r"baseline: expected a number, 'black' or one finite image \(4, 4, 1\), got shape \(3, 3\)"),
    (lambda: evaluate("completeness", linear_input(np.ones((2, 4, 4))), kind="softmax"),
     "kind: expected 'logits' or 'probs', got 'softmax'"),
    (lambda: evaluate("non_sensitivity", kind="logits", inp=linear_input(np.ones((2, 4, 4))), features_in_step=3),
     "features_in_step: expected a divisor of the 16 pixels, got 3"),
    (lambda: evaluate("input_invariance", MetricInput(np.ones((1, 28, 28, 1)), targets=0, maps=np.ones((1, 28, 28)),
                                                      explainer=X.GradCAM(_cnn()), params=None)),
     "input_invariance: expected a registered method that explains the input, not a layer"),
])
def test_bad_input_is_one_line(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def _cnn():
    from mnist_cnn_model import MNISTCNN
    return MNISTCNN()


def test_every_metric_runs_on_the_shipped_model_and_a_32x32_rgb_model():
    from metric_models import metric_input

    for inp in (metric_input("shipped", "gradient_x_input", n=2), metric_input("rgb", "gradient_x_input")):
        p = inp.images.shape[1] * inp.images.shape[2]
        for name in metric_names("axiomatic"):
            r = evaluate(name, inp, **({"features_in_step": 4} if name == "non_sensitivity" else {}))
            assert r.values.shape == (len(inp),) and np.isfinite(r.values).all(), (name, r.values)
        assert (evaluate("input_invariance", inp).values == 0).all()  # Gradient x Input is not invariant
        ns = evaluate("non_sensitivity", inp, features_in_step=4).values
        assert ((ns >= 0) & (ns <= p // 4)).all()

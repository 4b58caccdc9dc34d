"""Complexity metrics (mnist_xai/metrics/complexity.py): parity with Quantus 0.6.0
(tests/fixtures/quantus_complexity.npz, made by benchmarks/make_reference_metrics_complexity.py),
known answers, and every metric on the shipped MNIST model and on a 32x32 RGB model.

Bounds: Quantus computes the same formulas in numpy float64 on the same maps (fed as float64):
sparseness and complexity agree to 1e-9 relative (measured: <= 3e-15), effective complexity, a
count of pixels over a threshold, exactly.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import make_reference_metrics_complexity as R  # noqa: E402
from make_reference_metrics_localisation import inputs  # noqa: E402
from mnist_xai.metrics import METRICS, MetricInput, evaluate, metric_names  # noqa: E402

FAMILY = ["complexity", "effective_complexity", "sparseness"]


@pytest.fixture(scope="module")
def reference():
    images, targets, maps = inputs()
    with np.load(R.OUT) as q:
        return images, targets, maps, {k: q[k] for k in q.files}


def run(name, maps, **options):
    maps = np.asarray(maps, np.float32)
    return evaluate(name, MetricInput(np.zeros((*maps.shape, 1)), targets=0, maps=maps), **options).values


def test_the_family_is_registered():
    assert set(FAMILY) <= set(metric_names("complexity"))
    assert METRICS["sparseness"].higher_is_better and not METRICS["complexity"].higher_is_better
    assert not METRICS["effective_complexity"].higher_is_better


@pytest.mark.parametrize("config", list(R.CONFIGS))
def test_equal_to_quantus(config, reference):
    images, targets, maps, q = reference
    _, metric, options = R.CONFIGS[config]
    for m, a in maps.items():
        ours = evaluate(metric, MetricInput(images, targets=targets, maps=a), **options).values
        theirs = q[f"{config}/{m}"]
        assert np.isfinite(theirs).all()
        if metric == "effective_complexity":
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{config}/{m}")
        else:
            np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=0, err_msg=f"{config}/{m}")


def test_sparseness_known_answers():
    p = 16
    assert run("sparseness", np.full((1, 4, 4), 0.3))[0] == pytest.approx(0.0, abs=1e-12)  # uniform
    one = np.zeros((1, 4, 4))
    one[0, 1, 2] = 5.0
    assert run("sparseness", one)[0] == pytest.approx((p - 1) / (p * (1 + p * 1e-7)), rel=1e-12)
    half = np.zeros((1, 2, 2))
    half[0, 0] = -2.0  # abs by default: [0, 0, 1, 1] after normalising -> (1 + 3) / (4 * (2 + 4e-7))
    assert run("sparseness", half)[0] == pytest.approx(4 / (4 * (2 + 4e-7)), rel=1e-12)
    ramp = np.arange(1, 5, dtype=np.float64).reshape(1, 2, 2)  # Gini of 1, 2, 3, 4 (+1e-7 each): 0.25
    assert run("sparseness", ramp)[0] == pytest.approx(0.25, abs=1e-6)
    assert run("sparseness", np.zeros((1, 2, 2)))[0] == pytest.approx(0.0, abs=1e-12)  # no 0/0


def test_complexity_known_answers():
    assert run("complexity", np.full((1, 4, 4), 2.0))[0] == pytest.approx(np.log(16), rel=1e-9)
    one = np.zeros((1, 4, 4))
    one[0, 0, 0] = 1.0
    assert run("complexity", one)[0] == pytest.approx(0.0, abs=1e-9)
    two = np.zeros((1, 4, 4))
    two[0, 0, :2] = [3.0, -3.0]
    assert run("complexity", two)[0] == pytest.approx(np.log(2), rel=1e-9)
    q = np.array([0.5, 0.25, 0.25, 0.0])
    assert run("complexity", (q * 8).reshape(1, 2, 2))[0] == pytest.approx(-(q[:3] * np.log(q[:3])).sum(), rel=1e-9)
    assert np.isnan(run("complexity", np.zeros((1, 2, 2)))[0])


def test_effective_complexity_known_answers():
    a = np.array([[[1.0, 0.5], [1e-6, 0.0]], [[-2e-3, 1e-3], [2e-9, 0.0]]])
    np.testing.assert_array_equal(run("effective_complexity", a), [2, 2])  # each map by its own max
    np.testing.assert_array_equal(run("effective_complexity", a, eps=0.6), [1, 1])
    np.testing.assert_array_equal(run("effective_complexity", a, normalise=False), [2, 2])
    np.testing.assert_array_equal(run("effective_complexity", a, normalise=False, eps=1.5e-3), [2, 1])
    np.testing.assert_array_equal(run("effective_complexity", a, abs=False), [2, 1])  # -1 is not > eps
    np.testing.assert_array_equal(run("effective_complexity", np.array([[[1.0, 0.25]]]), eps=0.25), [1])  # strictly >


def test_a_score_does_not_depend_on_the_other_maps(reference):
    images, targets, maps, _ = reference
    a = maps["integrated_gradients"]
    scaled = a * np.logspace(-3, 3, len(a), dtype=np.float32)[:, None, None]
    for name in FAMILY:
        whole = evaluate(name, MetricInput(images, targets=targets, maps=a)).values
        np.testing.assert_allclose(evaluate(name, MetricInput(images, targets=targets, maps=scaled)).values, whole,
                                   rtol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda: run("effective_complexity", np.ones((1, 2, 2)), eps="x"), "eps: expected a finite number, got 'x'"),
    (lambda: run("sparseness", np.full((1, 2, 2), np.inf)), "maps: expected finite values, got NaN/inf"),
    (lambda: evaluate("complexity", MetricInput(np.zeros((1, 2, 2, 1)), targets=0)), "complexity: needs maps"),
])
def test_bad_input_is_one_line(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_every_metric_runs_on_the_shipped_model_and_a_32x32_rgb_model():
    from metric_models import metric_input

    for inp in (metric_input("shipped", "gradient_x_input"), metric_input("rgb", "saliency")):
        p = inp.images.shape[1] * inp.images.shape[2]
        for name in metric_names("complexity"):
            r = evaluate(name, inp)
            assert r.values.shape == (len(inp),) and np.isfinite(r.values).all(), (name, r.values)
        s, c, e = (evaluate(n, inp).values for n in ("sparseness", "complexity", "effective_complexity"))
        assert ((s > 0) & (s < 1)).all() and ((c > 0) & (c < np.log(p))).all() and ((e > 0) & (e <= p)).all()
    # Gradient x Input of digits is zero on the black background: sparse, and fewer pixels than the image
    gxi = metric_input("shipped", "gradient_x_input")
    assert (evaluate("sparseness", gxi).values > 0.8).all() and (evaluate("effective_complexity", gxi).values < 400).all()

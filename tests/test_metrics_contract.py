"""The metric contract (mnist_xai/metrics/base.py): registration, what a metric needs, the
result's interval, and the shared forward pass, with known answers."""
import jax
import numpy as np
import pytest

from mnist_xai.metrics import base as B
from mnist_xai.metrics import MetricInput, bootstrap_ci, evaluate, register_metric


@pytest.fixture
def registry(monkeypatch):
    """A private registry, so test metrics never leak into the project's."""
    monkeypatch.setattr(B, "METRICS", {})
    return B.METRICS


def linear_explainer():
    """A two-class linear model on 2x2 images: logit_0 = sum(x), logit_1 = -sum(x)."""
    from mnist_xai_visualizations import Saliency

    def logits_fn(x):
        s = x.reshape(len(x), -1).sum(1)
        return jax.numpy.stack([s, -s], 1)
    return Saliency(logits_fn)


def test_a_registered_metric_runs_and_summarises_with_a_bootstrap_interval(registry):
    @register_metric("peak", title="Peak", family="complexity", higher_is_better=False, needs=("maps",))
    def peak(inp, scale=1.0):
        """The largest |attribution| of each map."""
        return scale * np.abs(inp.maps).reshape(len(inp), -1).max(1)

    maps = np.arange(4 * 9, dtype=np.float32).reshape(4, 3, 3)
    r = evaluate("peak", MetricInput(np.zeros((4, 3, 3, 1)), targets=0, maps=maps), scale=2.0)
    np.testing.assert_allclose(r.values, [16, 34, 52, 70])
    assert r.mean == pytest.approx(43.0)
    assert r.low < r.mean < r.high and r.low >= 16 and r.high <= 70
    assert r.summary()["n"] == 4 and r.summary()["higher_is_better"] is False
    assert registry["peak"].summary == "The largest |attribution| of each map."
    assert B.metric_names() == ["peak"] and B.metric_names("faithfulness") == []


def test_bootstrap_interval_of_a_constant_is_the_constant_and_nans_are_left_out():
    assert bootstrap_ci([3.0, 3.0, np.nan, 3.0]) == (3.0, 3.0, 3.0)
    assert all(np.isnan(v) for v in bootstrap_ci([np.nan]))
    mean, lo, hi = bootstrap_ci(np.r_[np.zeros(50), np.ones(50)], resamples=2000)
    assert mean == 0.5 and 0.38 < lo < 0.45 and 0.55 < hi < 0.62  # 0.5 -/+ 1.96 * 0.05


def test_wrong_registrations_and_missing_inputs_say_so_in_one_line(registry):
    with pytest.raises(ValueError, match=r"^family: expected one of faithfulness, .*, got 'speed'$"):
        register_metric("x", title="X", family="speed", higher_is_better=True)
    with pytest.raises(ValueError, match=r"^needs: expected a subset of .*, got \['labels'\]$"):
        register_metric("x", title="X", family="complexity", higher_is_better=True, needs=("labels",))
    register_metric("m", title="M", family="faithfulness", higher_is_better=True, needs=("model", "maps"))(
        lambda inp: np.zeros(len(inp)))
    with pytest.raises(ValueError, match=r"^metric 'm' is registered twice$"):
        register_metric("m", title="M", family="faithfulness", higher_is_better=True)(lambda inp: 0)
    with pytest.raises(ValueError, match=r"^m: needs an explainer \(model and params\), maps; the MetricInput has none$"):
        evaluate("m", MetricInput(np.zeros((2, 2, 2, 1)), targets=0))
    with pytest.raises(ValueError, match=r"^metric: expected one of m, got 'n'$"):
        evaluate("n", MetricInput(np.zeros((2, 2, 2, 1)), targets=0))
    with pytest.raises(ValueError, match=r"^images: expected \(N, H, W, C\), got shape \(2, 2\)$"):
        MetricInput(np.zeros((2, 2)))


def test_the_shared_forward_and_explain_give_the_models_known_answers():
    x = np.stack([np.full((2, 2), 0.25), np.full((2, 2), -0.5)]).astype(np.float32)  # sums 1 and -2
    inp = MetricInput(x, explainer=linear_explainer(), chunk=1)  # chunk 1: two compiled calls
    np.testing.assert_array_equal(inp.targets, [0, 1])  # the predicted classes by default
    np.testing.assert_allclose(inp.logits(x), [[1, -1], [-2, 2]])
    np.testing.assert_allclose(inp.target_scores(x, "logits"), [1, 2])
    np.testing.assert_allclose(inp.target_scores(x), [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(-4))], rtol=1e-6)
    np.testing.assert_allclose(inp.explain(), np.ones((2, 2, 2)))  # |d logit_t / dx| = 1 everywhere

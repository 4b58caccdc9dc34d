"""The robustness metrics (mnist_xai/metrics/robustness.py): against Quantus 0.6.0 / Captum on the
same weights, maps and perturbations, known answers on models whose maps are known, every
metric on the shipped model and on a 32x32 RGB model, and the one-line errors.

The reference is tests/fixtures/quantus_robustness.npz (benchmarks/make_reference_metrics_robustness.py:
MNISTCNN with the weights of reference_maps.npz, 8 digits, Saliency maps, 10 perturbations per
digit drawn by our ``perturbations`` and fed to Quantus through ``perturb_func``). Bounds, per
digit, relative to Quantus's value: 1e-4 for every metric (measured on this 2-core AMD EPYC, AVX-512,
and with XLA_FLAGS=--xla_cpu_max_isa=AVX2: worst 2.6e-5, avg-sensitivity; the stabilities' per-step
values 2.2e-5). The only difference left is float32 gradients (jax vs torch) of the re-explained
perturbed digits; a changed formula moves every digit by far more (see the known answers).
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
from mnist_xai.metrics import MetricInput, evaluate, metric_names
from mnist_xai.metrics import robustness as R
from reference_models import ResNet32, unflatten

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLES = 10  # the fixture's
CAPTUM_SAMPLES, CAPTUM_RADIUS = 10, 0.02
PARITY = 1e-4
# The relative stabilities divide each pixel's map change by the map value itself (plus Quantus's
# eps_min 1e-6), so the float32 rounding of a saliency value near 0, which the maps' own check
# below allows at 1e-6 of their max, can be an order-1 relative change on that pixel. Measured:
# within 1e-4 on AVX-512 (2-core EPYC); 4.7e-3 and 1.2e-3 on two of 8 images on an AVX2-only
# EPYC (2026-12-04), the other six within 5e-5. The known-answer test below pins the formulas.
STABILITY_PARITY = 2e-2
STABILITY_NOISE = {"low": 0.0, "high": 0.05}  # the fixture's, for the three relative stabilities
OPTIONS = {"max_sensitivity": {}, "avg_sensitivity": {}, "local_lipschitz_estimate": {},
           "relative_input_stability": STABILITY_NOISE, "relative_output_stability": STABILITY_NOISE,
           "relative_representation_stability": STABILITY_NOISE}


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "quantus_robustness.npz") as d:
        fx = {k: d[k] for k in d.files}
    with np.load(FIXTURES / "reference_maps.npz") as d:
        ref = {k: d[k] for k in d.files}
    params, bs = unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats")
    inp = MetricInput(fx["images"], targets=fx["targets"], explainer=X.Saliency(MNISTCNN()), params=params,
                      batch_stats=bs, key=jax.random.PRNGKey(0))
    inp.maps = inp.explain()
    np.testing.assert_allclose(inp.maps, fx["maps"], rtol=0, atol=1e-6 * np.abs(fx["maps"]).max())
    return inp, fx


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_metric_equals_quantus_on_the_same_perturbations(reference, name):
    inp, fx = reference
    r = evaluate(name, inp, samples=SAMPLES, return_samples=True, **OPTIONS[name])
    bound = STABILITY_PARITY if name.startswith("relative_") else PARITY
    gap = np.abs(r.values - fx[name]) / np.abs(fx[name])
    assert np.all(np.isfinite(fx[name])) and gap.max() < bound, (name, gap.max())
    if f"{name}/steps" in fx:  # each perturbation's value, as Quantus's objective computed it
        steps = fx[f"{name}/steps"]
        assert np.nanmax(np.abs(r.details["per_sample"] - steps) / np.abs(steps)) < bound


def test_max_sensitivity_equals_captums_sensitivity_max(reference):
    inp, fx = reference
    r = evaluate("max_sensitivity", inp, samples=CAPTUM_SAMPLES, radius=CAPTUM_RADIUS)
    gap = np.abs(r.values - fx["captum_sensitivity_max"]) / fx["captum_sensitivity_max"]
    assert gap.max() < PARITY, gap.max()


# ----------------------------------------------------------------------------- known answers


class Double(nn.Module):
    """L(x) = 2 x, flattened: the representation the RRS test reads."""

    @nn.compact
    def __call__(self, x):
        return 2.0 * x.reshape(len(x), -1)


class HalfSquare(nn.Module):
    """logits = (sum(x^2) / 2, -sum(x^2) / 2) via L = 2x: d logit_0 / dx = x, so Saliency's map is
    |x| summed over channels, and for x > 0.2 the perturbed map is x + delta itself."""

    @nn.compact
    def __call__(self, x):
        s = 0.125 * (Double(name="double")(x) ** 2).sum(-1)
        return jnp.stack([s, -s], -1)


@pytest.fixture(scope="module")
def square():
    x = np.random.default_rng(0).uniform(1.0, 2.0, (3, 6, 5, 1)).astype(np.float32)
    model = HalfSquare()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 5, 1)))
    inp = MetricInput(x, targets=0, explainer=X.Saliency(model), params=params.get("params", {}),
                      key=jax.random.PRNGKey(3))
    inp.maps = inp.explain()
    np.testing.assert_allclose(inp.maps, x[..., 0], rtol=1e-6)
    return inp


def deltas(inp, steps, kind, a, b):
    return (R.perturbations(inp, range(steps), kind, a, b) - inp.images[None]).reshape(steps, len(inp), -1)


def test_sensitivities_of_a_map_that_is_the_input_are_the_noise_over_the_image(square):
    d = deltas(square, 7, "uniform", -0.2, 0.2).astype(np.float64)
    x = square.images.reshape(len(square), -1).astype(np.float64)
    expected = np.linalg.norm(d, axis=-1) / np.linalg.norm(x, axis=-1)  # ||a - a'|| / ||a||, a = x
    np.testing.assert_allclose(evaluate("max_sensitivity", square, samples=7).values, expected.max(0), rtol=1e-5)
    np.testing.assert_allclose(evaluate("avg_sensitivity", square, samples=7).values, expected.mean(0), rtol=1e-5)
    # The steps are independent of how they are grouped into explain calls.
    np.testing.assert_allclose(evaluate("max_sensitivity", square, samples=7, steps_per_call=3).values,
                               expected.max(0), rtol=1e-5)


def test_local_lipschitz_of_the_identity_map_is_one_and_normalised_maps_shrink_it(square):
    np.testing.assert_allclose(evaluate("local_lipschitz_estimate", square, samples=5, normalise=False).values, 1.0,
                               rtol=1e-5)
    # Normalised: ||x / max x - x' / max x'|| / ||x - x'||, by hand.
    d = deltas(square, 5, "normal", 0.0, 0.1).astype(np.float64)
    x = square.images.reshape(len(square), -1).astype(np.float64)
    xp = x[None] + d
    a, b = x / x.max(-1, keepdims=True), np.abs(xp) / np.abs(xp).max(-1, keepdims=True)
    expected = (np.linalg.norm(a[None] - b, axis=-1) / np.linalg.norm(d, axis=-1)).max(0)
    np.testing.assert_allclose(evaluate("local_lipschitz_estimate", square, samples=5).values, expected, rtol=1e-5)


def test_relative_stabilities_of_the_identity_map_have_known_values(square):
    # a = x and L = 2x: the relative map change equals the relative input (and layer) change.
    for name in ("relative_input_stability", "relative_representation_stability"):
        extra = {"layer": "double"} if name == "relative_representation_stability" else {}
        np.testing.assert_allclose(evaluate(name, square, samples=5, **extra).values, 1.0, rtol=1e-5)
    # ROS: ||(x - x') / x|| / |h(x) - h(x')| * 1/sqrt(2), h = (s, -s), s = sum(x^2) / 2.
    d = deltas(square, 5, "uniform", 0.02, 0.2).astype(np.float64)
    x = square.images.reshape(len(square), -1).astype(np.float64)
    num = np.linalg.norm(d / x[None], axis=-1)
    dh = np.sqrt(2) * np.abs(0.5 * (x ** 2).sum(-1)[None] - 0.5 * ((x[None] + d) ** 2).sum(-1))
    np.testing.assert_allclose(evaluate("relative_output_stability", square, samples=5).values, (num / dh).max(0),
                               rtol=1e-4)


def test_a_flipped_prediction_leaves_that_perturbation_out():
    # Class 0 iff the pixel sum exceeds 10: noise in [0.02, 0.2] on 25 pixels of 0.39 flips image 0 always.
    def logits_fn(x):
        s = x.reshape(len(x), -1).sum(1)
        return jnp.stack([s - 10.0, 10.0 - s], 1) * (1 + 0.01 * s[:, None])

    x = np.stack([np.full((5, 5, 1), 0.39), np.full((5, 5, 1), 1.0)]).astype(np.float32)
    inp = MetricInput(x, targets=[1, 0], explainer=X.Saliency(logits_fn), key=jax.random.PRNGKey(1))
    inp.maps = inp.explain()
    with pytest.warns(RuntimeWarning, match=r"^relative_input_stability: the prediction changed under all 4 "
                                            r"perturbations of 1 of 2 images \(noise U\(0.02, 0.2\)\), whose values"):
        r = evaluate("relative_input_stability", inp, samples=4, return_samples=True)
    assert np.isnan(r.values[0]) and np.isfinite(r.values[1]) and np.isnan(r.details["per_sample"][:, 0]).all()
    kept = evaluate("relative_input_stability", inp, samples=4, nan_when_prediction_changes=False)
    assert np.isfinite(kept.values).all() and kept.values[1] == r.values[1]
    # the same for every robustness metric asked to leave flips out: N(0.5, 0.01^2) raises every sum by ~12.5
    with pytest.warns(RuntimeWarning, match=r"^local_lipschitz_estimate: the prediction changed under all 4 "
                                            r"perturbations of 1 of 2 images \(noise N\(0.5, 0.01\^2\)\), .*sigma="):
        m = evaluate("local_lipschitz_estimate", inp, samples=4, mean=0.5, sigma=0.01, nan_when_prediction_changes=True)
    assert np.isnan(m.values[0]) and np.isfinite(m.values[1])


# ----------------------------------------------------------------------------- any model


@pytest.fixture(scope="module")
def models():
    import mnist_checkpoint as ckpt

    params, bs, model, _ = ckpt.load_checkpoint(ckpt.default_checkpoint())
    with np.load(Path(__file__).resolve().parents[1] / "sample_data" / "mnist_test_sample.npz") as d:
        digits = d["images"][:3].astype(np.float32) / 255.0
    resnet = ResNet32()
    v = resnet.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))
    stats = jax.tree_util.tree_map(lambda a: a + 0.1, v["batch_stats"])
    rgb = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    out = []
    for m, p, s, x in ((model, params, bs, digits), (resnet, v["params"], stats, rgb)):
        inp = MetricInput(x, explainer=X.Saliency(m), params=p, batch_stats=s)
        inp.maps = inp.explain()
        out.append(inp)
    return out


def test_every_robustness_metric_runs_on_the_shipped_model_and_a_32x32_rgb_resnet(models):
    assert metric_names("robustness") == sorted(OPTIONS)
    for inp in models:
        for name in metric_names("robustness"):
            r = evaluate(name, inp, samples=2, **OPTIONS[name])
            assert r.values.shape == (len(inp),) and np.isfinite(r.values).all() and (r.values > 0).all(), name
    assert R.default_representation_layer(models[0]) == "dropout"  # MNISTCNN: relu(dense1)
    assert R.default_representation_layer(models[1]) == "block2"  # ResNet32: before the pooled classifier


def test_wrong_options_say_so_in_one_line(models):
    inp = models[0]
    cases = [("max_sensitivity", {"samples": 0}, r"^samples: expected a whole number > 0, got 0$"),
             ("avg_sensitivity", {"radius": -1}, r"^radius: expected a number > 0, got -1$"),
             ("local_lipschitz_estimate", {"sigma": "big"}, r"^sigma: expected a number > 0, got 'big'$"),
             ("relative_input_stability", {"low": 0.2, "high": 0.1},
              r"^noise: expected low < high, got low=0.2, high=0.1$"),
             ("relative_representation_stability", {"layer": "dense9"},
              r"^layer: expected one of MNISTCNN's layers \(block1, .*dense2\), got 'dense9'$")]
    for name, options, message in cases:
        with pytest.raises(ValueError, match=message):
            evaluate(name, inp, **options)
    fn = MetricInput(inp.images, explainer=X.Saliency(lambda x: x.reshape(len(x), -1)[:, :10]), maps=inp.maps)
    with pytest.raises(ValueError, match=r"^layer: relative_representation_stability needs a model with named"):
        evaluate("relative_representation_stability", fn, samples=1)

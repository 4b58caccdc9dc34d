"""The faithfulness family (mnist_xai/metrics/faithfulness.py): Quantus 0.6.0 / Captum parity on the
shipped CNN, a known answer per metric on linear models (each breaks when its formula changes),
and every metric on the shipped model and a 32x32 RGB model.

Parity fixture: tests/fixtures/quantus_faithfulness.npz from
benchmarks/make_reference_metrics_faithfulness.py (its docstring says how the same maps and the
same random draws reach both sides). Bounds: both sides run the same float32 network (torch vs
XLA convolutions), so the scores agree to ~1e-6; each bound is 10-100x the largest gap measured
on this CPU, stated beside it (the same gaps with XLA_FLAGS=--xla_cpu_max_isa=AVX2).
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mnist_xai_metrics as M
from mnist_cnn_model import MNISTCNN
from mnist_xai.base import Explainer
from mnist_xai.metrics import MetricInput, evaluate, metric_names
from mnist_xai.metrics import faithfulness as F
from reference_models import ResNet32, unflatten

FIXTURES = Path(__file__).parent / "fixtures"
FAMILY = ["deletion", "faithfulness_correlation", "faithfulness_estimate", "infidelity", "insertion", "irof",
          "monotonicity", "monotonicity_correlation", "pixel_flipping", "region_perturbation", "road", "selectivity",
          "sufficiency"]


# ----------------------------------------------------------------------------- Quantus parity


@pytest.fixture(scope="module")
def quantus_ref():
    with np.load(FIXTURES / "quantus_faithfulness.npz") as d:
        q = {k: d[k] for k in d.files}
    with np.load(FIXTURES / "reference_maps.npz") as d:
        ref = {k: d[k] for k in d.files}
    params, stats = unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats")
    ex = Explainer(MNISTCNN())

    def inp(digits, maps):
        return MetricInput(ref["images"][digits], ref["targets"][digits], maps, ex, params, stats)
    return q, inp(q["digits"], q["maps"]), inp(np.arange(32), q["maps32"])


def _opts(q, name):
    o = json.loads(str(q[f"{name}/options"]))
    if "perturb_baseline" in o:
        o["baseline"] = o.pop("perturb_baseline")
    return o


def test_fixture_conventions(quantus_ref):
    q, inp, _ = quantus_ref
    maps = q["maps"].reshape(len(q["maps"]), -1)
    assert all(len(np.unique(r)) == r.size for r in maps)  # no ties: quicksort and stable sort agree
    np.testing.assert_array_equal(np.abs(maps).max(1), 1.0)  # normalising is the identity on both sides
    assert json.loads(str(q["versions"]))["quantus"] == "0.6.0"


@pytest.mark.parametrize("name, ours, bound", [
    ("pixel_flipping", "pixel_flipping", 1e-5),  # probabilities, 784 steps: measured 4.7e-7
    ("region_perturbation", "region_perturbation", 1e-5),  # measured 2.6e-7
    ("region_perturbation_lerf", "region_perturbation", 1e-5),  # measured 4.0e-7
    ("selectivity", "selectivity", 1e-5),  # measured 3.1e-7
])
def test_curves_match_quantus(quantus_ref, name, ours, bound):
    q, inp, _ = quantus_ref
    r = evaluate(ours, inp, **_opts(q, name))
    np.testing.assert_allclose(r.details["curve"], q[name], atol=bound, rtol=0)
    if name == "pixel_flipping" or name == "selectivity":  # Quantus's AUC: np.trapz(curve, dx=1)
        np.testing.assert_allclose(r.values, np.trapezoid(q[name], axis=1), atol=bound * q[name].shape[1])
    else:
        np.testing.assert_allclose(r.values, q[name].mean(1), atol=bound)


@pytest.mark.parametrize("name, bound", [
    ("faithfulness_correlation", 1e-4),  # Pearson of 30 logit drops: measured 2.1e-7
    ("faithfulness_estimate", 1e-4),  # Pearson of 112 logit drops, some tiny: measured 1.2e-6
    ("monotonicity_correlation", 1e-9),  # Spearman: ranks of variances, exact unless two tie: measured 6e-17
    ("irof", 1e-4),  # 49 scores relative to f(x) ~ 0.01 summed (values up to 360): measured 1.5e-4 abs, 4.4e-6 rel
])
def test_values_match_quantus(quantus_ref, name, bound):
    q, inp, _ = quantus_ref
    np.testing.assert_allclose(evaluate(name, inp, **_opts(q, name)).values, q[name], atol=bound, rtol=bound / 10)


def test_monotonicity_departs_from_quantus_which_never_inserts_a_pixel(quantus_ref):
    """Quantus 0.6.0 writes the baseline over its all-baseline image at every step (see
    faithfulness.monotonicity): every score it asks for is the blank image's, so it returns 1 for
    every image. Ours inserts the pixels: its last step is the image itself."""
    q, inp, _ = quantus_ref
    o = _opts(q, "monotonicity")
    blank = F._scores_of(inp.logits(np.zeros_like(inp.images)), inp.targets, "probs")
    recorded = q["monotonicity/recorded"]
    np.testing.assert_allclose(recorded, np.broadcast_to(blank[:, None], recorded.shape), atol=1e-5)
    np.testing.assert_array_equal(q["monotonicity"], 1.0)
    r = evaluate("monotonicity", inp, **o)
    np.testing.assert_allclose(r.details["curve"][:, -1], inp.target_scores(inp.images), rtol=1e-6)
    assert recorded.shape == r.details["curve"].shape == (8, 8)
    assert (r.values == 0).any()  # the real insertion curves of this net are not all monotone


@pytest.mark.parametrize("name, normalize", [("infidelity", False), ("infidelity_normalized", True)])
def test_infidelity_matches_captum(quantus_ref, name, normalize):
    q, inp, _ = quantus_ref
    o = json.loads(str(q[f"{name}/options"]))
    r = evaluate("infidelity", inp, n_perturb_samples=o["n_perturb_samples"], noise_std=o["noise_std"],
                 normalize=normalize)
    np.testing.assert_allclose(r.values, q[name], rtol=1e-4, atol=1e-7)  # squared logit gaps: measured 1.6e-6 rel


@pytest.mark.parametrize("name", ["sufficiency", "sufficiency_default"])
def test_sufficiency_matches_quantus(quantus_ref, name):
    q, _, inp32 = quantus_ref
    np.testing.assert_allclose(evaluate("sufficiency", inp32, **_opts(q, name)).values, q[name], atol=1e-12)
    assert 0 < q[name].sum() and (q[name] < 1).any()  # a reference that tells values apart


# ----------------------------------------------------------------------------- known answers (linear models)


W = np.array([[3.0, -1.0, 2.0, 0.5], [1.5, 4.0, -2.0, 0.25], [2.5, 0.75, -0.5, 1.25], [-3.0, 3.5, 1.75, 0.125]],
             np.float32)


def linear(images):
    """Two logits: sum(W * x) over a 4x4 image (all channels), and 0."""
    z = (images.sum(-1) * W).sum((1, 2))
    return jnp.stack([z, jnp.zeros_like(z)], 1)


def linear_input(maps, images=None, n=2, seed=0):
    x = (np.random.default_rng(seed).random((n, 4, 4, 1)) + 0.5).astype(np.float32) if images is None else images
    return MetricInput(x, np.zeros(len(x), int), np.broadcast_to(maps, (len(x), 4, 4)), Explainer(linear))


def test_pixel_flipping_of_a_linear_model_is_the_sum_left():
    inp = linear_input(W)
    r = evaluate("pixel_flipping", inp, baseline=0.0, kind="logits")
    wx = (W * inp.images[..., 0]).reshape(2, -1)
    order = np.argsort(-W.ravel())
    want = wx.sum(1)[:, None] - np.cumsum(wx[:, order], 1)  # logit left after k flips, most relevant first
    np.testing.assert_allclose(r.details["curve"], want, atol=1e-5)
    np.testing.assert_allclose(r.values, (want[:, 1:] + want[:, :-1]).sum(1) / 2, atol=1e-4)
    two = evaluate("pixel_flipping", inp, features_in_step=3, baseline=0.0, kind="logits")  # ceil(16 / 3) = 6 steps
    np.testing.assert_allclose(two.details["curve"], want[:, [2, 5, 8, 11, 14, 15]], atol=1e-5)


def test_patch_grid_pads_as_quantus():
    # 5 px in patches of 2: padded by (0, 1); 6 px in patches of 4: by (1, 1)
    np.testing.assert_array_equal(F.patch_grid(5, 5, 2)[:, 0], [0, 0, 3, 3, 6])
    np.testing.assert_array_equal(F.patch_grid(6, 6, 4)[0], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(F.grid_segments(6, 6, 4)[0], [0, 0, 0, 0, 1, 1])


def test_region_perturbation_and_selectivity_remove_patches_by_their_sum():
    inp = linear_input(W)
    wx = W * inp.images[..., 0]  # (2, 4, 4)
    patch_w = W.reshape(2, 2, 2, 2).sum((1, 3)).ravel()  # the map's sums over the four 2x2 patches
    patch_wx = wx.reshape(2, 2, 2, 2, 2).sum((2, 4)).reshape(2, 4)
    drops = np.cumsum(patch_wx[:, np.argsort(-patch_w)], 1)  # f(x) - f(x_k), most relevant patch first
    r = evaluate("region_perturbation", inp, patch_size=2, baseline=0.0, kind="logits")
    np.testing.assert_allclose(r.details["curve"], drops, atol=1e-5)
    np.testing.assert_allclose(r.values, drops.mean(1), atol=1e-5)
    lerf = evaluate("region_perturbation", inp, patch_size=2, baseline=0.0, kind="logits", order="lerf",
                    regions_evaluation=2)
    np.testing.assert_allclose(lerf.details["curve"], np.cumsum(patch_wx[:, np.argsort(patch_w)], 1)[:, :2], atol=1e-5)
    s = evaluate("selectivity", inp, patch_size=2, baseline=0.0, kind="logits")
    left = wx.sum((1, 2))[:, None] - drops
    np.testing.assert_allclose(s.details["curve"], left, atol=1e-5)
    np.testing.assert_allclose(s.values, (left[:, 1:] + left[:, :-1]).sum(1) / 2, atol=1e-4)


def test_correlations_of_gradient_times_input_on_a_linear_model_are_one():
    """For f linear and baseline 0, removing pixels S drops f by sum_S w x: gradient x input predicts
    every drop exactly (correlation 1), its negative gives -1, a map of the wrong pixels less."""
    x = (np.random.default_rng(1).random((2, 4, 4, 1)) + 0.5).astype(np.float32)
    gxi = W * x[..., 0]
    for name, opts in [("faithfulness_correlation", dict(nr_runs=12, subset_size=5)),
                       ("faithfulness_estimate", dict(features_in_step=1))]:
        for sign in (1, -1):
            r = evaluate(name, linear_input(sign * gxi, x), baseline=0.0, kind="logits", **opts)
            np.testing.assert_allclose(r.values, sign, atol=1e-5, err_msg=name)
        other = evaluate(name, linear_input(np.roll(gxi, 1, axis=1), x), baseline=0.0, kind="logits", **opts)
        assert (other.values < 0.9).all(), name
    # faithfulness estimate's groups (features_in_step=3): sums of 3 pixels each, still exact
    r = evaluate("faithfulness_estimate", linear_input(gxi, x), baseline=0.0, kind="logits", features_in_step=3)
    np.testing.assert_allclose(r.values, 1.0, atol=1e-5)


def test_monotonicity_is_one_exactly_when_every_insertion_raises_the_score():
    x = np.ones((1, 4, 4, 1), np.float32)
    maps = np.arange(16, dtype=np.float32).reshape(4, 4)
    pos = lambda images: jnp.stack([(images.sum(-1) * np.abs(W)).sum((1, 2)), jnp.zeros(len(images))], 1)  # noqa: E731
    inp = MetricInput(x, [0], maps, Explainer(pos))
    r = evaluate("monotonicity", inp, baseline=0.0, kind="logits")
    assert r.values[0] == 1.0
    np.testing.assert_allclose(r.details["curve"][0], np.cumsum(np.abs(W).ravel()), atol=1e-5)  # ascending map order
    # W has negative weights: inserting one of them lowers the logit
    assert evaluate("monotonicity", linear_input(maps, x, 1), baseline=0.0, kind="logits").values[0] == 0.0


def test_monotonicity_correlation_of_a_linear_model_ranks_the_squared_weights():
    """With every uniform draw u = 0.5, x = 1 and f linear, noising pixel p alone moves f by w_p (0.5 - 1):
    its variance is w_p^2 / 4 / f(x)^2, so |W| as the map correlates 1 (Spearman), 1 / |W| -1."""
    x = np.ones((1, 4, 4, 1), np.float32)
    half = np.full((16, 3, 1), 0.5)
    r = evaluate("monotonicity_correlation", linear_input(np.abs(W), x, 1), nr_samples=3, kind="logits", uniforms=half)
    np.testing.assert_allclose(r.values, 1.0, atol=1e-9)
    f = float(W.sum())
    np.testing.assert_allclose(r.details["variances"][0], np.sort(W.ravel() ** 2 / 4 / f ** 2, kind="stable"),
                               rtol=1e-5)
    inv = evaluate("monotonicity_correlation", linear_input(1 / np.abs(W), x, 1), nr_samples=3, kind="logits",
                   uniforms=half)
    np.testing.assert_allclose(inv.values, -1.0, atol=1e-9)


def test_infidelity_of_the_gradient_of_a_linear_model_is_zero():
    """f(x) - f(x - I) = sum(W I) exactly: the gradient W scores 0; 2 W scores mean((sum W I)^2), and
    with ``normalize`` (beta = 1/2) 0 again."""
    inp = linear_input(W)
    assert np.abs(evaluate("infidelity", inp).values).max() < 1e-9
    twice = linear_input(2 * W)
    r = evaluate("infidelity", twice, n_perturb_samples=7, noise_std=0.3)
    pert = F.infidelity_noise(twice.key, 2, 7, (4, 4, 1), 0.3)
    np.testing.assert_allclose(r.values, ((pert[..., 0] * W).sum((2, 3)) ** 2).mean(1), rtol=1e-4)
    assert np.abs(evaluate("infidelity", twice, n_perturb_samples=7, noise_std=0.3, normalize=True).values).max() < 1e-8


def test_sufficiency_counts_the_neighbours_of_the_same_class():
    """Maps A, A, B, B, C: identical pairs are each other's only neighbours; the model puts images
    0, 1 in class 0, image 2 in class 0 and image 3 in class 1, image 4 anywhere: [1, 1, 0, 0, 0]."""
    rng = np.random.default_rng(0)
    a, b, c = rng.random((3, 4, 4))
    x = np.zeros((5, 4, 4, 1), np.float32)
    x[3] = -1.0  # sum(W) > 0: class 1 for image 3 only
    inp = MetricInput(x + 1e-3, 0, np.stack([a, a, b, b, c]), Explainer(linear))
    np.testing.assert_array_equal(inp.logits(inp.images).argmax(1), [0, 0, 0, 1, 0])
    np.testing.assert_allclose(evaluate("sufficiency", inp).values, [1, 1, 0, 0, 0])
    x[1] = -1.0
    inp = MetricInput(x + 1e-3, 0, np.stack([a, a, b, b, c]), Explainer(linear))
    np.testing.assert_allclose(evaluate("sufficiency", inp).values, [0, 0, 0, 0, 0])


def test_irof_of_a_linear_model_is_the_area_over_the_relative_logit():
    inp = linear_input(W)
    x = inp.images[..., 0]
    seg = F.grid_segments(4, 4, 2)
    seg_mean = np.array([W[seg == s].mean() for s in range(4)])
    mean = x.reshape(2, -1).mean(1)
    removed = np.stack([((W * (x[i] - mean[i]))[..., None] * (seg[..., None] == np.arange(4))).sum((0, 1))
                        for i in range(2)])  # (2, 4): what removing each segment takes from the logit
    f = (W * x).sum((1, 2))
    curve = (f[:, None] - np.cumsum(removed[:, np.argsort(-seg_mean)], 1)) / f[:, None]
    r = evaluate("irof", inp, segment_size=2, kind="logits")
    np.testing.assert_allclose(r.details["curve"], curve, atol=1e-5)
    np.testing.assert_allclose(r.values, 4 - (curve[:, 1:] + curve[:, :-1]).sum(1) / 2, atol=1e-5)
    given = evaluate("irof", inp, segments=seg, kind="logits")  # the same segments, given
    np.testing.assert_allclose(given.values, r.values)


def test_deletion_and_insertion_on_the_contract_equal_the_wrapper():
    images = (np.random.default_rng(2).random((3, 4, 4, 1))).astype(np.float32)
    maps = np.random.default_rng(3).random((3, 4, 4)).astype(np.float32)
    inp = MetricInput(images, [0, 1, 0], maps, Explainer(linear))
    old = M.deletion_insertion(linear, None, None, images, maps, [0, 1, 0], steps=4)
    d, i = evaluate("deletion", inp, steps=4), evaluate("insertion", inp, steps=4)
    np.testing.assert_allclose(d.values, old["deletion_auc"])
    np.testing.assert_allclose(i.values, old["insertion_auc"])
    # known answer: the curve's ends are the image and the blank image, the middle 4 px per step
    p0 = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731  (softmax of (z, 0))
    z = (images[..., 0] * W).reshape(3, -1)
    order = np.argsort(-maps.reshape(3, -1), 1, kind="stable")
    left = z.sum(1)[:, None] - np.cumsum(np.take_along_axis(z, order, 1), 1)[:, [3, 7, 11, 15]]
    want = np.concatenate([z.sum(1)[:, None], left], 1)
    want = np.where(np.array([0, 1, 0])[:, None] == 0, p0(want), p0(-want))
    np.testing.assert_allclose(d.details["curve"], want, rtol=1e-5)
    assert not d.higher_is_better and i.higher_is_better


def test_deletion_and_insertion_on_one_input_run_the_perturbed_images_once(monkeypatch):
    """evaluate_xai keeps one MetricInput a block for all metrics: the second of deletion and
    insertion takes the curves the first computed (both come from one run); other options, or a
    new input, compute them again, and the values are those of fresh inputs."""
    images = (np.random.default_rng(2).random((3, 4, 4, 1))).astype(np.float32)
    maps = np.random.default_rng(3).random((3, 4, 4)).astype(np.float32)
    runs = []
    real = F._perturbed_scores
    monkeypatch.setattr(F, "_perturbed_scores", lambda *a, **k: runs.append(1) or real(*a, **k))
    inp = MetricInput(images, [0, 1, 0], maps, Explainer(linear))
    d, i = evaluate("deletion", inp, steps=4), evaluate("insertion", inp, steps=4)
    assert len(runs) == 1
    evaluate("insertion", inp, steps=8)
    evaluate("deletion", inp, steps=4, baseline=0.5)
    assert len(runs) == 3
    fresh = lambda: MetricInput(images, [0, 1, 0], maps, Explainer(linear))  # noqa: E731
    np.testing.assert_array_equal(evaluate("deletion", fresh(), steps=4).values, d.values)
    np.testing.assert_array_equal(evaluate("insertion", fresh(), steps=4).values, i.values)
    assert len(runs) == 5


def test_deletion_insertion_and_road_take_the_calibrated_temperature():
    """The registered metrics track softmax(logits / T) as the wrappers do (evaluate_xai passes
    the checkpoint's T to every metric that takes one)."""
    images = (np.random.default_rng(2).random((3, 4, 4, 1))).astype(np.float32)
    maps = np.random.default_rng(3).random((3, 4, 4)).astype(np.float32)
    old = M.deletion_insertion(linear, None, None, images, maps, [0, 1, 0], steps=4, temperature=2.5)
    for name in ("deletion", "insertion"):
        got = evaluate(name, MetricInput(images, [0, 1, 0], maps, Explainer(linear)), steps=4, temperature=2.5)
        np.testing.assert_allclose(got.values, old[name + "_auc"])
        plain = evaluate(name, MetricInput(images, [0, 1, 0], maps, Explainer(linear)), steps=4)
        assert np.abs(got.values - plain.values).max() > 1e-3, name
    inp = lambda: MetricInput(np.repeat(images, 7, 1).repeat(7, 2), [0, 1, 0], np.repeat(maps, 7, 1).repeat(7, 2),  # noqa: E731
                              Explainer(lambda x: linear(x[:, ::7, ::7])), key=jax.random.PRNGKey(1))
    warm = evaluate("road", inp(), fractions=[0.25, 0.5], temperature=2.5)
    want = F.road_curves(inp(), [0.25, 0.5], key=jax.random.PRNGKey(1), temperature=2.5)
    np.testing.assert_allclose(warm.values, want["combined"])
    assert np.abs(warm.values - evaluate("road", inp(), fractions=[0.25, 0.5]).values).max() > 1e-4
    for name in ("deletion", "insertion", "road"):
        with pytest.raises(ValueError, match="temperature: expected a finite number > 0, got 0"):
            evaluate(name, MetricInput(images, [0, 1, 0], maps, Explainer(linear)), temperature=0)


def test_road_on_the_contract_equals_the_wrapper_and_reports_its_curves():
    rng = np.random.default_rng(4)
    images = rng.random((2, 28, 28, 1)).astype(np.float32)
    maps = rng.random((2, 28, 28)).astype(np.float32)
    with np.load(FIXTURES / "reference_maps.npz") as d:
        ref = {k: d[k] for k in d.files if k.startswith("cnn/")}
    params, stats = unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats")
    old = M.road(MNISTCNN(), params, stats, images, maps, [3, 5], fractions=[0.2, 0.6], key=jax.random.PRNGKey(7))
    inp = MetricInput(images, [3, 5], maps, Explainer(MNISTCNN()), params, stats, key=jax.random.PRNGKey(7))
    r = evaluate("road", inp, fractions=[0.2, 0.6])
    np.testing.assert_allclose(r.values, old["combined"], rtol=1e-6)
    np.testing.assert_allclose(r.details["morf_curve"], old["morf_curve"], rtol=1e-6)


def test_bad_options_are_one_line():
    inp = linear_input(W)
    for name, opts, match in [
        ("pixel_flipping", {"baseline": "grey"}, "baseline: expected 'black', 'white', 'mean', a number or an array"),
        ("pixel_flipping", {"kind": "softmax"}, "kind: expected 'probs' or 'logits', got 'softmax'"),
        ("pixel_flipping", {"features_in_step": 0}, "features_in_step: expected an integer >= 1, got 0"),
        ("region_perturbation", {"order": "up"}, "order: expected 'morf', 'lerf' or 'random', got 'up'"),
        ("faithfulness_correlation", {"subset_size": 17}, "subset_size: expected an integer"),
        ("irof", {"segments": np.zeros((3, 3), int)}, r"segments: expected non-negative integer labels of shape \(4, 4\)"),
        ("road", {"fractions": [1.0]}, r"fractions: expected fractions of pixels to remove in \(0, 1\)"),
        ("infidelity", {"noise_std": -1}, "noise_std: expected a finite number >= 0"),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            evaluate(name, inp, **opts)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="maps: expected finite values"):
        evaluate("pixel_flipping", linear_input(np.full((4, 4), np.nan)))


# ----------------------------------------------------------------------------- every metric, two models

SMALL = {"pixel_flipping": dict(features_in_step=64), "faithfulness_estimate": dict(features_in_step=64),
         "monotonicity": dict(features_in_step=64), "faithfulness_correlation": dict(nr_runs=8, subset_size=64),
         "monotonicity_correlation": dict(nr_samples=2, features_in_step=128), "road": dict(fractions=[0.3, 0.7]),
         "deletion": dict(steps=4), "insertion": dict(steps=4), "infidelity": dict(n_perturb_samples=3)}


def test_every_faithfulness_metric_is_registered():
    assert metric_names("faithfulness") == FAMILY


@pytest.mark.parametrize("model_name", ["shipped", "resnet32"])
def test_every_metric_runs_on_the_shipped_model_and_a_32x32_rgb_model(model_name):
    if model_name == "shipped":
        import mnist_checkpoint as ckpt
        params, stats, model, _ = ckpt.load_checkpoint(None)
        with np.load(Path(__file__).parents[1] / "sample_data" / "mnist_test_sample.npz") as d:
            images = (d["images"][:3] / 255.0).astype(np.float32).reshape(3, 28, 28, 1)
    else:
        model = ResNet32()
        variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))
        params, stats = variables["params"], jax.tree_util.tree_map(lambda a: a + 0.1, variables["batch_stats"])
        images = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32)
    from mnist_xai_visualizations import Saliency
    ex = Saliency(model)
    inp = MetricInput(images, explainer=ex, params=params, batch_stats=stats,
                      maps=ex.attribute(params, stats, images))
    for name in FAMILY:
        r = evaluate(name, inp, **SMALL.get(name, {}))
        assert r.values.shape == (3,), name
        assert np.isfinite(r.values).any(), name


def test_the_shared_forward_pads_a_short_last_chunk_and_drops_the_padding():
    """base.MetricInput.logits (an addition for this family): a last chunk of k rows runs padded to the
    next power of two, so only log2(chunk) + 1 shapes ever compile; the padding never shows."""
    x = (np.random.default_rng(5).random((11, 4, 4, 1))).astype(np.float32)
    seen = []

    def spy(images):
        seen.append(images.shape[0])  # runs once per traced shape
        return linear(images)
    inp = MetricInput(x, 0, explainer=Explainer(spy), chunk=8)
    np.testing.assert_allclose(inp.logits(x), np.asarray(linear(x)), rtol=1e-6)  # 8 + 3 -> 8 + 4
    np.testing.assert_allclose(inp.logits(x[:5]), np.asarray(linear(x[:5])), rtol=1e-6)  # 5 -> 8: compiled already
    assert sorted(set(seen)) == [4, 8]

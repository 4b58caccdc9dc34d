"""Faithfulness metrics: known answers on models we can reason about, and the CLI's bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mnist_xai_metrics as M
import mnist_xai_visualizations as X
from mnist_cnn_model import initialize_model

ROOT = Path(__file__).resolve().parents[1]
PIXEL = (14, 14)


def one_pixel_logits(images):
    """Class 0's logit is 10 x the pixel at (14, 14); the other nine are 0."""
    x = images.reshape(images.shape[0], 28, 28)[:, PIXEL[0], PIXEL[1]]
    return jnp.zeros((images.shape[0], 10)).at[:, 0].set(10 * x)


# A plain logits function may declare the digit contract as MNISTCNN does: 28x28x1, pixels in [0, 1].
one_pixel_logits.image_shape, one_pixel_logits.input_range = (28, 28, 1), (0.0, 1.0)


def _images(n, seed=0):
    x = np.random.default_rng(seed).random((n, 28, 28, 1)).astype(np.float32)
    x[:, PIXEL[0], PIXEL[1]] = 1.0
    return x


def test_deletion_auc_minimal_when_the_read_pixel_ranks_first():
    images = _images(8)
    maps = np.zeros((8, 28, 28), np.float32)
    maps[:, PIXEL[0], PIXEL[1]] = 1.0
    steps = 16
    out = M.deletion_insertion(one_pixel_logits, None, None, images, maps, np.zeros(8, np.int32), steps=steps)
    p_full = float(jax.nn.softmax(jnp.array([10.0] + [0.0] * 9))[0])
    # Removing the first 49 pixels (step 1) removes the one that matters: p drops to 1/10.
    np.testing.assert_allclose(out["deletion_curve"][:, 0], p_full, rtol=1e-6)
    np.testing.assert_allclose(out["deletion_curve"][:, 1:], 0.1, rtol=1e-6)
    minimum = (p_full + 0.1) / (2 * steps) + 0.1 * (steps - 1) / steps  # the least any ranking can score
    np.testing.assert_allclose(out["deletion_auc"], minimum, rtol=1e-5)
    # Insertion: the pixel comes in at the first step.
    np.testing.assert_allclose(out["insertion_curve"][:, 1:], p_full, rtol=1e-6)


def test_temperature_tracks_the_calibrated_probability():
    """deletion_insertion(temperature=T) = the curves of logits / T, known at both ends."""
    images, maps = _images(6), M.random_attribution(jax.random.PRNGKey(5), 6)
    targets = np.zeros(6, np.int32)
    out = M.deletion_insertion(one_pixel_logits, None, None, images, maps, targets, steps=8, temperature=4.0)

    def quarter(x):
        return one_pixel_logits(x) / 4.0

    quarter.image_shape, quarter.input_range = one_pixel_logits.image_shape, one_pixel_logits.input_range
    ref = M.deletion_insertion(quarter, None, None, images, maps, targets, steps=8)
    for kind in out:
        np.testing.assert_allclose(out[kind], ref[kind], rtol=1e-6)
    p_full = float(jax.nn.softmax(jnp.array([10.0 / 4] + [0.0] * 9))[0])  # the pixel is 1: logit 10, over T = 4
    np.testing.assert_allclose(out["deletion_curve"][:, 0], p_full, rtol=1e-6)
    np.testing.assert_allclose(out["deletion_curve"][:, -1], 0.1, rtol=1e-6)
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="temperature: expected a finite number"):
            M.deletion_insertion(one_pixel_logits, None, None, images, maps, targets, steps=8, temperature=bad)


def test_random_attribution_sits_at_the_random_expectation():
    n, steps = 400, 16
    images = _images(n, seed=1)
    maps = M.random_attribution(jax.random.PRNGKey(0), n)
    out = M.deletion_insertion(one_pixel_logits, None, None, images, maps, np.zeros(n, np.int32), steps=steps)
    # The pixel is removed at a uniformly random step k in 1..S: expected AUC is the mean over k.
    p = float(jax.nn.softmax(jnp.array([10.0] + [0.0] * 9))[0])
    counts = np.round(np.linspace(0, 784, steps + 1)).astype(int)
    probs = [(counts[k] - counts[k - 1]) / 784 for k in range(1, steps + 1)]
    expected = 0.0
    for k, pk in enumerate(probs, start=1):
        curve = np.array([p] * k + [0.1] * (steps + 1 - k))
        expected += pk * (curve[1:] + curve[:-1]).sum() / (2 * steps)
    mean, lo, hi = M.bootstrap_ci(out["deletion_auc"])
    assert lo <= expected <= hi
    assert abs(mean - expected) < 0.05


def test_curves_with_given_probabilities_and_bad_arguments():
    images, maps = _images(5), M.random_attribution(jax.random.PRNGKey(3), 5)
    targets = np.zeros(5, np.int32)
    probs = np.asarray(jax.nn.softmax(one_pixel_logits(images)))
    out = M.deletion_insertion(one_pixel_logits, None, None, images, maps, targets, steps=6, chunk=2)
    done = []
    given = M.deletion_insertion(one_pixel_logits, None, None, images, maps, targets, steps=6, chunk=2, probs=probs,
                                 progress=done.append)
    assert sum(done) == 5  # progress counts the images, chunk by chunk
    for kind in out:
        np.testing.assert_allclose(given[kind], out[kind], rtol=1e-6)
    assert out["deletion_curve"].shape == (5, 7)
    np.testing.assert_allclose(out["insertion_curve"][:, 0], 0.1, rtol=1e-6)  # a black image: uniform
    for kwargs, match in [
        (dict(maps=maps[:4]), r"maps: expected one 28x28 map per image, \(5, 28, 28\), got shape \(4, 28, 28\)"),
        (dict(maps=np.full_like(maps, np.nan)), "maps: expected finite values"),
        (dict(targets=targets[:4]), r"one class per image \(5\), got shape \(4,\)"),
        (dict(targets=np.full(5, 10)), "classes in 0-9, got 10"),
        (dict(targets=None), "targets: expected one class"),
        (dict(images=images * 255), r"float pixels in \[0, 1\]"),
        (dict(steps=1), "steps: expected an integer >= 2, got 1"),
        (dict(chunk=0), "chunk: expected an integer >= 1, got 0"),
        (dict(chunk=2.5), "chunk: expected an integer >= 1, got 2.5"),
        (dict(probs=probs[:1]), r"probs: expected one row of class probabilities per image \(5\)"),
    ]:
        args = {"images": images, "maps": maps, "targets": targets, **kwargs}
        with pytest.raises(ValueError, match=match):
            M.deletion_insertion(one_pixel_logits, None, None, args.pop("images"), args.pop("maps"), args.pop("targets"),
                                 **args)
    u8 = (np.asarray(images) * 255).round().astype(np.uint8)  # read like the explainers read it
    np.testing.assert_allclose(M.deletion_insertion(one_pixel_logits, None, None, u8, maps, targets, steps=6, chunk=2)
                               ["deletion_auc"],
                               M.deletion_insertion(one_pixel_logits, None, None, u8 / np.float32(255), maps, targets,
                                                    steps=6, chunk=2)["deletion_auc"])


def test_metric_helpers_refuse_mismatched_shapes():
    images, maps = _images(2), M.random_attribution(jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match=r"maps: expected one 28x28 map per image, \(2, 28, 28\), got shape \(1, 28, 28\)"):
        M.ink_share(images, maps[:1])  # one map used to be broadcast over both images
    with pytest.raises(ValueError, match="spearman_rows: expected two arrays of the same shape"):
        M.spearman_rows(maps, maps[:1])
    with pytest.raises(ValueError, match="n: expected an integer >= 1, got -1"):
        M.random_attribution(jax.random.PRNGKey(0), -1)
    with pytest.raises(ValueError, match=r"expected \(N, 28, 28, 1\)"):
        M.sobel_attribution(np.zeros((2, 30, 30), np.float32))
    with pytest.raises(ValueError, match="cmap: expected a matplotlib colormap name"):
        X.overlay_heatmap(np.zeros((28, 28)), np.zeros((28, 28)), cmap="nope")


def test_randomization_test_of_a_model_against_itself_is_one():
    params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
    images = _images(4)
    result = M.randomization_test(X.Saliency(model), params, batch_stats, params, images, None)
    assert [name for name, _ in result] == ["dense2", "dense1", "conv6", "conv5", "conv4", "conv3", "conv2", "conv1"]
    np.testing.assert_allclose([rho for _, rho in result], 1.0, rtol=1e-9)


def test_randomization_changes_maps_for_a_different_model():
    params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
    fresh, _, _ = initialize_model(jax.random.PRNGKey(1))
    result = M.randomization_test(X.Saliency(model), params, batch_stats, fresh, _images(4), None)
    assert result[-1][1] < 0.5
    # The trained model's maps, when already at hand, are not recomputed: same answer.
    maps = X.Saliency(model).attribute(params, batch_stats, _images(4))
    given = M.randomization_test(X.Saliency(model), params, batch_stats, fresh, _images(4), None, maps=maps)
    np.testing.assert_allclose([rho for _, rho in given], [rho for _, rho in result], rtol=1e-9)
    # Details: per-image correlations whose means are the results, and each stage's maps.
    again, details = M.randomization_test(X.Saliency(model), params, batch_stats, fresh, _images(4), None,
                                          return_details=True)
    assert again == result
    assert details["rho"].shape == (8, 4) and details["maps"].shape == (8, 4, 28, 28)
    np.testing.assert_allclose(np.nanmean(details["rho"], 1), [rho for _, rho in result], rtol=1e-12)
    last = X.Saliency(model).attribute(M.randomized_params(params, fresh, M.cascading_layers(params)),
                                       batch_stats, _images(4))
    np.testing.assert_allclose(details["maps"][-1], last, rtol=1e-6, atol=1e-9)


def test_ink_share_of_the_ink_itself_is_one():
    images = _images(3)
    ink = (images[..., 0] > M.INK_THRESHOLD).astype(np.float32)
    share, ink_fraction = M.ink_share(images, ink)
    np.testing.assert_allclose(share, 1.0)
    np.testing.assert_allclose(ink_fraction, ink.mean((1, 2)))
    share_off, _ = M.ink_share(images, 1 - ink)
    np.testing.assert_allclose(share_off, 0.0)


def test_spearman_known_values():
    a = np.arange(10.0)[None]
    np.testing.assert_allclose(M.spearman_rows(a, a ** 3), 1.0)
    np.testing.assert_allclose(M.spearman_rows(a, -a), -1.0)
    assert np.isnan(M.spearman_rows(a, np.zeros_like(a)))[0]


def test_sobel_of_flat_image_is_zero_inside():
    edges = M.sobel_attribution(np.full((1, 28, 28), 0.7, np.float32))
    np.testing.assert_allclose(edges[0, 1:-1, 1:-1], 0.0, atol=1e-6)


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DATA_DIR"}
    return subprocess.run([sys.executable, str(ROOT / "evaluate_xai.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("args, message", [
    (["--methods", "gradcam,nosuch"], "--methods: expected names from gradcam"),
    (["--num-images", "201"], "--num-images 201 is more than the 200 test digits available"),
    (["--num-images", "0"], "--num-images: expected an integer >= 1, got 0"),
    (["--steps", "1"], "--steps: expected an integer >= 2, got 1"),
    (["--temperature", "0"], "--temperature: expected 'checkpoint' or a number > 0, got 0"),
    (["--temperature", "warm"], "--temperature: expected 'checkpoint' or a number > 0, got warm"),
])
def test_cli_bad_input_exit_2_and_keeps_previous_results(args, message, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text('{"previous": true}')
    proc = _run("--out", str(out), *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert json.loads((out / "results.json").read_text()) == {"previous": True}


def test_cli_refuses_an_out_folder_of_other_files_before_working(tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.txt").write_text("keep me")
    proc = _run("--out", str(out), "--num-images", "2", "--methods", "gradcam")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "found other files in it (chapter1.txt)" in proc.stderr.strip().splitlines()[-1]
    assert (out / "chapter1.txt").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 1
    (tmp_path / "afile").write_text("keep me too")
    proc = _run("--out", str(tmp_path / "afile"), "--num-images", "2", "--methods", "gradcam")
    assert proc.returncode == 2 and "found a file" in proc.stderr
    assert (tmp_path / "afile").read_text() == "keep me too"


def test_cli_checkpoint_that_does_not_fit(tmp_path):
    import shutil
    import mnist_checkpoint as ckpt
    src = ckpt.resolve_checkpoint_dir(ckpt.PRETRAINED_DIR)
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    meta = json.loads((bad / "meta" / "metadata").read_text())
    meta["model"]["widths"] = [16, 64, 128]
    (bad / "meta" / "metadata").write_text(json.dumps(meta))
    proc = _run("--checkpoint", str(bad), "--out", str(tmp_path / "eval"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "do not fit the model" in proc.stderr
    assert not (tmp_path / "eval").exists()


def test_cli_small_run_writes_every_output(tmp_path):
    """The default metrics (the families' registered names) on two methods: every metric is a
    column with a value or a reason for every map, the figures are written, and the metrics
    that take a temperature get the checkpoint's. Runs once the metric families are merged."""
    import evaluate_xai
    import mnist_xai.metrics as metrics
    missing = [m for m in evaluate_xai.DEFAULT_METRICS if m not in metrics.METRICS]
    if missing:
        pytest.skip(f"metric families not merged yet: {', '.join(missing)} not registered")
    out = tmp_path / "eval"
    proc = _run("--methods", "gradcam,integrated_gradients", "--num-images", "16",
                "--randomization-images", "4", "--steps", "8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"random (baseline)", "sobel edges (baseline)", "gradcam",
                                      "integrated_gradients"}
    assert list(report["metrics"]) == list(evaluate_xai.DEFAULT_METRICS)
    for name, row in report["results"].items():
        for metric in evaluate_xai.DEFAULT_METRICS:
            cell = row[metric]
            assert ("skipped" in cell and cell["skipped"]) or (cell["mean"] is not None and cell["n"] > 0), (name, metric)
    for metric in ("deletion", "insertion", "road", "ink_share", "frame_share"):  # maps only: every map has a value
        assert all("mean" in row[metric] for row in report["results"].values()), metric
    assert "mean" in report["results"]["integrated_gradients"]["completeness"]
    assert report["rankings"]["deletion"] and report["verdict"][0].startswith("Most faithful: ")
    md = (out / "results.md").read_text()
    assert "| gradcam |" in md and "![method x metric](chart.png)" in md
    assert (out / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert set(np.load(out / "values.npz").files) >= {"gradcam/deletion", "integrated_gradients/insertion"}
    import mnist_checkpoint as ckpt
    *_, meta = ckpt.load_checkpoint(ckpt.default_checkpoint())
    took = {metric for metric, opts in report["options"].items() if "temperature" in opts}
    assert {"deletion", "insertion", "road"} <= took, took
    for metric in took:
        assert report["options"][metric]["temperature"] == pytest.approx(meta["temperature"])
    assert not out.with_name("eval.tmp").exists()
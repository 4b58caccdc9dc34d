"""evaluate_xai driven by the metric registry, tested with toy metrics of known answers
(tests/toy_metrics.py), so the tests do not depend on the metric families' code:

- the contract's ``applies`` / ``NotApplicable`` (mnist_xai/metrics/base.py);
- the values are the metrics' own (checked against direct computations), whatever the block
  size; skipped cells carry their reason; per-image curves are merged and averaged;
- the table, the ranking, the rank agreement and the verdict on a report of known values;
- the command line's one-line errors, and a two-process jax.distributed run on 127.0.0.1 whose
  merged outputs equal the single-process result;
- a 32x32 RGB model.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import evaluate_xai as E
from mnist_xai.metrics import METRICS, MetricInput, evaluate, register_metric
from mnist_xai.metrics import base as B

ROOT = Path(__file__).resolve().parents[1]
TOY_FILE = ROOT / "tests" / "toy_metrics.py"
TOY = ("toy_target_prob", "toy_map_mean", "toy_reexplain")
N, BLOCK, EXPLAINER_IMAGES = 12, 4, 8


@pytest.fixture(scope="module")
def toy():
    """The toy metrics registered for this module's tests, and removed from METRICS afterwards."""
    import importlib
    sys.modules.pop("tests.toy_metrics", None)
    sys.modules.pop("toy_metrics", None)
    saved = dict(B.METRICS)
    sys.path.insert(0, str(TOY_FILE.parent))
    try:
        importlib.import_module("toy_metrics")
        yield TOY
    finally:
        sys.path.remove(str(TOY_FILE.parent))
        sys.modules.pop("toy_metrics", None)
        B.METRICS.clear()
        B.METRICS.update(saved)


@pytest.fixture(scope="module")
def shipped():
    import mnist_checkpoint as ckpt
    from mnist_data import load_sample_digits
    params, batch_stats, model, _ = ckpt.load_checkpoint(ckpt.default_checkpoint())
    digits = load_sample_digits().take(N)
    return params, batch_stats, model, digits.images.astype(np.float32) / 255.0, digits.labels


@pytest.fixture(scope="module")
def run(toy, shipped):
    params, batch_stats, model, images, labels = shipped
    return E.evaluate_methods(params, batch_stats, model, images, labels, ["saliency", "gradcam"], list(TOY),
                              seed=0, explainer_images=EXPLAINER_IMAGES, block=BLOCK, progress=lambda *a: None)


# ----------------------------------------------------------------------------- the contract's addition


def test_a_metric_that_does_not_apply_says_why_before_running(monkeypatch):
    monkeypatch.setattr(B, "METRICS", {})
    calls = []

    @register_metric("needs_path", title="P", family="axiomatic", higher_is_better=False, needs=("maps",),
                     applies=lambda e: None if getattr(e, "path", False) else "needs a path method")
    def needs_path(inp):
        calls.append(1)
        return np.zeros(len(inp))

    class Path_:
        path = True

    inp = MetricInput(np.zeros((2, 3, 3, 1)), targets=0, maps=np.ones((2, 3, 3)), explainer=None)
    assert B.not_applicable("needs_path", object()) == "needs a path method"
    assert B.not_applicable("needs_path", Path_()) is None
    with pytest.raises(B.NotApplicable, match=r"^needs_path: needs a path method$"):
        evaluate("needs_path", inp)
    assert calls == []  # refused before the metric ran
    inp.explainer = Path_()
    assert evaluate("needs_path", inp).values.tolist() == [0, 0] and calls == [1]
    assert issubclass(B.NotApplicable, ValueError)
    with pytest.raises(ValueError, match=r"^applies: expected a function explainer -> None or a reason, got int$"):
        register_metric("x", title="X", family="axiomatic", higher_is_better=True, applies=3)
    with pytest.raises(ValueError, match=r"^metric: expected one of needs_path, got 'nope'$"):
        B.not_applicable("nope", None)


# ----------------------------------------------------------------------------- the values


def test_values_are_the_metrics_own_on_every_map(run, shipped):
    import mnist_xai_metrics as M
    import mnist_xai_visualizations as X
    params, batch_stats, model, images, _ = shipped
    report, results = run
    logits = np.asarray(model.apply({"params": params, "batch_stats": batch_stats}, images))
    targets = logits.argmax(1)
    probs = np.asarray(jax.nn.softmax(logits))[np.arange(N), targets]
    assert set(results) == {*E.BASELINES, "saliency", "gradcam"}
    for name in results:  # the probability does not depend on the map: the same for every row
        np.testing.assert_allclose(results[name]["toy_target_prob"].values, probs, rtol=1e-5)
    sal = X.make_explainer("saliency", model).attribute(params, batch_stats, images, targets)
    np.testing.assert_allclose(results["saliency"]["toy_map_mean"].values, sal.reshape(N, -1).mean(1), rtol=1e-5)
    np.testing.assert_allclose(results["sobel edges (baseline)"]["toy_map_mean"].values,
                               M.sobel_attribution(images).reshape(N, -1).mean(1), rtol=1e-5)
    rnd = results["random (baseline)"]["toy_map_mean"].values  # uniform maps: mean 1/2, sd 1/sqrt(12 * 784)
    assert np.all(np.abs(rnd - 0.5) < 5 / np.sqrt(12 * 784)) and len(np.unique(rnd)) == N
    # Re-explaining metrics: the first EXPLAINER_IMAGES images only, where they apply, with the reason elsewhere.
    gap = results["saliency"]["toy_reexplain"].values
    assert gap.shape == (EXPLAINER_IMAGES,) and np.all(gap < 1e-5)
    assert results["gradcam"]["toy_reexplain"] == "toy_reexplain needs a gradient method"
    assert results["random (baseline)"]["toy_reexplain"] == "a fixed baseline map: no explainer to re-run"
    assert report["results"]["gradcam"]["toy_reexplain"] == {"skipped": "toy_reexplain needs a gradient method"}
    assert report["model_accuracy"] == 1.0 and report["num_images"] == N
    s = report["results"]["saliency"]["toy_map_mean"]
    assert s["n"] == N and s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    # Per-image curves are merged over the blocks and averaged; a constant detail is kept once.
    assert report["curves"]["saliency"]["toy_target_prob/curve"] == pytest.approx([probs.mean(), probs.mean() / 2],
                                                                                  rel=1e-5)
    np.testing.assert_array_equal(results["saliency"]["toy_target_prob"].details["fractions"], [0.0, 1.0])
    assert results["saliency"]["toy_target_prob"].details["curve"].shape == (N, 2)


def test_the_blocks_do_not_change_a_deterministic_metric(run, shipped):
    params, batch_stats, model, images, labels = shipped
    _, whole = E.evaluate_methods(params, batch_stats, model, images, labels, ["saliency"], ["toy_map_mean"],
                                  block=N, baselines=False, progress=lambda *a: None)
    np.testing.assert_allclose(whole["saliency"]["toy_map_mean"].values, run[1]["saliency"]["toy_map_mean"].values,
                               rtol=1e-5)


def test_blocks_are_shared_out_whole_and_contiguously():
    assert E.blocks_of(10, 4) == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert E.blocks_of(10, 4, 0, 2) == [(0, 0, 4), (1, 4, 8)] and E.blocks_of(10, 4, 1, 2) == [(2, 8, 10)]
    assert E.blocks_of(3, 4, 1, 2) == []  # more processes than blocks: nothing to do


def test_merged_details_concatenate_per_image_arrays_and_keep_constants():
    parts = [(2, {"c": np.ones((2, 3)), "rho": np.zeros((5, 2)), "x": np.arange(3), "layers": ["a", "b"],
                  "sq": np.zeros((2, 2))}),
             (1, {"c": 2 * np.ones((1, 3)), "rho": np.ones((5, 1)), "x": np.arange(3), "layers": ["a", "b"],
                  "sq": np.ones((2, 1))})]
    d, axes = E._merge_details(parts)
    np.testing.assert_array_equal(d["c"], [[1] * 3, [1] * 3, [2] * 3])
    assert d["rho"].shape == (5, 3) and d["rho"][:, 2].tolist() == [1] * 5
    np.testing.assert_array_equal(d["x"], np.arange(3))
    assert d["layers"] == ["a", "b"]
    # (stages, N) with N = stages in the first block: the second block tells the image axis.
    assert d["sq"].shape == (2, 3) and axes == {"c": 0, "rho": 1, "x": None, "layers": None, "sq": 1}
    d, axes = E._merge_details([(2, {"sq": np.zeros((3, 2))}), (3, {"sq": np.ones((3, 3))})])  # or the first
    assert d["sq"].shape == (3, 5) and axes == {"sq": 1}
    d, axes = E._merge_details(parts[:1])  # one square block: unknown, kept as it is, drawn as no curve
    assert axes["sq"] is None and d["sq"].shape == (2, 2)


def test_a_32x32_rgb_model(toy):
    import flax.linen as nn

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3))(x))
            return nn.Dense(10)(x.mean((1, 2)))

    model = Tiny()
    images = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (5, 32, 32, 3)))
    params = model.init(jax.random.PRNGKey(0), images[:1])["params"]
    report, results = E.evaluate_methods(params, {}, model, images, np.zeros(5, int), ["saliency"],
                                         ["toy_map_mean", "toy_target_prob"], block=5, explainer_images=5,
                                         progress=lambda *a: None)
    import mnist_xai_visualizations as X
    sal = X.make_explainer("saliency", model).attribute(params, {}, images)
    np.testing.assert_allclose(results["saliency"]["toy_map_mean"].values, sal.reshape(5, -1).mean(1), rtol=1e-5)
    assert results["sobel edges (baseline)"]["toy_map_mean"].values.shape == (5,)
    assert set(report["results"]) == {*E.BASELINES, "saliency"}


# ----------------------------------------------------------------------------- the report


def _report():
    """Four methods and three metrics of known order: A (↑) and B (↓) rank m1 > m2 > m3 > m4,
    C (↑) the reverse; D is skipped for m4."""
    def cell(mean):
        return {"mean": mean, "ci95": [mean - 0.05, mean + 0.05], "n": 10}
    a, b, c = [0.9, 0.7, 0.52, 0.3], [0.1, 0.3, 0.5, 0.7], [0.1, 0.3, 0.5, 0.7]
    results = {E.RANDOM: {"a": cell(0.5), "b": cell(0.5), "c": cell(0.5), "d": {"skipped": "fixed map"}}}
    for i in range(4):
        results[f"m{i + 1}"] = {"a": cell(a[i]), "b": cell(b[i]), "c": cell(c[i]),
                                "d": {"skipped": "needs a path method"} if i == 3 else cell(float(i))}
    metrics = {"a": ("A", "faithfulness", True), "b": ("B", "faithfulness", False), "c": ("C", "robustness", True),
               "d": ("D", "axiomatic", False)}
    report = {"num_images": 10, "results": results,
              "metrics": {k: {"title": t, "family": f, "higher_is_better": h} for k, (t, f, h) in metrics.items()}}
    report["rankings"] = E.rankings(report)
    report["rank_agreement"] = E.rank_agreement(report["rankings"])
    report["verdict"] = E.verdict(report)
    return report


def test_rankings_follow_each_metrics_direction_and_leave_baselines_out():
    r = _report()
    assert r["rankings"] == {"a": ["m1", "m2", "m3", "m4"], "b": ["m1", "m2", "m3", "m4"],
                             "c": ["m4", "m3", "m2", "m1"], "d": ["m1", "m2", "m3"]}
    assert r["rank_agreement"]["a|b"] == pytest.approx(1.0) and r["rank_agreement"]["a|c"] == pytest.approx(-1.0)
    assert r["rank_agreement"]["a|d"] == pytest.approx(1.0)  # over the three methods both rank
    assert r["verdict"][0] == "Most faithful: m1 by A, B."
    assert r["verdict"][1] == "Best by each measure: m1 (A, B, D); m4 (C)."
    assert r["verdict"][2].startswith("The measures disagree (Kendall τ of the method rankings < 0.5): "
                                      "A and C τ = -1.00; B and C τ = -1.00; C and D τ = -1.00.")


def test_the_table_is_generated_from_the_results():
    r = _report()
    table = E.format_table(r)
    lines = table.splitlines()
    assert lines[0] == "| method | A ↑ (95% CI) | B ↓ (95% CI) | C ↑ (95% CI) | D ↓ (95% CI) |"
    assert lines[2] == "| random (baseline) | 0.500 (0.450–0.550) | 0.500 (0.450–0.550) | 0.500 (0.450–0.550) | n/a [1] |"
    # m1: best by A and B (bold), beats random on A (0.85 > 0.55) and B (0.15 < 0.45), not on C; best by D.
    assert lines[3] == ("| m1 | **0.900 (0.850–0.950)**° | **0.100 (0.050–0.150)**° | 0.100 (0.050–0.150) | "
                        "**0.000 (-0.050–0.050)** |")
    assert lines[5].startswith("| m3 | 0.520 (0.470–0.570) |")  # overlapping random's interval: no °
    assert lines[6].endswith("| n/a [2] |")
    assert "[1] fixed map" in table and "[2] needs a path method" in table
    assert all(line.count("|") == 6 for line in lines[:7])
    ranking = E.format_ranking(r).splitlines()
    assert ranking[0] == "| method | A | B | C | D |" and ranking[-1] == "| m4 | 4 | 4 | 1 | — |"


def test_the_chart_and_the_markdown_are_written(tmp_path):
    r = _report()
    r.update(date="2026-12-03", machine="test", explainer_images=10)
    E.write_outputs(r, {"m1/a": np.ones(10)}, tmp_path / "out", "python evaluate_xai.py")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["chart.png", "results.json", "results.md", "values.npz"]
    from matplotlib.image import imread
    img = imread(out / "chart.png")
    assert img.shape[1] > 1000 and img.std() > 0.05  # five panels (four metrics and the agreement), drawn
    md = (out / "results.md").read_text()
    assert "Most faithful: m1 by A, B." in md and "![method x metric](chart.png)" in md and "| m4 | 4 | 4 | 1 | — |" in md
    assert json.loads((out / "results.json").read_text())["rankings"]["c"][0] == "m4"
    assert np.load(out / "values.npz")["m1/a"].tolist() == [1.0] * 10


# ----------------------------------------------------------------------------- the command line


def _cli(*args, env=None):
    env = {**{k: v for k, v in os.environ.items() if k != "MNIST_DATA_DIR"}, **(env or {})}
    return subprocess.Popen([sys.executable, str(ROOT / "evaluate_xai.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _main(capsys, *args) -> tuple[int, str, str]:
    """evaluate_xai's command line in this process (the toy metrics registered by the fixture):
    its exit code as ``cli.run`` gives it (2 for a user's error), stdout and stderr."""
    import cli
    try:
        code = cli.run(E.main, list(args))
    except SystemExit as e:  # argparse's errors (cli.OneLineErrors)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, message", [
    (["--metrics", "toy_map_mean,nosuch"], "--metrics: expected names from "),
    (["--metrics", "toy_map_mean", "--metric-option", "toy_map_mean.scale=2"],
     "--metric-option toy_map_mean.scale=2: toy_map_mean takes no options, got 'scale'"),
    (["--metrics", "toy_target_prob", "--metric-option", "scale=2"], "--metric-option: expected NAME.OPTION=VALUE"),
    (["--metrics", "toy_target_prob", "--metric-option", "toy_map_mean.x=2"],
     "--metric-option toy_map_mean.x=2: expected a metric being run (toy_target_prob), got 'toy_map_mean'"),
    (["--num-processes", "2", "--process-id", "2", "--coordinator", "127.0.0.1:1"],
     "--process-id: expected an integer in [0, 2) with --num-processes 2, got 2"),
    (["--num-processes", "2", "--process-id", "0"], "--coordinator: expected HOST:PORT"),
    (["--import", "no_such_module_xyz"], "--import: expected an importable module or a .py file"),
    (["--import", "nowhere.py"], "--import: expected a module name or a .py file, found no file nowhere.py"),
])
def test_command_line_errors_are_one_line_and_exit_2(toy, capsys, args, message, tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    code, _, err = _main(capsys, "--out", str(tmp_path / "o"), "--num-images", "2", *args)
    assert code == 2 and "Traceback" not in err, err
    assert message in err.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


def test_list_metrics_and_the_defaults_not_registered_yet(toy, capsys, tmp_path):
    code, out, err = _main(capsys, "--list-metrics")
    assert code == 0, err
    assert "  toy_map_mean" in out and "↓  needs maps" in out and out.index("Faithfulness:") < out.index("Complexity:")
    missing = [m for m in E.DEFAULT_METRICS if m not in METRICS]
    if missing:
        assert f"not registered yet (defaults): {', '.join(missing)}" in out
        names, left = E.parse_metric_list(",".join(E.DEFAULT_METRICS))
        assert left == missing and len(names) == len(E.DEFAULT_METRICS) - len(missing)
        code, _, err = _main(capsys, "--metrics", ",".join(missing), "--num-images", "2", "--out", str(tmp_path / "o"))
        assert code == 2 and f"note: metrics not registered yet, left out: {', '.join(missing)}" in err
        assert err.strip().splitlines()[-1].startswith("error: --metrics: none of ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_single_process_result(toy, shipped, tmp_path):
    """Two local processes (jax.distributed on 127.0.0.1, CPU): process 0 scores blocks 0-1,
    process 1 block 2; process 0 writes every output, equal to this process's single run (the
    same blocks, keys and bootstrap; 1e-5: the two runs split a chunk over different devices)."""
    common = ["--import", str(TOY_FILE), "--metrics", ",".join(TOY), "--methods", "saliency",
              "--num-images", str(N), "--block", str(BLOCK), "--randomization-images", str(EXPLAINER_IMAGES)]
    coord = f"127.0.0.1:{_free_port()}"
    out = tmp_path / "eval"
    procs = [_cli(*common, "--out", str(out) if i == 0 else str(tmp_path / f"unused{i}"), "--num-processes", "2",
                  "--process-id", str(i), "--coordinator", coord) for i in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    assert not (tmp_path / "unused1").exists()  # only process 0 writes
    assert sorted(x.name for x in out.iterdir()) == ["chart.png", "curves.png", "results.json", "results.md",
                                                     "values.npz"]
    params, batch_stats, model, images, labels = shipped
    report, results = E.evaluate_methods(params, batch_stats, model, images, labels, ["saliency"], list(TOY),
                                         explainer_images=EXPLAINER_IMAGES, block=BLOCK, progress=lambda *a: None)
    merged = json.loads((out / "results.json").read_text())
    assert merged["processes"] == 2 and merged["num_images"] == N and merged["rankings"] == report["rankings"]
    for name, row in report["results"].items():
        for metric, cell in row.items():
            if "skipped" in cell:
                assert merged["results"][name][metric] == cell
            else:
                assert merged["results"][name][metric]["n"] == cell["n"]
                assert merged["results"][name][metric]["mean"] == pytest.approx(cell["mean"], rel=1e-5, abs=1e-7)
                assert merged["results"][name][metric]["ci95"] == pytest.approx(cell["ci95"], rel=1e-5, abs=1e-7)
    values = np.load(out / "values.npz")
    expected = E.values_of(results)
    assert sorted(values.files) == sorted(expected)
    for k, v in expected.items():
        np.testing.assert_allclose(values[k], v, rtol=1e-5, atol=1e-7)
    md = (out / "results.md").read_text()
    assert "| saliency |" in md and "n/a [1]" in md and "a fixed baseline map: no explainer to re-run" in md

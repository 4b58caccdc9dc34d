"""Both demos end to end on the shipped digits and checkpoint, the notebook, and what every
script's --help says."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_DATA_DIR", "TFDS_DATA_DIR")}  # the shipped digits
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**env, "TFDS_DATA_DIR": str(Path(cwd) / "no-tfds-here")})


def _png(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return mpimg.imread(path)


def test_quick_demo_writes_the_figure(tmp_path):
    out = tmp_path / "quick.png"
    (tmp_path / ".quick.123-0a1b2c3d.tmp.png").write_bytes(b"left by a killed run")
    (tmp_path / "checkpoints" / "ckpt" / "4690").mkdir(parents=True)  # a training run here: not explained unasked
    proc = _run(str(ROOT / "simple_mnist_xai_demo.py"), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "quick.png"]
    assert proc.stdout.splitlines()[0] == "checkpoint: pretrained/ (shipped), mnist, test accuracy 99.66%"
    img = _png(out)
    assert img.shape[:2] == (684, 1395)  # 15.5 x 7.6 inches at 90 dpi
    assert img[..., :3].var() > 0.01
    lines = [l for l in proc.stdout.splitlines() if l.startswith("digit ")]
    assert [int(re.match(r"digit (\d)", l).group(1)) for l in lines] == list(range(10))
    assert sum("<- wrong" in l for l in lines) == 0  # the shipped model gets these ten right


def test_quick_demo_fills_the_compilation_cache_and_reuses_it(tmp_path):
    """A second run loads its compiled programs from disk and prints the same predictions."""
    cache = tmp_path / "jax_cache"
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_DATA_DIR", "JAX_COMPILATION_CACHE_DIR")}
    runs = []
    for i in range(2):
        proc = subprocess.run([sys.executable, str(ROOT / "simple_mnist_xai_demo.py"), "--out", str(tmp_path / f"{i}.png")],
                              cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**env, "MNIST_XAI_COMPILE_CACHE": str(cache)})
        assert proc.returncode == 0, proc.stderr
        runs.append([l for l in proc.stdout.splitlines() if l.startswith("digit ")])
        if i == 0:
            first = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
            assert any(name.startswith("jit__maps") for name in first), sorted(first)  # GradCAM, saliency
    assert runs[0] == runs[1]
    # A miss would compile and write the entry again: none of the first run's was rewritten.
    # (A tiny program may be added: JAX stores those that took over 0.1 s to compile, and on
    # a busy machine one that was quicker the first time can cross that line.)
    second = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert {name: second.get(name) for name in first} == first


@pytest.mark.parametrize("setting, expected", [("off", "None"), ("{tmp}/c", "{tmp}/c"), ("", "{home}/.cache/mnist_xai/jax")])
def test_compilation_cache_setting(setting, expected, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MNIST_XAI_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(tmp_path), MNIST_XAI_COMPILE_CACHE=setting.format(tmp=tmp_path))
    proc = subprocess.run([sys.executable, "-c", "import cpu_devices; print(cpu_devices.use_compilation_cache())"],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.stdout.strip() == expected.format(tmp=tmp_path, home=tmp_path), proc.stderr


def test_quick_demo_missing_checkpoint_exit_2_one_line(tmp_path):
    proc = _run(str(ROOT / "simple_mnist_xai_demo.py"), "--checkpoint", str(tmp_path / "nope"),
                "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "nope") in lines[0] and "python train_mnist.py" in lines[0]
    assert not (tmp_path / "x.png").exists()


def test_quick_demo_unreadable_checkpoint_exit_2(tmp_path):
    bad = tmp_path / "ckpt" / "5"
    (bad / "meta").mkdir(parents=True)
    (bad / "state").mkdir()
    (bad / "meta" / "metadata").write_text("{not json")
    proc = _run(str(ROOT / "simple_mnist_xai_demo.py"), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot read checkpoint" in proc.stderr


def test_full_demo_on_shipped_digits(tmp_path):
    out = tmp_path / "demo"
    proc = _run(str(ROOT / "demo_mnist_xai.py"), "--out", str(out), "--no-progress", "--checkpoint",
                str(ROOT / "pretrained"))
    assert proc.returncode == 0, proc.stderr
    import demo_mnist_xai
    report = (out / "report.md").read_text()
    # (height, width) in pixels at 90 dpi; the shipped model gets all 200 digits right, so the
    # two figures of mistakes say so in a small panel (they are drawn in the test below).
    sizes = {"gallery.png": (1647, 810),  # 10 digits x 5 columns of 1.8-inch cells
             "class_average_maps.png": (468, 1350), "confusion_matrix.png": (486, 558),
             "contrastive.png": (135, 360), "misclassified.png": (193, 1350)}
    assert set(sizes) == set(demo_mnist_xai.FIGURES)
    for name in demo_mnist_xai.FIGURES:
        img = _png(out / name)
        assert img.shape[:2] == sizes[name], name
        assert img[..., :3].var() > 1e-3, f"{name} looks blank"
        assert f"({name})" in report, f"report does not link {name}"
    assert "Accuracy: **" in report and "200 digits" in report and "guessed to be confused" in report
    assert "- Checkpoint: pretrained/ (shipped), mnist, test accuracy 99.66% (epoch 15)" in report
    assert "per predicted class" in report and "Never predicted" not in report
    # The last line names every file written, and those are all the folder holds.
    assert proc.stdout.strip().splitlines()[-1] == (
        "wrote gallery.png, class_average_maps.png, confusion_matrix.png, contrastive.png, misclassified.png, "
        f"report.md and summary.json into {out}")
    assert sorted(p.name for p in out.iterdir()) == sorted(demo_mnist_xai.OUTPUT_FILES)
    assert json.loads((out / "summary.json").read_text())["num_images"] == 200
    assert proc.stdout.startswith("note: no MNIST test set found")  # the sample stands in, and says so


def test_full_demo_refuses_an_out_folder_holding_other_files(tmp_path):
    """--out must be new or a previous demo's output (its files, and temporaries of them that a
    killed run left), checked before any work; nothing in a refused folder is touched."""
    import demo_mnist_xai
    from mnist_checkpoint import check_output_folder

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    (mine / "gallery.png").write_bytes(b"x")
    proc = _run(str(ROOT / "demo_mnist_xai.py"), "--out", str(mine), "--no-progress")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"--out {mine}: expected a new folder or a previous output, found other files in it (thesis.tex)" in lines[0]
    assert sorted(p.name for p in mine.iterdir()) == ["gallery.png", "thesis.tex"]
    previous = tmp_path / "previous"
    previous.mkdir()
    for name in demo_mnist_xai.OUTPUT_FILES:
        (previous / name).write_text("")
    (previous / ".gallery.4242-0a1b2c3d.tmp.png").write_bytes(b"")
    check_output_folder(previous, demo_mnist_xai.OUTPUT_FILES, "--out")  # accepted
    (tmp_path / "afile").write_text("")
    proc = _run(str(ROOT / "demo_mnist_xai.py"), "--out", str(tmp_path / "afile"))
    assert proc.returncode == 2 and "expected a folder (new or a previous output), found a file" in proc.stderr


def test_full_demo_mistakes_known_answer(tmp_path):
    """Relabel some of the shipped digits (which the shipped model gets right) so that the
    mistakes are known: 3 fours labelled 9, 2 threes labelled 8, 1 five labelled 6; and no seven,
    and, in these 40 digits, no eight: the report must name 7 and 8 as never predicted and
    missing from the gallery (8 is only the label of two threes, which are wrong)."""
    import demo_mnist_xai
    from mnist_data import Split, load_sample_digits

    full = load_sample_digits().take(46)
    keep = full.labels != 7
    sample = Split(full.images[keep], full.labels[keep])
    assert len(sample.labels) == 40
    labels = sample.labels.copy()
    for true, shown_as, count in ((4, 9, 3), (3, 8, 2), (5, 6, 1)):
        labels[np.flatnonzero(sample.labels == true)[:count]] = shown_as
    import matplotlib
    import matplotlib.pyplot as plt
    backend = matplotlib.get_backend()
    summary = demo_mnist_xai.run_demo(sample.images, labels, tmp_path, str(ROOT / "pretrained"), "relabelled",
                                      progress=False)
    assert matplotlib.get_backend() == backend and plt.get_fignums() == []  # no backend chosen, no pyplot state
    assert summary["errors"] == 6 and summary["accuracy"] == 34 / 40
    assert summary["top_confusions"] == [{"true": 9, "predicted": 4, "count": 3},
                                         {"true": 8, "predicted": 3, "count": 2},
                                         {"true": 6, "predicted": 5, "count": 1}]
    assert summary["guessed_pairs"] == [
        {"pair": "4/9", "4->9": 0, "9->4": 3, "among_top": True},
        {"pair": "3/8", "3->8": 0, "8->3": 2, "among_top": True},
        {"pair": "5/6", "5->6": 0, "6->5": 1, "among_top": True}]
    report = (tmp_path / "report.md").read_text()
    assert "9→4 (3), 8→3 (2), 6→5 (1)" in report and "4/9: 4→9 0, 9→4 3 (among the most confused)" in report
    assert summary["never_predicted"] == ["7", "8"] and summary["no_correct_example"] == ["7", "8"]
    assert "No correctly classified digit of class 7, 8: not in the gallery." in report
    assert "Never predicted, so no average: class 7, 8." in report
    # One row per confused pair, three examples of 3 panels (1.6-inch cells); one row of mistakes.
    for name, size in (("contrastive.png", (504, 1296)), ("misclassified.png", (193, 1350))):
        img = _png(tmp_path / name)
        assert img.shape[:2] == size, name
        assert img[..., :3].var() > 1e-3, f"{name} looks blank"


def test_full_demo_reads_the_tfds_test_split(tmp_path, monkeypatch):
    """--tfds hands tensorflow-datasets' test split to the demo (offline, under tfds' mock data)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import demo_mnist_xai
    import mnist_data

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(mnist_data, "network_problem", lambda *a, **k: None)  # mock data: nothing is fetched

    seen = {}

    def fake_run_demo(images, labels, out, checkpoint, data_name, progress=True, methods=None):
        seen.update(images=images, labels=labels, data_name=data_name)
        return {"accuracy": 1.0, "num_images": len(images), "top_confusions": []}

    monkeypatch.setattr(demo_mnist_xai, "run_demo", fake_run_demo)
    with tfds.testing.mock_data(num_examples=12):
        assert demo_mnist_xai.main(["--tfds", "--out", str(tmp_path / "out"), "--no-progress", "--num-images", "5"]) == 0
    assert seen["images"].shape == (5, 28, 28, 1) and seen["images"].dtype == np.uint8
    assert seen["labels"].shape == (5,) and seen["images"].max() > 0
    assert seen["data_name"] == "the first 5 digits of tensorflow-datasets mnist test split"


def test_full_demo_bad_arguments(tmp_path):
    proc = _run(str(ROOT / "demo_mnist_xai.py"), "--num-images", "5000", "--out", str(tmp_path / "d"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "5000 is more than the 200 digits available" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "d").exists()


NOTEBOOK = ROOT / "notebooks" / "mnist_xai_quickstart.ipynb"


def _notebook_figures(nb) -> list[tuple[int, tuple[int, int]]]:
    """(cell index, (height, width)) of every PNG a code cell displays."""
    import base64
    import io

    import matplotlib.image as mpimg
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if o.get("output_type") == "display_data" and "image/png" in o.get("data", {}):
                img = mpimg.imread(io.BytesIO(base64.b64decode(o["data"]["image/png"])), format="png")
                assert img[..., :3].var() > 1e-3, f"cell {i}: a blank figure"
                out.append((i, img.shape[:2]))
    return out


def _notebook_text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def test_notebook_runs_offline_and_shows_its_figures_and_predictions():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()  # raises CellExecutionError if any cell fails
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    _check_notebook_outputs(nb)


def _check_notebook_outputs(nb) -> None:
    """The GradCAM figure (7 x 2.6 inches at 80 dpi), six methods side by side (2 x 2.4 inches
    each), and the printed label, prediction and logit of the explained digit."""
    import mnist_xai_visualizations as X
    assert [shape for _, shape in _notebook_figures(nb)] == [(208, 560), (192, 160 * 6)]
    text = _notebook_text(nb)
    assert f"{len(X.METHODS)} methods registered; shown: gradcam, gradcam++, saliency" in text, text
    assert re.search(r"label: 9 \| checkpoint test accuracy: 0\.99\d+", text), text
    assert re.search(r"predicted 9, logit -?\d+\.\d\d, heatmap \(28, 28\) in \[0\.0, 1\.0\]", text), text


def test_committed_notebook_holds_its_outputs_and_is_small():
    """Browsing the repository shows the figures and printed results: the notebook is
    committed executed, as the test above runs it, in under 300 KB."""
    nbformat = pytest.importorskip("nbformat")
    assert NOTEBOOK.stat().st_size < 300_000
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _check_notebook_outputs(nb)
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")


def test_most_confused_pairs_keep_ties_in_a_fixed_order():
    from demo_mnist_xai import most_confused

    cm = np.diag(np.full(10, 50))
    for (t, p), c in {(9, 4): 6, (5, 3): 3, (8, 3): 2, (7, 2): 2, (7, 1): 2, (6, 0): 2, (4, 9): 2, (1, 7): 1}.items():
        cm[t, p] = c
    # The 5th most frequent error has count 2, shared by five pairs: all of them, in (true, predicted) order.
    assert most_confused(cm) == [(9, 4, 6), (5, 3, 3), (4, 9, 2), (6, 0, 2), (7, 1, 2), (7, 2, 2), (8, 3, 2)]
    assert most_confused(cm, top=1) == [(9, 4, 6)]
    assert most_confused(np.diag(np.full(10, 5))) == []
    few = np.diag(np.full(10, 5))
    few[3, 8] = 1
    assert most_confused(few) == [(3, 8, 1)]


@pytest.mark.parametrize("script, args, message", [
    ("train_mnist.py", ["--epochs", "0"], "argument --epochs: expected a positive integer, got 0"),
    ("train_mnist.py", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ("evaluate_xai.py", ["--methods", "nosuch"], "--methods: expected names from"),
    ("demo_mnist_xai.py", ["--num-images", "0"], "--num-images: expected a positive integer, got 0"),
    ("simple_mnist_xai_demo.py", ["--out", "figure.jpg"], "--out: expected a .png path, got figure.jpg"),
])
def test_command_line_errors_are_one_line(script, args, message):
    proc = _run(str(ROOT / script), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and f"(see {script} --help)" in lines[0], proc.stderr


def test_a_training_run_does_not_change_the_default_checkpoint(tmp_path, monkeypatch):
    """One rule: without --checkpoint every script explains the shipped pretrained/, whatever a
    training run has written into checkpoints/ (train_mnist.py's default workdir)."""
    from mnist_checkpoint import CKPT_SUBDIR, PRETRAINED_DIR, default_checkpoint, describe, load_checkpoint

    monkeypatch.chdir(tmp_path)
    assert default_checkpoint() == str(PRETRAINED_DIR)
    (tmp_path / "checkpoints" / CKPT_SUBDIR / "4690").mkdir(parents=True)  # a training run's step
    assert default_checkpoint() == str(PRETRAINED_DIR)
    *_, meta = load_checkpoint()
    assert describe(None, meta) == "pretrained/ (shipped), mnist, test accuracy 99.66%"


SCRIPTS = ("train_mnist.py", "demo_mnist_xai.py", "evaluate_xai.py", "simple_mnist_xai_demo.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_help_states_the_default_rules_and_runnable_examples(script):
    """One rule for defaults, said in each --help; every flag explained; examples that run
    from a clone (no paths outside it)."""
    proc = _run(str(ROOT / script), "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert "the shipped pretrained/; a training run is explained only when named, e.g. --checkpoint checkpoints" in text
    if script != "simple_mnist_xai_demo.py":  # the quick demo reads only the shipped digits
        assert "else $MNIST_DATA_DIR, else a copy tensorflow-datasets has prepared" in text
        assert "requirements-tfds.txt" in text
    if script in ("demo_mnist_xai.py", "evaluate_xai.py"):
        assert "else the 200 real test digits shipped in sample_data/ (with a note)" in text
    assert "../" not in proc.stdout and "shared/data" not in proc.stdout
    options = proc.stdout[proc.stdout.index("options:"):].splitlines()[1:]
    for i, line in enumerate(options):  # argparse: help after two spaces on the flag's line, or below it
        if line.startswith("  -"):
            below = options[i + 1] if i + 1 < len(options) else ""
            has_help = "  " in line.strip() or (below.startswith("    ") and not below.strip().startswith("-"))
            assert has_help, f"{script}: {line.strip()} has no help text"
    if script == "evaluate_xai.py":
        assert "families (cam, gradient, path, perturbation, propagation) or 'all'" in text


def test_library_code_chooses_no_matplotlib_backend():
    """matplotlib.use() in a function switches a notebook's inline backend off: only the
    scripts' preamble (cli.before_jax) picks Agg, through MPLBACKEND, when run as scripts."""
    for name in ("train_mnist.py", "demo_mnist_xai.py", "simple_mnist_xai_demo.py", "evaluate_xai.py",
                 "mnist_checkpoint.py", "mnist_data.py", "cli.py"):
        source = (ROOT / name).read_text()
        assert "matplotlib.use(" not in source and "matplotlib.pyplot" not in source and "plt." not in source, name


def test_quick_demo_leaves_the_callers_backend_and_pyplot_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    from simple_mnist_xai_demo import run_quick_demo

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a notebook's inline backend
    try:
        rows = run_quick_demo(tmp_path / "q.png", str(ROOT / "pretrained"))
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == []
    finally:
        matplotlib.use(before)
    assert [r["label"] for r in rows] == list(range(10)) and _png(tmp_path / "q.png").shape[:2] == (684, 1395)


def test_readme_snippet_runs_from_the_repository_root_and_prints_what_it_says(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "repository root" in code.splitlines()[0]
    promised = [line for line in code.splitlines() if line.startswith("# prints: ")]
    assert len(promised) == 1
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "MNIST_DATA_DIR"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == promised[0][len("# prints: "):]


def test_readme_test_command_is_what_ci_runs():
    """The README's test line and .ci/run's pytest line are one command: the 15 slowest tests
    listed, a hung test failing after 300 s (pytest-timeout and pytest-xdist, pinned in
    requirements-dev.txt)."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    readme_cmd = [line for line in readme.splitlines() if "python -m pytest" in line]
    ci_cmd = [line for line in ci.splitlines() if line.startswith("python -m pytest")]
    assert len(readme_cmd) == 1 and len(ci_cmd) == 1
    command = readme_cmd[0].split("&&", 1)[1].split("#")[0].strip()
    assert command == ci_cmd[0].strip()
    assert "--durations=15" in command and "--timeout=300" in command
    assert "pip install -r requirements-dev.txt" in readme_cmd[0]
    if " -n " in command:  # the workers come from pytest-xdist, which CI installs from that file
        assert "pytest-xdist==" in (ROOT / "requirements-dev.txt").read_text()


@pytest.mark.parametrize("script", (*SCRIPTS, "explore_mnist_xai.py"))
@pytest.mark.parametrize("args", (["--help"], ["--no-such-flag"]))
def test_help_and_argument_errors_answer_before_jax_is_imported(script, args):
    """--help and a mistyped flag answer from argparse alone: JAX (seconds to import) is not loaded."""
    code = ("import runpy, sys\n"
            f"sys.argv = [{script!r}, *{args!r}]\n"
            "try:\n"
            f"    runpy.run_path({str(ROOT / script)!r}, run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    print('exit', e.code, 'jax' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == f"exit {0 if args == ['--help'] else 2} False", proc.stdout + proc.stderr

"""Both demos end to end on the shipped digits and checkpoint, and the notebook."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DATA_DIR"}  # the shipped digits
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def _png(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return mpimg.imread(path)


def test_quick_demo_writes_the_figure(tmp_path):
    out = tmp_path / "quick.png"
    proc = _run(str(ROOT / "simple_mnist_xai_demo.py"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    img = _png(out)
    assert img.shape[:2] == (468, 1350)  # 15 x 5.2 inches at 90 dpi
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
    for name in demo_mnist_xai.FIGURES:
        img = _png(out / name)
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].var() > 1e-3, f"{name} looks blank"
        assert f"({name})" in report, f"report does not link {name}"
    assert "Accuracy: **" in report and "200 digits" in report


def test_full_demo_bad_arguments(tmp_path):
    proc = _run(str(ROOT / "demo_mnist_xai.py"), "--num-images", "5000", "--out", str(tmp_path / "d"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "5000 is more than the 200 digits available" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "d").exists()


def test_notebook_runs_offline():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "notebooks" / "mnist_xai_quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()  # raises CellExecutionError if any cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    assert not any(o.get("output_type") == "error" for o in outputs)


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
    ("evaluate_xai.py", ["--methods", "lime"], "--methods: expected names from"),
    ("demo_mnist_xai.py", ["--num-images", "0"], "--num-images: expected a positive integer, got 0"),
    ("simple_mnist_xai_demo.py", ["--out", "figure.jpg"], "--out: expected a .png path, got figure.jpg"),
])
def test_command_line_errors_are_one_line(script, args, message):
    proc = _run(str(ROOT / script), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and f"(see {script} --help)" in lines[0], proc.stderr

"""demo_mnist_xai.py --methods / --list-methods: the gallery, the deletion AUCs and the class
averages show the chosen registered methods; an unknown name is one line and exit 2."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHOSEN = ["hirescam", "gradient_x_input", "occlusion"]  # fast unsigned, fast signed, slow
N = 12


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_DATA_DIR", "TFDS_DATA_DIR")}
    return subprocess.run([sys.executable, str(ROOT / "demo_mnist_xai.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**env, "TFDS_DATA_DIR": str(ROOT / "no-tfds-here")})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import demo_mnist_xai
    from mnist_data import load_sample_digits

    figures = {}
    save = demo_mnist_xai._save

    def keep(fig, path):
        figures[Path(path).name] = fig
        save(fig, path)

    sample = load_sample_digits().take(N)
    out = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setattr(demo_mnist_xai, "_save", keep)
    try:
        summary = demo_mnist_xai.run_demo(sample.images, sample.labels, out, str(ROOT / "pretrained"), "sample",
                                          progress=False, methods=CHOSEN)
    finally:
        mp.undo()
    return summary, figures, sample, out


def test_summary_and_report_name_the_chosen_methods(demo):
    summary, _, _, out = demo
    titles = ["HiResCAM", "Gradient×Input", "Occlusion"]
    assert summary["methods"] == CHOSEN
    assert list(summary["deletion_auc"]) == titles
    # a slow method's AUC on SLOW_AUC_IMAGES digits only (here all N of the fast ones)
    assert summary["deletion_auc_images_per_method"] == {"HiResCAM": N, "Gradient×Input": N, "Occlusion": 10}
    assert summary["class_average_methods"] == ["hirescam", "gradient_x_input"]  # the fast ones
    report = (out / "report.md").read_text()
    assert "Occlusion" in report and "(first 10 only: a slow method)" in report
    assert "mean HiResCAM and mean Gradient×Input per predicted class" in report


def test_gallery_columns_hold_the_chosen_methods_maps(demo):
    """The gallery's first row shows, per column, the overlay of that method's own map
    (|map| for a signed one), scaled to [0, 1]: the known answer computed here."""
    import demo_mnist_xai
    import mnist_xai_visualizations as X
    from mnist_checkpoint import load_checkpoint

    summary, figures, sample, _ = demo
    fig = figures["gallery.png"]
    columns = ["digit", "HiResCAM", "Gradient×Input", "Occlusion"]
    assert [ax.get_title() for ax in fig.axes[:len(columns)]] == columns
    assert len(fig.axes) % len(columns) == 0
    assert "|Gradient×Input|" in fig._suptitle.get_text()
    params, batch_stats, model, _ = load_checkpoint(str(ROOT / "pretrained"))
    labels = sample.labels
    first = int(np.flatnonzero(labels == labels.min())[0])  # row 0: the smallest class present (all correct)
    x = sample.images[first:first + 1].astype(np.float32) / 255.0
    for j, name in ((1, "hirescam"), (2, "gradient_x_input"), (3, "occlusion")):
        raw = X.make_explainer(name, model).attribute(params, batch_stats, x)
        if X.SPECS[name].signed:
            raw = np.abs(raw)
        want = X.overlay_heatmap(x[0], np.asarray(X.normalize_maps(raw))[0])
        got = np.asarray(fig.axes[j].images[0].get_array())
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)
    assert demo_mnist_xai.method_label("kernel_shap") == X.SPECS["kernel_shap"].title


def test_class_averages_have_a_row_per_fast_method(demo):
    summary, figures, sample, _ = demo
    fig = figures["class_average_maps.png"]
    axes = np.array(fig.axes).reshape(-1, 10)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["mean digit", "mean HiResCAM", "mean Gradient×Input"]
    assert fig.get_size_inches()[1] == pytest.approx(5.2 * 3 / 3)


def test_unknown_method_is_one_line_and_exit_2():
    proc = _run("--methods", "gradcam,nosuch", "--out", "never-written")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--methods: expected names from" in lines[0] and "got nosuch" in lines[0], proc.stderr
    assert "(see demo_mnist_xai.py --help)" in lines[0]
    assert not (ROOT / "never-written").exists()


def test_list_methods_lists_every_registered_method():
    import mnist_xai_visualizations as X

    proc = _run("--list-methods")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.strip().splitlines()]
    assert [r[0] for r in rows] == X.method_names()
    assert all(r[1] == X.SPECS[r[0]].family and r[2] == X.SPECS[r[0]].cost for r in rows)

"""Other datasets of MNIST's shape (--dataset mnist|fashion_mnist|kmnist), the input normalisation
a checkpoint stores, its class names in the figures and the explorer, and its temperature in the
probabilities shown.

tensorflow-datasets runs under ``tfds.testing.mock_data`` (nothing is downloaded; the network is
blocked); the checkpoints are written here from the shipped weights or fresh ones, in seconds.
"""
from __future__ import annotations

import json
import socket

import matplotlib.text
import numpy as np
import pytest

import mnist_checkpoint as ckpt
import mnist_data
from mnist_cnn_model import MNIST_MEAN, MNIST_STD, MNISTCNN
from mnist_data import DIGITS, MNISTDataError, Split

FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == [], f"tried the network: {attempts}"


@pytest.fixture
def tfds_env(tmp_path, monkeypatch):
    """An empty tfds data folder, no IDX folder variables; tfds imported (skip without it)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    for name in mnist_data.DATASETS:
        monkeypatch.delenv(mnist_data.data_dir_variable(name), raising=False)
    return tfds


@pytest.fixture(scope="module")
def shipped():
    return ckpt.load_checkpoint(None)  # pretrained/: metadata from before datasets, with a temperature


def save_checkpoint(folder, params, batch_stats, meta):
    manager = ckpt.make_manager(folder)
    ckpt.save(manager, 1, {"params": params, "batch_stats": batch_stats}, meta, None)
    manager.close()
    return folder


# ----------------------------------------------------------------------------- data


def test_pixel_stats_known_answer():
    images = np.zeros((4, 28, 28, 1), np.uint8)
    images[:2] = 255  # half the pixels white: mean 0.5, std 0.5
    assert mnist_data.pixel_stats(Split(images, np.zeros(4, np.int32))) == (0.5, 0.5)
    rng = np.random.default_rng(0)
    for n in (50, 200):  # 200 images: three chunks of the histogram, the last one partial
        images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
        x = images.astype(np.float64) / 255
        mean, std = mnist_data.pixel_stats(Split(images, np.zeros(n, np.int32)))
        assert type(mean) is float and abs(mean - x.mean()) < 1e-12 and abs(std - x.std()) < 1e-12
    with pytest.raises(MNISTDataError, match="all have the same pixel value"):
        mnist_data.pixel_stats(Split(np.full((3, 28, 28, 1), 7, np.uint8), np.zeros(3, np.int32)))


def test_idx_class_names_are_tfds_own(tfds_env):
    """The lists hard-coded for IDX folders are tensorflow-datasets' label names (and "0".."9")."""
    for name in mnist_data.DATASETS:
        names = tuple(tfds_env.builder(name).info.features["label"].names)
        assert mnist_data.class_names(name) == names, name
    assert mnist_data.class_names("fashion_mnist") == FASHION and mnist_data.class_names("mnist") == DIGITS


@pytest.mark.parametrize("dataset", ["fashion_mnist", "kmnist"])
def test_tfds_datasets_under_mock_data(dataset, tfds_env, no_network, monkeypatch):
    monkeypatch.setattr(mnist_data, "network_problem", lambda *a, **k: None)  # mock data: nothing fetched
    with tfds_env.testing.mock_data(num_examples=9):
        data = mnist_data.load_mnist(num_validation=2, tfds=True, dataset=dataset)
    assert (data.dataset, data.source) == (dataset, f"tfds:{dataset}")
    assert data.class_names == tuple(tfds_env.builder(dataset).info.features["label"].names)
    assert (len(data.train), len(data.validation), len(data.test)) == (7, 2, 9)
    assert data.train.images.shape == (7, 28, 28, 1) and data.train.images.dtype == np.uint8


def test_missing_data_names_the_dataset(tfds_env, tmp_path, monkeypatch):
    """Offline without a prepared copy, the one-line failure names the dataset (and its server);
    an MNIST folder in MNIST_DATA_DIR never stands in for Fashion-MNIST."""
    monkeypatch.setattr(mnist_data, "network_problem", lambda host, *a, **k: f"no route to {host[0]}")
    with pytest.raises(MNISTDataError, match=r"^--tfds: no prepared tensorflow-datasets copy of kmnist in .*tfds, "
                                             r"and codh.rois.ac.jp cannot be reached .*KMNIST_DATA_DIR"):
        mnist_data.load_mnist(tfds=True, dataset="kmnist")
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path))
    with pytest.raises(MNISTDataError, match=r"^no Fashion-MNIST data: pass --data-dir or set FASHION_MNIST_DATA_DIR "
                                             r"to a folder holding the four Fashion-MNIST IDX files"):
        mnist_data.load_mnist(dataset="fashion_mnist")
    with pytest.raises(MNISTDataError, match=r"^no KMNIST test set \(the shipped sample digits are MNIST's\)"):
        mnist_data.load_test_or_sample(dataset="kmnist")
    with pytest.raises(MNISTDataError, match="^--dataset cifar: expected one of mnist, fashion_mnist, kmnist$"):
        mnist_data.load_mnist(dataset="cifar")


def test_dataset_flag_refuses_other_names_in_one_line(capsys):
    import train_mnist as T
    with pytest.raises(SystemExit) as exit_info:
        T.build_parser().parse_args(["--dataset", "cifar"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert "--dataset: cifar: expected one of mnist, fashion_mnist, kmnist" in err[0]


# ----------------------------------------------------------------------------- checkpoints


def test_normalisation_is_stored_and_a_reloaded_model_gives_the_same_logits(tmp_path, shipped):
    model = MNISTCNN(input_mean=0.2860, input_std=0.3530)  # about Fashion-MNIST's
    params, batch_stats = shipped[:2]  # any weights fit: the normalisation is no variable
    meta = {"model": model.config(), "dataset": "fashion_mnist", "class_names": list(FASHION)}
    save_checkpoint(tmp_path / "run", params, batch_stats, meta)
    p2, b2, loaded, meta2 = ckpt.load_checkpoint(tmp_path / "run")
    assert (loaded.input_mean, loaded.input_std) == (0.2860, 0.3530) and loaded == model
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype(np.float32)
    want = model.apply({"params": params, "batch_stats": batch_stats}, x)
    np.testing.assert_array_equal(np.asarray(loaded.apply({"params": p2, "batch_stats": b2}, x)), np.asarray(want))
    # the stored values are what standardises: MNIST's would give other logits
    other = MNISTCNN().apply({"params": p2, "batch_stats": b2}, x)
    assert np.abs(np.asarray(other) - np.asarray(want)).max() > 1e-3
    info = ckpt.checkpoint_info(meta2)
    assert (info.dataset, info.class_names, info.temperature) == ("fashion_mnist", FASHION, None)
    assert ckpt.read_info(tmp_path / "run") == info
    assert info.probability_note.startswith("plain softmax")


def test_an_old_checkpoint_loads_with_mnist_values(shipped, tmp_path):
    params, batch_stats, model, meta = shipped
    assert "input_mean" not in meta["model"] and "class_names" not in meta and "dataset" not in meta
    assert (model.input_mean, model.input_std) == (MNIST_MEAN, MNIST_STD) == (0.1307, 0.3081)
    info = ckpt.checkpoint_info(meta)
    assert (info.dataset, info.class_names) == ("mnist", DIGITS) and info.temperature == meta["temperature"]
    assert f"T = {meta['temperature']:.3g}" in info.probability_note
    old = {k: v for k, v in meta.items() if k not in ("temperature", "calibration")}
    save_checkpoint(tmp_path / "old", params, batch_stats, old)
    _, _, model2, meta2 = ckpt.load_checkpoint(tmp_path / "old")
    assert model2 == MNISTCNN() and ckpt.checkpoint_info(meta2).temperature is None


@pytest.mark.parametrize("field, value, message", [
    ("class_names", ["a", "b"], r"class_names: expected 10 strings, found \['a', 'b'\]"),
    ("temperature", -1.0, "temperature: expected a positive finite number, found -1.0"),
    ("dataset", "cifar", "dataset: expected one of mnist, fashion_mnist, kmnist, found 'cifar'"),
])
def test_bad_stored_fields_are_one_line(shipped, tmp_path, field, value, message):
    params, batch_stats, _, meta = shipped
    save_checkpoint(tmp_path / "bad", params, batch_stats, {**meta, field: value})
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load_checkpoint(tmp_path / "bad")


# ----------------------------------------------------------------------------- figures and probabilities


@pytest.fixture
def drawn(monkeypatch):
    """Every Figure saved: its texts (titles, suptitle, tick labels) and its images' arrays."""
    from matplotlib.figure import Figure
    figures = []
    save = Figure.savefig

    def record(fig, *args, **kwargs):
        texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
        figures.append({"texts": texts, "images": [np.array(ax.images[0].get_array()) for ax in fig.axes if ax.images]})
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures


def test_class_names_reach_the_quick_demo_figure(tmp_path, drawn, monkeypatch, shipped):
    """A Fashion-MNIST checkpoint's figure names its classes; its images come from the data rule.
    (The shipped weights under another name: what is drawn is the point.)"""
    import simple_mnist_xai_demo as Q
    params, batch_stats, model, _ = shipped
    save_checkpoint(tmp_path / "fashion", params, batch_stats,
                    {"model": model.config(), "dataset": "fashion_mnist", "class_names": list(FASHION)})
    folder = tmp_path / "idx"
    folder.mkdir()
    rng = np.random.default_rng(1)
    mnist_data.write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8))
    mnist_data.write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(20, dtype=np.uint8) % 10)
    monkeypatch.setenv("FASHION_MNIST_DATA_DIR", str(folder))
    rows = Q.run_quick_demo(tmp_path / "q.png", str(tmp_path / "fashion"))
    texts = drawn[-1]["texts"]
    predicted = {r["prediction_name"] for r in rows}
    assert all(any(f", pred {name}\n" in t for t in texts) for name in predicted)
    assert any("Fashion-MNIST test image per class" in t for t in texts)
    assert [r["label_name"] for r in rows] == list(FASHION)
    assert rows[0]["probabilities"].startswith("plain softmax")


def test_temperature_changes_the_shown_probabilities_exactly_and_not_the_maps(shipped, tmp_path, drawn):
    import simple_mnist_xai_demo as Q
    from mnist_data import load_sample_digits
    params, batch_stats, model, meta = shipped
    t = 2.5
    save_checkpoint(tmp_path / "hot", params, batch_stats, {**meta, "temperature": t})
    plain = {k: v for k, v in meta.items() if k not in ("temperature", "calibration")}
    save_checkpoint(tmp_path / "plain", params, batch_stats, plain)
    rows_t = Q.run_quick_demo(tmp_path / "t.png", str(tmp_path / "hot"))
    rows_1 = Q.run_quick_demo(tmp_path / "p.png", str(tmp_path / "plain"))
    sample = load_sample_digits()
    x = sample.images[Q.pick_one_per_class(sample.labels)].astype(np.float32) / 255
    z = np.asarray(model.apply({"params": params, "batch_stats": batch_stats}, x), np.float64)

    def softmax(v):
        e = np.exp(v - v.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    np.testing.assert_allclose([r["confidence"] for r in rows_t], softmax(z / t).max(-1), rtol=1e-5)
    np.testing.assert_allclose([r["confidence"] for r in rows_1], softmax(z).max(-1), rtol=1e-5)
    assert rows_t[0]["probabilities"].startswith("calibrated") and "T = 2.5" in rows_t[0]["probabilities"]
    assert rows_1[0]["probabilities"].startswith("plain softmax")
    hot, cold = drawn[-2], drawn[-1]
    assert len(hot["images"]) == len(cold["images"]) == 40
    for a, b in zip(hot["images"], cold["images"]):  # digits, GradCAM overlays, saliency, SmoothGrad: unchanged
        np.testing.assert_array_equal(a, b)
    assert hot["texts"] != cold["texts"]  # the titles' confidences differ


def test_explorer_shows_calibrated_probabilities_and_class_names():
    """The page's panel: names on the bars and in the prediction, probabilities as given."""
    import explore_mnist_xai as E
    z = np.linspace(-2, 3, 10)
    r = E.ModelResult("m", "d", probs=E.shown_probabilities(z, 2.0), class_names=FASHION, pred=9, targets=[9, 6])
    e = np.exp(z / 2 - (z / 2).max())
    np.testing.assert_allclose(r.probs, e / e.sum(), rtol=1e-12)
    page = E.render_model(r, np.zeros((28, 28)))
    assert '<span class="xe-d">Ankle boot</span>' in page and "why Ankle boot and not Shirt?" in page
    assert f"{100 * r.probs[9]:.1f}%" in page
    digits = E.render_model(E.ModelResult("m", "d", probs=E.shown_probabilities(z, None), pred=9, targets=[9]),
                            np.zeros((28, 28)))
    assert '<span class="xe-d">3</span>' in digits and "Prediction: <b>9</b>" in digits


def test_explorer_model_line_says_how_probabilities_were_made(tmp_path, shipped):
    import explore_mnist_xai as E
    params, batch_stats, _, meta = shipped
    save_checkpoint(tmp_path / "plain", params, batch_stats, {k: v for k, v in meta.items() if k != "temperature"})
    calibrated, plain = E.load_models([None, str(tmp_path / "plain")])
    assert f"calibrated probabilities (T = {meta['temperature']:.3g})" in calibrated.description
    assert calibrated.temperature == meta["temperature"] and calibrated.class_names == DIGITS
    assert "plain softmax (no temperature stored)" in plain.description and plain.temperature is None


def test_full_demo_report_and_contrastive_figure_name_the_classes(tmp_path, drawn):
    import demo_mnist_xai as D
    images = np.random.default_rng(0).random((4, 28, 28, 1)).astype(np.float32)
    maps = np.random.default_rng(1).random((2, 28, 28)).astype(np.float32)
    fig = D.contrastive_figure(images, np.full(4, 0.9), [(6, 0, 2)], [np.array([1, 2])], maps, maps, FASHION)
    fig.savefig(tmp_path / "c.png")
    texts = drawn[-1]["texts"]
    assert "GradCAM for Shirt" in texts and "GradCAM for T-shirt/top" in texts and "Shirt→T-shirt/top, 90%" in texts
    summary = {"data": "Fashion-MNIST test set (x)", "num_images": 4, "accuracy": 0.5, "errors": 2,
               "top_confusions": [{"true": 6, "predicted": 0, "count": 2}], "guessed_pairs": [],
               "explain_pass_seconds": 1.0, "deletion_auc": {"GradCAM": 0.1}, "deletion_auc_images": 4,
               "checkpoint": "c", "checkpoint_epoch": 1, "dataset": "fashion_mnist", "dataset_name": "Fashion-MNIST",
               "credit": mnist_data.CREDITS["fashion_mnist"], "class_names": list(FASHION), "temperature": 1.5,
               "probabilities": "calibrated probabilities (temperature scaling, T = 1.5, fitted on the validation split)"}
    D.write_report(tmp_path, summary)
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# Fashion-MNIST CNN explanations") and "Shirt→T-shirt/top (2)" in report
    assert "Confidences shown: calibrated probabilities (temperature scaling, T = 1.5" in report
    assert "guessed" not in report and "Zalando" in report and "4 images" in report


# ----------------------------------------------------------------------------- training


def test_a_short_fashion_mnist_run_stores_dataset_normalisation_and_class_names(tfds_env, no_network, tmp_path,
                                                                               monkeypatch):
    import train_mnist as T
    monkeypatch.setattr(mnist_data, "network_problem", lambda *a, **k: None)
    workdir = tmp_path / "run"
    args = ["--dataset", "fashion_mnist", "--tfds", "--epochs", "1", "--max-train-examples", "32", "--batch-size", "16",
            "--num-validation", "8", "--eval-batch-size", "16", "--no-augment", "--no-progress", "--workdir", str(workdir)]
    with tfds_env.testing.mock_data(num_examples=48):
        assert T.main(args) == 0
        data = mnist_data.load_mnist(num_validation=8, tfds=True, dataset="fashion_mnist")
    _, _, model, meta = ckpt.load_checkpoint(workdir)
    mean, std = mnist_data.pixel_stats(data.train.take(32))  # the images trained on: not validation or test
    assert (model.input_mean, model.input_std) == (mean, std) == (meta["model"]["input_mean"], meta["model"]["input_std"])
    assert (mean, std) != mnist_data.pixel_stats(data.validation)
    assert meta["dataset"] == meta["train_config"]["dataset"] == "fashion_mnist"
    assert meta["data_source"] == "tfds:fashion_mnist" and tuple(meta["class_names"]) == FASHION
    assert meta["temperature"] > 0  # fitted on the validation split at the end of the run
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["dataset"] == "fashion_mnist" and tuple(metrics["class_names"]) == FASHION


def test_full_demo_figures_name_a_fashion_checkpoints_classes(shipped, tmp_path, drawn, monkeypatch):
    """run_demo end to end on a checkpoint that says it is Fashion-MNIST's (the shipped weights
    under another name: what is drawn is the point, not the accuracy). The slow methods and the
    AUCs are stood in for by saliency and zeros (their compiling would be most of the time)."""
    import demo_mnist_xai as D
    import mnist_xai_metrics
    import mnist_xai_visualizations as X
    from mnist_data import load_sample_digits
    monkeypatch.setattr(X, "IntegratedGradients", X.Saliency)
    monkeypatch.setattr(X, "SmoothGrad", X.Saliency)
    monkeypatch.setattr(mnist_xai_metrics, "deletion_insertion", lambda *a, **k: {"deletion_auc": np.zeros(len(a[3]))})
    params, batch_stats, _, meta = shipped
    save_checkpoint(tmp_path / "fashion", params, batch_stats,
                    {**meta, "dataset": "fashion_mnist", "class_names": list(FASHION)})
    sample = load_sample_digits().take(10)
    summary = D.run_demo(sample.images, sample.labels, tmp_path / "out", str(tmp_path / "fashion"), "x",
                         progress=False, chunk=10)
    texts = {name: fig["texts"] for name, fig in zip(D.FIGURES, drawn)}
    assert "image" in texts["gallery.png"] and "digit" not in texts["gallery.png"]
    assert any(t.startswith("Ankle boot: ") for t in texts["gallery.png"])  # the row titles
    assert any(t.startswith("predicted Ankle boot (n=") for t in texts["class_average_maps.png"])
    assert "Sandal" in texts["confusion_matrix.png"]  # the tick labels
    assert summary["class_names"] == list(FASHION) and summary["guessed_pairs"] == []
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Fashion-MNIST CNN explanations")

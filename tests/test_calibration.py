"""ECE and temperature scaling (mnist_calibration): known answers on synthetic data."""
import numpy as np
import pytest

import mnist_calibration as C


def calibrated_sample(n, classes=10, seed=0):
    """Logits whose softmax is the true class distribution: labels drawn from softmax(logits)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.5, (n, classes))
    p = C.softmax(logits)
    u = rng.random((n, 1))
    labels = (p.cumsum(1) < u).sum(1).clip(0, classes - 1)
    return logits, labels


def test_ece_by_hand():
    # Two bins used: conf 0.95 (two samples, one right) and 0.55 (one, right); 15 bins.
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.45, 0.55]])
    labels = np.array([0, 1, 1])
    expected = (2 / 3) * abs(0.5 - 0.95) + (1 / 3) * abs(1.0 - 0.55)
    assert C.expected_calibration_error(probs, labels) == pytest.approx(expected)
    b = C.calibration_bins(probs, labels)
    assert b["count"].sum() == 3 and b["count"][14] == 2 and b["count"][8] == 1  # 0.55 in (8/15, 9/15]
    # Bin edges are right-closed: confidence exactly 1 lands in the last bin, 1/15 in the first.
    assert C.calibration_bins(np.array([[1.0, 0.0]]), [0])["count"][14] == 1


def test_perfectly_calibrated_data_has_ece_near_zero():
    logits, labels = calibrated_sample(200_000)
    assert C.expected_calibration_error(C.softmax(logits), labels) < 0.005
    # Always right with confidence 1: ECE exactly 0; always wrong with confidence 1: ECE 1.
    onehot = np.eye(10)[np.arange(50) % 10]
    assert C.expected_calibration_error(onehot, np.arange(50) % 10) == 0.0
    assert C.expected_calibration_error(onehot, (np.arange(50) + 1) % 10) == 1.0


def test_temperature_recovers_a_known_scaling():
    logits, labels = calibrated_sample(50_000, seed=1)
    for scale in (3.0, 0.5):
        t = C.fit_temperature(scale * logits, labels)
        assert t == pytest.approx(scale, rel=0.03)
    t = C.fit_temperature(logits, labels)
    assert t == pytest.approx(1.0, rel=0.03)
    # The fitted T is the NLL's minimum: nearby temperatures do worse.
    z = 3 * logits
    t = C.fit_temperature(z, labels)
    nll = C.negative_log_likelihood(z, labels, t)
    assert nll <= C.negative_log_likelihood(z, labels, t * 1.01) and nll <= C.negative_log_likelihood(z, labels, t / 1.01)
    # Scaled logits are overconfident; dividing by the fitted T brings ECE back down.
    before = C.expected_calibration_error(C.softmax(z), labels)
    after = C.expected_calibration_error(C.softmax(z, t), labels)
    assert before > 0.1 and after < 0.01


def test_calibration_report():
    logits, labels = calibrated_sample(20_000, seed=2)
    r = C.calibration_report(3 * logits[:10_000], labels[:10_000], 3 * logits[10_000:], labels[10_000:])
    assert r["temperature"] == pytest.approx(3.0, rel=0.05)
    assert r["test_ece_after"] < r["test_ece_before"] and r["test_nll_after"] < r["test_nll_before"]


@pytest.mark.parametrize("call, match", [
    (lambda: C.expected_calibration_error(np.array([[2.0, -1.0]]), [0]), "probs: expected rows of class probabilities"),
    (lambda: C.expected_calibration_error(np.ones((3, 2)) / 2, [0, 1]), r"labels: expected one label per row \(3,\)"),
    (lambda: C.expected_calibration_error(np.ones((2, 2)) / 2, [0, 2]), "labels: expected classes in 0-1"),
    (lambda: C.expected_calibration_error(np.ones((2, 2)) / 2, [0, 1], bins=0), "bins: expected an integer >= 1"),
    (lambda: C.expected_calibration_error(np.ones(4) / 4, [0]), r"probs: expected a 2-D array \(N, classes\)"),
    (lambda: C.fit_temperature(np.array([[np.nan, 0.0]]), [0]), "logits: expected finite values"),
    (lambda: C.fit_temperature(np.zeros((2, 3)), [0.5, 1]), "labels: expected integer classes"),
    (lambda: C.fit_temperature(np.zeros((2, 3)), [0, 1], bounds=(2.0, 1.0)), "bounds: expected 0 < low < high"),
])
def test_bad_input_is_one_line(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_calibrate_checkpoint_writes_the_temperature_into_a_copy(tmp_path):
    import json
    import shutil
    from pathlib import Path

    from mnist_checkpoint import load_checkpoint
    from mnist_data import Split, load_sample_digits

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "pretrained", tmp_path / "ckpt_copy")
    shipped = root / "pretrained" / "ckpt" / "6435" / "meta" / "metadata"
    before = shipped.read_bytes()
    sample = load_sample_digits()
    val, test = Split(sample.images[:100], sample.labels[:100]), Split(sample.images[100:], sample.labels[100:])
    report = C.calibrate_workdir(tmp_path / "ckpt_copy", type("Data", (), {"validation": val, "test": test})())
    t = report["temperature"]
    assert 0.05 <= t <= 20 and report["calibration"]["step"] == 6435
    assert report["calibration"]["test_ece_after"] >= 0
    _, _, _, meta = load_checkpoint(tmp_path / "ckpt_copy")  # still loads, with T in its metadata
    assert meta["temperature"] == t and meta["calibration"]["fitted_on"] == "validation (100 images)"
    assert shipped.read_bytes() == before  # the shipped checkpoint is not touched
    assert json.loads((tmp_path / "ckpt_copy" / "ckpt" / "6435" / "meta" / "metadata").read_text())["temperature"] == t

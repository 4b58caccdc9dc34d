"""Tests for mnist_data: IDX parsing, error messages, validation split, data sources.

Fast and offline: IDX files are synthetic (written with ``mnist_data.write_idx`` into
tmp_path); tensorflow-datasets runs under ``tfds.testing.mock_data``, with its download
patched, or on a tiny copy prepared from synthetic files, with Python sockets blocked. The
real-data test runs only when ``MNIST_DATA_DIR`` points at the real files.
"""
from __future__ import annotations

import gzip
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

import mnist_data
from mnist_data import MNISTDataError

REPO_ROOT = Path(__file__).resolve().parents[1]
STEMS = {  # stem -> IDX kind
    "train-images": "idx3", "train-labels": "idx1",
    "t10k-images": "idx3", "t10k-labels": "idx1",
}


# --------------------------------------------------------------------------- helpers

def idx_name(stem: str, scheme: str = "dash", gz: bool = True) -> str:
    """``train-images-idx3-ubyte.gz`` (dash) or ``train-images.idx3-ubyte`` (dot)."""
    sep = "-" if scheme == "dash" else "."
    return f"{stem}{sep}{STEMS[stem]}-ubyte" + (".gz" if gz else "")


def make_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random 28x28 uint8 images (image i has i in pixel [0, 0]) and labels in 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def write_dataset(folder: Path, n_train: int = 12, n_test: int = 5, scheme: str = "dash",
                  gz: bool = True) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_arrays(n_train, seed=1)
    test_x, test_y = make_arrays(n_test, seed=2)
    arrays = {"train-images": train_x, "train-labels": train_y,
              "t10k-images": test_x, "t10k-labels": test_y}
    for stem, array in arrays.items():
        mnist_data.write_idx(folder / idx_name(stem, scheme, gz), array)
    return arrays


def read_payload(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def write_payload(path: Path, payload: bytes) -> None:
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def assert_split(split: mnist_data.Split, images: np.ndarray, labels: np.ndarray) -> None:
    assert split.images.shape == (len(images), 28, 28, 1)
    assert split.images.dtype == np.uint8
    assert split.labels.shape == (len(labels),)
    assert split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.images[..., 0], images)
    np.testing.assert_array_equal(split.labels, labels.astype(np.int32))


def ids(split: mnist_data.Split) -> list[int]:
    """Example ids as written by make_arrays (pixel [0, 0]); valid for n <= 256."""
    return split.images[:, 0, 0, 0].tolist()


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "mnist"
    return folder, write_dataset(folder)


@pytest.fixture
def no_tfds(monkeypatch):
    """Fail loudly (instead of reaching for the network) if a test falls back to tfds."""
    def fail(*args, **kwargs):
        raise AssertionError("the tfds source was used; the IDX folder should have been")
    monkeypatch.setattr(mnist_data, "load_tfds_split", fail)


# --------------------------------------------------------------------------- IDX round trip

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("scheme", ["dash", "dot"])
def test_idx_round_trip(tmp_path, scheme, gz, no_tfds):
    folder = tmp_path / "mnist"
    arrays = write_dataset(folder, n_train=12, n_test=5, scheme=scheme, gz=gz)
    expected_names = {idx_name(stem, scheme, gz) for stem in STEMS}
    assert {p.name for p in folder.iterdir()} == expected_names

    train = mnist_data.load_idx_split(folder, "train")
    test = mnist_data.load_idx_split(str(folder), "test")
    assert_split(train, arrays["train-images"], arrays["train-labels"])
    assert_split(test, arrays["t10k-images"], arrays["t10k-labels"])
    assert_split(mnist_data.load_test_split(str(folder)), arrays["t10k-images"], arrays["t10k-labels"])

    data = mnist_data.load_mnist(data_dir=str(folder), num_validation=3)
    assert data.source == f"idx:{folder}"
    assert (len(data.train), len(data.validation), len(data.test)) == (9, 3, 5)
    assert_split(data.test, arrays["t10k-images"], arrays["t10k-labels"])
    for split in (data.train, data.validation):
        assert split.images.shape[1:] == (28, 28, 1) and split.images.dtype == np.uint8
        assert split.labels.dtype == np.int32
        # every example keeps its own image and label
        np.testing.assert_array_equal(split.images[..., 0], arrays["train-images"][ids(split)])
        np.testing.assert_array_equal(split.labels, arrays["train-labels"][ids(split)])
    assert sorted(ids(data.train) + ids(data.validation)) == list(range(12))


def test_read_idx_and_write_idx_headers(tmp_path):
    images, labels = make_arrays(4, seed=3)
    mnist_data.write_idx(tmp_path / "im", images)
    mnist_data.write_idx(tmp_path / "lb", labels)
    raw = (tmp_path / "im").read_bytes()
    assert raw[:16] == (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (4, 28, 28))
    assert raw[16:] == images.tobytes()
    assert (tmp_path / "lb").read_bytes() == (2049).to_bytes(4, "big") + (4).to_bytes(4, "big") + labels.tobytes()
    np.testing.assert_array_equal(mnist_data.read_idx(tmp_path / "im", mnist_data.IMAGE_MAGIC), images)
    np.testing.assert_array_equal(mnist_data.read_idx(tmp_path / "lb", mnist_data.LABEL_MAGIC), labels)


def test_empty_split_loads(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    mnist_data.write_idx(folder / idx_name("t10k-images"), np.zeros((0, 28, 28), np.uint8))
    mnist_data.write_idx(folder / idx_name("t10k-labels"), np.zeros((0,), np.uint8))
    split = mnist_data.load_idx_split(folder, "test")
    assert split.images.shape == (0, 28, 28, 1) and split.labels.shape == (0,)
    assert split.labels.dtype == np.int32


def test_split_take():
    images, labels = make_arrays(6, seed=4)
    split = mnist_data.Split(images[..., None], labels.astype(np.int32))
    assert split.take(None) is split
    assert len(split.take(4)) == 4
    np.testing.assert_array_equal(split.take(4).images, split.images[:4])


# --------------------------------------------------------------------------- bad data

def path_re(path: Path) -> str:
    return re.escape(str(path))


def test_missing_folder(tmp_path, no_tfds):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(MNISTDataError, match=path_re(missing) + r": data folder does not exist.*MNIST_DATA_DIR"):
        mnist_data.load_mnist(data_dir=str(missing))
    with pytest.raises(MNISTDataError, match=path_re(missing) + r": data folder does not exist"):
        mnist_data.load_test_split(data_dir=str(missing))


@pytest.mark.parametrize("stem", list(STEMS))
def test_missing_file(dataset, stem, no_tfds):
    folder, _ = dataset
    (folder / idx_name(stem)).unlink()
    pattern = (path_re(folder) + rf": no {stem} file found \(looked for "
               + re.escape(idx_name(stem, "dash", True)) + r".*" + re.escape(idx_name(stem, "dot", False))
               + r"\).*MNIST_DATA_DIR")
    with pytest.raises(MNISTDataError, match=pattern):
        mnist_data.load_mnist(data_dir=str(folder))


@pytest.mark.parametrize("stem, expected", [("train-images", 2051), ("train-labels", 2049)])
def test_wrong_magic_number(dataset, stem, expected):
    folder, _ = dataset
    path = folder / idx_name(stem)
    payload = read_payload(path)
    write_payload(path, (1234).to_bytes(4, "big") + payload[4:])
    with pytest.raises(MNISTDataError, match=path_re(path) + rf": wrong magic number 1234, expected {expected}"):
        mnist_data.load_idx_split(folder, "train")


def test_swapped_image_and_label_files(dataset):
    folder, arrays = dataset
    path = folder / idx_name("train-labels")
    mnist_data.write_idx(path, arrays["train-images"])  # an image file where the labels belong
    with pytest.raises(MNISTDataError, match=path_re(path) + r": wrong magic number 2051, expected 2049"):
        mnist_data.load_idx_split(folder, "train")


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("stem, header", [("train-images", "[12, 28, 28]"), ("train-labels", "[12]")])
def test_truncated_payload(tmp_path, stem, header, gz):
    folder = tmp_path / "mnist"
    write_dataset(folder, gz=gz)
    path = folder / idx_name(stem, gz=gz)
    payload = read_payload(path)
    write_payload(path, payload[:-5])
    pattern = path_re(path) + rf": truncated: {len(payload) - 5} bytes, header {re.escape(header)} needs {len(payload)}"
    with pytest.raises(MNISTDataError, match=pattern):
        mnist_data.load_idx_split(folder, "train")


def test_truncated_header(dataset):
    folder, _ = dataset
    path = folder / idx_name("train-images")
    write_payload(path, read_payload(path)[:10])
    with pytest.raises(MNISTDataError, match=path_re(path) + r": truncated header \(10 bytes, expected at least 16\)"):
        mnist_data.load_idx_split(folder, "train")


def test_header_with_overflowing_dims_is_truncated(tmp_path):
    # Dims whose product is 2**64: with fixed-width int64 arithmetic the expected size
    # wraps to 0 and a bare 16-byte header would pass the size check.
    path = tmp_path / "corrupt-images"
    header = b"".join(v.to_bytes(4, "big") for v in (2051, 2 ** 22, 2 ** 21, 2 ** 21))
    path.write_bytes(header)
    with pytest.raises(MNISTDataError, match=path_re(path) + r": truncated: 16 bytes, header .* needs 18446744073709551632"):
        mnist_data.read_idx(path, mnist_data.IMAGE_MAGIC)


@pytest.mark.parametrize("stem", ["train-images", "train-labels"])
def test_trailing_bytes(dataset, stem):
    folder, _ = dataset
    path = folder / idx_name(stem)
    payload = read_payload(path)
    write_payload(path, payload + b"\x00\x01\x02")
    with pytest.raises(MNISTDataError, match=path_re(path) + rf": has trailing bytes: {len(payload) + 3} bytes"):
        mnist_data.load_idx_split(folder, "train")


def test_image_label_count_mismatch(dataset):
    folder, arrays = dataset
    mnist_data.write_idx(folder / idx_name("train-labels"), arrays["train-labels"][:11])
    pattern = (path_re(folder / idx_name("train-images"))
               + r": 12 images but " + re.escape(idx_name("train-labels")) + r" has 11 labels")
    with pytest.raises(MNISTDataError, match=pattern):
        mnist_data.load_idx_split(folder, "train")


def test_wrong_image_size(dataset):
    folder, _ = dataset
    path = folder / idx_name("t10k-images")
    mnist_data.write_idx(path, np.zeros((5, 20, 20), np.uint8))
    with pytest.raises(MNISTDataError, match=path_re(path) + r": images are 20x20, expected 28x28"):
        mnist_data.load_idx_split(folder, "test")


def test_label_out_of_range(dataset):
    folder, arrays = dataset
    path = folder / idx_name("t10k-labels")
    labels = arrays["t10k-labels"].copy()
    labels[2] = 10
    mnist_data.write_idx(path, labels)
    with pytest.raises(MNISTDataError, match=path_re(path) + r": label 10 outside 0-9"):
        mnist_data.load_idx_split(folder, "test")


def test_not_a_gzip_file(dataset):
    folder, _ = dataset
    path = folder / idx_name("train-images")
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(MNISTDataError, match=path_re(path) + r": cannot read \(.*gzip"):
        mnist_data.load_idx_split(folder, "train")


def test_gzip_stream_cut_short(dataset):
    folder, _ = dataset
    path = folder / idx_name("train-images")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MNISTDataError, match=path_re(path) + r": cannot read \(.*end-of-stream"):
        mnist_data.load_idx_split(folder, "train")


def test_gzip_crc_mismatch(dataset):
    folder, _ = dataset
    path = folder / idx_name("train-labels")
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # first byte of the CRC32 trailer
    path.write_bytes(bytes(raw))
    with pytest.raises(MNISTDataError, match=path_re(path) + r": cannot read \(CRC check failed"):
        mnist_data.load_idx_split(folder, "train")


def test_any_single_byte_gzip_corruption_is_caught(tmp_path):
    """Flip each byte of a small .gz IDX file: it must load unchanged or raise MNISTDataError.

    Corruption inside the deflate stream surfaces as zlib.error, not OSError/EOFError.
    """
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    labels = (np.arange(200) % 10).astype(np.uint8)
    mnist_data.write_idx(path, labels)
    raw = path.read_bytes()
    outcomes = {"same": 0, "error": 0}
    for i in range(len(raw)):
        corrupt = bytearray(raw)
        corrupt[i] ^= 0xFF
        path.write_bytes(bytes(corrupt))
        try:
            got = mnist_data.read_idx(path, mnist_data.LABEL_MAGIC)
        except MNISTDataError as e:
            assert str(path) in str(e)
            outcomes["error"] += 1
        else:
            np.testing.assert_array_equal(got, labels, err_msg=f"byte {i} flipped")
            outcomes["same"] += 1
    assert outcomes["error"] > len(raw) // 2, outcomes


# --------------------------------------------------------------------------- validation split

def numbered_train(n: int = 200) -> mnist_data.Split:
    images, _ = make_arrays(n, seed=5)
    ids_ = np.arange(n)
    return mnist_data.Split(images[..., None], (ids_ % 10).astype(np.int32))


def test_split_validation_reproducible_disjoint_and_covering():
    train = numbered_train(200)
    rest, val = mnist_data.split_validation(train, 30, seed=7)
    rest2, val2 = mnist_data.split_validation(train, 30, seed=7)
    for a, b in ((rest, rest2), (val, val2)):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert (len(rest), len(val)) == (170, 30)
    assert set(ids(rest)).isdisjoint(ids(val))
    assert sorted(ids(rest) + ids(val)) == list(range(200))
    for split in (rest, val):  # images and labels stay paired
        np.testing.assert_array_equal(split.labels, np.asarray(ids(split)) % 10)
        np.testing.assert_array_equal(split.images, train.images[ids(split)])
        assert split.labels.dtype == np.int32 and split.images.dtype == np.uint8


def test_split_validation_depends_on_seed():
    train = numbered_train(200)
    _, val_a = mnist_data.split_validation(train, 30, seed=0)
    _, val_b = mnist_data.split_validation(train, 30, seed=1)
    assert set(ids(val_a)) != set(ids(val_b))
    assert ids(val_a) != list(range(30))  # not simply the first examples


def test_split_validation_sizes():
    train = numbered_train(10)
    rest, val = mnist_data.split_validation(train, 0)
    assert (len(rest), len(val)) == (10, 0)
    assert val.images.shape == (0, 28, 28, 1)
    rest, val = mnist_data.split_validation(train, 9)
    assert (len(rest), len(val)) == (1, 9)
    for bad in (-1, 10, 11):
        with pytest.raises(MNISTDataError, match=rf"validation size {bad} must be in \[0, 10\)"):
            mnist_data.split_validation(train, bad)


def test_load_mnist_split_seed(dataset, no_tfds):
    folder, _ = dataset
    a = mnist_data.load_mnist(str(folder), num_validation=4, split_seed=3)
    b = mnist_data.load_mnist(str(folder), num_validation=4, split_seed=3)
    assert ids(a.validation) == ids(b.validation)
    assert sorted(ids(a.train) + ids(a.validation)) == list(range(12))
    seeds = {tuple(ids(mnist_data.load_mnist(str(folder), num_validation=4, split_seed=s).validation))
             for s in range(4)}
    assert len(seeds) > 1


# --------------------------------------------------------------------------- MNIST_DATA_DIR

def test_env_var_used_when_data_dir_is_none(dataset, monkeypatch, no_tfds):
    folder, arrays = dataset
    monkeypatch.setenv("MNIST_DATA_DIR", str(folder))
    assert mnist_data.resolve_data_dir(None) == str(folder)
    assert mnist_data.resolve_data_dir("") == str(folder)
    data = mnist_data.load_mnist(num_validation=2)
    assert data.source == f"idx:{folder}"
    assert_split(data.test, arrays["t10k-images"], arrays["t10k-labels"])
    assert_split(mnist_data.load_test_split(), arrays["t10k-images"], arrays["t10k-labels"])


def test_env_var_pointing_nowhere_is_reported(tmp_path, monkeypatch, no_tfds):
    missing = tmp_path / "env-dir-missing"
    monkeypatch.setenv("MNIST_DATA_DIR", str(missing))
    with pytest.raises(MNISTDataError, match=path_re(missing) + ": data folder does not exist"):
        mnist_data.load_mnist()


def test_explicit_data_dir_wins_over_env(dataset, tmp_path, monkeypatch, no_tfds):
    folder, _ = dataset
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "elsewhere"))
    assert mnist_data.resolve_data_dir(str(folder)) == str(folder)
    assert mnist_data.load_mnist(str(folder), num_validation=2).source == f"idx:{folder}"


def test_no_dir_and_no_env_and_no_tfds_copy_means_no_source(tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    assert mnist_data.resolve_data_dir(None) is None
    monkeypatch.setenv("MNIST_DATA_DIR", "")
    assert mnist_data.resolve_data_dir(None) is None
    assert mnist_data.find_source(None) is None
    assert mnist_data.find_source(None, tfds=True) == "tfds"
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path))
    assert mnist_data.find_source(None) == f"idx:{tmp_path}"
    assert mnist_data.find_source(None, tfds=True) == "tfds"  # the explicit flag wins over the variable
    with pytest.raises(MNISTDataError, match="--tfds and --data-dir are alternatives"):
        mnist_data.find_source(str(tmp_path), tfds=True)


def test_prepared_tfds_copy_counts_only_finished_versions(tmp_path):
    """Looked up from the files alone: mnist/<x.y.z>/dataset_info.json, newest version."""
    root = tmp_path / "tfds"
    assert mnist_data.prepared_tfds_copy(root) is None
    (root / "mnist" / "incomplete.AB12_3.0.1").mkdir(parents=True)
    (root / "mnist" / "incomplete.AB12_3.0.1" / "dataset_info.json").write_text("{}")
    (root / "mnist" / "3.0.1").mkdir()  # no dataset_info.json: not finished
    assert mnist_data.prepared_tfds_copy(root) is None
    for version in ("1.0.0", "3.0.1", "10.0.0-beta"):
        (root / "mnist" / version).mkdir(exist_ok=True)
        (root / "mnist" / version / "dataset_info.json").write_text("{}")
    assert mnist_data.prepared_tfds_copy(root) == root / "mnist" / "3.0.1"


def test_no_data_anywhere_is_one_line_naming_the_files(tmp_path, monkeypatch, no_network):
    """Training without data: one line naming --data-dir/MNIST_DATA_DIR, the four files and
    where they are; nothing written, no connection tried. The demos take the shipped sample."""
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    for load in (mnist_data.load_mnist, mnist_data.load_test_split):
        with pytest.raises(MNISTDataError) as info:
            load()
        message = str(info.value)
        assert "\n" not in message
        for needed in (*mnist_data.IDX_FILES, "--data-dir", "MNIST_DATA_DIR", "yann.lecun.com/exdb/mnist",
                       "a mirror", "--tfds", "pip install -r requirements-tfds.txt"):
            assert needed in message, needed
    split, name, note = mnist_data.load_test_or_sample()
    assert len(split) == 200 and name == mnist_data.SAMPLE_NAME
    assert note.startswith("note: no MNIST test set found") and "--data-dir DIR" in note and "\n" not in note
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- import isolation

def test_import_does_not_pull_in_tensorflow():
    code = ("import sys, mnist_data; "
            "assert 'tensorflow' not in sys.modules and 'tensorflow_datasets' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith('tensorflow'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _requirements(name: str) -> list[str]:
    """The pins a requirements file installs, following its ``-r`` includes."""
    pins = []
    for line in (REPO_ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            pins += _requirements(line[3:].strip())
        elif line:
            pins.append(line)
    return pins


def test_runtime_requirements_leave_tensorflow_out():
    """pip install -r requirements.txt: no TensorFlow (1.3 GB); the tfds extras are their own
    file, which the development requirements (tfds' mock data in these tests) include."""
    runtime = [p.split("==")[0].lower() for p in _requirements("requirements.txt")]
    assert not [p for p in runtime if p.startswith(("tensorflow", "tf-", "importlib"))], runtime
    tfds = [p.split("==")[0].lower() for p in _requirements("requirements-tfds.txt")]
    assert set(tfds) - set(runtime) == {"tensorflow-datasets", "tensorflow-cpu", "importlib_resources"}
    dev = [p.split("==")[0].lower() for p in _requirements("requirements-dev.txt")]
    assert set(tfds) <= set(dev) and "pytest-timeout" in dev
    assert all("==" in p for p in _requirements("requirements-dev.txt")), "every requirement pinned"


# --------------------------------------------------------------------------- tensorflow-datasets

@pytest.fixture
def no_network(monkeypatch):
    """Block Python-level connections; record any attempt so the test can fail on it."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == [], f"tried the network: {attempts}"


@pytest.fixture
def tfds():
    return pytest.importorskip("tensorflow_datasets")


def check_tfds_split(split: mnist_data.Split, n: int) -> None:
    assert split.images.shape == (n, 28, 28, 1)
    assert split.images.dtype == np.uint8
    assert split.labels.shape == (n,)
    assert split.labels.dtype == np.int32
    assert split.labels.min() >= 0 and split.labels.max() <= 9


@pytest.fixture
def tfds_dir(tmp_path, monkeypatch):
    """An empty tensorflow-datasets data folder (TFDS_DATA_DIR, not yet created); no MNIST_DATA_DIR."""
    root = tmp_path / "tfds"
    monkeypatch.setenv("TFDS_DATA_DIR", str(root))
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    return root


def test_tfds_mock_data(tfds, no_network, tfds_dir, monkeypatch):
    monkeypatch.setattr(mnist_data, "network_problem", lambda *a, **k: None)  # mock data: nothing is fetched
    n = 7
    with tfds.testing.mock_data(num_examples=n):
        # batch size 3 does not divide 7: the last, partial batch must be kept
        split = mnist_data.load_tfds_split("train", download=True, batch_size=3)
        data = mnist_data.load_mnist(data_dir=None, num_validation=2, tfds=True)
    check_tfds_split(split, n)
    assert split.images.max() > 0  # not an all-zero placeholder
    assert data.source == "tfds:mnist"
    assert (len(data.train), len(data.validation)) == (n - 2, 2)
    check_tfds_split(data.test, n)
    for part in (data.train, data.validation):
        check_tfds_split(part, len(part))
    # mock examples are deterministic, so train + validation (default batch size) is the
    # same set of examples that the batch-size-3 read produced
    def rows(s):
        return sorted(s.images[i].tobytes() + bytes([s.labels[i]]) for i in range(len(s)))
    assert sorted(rows(data.train) + rows(data.validation)) == rows(split)


def test_tfds_download_offline_fails_at_once_and_writes_nothing(tfds, tfds_dir, monkeypatch):
    """--tfds without a prepared copy: one connection attempt to tfds' server, then one line."""
    attempts = []

    def unreachable(address, *args, **kwargs):
        attempts.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    t0 = time.perf_counter()
    pattern = (r"--tfds: no prepared tensorflow-datasets copy of mnist in .*tfds, and storage.googleapis.com "
               r"cannot be reached to download it \(Network is unreachable\); pass --data-dir")
    with pytest.raises(MNISTDataError, match=pattern):
        mnist_data.load_mnist(tfds=True)
    with pytest.raises(MNISTDataError, match=pattern):
        mnist_data.load_test_split(tfds=True)
    assert time.perf_counter() - t0 < 20
    assert attempts == [mnist_data.TFDS_HOST] * 2
    assert not tfds_dir.exists()  # no tensorflow_datasets/mnist/incomplete.* or downloads/ left


def test_network_probe_gives_up_after_its_timeout(monkeypatch):
    import threading
    release = threading.Event()

    def hangs(*args, **kwargs):  # a name lookup that does not answer
        release.wait(30)
        raise OSError("released")

    monkeypatch.setattr(socket, "create_connection", hangs)
    t0 = time.perf_counter()
    try:
        assert mnist_data.network_problem(timeout=0.3) == "no answer in 0.3 s"
        assert time.perf_counter() - t0 < 2
    finally:
        release.set()


def test_a_failed_tfds_download_leaves_nothing_of_itself(tfds, tfds_dir, monkeypatch):
    """Whatever tfds wrote before failing (mnist/incomplete.*, downloads/*.tmp.*) is removed;
    what was in the folder before stays."""
    monkeypatch.setattr(mnist_data, "network_problem", lambda *a, **k: None)

    def fails_midway(self, *args, **kwargs):
        (tfds_dir / "mnist" / "incomplete.XY_3.0.1").mkdir(parents=True, exist_ok=True)
        (tfds_dir / "mnist" / "incomplete.XY_3.0.1" / "mnist-train.tfrecord").write_bytes(b"partial")
        (tfds_dir / "downloads" / "mnist").mkdir(parents=True, exist_ok=True)
        (tfds_dir / "downloads" / "mnist" / "train-images.gz.tmp.0a1b").write_bytes(b"partial")
        raise ConnectionError("Failed to download https://storage.googleapis.com/...\nretries exhausted")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fails_midway)
    with pytest.raises(MNISTDataError, match=r"could not download mnist \(Failed to download https://\S+\); pass"):
        mnist_data.load_tfds_split("train", download=True)
    assert not tfds_dir.exists()
    # A data folder in use: its other datasets and finished downloads are kept.
    (tfds_dir / "other_dataset" / "1.0.0").mkdir(parents=True)
    (tfds_dir / "downloads").mkdir()
    (tfds_dir / "downloads" / "finished.gz").write_bytes(b"kept")
    with pytest.raises(MNISTDataError, match="could not download mnist"):
        mnist_data.load_tfds_split("train", download=True)
    left = sorted(str(p.relative_to(tfds_dir)) for p in tfds_dir.rglob("*"))
    assert left == ["downloads", "downloads/finished.gz", "other_dataset", "other_dataset/1.0.0"]


def test_tfds_read_failure_is_one_line_with_hint(tfds, no_network, tfds_dir, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("cannot read the records\nsecond line of details")

    monkeypatch.setattr(mnist_data, "network_problem", lambda *a, **k: None)
    with tfds.testing.mock_data(num_examples=3):
        monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", broken)
        with pytest.raises(MNISTDataError, match=r"could not read mnist from .*\(cannot read the records\).*"
                                                 r"MNIST_DATA_DIR") as info:
            mnist_data.load_tfds_split("test", download=True)
    assert "second line" not in str(info.value)
    with pytest.raises(MNISTDataError, match="no prepared tensorflow-datasets copy of mnist"):
        mnist_data.load_tfds_split("test")  # download=False


def test_tfds_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(MNISTDataError, match=r"tensorflow-datasets is not installed.*"
                                             r"pip install -r requirements-tfds.txt.*MNIST_DATA_DIR"):
        mnist_data.load_tfds_split("test")


@pytest.fixture(scope="module")
def prepared_tfds(tmp_path_factory):
    """A real tensorflow-datasets mnist copy (TFRecords, dataset_info.json), prepared offline
    by tfds' own builder from 12 + 5 synthetic digits: its download is pointed at local files."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    base = tmp_path_factory.mktemp("tfds_prepared")
    arrays = write_dataset(base / "raw", n_train=12, n_test=5, gz=False)
    files = {"train_data": "train-images", "train_labels": "train-labels",
             "test_data": "t10k-images", "test_labels": "t10k-labels"}
    local = {key: str(base / "raw" / idx_name(stem, gz=False)) for key, stem in files.items()}
    with mock.patch.object(tfds_mnist, "_TRAIN_EXAMPLES", 12), mock.patch.object(tfds_mnist, "_TEST_EXAMPLES", 5), \
            mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                              lambda self, urls: {k: local[k] for k in urls}):
        tfds.builder("mnist", data_dir=str(base / "tfds")).download_and_prepare()
    return base / "tfds", arrays


def test_a_prepared_tfds_copy_is_used_when_no_folder_is_given(prepared_tfds, monkeypatch, no_network, tmp_path):
    root, arrays = prepared_tfds
    monkeypatch.setenv("TFDS_DATA_DIR", str(root))
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    assert mnist_data.prepared_tfds_copy() == root / "mnist" / "3.0.1"
    assert mnist_data.find_source(None) == "tfds"
    data = mnist_data.load_mnist(num_validation=2)
    assert data.source == "tfds:mnist"
    assert (len(data.train), len(data.validation), len(data.test)) == (10, 2, 5)

    def rows(images, labels):
        return sorted(images[i].reshape(-1).tobytes() + bytes([labels[i]]) for i in range(len(labels)))
    assert rows(data.test.images, data.test.labels) == rows(arrays["t10k-images"], arrays["t10k-labels"])
    train = mnist_data.Split(np.concatenate([data.train.images, data.validation.images]),
                             np.concatenate([data.train.labels, data.validation.labels]))
    assert rows(train.images, train.labels) == rows(arrays["train-images"], arrays["train-labels"])
    split, name, note = mnist_data.load_test_or_sample()
    assert (len(split), name, note) == (5, "tensorflow-datasets mnist test split", None)
    folder = tmp_path / "idx"
    write_dataset(folder, n_test=3)
    monkeypatch.setenv("MNIST_DATA_DIR", str(folder))  # a folder, when given, comes first
    assert len(mnist_data.load_test_split()) == 3


# --------------------------------------------------------------------------- the scripts without data or tfds

BLOCK_IMPORTS = """
import os, runpy, sys
blocked = set(sys.argv[1].split(","))

class Uninstalled:  # as if these packages were not installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Uninstalled())
sys.argv = sys.argv[2:]
sys.path[0] = os.path.dirname(sys.argv[0])
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_script(script: str, *args, cwd: Path, env: dict, blocked: str = "") -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("MNIST_DATA_DIR", "TFDS_DATA_DIR")}
    return subprocess.run([sys.executable, "-c", BLOCK_IMPORTS, blocked or "-", str(REPO_ROOT / script), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env={**base, **env})


def test_training_offline_without_data_fails_in_seconds_and_leaves_nothing(tmp_path):
    """The newcomer's first command, without data: one line, exit 2, within seconds (the time
    to import JAX), and no tensorflow_datasets/ (incomplete.* or downloads) left in HOME."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    t0 = time.perf_counter()
    proc = run_script("train_mnist.py", "--max-train-examples", "2000", "--epochs", "1", cwd=work,
                      env={"HOME": str(home)})
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no MNIST data: pass --data-dir or set MNIST_DATA_DIR")
    for needed in (*mnist_data.IDX_FILES, "yann.lecun.com/exdb/mnist", "pip install -r requirements-tfds.txt"):
        assert needed in lines[0]
    assert seconds < 30, seconds  # tfds' download with retries took 3.5 minutes here
    assert list(work.iterdir()) == [] and not (home / "tensorflow_datasets").exists()


@pytest.mark.parametrize("script, args, blocked, missing, copy", [
    ("train_mnist.py", ["--tfds", "--epochs", "1"], "tensorflow,tensorflow_datasets", "TensorFlow", False),
    ("train_mnist.py", ["--tfds", "--epochs", "1"], "tensorflow_datasets", "tensorflow-datasets", False),
    ("demo_mnist_xai.py", ["--tfds"], "tensorflow,tensorflow_datasets", "TensorFlow", False),
    ("train_mnist.py", ["--epochs", "1"], "tensorflow,tensorflow_datasets", "TensorFlow", True),
])
def test_tfds_source_without_tfds_installed_says_what_to_install(tmp_path, script, args, blocked, missing, copy):
    """--tfds, or a prepared copy found by its files, without the packages to read it: one line
    naming the requirements file, before any connection or download is tried."""
    tfds_root = tmp_path / "tfds"
    if copy:
        (tfds_root / "mnist" / "3.0.1").mkdir(parents=True)
        (tfds_root / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    proc = run_script(script, *args, "--out" if script.startswith("demo") else "--workdir", str(tmp_path / "out"),
                      cwd=tmp_path, env={"TFDS_DATA_DIR": str(tfds_root)}, blocked=blocked)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"error: {missing} is not installed" in lines[0]
    assert "pip install -r requirements-tfds.txt" in lines[0]


# --------------------------------------------------------------------------- real MNIST

def real_data_dir() -> Path:
    beside = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"  # ../shared/ of the checkout
    folder = os.environ.get("MNIST_DATA_DIR") or (str(beside) if beside.is_dir() else None)
    if not folder:
        pytest.skip("real MNIST not checked: MNIST_DATA_DIR is not set and ../shared/data/mnist is not "
                    "beside the checkout (point MNIST_DATA_DIR at a folder of the four IDX files)")
    folder = Path(folder)
    try:
        for stem, kind in STEMS.items():
            mnist_data.find_idx_file(folder, stem, kind)
    except MNISTDataError as e:
        pytest.skip(f"real MNIST not checked: MNIST_DATA_DIR={folder} lacks the IDX files "
                    f"({str(e).split(';')[0]})")
    return folder


def test_real_mnist():
    folder = real_data_dir()
    train = mnist_data.load_idx_split(folder, "train")
    test = mnist_data.load_idx_split(folder, "test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.images.shape == (60_000, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (10_000, 28, 28, 1) and test.labels.dtype == np.int32
    assert abs(train.images.mean() - 0.1307 * 255) < 0.5
    for split in (train, test):
        assert split.labels.min() == 0 and split.labels.max() == 9
        assert set(np.unique(split.labels).tolist()) == set(range(10))
    rest, val = mnist_data.split_validation(train, 5_000)
    assert (len(rest), len(val)) == (55_000, 5_000)


def test_an_empty_test_set_is_refused_where_it_would_be_evaluated(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    mnist_data.write_idx(folder / idx_name("t10k-images"), np.zeros((0, 28, 28), np.uint8))
    mnist_data.write_idx(folder / idx_name("t10k-labels"), np.zeros((0,), np.uint8))
    with pytest.raises(mnist_data.MNISTDataError, match="expected test images, the test files hold none"):
        mnist_data.load_test_split(folder)

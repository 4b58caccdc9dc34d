"""MNIST loading: a local folder of IDX files, or tensorflow-datasets.

Every loader returns uint8 arrays: images (N, 28, 28, 1) and labels (N,). Scale to
[0, 1] on the device (``images / 255``); the model standardises its input itself.

Sources, in order of preference (see ``load_mnist``):
1. a folder holding the four standard IDX files, gzipped or not, named either
   ``train-images-idx3-ubyte(.gz)`` or ``train-images.idx3-ubyte`` (and likewise for
   ``train-labels``/``t10k-images``/``t10k-labels``), given by ``data_dir`` or the
   ``MNIST_DATA_DIR`` environment variable;
2. tensorflow-datasets ``mnist`` (downloads on first use). tfds and TensorFlow are
   imported only here, only when this source is used.

MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges; licence CC BY-SA 3.0.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli import first_line

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
ROWS = COLS = 28
SPLIT_FILES = {
    "train": ("train-images", "train-labels"),
    "test": ("t10k-images", "t10k-labels"),
}
GET_DATA_HINT = (
    "get MNIST as the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into a folder and pass --data-dir "
    "or set MNIST_DATA_DIR, or run once with network access so tensorflow-datasets can download it"
)


class MNISTDataError(ValueError):
    """Bad or missing MNIST data; the message names the file and the fault."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28, 1) uint8
    labels: np.ndarray  # (N,) int32

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int | None) -> "Split":
        return self if n is None else Split(self.images[:n], self.labels[:n])


@dataclass(frozen=True)
class MNIST:
    train: Split
    validation: Split
    test: Split
    source: str


def _candidates(folder: Path, stem: str, kind: str) -> list[Path]:
    # train-images-idx3-ubyte(.gz) and train-images.idx3-ubyte(.gz)
    names = [f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"]
    return [folder / (n + ext) for n in names for ext in (".gz", "")]


def find_idx_file(folder: Path, stem: str, kind: str) -> Path:
    for path in _candidates(folder, stem, kind):
        if path.is_file():
            return path
    tried = ", ".join(p.name for p in _candidates(folder, stem, kind))
    raise MNISTDataError(f"{folder}: no {stem} file found (looked for {tried}); {GET_DATA_HINT}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: corrupt deflate data in a .gz
        raise MNISTDataError(f"{path}: cannot read ({e})") from None


def read_idx(path: str | os.PathLike, expected_magic: int) -> np.ndarray:
    """Parse one IDX file (uint8 data) into an array, checking magic number and size."""
    path = Path(path)
    data = _read_bytes(path)
    ndim = {IMAGE_MAGIC: 3, LABEL_MAGIC: 1}[expected_magic]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MNISTDataError(f"{path}: truncated header ({len(data)} bytes, expected at least {header})")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise MNISTDataError(f"{path}: wrong magic number {magic}, expected {expected_magic}")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = math.prod(dims) + header  # exact: np.prod's int64 wraps for corrupt huge dims
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise MNISTDataError(
            f"{path}: {what}: {len(data)} bytes, header {dims} needs {expected}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load_idx_split(folder: str | os.PathLike, split: str) -> Split:
    folder = Path(folder)
    image_stem, label_stem = SPLIT_FILES[split]
    image_path = find_idx_file(folder, image_stem, "idx3")
    label_path = find_idx_file(folder, label_stem, "idx1")
    images = read_idx(image_path, IMAGE_MAGIC)
    labels = read_idx(label_path, LABEL_MAGIC)
    if images.shape[1:] != (ROWS, COLS):
        raise MNISTDataError(
            f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, expected {ROWS}x{COLS}")
    if len(images) != len(labels):
        raise MNISTDataError(
            f"{image_path}: {len(images)} images but {label_path.name} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise MNISTDataError(f"{label_path}: label {int(labels.max())} outside 0-9")
    return Split(images[..., None], labels.astype(np.int32))


def load_tfds_split(split: str, data_dir: str | None = None, download: bool = True,
                    batch_size: int = 10_000) -> Split:
    """Read one split of tensorflow-datasets' ``mnist`` into numpy (tfds imported here only)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise MNISTDataError(
            f"tensorflow-datasets is not installed ({e}); {GET_DATA_HINT}") from None
    try:
        # A fixed batch size, not batch_size=-1: the latter aborts under tfds.testing.mock_data.
        ds = tfds.load("mnist", split=split, data_dir=data_dir, download=download,
                       as_supervised=True, batch_size=batch_size)
        images, labels = [], []
        for x, y in tfds.as_numpy(ds):
            images.append(np.asarray(x, np.uint8))
            labels.append(np.asarray(y, np.int32))
    except Exception as e:  # tfds raises many kinds (network, missing builder files, ...)
        raise MNISTDataError(f"tensorflow-datasets could not load mnist ({first_line(e)}); {GET_DATA_HINT}") from None
    images = np.concatenate(images) if images else np.zeros((0, ROWS, COLS, 1), np.uint8)
    labels = np.concatenate(labels) if labels else np.zeros((0,), np.int32)
    return Split(images.reshape(-1, ROWS, COLS, 1), labels)


def split_validation(train: Split, num_validation: int, seed: int = 0) -> tuple[Split, Split]:
    """Hold out ``num_validation`` training examples, chosen by a fixed permutation."""
    if not 0 <= num_validation < len(train):
        raise MNISTDataError(
            f"validation size {num_validation} must be in [0, {len(train)}) for {len(train)} training examples")
    perm = np.random.default_rng(seed).permutation(len(train))
    val, rest = np.sort(perm[:num_validation]), np.sort(perm[num_validation:])
    return (Split(train.images[rest], train.labels[rest]),
            Split(train.images[val], train.labels[val]))


def resolve_data_dir(data_dir: str | None) -> str | None:
    return data_dir if data_dir else (os.environ.get("MNIST_DATA_DIR") or None)


def load_mnist(data_dir: str | None = None, num_validation: int = 5_000, split_seed: int = 0,
               tfds_download: bool = True) -> MNIST:
    """Load train/validation/test. ``data_dir`` (or ``MNIST_DATA_DIR``) wins over tfds.

    The validation split is held out of the 60,000 training images with a fixed
    permutation (``split_seed``); the 10,000 test images are never trained on.
    """
    folder = resolve_data_dir(data_dir)
    if folder is not None:
        if not Path(folder).is_dir():
            raise MNISTDataError(f"{folder}: data folder does not exist; {GET_DATA_HINT}")
        train, test, source = load_idx_split(folder, "train"), load_idx_split(folder, "test"), f"idx:{folder}"
    else:
        train = load_tfds_split("train", download=tfds_download)
        test = load_tfds_split("test", download=tfds_download)
        source = "tfds:mnist"
    train, val = split_validation(train, num_validation, split_seed)
    return MNIST(train, val, test, source)


def load_test_split(data_dir: str | None = None, tfds_download: bool = True) -> Split:
    folder = resolve_data_dir(data_dir)
    if folder is not None:
        if not Path(folder).is_dir():
            raise MNISTDataError(f"{folder}: data folder does not exist; {GET_DATA_HINT}")
        split = load_idx_split(folder, "test")
        if len(split) == 0:  # a valid IDX file can hold none; nothing can be evaluated on it
            raise MNISTDataError(f"{folder}: expected test images, the test files hold none")
        return split
    return load_tfds_split("test", download=tfds_download)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in .gz). For tests and samples."""
    array = np.ascontiguousarray(array, np.uint8)
    magic = IMAGE_MAGIC if array.ndim == 3 else LABEL_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


SAMPLE_PATH = Path(__file__).resolve().parent / "sample_data" / "mnist_test_sample.npz"


def load_sample_digits(path: str | os.PathLike = SAMPLE_PATH) -> Split:
    """The 200 real MNIST test digits shipped in ``sample_data/`` (CC BY-SA 3.0), no download."""
    path = Path(path)
    try:
        with np.load(path) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise MNISTDataError(f"{path}: cannot read the sample digits ({e})") from None
    if images.shape[1:] != (ROWS, COLS, 1) or len(images) != len(labels):
        raise MNISTDataError(f"{path}: expected images (N, 28, 28, 1) and N labels, "
                             f"got {images.shape} and {labels.shape}")
    return Split(images.astype(np.uint8), labels.astype(np.int32))

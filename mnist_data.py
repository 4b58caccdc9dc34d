"""MNIST-shaped data (MNIST, Fashion-MNIST, KMNIST): a local folder of IDX files, or a
tensorflow-datasets copy.

``dataset`` (the scripts' ``--dataset``) is a tensorflow-datasets name, one of ``DATASETS``:
``mnist`` (the default), ``fashion_mnist`` or ``kmnist``; all three are 28x28 grayscale with
ten classes and ship in the same IDX format. ``class_names(dataset)`` gives their class
names, ``pixel_stats(split)`` the input normalisation a model trained on them stores.

Every loader returns uint8 arrays: images (N, 28, 28, 1) and labels (N,). Scale to
[0, 1] on the device (``images / 255``); the model standardises its input itself.

Where the data comes from (``DATA_RULE``, the same in every script):
1. a folder holding the four standard IDX files, gzipped or not, named either
   ``train-images-idx3-ubyte(.gz)`` or ``train-images.idx3-ubyte`` (and likewise for
   ``train-labels``/``t10k-images``/``t10k-labels``), given by ``data_dir`` or the
   ``MNIST_DATA_DIR`` environment variable (``FASHION_MNIST_DATA_DIR``, ``KMNIST_DATA_DIR``
   for the other datasets: ``data_dir_variable(dataset)``);
2. else a copy that tensorflow-datasets has already prepared (``<dataset>/<version>/`` under
   ``$TFDS_DATA_DIR``, default ``~/tensorflow_datasets``);
3. else nothing: training stops at once with one line saying where to get the four files
   (for MNIST the demos and evaluate_xai.py fall back to the 200 digits shipped in sample_data/).
   tensorflow-datasets downloads MNIST only when asked (``tfds=True``, the scripts'
   ``--tfds``), after a quick check that its server can be reached.

tensorflow-datasets and TensorFlow are optional (``pip install -r requirements-tfds.txt``)
and imported only here, only when a tfds copy is read or downloaded.

MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges; licence CC BY-SA 3.0.
Fashion-MNIST: Han Xiao, Kashif Rasul, Roland Vollgraf (Zalando Research); MIT licence.
KMNIST: Tarin Clanuwat et al. (ROIS-DS CODH), "Deep Learning for Classical Japanese
Literature", 2018; CC BY-SA 4.0.
"""
from __future__ import annotations

import gzip
import math
import os
import shutil
import socket
import threading
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
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MNIST_URLS = ("http://yann.lecun.com/exdb/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/")
TFDS_INSTALL = "pip install -r requirements-tfds.txt"
DATA_FALLBACK = "$MNIST_DATA_DIR, else a copy tensorflow-datasets has prepared ($TFDS_DATA_DIR, default ~/tensorflow_datasets)"
DATA_RULE = f"--data-dir if given, else {DATA_FALLBACK}"
GET_DATA_HINT = (
    f"pass --data-dir or set MNIST_DATA_DIR to a folder holding the four IDX files "
    f"({', '.join(IDX_FILES)}) from {MNIST_URLS[0]} or a mirror such as {MNIST_URLS[1]}"
)
NO_DATA_HINT = f"{GET_DATA_HINT}; or pass --tfds to download them with tensorflow-datasets ({TFDS_INSTALL})"
# tensorflow-datasets' mnist downloads from here; a connection is tried first (PROBE_SECONDS),
# so that offline its download fails at once instead of after minutes of retries.
TFDS_HOST = ("storage.googleapis.com", 443)
PROBE_SECONDS = 3.0

DATASETS = ("mnist", "fashion_mnist", "kmnist")  # tensorflow-datasets' names, the scripts' --dataset
DISPLAY_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "kmnist": "KMNIST"}
DIGITS = tuple(str(d) for d in range(10))  # MNIST's classes, and the names when a checkpoint stores none
# The class names of the datasets read from an IDX folder (a tfds copy gives its own,
# info.features["label"].names; tests check these against tfds'):
# fashion_mnist: the "Labels" table of github.com/zalandoresearch/fashion-mnist (README);
# kmnist: the romanised characters of kmnist_classmap.csv, github.com/rois-codh/kmnist.
IDX_CLASS_NAMES = {
    "mnist": DIGITS,
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}
# Where each dataset's IDX files come from, and the host tfds downloads them from (probed first).
DATASET_URLS = {"mnist": MNIST_URLS,
                "fashion_mnist": ("https://github.com/zalandoresearch/fashion-mnist",),
                "kmnist": ("https://github.com/rois-codh/kmnist",)}
CREDITS = {"mnist": "MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges; CC BY-SA 3.0.",
           "fashion_mnist": "Fashion-MNIST: Han Xiao, Kashif Rasul, Roland Vollgraf (Zalando Research); MIT licence.",
           "kmnist": "KMNIST: Tarin Clanuwat et al. (ROIS-DS Center for Open Data in the Humanities); CC BY-SA 4.0."}
TFDS_HOSTS = {"mnist": TFDS_HOST, "fashion_mnist": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
              "kmnist": ("codh.rois.ac.jp", 80)}


def check_dataset(dataset: str) -> str:
    """``dataset`` if it is one of ``DATASETS``, else MNISTDataError (one line)."""
    if dataset not in DATASETS:
        raise MNISTDataError(f"--dataset {dataset}: expected one of {', '.join(DATASETS)}")
    return dataset


def data_dir_variable(dataset: str = "mnist") -> str:
    """The environment variable naming a dataset's IDX folder: MNIST_DATA_DIR,
    FASHION_MNIST_DATA_DIR, KMNIST_DATA_DIR (an MNIST folder never stands in for another)."""
    return f"{check_dataset(dataset).upper()}_DATA_DIR"


def class_names(dataset: str = "mnist") -> tuple[str, ...]:
    """The ten class names of an IDX-folder dataset (see ``IDX_CLASS_NAMES``)."""
    return IDX_CLASS_NAMES[check_dataset(dataset)]


def get_data_hint(dataset: str = "mnist") -> str:
    if dataset == "mnist":
        return GET_DATA_HINT
    return (f"pass --data-dir or set {data_dir_variable(dataset)} to a folder holding the four "
            f"{DISPLAY_NAMES[dataset]} IDX files ({', '.join(IDX_FILES)}) from {DATASET_URLS[dataset][0]}")


def no_data_hint(dataset: str = "mnist") -> str:
    return NO_DATA_HINT if dataset == "mnist" else \
        f"{get_data_hint(dataset)}; or pass --tfds to download them with tensorflow-datasets ({TFDS_INSTALL})"


def pixel_stats(split: "Split") -> tuple[float, float]:
    """Mean and standard deviation (population) of the pixels of ``split`` scaled to [0, 1],
    exactly (integer sums), as floats: the input normalisation a model trained on it keeps.
    MNISTDataError for no images or images all of one value (nothing to standardise by)."""
    images = np.asarray(split.images)
    n = images.size
    if n == 0:
        raise MNISTDataError("no training images to compute the input normalisation from")
    # Exact integer sums from the histogram of the uint8 pixels, taken in chunks of 64 K pixels:
    # an int64 einsum over MNIST's 43 M pixels took 9 s of a cold start (this VM pays for every
    # fresh page of its 345 MB temporaries), one bincount of them 3.4 s, the chunks 0.13 s.
    flat = images.reshape(-1)
    counts = np.zeros(256, np.int64)
    for start in range(0, n, 1 << 16):
        counts += np.bincount(flat[start:start + (1 << 16)], minlength=256)
    values = np.arange(256, dtype=np.int64)  # int64 holds 255**2 x n below 1.4e14 pixels
    total, squares = int(counts @ values), int(counts @ (values * values))
    mean = total / (255.0 * n)
    var = max(squares / (255.0 ** 2 * n) - mean * mean, 0.0)
    if var <= 0:
        raise MNISTDataError(f"the {len(split)} training images all have the same pixel value "
                             f"({total // n}); expected images to standardise")
    return float(mean), float(math.sqrt(var))


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
    dataset: str = "mnist"  # one of DATASETS
    class_names: tuple[str, ...] = DIGITS


def _candidates(folder: Path, stem: str, kind: str) -> list[Path]:
    # train-images-idx3-ubyte(.gz) and train-images.idx3-ubyte(.gz)
    names = [f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"]
    return [folder / (n + ext) for n in names for ext in (".gz", "")]


def find_idx_file(folder: Path, stem: str, kind: str, hint: str = GET_DATA_HINT) -> Path:
    for path in _candidates(folder, stem, kind):
        if path.is_file():
            return path
    tried = ", ".join(p.name for p in _candidates(folder, stem, kind))
    raise MNISTDataError(f"{folder}: no {stem} file found (looked for {tried}); {hint}")


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


def load_idx_split(folder: str | os.PathLike, split: str, dataset: str = "mnist") -> Split:
    folder = Path(folder)
    image_stem, label_stem = SPLIT_FILES[split]
    image_path = find_idx_file(folder, image_stem, "idx3", get_data_hint(dataset))
    label_path = find_idx_file(folder, label_stem, "idx1", get_data_hint(dataset))
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


def tfds_data_dir() -> Path:
    """Where tensorflow-datasets keeps its prepared datasets: ``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets`` (its own rule, read here at call time)."""
    return Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")


def _is_version(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 3 and all(p.isdigit() for p in parts)


def prepared_tfds_copy(data_dir: str | os.PathLike | None = None, dataset: str = "mnist") -> Path | None:
    """The folder of a tensorflow-datasets copy of ``dataset`` that finished preparing
    (``<dataset>/<version>/dataset_info.json``; ``incomplete.*`` folders do not count), newest
    version first; None if there is none. Looks at the files only: imports nothing."""
    root = Path(data_dir) if data_dir else tfds_data_dir()
    try:
        versions = [p for p in (root / check_dataset(dataset)).iterdir()
                    if _is_version(p.name) and (p / "dataset_info.json").is_file()]
    except OSError:
        return None
    return max(versions, key=lambda p: tuple(int(v) for v in p.name.split(".")), default=None)


def _not_installed(name: str, error) -> MNISTDataError:
    return MNISTDataError(f"{name} is not installed ({error}); the tensorflow-datasets source needs "
                          f"tensorflow-datasets and TensorFlow: {TFDS_INSTALL}; or {GET_DATA_HINT}")


TFDS_MODULES = (("tensorflow", "TensorFlow"), ("tensorflow_datasets", "tensorflow-datasets"))


def check_tfds_installed() -> None:
    """MNISTDataError naming what to install unless TensorFlow and tensorflow-datasets are
    there (looked up, not imported: TensorFlow takes seconds to import)."""
    import importlib.util

    for module, name in TFDS_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError) as e:
            raise _not_installed(name, e) from None
        if not found:
            raise _not_installed(name, f"no module named {module!r}")


def _import_tfds():
    """tensorflow_datasets, or MNISTDataError naming what to install (TensorFlow is checked
    first: tfds needs it to build and read mnist, and imports it lazily)."""
    import importlib

    # No TensorFlow start-up logs on stderr (oneDNN's notice ignores TF_CPP_MIN_LOG_LEVEL; its
    # custom CPU kernels are irrelevant to reading records), so an error stays one line.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    for module, name in TFDS_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise _not_installed(name, e) from None
    import tensorflow_datasets as tfds
    return tfds


def network_problem(host: tuple[str, int] = TFDS_HOST, timeout: float = PROBE_SECONDS) -> str | None:
    """None if a TCP connection to ``host`` opens within ``timeout`` seconds, else why not.
    (The name lookup has no timeout of its own, hence the thread.)"""
    outcome: list[str | None] = []

    def probe():
        try:
            socket.create_connection(host, timeout=timeout).close()
            outcome.append(None)
        except Exception as e:  # OSError mostly: no route, no name, refused
            outcome.append(getattr(e, "strerror", None) or first_line(e))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer in {timeout:g} s"


def check_tfds_server(root: Path, dataset: str = "mnist") -> None:
    """MNISTDataError, within ``PROBE_SECONDS``, if tfds' download server cannot be reached."""
    host = TFDS_HOSTS[dataset]
    problem = network_problem(host)
    if problem is not None:
        raise MNISTDataError(f"--tfds: no prepared tensorflow-datasets copy of {dataset} in {root}, and "
                             f"{host[0]} cannot be reached to download it ({problem}); {get_data_hint(dataset)}")


def _download(builder, root: Path, dataset: str = "mnist") -> None:
    """tensorflow-datasets' download and preparation of ``dataset`` into ``root``; offline it
    fails within seconds, and a failure leaves nothing of the attempt behind."""
    check_tfds_server(root, dataset)
    created = [p for p in (root / dataset, root / "downloads" / dataset, root / "downloads" / "extracted",
                           root / "downloads", root) if not p.exists()]
    try:
        builder.download_and_prepare()
    except BaseException as e:  # Ctrl-C included: no half-prepared copy stays behind
        remove_partial_tfds(root, created, dataset)
        if not isinstance(e, Exception):
            raise
        raise MNISTDataError(f"tensorflow-datasets could not download {dataset} ({first_line(e)}); "
                             f"{get_data_hint(dataset)}") from None


def remove_partial_tfds(root: Path, created=(), dataset: str = "mnist") -> None:
    """Remove what a failed tensorflow-datasets download of ``dataset`` leaves under ``root``:
    the ``<dataset>/incomplete.*`` folders, partial downloads (``*.tmp.*``), and the folders in
    ``created`` (made by that attempt, so nothing else is in them)."""
    for folder in created:
        shutil.rmtree(folder, ignore_errors=True)
    for partial in (root / dataset).glob("incomplete.*"):
        shutil.rmtree(partial, ignore_errors=True)
    if (root / "downloads").is_dir():
        for partial in (root / "downloads").rglob("*.tmp.*"):
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)


def tfds_builder(data_dir: str | os.PathLike | None = None, download: bool = False, dataset: str = "mnist"):
    """tensorflow-datasets' builder of ``dataset`` with a prepared copy in ``data_dir`` (default
    ``tfds_data_dir()``), downloading it first when ``download`` (see ``_download``); without
    one, MNISTDataError naming the dataset. tfds is imported here only."""
    check_dataset(dataset)
    root = Path(data_dir) if data_dir else tfds_data_dir()
    check_tfds_installed()
    if download and prepared_tfds_copy(root, dataset) is None:
        check_tfds_server(root, dataset)  # offline: one line now, before seconds of importing TensorFlow
    tfds = _import_tfds()
    try:
        builder = tfds.builder(dataset, data_dir=str(root))
        prepared = Path(builder.data_path).is_dir() and builder.is_prepared()  # no absl warning if absent
    except Exception as e:  # tfds raises many kinds
        raise MNISTDataError(f"tensorflow-datasets could not open {dataset} in {root} ({first_line(e)}); "
                             f"{get_data_hint(dataset)}") from None
    if not prepared:
        if not download:
            raise MNISTDataError(f"no prepared tensorflow-datasets copy of {dataset} in {root}; "
                                 f"{no_data_hint(dataset)}")
        _download(builder, root, dataset)
    return builder


def tfds_class_names(builder) -> tuple[str, ...]:
    """The class names tensorflow-datasets gives a builder's labels (``info.features['label'].names``;
    "0".."9" for mnist, whose labels are unnamed)."""
    return tuple(str(n) for n in builder.info.features["label"].names)


def load_tfds_split(split: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                    batch_size: int = 10_000, dataset: str = "mnist", builder=None) -> Split:
    """Read one split of tensorflow-datasets' ``dataset`` (default ``mnist``) into numpy.

    ``data_dir``: tfds' data folder (default ``tfds_data_dir()``). Without a prepared copy
    there, ``download=True`` downloads it (see ``_download``), else MNISTDataError.
    ``builder``: one ``tfds_builder`` returned already.
    """
    root = Path(data_dir) if data_dir else tfds_data_dir()
    builder = builder or tfds_builder(root, download, dataset)
    tfds = _import_tfds()
    try:
        # A fixed batch size, not batch_size=-1: the latter aborts under tfds.testing.mock_data.
        ds = builder.as_dataset(split=split, as_supervised=True, batch_size=batch_size)
        images, labels = [], []
        for x, y in tfds.as_numpy(ds):
            images.append(np.asarray(x, np.uint8))
            labels.append(np.asarray(y, np.int32))
    except Exception as e:  # a damaged copy, a missing split, ...
        raise MNISTDataError(f"tensorflow-datasets could not read {dataset} from {root} ({first_line(e)}); "
                             f"{get_data_hint(dataset)}") from None
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


def resolve_data_dir(data_dir: str | None, dataset: str = "mnist") -> str | None:
    return data_dir if data_dir else (os.environ.get(data_dir_variable(dataset)) or None)


def find_source(data_dir: str | None = None, tfds: bool = False, dataset: str = "mnist") -> str | None:
    """Which source ``DATA_RULE`` picks: ``"idx:<folder>"``, ``"tfds"`` or None (none found).

    ``tfds=True`` (the scripts' ``--tfds``) asks for tensorflow-datasets, downloading if need
    be; it cannot be combined with an explicit ``data_dir`` (MNIST_DATA_DIR gives way to it).
    ``dataset``'s folder variable is ``data_dir_variable(dataset)``, its tfds copy ``<dataset>/``.
    """
    check_dataset(dataset)
    if tfds:
        if data_dir:
            raise MNISTDataError("--tfds and --data-dir are alternatives; give one")
        return "tfds"
    folder = resolve_data_dir(data_dir, dataset)
    if folder is not None:
        return f"idx:{folder}"
    return "tfds" if prepared_tfds_copy(None, dataset) is not None else None


def _idx_folder(source: str, dataset: str = "mnist") -> str:
    folder = source[len("idx:"):]
    if not Path(folder).is_dir():
        raise MNISTDataError(f"{folder}: data folder does not exist; {get_data_hint(dataset)}")
    return folder


def load_mnist(data_dir: str | None = None, num_validation: int = 5_000, split_seed: int = 0,
               tfds: bool = False, dataset: str = "mnist") -> MNIST:
    """Load train/validation/test from the source ``find_source`` picks (see ``DATA_RULE``);
    with none, MNISTDataError saying where to get the files, before anything is imported.

    The validation split is held out of the 60,000 training images with a fixed
    permutation (``split_seed``); the 10,000 test images are never trained on.
    ``dataset``: one of ``DATASETS``; its class names come with it (tfds' own for a tfds copy,
    ``IDX_CLASS_NAMES`` for a folder).
    """
    source = find_source(data_dir, tfds, dataset)
    if source is None:
        raise MNISTDataError(f"no {DISPLAY_NAMES[dataset]} data: {no_data_hint(dataset)}")
    if source == "tfds":
        builder = tfds_builder(None, tfds, dataset)
        train = load_tfds_split("train", dataset=dataset, builder=builder)
        test = load_tfds_split("test", dataset=dataset, builder=builder)
        names = tfds_class_names(builder)
        source = f"tfds:{dataset}"
    else:
        folder = _idx_folder(source, dataset)
        train, test = load_idx_split(folder, "train", dataset), load_idx_split(folder, "test", dataset)
        names = class_names(dataset)
    train, val = split_validation(train, num_validation, split_seed)
    return MNIST(train, val, test, source, dataset, names)


def load_test_split(data_dir: str | None = None, tfds: bool = False, dataset: str = "mnist") -> Split:
    """The test split from the source ``find_source`` picks; MNISTDataError if there is none."""
    source = find_source(data_dir, tfds, dataset)
    if source is None:
        raise MNISTDataError(f"no {DISPLAY_NAMES[dataset]} test set: {no_data_hint(dataset)}")
    if source == "tfds":
        split = load_tfds_split("test", download=tfds, dataset=dataset)
        where = "the tensorflow-datasets copy"
    else:
        where = _idx_folder(source, dataset)
        split = load_idx_split(where, "test", dataset)
    if len(split) == 0:  # a valid IDX file can hold none; nothing can be evaluated on it
        raise MNISTDataError(f"{where}: expected test images, the test files hold none")
    return split


SAMPLE_NAME = "the 200 shipped MNIST test digits (sample_data/)"


def load_test_or_sample(data_dir: str | None = None, tfds: bool = False,
                        dataset: str = "mnist") -> tuple[Split, str, str | None]:
    """The demos' and evaluate_xai's data: the test split of ``dataset`` by ``DATA_RULE``, else
    (MNIST only: the shipped digits are MNIST's) the shipped sample. Returns ``(split,
    description, note)``; the note (None with real test data) says that the sample stands in
    and how to use the full test set. For another dataset without data, MNISTDataError."""
    source = find_source(data_dir, tfds, dataset)
    if source is None and dataset != "mnist":
        raise MNISTDataError(f"no {DISPLAY_NAMES[dataset]} test set (the shipped sample digits are MNIST's): "
                             f"{no_data_hint(dataset)}")
    if source is None:
        note = ("note: no MNIST test set found (--data-dir, $MNIST_DATA_DIR or a prepared tensorflow-datasets "
                f"copy), so {SAMPLE_NAME} are used; for all 10,000 pass --data-dir DIR (a folder with the four "
                f"IDX files from {MNIST_URLS[0]} or a mirror) or --tfds")
        return load_sample_digits(), SAMPLE_NAME, note
    split = load_test_split(data_dir, tfds, dataset)
    name = (f"tensorflow-datasets {dataset} test split" if source == "tfds"
            else f"{DISPLAY_NAMES[dataset]} test set ({source[len('idx:'):]})")
    return split, name, None


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

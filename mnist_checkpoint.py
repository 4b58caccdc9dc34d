"""Orbax checkpoints for the MNIST CNN: save with metadata, load the model from the checkpoint alone.

Layout written by ``train_mnist.py`` (an orbax ``CheckpointManager`` directory)::

    checkpoints/
      ckpt/<step>/state   params, batch_stats, opt_state, step (orbax, written atomically)
      ckpt/<step>/meta    JSON: model constructor arguments (with the input normalisation
                          input_mean/input_std), training config, dataset, class_names,
                          epoch, metrics, temperature (see ``checkpoint_info``)
      metrics.json        per-epoch history and the final test accuracy
      training_curves.png

``load_checkpoint`` accepts the workdir, its ``ckpt`` folder, or one ``<step>`` folder.
For a workdir it returns the checkpoint with the best validation accuracy (of equals, the
latest; the latest if none recorded a metric).

A run killed at any moment leaves a loadable workdir: orbax writes a step into a temporary
folder and renames it (removed when the workdir is next opened), and a superseded step is
first renamed into ``ckpt/.superseded/`` (one rename), then deleted there, so a half-deleted
step is never taken for a checkpoint (``benchmarks/stress_kill.py`` kills runs to check).

Which checkpoint (``CHECKPOINT_RULE``): the one named by ``--checkpoint`` (``load_checkpoint(path)``),
else always the shipped ``pretrained/``. Training writes into ``checkpoints/`` by default, a
folder the explaining scripts never read unless told, so a training run never changes what
the demos show behind the user's back. Every script prints the checkpoint it explains
(``describe``) and its figures and reports name it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from cli import atomic_folder, first_line, is_temporary_of, swap_in  # noqa: F401  (swap_in: once defined here)
from mnist_cnn_model import MNISTCNN, shape_mismatch

CKPT_SUBDIR = "ckpt"
SUPERSEDED_SUBDIR = ".superseded"  # under ckpt/: steps orbax has let go, renamed here, then deleted
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
# The rule's words live in cli (no JAX there), so --help answers before JAX is imported.
from cli import CHECKPOINT_FALLBACK, CHECKPOINT_RULE, DEFAULT_WORKDIR  # noqa: E402,F401

GET_CHECKPOINT_HINT = "train one with `python train_mnist.py` or use the shipped one in pretrained/"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def default_checkpoint() -> str:
    """The checkpoint a script explains without --checkpoint: always the shipped ``pretrained/``
    (``CHECKPOINT_RULE``), whatever a training run has written into ``checkpoints/``."""
    return str(PRETRAINED_DIR)


def describe(path: str | os.PathLike | None, meta: dict) -> str:
    """One line naming a loaded checkpoint: its folder (relative to the current one where it
    can be), "shipped" for pretrained/, its dataset and test accuracy when recorded."""
    step_dir = resolve_checkpoint_dir(PRETRAINED_DIR if path is None else path).resolve()
    shipped = PRETRAINED_DIR.resolve() in (step_dir, *step_dir.parents)
    try:
        where = str(step_dir.relative_to(Path.cwd().resolve()))
    except ValueError:
        where = str(step_dir)
    if shipped:
        where = "pretrained/ (shipped)"
    parts = [checkpoint_info(meta).dataset]
    acc = meta.get("test_accuracy")
    if isinstance(acc, (int, float)):
        parts.append(f"test accuracy {100 * acc:.2f}%")
    return f"{where}, {', '.join(parts)}"


def make_manager(workdir: str | os.PathLike, read_only: bool = False) -> ocp.CheckpointManager:
    """A manager that keeps the latest checkpoint and the one with the best validation accuracy.

    Opening it for writing removes what a killed run left: orbax's temporary folders of an
    unfinished step, and superseded steps not yet deleted.
    """
    root = Path(workdir).absolute() / CKPT_SUBDIR
    if not read_only:
        remove_superseded(root)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=LatestAndBest(root),
        enable_async_checkpointing=False,
        read_only=read_only,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
        # A superseded step is renamed out of the way first (atomic), not deleted file by
        # file in place, where a kill would leave a step folder with half its files.
        todelete_subdir=None if read_only else SUPERSEDED_SUBDIR,
    )
    return ocp.CheckpointManager(root, options=options)


class LatestAndBest:
    """orbax preservation policy: keep the latest step and the one with the best validation
    accuracy (of equals, the latest), the accuracy read from each step's own meta.

    orbax's BestN ranks by the metrics given to ``save``, which it keeps in memory only (with
    a preservation policy it writes none to disk): after a resume it knew none, and deleted
    the best epoch at the next save.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def should_preserve(self, checkpoints, *, context=None):
        def accuracy(info):
            if info.metrics and info.metrics.get("val_accuracy") is not None:
                return info.metrics["val_accuracy"]
            return _read_meta(self.root / str(info.step)).get("val_accuracy")

        scored = [(acc, info.step) for info in checkpoints if (acc := accuracy(info)) is not None]
        keep = {max(info.step for info in checkpoints)} if checkpoints else set()
        if scored:
            keep.add(max(scored)[1])
        return [info.step in keep for info in checkpoints]


def remove_superseded(root: Path) -> None:
    """Delete the steps orbax moved into ``<root>/.superseded/`` (after each save)."""
    shutil.rmtree(Path(root) / SUPERSEDED_SUBDIR, ignore_errors=True)


def save(manager: ocp.CheckpointManager, step: int, state: dict, meta: dict,
         val_accuracy: float | None) -> None:
    """Write one checkpoint (atomically: orbax renames a finished temporary folder). One of the
    same step is replaced: Ctrl-C after an epoch's last step saves it before its validation."""
    metrics = None if val_accuracy is None else {"val_accuracy": float(val_accuracy)}
    if step in manager.all_steps():
        manager.delete(step)  # renamed into .superseded/ first: a kill now leaves the earlier steps
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)),
                 metrics=metrics, force=True)
    manager.wait_until_finished()
    remove_superseded(Path(manager.directory))


def restore_latest(manager: ocp.CheckpointManager, target: dict):
    """Restore the latest checkpoint into the structure of ``target``; None if there is none."""
    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                        meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]


def _read_meta(step_dir: Path) -> dict:
    try:
        meta = json.loads((step_dir / "meta" / "metadata").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def step_dirs(root: Path) -> list[Path]:
    """The finished checkpoints under a ``ckpt`` folder, oldest step first."""
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """Find the step folder to load: a step folder itself, or the best one under a workdir."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint there; {GET_CHECKPOINT_HINT}")
    if (path / "meta").is_dir() and (path / "state").is_dir():
        return path
    root = path / CKPT_SUBDIR if (path / CKPT_SUBDIR).is_dir() else path
    steps = step_dirs(root) if root.is_dir() else []
    if not steps:
        raise CheckpointError(f"{path}: no finished checkpoint found in it; {GET_CHECKPOINT_HINT}")
    best, best_acc = steps[-1], -1.0
    for step_dir in steps:
        acc = _read_meta(step_dir).get("val_accuracy")
        if acc is not None and acc >= best_acc:  # of equals the latest, as orbax keeps
            best, best_acc = step_dir, acc
    return best


def load_checkpoint(path: str | os.PathLike | None = None):
    """Return ``(params, batch_stats, model, meta)`` rebuilt from a checkpoint alone.

    ``path`` defaults to the shipped checkpoint in ``pretrained/``. The model is built with the
    stored input normalisation (MNIST's when none is stored); ``checkpoint_info(meta)`` gives
    the dataset, class names and temperature (checked here already).
    """
    step_dir = resolve_checkpoint_dir(PRETRAINED_DIR if path is None else path).absolute()  # orbax wants absolute
    try:
        meta = ocp.JsonCheckpointHandler().restore(step_dir / "meta")
        state = ocp.StandardCheckpointer().restore(step_dir / "state")
    except Exception as e:  # orbax/tensorstore raise many types for unreadable folders
        msg = first_line(e)
        raise CheckpointError(f"{step_dir}: cannot read checkpoint ({msg}); {GET_CHECKPOINT_HINT}") from None
    if "model" not in meta or "params" not in state or "batch_stats" not in state:
        raise CheckpointError(f"{step_dir}: not an MNIST CNN checkpoint (no model config or weights)")
    if not isinstance(meta["model"], dict):
        raise CheckpointError(f"{step_dir}: model config: expected a JSON object, got {meta['model']!r:.60}")
    params = jax.tree_util.tree_map(np.asarray, state["params"])
    batch_stats = jax.tree_util.tree_map(np.asarray, state["batch_stats"])
    try:
        model = MNISTCNN.from_config(meta["model"])
        check_fits(model, params, batch_stats, where=str(step_dir))
    except CheckpointError:
        raise
    except Exception as e:  # a hand-edited config: wrong types, impossible widths, unknown dtype
        raise CheckpointError(f"{step_dir}: model config {meta['model']} does not build a model ({first_line(e)})") from None
    bad = [k for k, v in _flatten({"params": params, "batch_stats": batch_stats}) if not np.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{step_dir}: weights hold NaN/inf values ({bad[0]}{' and more' if len(bad) > 1 else ''}; "
                              "a diverged training run?)")
    checkpoint_info(meta, str(step_dir))  # a bad dataset, class_names or temperature: one line now
    return params, batch_stats, model, meta


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's metadata says about the data it was trained on and its confidences.

    Metadata written before these were stored (the shipped pretrained/) gives MNIST, the digits
    "0".."9" and no temperature; the model's normalisation defaults likewise (MNISTCNN).
    """
    dataset: str  # a tensorflow-datasets name, mnist_data.DATASETS
    class_names: tuple[str, ...]  # ten, in label order
    temperature: float | None  # fitted on the validation split (mnist_calibration); None: not calibrated

    def probabilities(self, logits) -> np.ndarray:
        """The probabilities to show: softmax(logits / T) with the stored temperature, plain
        softmax without one (float64, last axis). Explanations use the logits, not these."""
        from scipy.special import softmax  # scipy comes with jax; mnist_calibration builds on this module
        return softmax(np.asarray(logits, np.float64) / (self.temperature or 1.0), axis=-1)

    @property
    def calibrated(self) -> bool:
        return self.temperature is not None

    @property
    def probability_note(self) -> str:
        """How the shown probabilities were made, in a few words (T shown once, here)."""
        if self.calibrated:
            return f"calibrated probabilities (temperature scaling, T = {self.temperature:.3g}, fitted on the validation split)"
        return "plain softmax probabilities (uncalibrated: the checkpoint stores no temperature)"

    def name(self, label) -> str:
        """The class name of label ``label`` (an int)."""
        return self.class_names[int(label)]


def checkpoint_info(meta: dict, where: str = "checkpoint") -> CheckpointInfo:
    """The dataset, class names and temperature a checkpoint's ``meta`` stores (defaults for
    metadata that predates them: mnist, "0".."9", no temperature). CheckpointError, one line,
    for values that cannot be right."""
    from mnist_data import DATASETS, class_names

    dataset = meta.get("dataset", "mnist")
    if dataset not in DATASETS:
        raise CheckpointError(f"{where}: dataset: expected one of {', '.join(DATASETS)}, found {dataset!r:.60}")
    names = meta.get("class_names")
    if names is None:
        names = class_names(dataset)
    num_classes = (meta.get("model") or {}).get("num_classes", 10) if isinstance(meta.get("model"), dict) else 10
    if not (isinstance(names, (list, tuple)) and len(names) == num_classes and all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{where}: class_names: expected {num_classes} strings, found {names!r:.80}")
    t = meta.get("temperature")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0):
        raise CheckpointError(f"{where}: temperature: expected a positive finite number, found {t!r:.60}")
    return CheckpointInfo(dataset, tuple(names), None if t is None else float(t))


def check_fits(model: MNISTCNN, params, batch_stats, where: str) -> None:
    """Raise CheckpointError unless the weights have exactly the shapes ``model`` expects."""
    mismatch = shape_mismatch(model, {"params": params, "batch_stats": batch_stats})
    if mismatch:
        name, want, found = mismatch
        raise CheckpointError(f"{where}: weights do not fit the model: {name} expected {want}, found {found}")


def _flatten(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def export_for_inference(source: str | os.PathLike, dst: str | os.PathLike, test_accuracy: float) -> Path:
    """Write a weights-only copy (params + batch_stats, no optimizer state) of the checkpoint
    at ``source`` into ``dst``, with its metadata, ``metrics.json`` and training curves.

    The copy is built beside ``dst`` and swapped in at the end, so an existing ``dst`` is
    never left half-written.
    """
    dst = Path(dst).absolute()
    check_output_folder(dst, EXPORT_FILES, "--export")
    steps = step_dirs(dst / CKPT_SUBDIR) if (dst / CKPT_SUBDIR).is_dir() else []
    if any("exported_from" not in _read_meta(d) for d in steps):
        raise CheckpointError(f"--export {dst}: holds a training run's checkpoints, not an export; choose another path")
    step_dir = resolve_checkpoint_dir(source)
    params, batch_stats, _, meta = load_checkpoint(step_dir)
    meta = {**meta, "test_accuracy": float(test_accuracy), "exported_from": str(step_dir)}
    with atomic_folder(dst) as tmp:
        manager = ocp.CheckpointManager(tmp / CKPT_SUBDIR, options=ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False))
        manager.save(int(step_dir.name) if step_dir.name.isdigit() else 0,
                     args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params, "batch_stats": batch_stats}),
                                             meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()
        manager.close()
        workdir = step_dir.parent.parent
        metrics = {"test_accuracy": float(test_accuracy), "history": meta.get("history", []),
                   **{k: meta[k] for k in ("model", "train_config", "dataset", "data_source", "class_names",
                                             "num_params", "temperature", "calibration") if k in meta}}
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))  # the folder is swapped in whole
        if (workdir / "training_curves.png").exists():
            shutil.copy(workdir / "training_curves.png", tmp / "training_curves.png")
    return dst


EXPORT_FILES = frozenset({CKPT_SUBDIR, "metrics.json", "training_curves.png"})


def check_output_folder(dst: str | os.PathLike, names, flag: str) -> None:
    """Refuse, before any work, an output folder that cannot be written or should not be replaced.

    ``dst`` is replaced whole at the end (``swap_in``), so it must be absent, empty, or a
    previous output of the same kind: nothing in it but ``names`` (and temporaries of them a
    killed run left, see ``cli.atomic_file``). A folder holding anything
    else, or a regular file, is refused rather than deleted. Writability is tried by creating
    and removing a sibling, where the output will be built. Raises ValueError.
    """
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"{flag} {dst}: expected a folder (new or a previous output), found a file")
    foreign = sorted(p.name for p in dst.iterdir() if p.name not in names and not is_temporary_of(p.name, names)) \
        if dst.is_dir() else []
    if foreign:
        raise ValueError(f"{flag} {dst}: expected a new folder or a previous output, found other files in it "
                         f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); choose another path")
    check_writable(dst, flag)


def check_writable(path: str | os.PathLike, flag: str) -> None:
    """Raise ValueError unless a folder can be made beside ``path`` (made and removed at once)."""
    path = Path(path)
    probe = path.with_name(path.name + ".write-check")
    try:
        probe.mkdir(parents=True, exist_ok=True)
        probe.rmdir()
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot write there ({e.strerror})") from None


def read_info(path: str | os.PathLike | None = None) -> CheckpointInfo:
    """``checkpoint_info`` of the checkpoint at ``path`` (None: pretrained/) from its metadata
    alone, without reading the weights: what a script needs before it loads the data."""
    step_dir = resolve_checkpoint_dir(PRETRAINED_DIR if path is None else path)
    return checkpoint_info(_read_meta(step_dir), str(step_dir))

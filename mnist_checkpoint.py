"""Orbax checkpoints for the MNIST CNN: save with metadata, load the model from the checkpoint alone.

Layout written by ``train_mnist.py`` (an orbax ``CheckpointManager`` directory)::

    checkpoints/
      ckpt/<step>/state   params, batch_stats, opt_state, step (orbax, written atomically)
      ckpt/<step>/meta    JSON: model constructor arguments, training config, epoch, metrics
      metrics.json        per-epoch history and the final test accuracy
      training_curves.png

``load_checkpoint`` accepts the workdir, its ``ckpt`` folder, or one ``<step>`` folder.
For a workdir it returns the checkpoint with the best validation accuracy (the latest one
if none recorded a metric).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from cli import first_line
from mnist_cnn_model import MNISTCNN, shape_mismatch

CKPT_SUBDIR = "ckpt"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
GET_CHECKPOINT_HINT = "train one with `python train_mnist.py` or use the shipped one in pretrained/"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def make_manager(workdir: str | os.PathLike, read_only: bool = False) -> ocp.CheckpointManager:
    """A manager that keeps the latest checkpoint and the one with the best validation accuracy."""
    options = ocp.CheckpointManagerOptions(
        preservation_policy=AnyPreservationPolicy([
            LatestN(1),
            BestN(get_metric_fn=lambda m: m["val_accuracy"], reverse=False, n=1,
                  keep_checkpoints_without_metrics=False),
        ]),
        enable_async_checkpointing=False,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(Path(workdir).absolute() / CKPT_SUBDIR, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: dict, meta: dict,
         val_accuracy: float | None) -> None:
    """Write one checkpoint (atomically: orbax renames a finished temporary folder)."""
    metrics = None if val_accuracy is None else {"val_accuracy": float(val_accuracy)}
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)),
                 metrics=metrics, force=True)
    manager.wait_until_finished()


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
        if acc is not None and acc > best_acc:
            best, best_acc = step_dir, acc
    return best


def load_checkpoint(path: str | os.PathLike | None = None):
    """Return ``(params, batch_stats, model, meta)`` rebuilt from a checkpoint alone.

    ``path`` defaults to the shipped checkpoint in ``pretrained/``.
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
    return params, batch_stats, model, meta


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
    import shutil

    dst = Path(dst).absolute()
    check_output_folder(dst, EXPORT_FILES, "--export")
    steps = step_dirs(dst / CKPT_SUBDIR) if (dst / CKPT_SUBDIR).is_dir() else []
    if any("exported_from" not in _read_meta(d) for d in steps):
        raise CheckpointError(f"--export {dst}: holds a training run's checkpoints, not an export; choose another path")
    step_dir = resolve_checkpoint_dir(source)
    params, batch_stats, _, meta = load_checkpoint(step_dir)
    meta = {**meta, "test_accuracy": float(test_accuracy), "exported_from": str(step_dir)}
    tmp = dst.with_name(dst.name + ".export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    manager = ocp.CheckpointManager(tmp / CKPT_SUBDIR, options=ocp.CheckpointManagerOptions(
        enable_async_checkpointing=False))
    manager.save(int(step_dir.name) if step_dir.name.isdigit() else 0,
                 args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params, "batch_stats": batch_stats}),
                                         meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()
    manager.close()
    workdir = step_dir.parent.parent
    metrics = {"test_accuracy": float(test_accuracy), "history": meta.get("history", []),
               **{k: meta[k] for k in ("model", "train_config", "data_source", "num_params") if k in meta}}
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if (workdir / "training_curves.png").exists():
        shutil.copy(workdir / "training_curves.png", tmp / "training_curves.png")
    swap_in(tmp, dst)
    return dst


EXPORT_FILES = frozenset({CKPT_SUBDIR, "metrics.json", "training_curves.png"})


def check_output_folder(dst: str | os.PathLike, names, flag: str) -> None:
    """Refuse, before any work, an output folder that cannot be written or should not be replaced.

    ``dst`` is replaced whole at the end (``swap_in``), so it must be absent, empty, or a
    previous output of the same kind: nothing in it but ``names``. A folder holding anything
    else, or a regular file, is refused rather than deleted. Writability is tried by creating
    and removing a sibling, where the output will be built. Raises ValueError.
    """
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"{flag} {dst}: expected a folder (new or a previous output), found a file")
    foreign = sorted(p.name for p in dst.iterdir() if p.name not in names) if dst.is_dir() else []
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


def swap_in(new: Path, dst: Path) -> None:
    """Replace folder ``dst`` by the finished folder ``new`` with renames, never leaving a half-written ``dst``."""
    import shutil

    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(new, dst)
    shutil.rmtree(old, ignore_errors=True)

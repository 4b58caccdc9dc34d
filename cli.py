"""What the command-line scripts share: their parser, their start and exit, and atomic writes.

* ``parser(doc)``: argparse with every command-line error on one line (argparse prints the
  whole usage block first); exit code 2, argparse's own, and a pointer to ``--help``.
* ``before_jax()``: the ``__main__`` preamble of every script, run before JAX is imported
  (one JAX device per CPU core, the on-disk compilation cache, matplotlib's Agg backend).
  Library code never calls it, so a notebook keeps its own settings and inline figures.
* ``run(main)``: calls ``main(argv)`` and turns the errors a user can fix (bad data, a
  missing checkpoint, a refused folder: ``ValueError`` and its subclasses; an unwritable
  path: ``OSError``) into one line on stderr and exit code 2; Ctrl-C exits with 130.
* ``atomic_file(path)`` / ``write_atomic(path, data)``: write a file under a temporary name
  in the same folder and rename it into place (``os.replace``), so a reader or a killed run
  never sees half a file (``remove_temporaries`` clears what a killed run left).
  ``atomic_folder(path)``: the same for a whole output folder.

This module imports neither JAX nor matplotlib.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import secrets
import shutil
import sys
from pathlib import Path


class OneLineErrors(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def parser(doc: str | None) -> OneLineErrors:
    """A parser whose ``--help`` shows ``doc`` as written (the script's docstring)."""
    return OneLineErrors(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def first_line(error: BaseException, limit: int = 160) -> str:
    """An exception's first line (libraries such as orbax raise pages), else its type's name."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


# ----------------------------------------------------------------------------- start and exit


DEFAULT_WORKDIR = "checkpoints"  # train_mnist.py's --workdir default; never read unless named
CHECKPOINT_FALLBACK = "the shipped pretrained/; a training run is explained only when named, e.g. --checkpoint checkpoints"
CHECKPOINT_RULE = f"--checkpoint if given, else {CHECKPOINT_FALLBACK}"


def before_jax(one_device_per_core: bool = True) -> None:
    """The scripts' ``__main__`` preamble; call it before anything imports JAX.

    Splits the CPU into one JAX device per core (``cpu_devices.use_one_device_per_core``;
    the quick demo, ten digits, keeps one), keeps compiled programs on disk between runs
    (``cpu_devices.use_compilation_cache``) and draws figures with matplotlib's Agg backend
    (files only, no window) unless ``MPLBACKEND`` says otherwise.
    """
    from cpu_devices import use_compilation_cache, use_one_device_per_core

    if one_device_per_core:
        use_one_device_per_core()
    use_compilation_cache()
    os.environ.setdefault("MPLBACKEND", "Agg")


def run(main, argv=None) -> int:
    """``main(argv)``'s exit code; a fixable error is one line on stderr and exit code 2.

    ``ValueError`` covers the project's own errors (``MNISTDataError``, ``CheckpointError``,
    refused folders and settings), whose messages say what was expected and what was found.
    """
    try:
        return main(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder or file that cannot be created or written
        where = e.filename or "a file"
        print(f"error: cannot write {where}: {e.strerror or first_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path beside ``path`` (same folder, same suffix); when the block ends
    without an error it is renamed onto ``path`` in one step, otherwise it is removed.

        with atomic_file("out/figure.png") as tmp:
            fig.savefig(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not created here (mkstemp would make it owner-only): the writer creates it as usual.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # there only after a failure: the rename moved it otherwise


def temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporary files ``atomic_file(path)`` left beside ``path`` (a run killed between
    writing and renaming; or one still writing)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.stem)}.*.tmp{glob.escape(path.suffix)}"))


def is_temporary_of(name: str, names) -> bool:
    """Whether file name ``name`` is an ``atomic_file`` temporary of one of ``names``."""
    return any(name.startswith(f".{Path(n).stem}.") and name.endswith(f".tmp{Path(n).suffix}") for n in names)


def remove_temporaries(path: str | os.PathLike) -> None:
    for tmp in temporaries(path):
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to ``path`` atomically; returns the path."""
    with atomic_file(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def temp_sibling(path: Path, tag: str) -> Path:
    """The name of a temporary folder beside ``path`` (``.<name>.<tag>-tmp``)."""
    return path.with_name(f".{path.name}.{tag}-tmp")


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield an empty temporary folder beside ``path``; when the block ends without an error
    it replaces ``path`` (``swap_in``), otherwise it is removed and ``path`` is left as it was."""
    path = Path(path).absolute()
    tmp = temp_sibling(path, "new")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a run that was killed
    tmp.mkdir(parents=True)
    try:
        yield tmp
        swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # there only after a failure


def swap_in(new: Path, dst: Path) -> None:
    """Replace folder ``dst`` by the finished folder ``new`` with renames, never leaving a
    half-written ``dst`` (a kill between the two renames leaves ``dst`` absent and the
    previous output beside it, in ``.<name>.old-tmp``)."""
    old = temp_sibling(dst, "old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(new, dst)
    shutil.rmtree(old, ignore_errors=True)

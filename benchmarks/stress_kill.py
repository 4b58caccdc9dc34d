"""Kill a small training run with SIGKILL at chosen or random moments, resume it, and check
that the result is the uninterrupted run's: same weights, bit for bit.

    python benchmarks/stress_kill.py                    # 10 runs, cycling through the kill moments
    python benchmarks/stress_kill.py --runs 5 --kill-at delete
    python benchmarks/stress_kill.py --data-dir DIR --train 2000 --epochs 2   # real MNIST

Kill moments (--kill-at; default: each in turn), hooked into the child process itself so
that the moment is hit exactly, not by luck:
  random   a timer fires at a random time within the run
  write    while orbax writes a checkpoint: as soon as its temporary step folder appears, or
           with the folder complete but not yet renamed into place (its finalize)
  commit   right after a step folder is renamed into place: the superseded step still
           there, metrics.json and the curves not yet updated
  delete   while a superseded step is removed: just before or after orbax renames it into
           ckpt/.superseded/, or half-way through deleting its files there
  metrics  with metrics.json or training_curves.png written under its temporary name, not
           yet renamed
Each run is killed at the k-th such moment (k random), then continued with --resume (a run
killed before its first checkpoint starts again, as it must: --resume refuses an empty
workdir) until it finishes. Then the workdir must hold no temporary or half-deleted folder,
its best checkpoint must load, and its weights and batch statistics must equal those of an
uninterrupted run of the same configuration in the same environment (same JAX devices).
Data: --data-dir (a folder of the four MNIST IDX files), else a synthetic separable set.
The last line says how many runs were killed and whether all matched; exit code 1 if not.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402

MOMENTS = ("random", "write", "commit", "delete", "metrics")


# ----------------------------------------------------------------------------- the child


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Countdown:
    """Fires ``_die`` at the k-th call of ``hit()``."""

    def __init__(self, k: int):
        self.left = k
        self.lock = threading.Lock()

    def hit(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                _die()


def install_hooks(moment: str, k: int, rng: random.Random, workdir: Path, seconds: float) -> None:
    """Arrange for this process to SIGKILL itself at the k-th ``moment`` (see the docstring)."""
    countdown = Countdown(k)
    if moment == "random":
        threading.Timer(rng.uniform(0, seconds), _die).start()
        return
    if moment == "write":
        from orbax.checkpoint._src.path import atomicity

        finalize = atomicity.AtomicRenameTemporaryPath.finalize
        if rng.random() < 0.5:  # the temporary folder written in full, not renamed into place
            async def killing_finalize(self, *args, **kwargs):
                countdown.hit()
                return await finalize(self, *args, **kwargs)
            atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
        else:  # as soon as the temporary folder appears: its files being written
            def watch():
                root, seen = workdir / "ckpt", set()
                while True:
                    if root.is_dir():
                        for p in root.iterdir():
                            if ".orbax-checkpoint-tmp" in p.name and p.name not in seen:
                                seen.add(p.name)
                                time.sleep(rng.uniform(0, 0.01))
                                countdown.hit()
                    time.sleep(0.0005)
            threading.Thread(target=watch, daemon=True).start()
        return
    if moment == "commit":
        from orbax.checkpoint._src.path import atomicity

        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def finalize_then_die(self, *args, **kwargs):
            result = await finalize(self, *args, **kwargs)
            countdown.hit()
            return result
        atomicity.AtomicRenameTemporaryPath.finalize = finalize_then_die
        return
    if moment == "delete":
        import mnist_checkpoint
        from orbax.checkpoint._src.path import deleter

        where = rng.choice(("before rename", "after rename", "mid-deletion"))
        delete = deleter.PathDeleter.delete

        def killing_delete(self, path, *args, **kwargs):
            if where == "before rename":
                countdown.hit()
            delete(self, path, *args, **kwargs)
            if where == "after rename":
                countdown.hit()
        deleter.PathDeleter.delete = killing_delete
        remove = mnist_checkpoint.remove_superseded

        def killing_remove(root):
            folder = Path(root) / mnist_checkpoint.SUPERSEDED_SUBDIR
            files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
            if where == "mid-deletion" and files:
                for p in files[:len(files) // 2]:
                    p.unlink()
                countdown.hit()
            remove(root)
        mnist_checkpoint.remove_superseded = killing_remove
        return
    if moment == "metrics":
        atomic_file = cli.atomic_file

        @contextlib.contextmanager
        def killing_atomic_file(path):
            with atomic_file(path) as tmp:
                yield tmp
                if tmp.exists():  # written under its temporary name, not yet renamed
                    countdown.hit()
        cli.atomic_file = killing_atomic_file
        return
    if moment != "none":
        raise ValueError(f"unknown kill moment {moment!r}")


def child(spec: dict, argv: list[str]) -> int:
    """Run train_mnist's command line in this process, with the kill hooks of ``spec``."""
    cli.before_jax()  # as `python train_mnist.py` does
    import train_mnist

    install_hooks(spec["moment"], spec["k"], random.Random(spec["seed"]), Path(spec["workdir"]),
                  spec["seconds"])
    return cli.run(train_mnist.main, argv)


# ----------------------------------------------------------------------------- the parent


def write_synthetic(folder: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """A separable set: class c is a bright 6x6 square at one of ten places, plus noise."""
    import numpy as np

    from mnist_data import write_idx

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = 2 + 12 * (c // 5), 1 + 5 * (c % 5)
            images[i, r:r + 6, col:col + 6] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def run_child(workdir: Path, train_args: list[str], moment: str = "none", k: int = 1, seed: int = 0,
              seconds: float = 10.0, resume: bool = False) -> tuple[int, float, str]:
    spec = {"moment": moment, "k": k, "seed": seed, "workdir": str(workdir), "seconds": seconds}
    argv = [*train_args, "--workdir", str(workdir), "--no-progress", *(["--resume"] if resume else [])]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec), "--", *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    return proc.returncode, time.perf_counter() - t0, proc.stderr.strip()[-600:]


def has_step(workdir: Path) -> bool:
    root = workdir / "ckpt"
    return root.is_dir() and any(p.name.isdigit() for p in root.iterdir())


def leftovers(workdir: Path) -> list[str]:
    """Temporary or half-removed things a finished, resumed run should not hold."""
    out = []
    for p in workdir.rglob("*"):
        name = p.name
        if ".orbax-checkpoint-tmp" in name or name == ".superseded" or (name.startswith(".") and ".tmp" in name):
            out.append(str(p.relative_to(workdir)))
    return sorted(out)


def compare(a: Path, b: Path) -> tuple[bool, float]:
    """Whether the best checkpoints of two workdirs hold the same weights bit for bit, and the
    largest absolute difference."""
    import jax
    import numpy as np

    from mnist_checkpoint import load_checkpoint

    pa, sa, _, _ = load_checkpoint(a)
    pb, sb, _, _ = load_checkpoint(b)
    la, lb = jax.tree_util.tree_leaves((pa, sa)), jax.tree_util.tree_leaves((pb, sb))
    same = len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))
    diff = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(la, lb))
    return same, diff


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--runs", type=int, default=10, metavar="N", help="killed runs (default: %(default)s)")
    parser.add_argument("--kill-at", choices=MOMENTS, metavar="MOMENT",
                        help=f"one of {', '.join(MOMENTS)} (default: each in turn)")
    parser.add_argument("--epochs", type=int, default=3, metavar="N", help="epochs per run (default: %(default)s)")
    parser.add_argument("--train", type=int, default=512, metavar="N",
                        help="training examples (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="default: %(default)s")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder with the four MNIST IDX files (default: a synthetic separable set)")
    parser.add_argument("--nth", type=int, metavar="K",
                        help="kill at the K-th such moment (default: K drawn at random for each run)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seeds the kill moments (default: %(default)s)")
    parser.add_argument("--keep", metavar="DIR", help="keep the workdirs in DIR (default: a temporary folder, removed)")
    parser.add_argument("--json", metavar="FILE", help="also write the per-run results to FILE")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.epochs < 1 or args.train < args.batch_size:
        parser.error("expected --runs >= 1, --epochs >= 1 and --train >= --batch-size")

    rng = random.Random(args.seed)
    with contextlib.ExitStack() as stack:
        base = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        base.mkdir(parents=True, exist_ok=True)
        data = args.data_dir
        if data is None:
            data = str(base / "data")
            write_synthetic(Path(data), n_train=args.train + 128, n_test=128)
        train_args = ["--data-dir", data, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                      "--max-train-examples", str(args.train), "--num-validation", "128"]

        reference = base / "reference"
        rc, seconds, err = run_child(reference, train_args)
        if rc != 0:
            print(f"stress_kill: the uninterrupted run failed (exit {rc}): {err}", file=sys.stderr)
            return 1
        print(f"uninterrupted run: {seconds:.1f} s")
        results = []
        for run in range(args.runs):
            moment = args.kill_at or MOMENTS[run % len(MOMENTS)]
            k = args.nth or rng.randint(1, args.epochs if moment in ("write", "commit", "metrics") else
                                        max(1, args.epochs - 2) if moment == "delete" else 1)
            workdir = base / f"run{run}"
            kills, attempts, log = 0, [], []
            for attempt in range(6):
                resume = has_step(workdir)
                hooked = attempt == 0
                rc, secs, err = run_child(workdir, train_args, moment if hooked else "none", k, rng.randrange(2**31),
                                          seconds, resume=resume)
                attempts.append({"resume": resume, "moment": moment if hooked else "none", "exit": rc,
                                 "seconds": round(secs, 1)})
                if rc == -signal.SIGKILL:
                    kills += 1
                    continue
                if rc != 0:
                    log.append(err)
                break
            finished = attempts[-1]["exit"] == 0
            same, diff = compare(workdir, reference) if finished else (False, float("nan"))
            left = leftovers(workdir) if finished else []
            ok = finished and same and not left and kills > 0
            results.append({"run": run, "moment": moment, "k": k, "kills": kills, "attempts": attempts,
                            "finished": finished, "bitwise_equal": same, "max_abs_diff": diff,
                            "leftovers": left, "errors": log, "ok": ok})
            print(f"run {run}: kill at {moment} #{k}: {kills} kill(s), "
                  f"{'resumed and finished' if finished else 'did not finish: ' + '; '.join(log)}"
                  f"{', weights bitwise equal' if same else f', weights differ (max {diff:.3g})' if finished else ''}"
                  f"{', leftovers: ' + ', '.join(left) if left else ''}"
                  f"{'' if kills else ' (the moment never came: not counted)'}")
        if args.json:
            cli.write_atomic(args.json, json.dumps(results, indent=2))
    killed = [r for r in results if r["kills"]]
    bad = [r for r in killed if not r["ok"]]
    print(f"stress_kill: {len(killed)} of {len(results)} runs killed and resumed; "
          f"{len(killed) - len(bad)} finished with weights bitwise equal to the uninterrupted run's"
          f"{'' if not bad else f'; {len(bad)} did not'}")
    return 1 if bad or not killed else 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        sys.exit(child(spec, sys.argv[4:] if sys.argv[3:4] == ["--"] else sys.argv[3:]))
    sys.exit(main())

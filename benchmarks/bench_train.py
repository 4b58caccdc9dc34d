"""Training speed: time to 99.0% / 99.5% test accuracy, seconds per epoch, images/s, peak memory.

    python benchmarks/bench_train.py --data-dir ../shared/data/mnist --epochs 2
    python benchmarks/bench_train.py --data-dir ../shared/data/mnist --reference-steps 20

The project's run is ``train_mnist.train_and_evaluate`` (the CLI's code path, data-parallel
over one JAX device per core, the CPU-friendly conv gradient) with a one-cycle schedule
over ``--epochs``, evaluated on the test set after every epoch. Times count from process
start, so imports, data loading and compilation are included.

``--reference-steps N`` also times N steps of the plain reference loop the spine issue
describes (flax ``nn.Conv`` and ``nn.max_pool``, one jitted step per batch of 128, adamw,
one device) and extrapolates its epoch time; it does not train the reference to 99%.

``--after-compile CONFIGS`` measures the GPU target instead: seconds of training *after
compilation* until the test accuracy first reaches 99.0% / 99.5%. Each config runs the
project's training step (``train_mnist.make_train_chunk``, compiled ahead of time, steps
fused per call as on an accelerator) and the plain reference loop where ``ref=1``; the
clock runs only while training calls run (each call waited for), and the test set is
evaluated, untimed, every ``--eval-every`` steps. CONFIGS is ``;``-separated, each a
``,``-separated list of ``batch=128,epochs=2,lr=3e-3,augment=1,dtype=float32,ref=0``::

    python benchmarks/bench_train.py --data-dir .data/mnist \
        --after-compile "batch=128;batch=512,augment=0;ref=1"

``--vs-torch [CONFIGS]`` races the project against its PyTorch twin (``benchmarks/torch_twin.py``:
the same CNN, init and recipe, see its docstring) on the CPU. Each config runs in a fresh
process, timed from its spawn (interpreter start, imports, data loading and, for JAX,
compilation included): JAX runs ``train_mnist.train_and_evaluate`` as the command line does
(TrainConfig's defaults, augmentation on, the compilation cache of ``cli.before_jax``, the
per-epoch validation, checkpoint and curves, the final test pass and calibration); the twin
runs from another venv (``--torch-python``, requirements-bench.txt) with 2 threads, its own
per-epoch validation and ``torch.save``, augmentation off. Both evaluate the test set
``--evals-per-epoch`` times an epoch (from ``--eval-from`` epochs on) with the clock stopped:
"s to 99.0%" is training-process time to the first evaluation at >= 99.0%, evaluations
excluded, on both sides alike. images/s is over the steps after the first (training only).
"process s" is the whole process (the JAX run's final test pass and calibration included),
again less the benchmark's own evaluations. CONFIGS is ``;``-separated, each a
``,``-separated list of ``side=jax|torch,epochs=1,batch=128,lr=3e-3,augment=<side's
default>,max_train=0,repo=<another checkout, for JAX>,label=...``; ``--repeat`` interleaves
rounds; ``--cache DIR`` keeps one JAX compilation cache per config (the first run fills it),
else every JAX run starts with an empty one::

    python -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install -r requirements-bench.txt
    python benchmarks/bench_train.py --data-dir DIR --vs-torch --torch-python /tmp/benchvenv/bin/python
    python benchmarks/bench_train.py --data-dir DIR --torch-python /tmp/benchvenv/bin/python --repeat 2 \
        --vs-torch "label=before,repo=../main;label=after;side=torch" --cache /tmp/bench_cache
"""
import time

T_START = time.perf_counter()

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

# BENCH_REPO: run another checkout's train_mnist (the --vs-torch mode's ``repo=`` key).
sys.path.insert(0, os.environ.get("BENCH_REPO") or str(Path(__file__).resolve().parents[1]))

import cli  # noqa: E402

cli.before_jax()  # as train_mnist.py does when run as a script: a device per core, the compilation cache

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import train_mnist as T
from mnist_data import load_mnist


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ReferenceCNN(nn.Module):
    """The same architecture written plainly: nn.Conv, nn.max_pool, no custom gradients."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = (x - 0.1307) / 0.3081
        for i, w in enumerate((32, 32, 64, 64, 128, 128)):
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Conv(w, (3, 3))(x)))
            if i in (1, 3):
                x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Dense(256)(x.mean(axis=(1, 2))))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(10)(x)


def time_reference(images: np.ndarray, labels: np.ndarray, steps: int, batch_size: int = 128) -> float:
    """Seconds per step of the plain loop, after one compile step."""
    model = ReferenceCNN()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    params, batch_stats = variables["params"], variables["batch_stats"]
    tx = optax.adamw(optax.cosine_onecycle_schedule(2 * len(images) // batch_size, 1e-3))
    opt_state = tx.init(params)

    step = _reference_step(model, tx)

    def batch(i):
        sl = slice(i * batch_size, (i + 1) * batch_size)
        return jnp.asarray(images[sl], jnp.float32) / 255, jnp.asarray(labels[sl])

    out = step(params, batch_stats, opt_state, *batch(0), jax.random.PRNGKey(0))
    jax.block_until_ready(out)
    params, batch_stats, opt_state, _ = out
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, *batch(i),
                                                    jax.random.PRNGKey(i))
    jax.block_until_ready(loss)
    return (time.perf_counter() - t0) / steps


def parse_configs(text: str) -> list[dict]:
    defaults = {"batch": 128, "epochs": 2, "lr": 3e-3, "augment": 1, "dtype": "float32", "ref": 0}
    out = []
    for spec in filter(None, (c.strip() for c in text.split(";"))):
        cfg = dict(defaults)
        for item in filter(None, (i.strip() for i in spec.split(","))):
            key, _, value = item.partition("=")
            if key not in defaults:
                raise SystemExit(f"error: --after-compile: unknown key {key!r} in {spec!r}; "
                                 f"expected {', '.join(defaults)}")
            cfg[key] = type(defaults[key])(value)
        out.append(cfg)
    return out


def train_to_accuracy(run_call, state, calls, evaluate, eval_every: int, label: str) -> dict:
    """Time ``state = run_call(state, batch_rows)`` over ``calls`` (arrays of batch indices),
    evaluating (untimed) whenever ``eval_every`` more steps are done and at the end."""
    clock, steps, marks, curve = 0.0, 0, {}, []
    last_eval = 0
    for rows in calls:
        t0 = time.perf_counter()
        state = run_call(state, rows)
        jax.block_until_ready(state)
        clock += time.perf_counter() - t0
        steps += len(rows)
        if steps - last_eval >= eval_every or rows is calls[-1]:
            last_eval = steps
            acc = evaluate(state)
            curve.append((steps, clock, acc))
            for target in (0.990, 0.995):
                if acc >= target and target not in marks:
                    marks[target] = clock
    best = max(a for _, _, a in curve)
    print(f"  {label}: 99.0% after {_fmt(marks.get(0.990))} s, 99.5% after {_fmt(marks.get(0.995))} s "
          f"of training; final {curve[-1][2]:.4f} (best {best:.4f}) after {clock:.3f} s, "
          f"{steps} steps", flush=True)
    return {"config": label, "seconds_to_99.0": marks.get(0.990), "seconds_to_99.5": marks.get(0.995),
            "final_test_accuracy": curve[-1][2], "best_test_accuracy": best, "train_seconds": clock,
            "steps": steps, "curve": curve}


def _fmt(x):
    return "—" if x is None else f"{x:.3f}"


def after_compile(data, configs: list[dict], eval_every: int) -> list[dict]:
    from mnist_cnn_model import MNISTCNN

    devices = jax.devices()
    results = []
    for c in configs:
        steps_per_epoch = len(data.train) // c["batch"]
        batches = np.concatenate([T.epoch_batches(0, e, len(data.train), c["batch"]) for e in range(c["epochs"])])
        label = ",".join(f"{k}={v}" for k, v in c.items())
        if c["ref"]:
            model = ReferenceCNN()
            v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
            tx = optax.adamw(optax.cosine_onecycle_schedule(len(batches), c["lr"]))
            step = _reference_step(model, tx)
            images, labels = data.train.images, data.train.labels

            def run_call(state, rows, step=step, images=images, labels=labels):
                p, bs, o, k = state
                idx = rows[0]
                x = jnp.asarray(images[idx], jnp.float32) / 255  # the plain loop feeds from the host
                p, bs, o, _ = step(p, bs, o, x, jnp.asarray(labels[idx]), k)
                return p, bs, o, jax.random.fold_in(k, 1)

            state = (v["params"], v["batch_stats"], tx.init(v["params"]), jax.random.PRNGKey(0))
            state = run_call(state, batches[:1])  # compiles; its step is not counted
            calls = [batches[i:i + 1] for i in range(1, len(batches))]

            eval_fn = T.make_eval_fn(model)

            def evaluate(state, model=model, eval_fn=eval_fn):
                return T.evaluate(model, state[0], state[1], data.test, 1000, eval_fn)["accuracy"]
            evaluate(state)
        else:
            dtype = jnp.dtype(c["dtype"])
            model = MNISTCNN(dtype=dtype)
            cfg = T.TrainConfig(epochs=c["epochs"], batch_size=c["batch"], learning_rate=c["lr"],
                                augment=bool(c["augment"]))
            tx = T.make_optimizer(cfg, len(batches))
            state, train_key = T.initial_state(model, tx, seed=0)
            state, images, labels, chunk = T.on_all_devices(model, tx, cfg, state, data.train.images,
                                                            data.train.labels)
            per_call = T.steps_per_call(steps_per_epoch, devices[0].platform)
            # Calls as train_and_evaluate makes them: per epoch, full calls and the remainder.
            calls = [b[i:i + per_call] for b in np.split(batches, c["epochs"])
                     for i in range(0, steps_per_epoch, per_call)]
            t0 = time.perf_counter()
            compiled = {k: chunk.lower(state, images, labels, batches[:k], train_key).compile()
                        for k in sorted({len(r) for r in calls})}
            print(f"  compiled {label} ({', '.join(map(str, compiled))} steps a call) in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)

            def run_call(state, rows, compiled=compiled, images=images, labels=labels, key=train_key):
                return compiled[len(rows)](state, images, labels, rows, key)[0]

            eval_fn = T.make_eval_fn(model)

            def evaluate(state, model=model, eval_fn=eval_fn):
                return T.evaluate(model, state["params"], state["batch_stats"], data.test, 1000, eval_fn)["accuracy"]
            evaluate(state)  # compiles the evaluation outside the clock
        results.append(train_to_accuracy(run_call, state, calls, evaluate, eval_every, label))
    return results


def _reference_step(model, tx):
    @jax.jit
    def step(params, batch_stats, opt_state, x, y, key):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                      rngs={"dropout": key}, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss
    return step


# ----------------------------------------------------------------------------- --vs-torch

VS_DEFAULTS = {"side": "jax", "epochs": 1, "batch": 128, "lr": 3e-3, "augment": -1, "max_train": 0, "repo": "",
               "label": ""}


def parse_vs_configs(text: str, epochs: int) -> list[dict]:
    """``side=jax;side=torch,batch=256`` -> dicts; augment -1: the side's default (JAX on, the twin off)."""
    out = []
    for spec in filter(None, (c.strip() for c in text.split(";"))):
        cfg = {**VS_DEFAULTS, "epochs": epochs}
        for item in filter(None, (i.strip() for i in spec.split(","))):
            key, _, value = item.partition("=")
            if key not in VS_DEFAULTS:
                raise ValueError(f"--vs-torch: unknown key {key!r} in {spec!r}; expected {', '.join(VS_DEFAULTS)}")
            try:
                cfg[key] = type(VS_DEFAULTS[key])(value)
            except ValueError:
                raise ValueError(f"--vs-torch: {key}={value!r} in {spec!r}: expected a "
                                 f"{type(VS_DEFAULTS[key]).__name__}") from None
        if cfg["side"] not in ("jax", "torch"):
            raise ValueError(f"--vs-torch: side={cfg['side']!r} in {spec!r}; expected jax or torch")
        if cfg["augment"] == -1:
            cfg["augment"] = int(cfg["side"] == "jax")
        cfg["label"] = cfg["label"] or ",".join(f"{k}={cfg[k]}" for k in VS_DEFAULTS
                                                if k != "label" and cfg[k] != VS_DEFAULTS[k])
        out.append(cfg)
    return out


def emit(event: str, spawn: float, paused: float, **fields) -> None:
    """One JSON line on stdout: seconds since the parent spawned this process, less the time spent
    in the benchmark's own test evaluations (``paused``), and the figures (as torch_twin.emit)."""
    print(json.dumps({"event": event, "t": time.time() - spawn - paused, **fields}), flush=True)


def jax_child(data_dir: str, epochs: int, batch: int, lr: float, augment: bool, evals_per_epoch: int,
              max_train: int | None = None, eval_from: float = 0.0) -> int:
    """``train_mnist.train_and_evaluate`` as the command line runs it (TrainConfig's defaults but for
    these fields), the test set evaluated off the clock every 1/evals_per_epoch of an epoch.

    The evaluations hook in by wrapping the compiled training call that ``on_all_devices`` returns,
    so that the same child runs an older checkout's train_mnist (``repo=``) unchanged."""
    spawn = float(os.environ.get("BENCH_SPAWN_TIME") or time.time())
    clock = {"paused": 0.0, "step": 0}
    emit("imported", spawn, 0.0, jax=jax.__version__, devices=len(jax.devices()),
         cache=os.environ.get("JAX_COMPILATION_CACHE_DIR"))
    data = load_mnist(data_dir)
    emit("data", spawn, 0.0)
    cfg = T.TrainConfig(epochs=epochs, batch_size=batch, learning_rate=lr, augment=augment,
                        max_train_examples=max_train or None)
    steps_per_epoch = len(data.train.take(cfg.max_train_examples)) // batch
    eval_at = {round(steps_per_epoch * k / evals_per_epoch) for k in range(1, evals_per_epoch + 1)}
    model = T.MNISTCNN()
    eval_fn = T.make_eval_fn(model)
    original = T.on_all_devices

    def on_all_devices(*args, **kwargs):
        state, images, labels, chunk = original(*args, **kwargs)

        def timed_chunk(state, images, labels, idx, key):
            state, metrics = chunk(state, images, labels, idx, key)
            clock["step"] += len(idx)
            step = clock["step"]
            if step == len(idx):
                jax.block_until_ready(state)
                emit("first_step", spawn, clock["paused"])
            if step % steps_per_epoch in {s % steps_per_epoch for s in eval_at} and step >= eval_from * steps_per_epoch - 0.5:
                t0 = time.perf_counter()
                acc = T.evaluate(model, state["params"], state["batch_stats"], data.test, cfg.eval_batch_size,
                                 eval_fn)["accuracy"]
                clock["paused"] += time.perf_counter() - t0
                emit("test", spawn, clock["paused"], step=step, epoch=step / steps_per_epoch, accuracy=acc)
            return state, metrics
        return state, images, labels, timed_chunk

    T.on_all_devices = on_all_devices

    def on_epoch(epoch, state):
        emit("epoch", spawn, clock["paused"], epoch=epoch)

    with tempfile.TemporaryDirectory() as workdir:
        result = T.train_and_evaluate(cfg, workdir, data, progress=False, log=lambda *_: None,
                                      epoch_callback=on_epoch)
    emit("done", spawn, clock["paused"], test_accuracy=result["test_accuracy"], steps=clock["step"])
    return 0


def run_child(cfg: dict, data_dir: str, evals_per_epoch: int, torch_python: str, cache: str | None,
              threads: int, eval_from: float = 0.0) -> dict:
    """Run one config in a fresh process; its events, and the figures of the table."""
    here = Path(__file__).resolve()
    env = dict(os.environ)
    if cfg["side"] == "jax":
        cmd = [sys.executable, str(here), "--jax-child", "--data-dir", data_dir, "--epochs", str(cfg["epochs"]),
               "--batch-size", str(cfg["batch"]), "--lr", str(cfg["lr"]), "--augment", str(cfg["augment"]),
               "--evals-per-epoch", str(evals_per_epoch), "--max-train", str(cfg["max_train"]),
               "--eval-from", str(eval_from)]
        if cfg["repo"]:
            env["BENCH_REPO"] = str(Path(cfg["repo"]).resolve())
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        cache_dir = (Path(cache) / "".join(c if c.isalnum() else "_" for c in cfg["label"]) if cache
                     else Path(tempfile.mkdtemp(prefix="bench_cache_")))
        cache_dir.mkdir(parents=True, exist_ok=True)
        env["MNIST_XAI_COMPILE_CACHE"] = str(cache_dir)
        cached = any(cache_dir.iterdir())
    else:
        cmd = [torch_python, str(here.parent / "torch_twin.py"), "--data-dir", data_dir, "--epochs",
               str(cfg["epochs"]), "--batch-size", str(cfg["batch"]), "--learning-rate", str(cfg["lr"]),
               "--threads", str(threads), "--evals-per-epoch", str(evals_per_epoch),
               "--max-train-examples", str(cfg["max_train"]), "--eval-from", str(eval_from)]
        cmd += ["--augment"] if cfg["augment"] else []
        cached = None
    with tempfile.TemporaryDirectory() as workdir:
        if cfg["side"] == "torch":
            cmd += ["--workdir", workdir]
        env["BENCH_SPAWN_TIME"] = repr(time.time())
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not events or events[-1]["event"] != "done":
        raise RuntimeError(f"{cfg['label']}: the child exited with {proc.returncode}: {' '.join(cmd)}")
    by = {e["event"]: e for e in events}
    tests = [e for e in events if e["event"] == "test"]
    first99 = next((e for e in tests if e["accuracy"] >= 0.99), None)
    steps = by["done"]["steps"]
    last_test = tests[-1]
    # Steady speed: from the end of the first step to the last test evaluation (training only).
    train_s = last_test["t"] - by["first_step"]["t"]
    ips = (last_test["step"] - 1) * cfg["batch"] / train_s
    steps_per_epoch = steps / cfg["epochs"]
    return {**cfg, "cached": cached, "events": events,
            "to_first_step": by["first_step"]["t"], "imports": by["imported"]["t"],
            "seconds_to_99.0": first99["t"] if first99 else None,
            "epoch_at_99.0": first99["epoch"] if first99 else None,
            "final_test_accuracy": by["done"]["test_accuracy"], "process_seconds": by["done"]["t"],
            "images_per_second": ips, "seconds_per_epoch": steps_per_epoch * cfg["batch"] / ips}


def vs_torch(args) -> int:
    configs = parse_vs_configs(args.vs_torch, args.epochs)
    results = []
    for r in range(args.repeat):
        for cfg in configs:
            load = os.getloadavg()[0]
            res = run_child(cfg, args.data_dir, args.evals_per_epoch, args.torch_python, args.cache, args.threads,
                            args.eval_from)
            res.update(round=r + 1, load_before=load, load_after=os.getloadavg()[0],
                       finished=time.strftime("%H:%M:%S", time.gmtime()))
            results.append(res)
            print(f"  {res['label']} (round {r + 1}): 99.0% at {_fmt(res['seconds_to_99.0'])} s, final "
                  f"{res['final_test_accuracy']:.4f}, {res['images_per_second']:.0f} images/s; load "
                  f"{load:.2f}->{res['load_after']:.2f}", flush=True)
    print(f"\n# {time.strftime('%Y-%m-%d', time.gmtime())}, {platform.machine()} {os.cpu_count()} cores; "
          f"seconds from process start (imports, data, compilation included), the test set evaluated "
          f"{args.evals_per_epoch}x an epoch from epoch {args.eval_from} on, off the clock (both sides); JAX cache: "
          f"{args.cache or 'a fresh empty one per run'}")
    print("| config | round | s to first step | s to 99.0% (epoch) | final test acc | s/epoch | images/s | "
          "process s | load |\n|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cached = "" if r["cached"] is None else (", cached" if r["cached"] else ", cold")
        at = (f"{r['seconds_to_99.0']:.1f} ({r['epoch_at_99.0']:.1f})" if r["seconds_to_99.0"] is not None
              else "—")
        print(f"| {r['label']}{cached} | {r['round']} | {r['to_first_step']:.1f} | {at} | "
              f"{100 * r['final_test_accuracy']:.2f}% | {r['seconds_per_epoch']:.1f} | {r['images_per_second']:.0f} | "
              f"{r['process_seconds']:.1f} | {r['load_before']:.2f}-{r['load_after']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


def main() -> int:
    p = cli.parser(__doc__)
    p.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR"))
    p.add_argument("--epochs", type=int, help="passes over the training set (default: 2; 1 with --vs-torch)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reference-steps", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--after-compile", metavar="CONFIGS",
                   help="time training after compilation to 99.0%%/99.5%% for these configs (see above)")
    p.add_argument("--eval-every", type=int, default=26, help="with --after-compile: steps between evaluations")
    p.add_argument("--vs-torch", metavar="CONFIGS", nargs="?", const="side=jax;side=torch",
                   help="time to 99.0%% from process start, JAX's train_and_evaluate against the PyTorch twin "
                        "(benchmarks/torch_twin.py), each config in a fresh process (see above)")
    p.add_argument("--repeat", type=int, default=1, help="with --vs-torch: rounds of the configs, interleaved")
    p.add_argument("--evals-per-epoch", type=int, default=10,
                   help="with --vs-torch: test-set evaluations an epoch, off the clock (default: %(default)s)")
    p.add_argument("--eval-from", type=float, default=0.0, metavar="EPOCHS",
                   help="with --vs-torch: no test evaluations before this many epochs (default: %(default)s)")
    p.add_argument("--torch-python", default=os.environ.get("BENCH_TORCH_PYTHON"),
                   help="with --vs-torch: the Python of a venv with requirements-bench.txt "
                        "(default: $BENCH_TORCH_PYTHON)")
    p.add_argument("--threads", type=int, default=2, help="with --vs-torch: torch's intra-op threads")
    p.add_argument("--cache", metavar="DIR",
                   help="with --vs-torch: JAX compilation caches kept in DIR/<config> (the first run of a "
                        "config fills its cache); default: a fresh empty cache for every run")
    p.add_argument("--jax-child", action="store_true", help=argparse_hidden())
    p.add_argument("--lr", type=float, default=3e-3, help=argparse_hidden())
    p.add_argument("--augment", type=int, default=1, help=argparse_hidden())
    p.add_argument("--max-train", type=int, default=0, help=argparse_hidden())
    args = p.parse_args()
    if not args.data_dir:
        print("error: give --data-dir (or set MNIST_DATA_DIR) with the real MNIST files", file=sys.stderr)
        return 2
    args.epochs = args.epochs or (1 if args.vs_torch or args.jax_child else 2)
    if args.jax_child:
        return jax_child(args.data_dir, args.epochs, args.batch_size, args.lr, bool(args.augment),
                         args.evals_per_epoch, args.max_train, args.eval_from)
    if args.vs_torch:
        try:
            configs = parse_vs_configs(args.vs_torch, args.epochs)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if any(c["side"] == "torch" for c in configs) and not args.torch_python:
            print("error: --vs-torch runs the PyTorch twin: give --torch-python (or set BENCH_TORCH_PYTHON), "
                  "a venv's python with requirements-bench.txt installed", file=sys.stderr)
            return 2
        return vs_torch(args)

    data = load_mnist(args.data_dir)
    if args.after_compile:
        configs = parse_configs(args.after_compile)
        print(f"# training after compilation, {len(jax.devices())} x {jax.devices()[0].device_kind}, "
              f"jax {jax.__version__}; test set evaluated every {args.eval_every} steps (untimed)", flush=True)
        results = after_compile(data, configs, args.eval_every)
        print("\n| config | s to 99.0% | s to 99.5% | final test acc | train s | steps |\n|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['config']} | {_fmt(r['seconds_to_99.0'])} | {_fmt(r['seconds_to_99.5'])} | "
                  f"{r['final_test_accuracy']:.4f} | {r['train_seconds']:.3f} | {r['steps']} |")
        if args.json:
            Path(args.json).write_text(json.dumps({"device": str(jax.devices()[0].device_kind),
                                                   "jax": jax.__version__, "results": results}, indent=2))
        return 0
    marks = {}

    def on_epoch(epoch, state):
        acc = T.evaluate(T.MNISTCNN(), state["params"], state["batch_stats"], data.test)["accuracy"]
        now = time.perf_counter() - T_START
        for target in (0.990, 0.995):
            if acc >= target and target not in marks:
                marks[target] = now
        print(f"  epoch {epoch}: test accuracy {acc:.4f} at {now:.1f} s since process start", flush=True)
        return {"test_accuracy": acc, "since_process_start": now}

    cfg = T.TrainConfig(epochs=args.epochs, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as workdir:
        result = T.train_and_evaluate(cfg, workdir, data, progress=False, log=lambda *_: None,
                                      epoch_callback=on_epoch)
    hist = result["history"]
    steady = hist[1:] or hist  # the first epoch includes compilation
    figures = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {len(jax.devices())} x {jax.devices()[0].platform}",
        "jax": jax.__version__, "epochs": args.epochs, "batch_size": args.batch_size,
        "seconds_to_99.0": marks.get(0.990), "seconds_to_99.5": marks.get(0.995),
        "final_test_accuracy": result["test_accuracy"],
        "seconds_per_epoch": float(np.mean([h["epoch_seconds"] for h in steady])),
        "images_per_second": float(np.mean([h["images_per_second"] for h in steady])),
        "peak_rss_mb": peak_rss_mb(),
    }
    if args.reference_steps:
        ref = time_reference(data.train.images, data.train.labels, args.reference_steps)
        steps_per_epoch = len(data.train) // 128
        figures.update({"reference_seconds_per_step": ref, "reference_seconds_per_epoch": ref * steps_per_epoch})
    print("\n| figure | value |\n|---|---|")
    for k, v in figures.items():
        print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

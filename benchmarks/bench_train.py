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
"""
import time

T_START = time.perf_counter()

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cpu_devices import use_one_device_per_core

use_one_device_per_core()  # as train_mnist.py does when run as a script

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

    @jax.jit
    def step(params, batch_stats, opt_state, x, y, key):
        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                      rngs={"dropout": key}, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reference-steps", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    if not args.data_dir:
        print("error: give --data-dir (or set MNIST_DATA_DIR) with the real MNIST files", file=sys.stderr)
        return 2

    data = load_mnist(args.data_dir)
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

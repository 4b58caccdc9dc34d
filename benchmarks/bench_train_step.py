"""This project's training step alone (batch 128, AdamW, one JAX device per core), for the
README's comparison with ``bench_torch_step.py``: the compiled step ``train_mnist.py`` runs,
timed over ``--steps`` steps after two untimed ones, on random uint8 digits (speed does not
depend on the pixels).

    python benchmarks/bench_train_step.py             # with augmentation, as the default run
    python benchmarks/bench_train_step.py --no-augment
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cpu_devices import use_one_device_per_core  # noqa: E402

use_one_device_per_core()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import cli  # noqa: E402
import train_mnist as T  # noqa: E402
from mnist_cnn_model import MNISTCNN  # noqa: E402


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--steps", type=T.positive_int, default=20, help="timed steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=T.positive_int, default=128)
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    args = parser.parse_args()

    devices = jax.devices()
    if args.batch_size % len(devices):
        parser.error(f"--batch-size: expected a multiple of the {len(devices)} devices, got {args.batch_size}")
    cfg = T.TrainConfig(augment=args.augment, batch_size=args.batch_size)
    model = MNISTCNN()
    tx = T.make_optimizer(cfg, 1000)
    state, key = T.initial_state(model, tx, 0)
    n = (args.steps + 2) * args.batch_size
    rng = np.random.default_rng(0)
    state, images, labels, chunk = T.on_all_devices(  # called one step at a time, as on a CPU
        model, tx, cfg, state, rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
        rng.integers(0, 10, (n,), dtype=np.int32))
    batches = np.arange(n, dtype=np.int32).reshape(-1, 1, args.batch_size)
    for i in range(2):  # compile, then one more untimed step
        state, _ = chunk(state, images, labels, batches[i], key)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for i in range(2, args.steps + 2):
        state, _ = chunk(state, images, labels, batches[i], key)
    jax.block_until_ready(state)
    dt = (time.perf_counter() - t0) / args.steps
    print(f"jax {jax.__version__} on {len(devices)} {devices[0].platform} device(s), batch {args.batch_size}, "
          f"{'with' if args.augment else 'no'} augmentation: {dt * 1000:.0f} ms/step, "
          f"{dt * (55_000 // args.batch_size):.0f} s/epoch ({55_000 // args.batch_size} steps)")


if __name__ == "__main__":
    main()

"""PyTorch reference: one training step of the same CNN on this CPU (batch 128, AdamW), for the
README's comparison with ``bench_train_step.py``. Needs requirements-bench.txt.

    python benchmarks/bench_torch_step.py [--steps 15] [--threads 2]
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cli  # noqa: E402


def conv_block(cin: int, cout: int) -> list:
    import torch.nn as nn
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--steps", type=int, default=15, help="timed steps after 3 warm-up steps (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        parser.error(f"--steps and --threads: expected positive integers, got {args.steps} and {args.threads}")
    import torch
    import torch.nn as nn

    torch.set_num_threads(args.threads)
    model = nn.Sequential(  # the architecture of mnist_cnn_model.MNISTCNN, NCHW
        *conv_block(1, 32), *conv_block(32, 32), nn.MaxPool2d(2),
        *conv_block(32, 64), *conv_block(64, 64), nn.MaxPool2d(2),
        *conv_block(64, 128), *conv_block(128, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = (time.perf_counter() - t0) / args.steps
    print(f"torch {torch.__version__}, {args.threads} threads: {dt * 1000:.0f} ms/step, "
          f"{dt * 429:.0f} s/epoch (429 steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

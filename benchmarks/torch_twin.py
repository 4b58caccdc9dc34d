"""A PyTorch twin of ``mnist_cnn_model.MNISTCNN`` and ``train_mnist.py``'s recipe, for the
training-speed comparison of ``benchmarks/bench_train.py --vs-torch``. Needs torch
(requirements-bench.txt, a venv of its own); nothing here imports torch at module level, so
the project's tests may import this file without it.

The twin, against ``train_mnist.TrainConfig``'s defaults:

- the model: (x - 0.1307) / 0.3081, [Conv 3x3 SAME -> BatchNorm -> ReLU] x 2 per block at widths
  32/64/128, 2x2 max pooling after the first two blocks, global average pooling, Dense 256,
  ReLU, dropout 0.5, Dense 10 (322,922 parameters). Kernels drawn as Flax's default
  ``lecun_normal`` (truncated normal, fan-in variance 1), biases zero; BatchNorm momentum 0.1
  in torch's convention (Flax's 0.9), epsilon 1e-5. Torch's running variance is the unbiased
  batch variance, Flax's the biased one (inference differs by a factor 128/127 of the
  variance's update; the training step is the same).
- the recipe: AdamW (betas 0.9/0.999, eps 1e-8, weight decay 1e-4 on every parameter, as
  ``optax.adamw``), torch's ``OneCycleLR`` (cosine, 25% warm-up from peak/25, down to
  peak/25/1e4; optax's ``cosine_onecycle_schedule`` ends its phases one step later), peak
  3e-3, batch 128, cross-entropy with the project's label smoothing (0.0 since commit
  712e237), the same 55,000/5,000 train/validation split and the same shuffle per epoch
  (``epoch_batches``), the last incomplete batch dropped.
- augmentation (off unless asked): the same random rotation/scale/shift ranges, bilinear
  with zero fill (``affine_grid`` + ``grid_sample``); torch's random numbers, not JAX's.

Run by ``bench_train.py`` as ``python benchmarks/torch_twin.py --data-dir DIR ...``; one JSON
line per event on stdout (see ``bench_train.child_events``).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

T_SPAWN = float(os.environ.get("BENCH_SPAWN_TIME") or time.time())  # the parent's spawn time

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import cli  # noqa: E402

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # as mnist_cnn_model (which imports JAX)


def epoch_batches(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
    """``train_mnist.epoch_batches`` without JAX: the same shuffle (tests check they agree)."""
    steps = num_examples // batch_size
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return perm[:steps * batch_size].reshape(steps, batch_size)


def build_model(seed: int = 0, widths=(32, 64, 128), dense: int = 256, dropout: float = 0.5):
    import torch
    import torch.nn as nn

    class Standardise(nn.Module):  # MNISTCNN.stem: the model takes pixels in [0, 1]
        def forward(self, x):
            return (x - MNIST_MEAN) / MNIST_STD

    torch.manual_seed(seed)
    layers: list = [Standardise()]
    cin = 1
    for b, w in enumerate(widths):
        for _ in range(2):
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w, momentum=0.1, eps=1e-5), nn.ReLU()]
            cin = w
        if b < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, dense), nn.ReLU(), nn.Dropout(dropout),
               nn.Linear(dense, 10)]
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                # Flax's lecun_normal: variance_scaling(1, fan_in, truncated_normal), cut at 2 std
                std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
                nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
                nn.init.zeros_(m.bias)
    return model


def random_affine(x, max_rotation_deg: float = 10.0, max_scale: float = 0.1, max_shift: float = 2.0,
                  generator=None):
    """``train_mnist.random_affine`` in torch: x (N, 1, 28, 28) float; output pixel -> source pixel
    through rotation by a, scale s and shift t (pixels), bilinear, zeros outside."""
    import torch

    n = x.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=generator) * 2 - 1  # noqa: E731
    a = math.radians(max_rotation_deg) * u(n)
    s = 1 + max_scale * u(n)
    t = max_shift * u(n, 2)
    return affine(x, a, s, t)


def affine(x, a, s, t):
    """Images x (N, 1, 28, 28) rotated by a (radians), scaled by s, shifted by t (N, 2: rows, columns)."""
    import torch
    import torch.nn.functional as F

    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    # Normalised coordinates (align_corners=False): (p - 13.5) / 14 for a 28-pixel side.
    theta = torch.stack([torch.stack([cos, sin, -t[:, 1] / 14], -1),
                         torch.stack([-sin, cos, -t[:, 0] / 14], -1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def evaluate(model, images, labels, batch_size: int = 1000) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(labels), batch_size):
            correct += int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
    model.train()
    return correct / max(len(labels), 1)


def emit(event: str, paused: float, **fields) -> None:
    """One JSON line: the event, seconds since the parent spawned this process less the time
    spent in benchmark-only test evaluations (``paused``), and the figures."""
    print(json.dumps({"event": event, "t": time.time() - T_SPAWN - paused, **fields}), flush=True)


def train(data_dir: str, epochs: int = 1, batch_size: int = 128, learning_rate: float = 3e-3,
          weight_decay: float = 1e-4, label_smoothing: float = 0.0, augment: bool = False, seed: int = 0,
          threads: int = 2, evals_per_epoch: int = 10, workdir: str | None = None,
          max_train_examples: int | None = None, eval_from: float = 0.0) -> dict:
    import torch
    import torch.nn.functional as F

    from mnist_data import load_mnist

    torch.set_num_threads(threads)
    paused = 0.0
    emit("imported", paused, torch=torch.__version__, threads=threads)
    data = load_mnist(data_dir)
    data = type(data)(data.train.take(max_train_examples), data.validation, data.test, data.source)

    def tensors(split):  # uint8 NHWC -> float NCHW in [0, 1], standardised by the model's stem
        x = torch.from_numpy(np.array(split.images)).permute(0, 3, 1, 2).float().div_(255)
        return x, torch.from_numpy(split.labels.astype(np.int64))

    (xtr, ytr), (xval, yval), (xte, yte) = map(tensors, (data.train, data.validation, data.test))
    emit("data", paused)

    model = build_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=weight_decay)
    steps_per_epoch = len(ytr) // batch_size
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=learning_rate, total_steps=total, pct_start=0.25,
                                                anneal_strategy="cos", div_factor=25.0, final_div_factor=1e4,
                                                cycle_momentum=False)
    gen = torch.Generator().manual_seed(seed)
    eval_at = {round(steps_per_epoch * k / evals_per_epoch) for k in range(1, evals_per_epoch + 1)}
    step, t_train, best_val = 0, None, -1.0
    for epoch in range(epochs):
        batches = torch.from_numpy(epoch_batches(seed, epoch, len(ytr), batch_size))
        t_epoch = time.perf_counter()
        epoch_paused = 0.0
        for i, idx in enumerate(batches):
            x, y = xtr[idx], ytr[idx]
            if augment:
                x = random_affine(x, generator=gen)
            loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if not math.isfinite(loss.item()):
                raise ValueError(f"training diverged at step {step}")
            if t_train is None:
                t_train = time.time()
                emit("first_step", paused)
            if i + 1 in eval_at and step >= eval_from * steps_per_epoch - 0.5:  # benchmark-only, off the clock
                t0 = time.perf_counter()
                acc = evaluate(model, xte, yte)
                dt = time.perf_counter() - t0
                paused += dt
                epoch_paused += dt
                emit("test", paused, step=step, epoch=step / steps_per_epoch, accuracy=acc)
        val = evaluate(model, xval, yval)  # the recipe's per-epoch validation (picks the best epoch)
        if workdir:  # a checkpoint per epoch, as train_mnist.py saves one
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step},
                       Path(workdir) / "latest.pt")
        seconds = time.perf_counter() - t_epoch - epoch_paused
        best_val = max(best_val, val)
        emit("epoch", paused, epoch=epoch + 1, val_accuracy=val, seconds=seconds,
             images_per_second=steps_per_epoch * batch_size / seconds)
    acc = evaluate(model, xte, yte)
    emit("done", paused, test_accuracy=acc, steps=step)
    return {"test_accuracy": acc}


def main(argv=None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR"))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--augment", action="store_true", help="the random rotation/scale/shift (off by default)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--evals-per-epoch", type=int, default=10)
    p.add_argument("--workdir")
    p.add_argument("--eval-from", type=float, default=0.0, help="no test evaluations before this many epochs")
    p.add_argument("--max-train-examples", type=int, default=0, help="the first N training examples only (0: all)")
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("give --data-dir (or set MNIST_DATA_DIR) with the real MNIST files")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: torch_twin.py needs torch: run it from a venv made with requirements-bench.txt",
              file=sys.stderr)
        return 2
    train(args.data_dir, args.epochs, args.batch_size, args.learning_rate, label_smoothing=args.label_smoothing,
          augment=args.augment, threads=args.threads, evals_per_epoch=args.evals_per_epoch, workdir=args.workdir,
          max_train_examples=args.max_train_examples or None, eval_from=args.eval_from)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

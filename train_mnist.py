"""Train the MNIST CNN with checkpoints, then report test accuracy.

    python train_mnist.py --data-dir DIR            # DIR: a folder with the four MNIST IDX files
    python train_mnist.py --tfds                     # or MNIST via tensorflow-datasets
    python train_mnist.py --dataset fashion_mnist --tfds          # Fashion-MNIST (or kmnist)
    python train_mnist.py --dataset kmnist --data-dir DIR          # DIR: KMNIST's IDX files
    python train_mnist.py --data-dir DIR --max-train-examples 2000 --epochs 1    # a smoke run
    python train_mnist.py --data-dir DIR --resume   # continue the run in checkpoints/
    python train_mnist.py --data-dir DIR --evaluate --checkpoint pretrained      # evaluate only

Data: --data-dir if given, else $MNIST_DATA_DIR, else a copy tensorflow-datasets has
prepared ($TFDS_DATA_DIR, default ~/tensorflow_datasets); --tfds downloads one
(pip install -r requirements-tfds.txt). With none of these the run stops at once and
says where to get the four IDX files (yann.lecun.com/exdb/mnist or a mirror).
Checkpoint for --evaluate/--export: --checkpoint if given, else checkpoints/ when a
training run there has saved a step, else the shipped pretrained/.

--dataset (mnist, fashion_mnist or kmnist: tensorflow-datasets' names) picks the data; for
fashion_mnist/kmnist the folder variable is $FASHION_MNIST_DATA_DIR/$KMNIST_DATA_DIR and the
tfds copy is theirs. The checkpoint stores the dataset, its class names and the input
normalisation (mean and std of the training pixels, after the validation hold-out), so the
demos and the explorer need no flag; --evaluate reads the checkpoint's dataset unless told.

The last line printed is ``test_accuracy: 0.XXXX``; ``<workdir>/metrics.json`` holds it
with the per-epoch history, and ``<workdir>/training_curves.png`` plots it. Ctrl-C saves a
checkpoint; --resume continues it (the interrupted epoch's loss and the elapsed time carry
over). A run killed outright resumes from its last finished epoch.

On a CPU the host is split into one JAX device per core (up to 8) and the batch is
sharded across them; set XLA_FLAGS yourself to choose otherwise.
"""
from __future__ import annotations

import os

import cli

if __name__ == "__main__":
    cli.before_jax()  # one JAX device per CPU core, compilation cache: before JAX is imported

import argparse
import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path

from mnist_data import DATASETS  # numpy only: the command line is read before JAX is imported

# ----------------------------------------------------------------------------- configuration
# The command line's training flags are TrainConfig's fields: each field's metadata holds
# its help text and argument type (``add_config_flags``), so a new field is a new flag.


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def seed_int(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {text}")
    return value


def dataset_name(text: str) -> str:
    if text not in DATASETS:
        raise argparse.ArgumentTypeError(f"{text}: expected one of {', '.join(DATASETS)}")
    return text


def _flag(default, help: str, type=None, flag: str | None = None, default_text: str | None = None):
    """A TrainConfig field and its command-line flag (``--field-name`` unless ``flag``)."""
    return dataclasses.field(default=default, metadata={"help": help, "type": type, "flag": flag,
                                                        "default_text": default_text})


@dataclasses.dataclass
class TrainConfig:
    dataset: str = _flag("mnist", f"the data: {', '.join(DATASETS)} (tensorflow-datasets' names)", dataset_name,
                         default_text="mnist; with --evaluate, the checkpoint's")
    epochs: int = _flag(15, "passes over the training set", positive_int)
    batch_size: int = _flag(128, "examples per step, split evenly over the JAX devices", positive_int)
    learning_rate: float = _flag(3e-3, "peak of the one-cycle learning-rate schedule", positive_float)
    weight_decay: float = _flag(1e-4, "AdamW's decoupled weight decay", non_negative_float)
    # 0.0 since 2026-12-02 (docs/frame-study.md): with 0.1 the 15-epoch run's GradCAM put 42-68% of its
    # mass on the image frame and its confidences were capped near 90% (test ECE 8.4%); without it
    # the frame share is 0.12-0.18 per class, the test ECE 0.16%, the accuracy 99.66% against 99.71%.
    label_smoothing: float = _flag(0.0, "label smoothing of the training loss", fraction)
    augment: bool = _flag(True, "turn off the random rotation/scale/shift of training digits (on the device)",
                          flag="--no-augment")
    max_rotation_deg: float = _flag(10.0, "augmentation: largest rotation, in degrees", non_negative_float)
    max_scale: float = _flag(0.1, "augmentation: largest relative change of size", fraction)
    max_shift: float = _flag(2.0, "augmentation: largest shift, in pixels", non_negative_float)
    seed: int = _flag(0, "seeds the initial weights, the shuffling, the augmentation and dropout", seed_int)
    num_validation: int = _flag(5_000, "training examples held out (fixed permutation) to pick the best epoch",
                                non_negative_int)
    max_train_examples: int | None = _flag(None, "train on the first N training examples only", positive_int,
                                           default_text="all")
    # Training steps fused into one compiled call (lax.scan); None: 1 on CPU, where XLA
    # runs a loop body about 2x slower than the same ops outside a loop, else up to 32
    # (``steps_per_call``: a divisor of the epoch's steps, so one chunk length compiles).
    steps_per_call: int | None = _flag(None, "training steps fused into one compiled call", positive_int,
                                       default_text="1 on a CPU, up to 32 elsewhere")
    # Larger batches raise peak memory (+350 MB at 1,000), not speed.
    eval_batch_size: int = _flag(250, "batch size of the validation and test passes", positive_int)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, from its metadata (help, type, default)."""
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):  # a switch that turns the default off
            parser.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true",
                                help=meta["help"])
            continue
        default = meta["default_text"] or "%(default)s"
        metavar = ("N" if meta["type"] in (positive_int, non_negative_int, seed_int)
                   else "NAME" if meta["type"] is dataset_name else "X")
        parser.add_argument(flag, dest=f.name, type=meta["type"], default=f.default,
                            metavar=metavar, help=f"{meta['help']} (default: {default})")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


# ----------------------------------------------------------------------------- metrics


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser(__doc__)
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder with the four IDX files of --dataset (default: $MNIST_DATA_DIR, "
                        "$FASHION_MNIST_DATA_DIR or $KMNIST_DATA_DIR by --dataset, else a copy tensorflow-datasets "
                        "has prepared ($TFDS_DATA_DIR, default ~/tensorflow_datasets))")
    p.add_argument("--tfds", action="store_true",
                   help="read --dataset with tensorflow-datasets, downloading it on first use "
                        "(pip install -r requirements-tfds.txt)")
    p.add_argument("--workdir", default=cli.DEFAULT_WORKDIR, metavar="DIR",
                   help="where checkpoints, metrics.json and training_curves.png go (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run whose checkpoints are in --workdir (refused if there are none)")
    add_config_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--evaluate", action="store_true", help="only evaluate --checkpoint on the test set")
    p.add_argument("--checkpoint", metavar="PATH",
                   help=f"with --evaluate: a workdir or step folder (default: {cli.CHECKPOINT_FALLBACK})")
    p.add_argument("--export", metavar="DIR",
                   help="with --evaluate: also write a weights-only copy with its test accuracy to DIR")
    return p


if __name__ == "__main__":
    build_parser().parse_args()  # --help and argument errors answer here, before JAX is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import mnist_checkpoint as ckpt  # noqa: E402
from mnist_cnn_model import MNISTCNN, count_params  # noqa: E402
from mnist_data import MNIST, Split, load_mnist, load_test_split, pixel_stats  # noqa: E402

def compute_metrics(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> dict:
    onehot = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return {"loss": optax.softmax_cross_entropy(logits, onehot).mean(),
            "accuracy": (logits.argmax(-1) == labels).mean()}


# ----------------------------------------------------------------------------- augmentation


def random_affine(key: jax.Array, images: jax.Array, cfg: TrainConfig) -> jax.Array:
    """Rotate, scale and shift each image (N, 28, 28, 1) float by a random amount, bilinear."""
    n = images.shape[0]
    k1, k2, k3 = jax.random.split(key, 3)
    angle = jnp.deg2rad(cfg.max_rotation_deg) * jax.random.uniform(k1, (n,), minval=-1, maxval=1)
    scale = 1 + cfg.max_scale * jax.random.uniform(k2, (n,), minval=-1, maxval=1)
    shift = cfg.max_shift * jax.random.uniform(k3, (n, 2), minval=-1, maxval=1)
    yy, xx = jnp.mgrid[0:28, 0:28].astype(jnp.float32) - 13.5  # (28, 28) centred grid

    def warp(img, a, s, t):
        cos, sin = jnp.cos(a) / s, jnp.sin(a) / s  # inverse map: output pixel -> source pixel
        src_y = cos * yy - sin * xx + 13.5 - t[0]
        src_x = sin * yy + cos * xx + 13.5 - t[1]
        return jax.scipy.ndimage.map_coordinates(img[..., 0], [src_y, src_x], order=1, cval=0.0)[..., None]

    return jax.vmap(warp)(images, angle, scale, shift)


# ----------------------------------------------------------------------------- training


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = optax.cosine_onecycle_schedule(max(total_steps, 1), cfg.learning_rate, pct_start=0.25)
    return optax.adamw(schedule, weight_decay=cfg.weight_decay)


def make_train_chunk(model: MNISTCNN, tx, cfg: TrainConfig, mesh: Mesh):
    """Compiled function running ``steps_per_call`` steps; batches are gathered on the device.

    Data-parallel with ``shard_map``: each device takes its slice of every batch, BatchNorm
    statistics and gradients are averaged across devices (``pmean``), so one device and
    several compute the same mathematics.
    """
    bn_model = model.clone(bn_axis_name="data")

    def local_chunk(state, images, labels, batch_idx, base_key):
        device_index = jax.lax.axis_index("data")

        def step(state, idx):  # idx: this device's part of one batch, (B / devices,)
            key = jax.random.fold_in(jax.random.fold_in(base_key, state["step"]), device_index)
            aug_key, dropout_key = jax.random.split(key)
            x = images[idx].astype(jnp.float32) / 255.0  # (b, 28, 28, 1)
            y = labels[idx]
            if cfg.augment:
                x = random_affine(aug_key, x, cfg)

            def loss_fn(params):
                logits, updates = bn_model.apply(
                    {"params": params, "batch_stats": state["batch_stats"]}, x, train=True,
                    rngs={"dropout": dropout_key}, mutable=["batch_stats"])
                m = compute_metrics(logits, y, cfg.label_smoothing)
                return m["loss"], (m, updates["batch_stats"])

            grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state["params"])
            grads = jax.lax.pmean(grads, "data")
            metrics = jax.lax.pmean(metrics, "data")
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            new = {"params": params, "batch_stats": batch_stats, "opt_state": opt_state,
                   "step": state["step"] + 1}
            return new, metrics

        if batch_idx.shape[0] == 1:  # no loop: XLA's CPU backend runs loop bodies ~2x slower
            state, metrics = step(state, batch_idx[0])
            return state, jax.tree_util.tree_map(lambda a: a[None], metrics)
        return jax.lax.scan(step, state, batch_idx)

    sharded = jax.shard_map(local_chunk, mesh=mesh,
                            in_specs=(P(), P(), P(), P(None, "data"), P()),
                            out_specs=(P(), P()), check_vma=False)
    return jax.jit(sharded, donate_argnums=0)


def on_all_devices(model: MNISTCNN, tx, cfg: TrainConfig, state: dict, images, labels):
    """The state and the training set (uint8 images, gathered into batches on the device)
    replicated on every local device, and ``make_train_chunk`` over their mesh."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    state, images, labels = jax.device_put((state, images, labels), NamedSharding(mesh, P()))
    return state, images, labels, make_train_chunk(model, tx, cfg, mesh)


def make_eval_fn(model: MNISTCNN):
    @jax.jit
    def eval_batch(params, batch_stats, images, labels, mask):
        logits = model.apply({"params": params, "batch_stats": batch_stats},
                             images.astype(jnp.float32) / 255.0)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return (jnp.sum(loss * mask), jnp.sum((logits.argmax(-1) == labels) * mask),
                logits.argmax(-1), logits)
    return eval_batch


def evaluate(model: MNISTCNN, params, batch_stats, split: Split, batch_size: int = 250,
             eval_fn=None) -> dict:
    """Loss and accuracy over a whole split, in fixed-size batches (last one padded), with the
    predictions and the logits (float32, (N, classes))."""
    eval_fn = eval_fn or make_eval_fn(model)
    n = len(split)
    loss = correct = 0.0
    predictions, logits = [], []
    for start in range(0, n, batch_size):
        x = split.images[start:start + batch_size]
        y = split.labels[start:start + batch_size]
        pad = batch_size - len(y) if n > batch_size else 0
        mask = np.concatenate([np.ones(len(y), np.float32), np.zeros(pad, np.float32)])
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros(pad, y.dtype)])
        l, c, p, z = eval_fn(params, batch_stats, x, y, mask)
        loss, correct = loss + float(l), correct + float(c)
        predictions.append(np.asarray(p)[:len(mask) - pad])
        logits.append(np.asarray(z)[:len(mask) - pad])
    return {"loss": loss / max(n, 1), "accuracy": correct / max(n, 1),
            "predictions": np.concatenate(predictions) if predictions else np.zeros(0, np.int32),
            "logits": np.concatenate(logits) if logits else np.zeros((0, model.num_classes), np.float32)}


def curves_figure(history: list[dict], test_accuracy: float | None = None, label_smoothing: float = 0.0,
                  augment: bool = True):
    """Loss and accuracy per epoch (and the test accuracy, once known) on a matplotlib Figure
    of its own: no pyplot state, so a notebook's backend is left as it is. The training curves'
    legend says how they were measured (on augmented digits; the loss with label smoothing)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    how = ["augmented"] if augment else []
    loss_how = how + ([f"label smoothing {label_smoothing:g}"] if label_smoothing else [])
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-",
             label="train" + (f" ({', '.join(loss_how)})" if loss_how else ""))
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    accuracies = [100 * h[k] for h in history for k in ("train_accuracy", "val_accuracy")]
    ax2.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train (augmented)" if augment else "train")
    ax2.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", label="validation")
    title = "Accuracy"
    if test_accuracy is not None:
        accuracies.append(100 * test_accuracy)
        ax2.plot([epochs[-1]], [100 * test_accuracy], "*", ms=13, color="C3",
                 label=f"test, after epoch {epochs[-1]} ({100 * test_accuracy:.2f}%)")
        title = f"Accuracy (test {100 * test_accuracy:.2f}%)"
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    # Whole epochs half a step beyond either end (a single epoch is one column, not a point
    # on an axis from 0.96 to 1.04); accuracy from a little below the lowest value to 100.
    lo, hi = min(accuracies, default=0.0), max(accuracies, default=100.0)
    pad = max(1.0, 0.1 * (hi - lo))
    ax2.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad) + 0.5)
    for ax in (ax1, ax2):
        ax.set_xlim(0.5, max(epochs, default=1) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict], path: Path, test_accuracy: float | None = None, label_smoothing: float = 0.0,
                augment: bool = True) -> None:
    """``curves_figure`` written to ``path`` (PNG, 1000 x 380 pixels), atomically."""
    with cli.atomic_file(path) as tmp:
        curves_figure(history, test_accuracy, label_smoothing, augment).savefig(tmp, dpi=100)


def initial_state(model: MNISTCNN, tx, seed: int) -> tuple[dict, jax.Array]:
    """The training state at step 0 and the key the steps draw from, both from ``seed``."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = jax.jit(model.init)(init_key, jnp.zeros((1, 28, 28, 1)))
    return {"params": variables["params"], "batch_stats": variables["batch_stats"],
            "opt_state": tx.init(variables["params"]), "step": jnp.zeros((), jnp.int32)}, train_key


def epoch_batches(seed: int, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
    """One epoch's example indices, (steps, batch_size): a shuffle fixed by (seed, epoch),
    the last incomplete batch dropped."""
    steps = num_examples // batch_size
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return perm[:steps * batch_size].reshape(steps, batch_size)


def steps_per_call(steps_per_epoch: int, platform: str = "gpu", most: int = 32) -> int:
    """Steps fused into one compiled call. On a CPU one (XLA's CPU backend runs a loop body
    about 2x slower). Elsewhere the largest divisor of the epoch's steps up to ``most`` (so
    one length compiles, not a second for the epoch's remainder), or ``most`` when no
    divisor of at least a quarter of it exists."""
    if platform == "cpu":
        return 1
    if steps_per_epoch <= most:
        return steps_per_epoch
    best = max(d for d in range(1, most + 1) if steps_per_epoch % d == 0)
    return best if best >= most // 4 else most


def _chunk_lengths(start: int, steps_per_epoch: int, per_call: int) -> list[int]:
    out, s = [], start
    while s < steps_per_epoch:
        out.append(min(per_call, steps_per_epoch - s))
        s += out[-1]
    return out


WORKDIR_FILES = ("metrics.json", "training_curves.png")  # besides ckpt/, what a run writes there


def check_workdir(workdir: str | os.PathLike, resume: bool) -> None:
    """Refuse a workdir that is a file, one that holds checkpoints when not resuming (a new run
    there would delete them: orbax keeps only the latest and best steps), and one without a
    checkpoint when resuming. Raises ValueError."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir}: expected a folder, found a file")
    root = workdir / ckpt.CKPT_SUBDIR
    steps = [p.name for p in ckpt.step_dirs(root)] if root.is_dir() else []
    if steps and not resume:
        raise ValueError(f"--workdir {workdir} already holds checkpoints (steps {', '.join(steps)}): "
                         "pass --resume to continue that run, or choose another --workdir")
    if resume and not steps:
        raise ValueError(f"--resume: --workdir {workdir} holds no checkpoint to resume from "
                         f"(no finished step in {root}); leave out --resume to start a new run there")
    if not workdir.exists():  # find out now, not after loading the data, whether it can be made
        ckpt.check_writable(workdir, "--workdir")


def train_and_evaluate(cfg: TrainConfig, workdir: str | os.PathLike, data: MNIST,
                       resume: bool = False, progress: bool = True, log=print,
                       stop_after_steps: int | None = None, epoch_callback=None) -> dict:
    """Train, checkpoint every epoch, evaluate on the test set; returns the metrics dict.

    ``stop_after_steps`` interrupts the run after that many steps (saving a checkpoint),
    as Ctrl-C would; tests use it to check that resuming gives the same result.
    ``epoch_callback(epoch, state)`` may return a dict of extra figures for the epoch's
    history entry (the training benchmark adds test accuracy this way).
    """
    from tqdm import tqdm

    workdir = Path(workdir)
    check_workdir(workdir, resume)
    train = data.train.take(cfg.max_train_examples)
    devices = jax.devices()
    if cfg.batch_size % len(devices):
        raise ValueError(f"--batch-size must be divisible by the {len(devices)} devices, got {cfg.batch_size}")
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training examples")
    total_steps = steps_per_epoch * cfg.epochs
    if total_steps >= 2**31:  # the step counter is int32
        raise ValueError(f"--epochs {cfg.epochs}: expected fewer than {2**31 // steps_per_epoch:,} epochs "
                         f"of {steps_per_epoch} steps")

    workdir.mkdir(parents=True, exist_ok=True)  # after the checks above: no empty workdir left by them
    for name in WORKDIR_FILES:  # a run killed while writing one leaves its temporary file
        cli.remove_temporaries(workdir / name)
    if data.dataset != cfg.dataset:
        raise ValueError(f"the config's dataset is {cfg.dataset}, the data given is {data.dataset}")
    # The input normalisation: the pixel statistics of the images trained on (the training split
    # after the validation hold-out), stored in the model config and so in every checkpoint.
    input_mean, input_std = pixel_stats(train)
    model = MNISTCNN(input_mean=input_mean, input_std=input_std)
    tx = make_optimizer(cfg, total_steps)
    state, train_key = initial_state(model, tx, cfg.seed)
    meta = {"model": model.config(), "train_config": dataclasses.asdict(cfg), "dataset": data.dataset,
            "class_names": list(data.class_names), "data_source": data.source,
            "num_params": count_params(state["params"])}

    manager = ckpt.make_manager(workdir)
    history: list[dict] = []
    partial = None  # the interrupted epoch's sums, from a checkpoint saved by Ctrl-C
    elapsed_before = 0.0  # training time of the earlier sessions of a resumed run
    if resume:
        try:
            restored = ckpt.restore_latest(manager, state)
        except Exception as e:  # orbax: a weights-only export, or state of another shape
            raise ValueError(f"--workdir {workdir}: cannot resume, its latest checkpoint is not a training "
                             f"state of this model and optimizer ({cli.first_line(e)})") from None
        if restored is None:  # check_workdir saw a step; orbax did not
            raise ValueError(f"--resume: --workdir {workdir} holds no checkpoint orbax can restore")
        state, old_meta = restored
        stored = {"dataset": "mnist", **(old_meta.get("train_config") or {})}  # runs before --dataset: MNIST
        # The weights were trained with the checkpoint's normalisation (MNIST's if it stores none): kept.
        model = MNISTCNN.from_config(old_meta.get("model") or {})
        meta["model"] = model.config()
        if stored != meta["train_config"]:
            diff = ", ".join(f"{k} {stored.get(k)!r} there, {v!r} now" for k, v in meta["train_config"].items()
                             if stored.get(k) != v)
            raise ValueError(f"{workdir}: --resume with a different config than the checkpoint's: {diff}")
        history = old_meta.get("history", [])
        partial = old_meta.get("partial_epoch")
        elapsed_before = float(old_meta.get("elapsed_seconds") or (history[-1]["elapsed_seconds"] if history else 0))
        log(f"resumed from step {int(state['step'])} (epoch {len(history)})")

    state, images, labels, train_chunk = on_all_devices(model, tx, cfg, state, train.images, train.labels)
    per_call = cfg.steps_per_call or steps_per_call(steps_per_epoch, devices[0].platform)
    eval_fn = make_eval_fn(model)

    interrupted = {"flag": False}

    def on_sigint(signum, frame):  # finish the current chunk, then save and stop
        interrupted["flag"] = True

    old_handler = signal.signal(signal.SIGINT, on_sigint) if _in_main_thread() else None
    t_start = time.perf_counter() - elapsed_before  # elapsed_seconds continues across resumes
    step = int(state["step"])
    bar = None
    # An epoch counts once validated: a run stopped after an epoch's last step resumes at its
    # validation, not at the next epoch.
    epoch = start_epoch = min(len(history), step // steps_per_epoch)
    sums, counted, t_epoch = {"loss": 0.0, "accuracy": 0.0}, 0, time.perf_counter()
    last_val = None  # (step, validation logits) of this session's last validated epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            batches = epoch_batches(cfg.seed, epoch, len(train), cfg.batch_size)
            offset = step - epoch * steps_per_epoch
            sums = {"loss": 0.0, "accuracy": 0.0}
            counted, seconds_before = 0, 0.0
            if partial and partial.get("epoch") == epoch and partial.get("steps") == offset:
                # The steps of this epoch done before an interrupt count in its loss and rate.
                sums = {"loss": partial["loss_sum"], "accuracy": partial["accuracy_sum"]}
                counted, seconds_before = partial["steps"], partial["seconds"]
            t_epoch = time.perf_counter() - seconds_before
            bar = tqdm(total=steps_per_epoch, initial=offset, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not progress, unit="step", dynamic_ncols=True, file=sys.stdout)
            for length in _chunk_lengths(offset, steps_per_epoch, per_call):
                if stop_after_steps is not None:
                    length = min(length, stop_after_steps - step)
                t0 = time.perf_counter()
                idx = batches[step - epoch * steps_per_epoch: step - epoch * steps_per_epoch + length]
                state, metrics = train_chunk(state, images, labels, idx, train_key)
                loss, acc = (float(metrics["loss"].sum()), float(metrics["accuracy"].sum()))
                if not math.isfinite(loss):  # stop before a NaN state reaches a checkpoint
                    raise ValueError(f"training diverged in steps {step + 1}-{step + length} (loss {loss / length}); "
                                     f"nothing saved from them, earlier checkpoints stay in {workdir}; "
                                     "try a lower --learning-rate")
                step += length
                sums["loss"] += loss
                sums["accuracy"] += acc
                counted += length
                rate = length * cfg.batch_size / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss / length:.4f}", acc=f"{acc / length:.4f}", img_s=f"{rate:.0f}")
                bar.update(length)
                if interrupted["flag"] or step == stop_after_steps:
                    raise KeyboardInterrupt
            bar.close()
            val = evaluate(model, state["params"], state["batch_stats"], data.validation,
                           cfg.eval_batch_size, eval_fn)
            last_val = (step, val["logits"])
            seconds = time.perf_counter() - t_epoch
            history.append({"epoch": epoch + 1, "step": step,
                            "train_loss": sums["loss"] / max(counted, 1),
                            "train_accuracy": sums["accuracy"] / max(counted, 1),
                            "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                            "epoch_seconds": seconds, "elapsed_seconds": time.perf_counter() - t_start,
                            "images_per_second": counted * cfg.batch_size / seconds})
            if epoch_callback is not None:
                history[-1].update(epoch_callback(epoch + 1, state) or {})
            log(f"epoch {epoch + 1}: train_loss {history[-1]['train_loss']:.4f} "
                f"val_accuracy {val['accuracy']:.4f} ({seconds:.1f} s)")
            ckpt.save(manager, step, jax.device_get(state),
                      {**meta, "epoch": epoch + 1, "val_accuracy": val["accuracy"], "history": history,
                       "elapsed_seconds": history[-1]["elapsed_seconds"]},
                      val["accuracy"])
            cli.write_atomic(workdir / "metrics.json", json.dumps({"history": history, **_summary(meta)}, indent=2))
            plot_curves(history, workdir / "training_curves.png", None, cfg.label_smoothing, cfg.augment)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if manager.latest_step() != step:
            in_epoch = step - epoch * steps_per_epoch
            ckpt.save(manager, step, jax.device_get(state),
                      {**meta, "epoch": len(history), "val_accuracy": None, "history": history,
                       "elapsed_seconds": time.perf_counter() - t_start,
                       "partial_epoch": {"epoch": epoch, "steps": in_epoch, "loss_sum": sums["loss"],
                                         "accuracy_sum": sums["accuracy"],
                                         "seconds": time.perf_counter() - t_epoch}
                       if in_epoch == counted else None}, None)
        log(f"interrupted at step {step}: checkpoint saved in {workdir}; continue with --resume")
        raise
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
        manager.close()

    test = evaluate(model, state["params"], state["batch_stats"], data.test, cfg.eval_batch_size, eval_fn)
    result = {"history": history, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
              "train_seconds": time.perf_counter() - t_start, "devices": [str(d) for d in devices],
              **_summary(meta)}
    # Temperature scaling: T fitted on the validation split into each kept step's meta; ECE into metrics.json.
    # The final weights' validation and test logits are at hand (the last epoch's validation pass
    # and the test pass above): the latest step's calibration reuses them instead of another
    # 15,000-image forward pass and its compile (~15 s of a one-epoch run on the 2-core CPU).
    from mnist_calibration import calibrate_workdir
    latest = (last_val[1], test["logits"]) if last_val is not None and last_val[0] == step else None
    result.update(calibrate_workdir(workdir, data, cfg.eval_batch_size, latest_logits=latest))
    cli.write_atomic(workdir / "metrics.json", json.dumps(result, indent=2))
    if history:
        plot_curves(history, workdir / "training_curves.png", test["accuracy"], cfg.label_smoothing, cfg.augment)
    result["state"] = state
    return result


def _summary(meta: dict) -> dict:
    return {k: meta[k] for k in ("model", "train_config", "dataset", "class_names", "data_source", "num_params")}


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _dataset_given(argv) -> bool:
    """Whether --dataset is on the command line (--evaluate uses the checkpoint's otherwise)."""
    argv = sys.argv[1:] if argv is None else argv
    return any(a == "--dataset" or a.startswith("--dataset=") for a in argv)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tfds and args.data_dir:
        parser.error("--tfds and --data-dir are alternatives; give one")
    if args.evaluate:
        if args.resume:
            parser.error("--resume is for training; --evaluate only evaluates")
        checkpoint = args.checkpoint or ckpt.default_checkpoint()
        if args.export:
            ckpt.check_output_folder(args.export, ckpt.EXPORT_FILES, "--export")
        params, batch_stats, model, meta = ckpt.load_checkpoint(checkpoint)
        trained_on = ckpt.checkpoint_info(meta).dataset
        dataset = args.dataset if _dataset_given(argv) else trained_on
        print(f"checkpoint: {ckpt.resolve_checkpoint_dir(checkpoint)}")
        if dataset != trained_on:
            print(f"note: the checkpoint was trained on {trained_on}; evaluating it on {dataset}'s test set")
        test = evaluate(model, params, batch_stats, load_test_split(args.data_dir, tfds=args.tfds, dataset=dataset))
        if args.export:
            print(f"wrote {ckpt.export_for_inference(checkpoint, args.export, test['accuracy'])}")
        print(f"test_accuracy: {test['accuracy']:.4f}")
        return 0
    if args.export:
        parser.error("--export is only used with --evaluate")
    if args.checkpoint:
        parser.error("--checkpoint is only used with --evaluate (training writes into --workdir)")
    cfg = config_from_args(args)
    check_workdir(args.workdir, args.resume)
    data = load_mnist(args.data_dir, cfg.num_validation, tfds=args.tfds, dataset=cfg.dataset)
    print(f"data: {data.dataset} ({data.source}); train {len(data.train.take(cfg.max_train_examples))}, "
          f"validation {len(data.validation)}, test {len(data.test)}; devices: {len(jax.devices())} "
          f"x {jax.devices()[0].platform}")
    result = train_and_evaluate(cfg, args.workdir, data, resume=args.resume, progress=not args.no_progress)
    print(f"test_accuracy: {result['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

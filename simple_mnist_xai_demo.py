"""Quick demo, no training and no network: explain one real test digit per class.

    python simple_mnist_xai_demo.py                       # -> outputs/quick_demo.png
    python simple_mnist_xai_demo.py --out my.png --checkpoint pretrained

Checkpoint: --checkpoint if given, else checkpoints/ when a training run there has saved a
step, else the shipped pretrained/. Data: always the 200 real MNIST test digits shipped in
sample_data/ (MNIST by LeCun, Cortes and Burges, CC BY-SA 3.0): one per class is explained.
The figure shows each digit, its GradCAM overlay and its saliency map, with prediction and
confidence; one line per digit is printed, then how the confidences were made, then the path.

A checkpoint trained on fashion_mnist or kmnist (train_mnist.py --dataset) explains one test
image per class of its own dataset instead, read by the data rule of the other scripts
(--data-dir, else $FASHION_MNIST_DATA_DIR/$KMNIST_DATA_DIR, else a prepared tensorflow-datasets
copy; --tfds downloads one), and names the classes by the checkpoint's class names.
Confidences are softmax(logits / T) with the checkpoint's temperature (calibrated on the
validation split), plain softmax without one; the maps use the logits and do not change.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

import cli

if __name__ == "__main__":
    cli.before_jax(one_device_per_core=False)  # compilation cache: a second run skips compiling

DEFAULT_OUT = Path("outputs") / "quick_demo.png"


def pick_one_per_class(labels: np.ndarray) -> np.ndarray:
    return np.array([np.flatnonzero(labels == c)[0] for c in range(10)])


def run_quick_demo(out: str | os.PathLike = DEFAULT_OUT, checkpoint: str | None = None,
                   data_dir: str | None = None, tfds: bool = False) -> list[dict]:
    """Write the figure to ``out`` and return one dict per digit (label, prediction, confidence,
    and the class names of label and prediction).

    ``checkpoint`` None: the shipped pretrained/. The figure is a matplotlib Figure of its own
    (no pyplot state), so calling this in a notebook leaves its backend alone. ``confidence``
    is the checkpoint's calibrated probability (softmax(logits / T)), plain softmax when it
    stores no temperature; GradCAM and saliency use the logits. ``data_dir``/``tfds``: where a
    non-MNIST checkpoint's test images come from (MNIST uses the shipped digits)."""
    from matplotlib.figure import Figure

    import mnist_xai_visualizations as X
    from mnist_checkpoint import checkpoint_info, load_checkpoint
    from mnist_data import CREDITS, DISPLAY_NAMES, load_sample_digits, load_test_split

    params, batch_stats, model, meta = load_checkpoint(checkpoint)
    info = checkpoint_info(meta)
    names = info.class_names
    mnist = info.dataset == "mnist"
    sample = load_sample_digits() if mnist else load_test_split(data_dir, tfds, info.dataset)
    missing = sorted(set(range(10)) - set(np.unique(sample.labels).tolist()))
    if missing:
        raise ValueError(f"the {DISPLAY_NAMES[info.dataset]} test set has no image of class "
                         f"{', '.join(names[c] for c in missing)}; expected one per class")
    idx = pick_one_per_class(sample.labels)
    images = sample.images[idx].astype(np.float32) / 255.0  # (10, 28, 28, 1)

    gradcam, logits = X.GradCAM(model).attribute(params, batch_stats, images, return_logits=True)
    saliency = X.Saliency(model).attribute(params, batch_stats, images)
    preds = logits.argmax(-1)
    confidence = info.probabilities(logits).max(-1)  # calibrated when the checkpoint stores T
    gradcam, saliency = np.asarray(X.normalize_maps(gradcam)), np.asarray(X.normalize_maps(saliency))

    fig = Figure(figsize=(15, 5.2))
    axes = fig.subplots(3, 10)
    for i in range(10):
        axes[0, i].imshow(images[i, :, :, 0], cmap="gray", vmin=0, vmax=1)
        ok = "" if preds[i] == sample.labels[idx[i]] else " ✗"
        axes[0, i].set_title(f"pred {names[preds[i]]} ({100 * confidence[i]:.1f}%){ok}", fontsize=9)
        axes[1, i].imshow(X.overlay_heatmap(images[i], gradcam[i]))
        axes[2, i].imshow(saliency[i], cmap="hot", vmin=0, vmax=1)
    for ax, name in zip(axes[:, 0], ("digit" if mnist else "image", "GradCAM", "saliency |∂logit/∂x|")):
        ax.set_ylabel(name, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if mnist:
        fig.suptitle("One MNIST test digit per class: what the CNN looks at "
                     "(MNIST: LeCun, Cortes, Burges, CC BY-SA 3.0)", fontsize=11)
    else:
        fig.suptitle(f"One {DISPLAY_NAMES[info.dataset]} test image per class: what the CNN looks at "
                     f"({CREDITS[info.dataset].rstrip('.')})", fontsize=11)
    fig.tight_layout()
    cli.remove_temporaries(out)  # what a killed run left
    with cli.atomic_file(out) as tmp:  # never a half-written figure, nor a temporary one left
        fig.savefig(tmp, dpi=90)
    return [{"label": int(sample.labels[idx[i]]), "prediction": int(preds[i]),
             "confidence": float(confidence[i]), "label_name": names[int(sample.labels[idx[i]])],
             "prediction_name": names[int(preds[i])], "probabilities": info.probability_note} for i in range(10)]


def main(argv=None) -> int:
    from mnist_checkpoint import CHECKPOINT_FALLBACK, default_checkpoint

    parser = cli.parser(__doc__)
    parser.add_argument("--out", default=str(DEFAULT_OUT), metavar="PNG", help="PNG to write (default: %(default)s)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help=f"a workdir or step folder (default: {CHECKPOINT_FALLBACK})")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="only for a checkpoint trained on fashion_mnist/kmnist: a folder with that dataset's "
                             "IDX files (default: $FASHION_MNIST_DATA_DIR/$KMNIST_DATA_DIR, else a prepared "
                             "tensorflow-datasets copy); MNIST uses the shipped digits")
    parser.add_argument("--tfds", action="store_true",
                        help="only for such a checkpoint: read its test set with tensorflow-datasets, downloading "
                             "it on first use (pip install -r requirements-tfds.txt)")
    args = parser.parse_args(argv)
    if args.tfds and args.data_dir:
        parser.error("--tfds and --data-dir are alternatives; give one")
    if not args.out.lower().endswith(".png"):
        parser.error(f"--out: expected a .png path, got {args.out}")
    if Path(args.out).is_dir():
        parser.error(f"--out: expected a .png file path, got the folder {args.out}")

    t0 = time.perf_counter()
    rows = run_quick_demo(args.out, args.checkpoint or default_checkpoint(), args.data_dir, args.tfds)
    for r in rows:
        mark = "" if r["label"] == r["prediction"] else "   <- wrong"
        if r["label_name"] == str(r["label"]):  # MNIST's digits, as ever
            print(f"digit {r['label']}: predicted {r['prediction']} ({100 * r['confidence']:.1f}%){mark}")
        else:
            print(f"class {r['label']} ({r['label_name']}): predicted {r['prediction_name']} "
                  f"({100 * r['confidence']:.1f}%){mark}")
    print(f"confidences: {rows[0]['probabilities']}")
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

"""Quick demo, no training and no network: explain one real test digit per class.

    python simple_mnist_xai_demo.py                       # -> outputs/quick_demo.png
    python simple_mnist_xai_demo.py --out my.png --checkpoint pretrained

Checkpoint: --checkpoint if given, else checkpoints/ when a training run there has saved a
step, else the shipped pretrained/. Data: always the 200 real MNIST test digits shipped in
sample_data/ (MNIST by LeCun, Cortes and Burges, CC BY-SA 3.0): one per class is explained.
The figure shows each digit, its GradCAM overlay and its saliency map, with prediction and
confidence; one line per digit is printed, then the path written.
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


def run_quick_demo(out: str | os.PathLike = DEFAULT_OUT, checkpoint: str | None = None) -> list[dict]:
    """Write the figure to ``out`` and return one dict per digit (label, prediction, confidence).

    ``checkpoint`` None: the shipped pretrained/. The figure is a matplotlib Figure of its own
    (no pyplot state), so calling this in a notebook leaves its backend alone."""
    import jax
    from matplotlib.figure import Figure

    import mnist_xai_visualizations as X
    from mnist_checkpoint import load_checkpoint
    from mnist_data import load_sample_digits

    params, batch_stats, model, _ = load_checkpoint(checkpoint)
    sample = load_sample_digits()
    idx = pick_one_per_class(sample.labels)
    images = sample.images[idx].astype(np.float32) / 255.0  # (10, 28, 28, 1)

    gradcam, logits = X.GradCAM(model).attribute(params, batch_stats, images, return_logits=True)
    saliency = X.Saliency(model).attribute(params, batch_stats, images)
    preds = logits.argmax(-1)
    confidence = np.asarray(jax.nn.softmax(logits)).max(-1)
    gradcam, saliency = np.asarray(X.normalize_maps(gradcam)), np.asarray(X.normalize_maps(saliency))

    fig = Figure(figsize=(15, 5.2))
    axes = fig.subplots(3, 10)
    for i in range(10):
        axes[0, i].imshow(images[i, :, :, 0], cmap="gray", vmin=0, vmax=1)
        ok = "" if preds[i] == sample.labels[idx[i]] else " ✗"
        axes[0, i].set_title(f"pred {preds[i]} ({100 * confidence[i]:.1f}%){ok}", fontsize=9)
        axes[1, i].imshow(X.overlay_heatmap(images[i], gradcam[i]))
        axes[2, i].imshow(saliency[i], cmap="hot", vmin=0, vmax=1)
    for ax, name in zip(axes[:, 0], ("digit", "GradCAM", "saliency |∂logit/∂x|")):
        ax.set_ylabel(name, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("One MNIST test digit per class: what the CNN looks at "
                 "(MNIST: LeCun, Cortes, Burges, CC BY-SA 3.0)", fontsize=11)
    fig.tight_layout()
    cli.remove_temporaries(out)  # what a killed run left
    with cli.atomic_file(out) as tmp:  # never a half-written figure, nor a temporary one left
        fig.savefig(tmp, dpi=90)
    return [{"label": int(sample.labels[idx[i]]), "prediction": int(preds[i]),
             "confidence": float(confidence[i])} for i in range(10)]


def main(argv=None) -> int:
    from mnist_checkpoint import CHECKPOINT_FALLBACK, default_checkpoint

    parser = cli.parser(__doc__)
    parser.add_argument("--out", default=str(DEFAULT_OUT), metavar="PNG", help="PNG to write (default: %(default)s)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help=f"a workdir or step folder (default: {CHECKPOINT_FALLBACK})")
    args = parser.parse_args(argv)
    if not args.out.lower().endswith(".png"):
        parser.error(f"--out: expected a .png path, got {args.out}")
    if Path(args.out).is_dir():
        parser.error(f"--out: expected a .png file path, got the folder {args.out}")

    t0 = time.perf_counter()
    rows = run_quick_demo(args.out, args.checkpoint or default_checkpoint())
    for r in rows:
        mark = "" if r["label"] == r["prediction"] else "   <- wrong"
        print(f"digit {r['label']}: predicted {r['prediction']} ({100 * r['confidence']:.1f}%){mark}")
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

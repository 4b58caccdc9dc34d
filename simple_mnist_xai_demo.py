"""Quick demo, no training and no network: explain one real test digit per class.

    python simple_mnist_xai_demo.py                       # -> outputs/quick_demo.png
    python simple_mnist_xai_demo.py --out my.png --checkpoint checkpoints

Uses the shipped checkpoint (pretrained/) and the shipped sample of MNIST test digits
(sample_data/, MNIST by LeCun, Cortes and Burges, CC BY-SA 3.0). The figure shows each
digit, its GradCAM overlay and its saliency map, with prediction and confidence.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

import cli

DEFAULT_OUT = Path("outputs") / "quick_demo.png"


def pick_one_per_class(labels: np.ndarray) -> np.ndarray:
    return np.array([np.flatnonzero(labels == c)[0] for c in range(10)])


def run_quick_demo(out: str | os.PathLike = DEFAULT_OUT, checkpoint: str | None = None) -> list[dict]:
    """Write the figure to ``out`` and return one dict per digit (label, prediction, confidence)."""
    import jax
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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

    fig, axes = plt.subplots(3, 10, figsize=(15, 5.2))
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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    try:
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, out)  # never leave a half-written figure behind
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)  # there only if saving or the rename failed
    return [{"label": int(sample.labels[idx[i]]), "prediction": int(preds[i]),
             "confidence": float(confidence[i])} for i in range(10)]


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="PNG to write (default: %(default)s)")
    parser.add_argument("--checkpoint", help="checkpoint folder (default: the shipped pretrained/)")
    args = parser.parse_args(argv)
    if not args.out.lower().endswith(".png"):
        parser.error(f"--out: expected a .png path, got {args.out}")
    if Path(args.out).is_dir():
        parser.error(f"--out: expected a .png file path, got the folder {args.out}")
    from mnist_checkpoint import CheckpointError
    from mnist_data import MNISTDataError

    t0 = time.perf_counter()
    try:
        rows = run_quick_demo(args.out, args.checkpoint)
    except (CheckpointError, MNISTDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out}: {e.strerror}", file=sys.stderr)
        return 2
    for r in rows:
        mark = "" if r["label"] == r["prediction"] else "   <- wrong"
        print(f"digit {r['label']}: predicted {r['prediction']} ({100 * r['confidence']:.1f}%){mark}")
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    from cpu_devices import use_compilation_cache
    use_compilation_cache()  # before JAX is imported: a second run skips compiling
    sys.exit(main())

"""Quick demo, no training and no network: explain one real test digit per class.

    python simple_mnist_xai_demo.py                       # -> outputs/quick_demo.png
    python simple_mnist_xai_demo.py --out my.png --checkpoint pretrained

Checkpoint: --checkpoint if given, else always the shipped pretrained/ (a training run's
checkpoints/ only when named: --checkpoint checkpoints); it is printed and named in the figure. Data: always the 200 real MNIST test digits shipped in
sample_data/ (MNIST by LeCun, Cortes and Burges, CC BY-SA 3.0): one per class is explained.
The figure shows each digit with its true class, prediction and confidence, its Grad-CAM
overlay (--gradcam-layer block2 for a finer grid) and its saliency map (clipped at the 99th
percentile for display, as PAIR's saliency library does), colour bars and a caption saying
what each row shows. One line per digit is printed, then how the confidences were made, then
the path.

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
SALIENCY_PERCENTILE = 99.0  # display clipping of the saliency row (PAIR's VisualizeImageGrayscale default)


def pick_one_per_class(labels: np.ndarray) -> np.ndarray:
    return np.array([np.flatnonzero(labels == c)[0] for c in range(10)])


def run_quick_demo(out: str | os.PathLike = DEFAULT_OUT, checkpoint: str | None = None,
                   data_dir: str | None = None, tfds: bool = False, gradcam_layer: str | None = None) -> list[dict]:
    """Write the figure to ``out`` and return one dict per digit (label, prediction, confidence,
    and the class names of label and prediction).

    ``checkpoint`` None: the shipped pretrained/. The figure is a matplotlib Figure of its own
    (no pyplot state), so calling this in a notebook leaves its backend alone. ``confidence``
    is the checkpoint's calibrated probability (softmax(logits / T)), plain softmax when it
    stores no temperature; GradCAM and saliency use the logits. ``data_dir``/``tfds``: where a
    non-MNIST checkpoint's test images come from (MNIST uses the shipped digits)."""
    from matplotlib.figure import Figure

    import mnist_xai_visualizations as X
    from mnist_checkpoint import checkpoint_info, describe, load_checkpoint
    from mnist_data import CREDITS, DISPLAY_NAMES, load_sample_digits, load_test_split

    params, batch_stats, model, meta = load_checkpoint(checkpoint)
    ckpt_text = describe(checkpoint, meta)
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

    cam = X.GradCAM(model, layer=gradcam_layer)
    gradcam, logits = cam.attribute(params, batch_stats, images, return_logits=True)
    saliency = X.Saliency(model).attribute(params, batch_stats, images)
    smooth = X.SmoothGrad(model).attribute(params, batch_stats, images)  # its default key: the same figure each run
    preds = logits.argmax(-1)
    confidence = info.probabilities(logits).max(-1)  # calibrated when the checkpoint stores T
    gradcam = np.asarray(X.normalize_maps(gradcam))
    saliency = X.clip_to_percentile(saliency, SALIENCY_PERCENTILE)  # as PAIR's saliency displays it
    smooth = X.clip_to_percentile(smooth, SALIENCY_PERCENTILE)
    labels = sample.labels[idx]

    fig = Figure(figsize=(15.5, 7.6))
    grid = fig.add_gridspec(4, 11, width_ratios=[1] * 10 + [0.07], left=0.04, right=0.95, top=0.88, bottom=0.11,
                            wspace=0.08, hspace=0.3)
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(10)] for r in range(4)])
    for i in range(10):
        axes[0, i].imshow(images[i, :, :, 0], cmap="gray", vmin=0, vmax=1)
        wrong = preds[i] != labels[i]
        axes[0, i].set_title(f"true {names[labels[i]]}, pred {names[preds[i]]}\n{100 * confidence[i]:.1f}%"
                             + (" ✗ wrong" if wrong else ""), fontsize=8, color="red" if wrong else "black")
        axes[1, i].imshow(X.overlay_heatmap(images[i], gradcam[i]))
        for row, maps in ((2, saliency), (3, smooth)):
            axes[row, i].imshow(maps[i], cmap="hot", vmin=0, vmax=1)
            axes[row, i].contour(images[i, :, :, 0], levels=[0.5], colors="deepskyblue", linewidths=0.6)
    layer = gradcam_layer or "last conv block"
    for ax, name in zip(axes[:, 0], ("digit" if mnist else "image", f"Grad-CAM\n({layer})", "saliency\n|∂logit/∂x|",
                                    "SmoothGrad\n(25 noisy copies)")):
        ax.set_ylabel(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    import matplotlib
    from matplotlib.cm import ScalarMappable

    for row, cmap, text in ((1, "jet", "share of the\nmap's max"), (2, "hot", f"share of its\n{SALIENCY_PERCENTILE:g}th pct."),
                            (3, "hot", f"share of its\n{SALIENCY_PERCENTILE:g}th pct.")):
        bar = fig.colorbar(ScalarMappable(matplotlib.colors.Normalize(0, 1), cmap), cax=fig.add_subplot(grid[row, 10]))
        bar.ax.tick_params(labelsize=7)
        bar.set_label(text, fontsize=7)
    fig.add_subplot(grid[0, 10]).axis("off")
    what = "digit" if mnist else "image"
    if mnist:
        fig.suptitle(f"One MNIST test digit per class: what the CNN looks at\ncheckpoint: {ckpt_text}", fontsize=11)
    else:
        fig.suptitle(f"One {DISPLAY_NAMES[info.dataset]} test image per class: what the CNN looks at\n"
                     f"checkpoint: {ckpt_text}", fontsize=11)
    fig.text(0.04, 0.015,
             f"Row 1: the {what}, its true class, the prediction and its confidence. Row 2: Grad-CAM, where the "
             f"explained layer's evidence for the predicted class lies (coarse: that layer's grid, upsampled; "
             f"try --gradcam-layer block2 for a finer one).\nRow 3: vanilla saliency, the gradient of the predicted "
             f"class's logit per pixel (blue: the {what}'s outline). It is noisy by nature: a ReLU network's "
             f"gradient jumps from pixel to pixel.\nRow 4: SmoothGrad (Smilkov et al. 2017), the mean gradient over 25 noisy "
             f"copies: smoother, though on this CNN still spread over the square. Rows 3-4 are clipped at their "
             f"{SALIENCY_PERCENTILE:g}th percentile for display, as PAIR's saliency library does.\n"
             + ("MNIST: LeCun, Cortes, Burges, CC BY-SA 3.0." if mnist else CREDITS[info.dataset]),
             fontsize=8, va="bottom")
    cli.remove_temporaries(out)  # what a killed run left
    with cli.atomic_file(out) as tmp:  # never a half-written figure, nor a temporary one left
        fig.savefig(tmp, dpi=90)
    return [{"label": int(sample.labels[idx[i]]), "prediction": int(preds[i]),
             "confidence": float(confidence[i]), "label_name": names[int(sample.labels[idx[i]])],
             "prediction_name": names[int(preds[i])], "probabilities": info.probability_note, "checkpoint": ckpt_text} for i in range(10)]


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--out", default=str(DEFAULT_OUT), metavar="PNG", help="PNG to write (default: %(default)s)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help=f"a workdir or step folder (default: {cli.CHECKPOINT_FALLBACK})")
    parser.add_argument("--gradcam-layer", metavar="LAYER",
                        help="the layer Grad-CAM explains (MNISTCNN: block1 28x28, block2 14x14, block3 7x7; "
                             "default: the last conv block)")
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
    from mnist_checkpoint import default_checkpoint

    rows = run_quick_demo(args.out, args.checkpoint or default_checkpoint(), args.data_dir, args.tfds,
                          args.gradcam_layer)
    print(f"checkpoint: {rows[0]['checkpoint']}")
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

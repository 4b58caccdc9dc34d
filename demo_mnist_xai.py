"""Full demo: explain a trained checkpoint on the MNIST test set and write a report.

    python demo_mnist_xai.py                                   # runs from a fresh clone, offline
    python demo_mnist_xai.py --data-dir DIR                    # all 10,000 test digits (DIR: IDX files)
    python demo_mnist_xai.py --checkpoint pretrained --out outputs/demo2 --num-images 100
    python demo_mnist_xai.py --methods hirescam,deeplift,kernel_shap --num-images 100 --out outputs/demo3
    python demo_mnist_xai.py --list-methods                    # the registered names, families and costs

Checkpoint: --checkpoint if given, else checkpoints/ when a training run there has saved a
step, else the shipped pretrained/. Data: --data-dir if given, else $MNIST_DATA_DIR, else a
copy tensorflow-datasets has prepared ($TFDS_DATA_DIR, default ~/tensorflow_datasets), else
the 200 real test digits shipped in sample_data/ (with a note); --tfds reads (and on first
use downloads) tensorflow-datasets' copy. The dataset is the one the checkpoint was trained
on (--dataset to choose another): for fashion_mnist/kmnist the folder variable is
$FASHION_MNIST_DATA_DIR/$KMNIST_DATA_DIR, and there are no shipped images to fall back on.
Figures name the classes by the checkpoint's class names. The confidences shown are
softmax(logits / T) with the temperature the checkpoint stores (calibrated on the validation
split; plain softmax, said so in the report, without one); the maps use the logits. Writes into --out (default outputs/demo: a new
folder, or one holding a previous demo's output and nothing else):

    gallery.png             digit | one column per method of --methods (default GradCAM | saliency |
                            Integrated Gradients | SmoothGrad); signed maps shown as |map|
    class_average_maps.png  per class: mean digit, then the mean map of each "fast" method of
                            --methods (one pass over every digit; default GradCAM and saliency,
                            which are also the pair used when --methods names no fast method)
    confusion_matrix.png    the test-set confusion matrix
    contrastive.png         each most-confused pair: GradCAM for the true vs the predicted class
    misclassified.png       misclassified digits with label, prediction and confidence
    report.md               every figure with the key numbers
    summary.json            the numbers (accuracy, confusions, guessed pairs, deletion AUCs)

MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges; CC BY-SA 3.0.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import cli

if __name__ == "__main__":
    cli.before_jax()  # each chunk split over the cores, compilation cache: before JAX is imported

DEFAULT_OUT = Path("outputs") / "demo"
AUC_IMAGES = 100  # digits used for the deletion AUC shown beside each method's name
SLOW_AUC_IMAGES = 10  # the same for a method the registry calls "slow" (seconds a digit on a CPU)
#: the gallery's columns without --methods (the demo's four since its first version)
DEFAULT_METHODS = ("gradcam", "saliency", "integrated_gradients", "smoothgrad")
#: column labels of the default methods, as the report and summary.json have always named them
LABELS = {"gradcam": "GradCAM", "saliency": "saliency", "integrated_gradients": "Integrated Gradients",
          "smoothgrad": "SmoothGrad"}
SHORT = {"integrated_gradients": "IG"}
AVERAGE_FALLBACK = ("gradcam", "saliency")  # class averages when --methods names no fast method
CONTRAST_EXAMPLES = 3  # misclassified digits shown per confused pair
GUESSED_PAIRS = ((4, 9), (3, 8), (5, 6))  # the pairs the original request expected to be confused
FIGURES = ("gallery.png", "class_average_maps.png", "confusion_matrix.png", "contrastive.png",
           "misclassified.png")
OUTPUT_FILES = (*FIGURES, "report.md", "summary.json")  # everything run_demo writes into --out


def _figure(**kwargs):
    """A matplotlib Figure of its own (no pyplot state: a notebook's backend is left alone)."""
    from matplotlib.figure import Figure
    return Figure(**kwargs)


def _message_figure(text: str):
    fig = _figure(figsize=(4, 1.5))
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def _save(fig, path: Path) -> None:
    with cli.atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=90)


def most_confused(cm: np.ndarray, top: int = 5) -> list[tuple[int, int, int]]:
    """``(true, predicted, count)`` of the ``top`` most frequent errors in a confusion matrix
    (rows true, columns predicted), most frequent first, plus every pair tied with the last;
    ties in (true, predicted) order, so the list does not depend on a sort's whims."""
    errors = [(int(t), int(p), int(cm[t, p])) for t, p in zip(*np.nonzero(cm)) if t != p]
    errors.sort(key=lambda e: -e[2])  # stable: ties keep their row-major order
    if len(errors) <= top:
        return errors
    return [e for e in errors if e[2] >= errors[top - 1][2]]


def contrastive_figure(images, conf, pairs, examples, true_maps, pred_maps, names=None):
    """One row per confused pair (true, predicted, count); per example three panels: the digit,
    GradCAM for the true class, GradCAM for the predicted class (maps in ``examples`` order).
    ``names``: the class names (default the digits)."""
    from mnist_data import DIGITS
    from mnist_xai_visualizations import overlay_heatmap

    names = names or DIGITS

    cols = 3 * CONTRAST_EXAMPLES
    fig = _figure(figsize=(1.6 * cols, 1.7 * len(pairs) + 0.5))
    axes = fig.subplots(len(pairs), cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    k = 0
    for r, ((t, p, count), idx) in enumerate(zip(pairs, examples)):
        axes[r, 0].text(-0.12, 0.5, f"true {names[t]} → {names[p]}\n{count} error{'s' * (count != 1)}",
                        transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=9)
        for j, i in enumerate(idx):
            x = images[i]
            panels = ((x[..., 0], f"{names[t]}→{names[p]}, {100 * conf[i]:.0f}%"),
                      (overlay_heatmap(x, true_maps[k]), f"GradCAM for {names[t]}"),
                      (overlay_heatmap(x, pred_maps[k]), f"GradCAM for {names[p]}"))
            for c, (img, title) in enumerate(panels):
                ax = axes[r, 3 * j + c]
                ax.imshow(img, cmap="gray" if c == 0 else None, vmin=0, vmax=1)
                ax.set_title(title, fontsize=8)
            k += 1
    fig.suptitle("Most-confused pairs: GradCAM for the true class beside GradCAM for the predicted class",
                 fontsize=10)
    fig.tight_layout(rect=(0.06, 0, 1, 0.97))
    return fig


def method_label(name: str) -> str:
    """A method's column label: the demo's historical names for its four, else the registry's title."""
    if name in LABELS:
        return LABELS[name]
    import mnist_xai_visualizations as X  # registers every method
    return X.SPECS[name].title


def shown_map(spec, maps):
    """Maps as the figures show them: |map| for a signed method (as |IG| always was), each scaled to [0, 1]."""
    import mnist_xai_visualizations as X
    return np.asarray(X.normalize_maps(np.abs(maps) if spec.is_signed() else maps))


def run_demo(images_u8: np.ndarray, labels: np.ndarray, out: str | os.PathLike, checkpoint: str | None,
             data_name: str, progress: bool = True, chunk: int = 500, methods=DEFAULT_METHODS) -> dict:
    """Explain ``images_u8`` (N, 28, 28, 1) with the checkpoint's model; write ``OUTPUT_FILES``
    into ``out`` (figures on matplotlib Figures of their own: no pyplot, no backend chosen).
    ``checkpoint`` None: the shipped pretrained/. ``methods``: registered names, the gallery's
    columns (each with its deletion AUC; default options, key PRNGKey(0)); the "fast" ones
    also get a class-average row (GradCAM and saliency when none is fast).

    Classes are named by the checkpoint's class names; the confidences drawn and reported are
    the checkpoint's calibrated probabilities, softmax(logits / T), or plain softmax when it
    stores no temperature (``CheckpointInfo.probabilities``). The explanations are unchanged
    by T: GradCAM, saliency, IG and SmoothGrad use the logits; the deletion AUCs track the
    probability as shown, softmax(logits / T), as evaluate_xai.py scores them."""
    from tqdm import tqdm

    import mnist_xai_visualizations as X
    from mnist_checkpoint import checkpoint_info, describe, load_checkpoint
    from mnist_data import CREDITS, DISPLAY_NAMES
    from mnist_xai.registry import spec as method_spec

    methods = list(dict.fromkeys(methods))
    specs = {m: method_spec(m) for m in methods}  # unknown names: one ValueError line, before any work
    averaged = [m for m in methods if specs[m].cost == "fast"] or list(AVERAGE_FALLBACK)
    specs.update({m: method_spec(m) for m in averaged})
    params, batch_stats, model, meta = load_checkpoint(checkpoint)
    info = checkpoint_info(meta)
    checkpoint_text = describe(checkpoint, meta)
    print(f"checkpoint: {checkpoint_text}")
    names = info.class_names
    mnist = info.dataset == "mnist"
    noun = "digit" if mnist else "image"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:  # what a killed run left half-written
        cli.remove_temporaries(out / name)
    images = images_u8.astype(np.float32) / 255.0
    n = len(images)

    # One pass over the test set: predictions, GradCAM and saliency for every image (and the
    # other fast methods of ``methods``, for their class averages).
    gradcam, saliency = X.GradCAM(model, chunk_size=chunk), X.Saliency(model, chunk_size=chunk)
    explainers = {"gradcam": gradcam, "saliency": saliency}
    for m in methods:
        explainers.setdefault(m, X.make_explainer(m, model))
    full = {m: [] for m in dict.fromkeys(["gradcam", "saliency", *averaged])}  # every image's shown map
    logits = []
    t0 = time.perf_counter()
    for start in tqdm(range(0, n, chunk), desc="explaining test set", unit="batch", disable=not progress,
                      file=sys.stdout):
        x = images[start:start + chunk]
        m, lg = gradcam.attribute(params, batch_stats, x, return_logits=True)
        full["gradcam"].append(np.asarray(X.normalize_maps(m)))
        for name in full:
            if name != "gradcam":
                full[name].append(shown_map(specs.get(name) or method_spec(name),
                                            explainers[name].attribute(params, batch_stats, x)))
        logits.append(lg)
    full = {k: np.concatenate(v) for k, v in full.items()}
    cams, sals, logits = full["gradcam"], full["saliency"], np.concatenate(logits)
    pass_seconds = time.perf_counter() - t0
    preds = logits.argmax(-1)
    conf = info.probabilities(logits).max(-1)  # calibrated when the checkpoint stores T
    correct = preds == labels
    accuracy = float(correct.mean())

    # 1. Gallery: one correctly classified digit per class, a column per method.
    pick = [int(np.flatnonzero((labels == c) & correct)[0]) for c in range(10)
            if np.any((labels == c) & correct)]
    # Deletion AUC (mnist_xai_metrics; lower = more faithful) of each method on the first
    # AUC_IMAGES digits (SLOW_AUC_IMAGES for a slow method), shown beside its name.
    from mnist_xai_metrics import deletion_insertion
    sub = slice(0, min(AUC_IMAGES, n))
    deletion_auc, auc_images = {}, {}
    for name in methods:
        k = min(SLOW_AUC_IMAGES if specs[name].cost == "slow" else AUC_IMAGES, n)
        maps = explainers[name].attribute(params, batch_stats, images[:k], preds[:k])
        if specs[name].is_signed():
            maps = np.abs(maps)
        label = method_label(name)
        deletion_auc[label] = float(deletion_insertion(model, params, batch_stats, images[:k], maps, preds[:k],
                                                       temperature=info.temperature or 1.0)["deletion_auc"].mean())
        auc_images[label] = k
    no_gallery = [names[c] for c in range(10) if not np.any((labels == c) & correct)]
    if pick:
        xg = images[pick]
        method_maps = {method_label(m): full[m][pick] if m in full else
                       shown_map(specs[m], explainers[m].attribute(params, batch_stats, xg)) for m in methods}
        # Each shown digit's own deletion AUC under its map (the means over AUC_IMAGES digits are in the report).
        digit_auc = {k: deletion_insertion(model, params, batch_stats, xg, v, preds[pick],
                                           temperature=info.temperature or 1.0)["deletion_auc"]
                     for k, v in method_maps.items()}
        rows = [{k: v[i] for k, v in method_maps.items()} for i in range(len(pick))]
        columns = ["digit", *method_maps]  # "digit": the image column, by name
        fig = X.explanation_grid(xg, rows, columns, titles=[f"{names[labels[i]]}: {100 * conf[i]:.1f}%" for i in pick],
                                 figsize_per_cell=1.8)
        for i in range(len(pick)):
            for j, k in enumerate(method_maps, start=1):
                fig.axes[i * len(columns) + j].set_xlabel(f"deletion AUC {float(digit_auc[k][i]):.2f}", fontsize=7,
                                                          labelpad=1)
        if not mnist:
            fig.axes[0].set_title(noun, fontsize=8)
        missing = f"; no correctly classified {noun} of class {', '.join(no_gallery)}" if no_gallery else ""
        signed = [SHORT.get(m) or method_label(m) for m in methods if specs[m].is_signed()]
        shown = f" ({', '.join(f'|{s}|' for s in signed)} shown)" if signed else ""
        fig.suptitle(f"Correctly classified {noun}s, one per class{shown}; under each map: that {noun}'s "
                     f"deletion AUC (lower: more faithful){missing}\ncheckpoint: {checkpoint_text}", fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
    else:  # a weak checkpoint on a few digits
        fig = _message_figure(f"no correctly classified {noun}")
    _save(fig, out / "gallery.png")

    # 2. Class-average maps: where does the model look, on average, for each digit?
    rows = [(images[..., 0], "gray")] + [(full[m], "hot" if m == "saliency" or specs[m].family != "cam" else "jet")
                                         for m in averaged]
    fig = _figure(figsize=(15, 5.2 * len(rows) / 3))
    axes = fig.subplots(len(rows), 10)
    never_predicted = [names[c] for c in range(10) if not np.any(preds == c)]
    for c in range(10):
        sel = preds == c  # by predicted class: what the model looks at when it says c
        for r, (arr, cmap) in enumerate(rows):
            ax = axes[r, c]
            if sel.any():
                ax.imshow(arr[sel].mean(0), cmap=cmap, vmin=0, vmax=None if r else 1)
            elif r == 0:
                ax.text(0.5, 0.5, "never\npredicted", ha="center", va="center", fontsize=9, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, c].set_title(f"predicted {names[c]} (n={int(sel.sum())})", fontsize=8)
    for ax, name in zip(axes[:, 0], (f"mean {noun}", *(f"mean {method_label(m)}" for m in averaged))):
        ax.set_ylabel(name)
    fig.suptitle(f"Average maps per predicted class over {n} test {noun}s\ncheckpoint: {checkpoint_text}", fontsize=10)
    fig.tight_layout()
    _save(fig, out / "class_average_maps.png")

    # 3. Confusion matrix and the most-confused pairs, as measured.
    cm = np.zeros((10, 10), np.int64)
    np.add.at(cm, (labels, preds), 1)
    pairs = most_confused(cm)
    fig = _figure(figsize=(6.2, 5.4))
    ax = fig.subplots()
    im = ax.imshow(np.log1p(cm), cmap="Blues")
    for t in range(10):
        for p in range(10):
            if cm[t, p]:
                ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if t == p else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
           title=f"Confusion matrix, {n} {noun}s, accuracy {100 * accuracy:.2f}%")
    if not mnist:  # the digits' own ticks otherwise: the MNIST figure as it was
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_yticklabels(names, fontsize=8)
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    _save(fig, out / "confusion_matrix.png")

    # Contrastive maps: for every most-confused pair, GradCAM for the true class beside GradCAM
    # for the predicted class, on up to CONTRAST_EXAMPLES of its misclassified digits.
    examples = [np.flatnonzero((labels == t) & (preds == p))[:CONTRAST_EXAMPLES] for t, p, _ in pairs]
    if pairs:
        idx = np.concatenate(examples)
        true_maps = np.asarray(X.normalize_maps(gradcam.attribute(params, batch_stats, images[idx], labels[idx])))
        fig = contrastive_figure(images, conf, pairs, examples, true_maps, cams[idx], names)  # cams: predicted
    else:
        fig = _message_figure(f"no misclassified {noun}s")
    _save(fig, out / "contrastive.png")

    # 4. Misclassified digits, most confident mistakes first.
    wrong = np.flatnonzero(~correct)
    wrong = wrong[np.argsort(-conf[wrong])][:40]
    cols = 10
    nrows = max(1, int(np.ceil(len(wrong) / cols)))
    fig = _figure(figsize=(1.5 * cols, 1.75 * nrows + 0.4))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i, :, :, 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{names[labels[i]]}→{names[preds[i]]} {100 * conf[i]:.0f}%", fontsize=8 if mnist else 7)
    if not len(wrong):
        axes[0, 0].text(0, 0.5, f"no misclassified {noun}s")
    fig.suptitle(f"Misclassified: {int((~correct).sum())} of {n} (true→predicted, confidence)", fontsize=10)
    fig.tight_layout()
    _save(fig, out / "misclassified.png")

    summary = {"data": data_name, "num_images": n, "accuracy": accuracy,
               "errors": int((~correct).sum()),
               "top_confusions": [{"true": t, "predicted": p, "count": c} for t, p, c in pairs],
               "guessed_pairs": [{"pair": f"{a}/{b}", f"{a}->{b}": int(cm[a, b]), f"{b}->{a}": int(cm[b, a]),
                                  "among_top": any({t, p} == {a, b} for t, p, _ in pairs)}
                                 for a, b in (GUESSED_PAIRS if mnist else ())],  # MNIST's digits' guesses
               "explain_pass_seconds": pass_seconds, "deletion_auc": deletion_auc,
               "deletion_auc_images": sub.stop, "deletion_auc_images_per_method": auc_images,
               "methods": methods, "class_average_methods": averaged,
               "checkpoint": checkpoint_text, "checkpoint_epoch": meta.get("epoch"),
               "never_predicted": never_predicted, "no_correct_example": no_gallery,
               "dataset": info.dataset, "dataset_name": DISPLAY_NAMES[info.dataset], "credit": CREDITS[info.dataset],
               "class_names": list(names), "temperature": info.temperature,
               "probabilities": info.probability_note}
    from mnist_xai_metrics import localisation_by_class  # where GradCAM's mass lies, per predicted class
    summary["gradcam_localisation"] = localisation_by_class(images, cams, preds)
    write_report(out, summary)
    return summary


def write_report(out: Path, s: dict) -> None:
    names = s.get("class_names") or [str(d) for d in range(10)]
    noun = "digit" if s.get("dataset", "mnist") == "mnist" else "image"
    conf = ", ".join(f"{names[c['true']]}→{names[c['predicted']]} ({c['count']})"
                     for c in s["top_confusions"]) or "none"
    guesses = "; ".join(
        f"{g['pair']}: " + ", ".join(f"{k.replace('->', '→')} {v}" for k, v in g.items() if "->" in k)
        + (" (among the most confused)" if g["among_top"] else " (not among the most confused)")
        for g in s["guessed_pairs"])
    loc = s.get("gradcam_localisation")
    where = ""
    if loc:
        per = lambda key, f: ", ".join(f"{names[c]}: {v:{f}}" for c, v in enumerate(loc[key]) if v == v)  # noqa: E731
        where = (f"\nWhere GradCAM (as displayed) puts its mass, mean per predicted class: on the outer "
                 f"{loc['border']} px frame ({100 * loc['frame_area']:.0f}% of the image, what a uniform map gets) "
                 f"{loc['frame_share_mean']:.2f} overall — {per('frame_share', '.2f')}; on ink (pixels > "
                 f"{loc['threshold']:g}) {loc['ink_ratio_mean']:.1f}x its share of the image — {per('ink_ratio', '.1f')}. "
                 "A frame share near or above the frame's area means the map glows along the border rather "
                 "than on the stroke: GradCAM credits the empty background (activations a blank image has too) "
                 "to the class, and most of the background lies in the frame (docs/frame-study.md).\n")
    missing_gallery = (f"\nNo correctly classified {noun} of class {', '.join(s['no_correct_example'])}: "
                       "not in the gallery." if s.get("no_correct_example") else "")
    missing_avg = (f"\nNever predicted, so no average: class {', '.join(s['never_predicted'])}."
                   if s.get("never_predicted") else "")
    guessed = f"- The pairs guessed to be confused, counted both ways: {guesses}\n" if s["guessed_pairs"] else ""
    per_method = s.get("deletion_auc_images_per_method") or {}
    auc_text = ", ".join(f"{k} {v:.3f}" + (f" (first {per_method[k]} only: a slow method)"
                                           if per_method.get(k, s["deletion_auc_images"]) < s["deletion_auc_images"]
                                           else "") for k, v in s["deletion_auc"].items())
    probabilities = f"- Confidences shown: {s['probabilities']}\n" if s.get("probabilities") else ""
    avg = [f"mean {method_label(m)}" for m in s.get("class_average_methods", AVERAGE_FALLBACK)]
    averages = ", ".join(avg[:-1]) + f" and {avg[-1]}" if len(avg) > 1 else avg[0]
    text = f"""# {s.get('dataset_name', 'MNIST')} CNN explanations

- Checkpoint: {s['checkpoint']} (epoch {s['checkpoint_epoch']})
- Data: {s['data']} — {s['num_images']:,} {noun}s
- Accuracy: **{100 * s['accuracy']:.2f}%** ({s['errors']} errors)
{probabilities}- Most-confused pairs (true→predicted, count): {conf}
{guessed}- GradCAM + saliency pass over all {noun}s: {s['explain_pass_seconds']:.1f} s

## Gallery: correctly classified {noun}s
One correctly classified {noun} per class; under each map, that {noun}'s deletion AUC. Mean deletion AUC
(lower is more faithful) over the first {s['deletion_auc_images']} {noun}s:
{auc_text}.{missing_gallery}
Full faithfulness table: `python evaluate_xai.py`.

![gallery](gallery.png)

## Class-average maps
Mean {noun}, {averages} per predicted class (maps scaled to [0, 1] per image first).{missing_avg}
{where}![class averages](class_average_maps.png)

## Confusion matrix
![confusion matrix](confusion_matrix.png)

## Contrastive maps for the most-confused pairs
GradCAM for the true class beside GradCAM for the predicted class.
![contrastive](contrastive.png)

## Misclassified {noun}s
![misclassified](misclassified.png)

{s.get('credit', 'MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges; CC BY-SA 3.0.')}
"""
    cli.write_atomic(out / "report.md", text)
    cli.write_atomic(out / "summary.json", json.dumps(s, indent=2))


def main(argv=None) -> int:
    from mnist_data import DATA_FALLBACK, DATASETS, MNISTDataError, load_test_or_sample

    parser = cli.parser(__doc__)
    parser.add_argument("--checkpoint", metavar="PATH",
                        help=f"a workdir or step folder (default: {cli.CHECKPOINT_FALLBACK})")
    parser.add_argument("--data-dir", metavar="DIR",
                        help=f"folder with the MNIST IDX files (default: {DATA_FALLBACK}, "
                             "else the 200 shipped digits)")
    parser.add_argument("--tfds", action="store_true",
                        help="read the test set with tensorflow-datasets, downloading it on first use "
                             "(pip install -r requirements-tfds.txt)")
    parser.add_argument("--dataset", choices=DATASETS,
                        help="whose test set to explain (default: the one the checkpoint was trained on)")
    parser.add_argument("--num-images", type=int, metavar="N", help="use only the first N test digits (default: all)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR",
                        help="output folder: new, or a previous demo's output (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), metavar="NAMES",
                        help="the gallery's methods: comma-separated registered names, families (cam, gradient, "
                             "path, perturbation, propagation) or 'all'; --list-methods lists them "
                             "(default: %(default)s)")
    parser.add_argument("--list-methods", action="store_true",
                        help="print every registered method (name, family, cost, title) and exit")
    args = parser.parse_args(argv)
    if args.num_images is not None and args.num_images < 1:
        parser.error(f"--num-images: expected a positive integer, got {args.num_images}")
    if args.tfds and args.data_dir:
        parser.error("--tfds and --data-dir are alternatives; give one")

    import mnist_xai_visualizations as X

    if args.list_methods:
        for name in X.method_names():
            sp = X.SPECS[name]
            print(f"{name:22s} {sp.family:13s} {sp.cost:7s} {sp.title}")
        return 0
    try:
        methods = X.parse_method_list(args.methods)  # names once each, in order
    except ValueError as e:
        parser.error(f"--{e}")

    from mnist_checkpoint import check_output_folder, default_checkpoint, read_info

    check_output_folder(args.out, OUTPUT_FILES, "--out")  # before the work, not after
    checkpoint = args.checkpoint or default_checkpoint()
    trained_on = read_info(checkpoint).dataset
    dataset = args.dataset or trained_on
    if dataset != trained_on:
        print(f"note: the checkpoint was trained on {trained_on}; explaining {dataset}'s test set")
    split, name, note = load_test_or_sample(args.data_dir, args.tfds, dataset)
    if note:
        print(note)
    if args.num_images:
        if args.num_images > len(split):
            raise MNISTDataError(f"--num-images {args.num_images} is more than the {len(split)} "
                                 f"{'digits' if dataset == 'mnist' else 'images'} available")
        if args.num_images < len(split):
            name = f"the first {args.num_images} {'digits' if dataset == 'mnist' else 'images'} of {name}"
        split = split.take(args.num_images)
    summary = run_demo(split.images, split.labels, args.out, checkpoint, name, progress=not args.no_progress,
                       methods=methods)
    if summary.get("probabilities"):
        print(f"confidences: {summary['probabilities']}")
    print(f"accuracy {100 * summary['accuracy']:.2f}% on {summary['num_images']} {'digits' if dataset == 'mnist' else 'images'}; "
          f"top confusions: {summary['top_confusions'][:3]}")
    print(f"wrote {', '.join(OUTPUT_FILES[:-1])} and {OUTPUT_FILES[-1]} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

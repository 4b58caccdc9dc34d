"""Measure how faithful each explanation method is, on N test digits.

    python evaluate_xai.py                                  # from a fresh clone: the 200 shipped digits
    python evaluate_xai.py --data-dir DIR                   # 1,000 test digits (DIR: the MNIST IDX files)
    python evaluate_xai.py --methods gradcam,saliency --num-images 100

Checkpoint: --checkpoint if given, else checkpoints/ when a training run there has saved a
step, else the shipped pretrained/. Data: --data-dir if given, else $MNIST_DATA_DIR, else a
copy tensorflow-datasets has prepared ($TFDS_DATA_DIR, default ~/tensorflow_datasets), else
the 200 real test digits shipped in sample_data/ (with a note); --tfds reads (and on first
use downloads) tensorflow-datasets' copy. The dataset is the one the checkpoint was trained
on: for fashion_mnist/kmnist the folder variable is $FASHION_MNIST_DATA_DIR/$KMNIST_DATA_DIR,
and there are no shipped images to fall back on.

For each method: deletion and insertion AUC (with bootstrap 95% intervals) against a random
and a Sobel-edge baseline, the cascading parameter-randomisation test (on a subset of
``--randomization-images``), the share of positive attribution on ink, and the Integrated
Gradients completeness error. The probabilities are calibrated with the checkpoint's
temperature where it stores one (--temperature 1: the plain softmax). Writes results.json, results.md, curves.png (deletion and
insertion), randomization.png (rho per cascade stage, 95% intervals) and randomization_maps.png
(the first digit's maps as the layers are re-initialised) into --out; prints the table.
See mnist_xai_metrics.py for the definitions and papers.
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

DEFAULT_OUT = Path("outputs") / "xai_eval"
# The eight methods this evaluation has always run; any others by name, by family or "all".
DEFAULT_METHODS = "gradcam,gradcam++,scorecam,saliency,gradient_x_input,integrated_gradients,smoothgrad,occlusion"
OUTPUT_FILES = frozenset({"results.json", "results.md", "curves.png", "randomization.png", "randomization_maps.png"})
PASS_CORRELATION = 0.5  # randomisation test: mean Spearman below this after the full cascade


def _interval(values, seed):
    """Bootstrap 95% interval of the mean over the finite values (NaN: a constant map)."""
    import mnist_xai_metrics as M
    finite = values[np.isfinite(values)]
    return list(M.bootstrap_ci(finite, seed)[1:]) if len(finite) else [float("nan")] * 2


def evaluate_methods(params, batch_stats, model, images, labels, methods, seed=0, steps=16,
                     randomization_images=100, progress=print, road=True, temperature=1.0) -> tuple[dict, dict]:
    """Returns the report (JSON-ready) and the first digit's maps through the randomisation
    cascade (``{"image", "target", "maps": {method: (1 + stages, 28, 28)}}``) for its figure.

    Each map is also located (``mnist_xai_metrics.localisation_by_class``: share of its positive
    attribution on the outer 4 px frame and on ink, per predicted class) and, with ``road``,
    scored by ROAD (``mnist_xai_metrics.road``: MoRF/LeRF with noisy linear imputation at
    10..90% removed, the same noise for every method). Deletion, insertion and ROAD track
    softmax(logits / ``temperature``): a checkpoint's calibrated probability when given its T
    (the maps themselves are of the logits, whatever T)."""
    import jax
    from tqdm import tqdm

    import mnist_xai_metrics as M
    import mnist_xai_visualizations as X
    from mnist_cnn_model import initialize_model

    def bar(total, desc):  # a progress bar on a terminal, nothing in logs (disable=None)
        return tqdm(total=total, desc=f"  {desc}", unit="digit", leave=False, disable=None, dynamic_ncols=True)

    variables = {"params": params, "batch_stats": batch_stats}
    apply_fn = jax.jit(lambda v, x: model.apply(v, x))
    (logits,) = X.in_chunks(lambda x: (apply_fn(variables, x),), (images,), 1000)
    targets = logits.argmax(-1).astype(np.int32)  # explain the predicted class
    probs = np.asarray(jax.nn.softmax(logits / temperature))
    key = jax.random.PRNGKey(seed)
    # One compiled init; run eagerly, init compiled ~70 small programs (113 -> 44 compiles in a 64-digit run).
    fresh = initialize_model(jax.random.PRNGKey(seed + 1), model)[0]
    sub = slice(0, min(randomization_images, len(images)))

    maps_by_name = {"random (baseline)": M.random_attribution(key, len(images)),
                    "sobel edges (baseline)": M.sobel_attribution(images)}
    timings, explainers = {}, {}
    for name in methods:
        explainer = explainers[name] = X.make_explainer(name, model)  # reused below: compiled once
        t0 = time.perf_counter()
        with bar(len(images), f"{name}: maps") as b:
            maps_by_name[name] = explainer.attribute(params, batch_stats, images, targets, key=key, progress=b.update)
        timings[name] = time.perf_counter() - t0
        progress(f"  {name}: maps in {timings[name]:.1f} s")

    results, example = {}, {}  # example: the first digit's maps through the cascade, for the figure
    stages = len(M.cascading_layers(params))
    for name, maps in maps_by_name.items():
        t0 = time.perf_counter()
        with bar((2 if road else 1) * len(images) + (stages * sub.stop if name in methods else 0),
                 f"{name}: metrics") as b:
            curves = M.deletion_insertion(model, params, batch_stats, images, maps, targets, steps=steps, probs=probs,
                                          progress=b.update, temperature=temperature)
            on_ink, ink = M.ink_share(images, maps)
            loc = M.localisation_by_class(images, maps, targets)
            rd = M.road(model, params, batch_stats, images, maps, targets, key=key, probs=probs,
                        progress=b.update, temperature=temperature) if road else None
            row = {
                "deletion_auc": M.bootstrap_ci(curves["deletion_auc"], seed),
                "insertion_auc": M.bootstrap_ci(curves["insertion_auc"], seed),
                "deletion_curve": curves["deletion_curve"].mean(0).tolist(),
                "insertion_curve": curves["insertion_curve"].mean(0).tolist(),
                "ink_share": float(np.nanmean(on_ink)), "ink_share_random": float(ink.mean()),
                "frame_share": loc["frame_share_mean"], "frame_share_by_class": loc["frame_share"],
                "ink_ratio": loc["ink_ratio_mean"], "ink_ratio_by_class": loc["ink_ratio"],
                "maps_seconds": timings.get(name),
            }
            if rd is not None:
                row.update({"road_morf_auc": M.bootstrap_ci(rd["morf_auc"], seed),
                            "road_lerf_auc": M.bootstrap_ci(rd["lerf_auc"], seed),
                            "road_morf_curve": rd["morf_curve"].mean(0).tolist(),
                            "road_lerf_curve": rd["lerf_curve"].mean(0).tolist(),
                            "road_residual_max": float(rd["residual"].max())})
            if name in methods:
                cascade, details = M.randomization_test(explainers[name], params, batch_stats, fresh, images[sub],
                                                        targets[sub], key=key, maps=maps[sub], progress=b.update,
                                                        return_details=True)
                row["randomization"] = cascade
                row["randomization_ci"] = [_interval(r, seed) for r in details["rho"]]
                row["randomization_passes"] = bool(cascade[-1][1] < PASS_CORRELATION)
                example[name] = np.concatenate([maps[:1], details["maps"][:, 0]])  # trained, then each stage
            if name == "integrated_gradients":
                err = M.completeness_error(explainers[name], params, batch_stats, images, targets, maps)
                row["completeness_error_mean"] = float(err.mean())
                row["completeness_error_max"] = float(err.max())
            results[name] = row
        progress(f"  {name}: metrics in {time.perf_counter() - t0:.1f} s")
    report = {"results": results, "num_images": len(images), "steps": steps,
              "randomization_images": sub.stop, "pass_correlation": PASS_CORRELATION,
              "model_accuracy": float((targets == labels).mean()), "temperature": float(temperature),
              "frame_border": M.FRAME_BORDER, "frame_area": float(M.frame_mask().mean())}
    if road:
        report["road_fractions"] = [float(f) for f in np.round(np.asarray(M.ROAD_FRACTIONS) * 784) / 784]
    return report, {"image": images[0, ..., 0], "target": int(targets[0]), "maps": example}


def _probability_note(report: dict) -> str:
    t = report.get("temperature", 1.0)
    if t == 1.0:
        return "Deletion, insertion and ROAD track the plain softmax probability of the explained class."
    return (f"Deletion, insertion and ROAD track the calibrated probability of the explained class, "
            f"softmax(logits / {t:.3f}), with the checkpoint's temperature.")


def format_table(report: dict) -> str:
    """The results as a markdown table. Frame: share of a map's positive attribution on the outer
    4 px (a uniform map: 0.49), mean over digits and the largest per predicted class; ink ratio:
    its share on ink over the ink's share of the image (uniform: 1), mean and the smallest class;
    ROAD: mean target probability over 10..90% removed, most (MoRF) / least (LeRF) relevant first."""
    res = report["results"]
    rnd = res["random (baseline)"]
    has_loc = all("frame_share" in r for r in res.values())
    has_road = all("road_morf_auc" in r for r in res.values())
    head = ["method", "deletion AUC ↓ (95% CI)", "insertion AUC ↑ (95% CI)", "beats random (del/ins)",
            "ink share (random)"]
    if has_loc:
        head += ["frame share ↓ mean / worst class", "ink ratio ↑ mean / worst class"]
    if has_road:
        head += ["ROAD MoRF ↓ (95% CI)", "ROAD LeRF ↑ (95% CI)"]
    head += ["randomisation ρ after full cascade (95% CI)", "passes", "IG completeness error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in res.items():
        d, i = r["deletion_auc"], r["insertion_auc"]
        beats = "—" if "baseline" in name else \
            f"{'yes' if d[2] < rnd['deletion_auc'][1] else 'no'}/{'yes' if i[1] > rnd['insertion_auc'][2] else 'no'}"
        cells = [name, f"{d[0]:.3f} ({d[1]:.3f}–{d[2]:.3f})", f"{i[0]:.3f} ({i[1]:.3f}–{i[2]:.3f})", beats,
                 f"{r['ink_share']:.2f} ({r['ink_share_random']:.2f})"]
        if has_loc:
            worst_frame = max((v for v in r["frame_share_by_class"] if v == v), default=float("nan"))
            worst_ink = min((v for v in r["ink_ratio_by_class"] if v == v), default=float("nan"))
            cells += [f"{r['frame_share']:.2f} / {worst_frame:.2f}", f"{r['ink_ratio']:.2f}x / {worst_ink:.2f}x"]
        if has_road:
            cells += ["{:.3f} ({:.3f}–{:.3f})".format(*r["road_morf_auc"]),
                      "{:.3f} ({:.3f}–{:.3f})".format(*r["road_lerf_auc"])]
        casc = "—"
        if "randomization" in r:
            casc = f"{r['randomization'][-1][1]:.2f}"
            if "randomization_ci" in r:
                casc += " ({:.2f}–{:.2f})".format(*r["randomization_ci"][-1])
        passes = ("yes" if r["randomization_passes"] else "no") if "randomization" in r else "—"
        comp = f"{100 * r['completeness_error_mean']:.2f}% mean" if "completeness_error_mean" in r else "—"
        lines.append("| " + " | ".join(cells + [casc, passes, comp]) + " |")
    return "\n".join(lines)


def plot_curves(report: dict, path: Path) -> None:
    """Mean deletion and insertion curves per method (a Figure of its own: no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for name, r in report["results"].items():
        style = "--" if "baseline" in name else "-"
        for ax, kind in zip(axes, ("deletion", "insertion")):
            curve = r[f"{kind}_curve"]
            x = np.linspace(0, 1, len(curve))
            ax.plot(x, curve, style, label=f"{name} ({r[f'{kind}_auc'][0]:.3f})")
    for ax, kind in zip(axes, ("Deletion (lower is better)", "Insertion (higher is better)")):
        t = report.get("temperature", 1.0)
        ax.set(title=kind, xlabel="fraction of pixels removed / inserted",
               ylabel="target class probability" + (f" (calibrated, T = {t:.2f})" if t != 1.0 else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['num_images']} {report.get('dataset_name', 'MNIST')} test images; AUC in brackets",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_randomization(report: dict, example: dict, path: Path, maps_path: Path) -> None:
    """Adebayo et al.'s two views of the cascade: mean Spearman rho per stage with its 95%
    interval, and one digit's |map| as the layers are re-initialised from the top down
    (Figures of their own: no pyplot state)."""
    from matplotlib.figure import Figure

    rows = {k: r for k, r in report["results"].items() if "randomization" in r}
    if not rows:
        return
    layers = [layer for layer, _ in next(iter(rows.values()))["randomization"]]
    x = np.arange(len(layers) + 1)
    fig = Figure(figsize=(10, 4.2))
    ax = fig.subplots()
    lowest = -0.3
    for name, r in rows.items():
        rho = [1.0] + [v for _, v in r["randomization"]]
        lo = [1.0] + [c[0] for c in r["randomization_ci"]]
        hi = [1.0] + [c[1] for c in r["randomization_ci"]]
        line, = ax.plot(x, rho, "o-", ms=3, label=f"{name} ({'pass' if r['randomization_passes'] else 'fail'})")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
        lowest = min(lowest, np.nanmin(lo) - 0.05)
    ax.axhline(report["pass_correlation"], color="k", ls=":", lw=1)
    ax.set_xticks(x, ["trained"] + [f"+{layer}" if i else layer for i, layer in enumerate(layers)])
    ax.set(xlabel="layers re-initialised, from the output down (cumulative)",
           ylabel="Spearman ρ of |map| with the trained model's", ylim=(lowest, 1.05),
           title=f"Cascading randomisation, mean over {report['randomization_images']} digits (95% interval); "
                 f"pass: ρ < {report['pass_correlation']} at the end")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=90)

    names = [k for k in rows if k in example["maps"]]
    if not names:
        return
    cols = 2 + len(layers)
    fig = Figure(figsize=(1.15 * cols, 1.25 * len(names) + 0.5))
    axes = fig.subplots(len(names), cols, squeeze=False)
    for i, name in enumerate(names):
        axes[i, 0].imshow(example["image"], cmap="gray", vmin=0, vmax=1)
        for j, m in enumerate(np.abs(example["maps"][name])):
            span = m.max() - m.min()
            axes[i, j + 1].imshow((m - m.min()) / span if span > 0 else np.zeros_like(m), cmap="inferno",
                                  vmin=0, vmax=1)
        axes[i, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    for j, title in enumerate(["digit", "trained"] + [f"+{layer}" if k else layer for k, layer in enumerate(layers)]):
        axes[0, j].set_title(title, fontsize=7)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"One digit's |map| (explaining class {example['target']}) as layers are re-initialised; "
                 "a map that reflects the model changes", fontsize=8)
    fig.tight_layout()
    fig.savefig(maps_path, dpi=90)


def write_outputs(report: dict, out: Path, command: str, example: dict | None = None) -> None:
    """Write everything into a fresh folder beside ``out``, then swap it in (``cli.atomic_folder``)."""
    with cli.atomic_folder(out) as tmp:
        _write_into(tmp, report, command, example)


def _write_into(tmp: Path, report: dict, command: str, example: dict | None) -> None:
    (tmp / "results.json").write_text(json.dumps(report, indent=2))
    (tmp / "results.md").write_text(
        f"# Faithfulness of the explanations\n\n{report['date']}, `{command}`, {report['machine']}\n\n"
        f"{report['num_images']} test digits (model accuracy {100 * report['model_accuracy']:.2f}%), "
        f"{report['steps']} deletion/insertion steps, randomisation test on {report['randomization_images']} digits "
        f"(pass: mean Spearman ρ < {report['pass_correlation']} after re-initialising every layer). "
        f"{_probability_note(report)}\n\n"
        f"{format_table(report)}\n\n![curves](curves.png)\n")
    plot_curves(report, tmp / "curves.png")
    if example is not None and example["maps"]:
        plot_randomization(report, example, tmp / "randomization.png", tmp / "randomization_maps.png")
        with (tmp / "results.md").open("a") as f:
            f.write("\n![randomisation](randomization.png)\n\n![one digit through the cascade](randomization_maps.png)\n")


def main(argv=None) -> int:
    from mnist_data import DATA_FALLBACK

    parser = cli.parser(__doc__)
    parser.add_argument("--num-images", type=int, metavar="N",
                        help="test digits to evaluate on (default: 1000, or all when fewer are available)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, metavar="NAMES",
                        help="comma-separated method names, families (cam, gradient, path, perturbation, "
                             "propagation) or 'all'; `python -m mnist_xai` lists them (default: %(default)s)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help=f"a workdir or step folder (default: {cli.CHECKPOINT_FALLBACK})")
    parser.add_argument("--data-dir", metavar="DIR",
                        help=f"folder with the MNIST IDX files (default: {DATA_FALLBACK}, else the 200 shipped digits)")
    parser.add_argument("--tfds", action="store_true",
                        help="read the test set with tensorflow-datasets, downloading it on first use "
                             "(pip install -r requirements-tfds.txt)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR",
                        help="output folder: new, or a previous evaluation's output (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seeds the random baseline, SmoothGrad's noise, the bootstrap and the "
                             "re-initialised layers (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=16, metavar="N",
                        help="deletion/insertion steps (default: %(default)s)")
    parser.add_argument("--randomization-images", type=int, default=100, metavar="N",
                        help="digits for the cascading randomisation test (default: %(default)s)")
    parser.add_argument("--temperature", default="checkpoint", metavar="T",
                        help="deletion, insertion and ROAD track softmax(logits / T): 'checkpoint' uses the "
                             "temperature the checkpoint stores (1 if none), 1 the plain softmax "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    for flag, value, least in (("--num-images", args.num_images, 1), ("--steps", args.steps, 2),
                               ("--randomization-images", args.randomization_images, 1)):
        if value is not None and value < least:
            parser.error(f"{flag}: expected an integer >= {least}, got {value}")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed: expected an integer in [0, 2**32), got {args.seed}")
    if args.tfds and args.data_dir:
        parser.error("--tfds and --data-dir are alternatives; give one")
    temperature = None
    if args.temperature != "checkpoint":
        try:
            temperature = float(args.temperature)
        except ValueError:
            temperature = float("nan")
        if not 0 < temperature < float("inf"):
            parser.error(f"--temperature: expected 'checkpoint' or a number > 0, got {args.temperature}")

    import datetime
    import platform

    import jax

    import mnist_xai_visualizations as X

    try:
        methods = X.parse_method_list(args.methods)  # names once each, in order
    except ValueError as e:
        parser.error(f"--{e}")

    from mnist_checkpoint import check_output_folder, checkpoint_info, default_checkpoint, describe, load_checkpoint
    from mnist_data import DISPLAY_NAMES, MNISTDataError, load_test_or_sample

    check_output_folder(args.out, OUTPUT_FILES, "--out")  # before the minutes of work, not after
    checkpoint = args.checkpoint or default_checkpoint()
    params, batch_stats, model, meta = load_checkpoint(checkpoint)
    print(f"checkpoint: {describe(checkpoint, meta)}")
    info = checkpoint_info(meta)  # the test set of the dataset it was trained on, its temperature
    if temperature is None:
        temperature = info.temperature or 1.0
    split, _, note = load_test_or_sample(args.data_dir, args.tfds, info.dataset)
    if note:
        print(note)
    num_images = args.num_images or min(1000, len(split))
    if num_images > len(split):
        raise MNISTDataError(f"--num-images {num_images} is more than the {len(split)} test digits available")
    split = split.take(num_images)
    images = split.images.astype(np.float32) / 255.0
    t0 = time.perf_counter()
    report, example = evaluate_methods(params, batch_stats, model, images, split.labels, methods, args.seed,
                                       args.steps, args.randomization_images, temperature=temperature)
    report.update({"checkpoint": describe(checkpoint, meta), "dataset": info.dataset, "dataset_name": DISPLAY_NAMES[info.dataset],
                   "class_names": list(info.class_names),
                   "seconds": time.perf_counter() - t0, "date": datetime.date.today().isoformat(),
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].platform}"})
    print(format_table(report))
    command = "python evaluate_xai.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_outputs(report, Path(args.out), command.strip(), example)
    written = sorted(p.name for p in Path(args.out).iterdir())
    print(f"wrote {', '.join(written[:-1])} and {written[-1]} into {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

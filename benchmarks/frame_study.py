"""Why GradCAM of the previous shipped model looked at the frame (docs/frame-study.md)

    # recipe variants (one at a time: each is a full training run of train_mnist's code path)
    python benchmarks/frame_study.py train runs/e2_nols --epochs 2 --label-smoothing 0
    python benchmarks/frame_study.py train runs/e2_nodrop --epochs 2 --dropout 0
    # the table: test accuracy, GradCAM frame share and ink ratio per predicted class
    python benchmarks/frame_study.py table pretrained runs/e2_nols runs/e2_nodrop --data-dir ../shared/data/mnist
    # the shipped model: methods against each other, occlusion with other fills, the 7x7 map
    python benchmarks/frame_study.py cause --data-dir ../shared/data/mnist
    # the class-average maps the demos show, and what they say about "0: the loop" etc.
    python benchmarks/frame_study.py classes --data-dir ../shared/data/mnist
    # how peaked Score-CAM's channel weights are (why its randomisation check differs by model)
    python benchmarks/frame_study.py scorecam-weights PREVIOUS pretrained --data-dir ../shared/data/mnist

Frame share: the share of a map's positive attribution on the outer 4 px of the 28x28 map
(= the 7x7 CAM's outer ring of cells, 49% of the area); ink ratio: its share on ink
(pixels > 0.5) divided by the ink's share of the image (mnist_xai_metrics.localisation).
Every subcommand prints markdown; ``--json PATH`` also writes the numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":  # before JAX is imported, as the scripts do
    from cpu_devices import use_compilation_cache, use_one_device_per_core
    use_one_device_per_core()
    use_compilation_cache()

import numpy as np

BORDER = 4


def machine() -> str:
    import jax
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()} {cpu}, {os.cpu_count()} cores, JAX {jax.__version__} on {jax.devices()[0].platform}"


# ----------------------------------------------------------------------------- train


def cmd_train(args) -> int:
    """train_mnist.train_and_evaluate with a TrainConfig (and the model's dropout) the CLI does not expose."""
    import train_mnist as T
    from mnist_cnn_model import MNISTCNN
    from mnist_data import load_mnist

    cfg = T.TrainConfig(epochs=args.epochs, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                        label_smoothing=args.label_smoothing, augment=not args.no_augment,
                        max_rotation_deg=args.max_rotation, max_scale=args.max_scale, max_shift=args.max_shift,
                        seed=args.seed)
    dropout = args.dropout
    T.MNISTCNN = lambda: MNISTCNN(dropout_rate=dropout)  # train_and_evaluate builds MNISTCNN(); meta records it
    data = load_mnist(args.data_dir)
    print(f"{args.workdir}: {dataclasses.asdict(cfg)}, dropout {dropout}", flush=True)
    result = T.train_and_evaluate(cfg, args.workdir, data, progress=False)
    print(f"test_accuracy: {result['test_accuracy']:.4f} ({result['train_seconds']:.0f} s)")
    return 0


# ----------------------------------------------------------------------------- measuring


def load_images(data_dir, n=None):
    from mnist_data import load_test_split
    split = load_test_split(data_dir)
    split = split.take(n) if n else split
    return split.images.astype(np.float32) / 255.0, split.labels.astype(np.int32)


def gradcam_localisation(model, params, batch_stats, images):
    """GradCAM for the predicted class: per-class frame share / ink ratio, the predictions and the maps."""
    import mnist_xai_metrics as M
    import mnist_xai_visualizations as X
    maps, preds, _ = X.GradCAM(model).explain(params, batch_stats, images)  # the API both old and new explainers share
    return M.localisation_by_class(images, maps, preds, BORDER), preds, maps


def test_accuracy(model, params, batch_stats, images, labels) -> float:
    import jax
    import mnist_xai_visualizations as X
    fn = jax.jit(lambda v, x: model.apply(v, x).argmax(-1))
    (pred,) = X.in_chunks(lambda x: (fn({"params": params, "batch_stats": batch_stats}, x),), (images,), 500)
    return float((pred == labels).mean())


def describe_recipe(meta: dict) -> str:
    c = meta.get("train_config", {})
    parts = [f"{c.get('epochs')} ep", f"LS {c.get('label_smoothing')}", "aug" if c.get("augment") else "no aug",
             f"wd {c.get('weight_decay'):g}" if c.get("weight_decay") is not None else "",
             f"dropout {meta.get('model', {}).get('dropout_rate')}", f"lr {c.get('learning_rate'):g}"]
    if c.get("augment") and (c.get("max_rotation_deg"), c.get("max_scale"), c.get("max_shift")) != (10.0, 0.1, 2.0):
        parts.append(f"rot {c.get('max_rotation_deg'):g} scale {c.get('max_scale'):g} shift {c.get('max_shift'):g}")
    return ", ".join(p for p in parts if p)


def fmt_range(values) -> str:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return f"{v.min():.2f}–{v.max():.2f}" if len(v) else "—"


def cmd_table(args) -> int:
    from mnist_checkpoint import load_checkpoint

    images, labels = load_images(args.data_dir)
    sub = slice(0, args.num_images)
    rows = []
    for path in args.checkpoints:
        params, batch_stats, model, meta = load_checkpoint(None if path == "pretrained" else path)
        acc = test_accuracy(model, params, batch_stats, images, labels)
        loc, preds, _ = gradcam_localisation(model, params, batch_stats, images[sub])
        parts = cam_parts(model, params, batch_stats)[0]
        a0 = np.asarray(parts(np.zeros((1, 28, 28, 1), np.float32), np.zeros(1, np.int32))[0])[0]
        ring = ring_cells()
        lin, lin0, zc = [], [], []
        for s in range(0, len(preds), 500):
            a, alpha, lg = (np.asarray(t) for t in parts(images[sub][s:s + 500], preds[s:s + 500]))
            lin.append(np.einsum("nhwc,nc,hw->n", a, alpha, ring))  # GradCAM's (linear) evidence on the ring
            lin0.append(np.einsum("hwc,nc,hw->n", a0, alpha, ring))  # ... a blank image's activations give
            zc.append(lg[np.arange(len(lg)), preds[s:s + 500]])
        lin, lin0, zc = np.concatenate(lin), np.concatenate(lin0), np.concatenate(zc)
        rows.append({"checkpoint": path, "recipe": describe_recipe(meta), "test_accuracy": acc, **loc,
                     "target_logit": float(zc.mean()), "ring_evidence": float(lin.mean()),
                     "ring_padding_part": float(lin0.mean() / lin.mean()), "temperature": meta.get("temperature")})
        print(f"  {path}: {100 * acc:.2f}%, frame {fmt_range(loc['frame_share'])}, ink {fmt_range(loc['ink_ratio'])}x",
              file=sys.stderr, flush=True)
    lines = [f"GradCAM for the predicted class on the first {args.num_images:,} test digits; accuracy on all "
             f"{len(images):,}. Frame: outer {BORDER} px (a uniform map: {rows[0]['frame_area']:.2f}); "
             f"ink ratio: share on ink / ink's share of the image. Per class: min–max over the 10 classes.",
             "Target logit: mean logit of the predicted class; ring evidence: GradCAM's linear evidence on the 7x7 "
             "ring, sum over the ring cells of sum_k alpha_k A_k (mean over digits); padding part: the share of it "
             "that a blank image's activations give under the same channel weights (on a blank input the only "
             "thing that tells cells apart is the zero padding).",
             "", "| checkpoint | recipe | test acc. | frame share, mean | per class | \"1\" | ink ratio, mean | per class | "
             "max frame ≤ 0.30 and min ink ≥ 1.5 | target logit | ring evidence | padding part |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = max(r["frame_share"]) <= 0.30 and min(r["ink_ratio"]) >= 1.5
        lines.append(f"| `{r['checkpoint']}` | {r['recipe']} | {100 * r['test_accuracy']:.2f}% | "
                     f"{r['frame_share_mean']:.2f} | {fmt_range(r['frame_share'])} | {r['frame_share'][1]:.2f} | "
                     f"{r['ink_ratio_mean']:.2f}x | {fmt_range(r['ink_ratio'])}x | {'yes' if ok else 'no'} | "
                     f"{r['target_logit']:.1f} | {r['ring_evidence']:.2f} | {r['ring_padding_part']:.2f} |")
    lines += ["", "Per class (frame share / ink ratio):", "",
              "| checkpoint | " + " | ".join(str(c) for c in range(10)) + " |", "|---|" + "---|" * 10]
    for r in rows:
        lines.append(f"| `{r['checkpoint']}` | " + " | ".join(
            f"{f:.2f} / {i:.1f}" for f, i in zip(r["frame_share"], r["ink_ratio"])) + " |")
    print("\n".join(lines))
    dump(args, {"machine": machine(), "num_images": args.num_images, "rows": rows})
    return 0


def dump(args, obj) -> None:
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(obj, indent=1, default=float))


# ----------------------------------------------------------------------------- cause


def ring_cells() -> np.ndarray:
    """(7, 7) float: 1 on the CAM's outer ring of cells (= the 28x28 map's outer 4 px)."""
    ring = np.zeros((7, 7), np.float32)
    ring[[0, -1], :] = 1
    ring[:, [0, -1]] = 1
    return ring


def cam_parts(model, params, batch_stats):
    """Compiled GradCAM pieces for MNISTCNN, written out here so each step can be intervened on:
    ``parts(images, targets) -> (A (N,7,7,C), alpha (N,C), logits)``, alpha = mean_ij dz_c/dA."""
    import jax
    import jax.numpy as jnp
    v = {"params": params, "batch_stats": batch_stats}

    @jax.jit
    def parts(images, targets):
        a = model.apply(v, images, method=model.features)
        logits, back = jax.vjp(lambda f: model.apply(v, f, method=model.head), a)
        (g,) = back(jax.nn.one_hot(targets, logits.shape[-1]))
        return a, g.mean((1, 2)), logits

    @jax.jit
    def head(a):
        return model.apply(v, a, method=model.head)

    @jax.jit
    def logits(images):
        return model.apply(v, images)

    @jax.jit
    def frame_evidence_grad(images, alpha, ring):
        """d/dx of sum over the 7x7 ring cells of sum_k alpha_k A_k (alpha held fixed): which pixels
        the frame cells' GradCAM evidence is computed from."""
        def f(x):
            a = model.apply(v, x, method=model.features)
            return (jnp.einsum("nhwc,nc->nhw", a, alpha) * ring).sum()
        return jax.grad(f)(images)

    return parts, head, logits, frame_evidence_grad


def per_class_table(title, columns: dict, classes, digits=2, note="") -> list[str]:
    """Markdown: one row per entry of ``columns`` ({name: per-image values}), mean per class + overall."""
    import mnist_xai_metrics as M
    lines = [f"**{title}**{note}", "", "| | all | " + " | ".join(str(c) for c in range(10)) + " |",
             "|---|---|" + "---|" * 10]
    for name, values in columns.items():
        v = np.asarray(values, np.float64)
        per = M.by_class(v, classes)
        lines.append(f"| {name} | {np.nanmean(v):.{digits}f} | " + " | ".join(f"{x:.{digits}f}" for x in per) + " |")
    return lines + [""]


def cmd_cause(args) -> int:
    import mnist_xai_metrics as M
    import mnist_xai_visualizations as X
    from mnist_checkpoint import load_checkpoint

    params, batch_stats, model, meta = load_checkpoint(args.checkpoint)
    images, labels = load_images(args.data_dir, args.num_images)
    n = len(images)
    out, numbers = [f"Checkpoint `{args.checkpoint or 'pretrained'}`, first {n} test digits, explaining the "
                    "predicted class; per-class columns are means over the digits predicted as that class.", ""], {}
    parts, head, logits_fn, frame_grad = cam_parts(model, params, batch_stats)
    base_logits = np.asarray(logits_fn(images))
    preds = base_logits.argmax(-1).astype(np.int32)
    frame = M.frame_mask(BORDER)
    ring = ring_cells()

    # 1. Do the methods agree? Frame share and ink ratio per method.
    methods = {"GradCAM": X.GradCAM(model), "GradCAM++": X.GradCAMPlusPlus(model), "Score-CAM": X.ScoreCAM(model),
               "saliency": X.Saliency(model), "Integrated Gradients": X.IntegratedGradients(model),
               "Occlusion, black patch (0)": X.Occlusion(model),
               "Occlusion, gray patch (0.5)": X.Occlusion(model, baseline=0.5)}
    frame_cols, ink_cols = {}, {}
    for name, explainer in methods.items():
        t0 = time.perf_counter()
        maps = explainer.attribute(params, batch_stats, images, preds)
        if name == "Integrated Gradients":
            maps = np.abs(maps)  # signed: |IG| as displayed; its positive part alone lies on ink by construction
        loc = M.localisation(images, maps, BORDER)
        frame_cols[name], ink_cols[name] = loc["frame_share"], loc["ink_ratio"]
        numbers.setdefault("methods", {})[name] = {"frame_share": list(M.by_class(loc["frame_share"], preds)),
                                                   "ink_ratio": list(M.by_class(loc["ink_ratio"], preds)),
                                                   "frame_share_mean": float(loc["frame_share"].mean()),
                                                   "ink_ratio_mean": float(loc["ink_ratio"].mean())}
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    out += per_class_table("Frame share per method (uniform map: 0.49)", frame_cols, preds)
    out += per_class_table("Ink ratio per method (uniform map: 1.0)", ink_cols, preds, 1)

    # 2. The raw 7x7 GradCAM: rows and ring.
    a, alpha, _ = (np.asarray(t) for t in parts(images, preds))
    cam = np.maximum(np.einsum("nhwc,nc->nhw", a, alpha), 0)
    total = np.maximum(cam.sum((1, 2)), 1e-12)
    rows = {f"row {r}{' (top)' if r == 0 else ' (bottom)' if r == 6 else ''}": cam[:, r].sum(1) / total
            for r in range(7)}
    rows["left column"] = cam[:, :, 0].sum(1) / total
    rows["right column"] = cam[:, :, 6].sum(1) / total
    rows["outer ring of cells (24/49 = 0.49)"] = (cam * ring).sum((1, 2)) / total
    out += per_class_table("Raw 7x7 GradCAM: share of its positive mass per row (uniform 1/7 = 0.14)", rows, preds)

    # 3. Is the ring's evidence a constant? GradCAM of a blank image, and GradCAM against it.
    blank = np.zeros((1, 28, 28, 1), np.float32)
    a0 = np.asarray(parts(blank, preds[:1])[0])[0]  # the blank image's feature map (class-independent)
    cam_ref = np.maximum(np.einsum("nhwc,nc->nhw", a - a0[None], alpha), 0)
    cam_blank = np.einsum("hwc,nc->nhw", a0, alpha)  # the blank image's activations under each digit's weights
    lin = np.einsum("nhwc,nc->nhw", a, alpha)
    ring_lin, ring_blank = (lin * ring).sum((1, 2)), (cam_blank * ring).sum((1, 2))
    ref_total = np.maximum(cam_ref.sum((1, 2)), 1e-12)
    out += per_class_table("GradCAM against a blank-image reference (each digit's channel weights)", {
        "ring share, plain GradCAM": rows["outer ring of cells (24/49 = 0.49)"],
        "ring share, ReLU(sum_k alpha_k (A_k - A_k(blank)))": (cam_ref * ring).sum((1, 2)) / ref_total,
        "ring's signed evidence that the blank image's activations already give": ring_blank / np.where(
            np.abs(ring_lin) > 1e-9, ring_lin, np.nan),
    }, preds)

    # The blank image itself: its prediction, and its feature map on the ring against the interior.
    blank_logits = np.asarray(logits_fn(blank))[0]
    blank_p = np.exp(blank_logits - blank_logits.max())
    blank_p /= blank_p.sum()
    ring_act, inner_act = float(a0[ring > 0].mean()), float(a0[ring == 0].mean())
    digit_ring, digit_inner = float(a[:, ring > 0].mean()), float(a[:, ring == 0].mean())
    out += [f"A blank (all-black) image is predicted as **{int(blank_logits.argmax())}** "
            f"({100 * blank_p.max():.0f}%; logits " + ", ".join(f"{c}: {z:.2f}" for c, z in enumerate(blank_logits))
            + f"). Mean activation of the last conv block on the ring cells / interior cells: blank image "
            f"{ring_act:.3f} / {inner_act:.3f}, the digits {digit_ring:.3f} / {digit_inner:.3f}.", ""]
    centre = a0[3, 3]
    corr = [float(np.corrcoef(a0[i, j], centre)[0, 1]) for i in range(7) for j in range(7) if ring[i, j]]
    ring_blank_ev, inner_blank_ev = float(ring_blank.mean()), float((cam_blank * (1 - ring)).sum((1, 2)).mean())
    out += [f"On a blank input every cell would be alike but for the zero padding (the convolutions are "
            f"translation-equivariant), yet the blank image's channel vector on the ring cells correlates "
            f"{np.mean(corr):.2f} on average (min {np.min(corr):.2f}) with the centre cell's: the padding shapes the "
            f"ring. Under each digit's channel weights the blank image's activations give GradCAM evidence "
            f"{ring_blank_ev:+.2f} summed over the ring cells and {inner_blank_ev:+.2f} over the interior cells "
            f"(the digits themselves: {float(ring_lin.mean()):+.2f} and {float((lin * (1 - ring)).sum((1, 2)).mean()):+.2f}).", ""]
    numbers["blank"] = {"logits": blank_logits.tolist(), "ring_activation": ring_act,
                        "ring_centre_correlation": float(np.mean(corr)), "ring_blank_evidence": ring_blank_ev,
                        "interior_blank_evidence": inner_blank_ev,
                        "interior_activation": inner_act, "digits_ring_activation": digit_ring,
                        "digits_interior_activation": digit_inner}

    # 4. Interventions. (a) feature space: zero the ring cells of A (what GradCAM claims about)
    z0 = base_logits[np.arange(n), preds]
    def target_logit(z):
        return np.asarray(z)[np.arange(n), preds]
    interior_cells = 1 - ring
    feat = {
        "A on the ring cells set to 0": z0 - target_logit(head(a * (1 - ring)[None, :, :, None])),
        "A on the interior cells set to 0": z0 - target_logit(head(a * ring[None, :, :, None])),
        "A on the ring cells set to the blank image's": z0 - target_logit(
            head(a * interior_cells[None, :, :, None] + a0[None] * ring[None, :, :, None])),
        "A on the interior cells set to the blank image's": z0 - target_logit(
            head(a * ring[None, :, :, None] + a0[None] * interior_cells[None, :, :, None])),
        "GradCAM's claim for the first: sum of cam over the ring (linear)": ring_lin,
    }
    # (b) pixel space: the outer 4 px and the interior filled, and the stroke removed
    rng = np.random.default_rng(0)
    fr = frame[None, :, :, None]
    noise = rng.random(images.shape).astype(np.float32)
    ink = images > M.INK_THRESHOLD
    def drop(x):
        return z0 - target_logit(logits_fn(np.clip(x, 0, 1).astype(np.float32)))
    pix = {
        "frame (outer 4 px) -> gray 0.5": drop(np.where(fr, 0.5, images)),
        "frame -> uniform noise [0, 1]": drop(np.where(fr, noise, images)),
        "frame -> noise [0, 0.3]": drop(np.where(fr, 0.3 * noise, images)),
        "interior (inner 20x20) -> gray 0.5": drop(np.where(fr, images, 0.5)),
        "interior -> noise [0, 0.3]": drop(np.where(fr, images, 0.3 * noise)),
        "stroke (ink > 0.5) -> 0": drop(np.where(ink, 0.0, images)),
        "all but the stroke -> noise [0, 0.3]": drop(np.where(ink, images, 0.3 * noise)),
        "whole image -> black (all removed)": drop(np.zeros_like(images)),
    }
    out += per_class_table("Drop of the predicted class's logit (original logit in the first row)",
                           {"original logit": z0, **feat, **pix}, preds, 2)
    # which pixels do the ring cells' evidence come from?
    g = np.asarray(frame_grad(images, alpha, ring))[..., 0]
    gx = np.abs(g * images[..., 0])
    gabs = np.abs(g)
    out += per_class_table("Where the ring cells' GradCAM evidence comes from: d(ring evidence)/d(pixels)", {
        "|gradient| share on the frame pixels (area 0.49)": (gabs * frame).sum((1, 2)) / np.maximum(gabs.sum((1, 2)), 1e-12),
        "|gradient| share on ink (ink area ~0.1)": (gabs * ink[..., 0]).sum((1, 2)) / np.maximum(gabs.sum((1, 2)), 1e-12),
        "|gradient x input| share on ink": (gx * ink[..., 0]).sum((1, 2)) / np.maximum(gx.sum((1, 2)), 1e-12),
    }, preds)
    numbers.update({"feature_interventions": {k: list(M.by_class(v, preds)) for k, v in feat.items()},
                    "pixel_interventions": {k: list(M.by_class(v, preds)) for k, v in pix.items()},
                    "rows_7x7": {k: list(M.by_class(v, preds)) for k, v in rows.items()},
                    "original_logit": list(M.by_class(z0, preds)), "num_images": n, "machine": machine()})
    print("\n".join(out))
    dump(args, numbers)
    return 0


# ----------------------------------------------------------------------------- classes


def enclosed_background(ink: np.ndarray) -> np.ndarray:
    """(N, 28, 28) bool: background pixels not 4-connected to the image border through background
    (the holes of 0, 6, 8, 9, ...)."""
    from scipy import ndimage
    out = np.zeros_like(ink)
    for i, m in enumerate(ink):
        lab, _ = ndimage.label(~m)
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        out[i] = ~m & ~np.isin(lab, border)
    return out


def reference_gradcam(model, params, batch_stats, images, targets, chunk=500):
    """(plain GradCAM, GradCAM against the blank image's activations) upsampled like the explainer's,
    both ReLU'd: ReLU(sum_k alpha_k A_k) and ReLU(sum_k alpha_k (A_k - A_k(blank)))."""
    import jax
    import mnist_xai_visualizations as X
    parts, _, _, _ = cam_parts(model, params, batch_stats)
    a0 = np.asarray(parts(np.zeros((1, 28, 28, 1), np.float32), np.zeros(1, np.int32))[0])[0]
    plain, ref = [], []
    for s in range(0, len(images), chunk):
        a, alpha, _ = (np.asarray(t) for t in parts(images[s:s + chunk], targets[s:s + chunk]))
        lin = np.einsum("nhwc,nc->nhw", a, alpha)
        lin0 = np.einsum("hwc,nc->nhw", a0, alpha)
        plain.append(np.asarray(X.upsample(jax.numpy.asarray(np.maximum(lin, 0)))))
        ref.append(np.asarray(X.upsample(jax.numpy.asarray(np.maximum(lin - lin0, 0)))))
    return np.concatenate(plain), np.concatenate(ref)


def region_shares(images, maps, labels):
    """Per image, the share of a map's positive mass on: the frame, ink, enclosed holes, the rest of the
    background; in the upper / lower half of the digit's bounding box; and the digit's crossing
    window (a 7x7 window around the crossing of the class-mean 4's bar and stem)."""
    import mnist_xai_metrics as M
    x = images[..., 0]
    ink = x > M.INK_THRESHOLD
    hole = enclosed_background(ink)
    frame = M.frame_mask(BORDER)[None]
    pos = np.maximum(maps, 0).astype(np.float64)
    tot = np.maximum(pos.sum((1, 2)), 1e-12)
    share = lambda m: (pos * m).sum((1, 2)) / tot  # noqa: E731
    rows = np.arange(28)[None, :, None]
    top = np.array([np.flatnonzero(m.any(1))[0] if m.any() else 0 for m in ink])
    bottom = np.array([np.flatnonzero(m.any(1))[-1] if m.any() else 27 for m in ink])
    mid = (top + bottom) / 2
    upper = (rows <= mid[:, None, None]) & (rows >= top[:, None, None])
    lower = (rows > mid[:, None, None]) & (rows <= bottom[:, None, None])
    four = x[labels == 4].mean(0) if (labels == 4).any() else x.mean(0)
    bar_row = int(np.argmax(four[10:24].sum(1))) + 10  # the horizontal bar
    stem_col = int(np.argmax(four[bar_row:].sum(0)))  # the stem below the bar
    cross = np.zeros((28, 28), bool)
    cross[max(bar_row - 3, 0):bar_row + 4, max(stem_col - 3, 0):stem_col + 4] = True
    return {"frame": share(frame), "ink": share(ink), "hole": share(hole),
            "other background": share(~ink & ~hole & ~frame), "upper half of the digit": share(upper),
            "lower half of the digit": share(lower), "crossing window": share(cross[None])}, \
        {"frame": np.broadcast_to(frame, x.shape).mean((1, 2)), "ink": ink.mean((1, 2)), "hole": hole.mean((1, 2)),
         "other background": (~ink & ~hole & ~frame).mean((1, 2)), "upper half of the digit": upper.mean((1, 2)),
         "lower half of the digit": lower.mean((1, 2)), "crossing window": np.full(len(x), cross.mean())}, \
        (bar_row, stem_col)


def cmd_classes(args) -> int:
    import mnist_xai_metrics as M
    import mnist_xai_visualizations as X
    from mnist_checkpoint import load_checkpoint

    params, batch_stats, model, meta = load_checkpoint(args.checkpoint)
    images, labels = load_images(args.data_dir, args.num_images)
    maps, preds, _ = X.GradCAM(model).explain(params, batch_stats, images)
    shown = np.asarray(X.normalize_maps(maps))  # as the demo's class-average figure shows them
    plain, ref = reference_gradcam(model, params, batch_stats, images, preds)
    out = [f"Checkpoint `{args.checkpoint or 'pretrained'}`, {len(images):,} test digits grouped by their label, "
           "GradCAM for the predicted class scaled to [0, 1] per digit as in the demo's class-average figure. "
           "Share of each map's mass per region (the region's share of the image in brackets, mean over digits).", ""]
    numbers = {}
    for title, m in (("GradCAM (as the demo shows it)", shown),
                     ("GradCAM against the blank image's activations", ref)):
        sh, area, (bar_row, stem_col) = region_shares(images, m, labels)
        lines = [f"**{title}**", "", "| region | " + " | ".join(str(c) for c in range(10)) + " |", "|---|" + "---|" * 10]
        for k in sh:
            per, per_area = M.by_class(sh[k], labels), M.by_class(area[k], labels)
            lines.append(f"| {k} | " + " | ".join(f"{v:.2f} ({a:.2f})" for v, a in zip(per, per_area)) + " |")
            numbers.setdefault(title, {})[k] = {"share": list(per), "area": list(per_area)}
        out += lines + [""]
    out.append(f"(Crossing window: 7x7 around row {bar_row}, column {stem_col}, where the class-mean 4's bar "
               "meets its stem.)")
    # peak of each class-average map, and its rows
    peaks = []
    for c in range(10):
        avg = shown[labels == c].mean(0)
        r, col = np.unravel_index(np.argmax(avg), avg.shape)
        peaks.append(f"{c}: ({r}, {col})")
    out += ["", "Peak (row, column) of each class-average GradCAM map: " + "; ".join(peaks) + "."]
    if args.figure:
        save_class_figure(images, labels, shown, ref, args.figure)
        out.append(f"\nFigure: {args.figure}")
    print("\n".join(out))
    dump(args, {"machine": machine(), "num_images": len(images), **numbers})
    return 0


def save_class_figure(images, labels, shown, ref, path) -> None:
    import mnist_xai_visualizations as X
    from matplotlib.figure import Figure
    ref_shown = np.asarray(X.normalize_maps(ref))
    fig = Figure(figsize=(15, 5.4))
    axes = fig.subplots(3, 10)
    for c in range(10):
        sel = labels == c
        for r, (arr, cmap) in enumerate(((images[..., 0], "gray"), (shown, "jet"), (ref_shown, "jet"))):
            ax = axes[r, c]
            ax.imshow(arr[sel].mean(0), cmap=cmap, vmin=0, vmax=None if r else 1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, c].set_title(f"{c} (n={int(sel.sum())})", fontsize=9)
    for ax, name in zip(axes[:, 0], ("mean digit", "mean GradCAM", "GradCAM minus\nblank-image part")):
        ax.set_ylabel(name, fontsize=9)
    fig.suptitle("Class averages: GradCAM as the demo shows it, and GradCAM against the blank image's "
                 "activations (the part every image shares removed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


# ----------------------------------------------------------------------------- command line


def cmd_scorecam_weights(args) -> int:
    """How peaked Score-CAM's channel weights are: softmax over the channels of the target logit
    on each channel-masked input (the weights ScoreCAM.low_res_cam uses), per checkpoint."""
    import jax
    import jax.numpy as jnp

    import mnist_xai_visualizations as X
    from mnist_checkpoint import load_checkpoint

    images, _ = load_images(args.data_dir, args.num_images)
    print(f"Score-CAM's channel weights on the first {len(images)} test digits, predicted class.\n")
    print("| checkpoint | target logit on the masked inputs: mean | its spread over channels (std) "
          "| top channel's weight, median | effective channels 1/Σw², median (of C) |")
    print("|---|---|---|---|---|")
    for path in args.checkpoints:
        params, batch_stats, model, _ = load_checkpoint(None if path == "pretrained" else path)
        sc = X.ScoreCAM(model)
        sc.attribute(params, batch_stats, images[:1])  # checks the model and caches its layer
        v = {"params": params, "batch_stats": batch_stats}
        fm, logits = sc.activations(v, jnp.asarray(images))
        t = logits.argmax(-1)
        n, h, w, c = fm.shape
        masks = X.normalize_maps(X.upsample(jnp.moveaxis(fm, -1, 1).reshape(n * c, h, w), images.shape[1:3],
                                            align_corners=True)).reshape(n, c, *images.shape[1:3], 1)
        scores = np.concatenate([np.asarray(sc.logits(v, (images[i:i + 10, None] * masks[i:i + 10]).reshape(
            -1, *images.shape[1:]))).reshape(-1, c, logits.shape[-1]) for i in range(0, n, 10)])
        target = np.take_along_axis(scores, np.asarray(t)[:, None, None], 2)[..., 0]  # (n, C)
        weights = np.asarray(jax.nn.softmax(target, axis=1))
        print(f"| `{path}` | {target.mean():.2f} | {target.std(1).mean():.2f} | {np.median(weights.max(1)):.3f} "
              f"| {np.median(1 / (weights ** 2).sum(1)):.1f} (of {c}) |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import cli
    p = cli.parser(__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="one training run of a recipe variant")
    t.add_argument("workdir")
    t.add_argument("--data-dir")
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--learning-rate", type=float, default=3e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--label-smoothing", type=float, default=0.1, help="default: the recipe the study started from")
    t.add_argument("--dropout", type=float, default=0.5)
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--max-rotation", type=float, default=10.0)
    t.add_argument("--max-scale", type=float, default=0.1)
    t.add_argument("--max-shift", type=float, default=2.0)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=cmd_train)

    for name, fn, text in (("table", cmd_table, "accuracy, frame share and ink ratio of checkpoints"),):
        s = sub.add_parser(name, help=text)
        s.add_argument("checkpoints", nargs="+", help="checkpoint folders; 'pretrained' for the shipped one")
        s.add_argument("--data-dir")
        s.add_argument("--num-images", type=int, default=2000, help="digits for the maps (default: %(default)s)")
        s.add_argument("--json")
        s.set_defaults(fn=fn)
    w = sub.add_parser("scorecam-weights", help="how peaked Score-CAM's channel weights are, per checkpoint")
    w.add_argument("checkpoints", nargs="+", help="checkpoint folders; 'pretrained' for the shipped one")
    w.add_argument("--data-dir")
    w.add_argument("--num-images", type=int, default=100, help="default: %(default)s")
    w.set_defaults(fn=cmd_scorecam_weights)
    c = sub.add_parser("cause", help="the shipped model: methods, 7x7 rows, interventions")
    c.add_argument("--checkpoint")
    c.add_argument("--data-dir")
    c.add_argument("--num-images", type=int, default=400, help="default: %(default)s")
    c.add_argument("--json")
    c.set_defaults(fn=cmd_cause)

    k = sub.add_parser("classes", help="the class-average maps: which regions they cover")
    k.add_argument("--checkpoint")
    k.add_argument("--data-dir")
    k.add_argument("--num-images", type=int, help="default: every test digit")
    k.add_argument("--figure", help="also draw the class averages with the blank-image part removed")
    k.add_argument("--json")
    k.set_defaults(fn=cmd_classes)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    code = args.fn(args)
    print(f"\n({args.command}: {time.perf_counter() - t0:.0f} s on {machine()})", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of our explanation methods (maps/s) beside Captum's on the same CNN in PyTorch.

    pip install -r requirements-bench.txt   # torch 2.13.0 (CPU build) + captum
    python benchmarks/bench_xai.py --num-images 1000 --json outputs/bench_xai.json

    # every reference (Captum, pytorch-grad-cam, PAIR saliency), one command, in the reference venv
    # (requirements-reference.txt + saliency==0.2.1 scikit-image scikit-learn, e.g. /tmp/refvenv):
    REFVENV/bin/python benchmarks/bench_xai.py --data-dir DIR --num-images 200 --captum-max-images 50 \
        --slow-max-images 8 --json outputs/bench_xai.json

In a venv without grad-cam or saliency their rows say "not run" and the rest still runs.

Prints a markdown table: one row per registered method (``mnist_xai.registry.SPECS``; the LRP
rules, which ``bench_lrp.py`` times, aside), with
our maps/s, Captum's maps/s on the same weights, the ratio ours/Captum, the parameters
each side ran with, and how closely the two sides' maps agree on the images both explained.

What is compared
----------------
* Ours: ``METHODS[name](model).attribute(params, batch_stats, images)`` with the module's
  defaults (Integrated Gradients 50 Gauss-Legendre steps, SmoothGrad 25 samples with noise
  0.15, Occlusion 4x4 patch stride 2, ...), explaining each image's predicted class.
* Captum: the same architecture written in ``torch.nn`` (eval mode) with the Flax weights
  copied in (conv HWIO -> OIHW, dense (in, out) -> (out, in), BatchNorm scale/bias/mean/var,
  the (x - 0.1307) / 0.3081 standardisation inside ``forward``). The script checks that
  the torch logits match ours (max abs diff < 1e-3) before timing anything, so the two
  sides compute the same function and their maps are comparable. Captum explains the
  class its own forward pass predicts (that forward pass is inside the timed region, as
  ours is). Counterparts:

    gradcam               LayerGradCam on the last conv block's ReLU output, relu_attributions,
                          then LayerAttribution.interpolate(.., (28, 28), "bilinear")
    gradcam++, scorecam   no Captum counterpart ("—")
    saliency              Saliency(abs=True)
    gradient_x_input      InputXGradient
    integrated_gradients  IntegratedGradients(n_steps=50, gausslegendre, zero baseline,
                          internal_batch_size=--captum-internal-batch)
    smoothgrad            NoiseTunnel(Saliency), nt_type="smoothgrad", nt_samples=25,
                          stdevs=0.15, nt_samples_batch_size=--captum-internal-batch / --batch-size
    occlusion             Occlusion(sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2),
                          baselines=0, perturbations_per_eval=--occlusion-per-eval)

  Captum runs in batches of ``--batch-size`` (default 100). The internal batch sizes above
  put about 1,000 images through each forward pass, as our chunking does.
* pytorch-grad-cam (``pip install grad-cam``; the usual GradCAM++ / Score-CAM reference),
  where it imports, on the same torch model, target layer ``features[-1]`` (the last conv
  block's ReLU), ``ClassifierOutputTarget`` (the logit) for the predicted class:

    gradcam, gradcam++    GradCAM / GradCAMPlusPlus, batches of ``--batch-size``
    scorecam              ScoreCAM with batch_size=32 masked images per forward pass (its
                          fastest here: 9.4, 11.6, 8.7, 7.4 maps/s at 16 (its default), 32,
                          64, 128), timed like the slow Captum methods; its tqdm bars muted

  It needs torchvision, which on the machine this was written on installs only as the CUDA
  pair ``torch==2.14.1 torchvision==0.29.1`` (5.5 GB, CPU use is fine), so its rows come from
  a separate venv (see README_MNIST_XAI.md). Its maps are min-max scaled per image and
  resized with OpenCV, so only the r column compares them with ours.

The methods added after these eight (HiResCAM ... XRAI, Feature Ablation ... RISE, Guided
Backprop ... DeepLiftShap) take their reference from ``benchmarks/reference_runners.py`` (its
docstring lists each call, its options and how both sides get the same random draws); they
are timed on the SAME images on both sides: all ``--num-images`` for the registry's "fast"
methods, the first ``--captum-max-images`` for its "medium" ones and the first
``--slow-max-images`` for its "slow" ones. For the eight above, the SmoothGrad row now also
feeds Captum our noise (``reference_runners.InjectedNoise``), so its max-diff column compares
like with like.

Timing
------
Each side gets one untimed warm-up call first, then the whole batch is timed with
``time.perf_counter()``. Ours returns numpy arrays, so the JAX work has finished when the
call returns. Our warm-up uses ``min(N, chunk_size)`` images: ``explain`` runs batches of at
most ``chunk_size`` images as one compiled call of exactly that shape and pads larger
batches to whole chunks, so this warm-up compiles the very shape(s) the timed run uses
(for N <= chunk_size that is the same N images) and compilation is excluded. Captum's
warm-up is one call on a small batch (up to 16 images); PyTorch has nothing to compile.
The slow reference methods (Captum's integrated_gradients, smoothgrad, occlusion and
pytorch-grad-cam's scorecam, tens of maps/s on a CPU) are timed on the first
``--captum-max-images`` images only (default 200); the table says how many images each
side timed.

Agreement columns: on the images both sides explained, Pearson r between the two maps
(mean over images) and max |ours - Captum| / max |ours|. SmoothGrad's noise draws differ
between the two (ours shares one set of noise images across the batch), so only its r is
meaningful. Every other method agrees to float precision: our 2x2 max-pool sends the
gradient at tied maxima (MNIST's flat background) to the first maximum, as ``nn.MaxPool2d``
does. ``--tie-splitting-pool`` gives the torch model a reshape + ``amax`` pool instead, which
splits tied gradients evenly, to show how far that convention moves the input-gradient maps.

Weights: ``--checkpoint`` (a training workdir or step folder), else the shipped
``pretrained/`` checkpoint, else (said in the output) a freshly initialised network, which
times the same but explains nothing meaningful.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import io
import json
import os
import platform
import resource
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))

from cpu_devices import use_one_device_per_core  # noqa: E402

use_one_device_per_core()  # as evaluate_xai.py and the full demo do

import jax  # noqa: E402
import numpy as np  # noqa: E402

import mnist_xai_visualizations as xai  # noqa: E402
import reference_runners as refs  # noqa: E402
from mnist_checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from mnist_cnn_model import MNIST_MEAN, MNIST_STD, initialize_model  # noqa: E402
from mnist_data import load_sample_digits, load_test_split, resolve_data_dir  # noqa: E402

SLOW_CAPTUM = ("integrated_gradients", "smoothgrad", "occlusion", "scorecam")
NO_COUNTERPART = ("gradcam++", "scorecam")
GRAD_CAM_LIB = ("gradcam", "gradcam++", "scorecam")  # methods pytorch-grad-cam has
FIRST_EIGHT = ("gradcam", "gradcam++", "scorecam", "saliency", "gradient_x_input", "integrated_gradients",
               "smoothgrad", "occlusion")  # the methods with their own runners below
#: every registered method this script times: the first eight and reference_runners.NEW (the
#: LRP rules are bench_lrp.py's)
BENCHED = tuple(m for m in xai.METHODS if m in FIRST_EIGHT or m in refs.NEW)
LOGIT_TOLERANCE = 1e-3
CAPTUM_WARMUP_IMAGES = 16


# ----------------------------------------------------------------------------- inputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=1000, help="images to explain per method (default 1000)")
    p.add_argument("--data-dir", default=None,
                   help="MNIST IDX folder (default $MNIST_DATA_DIR; else the 200 shipped sample digits, repeated)")
    p.add_argument("--methods", default=",".join(BENCHED),
                   help=f"comma-separated subset of: {','.join(BENCHED)} (default all)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint workdir or step folder (default the shipped pretrained/)")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                   help="torch.set_num_threads (default os.cpu_count())")
    p.add_argument("--batch-size", type=int, default=100, help="Captum batch size (default 100)")
    p.add_argument("--captum-max-images", type=int, default=200,
                   help=f"time the slow reference methods ({', '.join(SLOW_CAPTUM)}) on at most this many images "
                        "(default 200)")
    p.add_argument("--slow-max-images", type=int, default=20,
                   help="time the newer methods the registry calls 'slow' (Guided IG, XRAI, Shapley, KernelSHAP, "
                        "LIME, RISE, ...) on at most this many images, on both sides (default 20)")
    p.add_argument("--captum-internal-batch", type=int, default=1000,
                   help="images per forward pass inside Captum's IG (internal_batch_size) and SmoothGrad "
                        "(nt_samples_batch_size = this / --batch-size) (default 1000)")
    p.add_argument("--occlusion-per-eval", type=int, default=10,
                   help="Captum Occlusion perturbations_per_eval (default 10: ~1000 images per forward at batch 100)")
    p.add_argument("--tie-splitting-pool", action="store_true",
                   help="torch model pools with reshape+amax (splits gradient ties evenly) instead of nn.MaxPool2d")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--skip-captum", action="store_true", help="time only our methods")
    p.add_argument("--torch-device", default=None,
                   help="device for the torch side (default: cuda where torch sees a GPU, else cpu)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="our images per compiled call for every method timed (default: each method's own)")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in BENCHED]
    if unknown or not args.methods:
        p.error(f"--methods: unknown {unknown or 'empty list'}; choose from {', '.join(BENCHED)}")
    for name in ("num_images", "batch_size", "captum_max_images", "torch_threads", "occlusion_per_eval",
                 "captum_internal_batch", "slow_max_images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    return args


def load_images(data_dir, n):
    """(N, 28, 28, 1) float32 in [0, 1] and a description of where they came from."""
    folder = resolve_data_dir(data_dir)
    if folder is not None:
        split, source = load_test_split(folder), f"MNIST test split from {folder}"
    else:
        split, source = load_sample_digits(), "the 200 shipped sample digits (sample_data/)"
    images = split.images
    if len(images) < n:
        images = np.concatenate([images] * (-(-n // len(images))))
        source += f", repeated to {n}"
    return images[:n].astype(np.float32) / 255.0, source


def load_weights(path):
    try:
        params, batch_stats, model, meta = load_checkpoint(path)
        where = path or "pretrained/"
        acc = meta.get("test_accuracy")
        return params, batch_stats, model, f"checkpoint {where}" + (f" (test accuracy {acc:.4f})" if acc else "")
    except CheckpointError as e:
        if path is not None:
            raise SystemExit(f"error: {e}")
        params, batch_stats, model = initialize_model(jax.random.PRNGKey(0))
        return params, batch_stats, model, ("UNTRAINED weights (initialize_model(PRNGKey(0))): no shipped "
                                            "pretrained/ checkpoint; timings are valid, maps are not meaningful")


def processor_name():
    name = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                return f"{model_name} ({name})" if name and name not in model_name else model_name
    except OSError:
        pass
    return name or platform.machine()


# ----------------------------------------------------------------------------- the torch side


def build_torch_model(params, batch_stats, widths=(32, 64, 128), dense=256, classes=10,
                      tie_splitting_pool=False):
    """The MNIST CNN in torch.nn, eval mode, with the Flax weights copied in.

    ``tie_splitting_pool``: 2x2 max pooling as reshape + amax, whose gradient is split evenly
    between tied maxima, instead of ``nn.MaxPool2d`` (all to the first maximum, as ours).
    """
    import torch
    from torch import nn

    class TieSplittingMaxPool2x2(nn.Module):
        def forward(self, x):
            n, c, h, w = x.shape
            return x.reshape(n, c, h // 2, 2, w // 2, 2).amax(dim=(3, 5))

    class TorchMNISTCNN(nn.Module):
        def __init__(self):
            super().__init__()
            layers, cin = [], 1
            for b, w in enumerate(widths):
                for _ in range(2):
                    layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w, eps=1e-5), nn.ReLU()]
                    cin = w
                if b < len(widths) - 1:
                    layers.append(TieSplittingMaxPool2x2() if tie_splitting_pool else nn.MaxPool2d(2))
            self.features = nn.Sequential(*layers)  # features[-1]: last conv block's ReLU
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dense1, self.relu, self.dropout = nn.Linear(widths[-1], dense), nn.ReLU(), nn.Dropout(0.5)
            self.dense2 = nn.Linear(dense, classes)

        def forward(self, x):  # x: (N, 1, 28, 28) in [0, 1]
            x = self.features((x - MNIST_MEAN) / MNIST_STD)
            x = self.pool(x).flatten(1)
            return self.dense2(self.dropout(self.relu(self.dense1(x))))

    net = TorchMNISTCNN()
    t = lambda a: torch.from_numpy(np.array(a, np.float32))  # noqa: E731
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.features if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for k, (conv, bn) in enumerate(zip(convs, norms), start=1):
            conv.weight.copy_(t(params[f"conv{k}"]["kernel"]).permute(3, 2, 0, 1))  # HWIO -> OIHW
            conv.bias.copy_(t(params[f"conv{k}"]["bias"]))
            bn.weight.copy_(t(params[f"bn{k}"]["scale"]))
            bn.bias.copy_(t(params[f"bn{k}"]["bias"]))
            bn.running_mean.copy_(t(batch_stats[f"bn{k}"]["mean"]))
            bn.running_var.copy_(t(batch_stats[f"bn{k}"]["var"]))
        for name in ("dense1", "dense2"):
            layer = getattr(net, name)
            layer.weight.copy_(t(params[name]["kernel"]).T)  # (in, out) -> (out, in)
            layer.bias.copy_(t(params[name]["bias"]))
    return net.eval()


def captum_runner(name, net, args):
    """A function (x (B,1,28,28) tensor, target (B,) tensor) -> maps (B, 28, 28) numpy, and its parameters."""
    from captum import attr as ca

    if name == "gradcam":
        m = ca.LayerGradCam(net, net.features[-1])

        def run(x, t):
            cam = m.attribute(x, target=t, relu_attributions=True)
            return ca.LayerAttribution.interpolate(cam, (28, 28), interpolate_mode="bilinear")
        return run, "LayerGradCam(last ReLU), relu, bilinear interpolate"
    if name == "saliency":
        m = ca.Saliency(net)
        return (lambda x, t: m.attribute(x, target=t, abs=True)), "Saliency(abs=True)"
    if name == "gradient_x_input":
        m = ca.InputXGradient(net)
        return (lambda x, t: m.attribute(x, target=t)), "InputXGradient"
    if name == "integrated_gradients":
        m = ca.IntegratedGradients(net)
        ibs = args.captum_internal_batch
        return ((lambda x, t: m.attribute(x, baselines=0.0, target=t, n_steps=50, method="gausslegendre",
                                          internal_batch_size=ibs)),
                f"n_steps=50, gausslegendre, baseline 0, internal_batch_size={ibs}")
    if name == "smoothgrad":
        m = ca.NoiseTunnel(ca.Saliency(net))
        per_pass = max(1, min(25, args.captum_internal_batch // args.batch_size))
        noise = refs.InjectedNoise(refs.our_draws_for("smoothgrad", args.refs_context))

        def run(x, t):
            noise.reset()
            with noise.active():  # our 25 noise images (the same draws as ours)
                return m.attribute(x, nt_type="smoothgrad", nt_samples=25, nt_samples_batch_size=per_pass,
                                   stdevs=0.15, target=t, abs=True)
        return run, f"NoiseTunnel(Saliency), nt_samples=25, stdevs=0.15, nt_samples_batch_size={per_pass}, our noise"
    if name == "occlusion":
        m = ca.Occlusion(net)
        return ((lambda x, t: m.attribute(x, sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2), baselines=0.0,
                                          target=t, perturbations_per_eval=args.occlusion_per_eval)),
                f"window (1,4,4), strides (1,2,2), baseline 0, perturbations_per_eval={args.occlusion_per_eval}")
    raise KeyError(name)


def grad_cam_lib_runner(name, net):
    """pytorch-grad-cam's counterpart: (x, target) -> maps (B, 28, 28) numpy, and its parameters."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "scorecam": pgc.ScoreCAM}[name]
    cam = cls(model=net, target_layers=[net.features[-1]])
    if name == "scorecam":
        cam.batch_size = 32  # masked images per forward pass (see the module docstring)

    def run(x, t):
        with contextlib.redirect_stderr(io.StringIO()):  # ScoreCAM draws a tqdm bar per image
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])
    return run, f"{cls.__name__}(features[-1])" + (", batch_size=32" if name == "scorecam" else "")


def run_torch_method(run, net, images, batch_size):
    """Explain each image's predicted class (torch's own forward pass) in batches; (N, 28, 28) numpy.

    Images start on the host and maps end there, as ours do; on a GPU each batch is copied
    over, and copying the maps back waits for the GPU's work."""
    import torch

    device = next(net.parameters()).device
    x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    out = []
    for start in range(0, len(x_all), batch_size):
        x = x_all[start:start + batch_size].to(device)
        with torch.no_grad():
            target = net(x).argmax(1)
        maps = run(x, target)
        maps = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
        out.append(maps.reshape(len(x), 28, 28))
    return np.concatenate(out)


def time_reference(run, net, images, batch_size):
    """Untimed warm-up on a few images, then (maps, seconds) for all of ``images``."""
    run_torch_method(run, net, images[:CAPTUM_WARMUP_IMAGES], batch_size)
    t0 = time.perf_counter()
    maps = run_torch_method(run, net, images, batch_size)
    return maps, time.perf_counter() - t0


# ----------------------------------------------------------------------------- timing and table


def time_ours(explainer, params, batch_stats, images):
    """Untimed warm-up on min(N, chunk_size) images (compiles the timed shapes), then
    ``(maps, seconds, warm-up images)`` for all of ``images``."""
    warm = min(len(images), explainer.chunk_size)
    explainer.attribute(params, batch_stats, images[:warm])
    t0 = time.perf_counter()
    ours = explainer.attribute(params, batch_stats, images)  # numpy: JAX work has finished
    return ours, time.perf_counter() - t0, warm


def newer_images(name, n, args):
    """Images both sides time for a newer method: by the registry's cost class."""
    cost = xai.METHODS[name].spec.cost
    return {"fast": n, "medium": min(n, args.captum_max_images), "slow": min(n, args.slow_max_images)}[cost]


def time_newer(name, model, params, batch_stats, images, net, twin, args):
    """A method of reference_runners.NEW: ours and its reference on the same first m images."""
    m = newer_images(name, len(images), args)
    x = images[:m]
    kw = {"chunk_size": args.chunk_size} if args.chunk_size else {}
    explainer = xai.METHODS[name](model, **refs.our_kwargs(name, args.refs_context), **kw)
    ours, ours_s, warm = time_ours(explainer, params, batch_stats, x)
    row = {"method": name, "ours_images": m, "ours_seconds": ours_s, "ours_maps_per_s": m / ours_s,
           "ours_warmup_images": warm, "ours_parameters": refs.describe_ours(name, explainer),
           "captum_images": None, "captum_seconds": None, "captum_maps_per_s": None,
           "captum_parameters": None, "pearson_r": None, "max_rel_diff": None,
           "library": refs.NEW[name].library or "none"}
    if net is None or not refs.NEW[name].library:
        return row
    try:
        run, row["captum_parameters"], _ = refs.reference_runner(name, net, args.refs_context, twin)
    except ImportError as e:  # e.g. PAIR's saliency not installed
        row["captum_parameters"] = f"not run: {e}"
        return row
    theirs, ref_s = time_reference(run, net, x, args.batch_size)
    row.update(captum_images=m, captum_seconds=ref_s, captum_maps_per_s=m / ref_s)
    row["pearson_r"], row["max_rel_diff"] = agreement(ours, theirs)
    if row["library"] == "pytorch-grad-cam":
        row["max_rel_diff"] = None  # its maps are min-max scaled and resized per image: only r compares
    return row


def progress_line(row):
    ref = "" if row["captum_maps_per_s"] is None else f", {row.get('library', 'Captum')} {fmt_rate(row['captum_maps_per_s'])} maps/s"
    if row.get("pgc_maps_per_s") is not None:
        ref += f", pytorch-grad-cam {fmt_rate(row['pgc_maps_per_s'])} maps/s"
    return f"ours {fmt_rate(row['ours_maps_per_s'])} maps/s ({row['ours_images']} images){ref}"


def our_parameters(explainer):
    if isinstance(explainer, xai.IntegratedGradients):
        return f"steps={explainer.steps} (Gauss-Legendre), baseline 0"
    if isinstance(explainer, xai.SmoothGrad):
        return f"samples={explainer.samples}, noise={explainer.noise_level}"
    if isinstance(explainer, xai.Occlusion):
        return f"patch={explainer.patch}, stride={explainer.stride}, baseline {explainer.baseline:g}"
    if isinstance(explainer, xai.ScoreCAM):
        return "128 masked forwards per image"
    if isinstance(explainer, xai.Saliency):
        return f"abs={explainer.absolute}"
    return "defaults"


def agreement(ours, theirs):
    """Mean Pearson r over images (constant maps skipped) and max|diff| / max|ours|."""
    a, b = ours.reshape(len(ours), -1).astype(np.float64), theirs.reshape(len(theirs), -1).astype(np.float64)
    a0, b0 = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    den = np.sqrt((a0 ** 2).sum(1) * (b0 ** 2).sum(1))
    ok = den > 0
    r = float(((a0 * b0).sum(1)[ok] / den[ok]).mean()) if ok.any() else float("nan")
    scale = np.abs(a).max()
    rel = float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a - b).max())
    return r, rel


def fmt_rate(x):
    return "—" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.1f}")


def _reference_cell(r):
    if not r["captum_parameters"]:
        return "—" if r.get("library") != "none" else "— (no library counterpart)"
    lib = r.get("library", "Captum")
    return r["captum_parameters"] if lib in ("pytorch-grad-cam",) else f"{lib}: {r['captum_parameters']}"


def markdown_table(rows):
    with_lib = any(r.get("pgc_maps_per_s") is not None for r in rows)
    head = ["method", "ours maps/s", "reference maps/s", "ours/reference", "images (ours / reference)",
            "ours: parameters", "reference (library: call, parameters)", "r(maps)", "max rel diff"]
    if with_lib:
        head += ["pytorch-grad-cam maps/s (images)", "ours/pgc", "r(maps) pgc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    ratio = lambda a, b: "—" if b is None else f"{a / b:.1f}x"  # noqa: E731
    for r in rows:
        imgs = f"{r['ours_images']} / {r['captum_images'] if r['captum_images'] else '—'}"
        cells = [r["method"], fmt_rate(r["ours_maps_per_s"]), fmt_rate(r["captum_maps_per_s"]),
                 ratio(r["ours_maps_per_s"], r["captum_maps_per_s"]), imgs,
                 r["ours_parameters"], _reference_cell(r),
                 "—" if r["pearson_r"] is None else f"{r['pearson_r']:.4f}",
                 "—" if r["max_rel_diff"] is None else f"{r['max_rel_diff']:.1e}"]
        if with_lib:
            rate = r.get("pgc_maps_per_s")
            cells += ["—" if rate is None else f"{fmt_rate(rate)} ({r['pgc_images']})",
                      ratio(r["ours_maps_per_s"], rate),
                      "—" if r.get("pgc_pearson_r") is None else f"{r['pgc_pearson_r']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    images, source = load_images(args.data_dir, args.num_images)
    params, batch_stats, model, weights = load_weights(args.checkpoint)
    n = len(images)
    # image baselines of GradientSHAP / Expected Gradients: the last 8 shipped sample digits (not timed)
    args.refs_context = refs.make_context(load_sample_digits().images[-refs.SHAP_BASELINES:].astype(np.float32) / 255.0,
                                          args.batch_size, args.captum_internal_batch)

    torch = captum = None
    captum_note = None
    if args.skip_captum:
        captum_note = "skipped (--skip-captum)"
    else:
        try:
            import captum
            import torch
        except ImportError as e:
            captum_note = f"not run: {e} (pip install -r requirements-bench.txt)"
    grad_cam_lib, lib_note = None, None
    if torch is not None:
        try:
            import pytorch_grad_cam as grad_cam_lib
        except ImportError as e:
            lib_note = f"not run: {e} (needs torchvision; see README_MNIST_XAI.md)"
    if torch is not None:
        if args.torch_device is None:
            args.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.torch_device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True  # the reference's best conv kernels
        torch.set_num_threads(args.torch_threads)
        torch.manual_seed(0)  # NoiseTunnel's noise: reproducible runs
        # Captum marks the inputs as requiring gradients itself; its note about that is noise here.
        warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "processor": processor_name(),
        "cpu_count": os.cpu_count(),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "torch": getattr(torch, "__version__", None),
        "captum": getattr(captum, "__version__", None),
        "pytorch_grad_cam": importlib.metadata.version("grad-cam") if grad_cam_lib else None,
        "torch_threads": args.torch_threads if torch is not None else None,
        "torch_device": (f"{args.torch_device} ({torch.cuda.get_device_name()})"
                         if torch is not None and args.torch_device.startswith("cuda") else args.torch_device),
        "jax_device_kind": jax.devices()[0].device_kind,
        "our_chunk_size": args.chunk_size or "each method's default",
        "python": platform.python_version(),
        "images": source,
        "weights": weights,
        "num_images": n,
        "captum_batch_size": args.batch_size,
        "captum_max_images": args.captum_max_images,
        "slow_max_images": args.slow_max_images,
        "tie_splitting_pool": args.tie_splitting_pool,
    }
    print(f"# XAI throughput: ours (JAX/Flax) vs Captum (PyTorch), same CNN, {jax.devices()[0].device_kind}\n")
    for k in ("date", "processor", "cpu_count", "jax_devices", "jax_device_kind", "jax", "torch", "torch_device",
              "captum", "pytorch_grad_cam", "torch_threads", "python", "images", "weights", "our_chunk_size"):
        print(f"- {k}: {info[k]}")
    if captum_note:
        print(f"- Captum: {captum_note}")
    if lib_note:
        print(f"- pytorch-grad-cam: {lib_note}")
    print(f"- Captum batch size {args.batch_size}; slow reference methods ({', '.join(SLOW_CAPTUM)}) "
          f"timed on at most {args.captum_max_images} images; the newer methods on the same images both sides: "
          f"all for 'fast', {args.captum_max_images} for 'medium', {args.slow_max_images} for 'slow'")
    if torch is not None:
        print("- torch pooling: " + ("reshape + amax (gradient split between tied maxima, as in JAX)"
                                     if args.tie_splitting_pool else "nn.MaxPool2d (gradient to one of tied maxima)"))
    print("- warm-up (untimed): ours min(N, chunk_size) images (compiles the timed shapes); "
          f"Captum one batch of {CAPTUM_WARMUP_IMAGES}\n", flush=True)

    variables = {"params": params, "batch_stats": batch_stats}
    forward = jax.jit(model.apply)
    (jax_logits,) = xai.in_chunks(lambda x: (forward(variables, x),), (images,), 1000)  # bounded memory

    net = None

    def twin():  # a fresh torch twin on the same weights (DeepLift's reference modifies its own copy)
        return build_torch_model(params, batch_stats, tuple(model.widths), model.dense_features, model.num_classes,
                                 tie_splitting_pool=args.tie_splitting_pool).to(args.torch_device)
    if torch is not None:
        net = twin()
        k = min(n, 8)
        with torch.no_grad():
            torch_logits = net(torch.from_numpy(np.ascontiguousarray(images[:k].transpose(0, 3, 1, 2)))
                               .to(args.torch_device)).cpu().numpy()
        diff = float(np.abs(torch_logits - jax_logits[:k]).max())
        ok = diff < LOGIT_TOLERANCE
        print(f"Weight copy check: max |torch logits - JAX logits| on {k} images = {diff:.2e} "
              f"({'OK' if ok else 'MISMATCH'}, tolerance {LOGIT_TOLERANCE:g})\n", flush=True)
        info["logit_check_max_abs_diff"] = diff
        if not ok:
            raise SystemExit("error: the torch model does not reproduce our logits; Captum not comparable")

    rows = []
    for name in args.methods:
        if name not in FIRST_EIGHT:
            rows.append(time_newer(name, model, params, batch_stats, images, net, twin, args))
            print(f"  {name}: {progress_line(rows[-1])}", file=sys.stderr, flush=True)
            continue
        # IG at 50 steps, like the Captum side (our default is 100; see IntegratedGradients).
        kw = {"chunk_size": args.chunk_size} if args.chunk_size else {}
        explainer = (xai.METHODS[name](model, steps=50, **kw) if name == "integrated_gradients"
                     else xai.METHODS[name](model, **kw))
        ours, ours_s, warm = time_ours(explainer, params, batch_stats, images)
        row = {"method": name, "ours_images": n, "ours_seconds": ours_s, "ours_maps_per_s": n / ours_s,
               "ours_warmup_images": warm, "ours_parameters": our_parameters(explainer),
               "captum_images": None, "captum_seconds": None, "captum_maps_per_s": None,
               "captum_parameters": None, "pearson_r": None, "max_rel_diff": None, "library": "Captum"}
        m = min(n, args.captum_max_images) if name in SLOW_CAPTUM else n
        if net is not None and name not in NO_COUNTERPART:
            run, row["captum_parameters"] = captum_runner(name, net, args)
            theirs, cap_s = time_reference(run, net, images[:m], args.batch_size)
            row.update(captum_images=m, captum_seconds=cap_s, captum_maps_per_s=m / cap_s)
            row["pearson_r"], row["max_rel_diff"] = agreement(ours[:m], theirs)
        if net is not None and grad_cam_lib is not None and name in GRAD_CAM_LIB:
            run, row["pgc_parameters"] = grad_cam_lib_runner(name, net)
            theirs, lib_s = time_reference(run, net, images[:m], args.batch_size)
            row.update(pgc_images=m, pgc_seconds=lib_s, pgc_maps_per_s=m / lib_s,
                       pgc_pearson_r=agreement(ours[:m], theirs)[0])
        rows.append(row)
        print(f"  {name}: {progress_line(row)}", file=sys.stderr, flush=True)

    print(markdown_table(rows))
    preds_t = None
    if net is not None:
        with torch.no_grad():
            preds_t = np.concatenate([net(torch.from_numpy(np.ascontiguousarray(images[i:i + 1000].transpose(0, 3, 1, 2)))
                                          .to(args.torch_device)).argmax(1).cpu().numpy() for i in range(0, n, 1000)])
        same = int((preds_t == jax_logits.argmax(1)).sum())
        print(f"\nPredicted classes agree (torch vs JAX) on {same}/{n} images.")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"Peak RSS of this process: {peak_mb:,.0f} MiB")
    info["peak_rss_mib"] = peak_mb
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "results": rows}, indent=2))
        print(f"Wrote {args.json}")


if __name__ == "__main__":
    main()

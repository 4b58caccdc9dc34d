"""Throughput of our LRP methods (maps/s) beside zennit's (and Captum's LRP) on the same MNIST CNN.

    /tmp/refvenv/bin/python benchmarks/bench_lrp.py --num-images 500   # the reference venv (torch, zennit, captum)

Prints a markdown table: one row per LRP method of the registry, our maps/s, zennit's maps/s
on the same torch-ported MNISTCNN (bench_xai.build_torch_model, nn.MaxPool2d, the shipped
weights), the ratio ours/zennit, and how closely the maps agree on the images both explained
(Pearson r and max|diff| / max|ours|); for lrp_epsilon also Captum's ``LRP`` (epsilon rule on
the convs and dense layers, 1e-6 on pools; its maps divided by the target logit, see
make_reference_lrp.py). Both sides explain the same images' predicted classes, with the
options of benchmarks/make_reference_lrp.METHODS (the parity fixture's).

zennit runs with ``SequentialMergeBatchNorm`` (registered once, outside the timed loop, like
the composite's hooks) in batches of ``--batch-size``; the predicted class is a no-grad
forward pass per batch inside the timed region (bench_xai.run_torch_method), as Captum's is
in bench_xai.py, after an untimed warm-up on one full batch (the timed batches' shapes). Ours:
``attribute(params, batch_stats, images)`` after an untimed warm-up on ``min(N, chunk_size)``
images, which compiles the timed shapes (bench_xai.py's "Timing"). Each side is timed
``--repeats`` times, alternating, and the best pass is reported: on shared cores single passes
of zennit swung 10x with other jobs' load (torch's two OpenMP threads wait at every op's
barrier for a descheduled one), which made the first-run tables below measure the load.

Measured 2026-12-04 02:28-02:31 UTC after the sign analysis (lrp_rules.nonnegative) and LRP's
CPU chunk of 32, load 1.7-1.8 (other jobs), 200 test digits, 3 passes a side (maps/s, best):

    method                 ours   zennit  ratio   (Captum LRP-epsilon: 578, ours 2.6x)
    lrp_epsilon            1519   767     2.0x
    lrp_gamma              508    320     1.6x
    lrp_alpha_beta         497    365     1.4x
    lrp_epsilon_plus       722    627     1.2x
    lrp_epsilon_gamma_box  487    333     1.5x
    lrp_epsilon_plus_flat  1007   628     1.6x

Earlier (single passes, zennit warmed on 16 images):

Measured 2026-12-03 on this project's 2-core AMD EPYC (shared with other jobs: load 1.3-7),
200 shipped sample digits, pretrained/ weights, torch 2 threads, batch 100 (maps/s):

    method                 ours   zennit  ratio   (Captum LRP-epsilon: 44.4, ours 7.8x)
    lrp_epsilon            347    46.8    7.4x
    lrp_gamma              93.9   19.8    4.7x
    lrp_alpha_beta         122    146     0.8x
    lrp_epsilon_plus       97.0   37.3    2.6x
    lrp_epsilon_gamma_box  95.2   22.8    4.2x
    lrp_epsilon_plus_flat  107    35.3    3.0x

(zennit's alpha-beta row beating its own z+ row, which does half the work, suggests that run
was disturbed; not re-measured.)
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import jax  # noqa: E402
import numpy as np  # noqa: E402

import bench_xai  # noqa: E402
import mnist_xai_visualizations as xai  # noqa: E402
from make_reference_lrp import METHODS, composite  # noqa: E402
from reference_models import MNIST_MEAN, MNIST_STD  # noqa: E402

BOX = ((0.0 - MNIST_MEAN) / MNIST_STD, (1.0 - MNIST_MEAN) / MNIST_STD)  # [0, 1] after the twin's standardisation


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=500, help="images per method, both sides (default 500)")
    p.add_argument("--data-dir", default=None, help="MNIST IDX folder (default $MNIST_DATA_DIR, else the samples)")
    p.add_argument("--batch-size", type=int, default=100, help="zennit/Captum batch size (default 100)")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed passes per side and method, alternating ours and zennit; the best is reported (default 3)")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        p.error(f"--methods: unknown {unknown or 'empty list'}; choose from {', '.join(METHODS)}")
    for name in ("num_images", "batch_size", "torch_threads", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    return args


def torch_timed(run, net, images, batch_size, repeats):
    """Warm-up on one full batch (the timed batches' shapes, as ours compiles its chunk's),
    then ``repeats`` timed passes over ``images``: (maps, list of seconds)."""
    bench_xai.run_torch_method(run, net, images[:batch_size], batch_size)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        maps = bench_xai.run_torch_method(run, net, images, batch_size)
        seconds.append(time.perf_counter() - t0)
    return maps, seconds


def zennit_timed(method, net, images, batch_size, repeats=1):
    import torch
    from zennit.attribution import Gradient

    eye = torch.eye(10)
    with Gradient(model=net, composite=composite(method, *BOX)) as attributor:
        run = lambda x, t: attributor(x, eye[t])[1].sum(1)  # noqa: E731
        return torch_timed(run, net, images, batch_size, repeats)


def captum_timed(net, images, batch_size, epsilon, repeats=1):
    import copy

    import torch
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule
    from zennit.canonizers import SequentialMergeBatchNorm

    merged = copy.deepcopy(net)
    SequentialMergeBatchNorm().apply(merged)
    for m in merged.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.rule = EpsilonRule(epsilon)
        elif isinstance(m, (torch.nn.MaxPool2d, torch.nn.AdaptiveAvgPool2d, torch.nn.BatchNorm2d)):
            m.rule = EpsilonRule(1e-6)
    lrp = LRP(merged)

    def run(x, t):
        with torch.no_grad():
            logit = merged(x)[torch.arange(len(x)), t]
        return lrp.attribute(x, target=t).sum(1) / logit[:, None, None]
    return torch_timed(run, merged, images, batch_size, repeats)


def main(argv=None):
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    warnings.filterwarnings("ignore")
    images, source = bench_xai.load_images(args.data_dir, args.num_images)
    params, batch_stats, model, weights = bench_xai.load_weights(None)
    n = len(images)
    net = bench_xai.build_torch_model(params, batch_stats, tuple(model.widths), model.dense_features,
                                      model.num_classes)
    print(f"# LRP throughput: ours (JAX) vs zennit and Captum (PyTorch), same CNN\n")
    for k, v in (("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
                 ("processor", bench_xai.processor_name()), ("cpu_count", os.cpu_count()),
                 ("load average", " ".join(f"{x:.1f}" for x in os.getloadavg())),
                 ("jax", f"{jax.__version__} on {jax.devices()[0].device_kind}"), ("torch", torch.__version__),
                 ("torch threads", args.torch_threads), ("images", f"{n}, {source}"), ("weights", weights),
                 ("zennit/Captum batch", args.batch_size), ("timed passes", f"{args.repeats} per side, best shown")):
        print(f"- {k}: {v}")
    print()
    rows = []
    for name in args.methods:
        opts = dict(METHODS[name])
        explainer = xai.make_explainer(name, model, **opts)
        warm = min(n, explainer.chunk_size)
        explainer.attribute(params, batch_stats, images[:warm])
        ours_runs, zen_runs = [], []
        for _ in range(args.repeats):  # alternating, so a burst of load elsewhere hits both sides alike
            t0 = time.perf_counter()
            ours = explainer.attribute(params, batch_stats, images)
            ours_runs.append(time.perf_counter() - t0)
            theirs, zen = zennit_timed(name, net, images, args.batch_size)
            zen_runs += zen
        ours_s, zen_s = min(ours_runs), min(zen_runs)
        r, rel = bench_xai.agreement(ours, theirs)
        row = [name, ", ".join(f"{k}={v}" for k, v in opts.items()) or "defaults", n / ours_s, n / zen_s,
               zen_s / ours_s, r, rel, None, None]
        if name == "lrp_epsilon":
            cap, cap_runs = captum_timed(net, images, args.batch_size, opts["epsilon"], args.repeats)
            row[7], row[8] = n / min(cap_runs), min(cap_runs) / ours_s
        rows.append(row)
        each = lambda runs: "/".join(f"{n / t:.0f}" for t in runs)  # noqa: E731
        print(f"  {name}: ours {each(ours_runs)} maps/s, zennit {each(zen_runs)} maps/s", file=sys.stderr, flush=True)
    print("| method | options | ours maps/s | zennit maps/s | ours/zennit | r | max rel diff | Captum LRP maps/s "
          "| ours/Captum |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, opts, o, z, ratio, r, rel, c, cr in rows:
        fmt = bench_xai.fmt_rate
        print(f"| {name} | {opts} | {fmt(o)} | {fmt(z)} | {ratio:.1f}x | {r:.6f} | {rel:.1e} | "
              f"{fmt(c)} | {'—' if cr is None else f'{cr:.1f}x'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

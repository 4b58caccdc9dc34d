"""Regenerate tests/fixtures/reference_lrp.npz: zennit's LRP maps (and Captum's LRP-epsilon) on the
weights of tests/fixtures/reference_maps.npz.

    /tmp/refvenv/bin/python benchmarks/make_reference_lrp.py   # the reference venv (requirements-reference.txt)

The first ``DIGITS`` digits, targets and weights of reference_maps.npz, read from that fixture;
the torch twins of make_reference_propagation.py (``cnn``: bench_xai.build_torch_model,
nn.MaxPool2d; ``refnet``: make_reference_maps.torch_refnet) with one change for RefNet: its
global average pool is an ``nn.AdaptiveAvgPool2d`` module (``GapRefNet``, the same values)
rather than ``x.mean`` in ``forward``, as a zennit user would write it, so that zennit's
AvgPool rule (Norm) reaches it; without the module zennit passes the gradient there, and our
jaxpr sees a ``reduce_sum`` either way. So this stores maps only.

zennit 0.5.1, read from its source (zennit/rules.py, composites.py, canonizers.py, core.py):
every composite is given ``canonizers=[SequentialMergeBatchNorm()]`` (canonizers.py:153-190:
each BatchNorm2d right after a Conv2d, in module order, merged into it; both twins register
conv before norm), and the relevance is ``zennit.attribution.Gradient`` with the one-hot
target as ``attr_output``, summed over the input's channel. The methods and their settings
(``METHODS``): lrp_epsilon: ``LayerMapComposite(layer_map_base() + [(Linear, Epsilon(0.25))])``
(a larger epsilon than the default, so that the stabiliser shows); lrp_gamma and
lrp_alpha_beta: the same with ``Gamma(0.25)`` / ``AlphaBeta(2, 1)``; lrp_epsilon_plus:
``EpsilonPlus()``; lrp_epsilon_gamma_box: ``EpsilonGammaBox(low, high, gamma=0.5)`` with
``low``/``high`` the first conv's input for a black and a white image (cnn: (0 - 0.1307) /
0.3081 and (1 - 0.1307) / 0.3081, after the twin's standardisation; refnet: LO, HI);
lrp_epsilon_plus_flat: ``EpsilonPlusFlat()``.

Captum 0.9 (captum/attr/_core/lrp.py, attr/_utils/lrp_rules.py): ``LRP`` with
``EpsilonRule(0.25)`` on the convs and dense layers and ``EpsilonRule(1e-6)`` on the pools and
BatchNorms, on the cnn twin with its BatchNorms merged the same way (Captum has no
canonizer: it would otherwise apply the epsilon rule to each BatchNorm as a layer of its
own). Captum starts from the one-hot like zennit but multiplies the input relevance by the
target's logit at the end (lrp.py:222-225: its maps sum to about the logit, zennit's to about
1); divided by that logit it equals zennit's (printed). Stored as returned,
"cnn/captum_lrp_epsilon".

zennit's merge leaves each BatchNorm computing x / sqrt(1 + eps) instead of the identity
(``exact_identity_batchnorm``); the maps stored are zennit's with that corrected, and the
script prints how far the maps as shipped are from them.

Keys: "<net>/<method>" (DIGITS, 28, 28) for the methods of ``METHODS``, "cnn/captum_lrp_epsilon",
"digits" (DIGITS,), "versions".
"""
from __future__ import annotations

import copy
import importlib.metadata
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import bench_xai  # noqa: E402
import numpy as np  # noqa: E402

from make_reference_maps import OUT as MAPS, round_maps, torch_refnet  # noqa: E402
from reference_models import HI, LO, MNIST_MEAN, MNIST_STD, unflatten  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "reference_lrp.npz"
DIGITS = 16
#: method -> its options here and in the tests (tests/test_lrp.py reads them from this file's fixture)
METHODS = {
    "lrp_epsilon": {"epsilon": 0.25},
    "lrp_gamma": {"gamma": 0.25},
    "lrp_alpha_beta": {"alpha": 2.0, "beta": 1.0},
    "lrp_epsilon_plus": {},
    "lrp_epsilon_gamma_box": {"gamma": 0.5},
    "lrp_epsilon_plus_flat": {},
}


class exact_identity_batchnorm:
    """zennit's MergeBatchNorm.merge_batch_norm with the merged BatchNorm an exact identity.

    zennit (canonizers.py:127-150) leaves the BatchNorm with mean 0, var 1, weight 1, bias 0,
    which computes x / sqrt(1 + eps), not x: every merged layer's output is scaled by
    1 - 5e-6 in the forward pass while relevance passes it unchanged (Pass), which moves the
    maps by up to 1.2e-4 of their max here (printed). Corrected by ``running_var = 1 - eps``."""

    def __enter__(self):
        from zennit.canonizers import MergeBatchNorm
        self.cls, self.original = MergeBatchNorm, MergeBatchNorm.__dict__["merge_batch_norm"]
        original = self.original.__func__

        def merge_batch_norm(modules, batch_norm):
            original(modules, batch_norm)
            batch_norm.running_var.data = batch_norm.running_var.data - batch_norm.eps

        MergeBatchNorm.merge_batch_norm = staticmethod(merge_batch_norm)

    def __exit__(self, *exc):
        self.cls.merge_batch_norm = self.original


def gap_refnet(params, batch_stats):
    """``torch_refnet`` with its mean over (H, W) as an nn.AdaptiveAvgPool2d module."""
    from torch import nn

    net = torch_refnet(params, batch_stats)

    class GapRefNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.block1, self.pool1, self.block2, self.pool2 = net.block1, net.pool1, net.block2, net.pool2
            self.block3, self.gap, self.classifier = net.block3, nn.AdaptiveAvgPool2d(1), net.classifier

        def forward(self, x):
            x = self.block3(self.pool2(self.block2(self.pool1(self.block1(x)))))
            return self.classifier(self.gap(x).flatten(1))

    return GapRefNet().eval()


def composite(method, low, high):
    import torch
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.types import Linear

    opts = METHODS[method]
    canon = [SequentialMergeBatchNorm()]
    single = {"lrp_epsilon": lambda: zr.Epsilon(opts.get("epsilon", 1e-6)),
              "lrp_gamma": lambda: zr.Gamma(opts.get("gamma", 0.25)),
              "lrp_alpha_beta": lambda: zr.AlphaBeta(opts.get("alpha", 2.0), opts.get("beta", 1.0))}
    if method in single:
        return zc.LayerMapComposite(zc.layer_map_base() + [(Linear, single[method]())], canonizers=canon)
    if method == "lrp_epsilon_plus":
        return zc.EpsilonPlus(canonizers=canon)
    if method == "lrp_epsilon_plus_flat":
        return zc.EpsilonPlusFlat(canonizers=canon)
    return zc.EpsilonGammaBox(low=torch.tensor(low), high=torch.tensor(high), gamma=opts["gamma"], canonizers=canon)


def zennit_map(net, method, x, targets, low, high):
    import torch
    from zennit.attribution import Gradient
    from zennit.canonizers import MergeBatchNorm

    comp = composite(method, low, high)
    onehot = torch.eye(10)[targets]
    with Gradient(model=net, composite=comp) as attributor:
        merged = sum(isinstance(h, MergeBatchNorm) for h in comp.handles)
        _, relevance = attributor(x, onehot)
    assert merged == sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()), "not every BatchNorm merged"
    return relevance.detach().numpy().sum(1)


def captum_epsilon(net, x, targets, epsilon):
    """Captum's LRP, EpsilonRule(epsilon) on convs and dense layers, 1e-6 elsewhere, on a copy
    of ``net`` with its BatchNorms merged by zennit's canonizer."""
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
    return LRP(merged).attribute(x, target=targets).detach().numpy().sum(1)


def main():
    import torch

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    with np.load(MAPS) as d:
        ref = {k: d[k] for k in d.files}
    t = torch.as_tensor(ref["targets"][:DIGITS], dtype=torch.long)
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 3, 1, 2)))  # noqa: E731
    cnn = bench_xai.build_torch_model(unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats"),
                                      tie_splitting_pool=False)
    rnet = gap_refnet(unflatten(ref, "refnet/params"), unflatten(ref, "refnet/batch_stats"))
    box = {"cnn": ((0.0 - MNIST_MEAN) / MNIST_STD, (1.0 - MNIST_MEAN) / MNIST_STD), "refnet": (float(LO), float(HI))}
    out = {"digits": np.arange(DIGITS)}
    for name, net, images in (("cnn", cnn, ref["images"]), ("refnet", rnet, ref["refnet/images"])):
        x = nchw(images[:DIGITS])
        with torch.no_grad():
            gap = float(np.abs(net(x).numpy() - ref[f"{name}/torch_logits"][:DIGITS]).max())
        assert gap < 1e-4, f"{name}: the torch port's logits moved ({gap:.2e})"
        for method in METHODS:
            shipped = zennit_map(net, method, x, t, *box[name])
            with exact_identity_batchnorm():
                m = zennit_map(net, method, x, t, *box[name])
            assert np.isfinite(m).all(), f"{name}/{method}: not finite"
            out[f"{name}/{method}"] = round_maps(m)
            peak = np.abs(m).reshape(DIGITS, -1).max(1)
            print(f"{name}/{method}: zennit as shipped vs its identity BatchNorm exact: worst per-digit gap / peak "
                  f"{(np.abs(shipped - m).reshape(DIGITS, -1).max(1) / peak).max():.2e}")
        with torch.no_grad():
            assert float(np.abs(net(x).numpy() - ref[f"{name}/torch_logits"][:DIGITS]).max()) < 1e-4, \
                f"{name}: zennit's canonizer was not undone"
    with exact_identity_batchnorm():
        cap = captum_epsilon(cnn, nchw(ref["images"][:DIGITS]), t, METHODS["lrp_epsilon"]["epsilon"])
    assert np.isfinite(cap).all(), "Captum's LRP: not finite"
    logit = ref["cnn/torch_logits"][np.arange(DIGITS), ref["targets"][:DIGITS]][:, None, None]
    zen = out["cnn/lrp_epsilon"].astype(np.float64)
    peak = np.abs(zen).reshape(DIGITS, -1).max(1)
    for what, m in (("as returned", cap), ("divided by the target logit", cap / logit)):
        print(f"cnn: Captum LRP-epsilon {what} vs zennit's: worst per-digit gap / peak "
              f"{(np.abs(m - zen).reshape(DIGITS, -1).max(1) / peak).max():.3e}")
    out["cnn/captum_lrp_epsilon"] = round_maps(cap)
    out["versions"] = np.array([f"{p} {importlib.metadata.version(p)}" for p in ("torch", "zennit", "captum", "numpy")])
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(out)} arrays)")


if __name__ == "__main__":
    main()

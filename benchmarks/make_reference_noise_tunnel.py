"""Regenerate tests/fixtures/reference_noise_tunnel.npz: Captum's NoiseTunnel maps (SmoothGrad²,
VarGrad, and NoiseTunnel around Input×Gradient) on the weights of tests/fixtures/reference_maps.npz.

    /tmp/refvenv/bin/python benchmarks/make_reference_noise_tunnel.py   # the reference venv (requirements-reference.txt)

Same 32 digits, targets, weights and noise as reference_maps.npz (its "noise_z": the 25
standard-normal images our NoiseTunnel draws with its default key), read from that fixture,
so this one stores maps only. Captum's noise is replaced by ours with
make_reference_maps.our_noise (row i*k + j of the noisy batch gets z_j).

Captum 0.9.0, captum/attr/_core/noise_tunnel.py: ``_compute_smoothing`` (:216-230) combines the
per-sample attributions of each input element: "smoothgrad" their mean, "smoothgrad_sq" the
mean of their squares, "vargrad" mean of squares minus the square of the mean (the population
variance). Saliency(abs=True) attributes |gradient| per element, InputXGradient x * gradient;
our maps are the same elementwise combination followed by the method's channel reduction
(grayscale here: the one channel).

Keys: "<net>/smoothgrad_sq", "<net>/vargrad" (NoiseTunnel(Saliency), abs=True),
"<net>/nt_gradient_x_input" (NoiseTunnel(InputXGradient), nt_type="smoothgrad"), (32, 28, 28);
nets "cnn" (sigma 0.15) and "refnet" (sigma 0.15 * (HI - LO)).
"""
from __future__ import annotations

import importlib.metadata
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import bench_xai  # noqa: E402
import numpy as np  # noqa: E402

from make_reference_maps import NOISE_LEVEL, OUT as MAPS, round_maps, torch_refnet, our_noise  # noqa: E402
from reference_models import HI, LO, unflatten  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "reference_noise_tunnel.npz"


def main():
    import torch
    from captum import attr as ca

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    with np.load(MAPS) as d:
        ref = {k: d[k] for k in d.files}
    z = ref["noise_z"]
    z_nchw = torch.from_numpy(np.array(z[:, 0].transpose(0, 3, 1, 2)))
    t = torch.as_tensor(ref["targets"], dtype=torch.long)
    nets = {
        "cnn": (bench_xai.build_torch_model(unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats"),
                                            tie_splitting_pool=False), ref["images"], NOISE_LEVEL),
        "refnet": (torch_refnet(unflatten(ref, "refnet/params"), unflatten(ref, "refnet/batch_stats")),
                   ref["refnet/images"], NOISE_LEVEL * (HI - LO)),
    }
    out = {}
    for name, (net, images, sigma) in nets.items():
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        with torch.no_grad():
            gap = float(np.abs(net(x).numpy() - ref[f"{name}/torch_logits"]).max())
        assert gap < 1e-4, f"{name}: the torch port's logits moved ({gap:.2e})"  # float rounding only
        np32 = lambda a: np.asarray(a.detach().numpy(), np.float32).reshape(len(x), 28, 28)  # noqa: E731
        with our_noise(z_nchw):
            for kind in ("smoothgrad_sq", "vargrad"):
                out[f"{name}/{kind}"] = round_maps(np32(ca.NoiseTunnel(ca.Saliency(net)).attribute(
                    x, nt_type=kind, nt_samples=len(z), stdevs=float(sigma), target=t, abs=True)))
            out[f"{name}/nt_gradient_x_input"] = round_maps(np32(ca.NoiseTunnel(ca.InputXGradient(net)).attribute(
                x, nt_type="smoothgrad", nt_samples=len(z), stdevs=float(sigma), target=t)))
    out["versions"] = np.array([f"{p} {importlib.metadata.version(p)}" for p in ("torch", "captum", "numpy")])
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(out)} arrays)")


if __name__ == "__main__":
    main()

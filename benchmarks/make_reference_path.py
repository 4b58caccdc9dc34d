"""Regenerate tests/fixtures/reference_path.npz: GradientSHAP / Expected Gradients (Captum 0.9.0)
and Guided IG / Blur IG / XRAI (PAIR saliency 0.2.1) on the weights of tests/fixtures/reference_maps.npz.

    /tmp/refvenv/bin/python benchmarks/make_reference_path.py   # the reference venv (requirements-reference.txt), ~1 min

Weights, digits, targets: read from reference_maps.npz (both nets: ``cnn`` = MNISTCNN in [0, 1],
``refnet`` = tests/reference_models.RefNet on standardised input in [LO, HI]), so this file
stores maps and the random draws only.

Captum (torch twins of both nets, as make_reference_noise_tunnel.py): digits ``SHAP_DIGITS``.
* "<net>/gradient_shap": GradientShap(net).attribute(x, baselines=B, n_samples=10,
  stdevs=SIGMA[net], target=t), B = the fixture's digits 24-31 ("<net>/shap_baselines").
* "<net>/expected_gradients": the same with stdevs=0.0 (Expected Gradients).
  Captum's three random draws are replaced by ours (our GradientSHAP.draws(PRNGKey(0)),
  stored as "shap_index" (10,), "shap_alpha" (10,), "shap_z" (10, 28, 28, 1); the same for
  every digit, row i*k + j of Captum's expanded batch gets draw j):
    noise      NoiseTunnel._add_noise_to_input (noise_tunnel.py:335-354) -> stdev * z_j
               (make_reference_maps.our_noise)
    baselines  np.random.choice in get_random_baseline_indices (captum/_utils/common.py:410-412)
               -> index_j
    alphas     np.random.uniform in InputBaselineXGradient.attribute (gradient_shap.py:370-374)
               -> alpha_j
  Each replacement asserts the call it replaces asks for the expected size.

PAIR saliency (framework-agnostic: its ``call_model_function`` returns the gradient of the
target logit, computed here with jax.grad of the same Flax net; no torch): digits ``PAIR_DIGITS``.
* "<net>/guided_ig": GuidedIG().GetMask(x, f, x_baseline=b, x_steps=30, fraction=0.25,
  max_dist=0.02); b = 0 (cnn) / LO (refnet). PAIR works in float64; the net sees float32.
  (Its ``np.quantile(.., interpolation='lower')`` is passed on as ``method='lower'``: numpy 2.4
  dropped the old keyword; ``quantile_interpolation_kwarg``.)
* "<net>/blur_ig": BlurIG().GetMask(x, f, max_sigma=10, steps=20, grad_step=0.01,
  batch_size=1) (scipy's gaussian_filter, mode="constant"), fed the image as float64 (the same
  values): on a float32 image scipy rounds each blur pass to float32 and the finite difference
  over grad_step = 0.01 magnifies that rounding (PAIR's own float32 maps are 1e-4 to 9e-4 of
  their max from its float64 ones).
* "<net>/xrai", "<net>/xrai_ranks": XRAI().GetMaskWithDetails(x, f, batch_size=20,
  extra_parameters=XRAIParameters(steps=20, return_xrai_segments=True)): the map and the
  integer ranks (its default baselines: the image's min and max; Felzenszwalb segments).
Maps are rounded by make_reference_maps.round_maps (7.6e-6 of each map's max); ranks exact.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import bench_xai  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mnist_xai_visualizations as X  # noqa: E402
from make_reference_maps import OUT as MAPS, our_noise, round_maps, torch_refnet  # noqa: E402
from mnist_cnn_model import MNISTCNN  # noqa: E402
from reference_models import HI, LO, RefNet, unflatten  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "reference_path.npz"
SHAP_DIGITS = np.r_[0:8, 16:24]      # 16 digits: 8 explained as labelled, 8 as (label + 3) % 10
PAIR_DIGITS = np.r_[0:4, 16:20]      # 8 digits for the sequential PAIR methods
BASELINE_DIGITS = np.r_[24:32]       # GradientSHAP's baseline distribution
SHAP_SAMPLES = 10
NOISE = 0.1                          # of the input range
GUIDED = dict(x_steps=30, fraction=0.25, max_dist=0.02)
BLUR = dict(max_sigma=10.0, steps=20, grad_step=0.01)
XRAI_STEPS = 20


@contextlib.contextmanager
def our_draws(index, alpha):
    """Captum's np.random.choice (baseline indices) and np.random.uniform (alphas) -> ours, tiled per image."""
    choice, uniform = np.random.choice, np.random.uniform
    k = len(index)

    def fake_choice(m, size):
        assert size % k == 0 and m == BASELINE_DIGITS.size, (m, size)
        return np.tile(index, size // k)

    def fake_uniform(lo, hi, size):
        assert (lo, hi) == (0.0, 1.0) and size % k == 0, (lo, hi, size)
        return np.tile(np.asarray(alpha, np.float64), size // k)

    np.random.choice, np.random.uniform = fake_choice, fake_uniform
    try:
        yield
    finally:
        np.random.choice, np.random.uniform = choice, uniform


@contextlib.contextmanager
def quantile_interpolation_kwarg():
    """PAIR 0.2.1's guided_ig.py:131 calls ``np.quantile(..., interpolation='lower')``, a keyword
    numpy 2.4 no longer takes (renamed ``method`` in numpy 1.22); pass it on as ``method``."""
    quantile = np.quantile

    def shim(a, q, *args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return quantile(a, q, *args, **kwargs)

    np.quantile = shim
    try:
        yield
    finally:
        np.quantile = quantile


def pair_model_function(model, variables, target):
    """PAIR's call_model_function for one digit: d logit[target] / d x, as numpy (batch, H, W, C)."""
    from saliency.core.base import INPUT_OUTPUT_GRADIENTS

    grad = jax.jit(jax.grad(lambda x: model.apply(variables, x)[:, target].sum()))

    def call(x_batch, call_model_args=None, expected_keys=None):
        return {INPUT_OUTPUT_GRADIENTS: np.asarray(grad(jnp.asarray(x_batch, jnp.float32)))}

    return call


def pair_maps(model, variables, images, targets, baseline):
    from saliency import core as sc

    out = {k: [] for k in ("guided_ig", "blur_ig", "xrai", "xrai_ranks")}
    for img, t in zip(images, targets):
        f = pair_model_function(model, variables, int(t))
        with quantile_interpolation_kwarg():
            out["guided_ig"].append(sc.GuidedIG().GetMask(img, f, x_baseline=np.full_like(img, baseline), **GUIDED))
        out["blur_ig"].append(sc.BlurIG().GetMask(img.astype(np.float64), f, batch_size=1, **BLUR))
        r = sc.XRAI().GetMaskWithDetails(img, f, batch_size=XRAI_STEPS, extra_parameters=sc.XRAIParameters(
            steps=XRAI_STEPS, return_xrai_segments=True))
        out["xrai"].append(r.attribution_mask)
        out["xrai_ranks"].append(r.segments)
    maps = {k: round_maps(np.asarray(v, np.float64).sum(-1) if np.ndim(v) == 4 else np.asarray(v, np.float64))
            for k, v in out.items() if k != "xrai_ranks"}
    maps["xrai_ranks"] = np.asarray(out["xrai_ranks"], np.int32)
    return maps


def main():
    import torch
    from captum import attr as ca

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    with np.load(MAPS) as d:
        ref = {k: d[k] for k in d.files}
    targets = ref["targets"]
    index, alpha, z = (np.asarray(a) for a in X.GradientSHAP(  # the draws depend on the baselines' count only
        MNISTCNN(), samples=SHAP_SAMPLES, baselines=ref["images"][BASELINE_DIGITS]).draws(jax.random.PRNGKey(0), (28, 28, 1)))
    assert len(set(index.tolist())) > 1, index
    out = {"shap_index": index.astype(np.int32), "shap_alpha": alpha, "shap_z": z,
           "shap_digits": SHAP_DIGITS, "pair_digits": PAIR_DIGITS, "baseline_digits": BASELINE_DIGITS}
    z_nchw = torch.from_numpy(np.array(z.transpose(0, 3, 1, 2)))
    nets = {
        "cnn": (MNISTCNN(), bench_xai.build_torch_model(unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats"),
                                                        tie_splitting_pool=False), ref["images"], 0.0, 1.0),
        "refnet": (RefNet(), torch_refnet(unflatten(ref, "refnet/params"), unflatten(ref, "refnet/batch_stats")),
                   ref["refnet/images"], float(LO), HI - LO),
    }
    for name, (model, net, images, baseline, span) in nets.items():
        x = torch.from_numpy(np.ascontiguousarray(images[SHAP_DIGITS].transpose(0, 3, 1, 2)))
        b = torch.from_numpy(np.ascontiguousarray(images[BASELINE_DIGITS].transpose(0, 3, 1, 2)))
        t = torch.as_tensor(targets[SHAP_DIGITS], dtype=torch.long)
        with torch.no_grad():
            gap = float(np.abs(net(x).numpy() - ref[f"{name}/torch_logits"][SHAP_DIGITS]).max())
        assert gap < 1e-4, f"{name}: the torch port's logits moved ({gap:.2e})"
        np32 = lambda a: np.asarray(a.detach().numpy(), np.float64).reshape(len(x), 28, 28)  # noqa: E731
        for key, sigma in (("gradient_shap", NOISE * span), ("expected_gradients", 0.0)):
            with our_noise(z_nchw), our_draws(index, alpha):
                out[f"{name}/{key}"] = round_maps(np32(ca.GradientShap(net).attribute(
                    x, baselines=b, n_samples=SHAP_SAMPLES, stdevs=float(sigma), target=t)))
        out[f"{name}/shap_sigma"] = np.float32(NOISE * span)
        variables = {"params": unflatten(ref, f"{name}/params"), "batch_stats": unflatten(ref, f"{name}/batch_stats")}
        for k, v in pair_maps(model, variables, images[PAIR_DIGITS], targets[PAIR_DIGITS], baseline).items():
            out[f"{name}/{k}"] = v
        print(f"{name}: done")
    out["versions"] = np.array([f"{p} {importlib.metadata.version(p)}" for p in
                                ("torch", "captum", "saliency", "scikit-image", "scipy", "jax", "numpy")])
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(out)} arrays)")


if __name__ == "__main__":
    main()

"""The reference side of ``bench_xai.py`` for the methods added after the first eight: each
registered method (LRP aside, which ``bench_lrp.py`` times) with the library call it is checked
against, the options both sides run with, and the random draws both sides share.

Needs torch, captum, grad-cam and saliency (the reference venv, requirements-reference.txt);
nothing here imports them at module level, so ``bench_xai.py --skip-captum`` runs without them.

One entry a method (``NEW``): our constructor's keyword arguments and a builder of the
reference's ``run(x (B, 1, 28, 28) tensor, targets (B,) tensor) -> maps (B, 28, 28)``, the
same function ``bench_xai.run_torch_method`` already drives for the first eight. Options are
the same on both sides (samples, steps, noise, patch masks, baselines); the reference's own
batching knobs (Captum's ``perturbations_per_eval``, ``nt_samples_batch_size``, PAIR's
``batch_size``, pytorch-grad-cam's ``batch_size``) are set to put ~``--captum-internal-batch``
images through a forward pass where the library allows it, as for the first eight.

Same samples on both sides, so the agreement columns compare like with like (as the parity
fixtures do, benchmarks/make_reference_*.py). Our methods draw from ``PRNGKey(0)`` (their
default key) the same draws for every image; the reference is fed those draws:

    smoothgrad_sq, vargrad  NoiseTunnel._add_noise_to_input (captum/attr/_core/noise_tunnel.py:
                            335-354) -> sigma * z_j for sample j (``InjectedNoise``; it follows
                            the nt_samples_batch_size partitions)
    gradient_shap,          Captum's baseline indices (np.random.choice, captum/_utils/common.py:
    expected_gradients      410-412) and alphas (np.random.uniform, gradient_shap.py:370-374) ->
                            ours (``our_draws``); stdevs 0 on both sides, so no noise
    shapley_sampling        ShapleyValueSampling.permutation_generator -> our 25 orders
    kernel_shap, lime       perturb_func -> our 200 coalitions (all on / all off first for KernelSHAP)
    deeplift_shap           the same 8 baseline images, uniform in [0, 1] (numpy default_rng(0))

Captum variants chosen (each also used by the parity fixtures, see the make_reference_* file):

* KernelShap: Captum's default ``SkLearnLinearRegression`` (float32 least squares, what a
  Captum user runs); the parity fixture fits in float64, so here the max-diff column shows
  float32 lstsq's 1e-4..1e-3 of the map's max (make_reference_perturbation.py's docstring).
* Lime: ``interpretable_model=SkLearnRidge(alpha=1.0)``, the kernel Captum's default
  (exponential cosine, width 1.0), as our LIME (not Captum's default Lasso).
* DeepLift, DeepLiftShap: Captum with its two hook slips corrected
  (make_reference_propagation.corrected_maxpool and with_copies_before_pools), the maps our
  parity tests hold ours to; the copy before each max-pool is a clone, timed with the rest.
* PAIR's GuidedIG / BlurIG / XRAI: ``call_model_function`` returns the torch twin's gradient
  of the target logit (framework-agnostic PAIR as a torch user runs it), one image at a time
  (PAIR's API), BlurIG and XRAI with ``batch_size`` = all their path points in one gradient call.
  BlurIG is fed the image as float64 (make_reference_path.py: scipy's float32 blur rounding
  is magnified by the finite difference); GuidedIG gets PAIR's np.quantile keyword shim.
"""
from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

#: the 4x4 patches of the perturbation methods (49 features on 28x28)
PATCH = 4
SHAP_BASELINES = 8  # image baselines of GradientSHAP / Expected Gradients / DeepLiftShap
PGC_CAMS = {"hirescam": "HiResCAM", "xgradcam": "XGradCAM", "layercam": "LayerCAM", "eigencam": "EigenCAM",
            "eigengradcam": "EigenGradCAM", "ablationcam": "AblationCAM"}


@dataclass
class Context:
    """What both sides share: the baseline images, the batch knobs, the draws of PRNGKey(0)."""

    baseline_images: np.ndarray            # (B, 28, 28, 1) digits in [0, 1] (GradientSHAP / EG)
    uniform_baselines: np.ndarray          # (B, 28, 28, 1) uniform in [0, 1] (DeepLiftShap)
    batch_size: int                        # reference images a call of run()
    internal_batch: int                    # images a forward pass inside the reference, where settable
    cache: dict = field(default_factory=dict)

    def per_pass(self, copies_per_image: int) -> int:
        """Perturbations per forward pass for ~internal_batch rows at batch_size images."""
        return max(1, min(copies_per_image, self.internal_batch // self.batch_size))


def make_context(baseline_images, batch_size, internal_batch):
    uniform = np.random.default_rng(0).uniform(size=(SHAP_BASELINES, 28, 28, 1)).astype(np.float32)
    return Context(np.asarray(baseline_images[:SHAP_BASELINES], np.float32), uniform, batch_size, internal_batch)


# ----------------------------------------------------------------------------- our side


def our_kwargs(name: str, ctx: Context) -> dict:
    """Our constructor's options for ``name``: the defaults, except where the reference needs the
    same explicit value (baselines)."""
    if name == "gradient_shap":
        return {"samples": 25, "stdevs": 0.0, "baselines": ctx.baseline_images}
    if name == "expected_gradients":
        return {"samples": 25, "references": ctx.baseline_images}
    if name == "deeplift_shap":
        return {"baselines": ctx.uniform_baselines}
    return {}


def describe_ours(name: str, explainer) -> str:
    """The options our side ran with, in a table cell."""
    s = getattr(type(explainer), "spec", None)
    if s is None:
        return "defaults"
    parts = []
    for o in s.options:
        v = getattr(explainer, o.name, None)
        if v is None or o.kind is None and not np.isscalar(v):
            if o.name in ("baselines", "references") and v is not None:
                parts.append(f"{o.name}: {len(np.asarray(v))} images")
            continue
        parts.append(f"{o.name}={v:g}" if isinstance(v, float) else f"{o.name}={v}")
    return ", ".join(parts) or "defaults"


# ----------------------------------------------------------------------------- shared draws


def our_draws_for(name: str, ctx: Context):
    """Our methods' draws with PRNGKey(0) (numpy), cached."""
    if name in ctx.cache:
        return ctx.cache[name]
    import jax

    from mnist_xai.methods import path as P
    from mnist_xai.methods import perturbation as Q
    from mnist_cnn_model import MNISTCNN

    key = jax.random.PRNGKey(0)
    m = int(Q.patch_features((28, 28), PATCH).max()) + 1
    if name in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        out = np.asarray(jax.random.normal(key, (25, 1, 28, 28, 1), np.float32))[:, 0]  # NoiseTunnel's z
    elif name in ("gradient_shap", "expected_gradients"):
        out = tuple(np.asarray(a) for a in P.GradientSHAP(MNISTCNN(), samples=25, baselines=ctx.baseline_images)
                    .draws(key, (28, 28, 1)))
    elif name == "shapley_sampling":
        out = np.asarray(Q.shapley_permutations(key, 25, m))
    elif name == "kernel_shap":
        out = np.asarray(Q.kernel_shap_coalitions(key, 200, m))
    elif name == "lime":
        out = np.asarray(Q.lime_coalitions(key, 200, m))
    else:
        raise KeyError(name)
    ctx.cache[name] = out
    return out


class InjectedNoise:
    """Captum's NoiseTunnel adds ``stdev * z_j`` to sample j (our z), partition by partition.

    Captum draws the noise of each ``nt_samples_batch_size`` partition afresh
    (noise_tunnel.py:209-246); here partition p of an ``attribute`` call gets our z_j for the
    samples j it covers, so the whole call sees z_0..z_{S-1}, as ours does. ``reset()`` before
    each call."""

    def __init__(self, z_nhwc):
        import torch

        self.z = torch.from_numpy(np.array(np.asarray(z_nhwc, np.float32).transpose(0, 3, 1, 2)))  # a writable copy
        self.offset = 0

    def reset(self):
        self.offset = 0

    @contextlib.contextmanager
    def active(self):
        from captum.attr._core.noise_tunnel import NoiseTunnel

        original = NoiseTunnel.__dict__["_add_noise_to_input"]

        def add_our_noise(input, stdev, nt_samples_partition):
            k = nt_samples_partition
            z = self.z[self.offset:self.offset + k]
            assert len(z) == k, (self.offset, k, len(self.z))
            self.offset = (self.offset + k) % len(self.z)
            return input.repeat_interleave(k, dim=0) + stdev * z.to(input.device).repeat(input.shape[0], 1, 1, 1)

        NoiseTunnel._add_noise_to_input = staticmethod(add_our_noise)
        try:
            yield
        finally:
            NoiseTunnel._add_noise_to_input = original


@contextlib.contextmanager
def our_draws(index, alpha):
    """GradientShap's np.random.choice (baseline indices) and np.random.uniform (alphas) -> ours,
    tiled per image (row i*S + j of the expanded batch gets draw j), as make_reference_path.our_draws."""
    choice, uniform = np.random.choice, np.random.uniform
    k = len(index)

    def fake_choice(m, size):
        assert size % k == 0, (m, size)
        return np.tile(index, size // k)

    def fake_uniform(lo, hi, size):
        assert (lo, hi) == (0.0, 1.0) and size % k == 0, (lo, hi, size)
        return np.tile(np.asarray(alpha, np.float64), size // k)

    np.random.choice, np.random.uniform = fake_choice, fake_uniform
    try:
        yield
    finally:
        np.random.choice, np.random.uniform = choice, uniform


def _within(run, *managers):
    """``run`` with every context manager entered around each call."""
    def wrapped(x, t):
        with contextlib.ExitStack() as stack:
            for m in managers:
                stack.enter_context(m())
            return run(x, t)
    return wrapped


# ----------------------------------------------------------------------------- the references


def _nchw(a, device):
    import torch
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 3, 1, 2))).to(device)


def pgc_runner(name, net, ctx):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pgc, PGC_CAMS[name])
    cam = cls(model=net, target_layers=[net.features[-1]])
    note = ""
    if name == "ablationcam":
        cam.batch_size = 128  # all 128 channels' ablated copies of an image in one forward pass
        note = ", batch_size=128"

    def run(x, t):
        with contextlib.redirect_stderr(io.StringIO()):  # AblationCAM's tqdm bar per image
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])
    return run, f"pytorch-grad-cam {cls.__name__}(features[-1]){note}"


def noise_tunnel_runner(name, net, ctx):
    from captum import attr as ca

    noise = InjectedNoise(our_draws_for(name, ctx))
    m = ca.NoiseTunnel(ca.Saliency(net))
    per_pass = ctx.per_pass(25)

    def run(x, t):
        noise.reset()
        with noise.active():
            return m.attribute(x, nt_type=name, nt_samples=25, nt_samples_batch_size=per_pass, stdevs=0.15,
                               target=t, abs=True)
    return run, f"NoiseTunnel(Saliency), {name}, nt_samples=25, stdevs=0.15, nt_samples_batch_size={per_pass}"


def gradient_shap_runner(name, net, ctx):
    from captum import attr as ca

    index, alpha, _ = our_draws_for(name, ctx)
    device = next(net.parameters()).device
    b = _nchw(ctx.baseline_images, device)
    m = ca.GradientShap(net)

    def run(x, t):
        with our_draws(index, alpha):
            return m.attribute(x, baselines=b, n_samples=25, stdevs=0.0, target=t)
    return run, f"GradientShap, n_samples=25, stdevs=0, {len(b)} digit baselines"


def perturbation_runner(name, net, ctx):
    import torch
    from captum import attr as ca
    from captum._utils.models.linear_model import SkLearnRidge

    from mnist_xai.methods.perturbation import patch_features

    fm = patch_features((28, 28), PATCH)
    m = int(fm.max()) + 1
    device = next(net.parameters()).device
    fm_t = torch.from_numpy(fm.astype(np.int64))[None, None].to(device)
    common = dict(baselines=0.0, feature_mask=fm_t)

    def rows_of(z):
        def perturb(original_inp, **kwargs):  # a generator function, as Lime wants it
            for row in z:
                yield torch.from_numpy(row[None].astype(np.int64)).to(device)
        return perturb

    if name == "feature_ablation":
        per = ctx.per_pass(m)
        fa = ca.FeatureAblation(net)
        return ((lambda x, t: fa.attribute(x, target=t, perturbations_per_eval=per, **common)),
                f"FeatureAblation, 4x4 patches ({m}), baseline 0, perturbations_per_eval={per}")
    if name == "shapley_sampling":
        perms = our_draws_for(name, ctx).tolist()
        per = ctx.per_pass(m)
        svs = ca.ShapleyValueSampling(net)
        svs.permutation_generator = lambda num_features, n_samples: iter(perms)
        return ((lambda x, t: svs.attribute(x, target=t, n_samples=25, perturbations_per_eval=per, **common)),
                f"ShapleyValueSampling, n_samples=25, 4x4 patches, perturbations_per_eval={per}")
    # Lime / KernelShap fit one surrogate an image (lime.py:1150-1205): all 200 samples a forward pass
    if name == "kernel_shap":
        ks = ca.KernelShap(net)
        ks.perturb_func = rows_of(our_draws_for(name, ctx))
        return ((lambda x, t: ks.attribute(x, target=t, n_samples=200, perturbations_per_eval=200, **common)),
                "KernelShap, n_samples=200, 4x4 patches, SkLearnLinearRegression, perturbations_per_eval=200")
    if name == "lime":
        lime = ca.Lime(net, interpretable_model=SkLearnRidge(alpha=1.0), perturb_func=rows_of(our_draws_for(name, ctx)))
        return ((lambda x, t: lime.attribute(x, target=t, n_samples=200, perturbations_per_eval=200, **common)),
                "Lime, n_samples=200, SkLearnRidge(alpha=1), cosine kernel width 1, 4x4 patches, "
                "perturbations_per_eval=200")
    raise KeyError(name)


def propagation_runner(name, net, ctx, twin_factory):
    from captum import attr as ca

    if name == "guided_backprop":
        m = ca.GuidedBackprop(net)
        return (lambda x, t: m.attribute(x, target=t)), "GuidedBackprop"
    if name == "deconvolution":
        m = ca.Deconvolution(net)
        return (lambda x, t: m.attribute(x, target=t)), "Deconvolution"
    if name == "guided_gradcam":
        m = ca.GuidedGradCam(net, net.features[-1])
        return (lambda x, t: m.attribute(x, target=t)), "GuidedGradCam(features[-1])"
    from make_reference_propagation import corrected_maxpool, with_copies_before_pools

    fixed = with_copies_before_pools(twin_factory()).to(next(net.parameters()).device)
    if name == "deeplift":
        m = ca.DeepLift(fixed)
        return (_within(lambda x, t: m.attribute(x, baselines=0.0, target=t), corrected_maxpool),
                "DeepLift (Rescale), baseline 0, Captum's two hook slips corrected")
    if name == "deeplift_shap":
        m = ca.DeepLiftShap(fixed)
        b = _nchw(ctx.uniform_baselines, next(net.parameters()).device)
        return (_within(lambda x, t: m.attribute(x, baselines=b, target=t), corrected_maxpool),
                f"DeepLiftShap, {len(b)} uniform baselines, slips corrected")
    raise KeyError(name)


def torch_call_model_function(net, target: int):
    """PAIR's call_model_function: d logit[target] / d x of the torch twin, (B, 28, 28, 1) numpy."""
    import torch
    from saliency.core.base import INPUT_OUTPUT_GRADIENTS

    device = next(net.parameters()).device

    def call(x_batch, call_model_args=None, expected_keys=None):
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(x_batch, np.float32).transpose(0, 3, 1, 2))).to(device)
        x.requires_grad_(True)
        net(x)[:, target].sum().backward()
        return {INPUT_OUTPUT_GRADIENTS: x.grad.detach().cpu().numpy().transpose(0, 2, 3, 1)}

    return call


def pair_runner(name, net, ctx):
    from saliency import core as sc

    from make_reference_path import quantile_interpolation_kwarg

    def per_image(explain):
        def run(x, t):
            imgs = x.detach().cpu().numpy().transpose(0, 2, 3, 1)
            return np.stack([explain(img, torch_call_model_function(net, int(c))) for img, c in zip(imgs, t)])
        return run

    if name == "guided_ig":
        g = sc.GuidedIG()

        def explain(img, f):
            with quantile_interpolation_kwarg():
                return g.GetMask(img, f, x_baseline=np.zeros_like(img), x_steps=200, fraction=0.25,
                                 max_dist=0.02).sum(-1)
        return per_image(explain), "PAIR GuidedIG, x_steps=200, fraction=0.25, max_dist=0.02, baseline 0"
    if name == "blur_ig":
        b = sc.BlurIG()
        return (per_image(lambda img, f: b.GetMask(img.astype(np.float64), f, max_sigma=50, steps=100,
                                                   grad_step=0.01, batch_size=100).sum(-1)),
                "PAIR BlurIG, max_sigma=50, steps=100, grad_step=0.01, batch_size=100")
    if name == "xrai":
        xr = sc.XRAI()
        return (per_image(lambda img, f: xr.GetMask(img, f, batch_size=100,
                                                    extra_parameters=sc.XRAIParameters(steps=100))),
                "PAIR XRAI (full), steps=100, batch_size=100, Felzenszwalb segments")
    raise KeyError(name)


@dataclass(frozen=True)
class Entry:
    library: str  # "captum", "pytorch-grad-cam", "PAIR saliency" or "" (no counterpart)
    build: Callable | None


NEW: dict[str, Entry] = {
    **{n: Entry("pytorch-grad-cam", pgc_runner) for n in PGC_CAMS},
    "smoothgrad_sq": Entry("Captum", noise_tunnel_runner),
    "vargrad": Entry("Captum", noise_tunnel_runner),
    "gradient_shap": Entry("Captum", gradient_shap_runner),
    "expected_gradients": Entry("Captum", gradient_shap_runner),
    **{n: Entry("Captum", perturbation_runner) for n in ("feature_ablation", "shapley_sampling", "kernel_shap",
                                                          "lime")},
    **{n: Entry("Captum", propagation_runner) for n in ("guided_backprop", "deconvolution", "guided_gradcam",
                                                         "deeplift", "deeplift_shap")},
    **{n: Entry("PAIR saliency", pair_runner) for n in ("guided_ig", "blur_ig", "xrai")},
    "rise": Entry("", None),  # no library class (the authors' code is a Keras notebook)
}


def reference_runner(name, net, ctx, twin_factory):
    """``(run, parameters text, library)`` for a method of ``NEW``; ``(None, None, "")`` without one."""
    e = NEW[name]
    if e.build is None:
        return None, None, ""
    if e.build is propagation_runner:
        run, text = propagation_runner(name, net, ctx, twin_factory)
    else:
        run, text = e.build(name, net, ctx)
    return run, text, e.library

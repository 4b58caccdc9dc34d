"""Regenerate tests/fixtures/reference_maps.npz: Captum's and pytorch-grad-cam's maps on our weights.

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install -r requirements-reference.txt   # torch 2.14.1 CUDA build (~5.5 GB, runs on the CPU)
    /tmp/refvenv/bin/python benchmarks/make_reference_maps.py    # ~3 min on 2 CPU cores; bit for bit the same file each run

(``--out PATH`` writes elsewhere.) tests/test_reference_maps.py compares every method of
mnist_xai_visualizations with this fixture; the tests themselves need no torch.

What it does
------------
* Images: the first 32 digits of sample_data/mnist_test_sample.npz, uint8 / 255, (32, 28, 28, 1).
  Targets (stored): the label for the first 16, (label + 3) % 10 for the last 16, so the
  explained class is not always the prediction.
* Two networks, each ported to torch.nn (eval mode) with the same weights; the script stops
  unless torch's logits equal Flax's to 1e-4:
    cnn     the shipped checkpoint's MNISTCNN (``bench_xai.build_torch_model``, nn.MaxPool2d,
            i.e. tie_splitting_pool=False), input in [0, 1] (standardised inside forward).
    refnet  tests/reference_models.RefNet with ``init_refnet(0)`` weights; its input is the
            standardised image (x - 0.1307) / 0.3081 ("refnet/images"), black = LO = -0.4242,
            white = HI = 2.8215. Conv2d(padding=1) == Flax SAME for 3x3, BatchNorm2d(eps=1e-5)
            in eval, MaxPool2d(2).
  Both nets' weights are stored ("cnn/params/conv1/kernel", "refnet/params/block1/conv1/conv/kernel",
  "…/batch_stats/…"), so the fixture does not change when pretrained/ is retrained. To keep the
  file small they are first rounded to bfloat16 precision (stored as float32); everything here,
  torch and Flax alike, is computed with those rounded weights (the checkpoint's exact float32
  weights would double the file: 1.2 MB of 2.6).
* Target layer of the CAMs: the last conv block's ReLU OUTPUT (module forward output, not its
  input): cnn ``features[-1]`` (nn.ReLU), refnet ``block3.conv2`` (ConvBNReLU), (N, C, 7, 7).
* Maps, (32, 28, 28) float32, keyed "<net>/<method>":
    gradcam               Captum LayerGradCam(relu_attributions=True) then
                          LayerAttribution.interpolate(.., (28, 28), "bilinear"); "…/gradcam_7x7" before it
    saliency              Saliency(abs=True)
    gradient_x_input      InputXGradient
    integrated_gradients  IntegratedGradients(n_steps=50, method="gausslegendre"), baselines 0.0 (cnn) / LO (refnet)
    smoothgrad            NoiseTunnel(Saliency), nt_type="smoothgrad", nt_samples=25, abs=True, fed OUR noise (below)
    occlusion             Occlusion(sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2)), baselines 0.0 / LO
    pgc_gradcam, pgc_gradcam++, pgc_scorecam
                          pytorch-grad-cam GradCAM / GradCAMPlusPlus / ScoreCAM(batch_size=64) with
                          ClassifierOutputTarget(target), maps as returned; "…_7x7": the CAM before
                          pytorch-grad-cam scales and resizes it (get_cam_image's output after its ReLU)
  plus "<net>/torch_logits" (32, 10), "targets", "labels", "images", "noise_z", "versions".
  The 28x28 maps are stored rounded to a power-of-two grid of step <= 2^-16 of each map's max
  |value| (error <= 7.6e-6 of that max, under a tenth of the tests' 1e-4; ``round_maps``);
  the 7x7 maps, logits, images, noise and weights are stored exactly.

SmoothGrad's noise: z = jax.random.normal(jax.random.PRNGKey(0), (25, 1, 28, 28, 1), float32)
("noise_z"; the same 25 standard-normal images for every digit, as our SmoothGrad draws with its
default key); noisy_k = x + sigma * z_k with sigma = 0.15 (cnn) and 0.15 * (HI - LO) = 0.15 / 0.3081
(refnet). Captum draws its noise in the staticmethod ``NoiseTunnel._add_noise_to_input(input,
stdev, nt_samples_partition)`` (captum/attr/_core/noise_tunnel.py:335-354: ``noise =
torch.normal(0, stdev_expanded)``, returned as ``input.repeat_interleave(k, dim=0) + noise``,
i.e. row i*k + j is image i, sample j). This script replaces that staticmethod for the call
by one returning ``input.repeat_interleave(k, 0) + stdev * z.repeat(bsz, 1, 1, 1)`` (row i*k + j
gets z_j), and asserts k == 25 (nt_samples_batch_size=None: one partition of all 25 samples).

Conventions read in the installed sources (captum 0.9.0, grad-cam 1.5.7)
------------------------------------------------------------------------
Captum
* LayerGradCam (attr/_core/layer/grad_cam.py:212-237): weights = torch.mean of the layer
  gradients over dims 2.. (keepdim), cam = sum over channels (dim 1) of weights * layer output,
  then F.relu when relu_attributions. Layer = the module's output (attribute_to_layer_input=False).
* LayerAttribution.interpolate (attr/_utils/attribution.py:469): F.interpolate(attr, dims,
  mode="bilinear") with align_corners left at None = False: half-pixel centres, edge clamp
  (same as jax.image.resize "bilinear" for upsampling and as cv2.resize INTER_LINEAR).
* Gauss-Legendre IG (attr/_utils/approximation_methods.py:126-140): alphas = 0.5 * (1 + nodes),
  step sizes = 0.5 * weights of np.polynomial.legendre.leggauss(n); attribution =
  (x - baseline) * sum_k step_k * grad(baseline + alpha_k (x - baseline)).
* Occlusion (attr/_core/occlusion.py:252-254, feature_ablation.py:1166): window positions per
  axis ceil((28 - 4) / 2) + 1 = 13 (0, 2, ..., 24); eval_diff = initial_eval - modified_eval
  (the target logit's DROP, positive when the patch hurts), summed over the windows covering a
  pixel and divided by their count (use_weights=True, occlusion.py:48).
* Saliency(abs=True): |d logit / d input|; NoiseTunnel "smoothgrad" (noise_tunnel.py:442-448)
  returns the plain mean over samples of the wrapped method's maps (here |grad|).
pytorch-grad-cam
* Activations/gradients (activations_and_gradients.py:21-44): a forward hook on the target
  module stores its OUTPUT and registers a tensor hook for its gradient; the score is
  ClassifierOutputTarget = the raw logit (utils/model_targets.py:6-13); loss = sum over the batch.
* GradCAM (grad_cam.py:24): weights = np.mean(grads, axis=(2, 3)).
* GradCAM++ (grad_cam_plusplus.py:13-35): aij = g^2 / (2 g^2 + sum_ab(A) * g^3 + 1e-6), eps = 1e-6
  ADDED to the denominator always; aij = np.where(grads != 0, aij, 0); weights =
  sum_ij relu(g) * aij. (With this net's global average pool g ~ 1e-3, so g^2 ~ 1e-6: the eps
  is NOT negligible.)
* ScoreCAM (score_cam.py:17-57): masks = torch.nn.UpsamplingBilinear2d(size=input HxW) (line 24), which is
  align_corners=True (torch/nn/modules/upsampling.py:298: mode="bilinear", align_corners=True;
  corner-aligned, NOT the half-pixel upsampling of the final map), each
  channel min-max scaled as (up - min) / (max - min + 1e-8) (line 37); masked input = input_tensor *
  mask, i.e. the network's own input (cnn: [0, 1] pixels; refnet: the standardised image, so a
  masked-out pixel is 0 = mean grey, not black); score = target logit (no softmax on the
  logit itself); weights = torch.nn.Softmax(dim=-1) over the CHANNELS of those logits (line 56).
* BaseCAM (base_cam.py:76-92, 148-181): cam = sum_k w_k A_k; np.maximum(cam, 0); then
  scale_cam_image(cam, (W, H)) (utils/image.py:161-176): per image img -= min; img /= (1e-7 +
  max); cv2.resize(float32, (W, H)) with cv2's default INTER_LINEAR (half-pixel centres, edge
  replicate); then aggregate_multi_layers does np.maximum(.., 0), the mean over target layers and
  scale_cam_image AGAIN (min-max with 1e-7, no resize) on the 28x28 map. Net effect: the
  returned map is the min-max scaled bilinear upsampling of relu(cam_7x7) (the first scaling is
  affine, so it cancels up to the 1e-7's), NOT the upsampling of a [0, 1] 7x7 map.

Float noise of the references themselves (torch float64 against these float32 maps, same
weights and noise): 4e-6 to 1.2e-5 of each map's max for every map except Integrated Gradients
on cnn (1.3e-3) and SmoothGrad (cnn 0.9e-3, refnet 1.2e-3), where float32 rounding flips ReLU /
max-pool decisions at near-ties on a few of the 1,600 / 800 back-propagated inputs; hence the
tests' looser bound there (tests/test_reference_maps.py).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import bench_xai  # noqa: E402  (sets one JAX CPU device per core, as the benchmark does)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mnist_checkpoint import load_checkpoint  # noqa: E402
from reference_models import HI, LO, RefNet, flatten, init_refnet, standardise  # noqa: E402

N_IMAGES = 32
SMOOTHGRAD_SAMPLES = 25
NOISE_LEVEL = 0.15
LOGIT_TOLERANCE = 1e-4
OUT = ROOT / "tests" / "fixtures" / "reference_maps.npz"


def to_bfloat16_precision(tree):
    """Every array of a nested dict rounded (to nearest even) to bfloat16 precision, kept as float32."""
    return jax.tree_util.tree_map(
        lambda a: np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)), tree)


def round_maps(maps: np.ndarray) -> np.ndarray:
    """Each (28, 28) map rounded to a power-of-two grid of step <= 2^-16 of its max |value|:
    error <= 2^-17 (7.6e-6) of that max, and the fixture compresses ~1.6x better."""
    a = np.asarray(maps, np.float64)
    peak = np.abs(a).reshape(len(a), -1).max(1)
    step = np.where(peak > 0, 2.0 ** np.floor(np.log2(np.where(peak > 0, peak, 1.0) * 2.0 ** -16)), 1.0)
    step = step.reshape(-1, *([1] * (a.ndim - 1)))
    return (np.round(a / step) * step).astype(np.float32)


def torch_refnet(params, batch_stats):
    """RefNet in torch.nn (eval), Flax weights copied in; ``net.block3.conv2`` is the CAM layer."""
    import torch
    from torch import nn

    class ConvBNReLU(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv, self.norm, self.relu = nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, eps=1e-5), nn.ReLU()

        def forward(self, x):
            return self.relu(self.norm(self.conv(x)))

    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv1, self.conv2 = ConvBNReLU(cin, cout), ConvBNReLU(cout, cout)

        def forward(self, x):
            return self.conv2(self.conv1(x))

    class TorchRefNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.block1, self.pool1 = Block(1, 8), nn.MaxPool2d(2)
            self.block2, self.pool2 = Block(8, 16), nn.MaxPool2d(2)
            self.block3 = Block(16, 32)
            self.classifier = nn.Linear(32, 10)

        def forward(self, x):  # standardised (N, 1, 28, 28)
            x = self.block3(self.pool2(self.block2(self.pool1(self.block1(x)))))
            return self.classifier(x.mean(dim=(2, 3)))

    net = TorchRefNet()
    t = lambda a: torch.from_numpy(np.array(a, np.float32))  # noqa: E731
    with torch.no_grad():
        for b in ("block1", "block2", "block3"):
            for c in ("conv1", "conv2"):
                m, p, s = getattr(getattr(net, b), c), params[b][c], batch_stats[b][c]
                m.conv.weight.copy_(t(p["conv"]["kernel"]).permute(3, 2, 0, 1))  # HWIO -> OIHW
                m.conv.bias.copy_(t(p["conv"]["bias"]))
                m.norm.weight.copy_(t(p["norm"]["scale"]))
                m.norm.bias.copy_(t(p["norm"]["bias"]))
                m.norm.running_mean.copy_(t(s["norm"]["mean"]))
                m.norm.running_var.copy_(t(s["norm"]["var"]))
        net.classifier.weight.copy_(t(params["classifier"]["kernel"]).T)
        net.classifier.bias.copy_(t(params["classifier"]["bias"]))
    return net.eval()


@contextlib.contextmanager
def our_noise(z_nchw):
    """Make Captum's NoiseTunnel add ``stdev * z_j`` to sample j of every image (see the docstring)."""
    from captum.attr._core.noise_tunnel import NoiseTunnel

    original = NoiseTunnel.__dict__["_add_noise_to_input"]

    def add_our_noise(input, stdev, nt_samples_partition):
        k = nt_samples_partition
        assert k == len(z_nchw) and tuple(input.shape[1:]) == tuple(z_nchw.shape[1:]), (k, input.shape)
        noise = stdev * z_nchw.to(input.device).repeat(input.shape[0], 1, 1, 1)  # row i*k + j -> z_j
        return input.repeat_interleave(k, dim=0) + noise

    NoiseTunnel._add_noise_to_input = staticmethod(add_our_noise)
    try:
        yield
    finally:
        NoiseTunnel._add_noise_to_input = original


def reference_maps(net, layer, x, targets, baseline, sigma, z_nchw):
    """Every reference map of ``net`` for ``x`` (N, 1, 28, 28) and ``targets`` (N,), as float32 numpy."""
    import torch
    from captum import attr as ca
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    t = torch.as_tensor(targets, dtype=torch.long)
    np32 = lambda a: np.ascontiguousarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a,  # noqa: E731
                                          np.float32).reshape(len(x), *np.shape(a)[-2:])
    out = {}
    cam7 = ca.LayerGradCam(net, layer).attribute(x, target=t, relu_attributions=True)
    out["gradcam_7x7"] = np32(cam7)
    out["gradcam"] = np32(ca.LayerAttribution.interpolate(cam7, (28, 28), interpolate_mode="bilinear"))
    out["saliency"] = np32(ca.Saliency(net).attribute(x, target=t, abs=True))
    out["gradient_x_input"] = np32(ca.InputXGradient(net).attribute(x, target=t))
    out["integrated_gradients"] = np32(ca.IntegratedGradients(net).attribute(
        x, baselines=baseline, target=t, n_steps=50, method="gausslegendre", internal_batch_size=400))
    with our_noise(z_nchw):
        out["smoothgrad"] = np32(ca.NoiseTunnel(ca.Saliency(net)).attribute(
            x, nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES, stdevs=float(sigma), target=t, abs=True))
    out["occlusion"] = np32(ca.Occlusion(net).attribute(
        x, sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2), baselines=baseline, target=t,
        perturbations_per_eval=13))
    for name, cls in (("gradcam", pgc.GradCAM), ("gradcam++", pgc.GradCAMPlusPlus), ("scorecam", pgc.ScoreCAM)):
        cam = cls(model=net, target_layers=[layer])
        if name == "scorecam":
            cam.batch_size = 64
        raw = []
        get_cam_image = cam.get_cam_image
        cam.get_cam_image = lambda *a, **k: raw.append(np.maximum(get_cam_image(*a, **k), 0)) or raw[-1]
        with contextlib.redirect_stderr(io.StringIO()):  # Score-CAM's tqdm bar per image
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in targets])
        cam.activations_and_grads.release()
        out[f"pgc_{name}"] = np32(maps)
        out[f"pgc_{name}_7x7"] = np32(raw[0])
    return out


def check_logits(name, ours, theirs):
    gap = float(np.abs(np.asarray(ours) - theirs).max())
    print(f"{name}: max |flax - torch| logit = {gap:.2e}")
    if gap >= LOGIT_TOLERANCE:
        raise SystemExit(f"error: {name}: torch port does not match Flax (logit gap {gap:.2e} >= {LOGIT_TOLERANCE})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(OUT), help=f"fixture to write (default {OUT.relative_to(ROOT)})")
    p.add_argument("--refnet-seed", type=int, default=0, help="init_refnet seed (default 0)")
    args = p.parse_args(argv)

    import torch

    torch.manual_seed(0)
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    warnings.filterwarnings("ignore", message=".*Setting forward, backward hooks.*")

    with np.load(ROOT / "sample_data" / "mnist_test_sample.npz") as d:
        images = (d["images"][:N_IMAGES].astype(np.float32) / 255.0).reshape(N_IMAGES, 28, 28, 1)
        labels = d["labels"][:N_IMAGES].astype(np.int32)
    half = N_IMAGES // 2
    targets = np.concatenate([labels[:half], (labels[half:] + 3) % 10]).astype(np.int32)
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (SMOOTHGRAD_SAMPLES, 1, 28, 28, 1), jnp.float32))
    z_nchw = torch.from_numpy(np.array(z[:, 0].transpose(0, 3, 1, 2)))  # (25, 1, 28, 28)

    fixture = {"images": images, "labels": labels, "targets": targets, "noise_z": z}

    # --- MNISTCNN, shipped checkpoint, [0, 1] input
    params, batch_stats, model, _ = load_checkpoint()
    params, batch_stats = to_bfloat16_precision(jax.device_get(params)), to_bfloat16_precision(jax.device_get(batch_stats))
    net = bench_xai.build_torch_model(params, batch_stats, tie_splitting_pool=False)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        logits = net(x).numpy()
    check_logits("cnn", model.apply({"params": params, "batch_stats": batch_stats}, images), logits)
    fixture["cnn/torch_logits"] = logits
    fixture.update(flatten({"params": params, "batch_stats": batch_stats}, "cnn"))
    maps = reference_maps(net, net.features[-1], x, targets, 0.0, NOISE_LEVEL, z_nchw)
    fixture.update({f"cnn/{k}": v if k.endswith("_7x7") else round_maps(v) for k, v in maps.items()})

    # --- RefNet, init_refnet weights, standardised input
    rparams, rstats = map(to_bfloat16_precision, init_refnet(args.refnet_seed))
    xs = standardise(images)
    rnet = torch_refnet(rparams, rstats)
    xt = torch.from_numpy(np.ascontiguousarray(xs.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        rlogits = rnet(xt).numpy()
    check_logits("refnet", RefNet().apply({"params": rparams, "batch_stats": rstats}, xs), rlogits)
    print(f"refnet: predictions {rlogits.argmax(1).tolist()}")
    if len(set(rlogits.argmax(1).tolist())) < 5:
        raise SystemExit("error: refnet's predictions are degenerate (fewer than 5 classes)")
    fixture["refnet/images"] = xs
    fixture["refnet/torch_logits"] = rlogits
    fixture.update(flatten({"params": rparams, "batch_stats": rstats}, "refnet"))
    maps = reference_maps(rnet, rnet.block3.conv2, xt, targets, float(LO), NOISE_LEVEL * (HI - LO), z_nchw)
    fixture.update({f"refnet/{k}": v if k.endswith("_7x7") else round_maps(v) for k, v in maps.items()})

    versions = [f"{pkg} {importlib.metadata.version(pkg)}" for pkg in
                ("torch", "captum", "grad-cam", "opencv-python-headless", "jax", "flax", "numpy")]
    fixture["versions"] = np.array(versions)
    fixture = {k: (np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v))
               for k, v in fixture.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **fixture)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB, {len(fixture)} arrays): "
          + ", ".join(versions))


if __name__ == "__main__":
    main()

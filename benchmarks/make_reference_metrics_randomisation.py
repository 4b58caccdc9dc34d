"""Regenerate tests/fixtures/quantus_randomisation.npz: Quantus 0.6.0's randomisation metrics
on our weights, our maps, OUR randomised weights, our other classes and our noise.

    /work/refvenv/bin/python benchmarks/make_reference_metrics_randomisation.py   # the reference venv (~3 min)

What it does
------------
* Net, digits, targets and maps: as make_reference_metrics_robustness.py (``setup``: the
  MNISTCNN weights of tests/fixtures/reference_maps.npz, its first N digits, our Saliency maps
  given to Quantus as ``a_batch``; Quantus explains with ``quantus.explain(method="Saliency")``,
  captum Saliency with abs=True, on the torch twin ``bench_xai.build_torch_model``).
* Same randomised weights: the re-initialised groups are ``randomisation.gaussian_params(params,
  PRNGKey(7))`` (each leaf redrawn from N(0, its std^2); cheap to recompute in the tests, unlike
  an init of MNISTCNN), passed to our metrics as ``fresh_params``. Quantus's own randomisation
  (``PyTorchModel.get_random_layer_generator``: ``reset_parameters`` of each torch module,
  pytorch_model.py:319-332) is replaced for the run by a generator yielding OUR stages
  (``randomisation.cascade``, in the metric's order), each ported to torch by
  ``build_torch_model``; ``random_layer_generator_length`` returns their number.
* Same other classes (RandomLogit): Quantus draws ``np.random.randint(0, num_classes - 1, N)``
  indices into the classes without the target (random_logit.py:293-300); ``np.random.randint``
  is replaced for the call by one returning the indices of OUR ``off_targets``.
* Same noise (SmoothMPRT): Quantus adds ``np.random.randn(*x.shape) * std`` for the first
  ``nr_samples - 1`` copies of each batch (smooth_mprt.py:535-541); ``np.random.randn`` is replaced
  for the call by one returning (our clipped noisy copy k - x) / std, k cycling over the copies,
  so Quantus explains exactly our copies (clipped to [0, 1]) with the same last, noise-free copy.
  ``batch_size=N``: one batch, so each explain_smooth_batch call takes copies 0 .. S-2 in order.
* Settings: Quantus's defaults, except ``normalise_func_kwargs={"normalise_axes": (1, 2, 3)}``
  (per-image max; the default divides by the batch max, see robustness.py's docstring),
  ``nr_samples`` for SmoothMPRT (``SMOOTH_SAMPLES``), EfficientMPRT's ``n_bins=100`` given (the
  value its ``find_n_bins`` picks with no rule) and MPRT's ``layer_order="top_down"``.

Keys: "mprt/<stage>" and "smooth_mprt/<stage>" (N,) Quantus's per-stage correlations (plus
"…/original"), "mprt/stages", "smooth_mprt/stages", "random_logit" (N,), "random_logit/off_classes",
"efficient_mprt" (N,), "images", "targets", "maps", "versions".
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
import numpy as np  # noqa: E402

from make_reference_metrics_robustness import N, setup  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "quantus_randomisation.npz"
FRESH_KEY = 7
SMOOTH_SAMPLES, SMOOTH_NOISE = 5, 0.1
N_BINS = 100
PER_IMAGE = {"normalise_axes": (1, 2, 3)}


def fresh_for(params):
    from mnist_xai.metrics.randomisation import gaussian_params
    return gaussian_params(params, jax.random.PRNGKey(FRESH_KEY))


@contextlib.contextmanager
def our_stages(stages, batch_stats):
    """Quantus's PyTorchModel yields our (name, params) stages, ported to torch."""
    from quantus.helpers.model.pytorch_model import PyTorchModel

    gen, length = PyTorchModel.get_random_layer_generator, PyTorchModel.random_layer_generator_length

    def generator(self, order="top_down", seed=42):
        for name, p in stages:
            yield name, bench_xai.build_torch_model(p, batch_stats, tie_splitting_pool=False)
    PyTorchModel.get_random_layer_generator = generator
    PyTorchModel.random_layer_generator_length = property(lambda self: len(stages))
    try:
        yield
    finally:
        PyTorchModel.get_random_layer_generator, PyTorchModel.random_layer_generator_length = gen, length


@contextlib.contextmanager
def patched_numpy_random(name, fn):
    original = getattr(np.random, name)
    setattr(np.random, name, fn)
    try:
        yield
    finally:
        setattr(np.random, name, original)


def main():
    import torch
    import quantus

    from mnist_xai.metrics import randomisation as RA

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    inp, (params, bs) = setup()
    fresh = fresh_for(params)
    x_nchw = np.ascontiguousarray(inp.images.transpose(0, 3, 1, 2))
    common = dict(model=None, x_batch=x_nchw, y_batch=inp.targets, channel_first=True, explain_func=quantus.explain,
                  explain_func_kwargs={"method": "Saliency"}, batch_size=N)
    net = bench_xai.build_torch_model(params, bs, tie_splitting_pool=False)
    common["model"] = net
    a_batch = inp.maps[:, None]
    out = {"images": inp.images, "targets": inp.targets, "maps": inp.maps}

    stages = RA.cascade(inp, fresh, None, "top_down")
    with our_stages(stages, bs):
        scores = quantus.MPRT(layer_order="top_down", normalise_func_kwargs=PER_IMAGE, disable_warnings=True)(
            a_batch=a_batch, **common)
    out["mprt/stages"] = np.array(list(scores))
    for k, v in scores.items():
        out[f"mprt/{k}"] = np.asarray(v, np.float64)
    print("mprt:", {k: np.round(np.mean(v), 4) for k, v in scores.items()})

    off = RA.off_targets(jax.random.fold_in(inp.key, RA.OFF_CLASS_SALT), inp.targets, 10)
    idx = off - (off > inp.targets)
    with patched_numpy_random("randint", lambda low, high, size=None: idx.copy()):
        scores = quantus.RandomLogit(num_classes=10, normalise_func_kwargs=PER_IMAGE, disable_warnings=True)(
            a_batch=a_batch, **common)
    out["random_logit"], out["random_logit/off_classes"] = np.asarray(scores, np.float64), off
    print("random_logit:", np.round(out["random_logit"], 4))

    noisy = RA.smooth_inputs(inp, RA.smooth_noise(inp, SMOOTH_SAMPLES), SMOOTH_NOISE)  # (S, N, H, W, C)
    std = SMOOTH_NOISE * (x_nchw.max(axis=(1, 2, 3), keepdims=True) - x_nchw.min(axis=(1, 2, 3), keepdims=True))
    eps = [(np.ascontiguousarray(c.transpose(0, 3, 1, 2)) - x_nchw) / std for c in noisy[:-1]]
    calls = [0]

    def randn(*shape):
        k = calls[0] % len(eps)
        calls[0] += 1
        assert tuple(shape) == eps[k].shape, (shape, eps[k].shape)
        return eps[k]
    stages = RA.cascade(inp, fresh, None, "bottom_up")
    with our_stages(stages, bs), patched_numpy_random("randn", randn):
        scores = quantus.SmoothMPRT(nr_samples=SMOOTH_SAMPLES, noise_magnitude=SMOOTH_NOISE, layer_order="bottom_up",
                                    normalise_func_kwargs=PER_IMAGE, disable_warnings=True)(a_batch=None, **common)
    assert calls[0] == (SMOOTH_SAMPLES - 1) * (len(stages) + 2), calls  # a_batch, "original", each stage
    out["smooth_mprt/stages"] = np.array(list(scores))
    for k, v in scores.items():
        out[f"smooth_mprt/{k}"] = np.asarray(v, np.float64)
    print("smooth_mprt:", {k: np.round(np.mean(v), 4) for k, v in scores.items()})

    with our_stages(stages, bs):
        scores = quantus.EfficientMPRT(complexity_func_kwargs={"n_bins": N_BINS}, disable_warnings=True)(
            a_batch=a_batch, **common)
    out["efficient_mprt"] = np.asarray(scores, np.float64)
    print("efficient_mprt:", np.round(out["efficient_mprt"], 4))

    out["versions"] = np.array([f"{p} {importlib.metadata.version(p)}"
                                for p in ("quantus", "torch", "captum", "scikit-image", "scipy", "jax", "numpy")])
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.1f} kB, {len(out)} arrays)")


if __name__ == "__main__":
    main()

"""Regenerate tests/fixtures/reference_perturbation.npz: Captum's FeatureAblation,
ShapleyValueSampling, KernelShap and Lime maps, and RISE by the authors' formula in numpy, on the
weights of tests/fixtures/reference_maps.npz.

    /tmp/refvenv/bin/python benchmarks/make_reference_perturbation.py   # the reference venv (requirements-reference.txt)

Eight of that fixture's 32 digits (``DIGITS``: four explained as their label, four as
(label + 3) % 10), its targets and both nets (``cnn`` in [0, 1], baseline 0; ``refnet`` on
standardised input, baseline LO), read from reference_maps.npz, so this one stores maps and samples.

Same samples on both sides. Every random draw is made here by OUR functions with
jax.random.PRNGKey(0), the key our methods use by default (``shapley_permutations``,
``kernel_shap_coalitions``, ``lime_coalitions``, ``rise_masks`` of mnist_xai.methods.perturbation),
stored in the fixture, and fed to the reference:

* ShapleyValueSampling: the instance's ``permutation_generator`` (captum/attr/_core/shapley_value.py:
  123, default ``_perm_generator`` :55-57, ``torch.randperm``) is replaced by one yielding our orders.
* KernelShap: the instance's ``perturb_func`` (kernel_shap.py:325-367, default
  ``kernel_shap_perturb_generator``: all on, all off, then sampled coalitions) is replaced by a
  generator yielding our coalitions (whose first two rows are all on, all off); its similarity
  kernel (1e6 for those two, 1 otherwise, :301-323) and ``SkLearnLinearRegression`` are Captum's,
  but the surrogate is fitted on float64 copies of Captum's data (``Float64LinearRegression``):
  Captum hands sklearn float32 (lime.py:505-516, ``.float()``), and with the 1e6 weights
  float32 lstsq lands 4e-4..2e-3 of the map's max from the exact fit, on every digit (measured
  against float64); ours (QR, ``_stiff_lstsq``) is ~1e-6 from it.
* Lime: ``perturb_func`` (the constructor's argument; default ``default_perturb_func``,
  lime.py:683-695, Bernoulli(1/2) per feature) yields our coalitions; similarity Captum's default
  ``get_exp_kernel_similarity_function("cosine", 1.0)``; ``interpretable_model=SkLearnRidge(alpha=1.0)``
  (not Captum's default ``SkLearnLasso(alpha=0.01)``: see mnist_xai.methods.perturbation.LIME).
  Captum's Lime and KernelShap fit one surrogate per example (lime.py:1150-1205) and call the
  perturb function afresh for each, so every digit gets the same coalitions, as ours do.
* RISE: no library class. ``rise_reference`` is the authors' ``generate_masks``/``explain``
  (github.com/eclique/RISE, explanations.py) in numpy: skimage ``resize(grid, (s + 1) * cell,
  order=1, mode="reflect", anti_aliasing=False)`` cropped at our shifts, masked images through the
  torch port, saliency = scores^T masks / N / p. Our masks must equal skimage's to 1e-6 (asserted).

Keys, maps (8, 28, 28) rounded as reference_maps.npz's (``round_maps``): "<net>/feature_ablation",
"<net>/shapley_sampling", "<net>/kernel_shap", "<net>/lime", "<net>/rise" (logit scores),
"<net>/rise_softmax" (probabilities); samples "shapley/permutations" (S, 49), "kernel_shap/coalitions",
"lime/coalitions" (S, 49), "rise/cells" (S, 7, 7), "rise/shifts" (S, 2), "rise/masks" (first 16, exact);
"digits", "versions".
"""
from __future__ import annotations

import importlib.metadata
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import bench_xai  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from make_reference_maps import OUT as MAPS, round_maps, torch_refnet  # noqa: E402
from mnist_xai.methods.perturbation import (kernel_shap_coalitions, lime_coalitions, patch_features,  # noqa: E402
                                            rise_masks, shapley_permutations)
from reference_models import LO, unflatten  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "reference_perturbation.npz"
DIGITS = np.array([0, 1, 2, 3, 16, 17, 18, 19])
PATCH = 4  # 49 features
SHAPLEY_SAMPLES, KERNEL_SHAP_SAMPLES, LIME_SAMPLES = 2, 100, 100
RISE_SAMPLES, RISE_GRID, RISE_P = 100, 7, 0.5
LIME_ALPHA = 1.0


def float64_linear_regression():
    """Captum's SkLearnLinearRegression, fitted on float64 copies of the data Lime hands it."""
    from captum._utils.models.linear_model import SkLearnLinearRegression
    from torch.utils.data import DataLoader, TensorDataset

    class Float64LinearRegression(SkLearnLinearRegression):
        def fit(self, train_data, **kwargs):
            tensors = [t.double() for t in train_data.dataset.tensors]
            return super().fit(DataLoader(TensorDataset(*tensors), batch_size=len(tensors[0])), **kwargs)

    return Float64LinearRegression()


def rise_reference(net, x, targets, cells, shifts, p, baseline):
    """The authors' RISE (generate_masks + explain) with our grids and shifts, numpy + torch.

    Returns ``(saliency from logits, saliency from softmax probabilities, masks)``."""
    import torch
    from skimage.transform import resize

    n_masks, s = len(cells), cells.shape[1]
    size = x.shape[2:]
    cell = np.ceil(np.array(size) / s)
    up = ((s + 1) * cell).astype(int)
    masks = np.empty((n_masks, *size))
    for i in range(n_masks):
        a, b = shifts[i]
        masks[i] = resize(cells[i], up, order=1, mode="reflect", anti_aliasing=False)[a:a + size[0], b:b + size[1]]
    m = torch.from_numpy(masks.astype(np.float32))[:, None]  # (S, 1, H, W)
    logit_sal, prob_sal = [], []
    with torch.no_grad():
        for xi, ti in zip(x, targets):
            out = net(xi[None] * m + baseline * (1 - m))  # (S, classes)
            for sal, scores in ((logit_sal, out), (prob_sal, torch.softmax(out, 1))):
                sal.append(scores[:, ti].numpy().astype(np.float64) @ masks.reshape(n_masks, -1) / n_masks / p)
    return (np.array(logit_sal).reshape(-1, *size), np.array(prob_sal).reshape(-1, *size), masks)


def main():
    import torch
    from captum import attr as ca
    from captum._utils.models.linear_model import SkLearnRidge

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="You are providing multiple inputs for Lime")
    with np.load(MAPS) as d:
        ref = {k: d[k] for k in d.files}
    key = jax.random.PRNGKey(0)
    fm = patch_features((28, 28), PATCH)
    m = int(fm.max()) + 1
    perms = np.asarray(shapley_permutations(key, SHAPLEY_SAMPLES, m))
    ks_z = np.asarray(kernel_shap_coalitions(key, KERNEL_SHAP_SAMPLES, m))
    lime_z = np.asarray(lime_coalitions(key, LIME_SAMPLES, m))
    rise_m, cells, shifts = (np.asarray(a) for a in rise_masks(key, RISE_SAMPLES, RISE_GRID, RISE_P, (28, 28)))

    def rows_of(z):
        def perturb(original_inp, **kwargs):  # a generator function, as Lime wants it
            for row in z:
                yield torch.from_numpy(row[None].astype(np.int64))
        return perturb

    t = torch.as_tensor(ref["targets"][DIGITS], dtype=torch.long)
    fm_t = torch.from_numpy(fm.astype(np.int64))[None, None]  # (1, 1, 28, 28)
    nets = {
        "cnn": (bench_xai.build_torch_model(unflatten(ref, "cnn/params"), unflatten(ref, "cnn/batch_stats"),
                                            tie_splitting_pool=False), ref["images"], 0.0),
        "refnet": (torch_refnet(unflatten(ref, "refnet/params"), unflatten(ref, "refnet/batch_stats")),
                   ref["refnet/images"], float(np.float32(LO))),
    }
    out = {}
    for name, (net, images, baseline) in nets.items():
        x = torch.from_numpy(np.ascontiguousarray(images[DIGITS].transpose(0, 3, 1, 2)))
        with torch.no_grad():
            gap = float(np.abs(net(x).numpy() - ref[f"{name}/torch_logits"][DIGITS]).max())
        assert gap < 1e-4, f"{name}: the torch port's logits moved ({gap:.2e})"
        np32 = lambda a: round_maps(np.asarray(a.detach().numpy(), np.float32).reshape(len(x), 28, 28))  # noqa: E731
        common = dict(baselines=baseline, target=t, feature_mask=fm_t)
        out[f"{name}/feature_ablation"] = np32(ca.FeatureAblation(net).attribute(x, perturbations_per_eval=m, **common))
        svs = ca.ShapleyValueSampling(net)
        svs.permutation_generator = lambda num_features, n_samples: iter(perms.tolist())
        out[f"{name}/shapley_sampling"] = np32(svs.attribute(x, n_samples=SHAPLEY_SAMPLES, perturbations_per_eval=m,
                                                             **common))
        ks = ca.KernelShap(net)
        ks.perturb_func = rows_of(ks_z)
        ks.interpretable_model = float64_linear_regression()
        out[f"{name}/kernel_shap"] = np32(ks.attribute(x, n_samples=KERNEL_SHAP_SAMPLES, perturbations_per_eval=50,
                                                       **common))
        lime = ca.Lime(net, interpretable_model=SkLearnRidge(alpha=LIME_ALPHA), perturb_func=rows_of(lime_z))
        out[f"{name}/lime"] = np32(lime.attribute(x, n_samples=LIME_SAMPLES, perturbations_per_eval=50, **common))
        logit_sal, prob_sal, masks = rise_reference(net, x, t.numpy(), cells, shifts, RISE_P, baseline)
        gap = np.abs(masks - rise_m).max()
        assert gap < 1e-6, f"our RISE masks differ from skimage's resize by {gap:.2e}"
        out[f"{name}/rise"], out[f"{name}/rise_softmax"] = round_maps(logit_sal), round_maps(prob_sal)
        print(name, "done")
    out.update({"digits": DIGITS, "shapley/permutations": perms, "kernel_shap/coalitions": ks_z,
                "lime/coalitions": lime_z, "rise/cells": cells, "rise/shifts": shifts,
                "rise/masks": rise_m[:16]})
    out["versions"] = np.array([f"{p} {importlib.metadata.version(p)}"
                                for p in ("torch", "captum", "scikit-learn", "scikit-image", "jax", "numpy")])
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(out)} arrays)")


if __name__ == "__main__":
    main()

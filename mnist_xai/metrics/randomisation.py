"""Randomisation: does the explanation depend on what the model learned?

Metrics (names as registered; Quantus 0.6.0 classes in ``quantus/metrics/randomisation/``):

- ``model_parameter_randomisation``: Adebayo et al., "Sanity Checks for Saliency Maps",
  NeurIPS 2018 (arXiv:1810.03292), sec. 3 (quantus.MPRT, mprt.py:283-357): the model's parameter
  groups are re-initialised one by one, from the output down (cascading, ``order="top_down"``),
  and each stage's map is compared with the trained model's map by the Spearman rank
  correlation of |map| (Quantus ``abs=True``; its max-normalisation does not change ranks). The
  value per image is the correlation after the whole cascade (Quantus ``return_last_correlation``);
  ``details["rho"]`` has every stage's. This is the project's cascading test
  (``mnist_xai_metrics.randomization_test`` is now a wrapper around it).
- ``random_logit``: Sixt et al., "When Explanations Lie: Why Many Modified BP Attributions
  Fail", ICML 2020 (arXiv:1912.09818), sec. 6 (quantus.RandomLogit, random_logit.py:262-306):
  SSIM between the map of the target class and the map of a uniformly drawn OTHER class (lower:
  the method is class-sensitive). As Quantus 0.6.0, maps are max-normalised and the SSIM is
  skimage's ``structural_similarity`` (uniform 7-window, K1 0.01, K2 0.03, sample covariance)
  of the FLATTENED maps (random_logit.py:303 reshapes to (N, -1) before similarity_func.ssim),
  with data_range = max - min over both maps; ``flat=False`` takes the 2-D SSIM of the maps.
- ``smooth_mprt``: Hedstrom et al., "Sanity Checks Revisited: An Exploration to Repair the
  Model Parameter Randomisation Test", XAI in Action workshop, NeurIPS 2023 (arXiv:2401.06465),
  sMPRT (quantus.SmoothMPRT, smooth_mprt.py:286-357, 521-545): each explanation is the mean of
  the maps of ``samples`` noisy copies x + N(0, (``noise`` (max x - min x))^2), the last copy
  noise-free, layers randomised bottom-up (``order="bottom_up"``, Quantus's default here); value
  per image: the mean over stages of the Spearman correlation with the denoised trained map.
  Quantus's ``return_average_correlation`` averages its "original" entry (~1) in too: it skips a key
  called "orig" (mprt.py:412) but stores "original"; we leave it out (``details["rho"]`` has each
  stage's, compared one by one in the tests).
- ``efficient_mprt``: the same paper's eMPRT (quantus.EfficientMPRT, efficient_mprt.py:348-463):
  the relative rise of the explanation's complexity, (H(a_rand) - H(a)) / H(a), from the trained
  to the FULLY randomised model (Quantus ``skip_layers=True``: only the last stage), H the
  discrete entropy (nats) of a ``n_bins``-bin histogram of the map's values
  (complexity_func.discrete_entropy; Quantus's ``n_bins`` default 100 with no rule). Higher is
  better. ``a`` is the input's maps (Quantus re-explains the model, the same maps).

The randomised parameters: ``fresh_params`` (a tree like ``inp.params``, e.g. the model's init
with another seed), or by default the model's own initialisers with a key drawn from
``inp.key`` (``fresh_params_of``; a flax.linen model: ``module.init``; a Haiku params dict, or
an nnx or Equinox model's parameter groups (``ExplainedModel.param_groups``: one per top-level
attribute): ``gaussian_params``, each leaf redrawn with its own spread), as Quantus calls each
torch layer's ``reset_parameters`` (pytorch_model.py:319-332). Stages: the top-level parameter
groups (``stages_of``: MNISTCNN as today, dense2 ... conv1 with each conv's BatchNorm; other
models, the reverse of the order their forward pass calls them) or ``layers=[...]``, each entry a group name or a tuple of
names re-initialised together. The running BatchNorm statistics stay the trained ones. Quantus
is given the SAME randomised weights: the reference script replaces
``PyTorchModel.get_random_layer_generator`` by one that yields our stages ported to torch.

Every stage's maps of all images (and of all noisy copies, for sMPRT) come from one explain call.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from .base import MetricInput, register_metric
from .robustness import CALL_PIXELS, _clip_range, _positive, prepare_maps

ORDERS = ("top_down", "bottom_up", "independent")
FRESH_SALT = 0x5EED  # fold_in(inp.key, FRESH_SALT): the key of the default re-initialisation
OFF_CLASS_SALT = 0x0FF  # fold_in(inp.key, OFF_CLASS_SALT): the key of random_logit's other classes
_MNIST_GROUP = re.compile(r"^(conv|bn|dense)\d+$")


# ----------------------------------------------------------------------------- shared pieces


def spearman_rows(a, b) -> np.ndarray:
    """Spearman rank correlation of each row pair of a, b (N, ...) with average ranks for ties
    (as scipy.stats.spearmanr); NaN where a row is constant."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim < 2 or not len(a):
        raise ValueError(f"spearman_rows: expected two arrays of the same shape (N, ...), got {a.shape} and {b.shape}")
    a = rankdata(a.reshape(len(a), -1), axis=1)
    b = rankdata(b.reshape(len(b), -1), axis=1)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), np.nan)


def _params_dict(inp: MetricInput):
    """The parameter groups the cascade re-initialises: a flax.linen or Haiku params dict, or an
    nnx / Equinox model's own (``ExplainedModel.param_groups``, when ``inp.params`` is None)."""
    target = inp.explainer.target
    if inp.params is None and target.family in ("nnx", "equinox"):
        return target.param_groups()
    if not hasattr(inp.params, "keys"):
        raise ValueError(f"params: a randomisation metric re-initialises parameter groups of a params dict (flax.linen, "
                         f"Haiku) or of an nnx or Equinox Module; got {type(inp.params).__name__}")
    return inp.params


def gaussian_params(params, key) -> dict:
    """A re-initialisation of any params tree without its model: leaf i drawn from
    N(0, std(leaf_i)^2) with ``fold_in(key, i)`` (a constant leaf, e.g. a zero bias, stays itself)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    out = []
    for i, leaf in enumerate(leaves):
        leaf = np.asarray(leaf, np.float32)
        std = float(leaf.std())
        z = np.asarray(jax.random.normal(jax.random.fold_in(key, i), leaf.shape, jnp.float32))
        out.append((std * z).astype(np.float32) if std > 0 else leaf)
    return jax.tree_util.tree_unflatten(tree, out)


def fresh_params_of(inp: MetricInput, key=None):
    """Re-initialised parameters, key ``fold_in(inp.key, FRESH_SALT)`` by default: a flax.linen
    model's own initialisers (``module.init``); any other params dict (Haiku):
    ``gaussian_params``. Pass ``fresh_params`` to a metric to choose them yourself."""
    target = inp.explainer.target
    key = jax.random.fold_in(inp.key, FRESH_SALT) if key is None else key
    if target.module is None:
        return gaussian_params(_params_dict(inp), key)
    # Eagerly: its small programs are cached across calls (a jitted init compiles one large
    # program per call site, ~2x slower for MNISTCNN; evaluate_xai made the same choice).
    variables = target.module.init(key, jnp.zeros((1, *inp.images.shape[1:]), jnp.float32), **target.call_kwargs)
    return jax.tree_util.tree_map(np.asarray, dict(variables["params"]))


def stages_of(params, call_order=()) -> list[tuple[str, ...]]:
    """The cascade's stages from the output down: MNISTCNN's dense2, dense1, conv6 ... conv1,
    each conv with its BatchNorm ``bnK`` (``mnist_xai_metrics.cascading_layers``); any other model's
    top-level groups in the reverse of the order the forward pass first calls them
    (``call_order``: top-level submodule names in call order), groups it never names last."""
    keys = list(params)
    if keys and all(_MNIST_GROUP.match(k) for k in keys):
        order = sorted((k for k in keys if k.startswith("dense")), key=lambda k: -int(k[5:]))
        order += sorted((k for k in keys if k.startswith("conv")), key=lambda k: -int(k[4:]))
        return [(k, f"bn{k[4:]}") if k.startswith("conv") and f"bn{k[4:]}" in params else (k,) for k in order]
    first = {}
    for i, name in enumerate(call_order):
        first.setdefault(name, i)
    defined = sorted(keys, key=lambda k: (first.get(k, len(first)), k))
    return [(k,) for k in reversed(defined)]


def call_order(inp: MetricInput) -> list[str]:
    """The model's top-level submodules in the order its forward pass calls them (empty for a
    model without named layers)."""
    target = inp.explainer.target
    if target.family == "function":
        return []
    try:
        seen = target.layers(inp.variables, inp.images.shape[1:])
    except Exception:  # noqa: BLE001 - layers that cannot be listed: sorted names instead
        return []
    return [re.split(r"[/.]", name)[0] for name, _ in seen]


def _as_stages(layers, params) -> list[tuple[str, ...]]:
    out = []
    for entry in layers:
        group = (entry,) if isinstance(entry, str) else tuple(entry)
        missing = [g for g in group if not isinstance(g, str) or g not in params]
        if missing or not group:
            raise ValueError(f"layers: expected parameter groups of the model ({', '.join(params)}), got {entry!r}")
        out.append(group)
    if not out:
        raise ValueError("layers: expected at least one parameter group, got none")
    return out


def randomised(params, fresh, groups) -> dict:
    """``params`` with the top-level ``groups`` replaced by ``fresh``'s."""
    out = dict(params)
    for g in groups:
        out[g] = fresh[g]
    return out


def cascade(inp: MetricInput, fresh_params=None, layers=None, order: str = "top_down"):
    """``[(stage name, randomised params)]``: cumulative from the top (``top_down``) or the
    bottom (``bottom_up``), or one stage at a time (``independent``)."""
    if order not in ORDERS:
        raise ValueError(f"order: expected one of {', '.join(ORDERS)}, got {order!r}")
    params = _params_dict(inp)
    fresh = fresh_params_of(inp) if fresh_params is None else fresh_params
    if not hasattr(fresh, "keys") or set(params) - set(fresh):
        got = sorted(fresh) if hasattr(fresh, "keys") else type(fresh).__name__
        raise ValueError(f"fresh_params: expected the groups {sorted(params)}, got {got}")
    stages = stages_of(params, call_order(inp)) if layers is None else _as_stages(layers, params)
    if order == "bottom_up":
        stages = stages[::-1]
    out, done = [], []
    for group in stages:
        done = list(group) if order == "independent" else done + list(group)
        out.append(("+".join(group), randomised(params, fresh, done)))
    return out


def _explain_noisy(inp: MetricInput, params, noisy: np.ndarray) -> np.ndarray:
    """Maps (S, N, H, W) of ``noisy`` (S, N, H, W, C) under ``params``: all copies in few calls."""
    s, n = noisy.shape[:2]
    pixels = int(np.prod(noisy.shape[2:]))
    per_call = max(1, CALL_PIXELS // max(1, pixels * n))
    out = []
    for i in range(0, s, per_call):
        block = noisy[i:i + per_call]
        maps = inp.explain(block.reshape(-1, *noisy.shape[2:]), np.tile(inp.targets, len(block)), params=params)
        out.append(np.asarray(maps, np.float64).reshape(len(block), n, *noisy.shape[2:4]))
    return np.concatenate(out)


# ----------------------------------------------------------------------------- metrics


@register_metric("model_parameter_randomisation", title="Model parameter randomisation", family="randomisation",
                 higher_is_better=False, needs=("explainer", "maps"), reference="quantus.MPRT",
                 paper="Adebayo et al., NeurIPS 2018",
                 summary="Spearman correlation of |map| with the map of the fully re-initialised model (cascade)")
def model_parameter_randomisation(inp: MetricInput, fresh_params=None, layers=None, order: str = "top_down",
                                  abs: bool = True, keep_maps: bool = False, progress=None,
                                  explain_predicted: bool = False):
    """Per image: the Spearman correlation of the input's maps with the last stage's maps
    (module docstring). ``details``: ``layers`` (stage names), ``rho`` (stages, N), with
    ``keep_maps`` ``maps`` (stages, N, H, W). ``progress(images_done)`` after each stage's chunk.
    ``explain_predicted``: each randomised model explains ITS OWN predicted class (the project's
    pre-registry ``randomization_test`` with targets=None); default: the input's targets held
    fixed through the cascade, as Quantus (y_batch)."""
    base = prepare_maps(inp.maps, False, abs)
    names, rhos, maps = [], [], []
    for name, p in cascade(inp, fresh_params, layers, order):
        m = np.asarray(inp.explainer.attribute(p, inp.batch_stats, inp.images,
                                               None if explain_predicted else inp.targets, key=inp.key,
                                               progress=progress))
        names.append(name)
        rhos.append(spearman_rows(base, prepare_maps(m, False, abs)))
        if keep_maps:
            maps.append(m)
    details = {"layers": names, "rho": np.stack(rhos)}
    if keep_maps:
        details["maps"] = np.stack(maps)
    return details["rho"][-1], details


def off_targets(key, targets, num_classes: int) -> np.ndarray:
    """A uniformly drawn class other than each target: (N,) int32."""
    t = np.asarray(targets)
    r = np.asarray(jax.random.randint(key, t.shape, 0, num_classes - 1))
    return (r + (r >= t)).astype(np.int32)


def _uniform_filter(x: np.ndarray, win: int, axes) -> np.ndarray:
    """scipy.ndimage.uniform_filter(x, win) (mode "reflect" = numpy "symmetric") over ``axes``."""
    pad = win // 2
    for ax in axes:
        widths = [(0, 0)] * x.ndim
        widths[ax] = (pad, win - 1 - pad)
        c = np.cumsum(np.pad(x, widths, mode="symmetric"), axis=ax)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=ax)), c], axis=ax)
        n = x.shape[ax]
        x = (np.take(c, np.arange(win, win + n), axis=ax) - np.take(c, np.arange(0, n), axis=ax)) / win
    return x


def ssim(a, b, flat: bool = True, win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Per row: skimage.metrics.structural_similarity(a_i, b_i, data_range=max - min over both)
    (uniform window, sample covariance), over the flattened rows (``flat``) or the (H, W) maps."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = len(a)
    if flat:
        a, b = a.reshape(n, -1), b.reshape(n, -1)
    axes = tuple(range(1, a.ndim))
    if min(a.shape[1:]) < win_size:
        raise ValueError(f"ssim: expected maps of at least {win_size} pixels per side, got {a.shape[1:]}")
    both = np.concatenate([a.reshape(n, -1), b.reshape(n, -1)], 1)
    rng = (both.max(1) - both.min(1)).reshape(n, *([1] * len(axes)))
    c1, c2 = (k1 * rng) ** 2, (k2 * rng) ** 2
    npix = win_size ** len(axes)
    cov = npix / (npix - 1)
    ux, uy = _uniform_filter(a, win_size, axes), _uniform_filter(b, win_size, axes)
    vx = cov * (_uniform_filter(a * a, win_size, axes) - ux * ux)
    vy = cov * (_uniform_filter(b * b, win_size, axes) - uy * uy)
    vxy = cov * (_uniform_filter(a * b, win_size, axes) - ux * uy)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    crop = (slice(None),) + tuple(slice(pad, d - pad) for d in a.shape[1:])
    return s[crop].reshape(n, -1).mean(1)


@register_metric("random_logit", title="Random logit", family="randomisation", higher_is_better=False,
                 needs=("explainer", "maps"), reference="quantus.RandomLogit", paper="Sixt et al., ICML 2020",
                 summary="SSIM between the target's map and the map of a random other class")
def random_logit(inp: MetricInput, normalise: bool = True, abs: bool = False, flat: bool = True,
                 num_classes: int | None = None, off_classes=None):
    """Per image: SSIM(map of the target, map of a random other class) (module docstring).
    ``off_classes``: the other classes (N,), default drawn from ``fold_in(inp.key, OFF_CLASS_SALT)``."""
    if num_classes is None:
        num_classes = int(inp.logits(inp.images[:1]).shape[1])
    num_classes = _positive("num_classes", num_classes, integer=True)
    if num_classes < 2:
        raise ValueError(f"num_classes: expected at least 2 classes, got {num_classes}")
    if off_classes is None:
        off = off_targets(jax.random.fold_in(inp.key, OFF_CLASS_SALT), inp.targets, num_classes)
    else:
        off = np.broadcast_to(np.asarray(off_classes, np.int32), (len(inp),))
        if np.any(off == inp.targets) or np.any(off < 0) or np.any(off >= num_classes):
            raise ValueError(f"off_classes: expected classes in [0, {num_classes}) other than the targets, got {off}")
    b = inp.explain(targets=off)
    return ssim(prepare_maps(inp.maps, normalise, abs), prepare_maps(b, normalise, abs), flat=flat), {"off_classes": off}


def smooth_noise(inp: MetricInput, samples: int) -> np.ndarray:
    """sMPRT's standard-normal draws (samples - 1, N, H, W, C) from ``fold_in(inp.key, 1)``; the
    same for every stage (common random numbers: a stage's change is the model's, not the noise's)."""
    return np.asarray(jax.random.normal(jax.random.fold_in(inp.key, 1), (samples - 1, *inp.images.shape), jnp.float32))


def smooth_inputs(inp: MetricInput, z: np.ndarray, noise: float, clip: bool = True) -> np.ndarray:
    """sMPRT's inputs (samples, N, H, W, C): x + std z_k (k < samples - 1), then x itself, std =
    noise (max x - min x) per image (smooth_mprt.py:508-510), clipped to the model's input range
    when ``clip`` (as the robustness metrics; Quantus does not clip, the reference feeds it these)."""
    x = inp.images
    std = noise * (x.max(axis=(1, 2, 3), keepdims=True) - x.min(axis=(1, 2, 3), keepdims=True))
    noisy = x[None] + std[None] * z
    rng = _clip_range(inp, clip)
    if rng is not None:
        noisy = np.clip(noisy, *rng)
    return np.concatenate([noisy, x[None]]).astype(np.float32)


def smoothed_maps(inp: MetricInput, params, noisy: np.ndarray) -> np.ndarray:
    """The mean over the copies of the maps (N, H, W) of ``noisy`` (samples, N, H, W, C) under ``params``."""
    return _explain_noisy(inp, params, noisy).mean(0)


@register_metric("smooth_mprt", title="Smooth MPRT", family="randomisation", higher_is_better=False,
                 needs=("explainer",), reference="quantus.SmoothMPRT", paper="Hedstrom et al., NeurIPS XAIA 2023",
                 summary="mean Spearman correlation of denoised maps through a bottom-up randomisation cascade")
def smooth_mprt(inp: MetricInput, samples: int = 50, noise: float = 0.1, fresh_params=None, layers=None,
                order: str = "bottom_up", abs: bool = True, clip: bool = True):
    """Per image: the mean over stages of spearman(|smoothed map|, |smoothed map of the stage|)."""
    samples = _positive("samples", samples, integer=True)
    noise = float(noise)
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise: expected a number >= 0, got {noise!r}")
    noisy = smooth_inputs(inp, smooth_noise(inp, samples), noise, clip)
    base = prepare_maps(smoothed_maps(inp, inp.params, noisy), False, abs)
    names, rhos = [], []
    for name, p in cascade(inp, fresh_params, layers, order):
        names.append(name)
        rhos.append(spearman_rows(base, prepare_maps(smoothed_maps(inp, p, noisy), False, abs)))
    rho = np.stack(rhos)
    return np.nanmean(rho, 0), {"layers": names, "rho": rho}


def discrete_entropy(maps, n_bins: int = 100) -> np.ndarray:
    """Per map: scipy.stats.entropy of np.histogram(map, bins=n_bins) (nats); 0 for a constant map."""
    a = np.asarray(maps, np.float64).reshape(len(maps), -1)
    lo, hi = a.min(1, keepdims=True), a.max(1, keepdims=True)
    width = np.where(hi > lo, hi - lo, 1.0)
    idx = np.clip(((a - lo) / width * n_bins).astype(np.int64), 0, n_bins - 1)
    idx = np.where(hi > lo, idx, 0)
    counts = np.zeros((len(a), n_bins))
    np.add.at(counts, (np.arange(len(a))[:, None], idx), 1.0)
    p = counts / counts.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1)


@register_metric("efficient_mprt", title="Efficient MPRT", family="randomisation", higher_is_better=True,
                 needs=("explainer", "maps"), reference="quantus.EfficientMPRT",
                 paper="Hedstrom et al., NeurIPS XAIA 2023",
                 summary="relative rise of the map's histogram entropy when every layer is re-initialised")
def efficient_mprt(inp: MetricInput, n_bins: int = 100, fresh_params=None, layers=None, normalise: bool = False,
                   abs: bool = False):
    """Per image: (H(map of the fully randomised model) - H(map)) / H(map), H the ``n_bins``-bin
    histogram entropy (module docstring)."""
    n_bins = _positive("n_bins", n_bins, integer=True)
    _, p = cascade(inp, fresh_params, layers, "bottom_up")[-1]  # every group re-initialised
    h0 = discrete_entropy(prepare_maps(inp.maps, normalise, abs), n_bins)
    h1 = discrete_entropy(prepare_maps(inp.explain(params=p), normalise, abs), n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(h0 > 0, (h1 - h0) / np.where(h0 > 0, h0, 1.0), np.nan)
    return values, {"entropy": h0, "entropy_randomised": h1}

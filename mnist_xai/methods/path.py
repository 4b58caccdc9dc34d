"""Path methods: attributions integrated along a path from a baseline to the image."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..base import Explainer
from ..checks import _baseline, _baseline_for, finite_number, whole_number
from ..model import explained
from ..ops import _resolve_targets
from ..registry import Option, register
from ..runtime import in_chunks

BASELINE = Option("baseline", None, "a scalar or one image, in the model's input range (default 0)")


@register("integrated_gradients", title="Integrated Gradients", family="path", cost="medium", signed=True,
          options=(Option("steps", int, "Gauss-Legendre nodes on the path", low=1, high=10_000,
                          choices=(16, 32, 64, 100)), BASELINE),
          reference="Captum IntegratedGradients (method='gausslegendre')",
          paper="Sundararajan et al., ICML 2017, arXiv:1703.01365")
class IntegratedGradients(Explainer):
    """Integrated Gradients (Sundararajan et al., ICML 2017, arXiv:1703.01365), eq. 3.

    IG_ij = sum_c (x - x')_ijc * integral_0^1 d y^c(x' + a (x - x')) / d x_ijc da, approximated
    with ``steps`` Gauss-Legendre nodes (Captum's ``method="gausslegendre"``), summed over
    channels. Completeness: sum IG ~= y^c(x) - y^c(x'). The default 100 steps keeps the
    completeness error under 1% on average on real digits with the shipped model (the ReLU
    network's kinks make single digits worse; docs/benchmarks.md has the measurements).
    ``baseline``: a scalar or one image, in the model's input range; default 0 (a black
    digit for MNISTCNN). All interpolants of a chunk go through the network as one batch.
    """

    def __init__(self, model, steps: int = 100, baseline=0.0, chunk_size: int | None = None):
        self.steps = whole_number("steps", steps)
        self.baseline = _baseline(baseline)
        image_shape = explained(model).image_shape
        if image_shape is not None:
            self.baseline = _baseline_for(self.baseline, tuple(image_shape))
        nodes, weights = np.polynomial.legendre.leggauss(self.steps)
        self.alphas = ((nodes + 1) / 2).astype(np.float32)  # in (0, 1)
        self.weights = (weights / 2).astype(np.float32)      # sum to 1
        self.chunk_size = max(1, 8192 // self.steps)  # digits a call: ~8,192 interpolants
        self.cpu_chunk_size = max(1, 64 // self.steps)  # ~64 on a CPU
        super().__init__(model, chunk_size)

    def _check(self, variables, images):
        _baseline_for(self.baseline, images.shape[1:])

    def _channel_maps(self, variables, images, targets, key):
        baseline = jnp.broadcast_to(jnp.asarray(_baseline_for(self.baseline, images.shape[1:])), images.shape)
        logits = self.logits(variables, images)
        t = _resolve_targets(logits, targets)
        a = jnp.asarray(self.alphas).reshape(-1, 1, 1, 1, 1)
        path = baseline[None] + a * (images - baseline)[None]  # (S, N, H, W, C)
        grads, _ = self.target_logit_grad(variables, path.reshape(-1, *images.shape[1:]), jnp.tile(t, self.steps))
        avg = jnp.tensordot(jnp.asarray(self.weights), grads.reshape(self.steps, *images.shape), 1)
        return (images - baseline) * avg, logits

    def completeness_gap(self, params, batch_stats, images, target_classes=None, maps=None):
        """Per image: sum of attributions minus (f(x) - f(baseline)) for the target logit, and f(x) - f(x').

        ``maps``: this explainer's attributions of ``images`` for ``target_classes`` when
        they are already at hand (e.g. in ``evaluate_xai``); computed here otherwise.
        """
        x, variables, requested = self._prepare(params, batch_stats, images, target_classes)
        if maps is None:
            maps = self.attribute(params, batch_stats, x, target_classes)
        maps = np.asarray(maps, np.float32)
        if maps.shape != x.shape[:3]:
            raise ValueError(f"maps: expected shape {x.shape[:3]}, got {maps.shape}")
        forward = jax.jit(self.logits)
        (logits,) = in_chunks(lambda xc: (forward(variables, xc),), (x,), 1000)
        t = np.where(requested < 0, logits.argmax(-1), requested)
        base = np.broadcast_to(_baseline_for(self.baseline, x.shape[1:]), (1, *x.shape[1:]))
        base_logits = np.asarray(forward(variables, base))[0]
        delta = logits[np.arange(len(x)), t] - base_logits[t]
        return maps.sum(axis=(1, 2)) - delta, delta


# ----------------------------------------------------------------------------- GradientSHAP, Expected Gradients

BASELINES = Option("baselines", None, "the baseline distribution: a scalar, one image or a stack (M, H, W, C) "
                   "in the model's input range (default 0)")
SHAP_SAMPLES = Option("samples", int, "(baseline, alpha, noise) draws an image", low=1, high=100_000,
                      choices=(5, 10, 25, 50))


def _baseline_set(b: np.ndarray, image_shape, name: str = "baselines") -> np.ndarray:
    """``b`` (a scalar, one image or M images) as (M, H, W, C) float32 for images of ``image_shape``."""
    per = int(np.prod(image_shape))
    if b.ndim == 0:
        return np.full((1, *image_shape), b, np.float32)
    if b.size % per or (b.ndim >= 4 and tuple(b.shape[1:]) != tuple(image_shape)):
        hw = "x".join(map(str, image_shape[:2]))
        raise ValueError(f"{name}: expected a scalar, one {hw} image or a stack (M, {', '.join(map(str, image_shape))}), "
                         f"got shape {b.shape}")
    return b.reshape(-1, *image_shape).astype(np.float32)


@register("gradient_shap", title="GradientSHAP", family="path", cost="medium", signed=True, random=True,
          options=(SHAP_SAMPLES, Option("stdevs", float, "Gaussian noise sigma added to the image, in input units",
                                        low=0.0, choices=(0.0, 0.05, 0.1, 0.2)), BASELINES),
          reference="Captum GradientShap (multiply_by_inputs=True)",
          paper="Lundberg & Lee, NeurIPS 2017, arXiv:1705.07874")
class GradientSHAP(Explainer):
    """GradientSHAP (Lundberg & Lee, NeurIPS 2017, arXiv:1705.07874; SHAP's GradientExplainer).

    phi = (1/S) sum_k (x + sigma z_k - b_k) * d y^c / d x (b_k + alpha_k (x + sigma z_k - b_k)),
    summed over channels: b_k drawn uniformly from the baseline distribution ``baselines``,
    alpha_k ~ U(0, 1), z_k ~ N(0, 1). As Captum 0.9.0's ``GradientShap``
    (captum/attr/_core/gradient_shap.py:264-283: NoiseTunnel(smoothgrad) around
    InputBaselineXGradient, ``draw_baseline_from_distrib=True``; :370-391: one alpha per
    noisy row, ``alpha * input + (1 - alpha) * baseline``, attribution ``(input - baseline) *
    grad`` with the NOISY input; captum/_utils/common.py:410-433 draws the baseline indices).
    In expectation sum phi ~= y^c(x) - E_b y^c(b) (for stdevs=0).

    Randomness from the explicit ``key`` of ``attribute`` (default PRNGKey(0)), split in three:
    baseline indices, alphas, noise; the same S draws for every image of the call (Captum
    draws them per row), so a map depends only on its image and the key.
    """

    _baselines_name = "baselines"

    def __init__(self, model, samples: int = 25, stdevs: float = 0.0, baselines=0.0, chunk_size: int | None = None):
        self.samples = whole_number("samples", samples)
        self.stdevs = finite_number("stdevs", stdevs, 0.0)
        self.baselines = _baseline(baselines, self._baselines_name)
        image_shape = explained(model).image_shape
        if image_shape is not None:
            _baseline_set(self.baselines, tuple(image_shape), self._baselines_name)
        self.chunk_size = max(1, 8192 // self.samples)
        self.cpu_chunk_size = max(1, 64 // self.samples)
        super().__init__(model, chunk_size)

    def _check(self, variables, images):
        _baseline_set(self.baselines, images.shape[1:], self._baselines_name)

    def draws(self, key, image_shape):
        """The S draws: ``(baseline indices (S,) int32, alphas (S,) float32, z (S, H, W, C))``."""
        m = len(_baseline_set(self.baselines, tuple(image_shape)))
        k_index, k_alpha, k_noise = jax.random.split(key, 3)
        index = jax.random.randint(k_index, (self.samples,), 0, m)
        alpha = jax.random.uniform(k_alpha, (self.samples,), jnp.float32)
        z = jax.random.normal(k_noise, (self.samples, *image_shape), jnp.float32)
        return index, alpha, z

    def _channel_maps(self, variables, images, targets, key):
        logits = self.logits(variables, images)
        t = _resolve_targets(logits, targets)
        index, alpha, z = self.draws(key, images.shape[1:])
        b = jnp.asarray(_baseline_set(self.baselines, images.shape[1:]))[index][:, None]  # (S, 1, H, W, C)
        noisy = images[None] + self.stdevs * z[:, None]                                  # (S, N, H, W, C)
        a = alpha.reshape(-1, 1, 1, 1, 1)
        scaled = a * noisy + (1.0 - a) * b
        grads, _ = self.target_logit_grad(variables, scaled.reshape(-1, *images.shape[1:]), jnp.tile(t, self.samples))
        return ((noisy - b) * grads.reshape(noisy.shape)).mean(0), logits


@register("expected_gradients", title="Expected Gradients", family="path", cost="medium", signed=True, random=True,
          options=(SHAP_SAMPLES, Option("references", None, "the reference set baselines are drawn from: a scalar, "
                                        "one image or a stack (M, H, W, C), in the model's input range (default 0)")),
          reference="Captum GradientShap with stdevs=0 (the same baselines and alphas)",
          paper="Erion et al., Nature Machine Intelligence 2021, arXiv:1906.10670")
class ExpectedGradients(GradientSHAP):
    """Expected Gradients (Erion et al., Nature Machine Intelligence 2021, arXiv:1906.10670), eq. 3.

    EG = E_{x' ~ D, alpha ~ U(0, 1)} [(x - x') * d y^c / d x (x' + alpha (x - x'))], estimated
    with S draws of a reference x'_k from the set ``references`` and alpha_k: exactly
    ``GradientSHAP`` with ``stdevs=0`` on the same references and alphas (so equal to Captum's
    GradientShap(stdevs=0.0) fed those draws). Pass training digits as ``references`` (the
    paper's choice); the default 0 is one baseline, i.e. Integrated Gradients with random
    alphas.
    """

    _baselines_name = "references"

    def __init__(self, model, samples: int = 25, references=0.0, chunk_size: int | None = None):
        self.references = references
        super().__init__(model, samples, 0.0, references, chunk_size)


# ----------------------------------------------------------------------------- Blur IG


@register("blur_ig", title="Blur IG", family="path", cost="medium", signed=True,
          options=(Option("steps", int, "sigmas on the blur path", low=1, high=10_000, choices=(20, 50, 100)),
                   Option("max_sigma", float, "the most blurred image's Gaussian sigma, in pixels", low=0.0,
                          choices=(10.0, 25.0, 50.0)),
                   Option("grad_step", float, "sigma step of the finite difference d blur / d sigma", low=1e-6,
                          choices=(0.01,)),
                   Option("sqrt", bool, "sigmas spaced as sqrt(i / steps) * sqrt(max_sigma) (False: linear)")),
          reference="PAIR saliency BlurIG (saliency.core.blur_ig)",
          paper="Xu et al., CVPR 2020, arXiv:2004.03383")
class BlurIG(Explainer):
    """Blur Integrated Gradients (Xu et al., CVPR 2020, arXiv:2004.03383), eq. 4.

    Path: the image blurred with a Gaussian of sigma_i (sigma_0 = 0 is the image, sigma_S =
    ``max_sigma``); BlurIG = -sum_{i<S} (sigma_{i+1} - sigma_i) * dB/dsigma(x, sigma_i) *
    d y^c / d x (B(x, sigma_i)), summed over channels, with dB/dsigma the forward difference
    (B(x, sigma_i + grad_step) - B(x, sigma_i)) / grad_step. As PAIR saliency 0.2.1
    (saliency/core/blur_ig.py:24-32 ``gaussian_blur``: ``ndimage.gaussian_filter(image,
    [sigma, sigma, 0], mode="constant")``; :94-128 the sigmas, the left Riemann sum and the
    final sign). The blur is PAIR's own scipy call in float64, run on the host
    (``jax.pure_callback`` inside the jitted call; the gradients are batched over all steps
    and images): zero padding (mode "constant", cval 0, i.e. 0 in the model's input units:
    black for a [0, 1] model, the mean grey for a standardised one), scipy's kernel radius
    int(4 sigma + 0.5), no blur across channels.

    PAIR with ``batch_size`` > 1 and ``sqrt=True`` weights every step of a batch with the
    last step's sigma difference (blur_ig.py:121 uses ``step_vector_diff[i]`` for the
    batch); this uses each step's own difference (PAIR's ``batch_size=1``, its default).
    """

    def __init__(self, model, steps: int = 100, max_sigma: float = 50.0, grad_step: float = 0.01,
                 sqrt: bool = False, chunk_size: int | None = None):
        self.steps = whole_number("steps", steps)
        self.max_sigma = finite_number("max_sigma", max_sigma, 0.0)
        self.grad_step = finite_number("grad_step", grad_step, 1e-6)
        if not isinstance(sqrt, (bool, np.bool_)):
            raise ValueError(f"sqrt: expected True or False, got {sqrt!r}")
        self.sqrt = bool(sqrt)
        # PAIR's sigmas, in its float64 Python arithmetic (blur_ig.py:94-98)
        sig = [float(k) * self.max_sigma / float(self.steps) for k in range(self.steps + 1)]
        self.sigmas = np.sqrt(sig) if self.sqrt else np.asarray(sig)
        self.chunk_size = max(1, 8192 // self.steps)
        self.cpu_chunk_size = max(1, 64 // self.steps)
        super().__init__(model, chunk_size)

    def blurred(self, images: np.ndarray):
        """Host blur of (n, H, W, C) images, PAIR's own filter (``scipy.ndimage.gaussian_filter``,
        sigma [s, s, 0], mode "constant", in float64): ``(x_step, d_blur)``, each (S, n, H, W, C)
        float32: B(x, sigma_i) and (B(x, sigma_i + grad_step) - B(x, sigma_i)) / grad_step, i < S."""
        from scipy import ndimage

        x = np.asarray(images, np.float64)

        def blur(image, sigma):  # PAIR's gaussian_blur (blur_ig.py:24-32)
            return image if sigma == 0 else ndimage.gaussian_filter(image, sigma=[sigma, sigma, 0], mode="constant")

        x_step = np.stack([[blur(im, v) for im in x] for v in self.sigmas[:-1]])
        x_next = np.stack([[blur(im, v + self.grad_step) for im in x] for v in self.sigmas[:-1]])
        return x_step.astype(np.float32), ((x_next - x_step) / self.grad_step).astype(np.float32)

    def _channel_maps(self, variables, images, targets, key):
        logits = self.logits(variables, images)
        t = _resolve_targets(logits, targets)
        # The blur runs on the host, scipy in float64 (jax.pure_callback): a blurred image is
        # nearly flat, and a max-pool's choice there is decided by the blurred values' last
        # bits, so they must be PAIR's own (a float32 blur in JAX moved whole gradients, 6e-3
        # of the map on RefNet, whose flat background is -0.42; a float64 matrix blur 9e-4).
        spec = jax.ShapeDtypeStruct((self.steps, *images.shape), jnp.float32)
        x_step, dblur = jax.pure_callback(self.blurred, (spec, spec), images)
        grads, _ = self.target_logit_grad(variables, x_step.reshape(-1, *images.shape[1:]), jnp.tile(t, self.steps))
        diff = jnp.asarray(np.diff(self.sigmas).astype(np.float32)).reshape(-1, 1, 1, 1, 1)
        return -(diff * dblur * grads.reshape(x_step.shape)).sum(0), logits


# ----------------------------------------------------------------------------- Guided IG


@register("guided_ig", title="Guided IG", family="path", cost="slow", signed=True,
          options=(Option("steps", int, "Riemann steps of the adaptive path", low=1, high=10_000,
                          choices=(50, 100, 200)),
                   Option("fraction", float, "share of the features moved each step (those of least |gradient|)",
                          low=0.0, high=1.0, choices=(0.1, 0.25, 0.5)),
                   Option("max_dist", float, "how far (in alpha) a feature may stray from the straight path",
                          low=0.0, high=1.0, choices=(0.0, 0.02, 0.1, 1.0)),
                   BASELINE),
          reference="PAIR saliency GuidedIG (saliency.core.guided_ig)",
          paper="Kapishnikov et al., CVPR 2021, arXiv:2106.09788")
class GuidedIG(Explainer):
    """Guided Integrated Gradients (Kapishnikov et al., CVPR 2021, arXiv:2106.09788), Algorithm 1.

    The path from the baseline x' to x is chosen as it goes: at step k (alpha_k = k / S) the
    point must reach the L1 distance ||x - x'||_1 (1 - alpha_k) from x, and it gets there by
    moving, repeatedly, the ``fraction`` of features with the smallest |gradient| (those not
    yet at their upper anchor) to x_max = x' + (x - x') min(alpha_k + max_dist, 1), the last
    move scaled by gamma so that the distance lands exactly; features left behind by more
    than ``max_dist`` are first pulled to x_min = x' + (x - x') max(alpha_k - max_dist, 0).
    Attribution: sum over all moves of (x_new - x_old) * gradient at the step's start, summed
    over channels. As PAIR saliency 0.2.1, saliency/core/guided_ig.py:78-160
    (``guided_ig_impl``): the quantile rule ``np.quantile(|g|, fraction, 'lower')`` (:131), the
    anchors (:106-110), gamma (:136-145), the translation helpers (:36-63).

    Batched: one gradient of every image a step (``lax.scan`` over steps), the inner moves a
    ``lax.while_loop`` per image (``vmap``), bounded by the number of moves that can happen.
    PAIR works in float64 and stops a step when the L1 distance is within 1e-9 of its target
    (``math.isclose``); in float32 that test is ``|l1 - target| <= 2^-20 ||x - x'||_1``, and a
    gamma <= 0 (the distance met by rounding) also ends the step.
    """

    def __init__(self, model, steps: int = 200, fraction: float = 0.25, max_dist: float = 0.02, baseline=0.0,
                 chunk_size: int | None = None):
        self.steps = whole_number("steps", steps)
        self.fraction = finite_number("fraction", fraction, 0.0)
        self.max_dist = finite_number("max_dist", max_dist, 0.0)
        for name, v in (("fraction", self.fraction), ("max_dist", self.max_dist)):
            if v > 1:
                raise ValueError(f"{name}: expected a finite number in [0, 1], got {v!r}")
        self.baseline = _baseline(baseline)
        image_shape = explained(model).image_shape
        if image_shape is not None:
            self.baseline = _baseline_for(self.baseline, tuple(image_shape))
        self.cpu_chunk_size = 16
        super().__init__(model, chunk_size)

    def _check(self, variables, images):
        _baseline_for(self.baseline, images.shape[1:])

    def _channel_maps(self, variables, images, targets, key):
        shape = images.shape
        baseline = jnp.broadcast_to(jnp.asarray(_baseline_for(self.baseline, shape[1:])), shape)
        logits = self.logits(variables, images)
        t = _resolve_targets(logits, targets)
        n_features = int(np.prod(shape[1:]))
        # np.quantile(..., method="lower"): the sorted value at floor(q (n - 1)) (float64)
        q_index = int(np.floor(self.fraction * (n_features - 1)))
        max_moves = -(-n_features // (q_index + 1)) + 2  # each full move takes >= q_index + 1 features
        x_in = images.reshape(len(images), -1)
        x_base = baseline.reshape(len(images), -1)
        diff = x_in - x_base
        l1_total = jnp.abs(diff).sum(-1)                    # (N,)
        tol = l1_total * 2.0 ** -20
        steps, max_dist = self.steps, self.max_dist

        def moves(x, grad_actual, alpha, l1_t, x_i, x_b, tol_i):
            """One image's moves at one step: PAIR's ``while gamma > 1.0`` loop (guided_ig.py:113-146)."""
            alpha_min, alpha_max = jnp.maximum(alpha - max_dist, 0.0), jnp.minimum(alpha + max_dist, 1.0)
            x_min = x_b + (x_i - x_b) * alpha_min
            x_max = x_b + (x_i - x_b) * alpha_max
            l1_target = l1_t * (1 - alpha)

            def body(state):
                x, attr, _, i = state
                x_old = x
                moving = x_i - x_b != 0
                x_alpha = jnp.where(moving, (x - x_b) / jnp.where(moving, x_i - x_b, 1.0), alpha_max)
                x = jnp.where(x_alpha < alpha_min, x_min, x)
                l1_current = jnp.abs(x - x_i).sum()
                close = jnp.abs(l1_target - l1_current) <= tol_i
                g = jnp.where(x == x_max, jnp.inf, jnp.abs(grad_actual))
                threshold = jnp.sort(g)[q_index]
                s = (g <= threshold) & (g != jnp.inf)
                l1_s = (jnp.abs(x - x_max) * s).sum()
                gamma = jnp.where(l1_s > 0, (l1_current - l1_target) / jnp.where(l1_s > 0, l1_s, 1.0), jnp.inf)
                full = gamma > 1.0
                moved = jnp.where(full, x_max, x + (x_max - x) * gamma)
                x = jnp.where(close | (gamma <= 0), x, jnp.where(s, moved, x))
                done = close | ~full
                return x, attr + (x - x_old) * grad_actual, done, i + 1

            x, attr, _, _ = jax.lax.while_loop(lambda st: ~st[2] & (st[3] < max_moves), body,
                                               (x, jnp.zeros_like(x), jnp.asarray(False), 0))
            return x, attr

        def step(carry, k):
            x, attr = carry
            grads, _ = self.target_logit_grad(variables, x.reshape(shape), t)
            alpha = (k + 1.0) / steps
            x, add = jax.vmap(moves, (0, 0, None, 0, 0, 0, 0))(x, grads.reshape(x.shape), alpha, l1_total,
                                                              x_in, x_base, tol)
            return (x, attr + add), None

        (_, attr), _ = jax.lax.scan(step, (x_base, jnp.zeros_like(x_base)), jnp.arange(steps, dtype=jnp.float32))
        attr = jnp.where((l1_total > 0)[:, None], attr, 0.0)
        return attr.reshape(shape), logits


# ----------------------------------------------------------------------------- XRAI

#: PAIR's Felzenszwalb settings (saliency/core/xrai.py:37-41)
FELZENSZWALB_SCALES = (50, 100, 150, 250, 500, 1200)
FELZENSZWALB_SIGMA = 0.8
FELZENSZWALB_RESIZE = (224, 224)
FELZENSZWALB_MIN_SIZE = 150
DILATION_RADIUS = 5


def _skimage():
    try:
        import skimage.morphology
        import skimage.segmentation
        import skimage.transform
    except ImportError:
        raise ImportError("XRAI needs scikit-image for its segmentation: pip install scikit-image") from None
    return skimage


def felzenszwalb_segments(image: np.ndarray) -> list[np.ndarray]:
    """PAIR's ``_get_segments_felzenszwalb`` (xrai.py:73-128) for one (H, W, C) image: min-max
    scaled to [-1, 1], resized to 224x224 (cubic, anti-aliased), Felzenszwalb at six scales
    (sigma 0.8, min size 150), labels resized back (nearest), one mask per label, each
    dilated by a disk of radius 5. Returns boolean (H, W) masks."""
    sk = _skimage()
    im = np.asarray(image)
    im_max, im_min = np.max(im), np.min(im)
    # PAIR's _normalize_image to [-1, 1]; a flat image (where PAIR divides 0 by 0 and segments
    # NaNs) is one constant picture here, so one segment
    im = (im - im_min) / (im_max - im_min) * 2.0 - 1.0 if im_max > im_min else np.zeros_like(im, np.float64)
    im = sk.transform.resize(im, FELZENSZWALB_RESIZE, order=3, mode="constant", preserve_range=True,
                             anti_aliasing=True)
    masks = []
    for scale in FELZENSZWALB_SCALES:
        seg = sk.segmentation.felzenszwalb(im, scale=scale, sigma=FELZENSZWALB_SIGMA, min_size=FELZENSZWALB_MIN_SIZE)
        seg = sk.transform.resize(seg, image.shape[:2], order=0, preserve_range=True, mode="constant",
                                  anti_aliasing=False).astype(int)
        masks += [seg == label for label in range(seg.min(), seg.max() + 1)]
    footprint = sk.morphology.disk(DILATION_RADIUS)
    return [sk.morphology.dilation(m, footprint=footprint) for m in masks]


def xrai_regions(attr: np.ndarray, masks: list[np.ndarray], area_threshold: float = 1.0, min_pixel_diff: int = 50):
    """PAIR's greedy ``XRAI._xrai`` (xrai.py:455-540) on one (H, W) attribution map:
    ``(map (H, W) float64: each region's gain density, ranks (H, W) int: 1 = added first by
    gain ...)``. Repeatedly adds the mask whose new pixels have the highest mean attribution
    (masks adding under ``min_pixel_diff`` new pixels are dropped) until ``area_threshold``
    of the image is covered; what no mask covered gets its own mean and the last rank."""
    out = np.full(attr.shape, -np.inf)
    current = np.zeros(attr.shape, bool)
    trace = []
    remaining = dict(enumerate(masks))
    area = 0.0
    while area <= area_threshold:
        best_gain, best_key, drop = -np.inf, None, []
        for k, mask in remaining.items():
            new = mask & ~current
            if new.sum() < min_pixel_diff:
                drop.append(k)
                continue
            gain = attr[new].mean()
            if gain > best_gain:
                best_gain, best_key = gain, k
        for k in drop:
            del remaining[k]
        if not remaining:
            break
        new = remaining.pop(best_key) & ~current
        trace.append((new, best_gain))
        current |= new
        area = current.mean()
        out[new] = best_gain
    uncovered = out == -np.inf
    out[uncovered] = attr[uncovered].mean() if uncovered.any() else -np.inf
    ordered = [m for m, _ in sorted(trace, key=lambda v: -v[1])] + ([uncovered] if uncovered.any() else [])
    ranks = np.zeros(attr.shape, int)
    for i, m in enumerate(ordered):
        ranks[m] = i + 1
    return out, ranks


@register("xrai", title="XRAI", family="path", cost="slow", signed=True,
          options=(Option("steps", int, "IG steps per baseline (two baselines: the image's min and max)",
                          low=2, high=10_000, choices=(20, 50, 100)),
                   Option("area_threshold", float, "share of the image the greedy regions cover", low=0.0,
                          high=1.0, choices=(0.5, 1.0))),
          reference="PAIR saliency XRAI (saliency.core.xrai, algorithm='full')",
          paper="Kapishnikov et al., ICCV 2019, arXiv:1906.02825")
class XRAI(Explainer):
    """XRAI (Kapishnikov et al., ICCV 2019, arXiv:1906.02825), sec. 3 / Algorithm 1.

    1. Integrated Gradients as PAIR's XRAI computes it (xrai.py:150-175, 350-362;
       integrated_gradients.py:67-87): the mean over two constant baselines, the image's min
       and its max, of (x - x') (1/S) sum_{a in linspace(0, 1, S)} grad(x' + a (x - x')); the
       largest over channels. Batched and jitted: every image's 2 S path points in one call.
    2. Felzenszwalb segments at six scales (``felzenszwalb_segments``), in numpy/scikit-image.
    3. The greedy region selection by gain density (``xrai_regions``), in numpy.

    The map is each region's gain (mean attribution of the pixels it added). ``ranking``
    gives the regions' order (1 = most important), which covers every pixel. Needs
    scikit-image (``pip install scikit-image``).
    """

    cpu_chunk_size = 8

    def __init__(self, model, steps: int = 100, area_threshold: float = 1.0, chunk_size: int | None = None):
        _skimage()
        self.steps = whole_number("steps", steps, 2)
        self.area_threshold = finite_number("area_threshold", area_threshold, 0.0)
        if self.area_threshold > 1:
            raise ValueError(f"area_threshold: expected a finite number in [0, 1], got {area_threshold!r}")
        self.chunk_size = max(1, 4096 // self.steps)
        super().__init__(model, chunk_size)

    def ig_maps(self, variables, images, targets):
        """PAIR XRAI's IG attribution (n, H, W, C) and the logits."""
        logits = self.logits(variables, images)
        t = _resolve_targets(logits, targets)
        lo = images.min(axis=(1, 2, 3), keepdims=True)
        hi = images.max(axis=(1, 2, 3), keepdims=True)
        alphas = jnp.asarray(np.linspace(0, 1, self.steps)).astype(jnp.float32).reshape(-1, 1, 1, 1, 1)
        total = 0.0
        for b in (lo * jnp.ones_like(images), hi * jnp.ones_like(images)):
            path = b[None] + alphas * (images - b)[None]  # (S, n, H, W, C)
            grads, _ = self.target_logit_grad(variables, path.reshape(-1, *images.shape[1:]), jnp.tile(t, self.steps))
            total = total + grads.reshape(path.shape).sum(0) * (images - b) / self.steps
        return total / 2, logits

    def _maps(self, variables, images, targets, key):
        attr, logits = self.ig_maps(variables, images, targets)
        return attr.max(-1), logits

    def regions(self, params, batch_stats, images, target_classes=None, progress=None):
        """``(maps (N, H, W) float32, ranks (N, H, W) int, logits)``: the regions' gains, their
        order (1 = added first, the highest gain) and the images' logits."""
        x = self.target.images(images)
        attr, logits = super().attribute(params, batch_stats, x, target_classes, progress=progress,
                                         return_logits=True)  # (N, H, W): step 1, jitted
        maps, ranks = zip(*(xrai_regions(np.asarray(a, np.float64), felzenszwalb_segments(img),
                                         self.area_threshold) for a, img in zip(attr, x)))
        return np.stack(maps).astype(np.float32), np.stack(ranks), logits

    def attribute(self, params, batch_stats, images, target_classes=None, key=None, progress=None,
                  return_logits: bool = False):
        """XRAI's maps (N, H, W): each pixel holds its region's gain (``key`` is unused)."""
        maps, _, logits = self.regions(params, batch_stats, images, target_classes, progress)
        return (maps, logits) if return_logits else maps

    def ranking(self, params, batch_stats, images, target_classes=None) -> np.ndarray:
        """The regions' order (N, H, W) int: 1 for the region added first (highest gain)."""
        return self.regions(params, batch_stats, images, target_classes)[1]


__all__ = ["BlurIG", "ExpectedGradients", "GradientSHAP", "GuidedIG", "IntegratedGradients", "XRAI",
           "felzenszwalb_segments", "xrai_regions"]

"""Draw a digit, watch every explanation: a local web app around the MNIST CNN.

    python explore_mnist_xai.py                          # shipped checkpoint, a free port on 127.0.0.1
    python explore_mnist_xai.py --port 7860              # a fixed port
    python explore_mnist_xai.py --checkpoint checkpoints # your own training run
    python explore_mnist_xai.py --checkpoint A --checkpoint B   # two models side by side
    python explore_mnist_xai.py --host 0.0.0.0 --port 7860      # share on your network (no login!)

It prints the address to open. Draw with the pen (or pick one of the 200 shipped MNIST test
digits, or paste/upload a picture): the app shows the 28x28 image the model sees (made the
way MNIST was: mnist_preprocess.to_mnist), the prediction with all ten class probabilities,
and the maps of ten explanation methods (``methods_in_order``, of the registry's) overlaid on the
digit, each titled with its deletion AUC for this digit (mnist_xai_metrics.deletion_insertion;
lower = the map found the pixels the prediction rests on). "Compare with class" shows the
maps for the predicted class and the chosen one side by side ("why 4 and not 9"). The fast
methods appear first; Score-CAM, Occlusion, Integrated Gradients and SmoothGrad fill in after.

Classes are named by the checkpoint's class names (the digits for MNIST; a Fashion-MNIST or
KMNIST checkpoint from train_mnist.py --dataset shows its own). The probabilities shown are
calibrated, softmax(logits / T) with the temperature the checkpoint stores (fitted on the
validation split), and the model's line says so with its T; a checkpoint without one shows
plain softmax and says that instead. The maps do not depend on T (the explanations use the
logits); the deletion AUCs track the probability as shown, softmax(logits / T), as
evaluate_xai.py scores them.

Nothing leaves the machine: no share link, no analytics, no fonts or scripts from the web.
A missing or broken checkpoint is one line on stderr and exit code 2, before the server starts.
MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges, CC BY-SA 3.0.
"""
from __future__ import annotations

import base64
import html
import io
import os
import re
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import cli

# ----------------------------------------------------------------------------- what is shown

TITLES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAM++",
    "scorecam": "Score-CAM",
    "saliency": "Saliency",
    "gradient_x_input": "Gradient×Input",
    "integrated_gradients": "Integrated Gradients",
    "smoothgrad": "SmoothGrad",
    "smoothgrad_sq": "SmoothGrad²",
    "vargrad": "VarGrad",
    "occlusion": "Occlusion",
}
#: Methods computed together and shown as they finish: the first stage answers a new drawing
#: with the prediction, GradCAM and saliency; the forward-pass-heavy methods come last.
STAGES = (("gradcam", "saliency"), ("gradcam++", "gradient_x_input"), ("smoothgrad",),
          ("integrated_gradients",), ("scorecam",), ("occlusion",))
SLOW = ("smoothgrad", "integrated_gradients", "scorecam", "occlusion")
MORE = ("smoothgrad_sq", "vargrad")  # shown after the stages, one stage each

IG_STEPS = (16, 32, 64, 100)
SG_SAMPLES = (10, 25, 50)
SG_NOISE = (0.05, 0.1, 0.15, 0.25, 0.4)
OCCLUSION_PATCH = (2, 4, 6, 8)
DELETION_STEPS = 16
MAX_UPLOAD_CHARS = 16_000_000  # a canvas data URL longer than this is refused (about 12 MB of PNG)
CANVAS = 280  # px, the drawing canvas (10x the 28x28 field)

MNIST_CREDIT = ("MNIST sample digits (the test set): Yann LeCun, Corinna Cortes, Christopher J.C. Burges, "
                "licensed CC BY-SA 3.0.")


def methods_in_order() -> list[str]:
    """The methods the page shows, in stage order: ``STAGES`` and then ``MORE``, those of them
    that are registered. The page explains every stroke, so it shows these fast-enough ten; the
    library's other methods (``python -m mnist_xai`` lists them) are a call away in Python."""
    import mnist_xai_visualizations as X
    return [m for stage in (*STAGES, *((m,) for m in MORE)) for m in stage if m in X.METHODS]


def stages() -> list[tuple[str, ...]]:
    import mnist_xai_visualizations as X
    out = [tuple(m for m in stage if m in X.METHODS) for stage in (*STAGES, *((m,) for m in MORE))]
    return [s for s in out if s]


@dataclass(frozen=True)
class Options:
    """The settings that change a method's picture (each distinct value compiles once)."""

    ig_steps: int = 32
    sg_samples: int = 25
    sg_noise: float = 0.15
    occlusion_patch: int = 4

    @classmethod
    def parse(cls, ig_steps=None, sg_samples=None, sg_noise=None, occlusion_patch=None) -> "Options":
        """From the page's dropdowns (strings or numbers); a value off the menu is a ValueError."""
        d = cls()

        def pick(name, value, menu, kind):
            if value is None or value == "":
                return getattr(d, name)
            try:
                v = kind(value)
            except (TypeError, ValueError):
                v = None
            if v not in menu:
                raise ValueError(f"{name}: expected one of {', '.join(map(str, menu))}, got {value!r}")
            return v

        return cls(pick("ig_steps", ig_steps, IG_STEPS, int), pick("sg_samples", sg_samples, SG_SAMPLES, int),
                   pick("sg_noise", sg_noise, SG_NOISE, float),
                   pick("occlusion_patch", occlusion_patch, OCCLUSION_PATCH, int))

    def for_method(self, method: str) -> dict:
        if method == "integrated_gradients":
            return {"steps": self.ig_steps}
        if method == "smoothgrad":
            return {"samples": self.sg_samples, "noise_level": self.sg_noise}
        if method == "occlusion":
            p = self.occlusion_patch
            return {"patch": p, "stride": 2 if p <= 4 else p // 2}
        return {}


# ----------------------------------------------------------------------------- models and methods


@dataclass
class LoadedModel:
    name: str  # what the page calls it
    model: object
    params: object
    batch_stats: object
    description: str = ""
    class_names: tuple = tuple(str(d) for d in range(10))  # the checkpoint's (mnist_checkpoint.checkpoint_info)
    temperature: float | None = None  # shown probabilities: softmax(logits / T); None: plain softmax


def shown_probabilities(logits, temperature: float | None) -> np.ndarray:
    """The probabilities the page shows: softmax(logits / T), plain softmax when T is None."""
    from mnist_calibration import softmax
    return softmax(logits, temperature or 1.0)


def load_models(paths) -> list[LoadedModel]:
    """Load each checkpoint (None: the shipped one). Raises CheckpointError with one line."""
    from mnist_checkpoint import PRETRAINED_DIR, checkpoint_info, load_checkpoint
    from mnist_data import DISPLAY_NAMES

    out = []
    for path in paths or [None]:
        params, batch_stats, model, meta = load_checkpoint(path)
        info = checkpoint_info(meta)
        name = Path(path).name if path else PRETRAINED_DIR.name
        acc = meta.get("val_accuracy")
        described = f"{meta.get('num_params', 0):,} parameters" if meta.get("num_params") else ""
        if info.dataset != "mnist":
            described += f"{', ' if described else ''}trained on {DISPLAY_NAMES[info.dataset]}"
        if isinstance(acc, (int, float)):
            described += f"{', ' if described else ''}validation accuracy {100 * acc:.2f}%"
        described += (f"{', ' if described else ''}calibrated probabilities (T = {info.temperature:.3g})"
                      if info.calibrated else f"{', ' if described else ''}plain softmax (no temperature stored)")
        out.append(LoadedModel(name or str(path), model, params, batch_stats, described, info.class_names,
                               info.temperature))
    if len(out) == 2 and out[0].name == out[1].name:
        out[0].name, out[1].name = f"A: {out[0].name}", f"B: {out[1].name}"
    return out


_EXPLAINERS: dict = {}
_EXPLAINERS_LOCK = threading.Lock()


def explainer_for(model, method: str, options: Options = Options()):
    """One explainer per (architecture, method, options), shared by every session and model of
    that architecture: each compiles once per input shape (weights are arguments, not constants)."""
    import mnist_xai_visualizations as X

    kwargs = options.for_method(method)
    try:
        arch = repr(sorted(model.config().items())) if hasattr(model, "config") else repr(model)
    except Exception:  # not our CNN: one entry per module object
        arch = f"id{id(model)}"
    key = (arch, method, tuple(sorted(kwargs.items())))
    with _EXPLAINERS_LOCK:
        if key not in _EXPLAINERS:
            _EXPLAINERS[key] = X.make_explainer(method, model, **kwargs)
        return _EXPLAINERS[key]


# ----------------------------------------------------------------------------- the computation


@dataclass
class ModelResult:
    """One model's answer for one digit, filled in stage by stage."""

    name: str
    description: str
    probs: np.ndarray | None = None  # (10,) as shown: softmax(logits / T), the model's temperature
    class_names: tuple = tuple(str(d) for d in range(10))
    pred: int | None = None
    targets: list[int] = field(default_factory=list)  # [predicted] or [predicted, chosen]
    maps: dict = field(default_factory=dict)  # method -> (T, 28, 28) raw maps
    pictures: dict = field(default_factory=dict)  # method -> T PNG data URLs of the overlays
    aucs: dict = field(default_factory=dict)  # method -> (T,) deletion AUCs
    error: str | None = None


@dataclass
class Report:
    image: np.ndarray  # the (28, 28) image the models see
    models: list[ModelResult]
    pending: tuple[str, ...]  # methods whose maps are still to come
    seconds: float  # since the request arrived
    done: bool = False


def _snapshot(results: list[ModelResult]) -> list[ModelResult]:
    """Copies for a Report, so that a Report keeps what it showed while the run goes on."""
    return [replace(r, targets=list(r.targets), maps=dict(r.maps), pictures=dict(r.pictures), aucs=dict(r.aucs))
            for r in results]


def overlay_picture(image: np.ndarray, raw: np.ndarray, signed: bool) -> str:
    """A map over the digit as a PNG data URL: min-max scaled (``normalize_maps``), signed
    maps by their positive part (the evidence for the class), ``overlay_heatmap``'s colours."""
    import mnist_xai_visualizations as X

    shown = np.maximum(raw, 0) if signed else raw
    return png_data_url(X.overlay_heatmap(image, np.asarray(X.normalize_maps(shown))))


class Explorer:
    """The app's computation, without any web framework: ``run`` yields a ``Report`` as each
    stage's maps arrive, then as their AUCs do; the last one is complete. Holds no per-user
    state (the page keeps that), so any number of tabs can share one Explorer."""

    def __init__(self, models: list[LoadedModel], workers: int = 2):
        import jax

        if not models:
            raise ValueError("models: expected at least one model")
        self.models = models
        self.methods = methods_in_order()
        self.stages = stages()
        # The weights go to the device once, not with every call.
        for m in models:
            m.params, m.batch_stats = jax.device_put((m.params, m.batch_stats))
        # The rows of a request (two models, the predicted and the chosen class) run side by
        # side: XLA runs this small CNN's calls on about one core each.
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="explore")

    def _row(self, m: LoadedModel, image: np.ndarray, methods, options: Options, target: int | None):
        """One target row of one stage: ``{method: (raw map, picture)}``, and the logits of
        the first call (``target=None``: the predicted class)."""
        import mnist_xai_visualizations as X

        x = image[None, :, :, None]
        out, logits = {}, None
        for method in methods:
            e = explainer_for(m.model, method, options)
            if logits is None:
                raw, logits = e.attribute(m.params, m.batch_stats, x, None if target is None else [target],
                                          return_logits=True)
            else:
                raw = e.attribute(m.params, m.batch_stats, x, None if target is None else [target])
            out[method] = (raw[0], overlay_picture(image, raw[0], bool(getattr(X.METHODS[method], "signed", False))))
        return out, logits[0]

    def _aucs(self, m: LoadedModel, r: ModelResult, image: np.ndarray, methods) -> None:
        """Deletion AUCs of every map of a stage in one call (all methods, every target row)."""
        import mnist_xai_metrics as M

        stacked = np.concatenate([r.maps[k] for k in methods])
        targets = np.tile(np.asarray(r.targets, np.int32), len(methods))
        images = np.repeat(image[None, :, :, None], len(stacked), axis=0)
        probs = np.repeat(r.probs[None].astype(np.float32), len(stacked), axis=0)  # as shown: softmax(z / T)
        aucs = M.deletion_insertion(m.model, m.params, m.batch_stats, images, stacked, targets,
                                    steps=DELETION_STEPS, probs=probs,
                                    temperature=m.temperature or 1.0)["deletion_auc"]
        t = len(r.targets)
        for i, method in enumerate(methods):
            r.aucs[method] = np.asarray(aucs[i * t:(i + 1) * t])

    def _gather(self, jobs, results):
        """Wait for ``[(result index, future)]``; a ValueError stops that model, not the page."""
        out = []
        for i, job in jobs:
            try:
                out.append((i, job.result()))
            except ValueError as e:  # e.g. an option this model refuses
                results[i].error = cli.first_line(e)
        return out

    def run(self, image: np.ndarray, chosen: int | None = None, options: Options = Options(),
            stages: int | None = None):
        """Yield Reports for one digit: image (28, 28) float in [0, 1]; ``chosen``: a class to
        compare the prediction with (None: the prediction alone); ``stages``: stop after that
        many stages (None: all)."""
        t0 = time.perf_counter()
        image = np.asarray(image, np.float32)
        if image.shape != (28, 28):
            raise ValueError(f"image: expected the (28, 28) model input, got shape {image.shape}")
        if chosen is not None and not (isinstance(chosen, (int, np.integer)) and not isinstance(chosen, bool)
                                       and 0 <= chosen <= 9):
            raise ValueError(f"chosen: expected a class 0-9 or None, got {chosen!r}")
        results = [ModelResult(m.name, m.description, class_names=tuple(m.class_names)) for m in self.models]
        remaining = list(self.methods)
        for k, stage in enumerate(self.stages[:stages]):
            live = [i for i, r in enumerate(results) if r.error is None]
            jobs = []
            for i in live:
                r, m = results[i], self.models[i]
                rows = [r.pred if k else None] + ([chosen] if chosen is not None and chosen != r.pred else [])
                jobs += [(i, self._pool.submit(self._row, m, image, stage, options, t)) for t in rows]
            by_model: dict[int, list] = {}
            for i, (row, logits) in self._gather(jobs, results):
                by_model.setdefault(i, []).append((row, logits))
            for i, rows in by_model.items():
                r = results[i]
                if r.pred is None:  # the first stage's first row explained the predicted class
                    logits = rows[0][1]
                    r.probs = shown_probabilities(np.asarray(logits), self.models[i].temperature)
                    r.pred = int(np.argmax(logits))
                    r.targets = [r.pred] + ([chosen] if chosen is not None and chosen != r.pred else [])
                    rows = rows[:len(r.targets)]  # the chosen class was the prediction: one row
                for method in stage:
                    r.maps[method] = np.stack([row[method][0] for row, _ in rows])
                    r.pictures[method] = [row[method][1] for row, _ in rows]
            remaining = [m for m in remaining if m not in stage]
            if k == 0:  # the first answer: prediction and maps, their AUCs right after
                yield Report(image, _snapshot(results), tuple(remaining), time.perf_counter() - t0)
            live = [i for i, r in enumerate(results) if r.error is None and all(m in r.maps for m in stage)]
            self._gather([(i, self._pool.submit(self._aucs, self.models[i], results[i], image, stage))
                          for i in live], results)
            yield Report(image, _snapshot(results), tuple(remaining), time.perf_counter() - t0,
                         done=not remaining or k + 1 == stages)

    def warm_up(self, options: Options = Options(), sample: np.ndarray | None = None,
                stages: int | None = None) -> float:
        """Compile (or load from the on-disk cache) the programs a request needs, for the
        prediction alone and compared with another class, for the first ``stages`` stages
        (None: all). Returns the seconds it took."""
        t0 = time.perf_counter()
        if sample is None:
            from mnist_data import load_sample_digits
            sample = load_sample_digits().images[0, :, :, 0] / 255.0
        first = None
        for chosen in (None, "other"):  # one target row, then two (their AUC calls differ in size)
            if chosen == "other":
                chosen = (first + 1) % 10
            for rep in self.run(sample, chosen, options, stages):
                first = rep.models[0].pred
        return time.perf_counter() - t0


# ----------------------------------------------------------------------------- inputs


class InputError(ValueError):
    """What the page should say instead of explaining (an empty canvas, an unreadable upload)."""


def png_data_url(rgb: np.ndarray) -> str:
    """uint8 or [0, 1] float (H, W[, C]) -> a data: URL of its PNG."""
    from PIL import Image

    a = np.asarray(rgb)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_data_url(value: str) -> np.ndarray:
    """A canvas's data URL -> its pixels (H, W, C) uint8; InputError if it is not an image."""
    from PIL import Image, UnidentifiedImageError

    if len(value) > MAX_UPLOAD_CHARS:
        raise InputError(f"the drawing is too large ({len(value) / 1e6:.0f} MB); clear the canvas and draw again")
    m = re.match(r"data:image/[a-z]+;base64,(.*)$", value, re.S)
    if not m:
        raise InputError("the canvas sent something that is not an image; clear it and draw again")
    try:
        with Image.open(io.BytesIO(base64.b64decode(m.group(1), validate=False))) as im:
            im.load()
            return np.asarray(im.convert("RGBA"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InputError("the canvas image could not be read; clear it and draw again") from None


def sample_canvas_value(index: int, digit: np.ndarray) -> str:
    """What the page's canvas is set to when a sample digit is picked: its index (so the exact
    digit is explained) and a 280x280 picture of it in ink (black, alpha = intensity) to draw on."""
    from PIL import Image

    big = np.asarray(Image.fromarray(np.asarray(digit, np.uint8).reshape(28, 28)).resize(
        (CANVAS, CANVAS), Image.Resampling.BILINEAR))
    rgba = np.zeros((CANVAS, CANVAS, 4), np.uint8)
    rgba[..., 3] = big
    return f"sample:{int(index)}|{png_data_url(rgba)}"


def interpret(value, samples=None):
    """Whatever the page sent -> ``(image (28, 28) float32, where it came from, notes)``.

    ``value``: the canvas's string ("" = empty, a data URL, or "sample:<i>|..." for a picked
    sample digit) or an uploaded picture (an array). Raises InputError with a message for people.
    """
    from mnist_preprocess import NoInkError, to_mnist

    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError("The canvas is empty: draw a digit, pick a sample, or paste a picture.")
    if isinstance(value, str) and value.startswith("sample:"):
        m = re.match(r"sample:(\d+)\|", value)
        if not m or samples is None or int(m.group(1)) >= len(samples.labels):
            raise InputError("unknown sample digit; pick one from the list")
        i = int(m.group(1))
        return (samples.images[i, :, :, 0].astype(np.float32) / 255.0,
                f"MNIST test digit #{i} (labelled {samples.labels[i]})", ())
    pixels = decode_data_url(value) if isinstance(value, str) else value
    where = "your drawing" if isinstance(value, str) else "the picture"
    try:
        image, info = to_mnist(pixels, return_info=True)
    except NoInkError as e:
        raise InputError(f"Nothing to explain: {e}.") from None
    except ValueError as e:
        raise InputError(f"That picture cannot be read as a digit: {cli.first_line(e)}") from None
    return image, where, info.notes


# ----------------------------------------------------------------------------- rendering


def render_input(image: np.ndarray | None, where: str = "", notes=()) -> str:
    if image is None:
        return ('<div class="xe-input empty"><div class="xe-caption">The model sees the 28x28 image made '
                'from your drawing here.</div></div>')
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    how = (" as it is in MNIST" if where.startswith("MNIST") else
           ", cropped to its ink, scaled into 20x20 and centred by its centre of mass in 28x28, as MNIST was made")
    return (f'<div class="xe-input"><img class="xe-px" id="xe-model-input" src="{png_data_url(image)}" '
            f'alt="the 28x28 image the model sees" width="112" height="112">'
            f'<div><div class="xe-caption">What the model sees: {html.escape(where)}{how}.</div>'
            + (f'<ul class="xe-notes">{items}</ul>' if items else "") + "</div></div>")


def render_model(r: ModelResult | None, image: np.ndarray | None, pending=(), index: int = 0,
                 name: str = "", description: str = "") -> str:
    """One model's panel: prediction, the ten probabilities, every method's map(s) with AUCs."""
    name = r.name if r is not None else name
    description = r.description if r is not None else description
    head = (f'<div class="xe-head"><b>{html.escape(name)}</b>'
            + (f' <span class="xe-dim">{html.escape(description)}</span>' if description else "") + "</div>")
    if r is None or r.pred is None:
        msg = r.error if r is not None and r.error else "Draw a digit to see the prediction and its explanations."
        return f'<div class="xe-model" data-model="{index}">{head}<div class="xe-wait">{html.escape(msg)}</div></div>'
    p = r.probs
    names = [html.escape(n) for n in r.class_names]
    chosen = r.targets[1] if len(r.targets) > 1 else None
    bars = []
    for c in range(len(p)):
        cls = " pred" if c == r.pred else (" chosen" if c == chosen else "")
        bars.append(f'<div class="xe-bar{cls}" data-class="{c}"><span class="xe-d">{names[c]}</span>'
                    f'<span class="xe-track"><span class="xe-fill" style="width:{100 * p[c]:.1f}%"></span></span>'
                    f'<span class="xe-p">{100 * p[c]:.1f}%</span></div>')
    pred = (f'<div class="xe-pred" data-pred="{r.pred}">Prediction: <b>{names[r.pred]}</b> ({100 * p[r.pred]:.1f}%)'
            + (f' &nbsp;·&nbsp; compared with <b class="xe-chosen-d">{names[chosen]}</b> ({100 * p[chosen]:.1f}%): '
               f'why {names[r.pred]} and not {names[chosen]}?' if chosen is not None else "") + "</div>")
    figures = []
    for method in methods_in_order():
        cells = []
        for j, t in enumerate(r.targets):
            label = "predicted" if j == 0 else "chosen"
            if method in r.maps:
                auc = r.aucs.get(method)
                auc_text = f"deletion AUC {auc[j]:.3f}" if auc is not None else "deletion AUC …"
                cells.append(f'<div class="xe-cell" data-target="{t}"><img class="xe-px" src="{r.pictures[method][j]}" '
                             f'alt="{TITLES.get(method, method)} map for class {names[t]}" width="96" height="96">'
                             f'<div class="xe-auc">class {names[t]} ({label})<br>{auc_text}</div></div>')
            else:
                cells.append(f'<div class="xe-cell pending" data-target="{t}"><div class="xe-spin">computing…</div>'
                             f'<div class="xe-auc">class {names[t]} ({label})<br>&nbsp;</div></div>')
        state = "done" if method in r.maps else "pending"
        figures.append(f'<figure class="xe-map {state}" data-method="{method}"><figcaption>{TITLES.get(method, method)}'
                       f'</figcaption><div class="xe-pair">{"".join(cells)}</div></figure>')
    error = f'<div class="xe-error">{html.escape(r.error)}</div>' if r.error else ""
    return (f'<div class="xe-model" data-model="{index}" data-pred="{r.pred}">{head}{pred}'
            f'<div class="xe-bars">{"".join(bars)}</div>{error}<div class="xe-maps">{"".join(figures)}</div></div>')


def render_status(text: str, kind: str = "info") -> str:
    return f'<div class="xe-status {kind}" data-kind="{kind}">{html.escape(text)}</div>'


# ----------------------------------------------------------------------------- the page's handlers


class App:
    """The page's event handlers as plain generators (testable without a browser or Gradio).

    Each yields tuples ``(input_html, status_html, model_html..., state)``; ``state`` (kept by
    the page per browser tab) is the current 28x28 image and where it came from, so a new
    target class or option re-explains it without the drawing being sent again.
    """

    def __init__(self, explorer: Explorer, samples=None):
        self.explorer = explorer
        self.samples = samples

    @property
    def n_models(self) -> int:
        return len(self.explorer.models)

    def placeholders(self, message: str, kind: str = "info", state=None):
        ms = self.explorer.models
        return (render_input(None), render_status(message, kind),
                *[render_model(None, None, index=i, name=m.name, description=m.description) for i, m in enumerate(ms)],
                state)

    def _explain(self, image, where, notes, target, options_values):
        state = {"image": image, "where": where, "notes": tuple(notes)}
        try:
            options = Options.parse(*options_values)
            chosen = None if target in (None, "", "none", "—") else int(target)
        except (TypeError, ValueError) as e:
            yield self.placeholders(f"Bad setting: {cli.first_line(e)}", "error", state)
            return
        inp = render_input(image, where, notes)
        for rep in self.explorer.run(image, chosen, options):
            if rep.done:
                text = f"Done in {rep.seconds:.2f} s (server time)."
            else:
                text = f"{rep.seconds:.2f} s: computing {', '.join(TITLES.get(k, k) for k in rep.pending)}…"
            outs = [render_model(r, image, rep.pending, i) for i, r in enumerate(rep.models)]
            yield (inp, render_status(text, "done" if rep.done else "busy"), *outs, state)

    def _guard(self, gen_fn, *args):
        """Run a handler; anything unexpected becomes one line in the page and on stderr."""
        try:
            yield from gen_fn(*args)
        except InputError as e:
            yield self.placeholders(str(e), "warn", None)
        except RuntimeError as e:
            if "after shutdown" in str(e):  # the server is stopping (Ctrl-C) with a request in flight
                return
            print(f"explore_mnist_xai: error: {type(e).__name__}: {cli.first_line(e)}", file=sys.stderr, flush=True)
            yield self.placeholders(f"Something went wrong: {cli.first_line(e)}", "error", None)
        except Exception as e:  # never a traceback in the page or the terminal
            print(f"explore_mnist_xai: error: {type(e).__name__}: {cli.first_line(e)}", file=sys.stderr, flush=True)
            yield self.placeholders(f"Something went wrong: {cli.first_line(e)}", "error", None)

    def on_canvas(self, value, target=None, *options):
        def gen():
            image, where, notes = interpret(value, self.samples)
            yield from self._explain(image, where, notes, target, options)
        yield from self._guard(gen)

    def on_upload(self, picture, target=None, *options):
        def gen():
            if picture is None:
                return
            image, where, notes = interpret(picture, self.samples)
            yield from self._explain(image, where, notes, target, options)
        yield from self._guard(gen)

    def on_settings(self, state, target=None, *options):
        def gen():
            if not state or state.get("image") is None:
                yield self.placeholders("Draw a digit first (or pick a sample).", "info", None)
                return
            yield from self._explain(state["image"], state["where"], state.get("notes", ()), target, options)
        yield from self._guard(gen)

    def on_pick(self, index):
        """A sample digit was picked: the canvas value that shows it (and makes it explained)."""
        if self.samples is None or index is None or not 0 <= int(index) < len(self.samples.labels):
            return ""
        return sample_canvas_value(int(index), self.samples.images[int(index)])


# ----------------------------------------------------------------------------- the page

PAD_TEMPLATE = f"""
<div class="xe-pad-wrap">
  <canvas class="xe-canvas" width="{CANVAS}" height="{CANVAS}" aria-label="drawing canvas"></canvas>
  <div class="xe-tools">
    <button type="button" class="xe-tool active" data-tool="pen" id="xe-pen">Pen</button>
    <button type="button" class="xe-tool" data-tool="eraser" id="xe-eraser">Eraser</button>
    <button type="button" class="xe-tool" id="xe-clear">Clear</button>
  </div>
</div>
"""

# The canvas keeps ink as opaque black on a transparent background (alpha = ink), which is
# what mnist_preprocess reads as a drawing whatever the page's colours. After each stroke
# its PNG becomes the component's value, which sends it to the server.
PAD_JS = """
const canvas = element.querySelector('canvas');
const ctx = canvas.getContext('2d');
let tool = 'pen', drawing = false, last = null, shown = null;
const send = () => { props.value = canvas.toDataURL('image/png'); };
const pos = e => { const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height]; };
const style = () => {
  ctx.globalCompositeOperation = tool === 'pen' ? 'source-over' : 'destination-out';
  ctx.strokeStyle = ctx.fillStyle = '#000';
  ctx.lineWidth = tool === 'pen' ? 22 : 44; ctx.lineCap = 'round'; ctx.lineJoin = 'round'; };
const dot = p => { style(); ctx.beginPath(); ctx.arc(p[0], p[1], ctx.lineWidth / 2, 0, 2 * Math.PI); ctx.fill(); };
const line = (a, b) => { style(); ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.stroke(); };
canvas.addEventListener('pointerdown', e => { e.preventDefault(); drawing = true; last = pos(e);
  try { canvas.setPointerCapture(e.pointerId); } catch (err) {} dot(last); });
canvas.addEventListener('pointermove', e => { if (!drawing) return; const p = pos(e); line(last, p); last = p; });
const finish = () => { if (!drawing) return; drawing = false; send(); };
canvas.addEventListener('pointerup', finish);
canvas.addEventListener('pointercancel', finish);
element.querySelectorAll('.xe-tool[data-tool]').forEach(b => b.addEventListener('click', () => {
  tool = b.dataset.tool;
  element.querySelectorAll('.xe-tool[data-tool]').forEach(o => o.classList.toggle('active', o === b)); }));
element.querySelector('#xe-clear').addEventListener('click', () => {
  ctx.clearRect(0, 0, canvas.width, canvas.height); shown = null; props.value = ''; });
watch('value', () => {
  const v = props.value || '';
  if (!v.startsWith('sample:') || v === shown) return;
  shown = v;
  const img = new Image();
  img.onload = () => { ctx.globalCompositeOperation = 'source-over';
    ctx.clearRect(0, 0, canvas.width, canvas.height); ctx.drawImage(img, 0, 0, canvas.width, canvas.height); };
  img.src = v.slice(v.indexOf('|') + 1);
});
canvas.dataset.ready = '1';
"""

CSS = """
.xe-pad-wrap { display: flex; flex-direction: column; align-items: flex-start; gap: 6px; }
.xe-canvas { width: 280px; height: 280px; background: #fff; border: 2px solid #888; border-radius: 6px;
  touch-action: none; cursor: crosshair; }
.xe-tools { display: flex; gap: 6px; }
.xe-tool { padding: 4px 12px; border: 1px solid #999; border-radius: 4px; background: #f4f4f4; cursor: pointer; }
.xe-tool.active { background: #2b6cb0; color: #fff; border-color: #2b6cb0; }
.xe-px { image-rendering: pixelated; image-rendering: crisp-edges; background: #000; }
.xe-input { display: flex; gap: 10px; align-items: flex-start; }
.xe-caption, .xe-dim { color: #666; font-size: 0.9em; }
.xe-notes { color: #a15c00; margin: 4px 0 0 1em; padding: 0; }
.xe-status { padding: 4px 8px; border-radius: 4px; }
.xe-status.warn { background: #fff4d6; } .xe-status.error { background: #fde2e2; }
.xe-status.busy { background: #eef4ff; } .xe-status.done { background: #e8f7ec; }
.xe-model { border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
.xe-pred { font-size: 1.15em; margin: 4px 0; }
.xe-bars { display: grid; grid-template-columns: 1fr; gap: 2px; max-width: 420px; }
.xe-bar { display: grid; grid-template-columns: 1.2em 1fr 4em; gap: 6px; align-items: center; font-size: 0.9em; }
.xe-track { background: #eee; height: 10px; border-radius: 3px; overflow: hidden; }
.xe-fill { display: block; height: 100%; background: #9aa5b1; }
.xe-bar.pred .xe-fill { background: #2b6cb0; } .xe-bar.pred { font-weight: bold; }
.xe-bar.chosen .xe-fill { background: #d97706; } .xe-chosen-d { color: #d97706; }
.xe-maps { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 8px; margin-top: 8px; }
.xe-map { margin: 0; border: 1px solid #eee; border-radius: 4px; padding: 4px; }
.xe-map figcaption { font-weight: bold; }
.xe-pair { display: flex; gap: 6px; }
.xe-cell { display: flex; flex-direction: column; align-items: center; font-size: 0.8em; text-align: center; }
.xe-cell.pending .xe-spin { width: 96px; height: 96px; display: flex; align-items: center; justify-content: center;
  background: #f3f3f3; color: #888; }
.xe-wait { color: #666; padding: 12px 0; }
.xe-error { color: #b00020; }
#xe-samples img { image-rendering: pixelated; }
#xe-samples .grid-container { grid-template-columns: repeat(auto-fill, minmax(56px, 1fr)) !important;
  grid-auto-rows: auto !important; gap: 6px !important; }
#xe-samples .thumbnail-item { width: 100% !important; height: auto !important; aspect-ratio: 1; }
#xe-samples .caption-label { font-size: 0.7em; padding: 0 3px; }
"""

HELP = f"""
**How to read it.** Each map shows where the method puts the evidence for a class (red = most).
Signed methods (Gradient×Input, Integrated Gradients, Occlusion) show their positive part, the
evidence *for* the class. Under each map, its **deletion AUC** for this digit: the pixels are
removed (set to black) in the map's order, most important first, in {DELETION_STEPS} steps, and the
area under the class-probability curve is taken. **Lower = more faithful**: the map found the
pixels the prediction rests on (0 would mean the probability vanishes at once). Compare AUCs
between methods for the same digit and class: they vary from digit to digit, and a class the
model gives little probability to (the compared class, usually) has a small AUC whatever the
map, since its curve starts near 0. Options apply to the four slower methods; a setting used for
the first time compiles once (a few seconds).
"""


def build_app(app: App):
    """The Gradio page around ``app``; returns ``(blocks, launch keyword arguments)``."""
    import gradio as gr

    samples = app.samples
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title="MNIST explanations explorer", analytics_enabled=False) as blocks:
        gr.Markdown("## Draw a digit, watch every explanation\nDraw with the pen (one stroke at a time is "
                    "explained as you go), pick one of the shipped test digits, or paste a picture.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                pad = gr.HTML(value="", html_template=PAD_TEMPLATE, js_on_load=PAD_JS, elem_id="xe-pad",
                              apply_default_css=False)
                upload = gr.Image(label="…or paste / upload a picture", sources=["upload", "clipboard"],
                                  type="numpy", image_mode="RGBA", height=160, elem_id="xe-upload")
            with gr.Column(scale=2, min_width=320):
                picker = None
                if samples is not None:
                    picker = gr.Gallery(value=[(samples.images[i, :, :, 0], str(samples.labels[i]))
                                               for i in range(len(samples.labels))],
                                        label="…or pick a shipped MNIST test digit", columns=8, height=300,
                                        allow_preview=False, elem_id="xe-samples", show_label=True, buttons=[],
                                        object_fit="contain")
                    gr.Markdown(f"<small>{MNIST_CREDIT}</small>")
                model_input = gr.HTML(render_input(None), elem_id="xe-input")
                status = gr.HTML(render_status("Draw a digit to start."), elem_id="xe-status")
        with gr.Row():
            names = app.explorer.models[0].class_names  # the first model's classes (the digits for MNIST)
            target = gr.Radio(["none"] + [(n, str(d)) if n != str(d) else n for d, n in enumerate(names)],
                              value="none", elem_id="xe-target",
                              label="Compare with class: why the prediction and not this one?")
        with gr.Accordion("Options of the slower methods", open=False):
            with gr.Row():
                ig = gr.Dropdown([str(v) for v in IG_STEPS], value=str(Options.ig_steps), label="Integrated Gradients: steps",
                                 elem_id="xe-ig-steps")
                sgn = gr.Dropdown([str(v) for v in SG_SAMPLES], value=str(Options.sg_samples), label="SmoothGrad: samples",
                                  elem_id="xe-sg-samples")
                sgs = gr.Dropdown([str(v) for v in SG_NOISE], value=str(Options.sg_noise), label="SmoothGrad: noise level",
                                  elem_id="xe-sg-noise")
                occ = gr.Dropdown([str(v) for v in OCCLUSION_PATCH], value=str(Options.occlusion_patch),
                                  label="Occlusion: patch (px)", elem_id="xe-occlusion-patch")
        with gr.Row(equal_height=False):
            model_views = []
            for i, m in enumerate(app.explorer.models):
                with gr.Column(min_width=320):
                    model_views.append(gr.HTML(render_model(None, None, index=i, name=m.name, description=m.description),
                                               elem_id=f"xe-model-{i}"))
        gr.Markdown(HELP)

        outputs = [model_input, status, *model_views, state]
        settings = [target, ig, sgn, sgs, occ]
        common = dict(outputs=outputs, trigger_mode="always_last", concurrency_limit=2, concurrency_id="explain",
                      show_progress="hidden")
        pad.change(app.on_canvas, inputs=[pad, *settings], **common)
        upload.upload(app.on_upload, inputs=[upload, *settings], **common)
        for control in settings:
            control.change(app.on_settings, inputs=[state, *settings], **common)
        if picker is not None:
            def picked(evt: gr.SelectData):
                return app.on_pick(evt.index)
            picked.__annotations__ = {"evt": gr.SelectData}  # this module's annotations are strings
            picker.select(picked, inputs=None, outputs=pad, show_progress="hidden")
    return blocks, dict(theme=theme, css=CSS)


# ----------------------------------------------------------------------------- start-up


def offline_environment() -> None:
    """No analytics, telemetry or hub look-ups; set before Gradio is imported."""
    for k, v in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"),
                 ("DO_NOT_TRACK", "1"), ("GRADIO_SSR_MODE", "False")):
        os.environ[k] = v
    os.environ.pop("GRADIO_SHARE", None)


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start(models: list[LoadedModel], host: str = "127.0.0.1", port: int | None = None, warm_up: bool = True,
          block: bool = True, log=None):
    """Warm up, then serve the page. Returns ``(blocks, url)`` when ``block`` is False (the
    server runs in a thread until ``blocks.close()``).

    Start-up order: the first stage (prediction, GradCAM, saliency and their AUCs) is compiled
    or loaded from the on-disk cache while Gradio is imported and the page built; then the
    server starts, and the other methods' programs are made ready in the background (a
    drawing meanwhile shows them as "computing…" until they are).
    """
    offline_environment()
    import warnings
    from mnist_data import load_sample_digits

    # Gradio's queue statistics use pandas calls pandas 3 deprecates: not the user's concern.
    warnings.filterwarnings("ignore", module=r"gradio(\.|$)")
    log = log or (lambda text: print(text, flush=True))
    t0 = time.perf_counter()
    explorer = Explorer(models)
    samples = load_sample_digits()
    app = App(explorer, samples)
    built, failed = [], []

    def build():
        try:
            built.append(build_app(app))
        except BaseException as e:  # re-raised below, in the main thread
            failed.append(e)

    builder = threading.Thread(target=build, name="explore-build")
    builder.start()
    sample = samples.images[0, :, :, 0] / 255.0
    if warm_up:
        explorer.warm_up(sample=sample, stages=1)
    builder.join()
    if failed:
        raise failed[0]
    blocks, style = built[0]
    port = port if port is not None else free_port(host)
    blocks.queue(default_concurrency_limit=2)
    blocks.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                  quiet=True, show_error=False, max_file_size="20mb", ssr_mode=False, mcp_server=False, pwa=False,
                  footer_links=[], **style)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    url = f"http://{shown if ':' not in shown else '[' + shown + ']'}:{port}/"
    log(f"explorer ready in {time.perf_counter() - t0:.1f} s: open {url}  (Ctrl-C stops it)")

    def rest():
        try:
            explorer.warm_up(sample=sample)
            log(f"every method ready {time.perf_counter() - t0:.1f} s after start")
        except Exception as e:  # a request will meet the same error and show it in the page
            print(f"explore_mnist_xai: warm-up: {cli.first_line(e)}", file=sys.stderr)

    if warm_up:
        threading.Thread(target=rest, name="explore-warm-up", daemon=True).start()
    if not block:
        return blocks, url
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        blocks.close()
    return blocks, url


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--checkpoint", action="append", metavar="DIR",
                        help="checkpoint folder (default: the shipped pretrained/); twice: two models side by side")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: %(default)s, this machine only; 0.0.0.0 shares it "
                             "with your network, without any login)")
    parser.add_argument("--port", type=int, help="port (default: a free one)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="serve at once and compile each program on first use instead")
    args = parser.parse_args(argv)
    if args.checkpoint and len(args.checkpoint) > 2:
        parser.error(f"--checkpoint: expected one or two, got {len(args.checkpoint)}")
    if args.port is not None and not 0 < args.port < 65536:
        parser.error(f"--port: expected 1-65535, got {args.port}")
    from mnist_checkpoint import CheckpointError

    try:
        models = load_models(args.checkpoint)
    except CheckpointError as e:
        print(f"error: {cli.first_line(e, 400)}", file=sys.stderr)
        return 2
    try:
        start(models, args.host, args.port, warm_up=not args.no_warmup)
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # the port is taken, the address is not this machine's
        print(f"error: cannot serve on {args.host}:{args.port}: {e.strerror or cli.first_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from cpu_devices import use_compilation_cache
    use_compilation_cache()  # before JAX is imported: a second start loads its programs from disk
    sys.exit(main())

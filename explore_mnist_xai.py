"""Draw a digit, watch every explanation: a local web app around the MNIST CNN.

    python explore_mnist_xai.py                          # shipped checkpoint, a free port on 127.0.0.1
    python explore_mnist_xai.py --port 7860              # a fixed port
    python explore_mnist_xai.py --checkpoint checkpoints # your own training run
    python explore_mnist_xai.py --checkpoint A --checkpoint B   # two models side by side
    python explore_mnist_xai.py --host 0.0.0.0 --port 7860      # share on your network (no login!)
    python explore_mnist_xai.py --methods cam,gradient,saliency  # some families or methods only

It prints the address to open. Draw with the pen (or pick one of the shipped test images, or
drop / paste / upload a picture): the app shows the 28x28 image the model sees (made the way
MNIST was: mnist_preprocess.to_mnist), the prediction with all ten class probabilities, and the
map of every registered method (``methods_in_order``: the registry's, grouped by its
``FAMILIES``; ``--methods`` picks some), each over the outline of the input and titled with its
deletion AUC for this image (mnist_xai_metrics.deletion_insertion; lower = the map found the
pixels the prediction rests on). Signed maps are on a diverging colormap centred at 0, unsigned
ones from white; a colour bar says which is which. "Compare with class" shows the maps for the
predicted class and the chosen one side by side ("why 4 and not 9"); a chooser picks the method
families to compute. The prediction with GradCAM and saliency comes first; the other fast
methods, then the medium and the slow ones (the registry's cost classes) stream in after, and a
new stroke stops them. A file that is not a picture, or is over 20 MB, is one line in the
status. A Fashion-MNIST or KMNIST checkpoint is offered that dataset's 200 test images
(sample_data/<dataset>_test_sample.npz); where a dataset has none, the page says so in one line.

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
import functools
import itertools
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

#: The first answer to a new drawing: the prediction with these two maps (kept <= 150 ms of
#: server time, benchmarks/bench_explorer.py); every other method streams in after them.
FIRST = ("gradcam", "saliency")
DELETION_STEPS = 16
MAX_UPLOAD_BYTES = 20_000_000  # a picture file larger than this is refused, in the status line
#: the longest data URL taken from the page: a 20 MB file in base64, and its header
MAX_UPLOAD_CHARS = 4 * (MAX_UPLOAD_BYTES // 3 + 1) + 200
CANVAS = 280  # px, the drawing canvas (10x the 28x28 field)
MAP_SCALE = 5  # a 28x28 map is shown 140 px wide, each pixel a 5x5 block
SIGNED_CMAP, UNSIGNED_CMAP = "RdBu_r", "Reds"  # 0 is white in both: red = evidence for, blue = against

#: What each dataset's pictures are called on the page.
NOUNS = {"mnist": "digit", "fashion_mnist": "garment", "kmnist": "character"}
SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"

MNIST_CREDIT = ("MNIST sample digits (the test set): Yann LeCun, Corinna Cortes, Christopher J.C. Burges, "
                "licensed CC BY-SA 3.0.")


def _registry():
    import mnist_xai_visualizations  # noqa: F401  (registers every method)
    from mnist_xai import registry
    return registry


def title(method: str) -> str:
    return _registry().SPECS[method].title


def methods_in_order(methods=None) -> list[str]:
    """The methods the page shows, in the order it shows them: every registered method (or
    those of ``methods``), grouped by family in the registry's ``FAMILIES`` order. A method
    appears here, with its title, family, sign and options, once it is registered."""
    R = _registry()
    wanted = None if methods is None else set(methods)
    if wanted is not None and wanted - set(R.SPECS):
        raise ValueError(f"methods: expected registered names, got {', '.join(sorted(wanted - set(R.SPECS)))}")
    return [m for m in R.method_names() if wanted is None or m in wanted]


def families_of(methods) -> list[tuple[str, str]]:
    """``(family, its title)`` of the families ``methods`` span, in ``FAMILIES`` order."""
    R = _registry()
    present = {R.SPECS[m].family for m in methods}
    return [(k, t) for k, t in R.FAMILIES if k in present]


def stages(methods=None) -> list[tuple[str, ...]]:
    """The order of computation: ``FIRST``, then the other fast methods together, then each
    medium and each slow method alone (registry cost classes), so that every map is shown as
    soon as it is ready and the slow ones stream in last."""
    R = _registry()
    shown = methods_in_order(methods)
    first = tuple(m for m in FIRST if m in shown) or tuple(shown[:1])
    rest = [m for m in shown if m not in first]
    out = [first] if first else []
    fast = tuple(m for m in rest if R.SPECS[m].cost == "fast")
    if fast:
        out.append(fast)
    for cost in R.COSTS[1:]:
        out += [(m,) for m in rest if R.SPECS[m].cost == cost]
    return out


def option_menu(methods=None) -> list[tuple[str, object]]:
    """``(method, Option)`` for every option the registry gives a menu of two or more values,
    for the page's dropdowns (the others keep their defaults)."""
    R = _registry()
    return [(m, o) for m in methods_in_order(methods) for o in R.SPECS[m].options
            if o.choices is not None and len(o.choices) > 1 and o.kind in (int, float, str)]


@dataclass(frozen=True)
class Options:
    """The options set on the page: ``((method, option, value), ...)``, each checked against
    the registry's menu for it (each distinct value compiles once); unset options keep the
    method's default."""

    values: tuple = ()

    @classmethod
    def parse(cls, values=None, **named) -> "Options":
        """From the page's dropdowns: ``values`` is a dict ``{(method, option): value}`` (strings
        or numbers; None or "" = the default), or ``method__option=value`` keywords. A value off
        the registry's menu, or an unknown method or option, is one ValueError line."""
        R = _registry()
        items = dict(values or {})
        for key, v in named.items():
            method, _, option = key.partition("__")
            items[(method, option)] = v
        out = []
        for (method, option), v in items.items():
            if v is None or v == "":
                continue
            s = R.spec(method)
            try:
                o = s.option(option)
            except KeyError:
                raise ValueError(f"{method}: expected options among {', '.join(x.name for x in s.options)}, "
                                 f"got {option!r}") from None
            try:
                value = o.parse(v, menu=o.choices is not None)
            except ValueError as e:
                raise ValueError(f"{s.title}: {e}") from None
            if value != o.default:  # the default is no setting: one explainer (one compile) for both
                out.append((method, option, value))
        return cls(tuple(sorted(out, key=lambda t: (t[0], t[1]))))

    def for_method(self, method: str) -> dict:
        """The options set for ``method`` (its constructor's keyword arguments)."""
        return {o: v for m, o, v in self.values if m == method}


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
    dataset: str = "mnist"  # what it was trained on (mnist_checkpoint.checkpoint_info)


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
                               info.temperature, info.dataset))
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


def map_picture(raw: np.ndarray, signed: bool) -> str:
    """A 28x28 map as a PNG data URL, coloured so that it reads at a glance: a signed map on
    the diverging ``SIGNED_CMAP`` centred at 0 (white) and scaled by its largest |value| (red:
    evidence for the class, blue: against); an unsigned map on ``UNSIGNED_CMAP`` from white
    (its minimum) to dark red (its maximum), min-max scaled as ``normalize_maps`` does. The
    digit is not blended in (it washed out the colour of maps whose evidence lies on the
    strokes, Gradient×Input and IG): the page draws its outline over the map instead
    (``outline_picture``)."""
    import matplotlib

    m = np.asarray(raw, np.float64)
    if not np.isfinite(m).all():
        m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    if signed:
        scale = np.abs(m).max()
        unit = 0.5 + 0.5 * m / scale if scale > 0 else np.full_like(m, 0.5)
        cmap = SIGNED_CMAP
    else:
        lo, hi = m.min(), m.max()
        unit = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        cmap = UNSIGNED_CMAP
    return png_data_url(matplotlib.colormaps[cmap](np.clip(unit, 0, 1))[..., :3])


def outline_mask(image: np.ndarray, scale: int = MAP_SCALE) -> np.ndarray:
    """The digit's outline at ``scale`` times its size: the edge pixels (4-neighbour) of the
    bilinearly enlarged image's ink >= half its peak. A one-pixel line at the shown size."""
    from PIL import Image

    img = np.asarray(image, np.float32)
    size = (img.shape[1] * scale, img.shape[0] * scale)
    big = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))
    peak = float(big.max())
    mask = big >= 0.5 * peak if peak > 0 else np.zeros(big.shape, bool)
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def outline_picture(image: np.ndarray, scale: int = MAP_SCALE) -> str:
    """The digit's outline as a transparent PNG data URL, laid over every map of this digit."""
    edge = outline_mask(image, scale)
    rgba = np.zeros((*edge.shape, 4), np.uint8)
    rgba[edge] = (20, 20, 20, 200)
    return png_data_url(rgba)


@functools.lru_cache(maxsize=None)
def colour_bar(cmap: str, width: int = 160, height: int = 10) -> str:
    """A horizontal bar of ``cmap`` from 0 to 1 as a PNG data URL (the page's legend)."""
    import matplotlib

    row = matplotlib.colormaps[cmap](np.linspace(0, 1, width))[..., :3]
    return png_data_url(np.repeat(row[None], height, axis=0))


class Explorer:
    """The app's computation, without any web framework: ``run`` yields a ``Report`` as each
    stage's maps arrive, then as their AUCs do; the last one is complete. Holds no per-user
    state (the page keeps that), so any number of tabs can share one Explorer.

    ``methods``: the registered names to show (None: every registered method).
    """

    def __init__(self, models: list[LoadedModel], workers: int = 2, methods=None):
        import jax

        if not models:
            raise ValueError("models: expected at least one model")
        self.models = models
        self.methods = methods_in_order(methods)
        if not self.methods:
            raise ValueError("methods: expected at least one registered method, got none")
        self.stages = stages(self.methods)
        self.families = families_of(self.methods)
        # The weights go to the device once, not with every call.
        for m in models:
            m.params, m.batch_stats = jax.device_put((m.params, m.batch_stats))
        # The rows of a request (two models, the predicted and the chosen class) run side by
        # side: XLA runs this small CNN's calls on about one core each.
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="explore")
        # Requests in flight: the background warm-up waits between methods while there are any,
        # so that it does not slow a person's drawing down.
        self._busy = 0
        self._idle = threading.Condition()

    def _row(self, m: LoadedModel, image: np.ndarray, methods, options: Options, target: int | None):
        """One target row of one stage: ``{method: (raw map, picture)}``, and the logits of
        the first call (``target=None``: the predicted class)."""
        R = _registry()
        x = image[None, :, :, None]
        out, logits = {}, None
        for method in methods:
            e = explainer_for(m.model, method, options)
            if logits is None:
                raw, logits = e.attribute(m.params, m.batch_stats, x, None if target is None else [target],
                                          return_logits=True)
            else:
                raw = e.attribute(m.params, m.batch_stats, x, None if target is None else [target])
            raw = np.asarray(raw)
            out[method] = (raw[0], map_picture(raw[0], R.SPECS[method].is_signed(options.for_method(method))))
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

    def shown_methods(self, families=None) -> list[str]:
        """The methods shown for a choice of families (None: all of them)."""
        if families is None:
            return list(self.methods)
        chosen = set(families)
        R = _registry()
        return [m for m in self.methods if R.SPECS[m].family in chosen]

    def run(self, image: np.ndarray, chosen: int | None = None, options: Options = Options(),
            stages: int | None = None, families=None, cancelled=None, _background: bool = False):
        """Yield Reports for one digit: image (28, 28) float in [0, 1]; ``chosen``: a class to
        compare the prediction with (None: the prediction alone); ``stages``: stop after that
        many stages (None: all); ``families``: the method families to compute (None: all);
        ``cancelled``: a function that says True once the answer is no longer wanted (a
        newer drawing came), checked before each stage: the run then stops, yielding nothing
        more. The first stage is always computed (it holds the prediction)."""
        t0 = time.perf_counter()
        image = np.asarray(image, np.float32)
        if image.shape != (28, 28):
            raise ValueError(f"image: expected the (28, 28) model input, got shape {image.shape}")
        n_classes = len(self.models[0].class_names)
        if chosen is not None and not (isinstance(chosen, (int, np.integer)) and not isinstance(chosen, bool)
                                       and 0 <= chosen < n_classes):
            raise ValueError(f"chosen: expected a class 0-{n_classes - 1} or None, got {chosen!r}")
        wanted = set(self.shown_methods(families))
        plan = [self.stages[0]] + [st for st in self.stages[1:] if set(st) & wanted]
        plan = [tuple(m for m in st if m in wanted or k == 0) for k, st in enumerate(plan)]
        results = [ModelResult(m.name, m.description, class_names=m.class_names) for m in self.models]
        if not _background:
            with self._idle:
                self._busy += 1
        try:
            yield from self._stages(image, chosen, options, plan[:stages], results, t0, cancelled, _background)
        finally:
            if not _background:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _stages(self, image, chosen, options, plan, results, t0, cancelled, background):
        remaining = [m for st in plan for m in st]
        for k, stage in enumerate(plan):
            if k and cancelled is not None and cancelled():
                return
            if background:  # the warm-up: let a person's request go first
                with self._idle:
                    self._idle.wait_for(lambda: self._busy == 0)
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
                if cancelled is not None and cancelled():
                    return
                yield Report(image, _snapshot(results), tuple(remaining), time.perf_counter() - t0)
            live = [i for i, r in enumerate(results) if r.error is None and all(m in r.maps for m in stage)]
            self._gather([(i, self._pool.submit(self._aucs, self.models[i], results[i], image, stage))
                          for i in live], results)
            if cancelled is not None and cancelled():
                return
            yield Report(image, _snapshot(results), tuple(remaining), time.perf_counter() - t0,
                         done=not remaining)

    def warm_up(self, options: Options = Options(), sample: np.ndarray | None = None,
                stages: int | None = None, background: bool = False) -> float:
        """Compile (or load from the on-disk cache) the programs a request needs, for the
        prediction alone and compared with another class, for the first ``stages`` stages
        (None: all). ``background``: wait between methods while a request is in flight.
        Returns the seconds it took."""
        t0 = time.perf_counter()
        if sample is None:
            from mnist_data import load_sample_digits
            sample = load_sample_digits().images[0, :, :, 0] / 255.0
        first = None
        for chosen in (None, "other"):  # one target row, then two (their AUC calls differ in size)
            if chosen == "other":
                chosen = (first + 1) % len(self.models[0].class_names)
            for rep in self.run(sample, chosen, options, stages, _background=background):
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


def decode_data_url(value: str, what: str = "the canvas image", again: str = "clear it and draw again") -> np.ndarray:
    """A data URL (the canvas's, or an uploaded file's) -> its pixels (H, W, 4) uint8;
    InputError, one line, if it is too long or not a picture."""
    from PIL import Image, UnidentifiedImageError

    if len(value) > MAX_UPLOAD_CHARS:
        raise InputError(f"{what} is too large ({len(value) * 3 / 4e6:.0f} MB; up to {MAX_UPLOAD_BYTES / 1e6:.0f} MB "
                         f"is read): {again}")
    m = re.match(r"data:([\w.+-]+/[\w.+-]+)?;base64,(.*)$", value, re.S)
    if not m:
        raise InputError(f"{what} is not a picture: {again}")
    try:
        with Image.open(io.BytesIO(base64.b64decode(m.group(2), validate=False))) as im:
            im.load()
            return np.asarray(im.convert("RGBA"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InputError(f"{what} is not a picture that can be read (PNG, JPEG, GIF, BMP, WebP…): {again}") from None


def sample_canvas_value(index: int, digit: np.ndarray) -> str:
    """What the page's canvas is set to when a sample digit is picked: its index (so the exact
    digit is explained) and a 280x280 picture of it in ink (black, alpha = intensity) to draw on."""
    from PIL import Image

    big = np.asarray(Image.fromarray(np.asarray(digit, np.uint8).reshape(28, 28)).resize(
        (CANVAS, CANVAS), Image.Resampling.BILINEAR))
    rgba = np.zeros((CANVAS, CANVAS, 4), np.uint8)
    rgba[..., 3] = big
    return f"sample:{int(index)}|{png_data_url(rgba)}"


def interpret(value, samples=None, noun: str = "digit", dataset: str = "mnist"):
    """Whatever the page sent -> ``(image (28, 28) float32, where it came from, notes)``.

    ``value``: the canvas's string ("" = empty, a data URL, "sample:<i>|..." for a picked
    sample, "file:<n>:<name>|<data URL>" for a file uploaded, dropped or pasted, or
    "toolarge:<n>:<name>:<bytes>" for one the page refused to send) or an uploaded picture
    (an array). Raises InputError with a message for people.
    """
    from urllib.parse import unquote

    from mnist_data import DISPLAY_NAMES
    from mnist_preprocess import NoInkError, to_mnist

    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"The canvas is empty: draw a {noun}, pick a sample, or drop / paste a picture.")
    if isinstance(value, str) and value.startswith("sample:"):
        m = re.match(r"sample:(\d+)\|", value)
        if not m or samples is None or int(m.group(1)) >= len(samples.labels):
            raise InputError("unknown sample; pick one from the list")
        i = int(m.group(1))
        return (samples.images[i, :, :, 0].astype(np.float32) / 255.0,
                f"{DISPLAY_NAMES.get(dataset, dataset)} test image #{i} (labelled {samples.labels[i]})", ())
    again = "pick another picture, or draw"
    if isinstance(value, str) and value.startswith("toolarge:"):
        m = re.match(r"toolarge:\d+:(.*):(\d+)$", value, re.S)
        name = unquote(m.group(1))[:80] if m else "the file"
        size = int(m.group(2)) / 1e6 if m else float("nan")
        raise InputError(f"{name} is {size:.1f} MB: pictures up to {MAX_UPLOAD_BYTES / 1e6:.0f} MB are read; {again}.")
    if isinstance(value, str) and value.startswith("file:"):
        m = re.match(r"file:\d+:([^|]*)\|(.*)$", value, re.S)
        if not m:
            raise InputError(f"the page sent an upload that is not a picture; {again}")
        name = unquote(m.group(1))[:80] or "the file"
        pixels = decode_data_url(m.group(2), name, again)
        where = name
    elif isinstance(value, str):
        pixels, where = decode_data_url(value), "your drawing"
    else:
        pixels, where = value, "the picture"
    try:
        image, info = to_mnist(pixels, return_info=True)
    except NoInkError as e:
        raise InputError(f"Nothing to explain: {e}.") from None
    except ValueError as e:
        raise InputError(f"That picture cannot be read as a {noun}: {cli.first_line(e)}") from None
    return image, where, info.notes


# ----------------------------------------------------------------------------- rendering


def render_input(image: np.ndarray | None, where: str = "", notes=()) -> str:
    if image is None:
        return ('<div class="xe-input empty"><div class="xe-caption">The model sees the 28x28 image made '
                'from your drawing or picture here.</div></div>')
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    how = (" as it is in its test set" if "test image #" in where else
           ", cropped to its ink, scaled into 20x20 and centred by its centre of mass in 28x28, as MNIST was made")
    return (f'<div class="xe-input"><img class="xe-px" id="xe-model-input" src="{png_data_url(image)}" '
            f'alt="the 28x28 image the model sees" width="112" height="112">'
            f'<div><div class="xe-caption">What the model sees: {html.escape(where)}{how}.</div>'
            + (f'<ul class="xe-notes">{items}</ul>' if items else "") + "</div></div>")


def legend() -> str:
    """The colour bars: one for signed maps (centred at 0), one for unsigned maps."""
    return ('<div class="xe-legend">'
            f'<span class="xe-key"><b>signed</b> maps: against <img src="{colour_bar(SIGNED_CMAP)}" alt="blue to white '
            'to red" width="160" height="10"> for &nbsp;(white = 0, scaled by the map\'s largest |value|)</span>'
            f'<span class="xe-key"><b>unsigned</b>: least <img src="{colour_bar(UNSIGNED_CMAP)}" alt="white to red" '
            'width="160" height="10"> most</span>'
            '<span class="xe-key"><span class="xe-line"></span> the outline of the input</span></div>')


def render_model(r: ModelResult | None, image: np.ndarray | None, pending=(), index: int = 0,
                 name: str = "", description: str = "", methods=None, options: Options = Options()) -> str:
    """One model's panel: prediction, the class probabilities, and every method's map(s) with
    their AUCs, grouped by family (registry ``FAMILIES`` order), the input's outline over each."""
    R = _registry()
    methods = methods_in_order() if methods is None else list(methods)
    name = r.name if r is not None else name
    description = r.description if r is not None else description
    head = (f'<div class="xe-head"><b>{html.escape(name)}</b>'
            + (f' <span class="xe-dim">{html.escape(description)}</span>' if description else "") + "</div>")
    if r is None or r.pred is None:
        msg = r.error if r is not None and r.error else "Draw to see the prediction and its explanations."
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
    size = 28 * MAP_SCALE
    groups = []
    for family, family_title in families_of(methods):
        figures = []
        for method in (m for m in methods if R.SPECS[m].family == family):
            spec = R.SPECS[method]
            signed = spec.is_signed(options.for_method(method))
            cells = []
            for j, t in enumerate(r.targets):
                label = "predicted" if j == 0 else "chosen"
                if method in r.maps:
                    auc = r.aucs.get(method)
                    auc_text = f"deletion AUC {auc[j]:.3f}" if auc is not None else "deletion AUC …"
                    cells.append(f'<div class="xe-cell" data-target="{t}"><div class="xe-frame">'
                                 f'<img class="xe-px" src="{r.pictures[method][j]}" alt="{html.escape(spec.title)} map '
                                 f'for class {names[t]}" width="{size}" height="{size}"><span class="xe-outline"></span>'
                                 f'</div><div class="xe-auc">class {names[t]} ({label})<br>{auc_text}</div></div>')
                else:
                    cells.append(f'<div class="xe-cell pending" data-target="{t}"><div class="xe-spin">computing…</div>'
                                 f'<div class="xe-auc">class {names[t]} ({label})<br>&nbsp;</div></div>')
            state = "done" if method in r.maps else "pending"
            figures.append(f'<figure class="xe-map {state}" data-method="{method}" data-signed="{int(signed)}" '
                           f'data-cost="{spec.cost}"><figcaption title="{html.escape(spec.reference)}">'
                           f'{html.escape(spec.title)}<span class="xe-sign">{"signed" if signed else ""}</span>'
                           f'</figcaption><div class="xe-pair">{"".join(cells)}</div></figure>')
        done = sum(m in r.maps for m in methods if R.SPECS[m].family == family)
        groups.append(f'<section class="xe-family" data-family="{family}"><h4>{html.escape(family_title)} '
                      f'<span class="xe-dim">{done}/{len(figures)}</span></h4>'
                      f'<div class="xe-maps">{"".join(figures)}</div></section>')
    error = f'<div class="xe-error">{html.escape(r.error)}</div>' if r.error else ""
    outline = f' style="--xe-outline: url({outline_picture(image)})"' if image is not None else ""
    return (f'<div class="xe-model" data-model="{index}" data-pred="{r.pred}"{outline}>{head}{pred}'
            f'<div class="xe-bars">{"".join(bars)}</div>{error}{legend()}{"".join(groups)}</div>')


def render_status(text: str, kind: str = "info", warm: bool = False) -> str:
    """The status line; ``warm``: the answer to the tab's warm-up request (tests wait for it)."""
    extra = ' data-warm="1"' if warm else ""
    return f'<div class="xe-status {kind}" data-kind="{kind}"{extra}>{html.escape(text)}</div>'


# ----------------------------------------------------------------------------- the page's handlers


@dataclass
class Samples:
    """The sample images the page offers for the first model's dataset, or why there are none."""

    dataset: str = "mnist"
    split: object = None  # mnist_data.Split, or None when none are shipped
    credit: str = ""
    note: str = ""  # one line when none are shipped


def sample_path(dataset: str) -> Path:
    return SAMPLE_DIR / f"{dataset}_test_sample.npz"


def load_samples(dataset: str = "mnist", folder: Path | None = None) -> Samples:
    """``sample_data/<dataset>_test_sample.npz`` if it is there (MNIST's always is), else a
    Samples without images whose ``note`` says, in one line, that none are shipped."""
    from mnist_data import CREDITS, DISPLAY_NAMES, MNISTDataError, load_sample_digits

    path = Path(folder) / sample_path(dataset).name if folder else sample_path(dataset)
    shown = DISPLAY_NAMES.get(dataset, dataset)
    if not path.is_file():
        return Samples(dataset, None, "", f"No {shown} sample images are shipped ({path.name} is not in "
                                          f"{path.parent.name}/): draw or drop a picture.")
    try:
        split = load_sample_digits(path)
    except MNISTDataError as e:
        return Samples(dataset, None, "", f"The {shown} sample images cannot be read: {cli.first_line(e)}")
    credit = MNIST_CREDIT if dataset == "mnist" else f"{shown} sample images (the test set): {CREDITS.get(dataset, '')}"
    return Samples(dataset, split, credit)


class App:
    """The page's event handlers as plain generators (testable without a browser or Gradio).

    Each yields tuples ``(input_html, status_html, model_html..., state)``; ``state`` (kept by
    the page per browser tab) is the current 28x28 image and where it came from, so a new
    target class or option re-explains it without the drawing being sent again.

    Handlers take ``(value, target, families, *option values)``, the option values in
    ``self.menu`` order (``option_menu``), and ``session``: the browser tab. A tab's newer
    request supersedes its older one, which stops before its next stage and shows nothing
    more, so a new stroke never waits for the slow maps of the last one.
    """

    def __init__(self, explorer: Explorer, samples=None):
        self.explorer = explorer
        if samples is None or isinstance(samples, Samples):
            self.samples_info = samples or Samples(explorer.models[0].dataset, None, "", "")
        else:  # a mnist_data.Split, as before
            self.samples_info = Samples(explorer.models[0].dataset, samples, MNIST_CREDIT)
        self.samples = self.samples_info.split
        self.dataset = explorer.models[0].dataset
        self.noun = NOUNS.get(self.dataset, "picture")
        self.menu = option_menu(explorer.methods)
        self._latest: dict = {}
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def n_models(self) -> int:
        return len(self.explorer.models)

    def placeholders(self, message: str, kind: str = "info", state=None):
        ms = self.explorer.models
        return (render_input(None), render_status(message, kind),
                *[render_model(None, None, index=i, name=m.name, description=m.description) for i, m in enumerate(ms)],
                state)

    def _begin(self, session):
        """This request's number; it supersedes the tab's earlier ones."""
        n = next(self._counter)
        if session is not None:
            with self._lock:
                self._latest[session] = n
        return lambda: session is not None and self._latest.get(session) != n

    def parse_settings(self, target, families, option_values):
        """The page's settings -> ``(chosen class or None, families or None, Options)``."""
        n = len(self.explorer.models[0].class_names)
        chosen = None
        if target not in (None, "", "none", "—"):
            try:
                chosen = int(target)
            except (TypeError, ValueError):
                chosen = -1
            if not 0 <= chosen < n:
                raise ValueError(f"class: expected none or 0-{n - 1}, got {target!r}")
        known = [k for k, _ in self.explorer.families]
        if families is not None:
            families = [families] if isinstance(families, str) else list(families)
            unknown = [f for f in families if f not in known]
            if unknown:
                raise ValueError(f"families: expected some of {', '.join(known)}, got {', '.join(map(str, unknown))}")
        if len(option_values) > len(self.menu):
            raise ValueError(f"options: expected at most {len(self.menu)} values, got {len(option_values)}")
        options = Options.parse({(m, o.name): v for (m, o), v in zip(self.menu, option_values)})
        return chosen, families, options

    def _explain(self, image, where, notes, target, families, option_values, cancelled, stages=None):
        state = {"image": image, "where": where, "notes": tuple(notes)}
        try:
            chosen, families, options = self.parse_settings(target, families, option_values)
        except (TypeError, ValueError) as e:
            yield self.placeholders(f"Bad setting: {cli.first_line(e)}", "error", state)
            return
        inp = render_input(image, where, notes)
        shown = self.explorer.shown_methods(families)
        for rep in self.explorer.run(image, chosen, options, stages=stages, families=families, cancelled=cancelled):
            if cancelled():
                return
            if rep.done:
                text = f"Done in {rep.seconds:.2f} s (server time): {len(shown)} methods."
            else:
                waiting = [title(k) for k in rep.pending]
                text = (f"{rep.seconds:.2f} s: computing {len(waiting)} more ({', '.join(waiting[:4])}"
                        f"{', …' if len(waiting) > 4 else ''})…")
            outs = [render_model(r, image, rep.pending, i, methods=shown, options=options)
                    for i, r in enumerate(rep.models)]
            yield (inp, render_status(text, "done" if rep.done else "busy"), *outs, state)

    def _guard(self, gen_fn, *args):
        """Run a handler; anything unexpected becomes one line in the page and on stderr."""
        try:
            yield from gen_fn(*args)
        except InputError as e:
            yield self.placeholders(str(e).replace("draw a digit", f"draw a {self.noun}"), "warn", None)
        except RuntimeError as e:
            if "after shutdown" in str(e):  # the server is stopping (Ctrl-C) with a request in flight
                return
            print(f"explore_mnist_xai: error: {type(e).__name__}: {cli.first_line(e)}", file=sys.stderr, flush=True)
            yield self.placeholders(f"Something went wrong: {cli.first_line(e)}", "error", None)
        except Exception as e:  # never a traceback in the page or the terminal
            print(f"explore_mnist_xai: error: {type(e).__name__}: {cli.first_line(e)}", file=sys.stderr, flush=True)
            yield self.placeholders(f"Something went wrong: {cli.first_line(e)}", "error", None)

    def on_canvas(self, value, target=None, families=None, *options, session=None, stages=None):
        """The canvas's value changed: a stroke, a picked sample, a dropped/pasted/uploaded file."""
        if isinstance(value, str) and value.startswith("warm:"):  # the page's own warm-up (PAD_JS)
            # It supersedes nothing, and once the tab has asked for anything real it answers
            # nothing: the page re-sends it until answered, so a copy can reach the server after
            # the first stroke, and would otherwise stop that stroke or blank its maps.
            with self._lock:
                asked = session is not None and session in self._latest
            if not asked:
                inp, _, *views, _ = self.placeholders("")
                yield (inp, render_status(f"Draw a {self.noun} to start.", warm=True), *views, None)
            return
        cancelled = self._begin(session)

        def gen():
            image, where, notes = interpret(value, self.samples, self.noun, self.dataset)
            yield from self._explain(image, where, notes, target, families, options, cancelled, stages)
        yield from self._guard(gen)

    def on_upload(self, picture, target=None, families=None, *options, session=None):
        """A picture as an array (H, W[, C]) or a file path (for callers other than the page)."""
        cancelled = self._begin(session)

        def gen():
            if picture is None:
                return
            value = picture
            if isinstance(picture, (str, os.PathLike)):
                path = Path(picture)
                if path.stat().st_size > MAX_UPLOAD_BYTES:
                    value = f"toolarge:0:{path.name}:{path.stat().st_size}"
                else:
                    value = f"file:0:{path.name}|data:;base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
            image, where, notes = interpret(value, self.samples, self.noun, self.dataset)
            yield from self._explain(image, where, notes, target, families, options, cancelled)
        yield from self._guard(gen)

    def on_settings(self, state, target=None, families=None, *options, session=None):
        cancelled = self._begin(session)

        def gen():
            if not state or state.get("image") is None:
                yield self.placeholders(f"Draw a {self.noun} first (or pick a sample).", "info", None)
                return
            yield from self._explain(state["image"], state["where"], state.get("notes", ()), target, families,
                                     options, cancelled)
        yield from self._guard(gen)

    def on_pick(self, index):
        """A sample was picked: the canvas value that shows it (and makes it explained)."""
        if self.samples is None or index is None or not 0 <= int(index) < len(self.samples.labels):
            return ""
        return sample_canvas_value(int(index), self.samples.images[int(index)])

    def warm_up(self, stages: int | None = None, background: bool = False) -> float:
        """Run a drawing through the whole path a person's drawing takes (the canvas's PNG
        decoded, mnist_preprocess, the methods, their AUCs, the page's HTML), alone and
        compared with another class, so that the first drawing is as fast as the second.
        ``background``: yield to people's requests between methods. Returns seconds."""
        from mnist_data import load_sample_digits

        t0 = time.perf_counter()
        digit = load_sample_digits().images[0]
        value = sample_canvas_value(0, digit).split("|", 1)[1]  # as drawn: ink on a transparent canvas
        image, where, notes = interpret(value, None, self.noun, self.dataset)
        never = lambda: False  # noqa: E731
        first = None
        for chosen in (None, "other"):
            if chosen == "other":
                chosen = (first + 1) % len(self.explorer.models[0].class_names)
            if background:  # the programs only: the page's own code was warmed with the first stage
                for rep in self.explorer.run(image, chosen, stages=stages, _background=True):
                    first = rep.models[0].pred
            else:
                for out in self._explain(image, where, notes, None if chosen is None else str(chosen), None, (),
                                         never, stages):
                    pass
                first = int(re.search(r'data-pred="(\d+)"', out[2]).group(1))
        return time.perf_counter() - t0


# ----------------------------------------------------------------------------- the page

PAD_TEMPLATE = f"""
<div class="xe-pad-wrap">
  <canvas class="xe-canvas" width="{CANVAS}" height="{CANVAS}" aria-label="drawing canvas"></canvas>
  <div class="xe-tools">
    <button type="button" class="xe-tool active" data-tool="pen" id="xe-pen">Pen</button>
    <button type="button" class="xe-tool" data-tool="eraser" id="xe-eraser">Eraser</button>
    <button type="button" class="xe-tool" id="xe-clear">Clear</button>
    <label class="xe-tool" id="xe-upload-button">Upload…<input type="file" id="xe-file" accept="image/*"
      style="display:none"></label>
  </div>
  <div class="xe-dim" id="xe-pad-hint">…or drop a picture on the canvas, or paste one (up to
    {MAX_UPLOAD_BYTES // 1_000_000} MB).</div>
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
// A picture file (uploaded, dropped or pasted) goes to the server as it is, with its name:
// the server decodes it and says in the status line what is wrong with it, if anything.
let uploads = 0;
const sendFile = (file, name) => {
  if (!file) return;
  uploads += 1;
  const tag = uploads + ':' + encodeURIComponent(name || file.name || 'pasted picture');
  ctx.clearRect(0, 0, canvas.width, canvas.height); shown = null;
  if (file.size > MAX_BYTES) { props.value = 'toolarge:' + tag + ':' + file.size; return; }
  const reader = new FileReader();
  reader.onload = () => { props.value = 'file:' + tag + '|' + reader.result; };
  reader.onerror = () => { props.value = 'file:' + tag + '|unreadable'; };
  reader.readAsDataURL(file);
};
const input = element.querySelector('#xe-file');
input.addEventListener('change', () => { sendFile(input.files[0]); input.value = ''; });
canvas.addEventListener('dragover', e => { e.preventDefault(); });
canvas.addEventListener('drop', e => { e.preventDefault();
  if (e.dataTransfer && e.dataTransfer.files.length) sendFile(e.dataTransfer.files[0]); });
document.addEventListener('paste', e => {
  const items = [...((e.clipboardData && e.clipboardData.items) || [])].filter(i => i.kind === 'file');
  if (!items.length) return;
  e.preventDefault(); sendFile(items[0].getAsFile(), 'pasted picture'); });
// The tab's first event costs seconds (Gradio opens its event stream, loads code): spend them
// now, with a request that changes nothing (App.on_canvas), not on the first stroke. Sent
// again until answered (a change made while Gradio is still starting can be lost), and never
// once the person has drawn or picked something.
const warm = n => {
  const v = props.value || '';
  if (n > 12 || document.querySelector('#xe-status [data-warm]') || (v && !v.startsWith('warm:'))) return;
  props.value = 'warm:' + Date.now();
  setTimeout(() => warm(n + 1), 1500); };
setTimeout(() => warm(0), 200);
canvas.dataset.ready = '1';
""".replace("MAX_BYTES", str(MAX_UPLOAD_BYTES))

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
.xe-family { margin-top: 10px; }
.xe-family h4 { margin: 4px 0; border-bottom: 1px solid #ddd; }
.xe-maps { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 4px; }
.xe-map { margin: 0; border: 1px solid #eee; border-radius: 4px; padding: 4px; }
.xe-map figcaption { font-weight: bold; font-size: 0.92em; }
.xe-sign { font-weight: normal; color: #888; font-size: 0.85em; margin-left: 6px; }
.xe-pair { display: flex; gap: 6px; }
.xe-cell { display: flex; flex-direction: column; align-items: center; font-size: 0.8em; text-align: center; }
.xe-frame { position: relative; width: 140px; height: 140px; border: 1px solid #ccc; }
.xe-frame img { display: block; width: 140px; height: 140px; background: #fff; }
.xe-outline { position: absolute; inset: 0; background-image: var(--xe-outline); background-size: 100% 100%;
  pointer-events: none; }
.xe-cell.pending .xe-spin { width: 140px; height: 140px; display: flex; align-items: center; justify-content: center;
  background: #f3f3f3; color: #888; }
.xe-legend { display: flex; flex-wrap: wrap; gap: 4px 18px; margin-top: 8px; font-size: 0.85em; color: #444; }
.xe-key { display: inline-flex; align-items: center; gap: 5px; }
.xe-key img { border: 1px solid #bbb; }
.xe-line { display: inline-block; width: 22px; height: 0; border-top: 1.5px solid #141414; }
.xe-wait { color: #666; padding: 12px 0; }
.xe-error { color: #b00020; }
#xe-samples img { image-rendering: pixelated; }
#xe-samples .grid-container { grid-template-columns: repeat(auto-fill, minmax(56px, 1fr)) !important;
  grid-auto-rows: auto !important; gap: 6px !important; padding: 4px 4px 28px 4px !important; }
#xe-samples .thumbnail-item { width: 100% !important; height: auto !important; aspect-ratio: 1; }
#xe-samples .caption-label { font-size: 0.7em; padding: 0 3px; }
.xe-scroll-hint { color: #666; font-size: 0.85em; margin-top: -4px; }
"""

HELP = f"""
**How to read it.** The maps are grouped by family (CAMs, gradients, paths, perturbation,
propagation rules), each drawn over the outline of the 28x28 input. An **unsigned** map runs from
white (least) to dark red (most). A **signed** map is centred at 0 (white): red is evidence *for*
the class, blue evidence *against* it, scaled by the map's largest |value|. Under each map, its
**deletion AUC** for this image: the pixels are removed (set to black) in the map's order, most
important first (the map's value, signed maps included), in {DELETION_STEPS} steps, and the area
under the class-probability curve is taken. **Lower = more faithful**: the map found the pixels
the prediction rests on (0 would mean the probability vanishes at once). Compare AUCs between
methods for the same image and class: they vary from image to image, and a class the model gives
little probability to (the compared class, usually) has a small AUC whatever the map, since its
curve starts near 0. The fast methods answer first; the slower ones stream in, and a new stroke
stops them. A setting used for the first time compiles once (a few seconds).
"""


def build_app(app: App):
    """The Gradio page around ``app``; returns ``(blocks, launch keyword arguments)``."""
    import inspect

    import gradio as gr
    from mnist_data import DISPLAY_NAMES

    samples, info, noun = app.samples, app.samples_info, app.noun
    shown_name = DISPLAY_NAMES.get(app.dataset, app.dataset)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])

    def session_handler(fn, n_inputs):
        """``fn(*inputs, session=...)`` as a Gradio handler that also gets the browser tab.

        A request superseded before its first answer yields nothing; Gradio would then send
        None to every output, and if that arrives after the newer request's answer it blanks
        the page (status, input and maps). Such a request answers "no change" instead."""
        def handler(*args):
            *inputs, request = args
            answered = False
            for answer in fn(*inputs, session=getattr(request, "session_hash", None)):
                answered = True
                yield answer
            if not answered:
                yield tuple(gr.skip() for _ in outputs)
        params = [inspect.Parameter(f"a{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for i in range(n_inputs)]
        handler.__signature__ = inspect.Signature(
            params + [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)])
        handler.__annotations__ = {"request": gr.Request}  # how Gradio finds the parameter it fills in
        return handler

    with gr.Blocks(title=f"{shown_name} explanations explorer", analytics_enabled=False) as blocks:
        gr.Markdown(f"## Draw a {noun}, watch every explanation\nDraw with the pen (each stroke is explained "
                    f"as you go), pick one of the shipped test images, or drop / paste / upload a picture. "
                    f"The model: trained on {shown_name}.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                pad = gr.HTML(value="", html_template=PAD_TEMPLATE, js_on_load=PAD_JS, elem_id="xe-pad",
                              apply_default_css=False)
            with gr.Column(scale=2, min_width=320):
                picker = None
                if samples is not None:
                    n = len(samples.labels)
                    names = app.explorer.models[0].class_names
                    gr.Markdown(f"**…or pick one of the {n} shipped {shown_name} test images** "
                                f"<span class='xe-scroll-hint'>(the list scrolls: {n} in all, scroll down for more)"
                                "</span>", elem_id="xe-samples-title")
                    picker = gr.Gallery(value=[(samples.images[i, :, :, 0],
                                                names[int(samples.labels[i])] if int(samples.labels[i]) < len(names)
                                                else str(samples.labels[i]))
                                               for i in range(n)],
                                        label=f"{shown_name} test images", columns=8, height=300,
                                        allow_preview=False, elem_id="xe-samples", show_label=False, buttons=[],
                                        object_fit="contain")
                    gr.Markdown(f"<small>{html.escape(info.credit)}</small>")
                elif info.note:
                    gr.Markdown(info.note, elem_id="xe-no-samples")
                model_input = gr.HTML(render_input(None), elem_id="xe-input")
                status = gr.HTML(render_status(f"Draw a {noun} to start."), elem_id="xe-status")
        with gr.Row():
            names = app.explorer.models[0].class_names  # the first model's classes (the digits for MNIST)
            target = gr.Radio(["none"] + [(n, str(d)) if n != str(d) else n for d, n in enumerate(names)],
                              value="none", elem_id="xe-target",
                              label="Compare with class: why the prediction and not this one?")
        families = gr.CheckboxGroup([(t, k) for k, t in app.explorer.families],
                                    value=[k for k, _ in app.explorer.families], elem_id="xe-families",
                                    label=f"Method families to compute and show ({len(app.explorer.methods)} "
                                          "methods from the registry)")
        dropdowns = []
        with gr.Accordion("Options of the methods (the registry's menus)", open=False):
            by_method: dict = {}
            for method, o in app.menu:
                by_method.setdefault(method, []).append(o)
            for method, opts in by_method.items():
                with gr.Row():
                    for o in opts:
                        dropdowns.append(gr.Dropdown([str(v) for v in o.choices], value=str(o.default),
                                                     label=f"{title(method)}: {o.name}", info=o.help or None,
                                                     elem_id=f"xe-opt-{method}-{o.name}".replace("_", "-")))
        with gr.Row(equal_height=False):
            model_views = []
            for i, m in enumerate(app.explorer.models):
                with gr.Column(min_width=320):
                    model_views.append(gr.HTML(render_model(None, None, index=i, name=m.name, description=m.description),
                                               elem_id=f"xe-model-{i}"))
        gr.Markdown(HELP)

        outputs = [model_input, status, *model_views, state]
        settings = [target, families, *dropdowns]
        # "multiple": a new stroke is sent at once, and supersedes the tab's running request
        # (App._begin), rather than waiting for its slow maps ("always_last" would wait).
        common = dict(outputs=outputs, trigger_mode="multiple", concurrency_limit=4, concurrency_id="explain",
                      show_progress="hidden")
        pad.change(session_handler(app.on_canvas, 1 + len(settings)), inputs=[pad, *settings], api_name="explain",
                   **common)
        for control in settings:
            control.change(session_handler(app.on_settings, 1 + len(settings)), inputs=[state, *settings], **common)
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


def warm_page(url: str, app: App) -> float:
    """One drawing through the served page's own route (Gradio's queue, its event code, the
    handler), as the browser sends it: Gradio's first event costs about a second more than
    the next ones, which a person's first stroke would otherwise pay. Only the first stage
    is computed (no family chosen). Returns seconds; a failure is one line on stderr."""
    t0 = time.perf_counter()
    try:
        from gradio_client import Client
        from mnist_data import load_sample_digits

        value = sample_canvas_value(0, load_sample_digits().images[0]).split("|", 1)[1]
        client = Client(url, verbose=False, download_files=False)
        client.predict(value, "none", [], *[str(o.default) for _, o in app.menu], api_name="/explain")
        client.close()
    except Exception as e:  # the page still works, its first stroke is a little slower
        print(f"explore_mnist_xai: page warm-up: {type(e).__name__}: {cli.first_line(e)}", file=sys.stderr)
    return time.perf_counter() - t0


def start(models: list[LoadedModel], host: str = "127.0.0.1", port: int | None = None, warm_up: bool = True,
          block: bool = True, log=None, methods=None, samples: Samples | None = None):
    """Warm up, then serve the page. Returns ``(blocks, url)`` when ``block`` is False (the
    server runs in a thread until ``blocks.close()``).

    ``methods``: the registered names to show (None: all); ``samples``: the sample images to
    offer (None: ``load_samples`` of the first model's dataset).

    Start-up order: a drawing goes through the whole path of the first stage (the canvas's
    PNG decoded, preprocessed, explained by GradCAM and saliency with their AUCs, the page's
    HTML made), alone and compared with another class, while Gradio is imported and the page
    built; then the server starts, and the other methods' programs are made ready in the
    background, pausing while a person's request runs (a drawing meanwhile shows the maps
    not yet ready as "computing…" until they are).
    """
    offline_environment()
    import warnings
    # Gradio's queue statistics use pandas calls pandas 3 deprecates: not the user's concern.
    warnings.filterwarnings("ignore", module=r"gradio(\.|$)")
    log = log or (lambda text: print(text, flush=True))
    t0 = time.perf_counter()
    explorer = Explorer(models, methods=methods)
    app = App(explorer, samples if samples is not None else load_samples(models[0].dataset))
    built, failed = [], []

    def build():
        try:
            built.append(build_app(app))
        except BaseException as e:  # re-raised below, in the main thread
            failed.append(e)

    builder = threading.Thread(target=build, name="explore-build")
    builder.start()
    if warm_up:
        app.warm_up(stages=1)
    builder.join()
    if failed:
        raise failed[0]
    blocks, style = built[0]
    port = port if port is not None else free_port(host)
    blocks.queue(default_concurrency_limit=4)
    blocks.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                  quiet=True, show_error=False, max_file_size="20mb", ssr_mode=False, mcp_server=False, pwa=False,
                  footer_links=[], **style)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    url = f"http://{shown if ':' not in shown else '[' + shown + ']'}:{port}/"
    if warm_up:
        local = {"0.0.0.0": "127.0.0.1", "::": "::1", "localhost": "127.0.0.1"}.get(host, host)
        warm_page(f"http://{local if ':' not in local else '[' + local + ']'}:{port}/", app)
    log(f"explorer ready in {time.perf_counter() - t0:.1f} s: open {url}  (Ctrl-C stops it)")

    def rest():
        try:
            app.warm_up(background=True)
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
    parser.add_argument("--methods", default="all",
                        help="the methods to show: names, families (cam, gradient, path, perturbation, propagation) "
                             "or all, comma-separated (default: %(default)s; python -m mnist_xai lists them)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="serve at once and compile each program on first use instead")
    args = parser.parse_args(argv)
    if args.checkpoint and len(args.checkpoint) > 2:
        parser.error(f"--checkpoint: expected one or two, got {len(args.checkpoint)}")
    if args.port is not None and not 0 < args.port < 65536:
        parser.error(f"--port: expected 1-65535, got {args.port}")
    from mnist_checkpoint import CheckpointError

    try:
        methods = _registry().parse_method_list(args.methods)
    except ValueError as e:
        parser.error(f"--methods: {cli.first_line(e, 400)}")
    try:
        models = load_models(args.checkpoint)
    except CheckpointError as e:
        print(f"error: {cli.first_line(e, 400)}", file=sys.stderr)
        return 2
    try:
        start(models, args.host, args.port, warm_up=not args.no_warmup, methods=methods)
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

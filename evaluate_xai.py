"""Score every explanation method by every registered metric, on N test images.

    python evaluate_xai.py                                  # from a fresh clone: the 200 shipped digits
    python evaluate_xai.py --data-dir DIR                   # 1,000 test digits (DIR: the MNIST IDX files)
    python evaluate_xai.py --methods gradcam,saliency --num-images 100 --metrics deletion,insertion
    python evaluate_xai.py --metrics faithfulness           # a whole family of metrics
    python evaluate_xai.py --list-metrics                   # what is registered, by family
    # several processes (here two on one machine; on several hosts give the first host's address):
    python evaluate_xai.py --num-processes 2 --process-id 0 --coordinator 127.0.0.1:8476 &
    python evaluate_xai.py --num-processes 2 --process-id 1 --coordinator 127.0.0.1:8476

Checkpoint: --checkpoint if given, else checkpoints/ when a training run there has saved a
step, else the shipped pretrained/. Data: --data-dir if given, else $MNIST_DATA_DIR, else a
copy tensorflow-datasets has prepared ($TFDS_DATA_DIR, default ~/tensorflow_datasets), else
the 200 real test digits shipped in sample_data/ (with a note); --tfds reads (and on first
use downloads) tensorflow-datasets' copy. The dataset is the one the checkpoint was trained
on: for fashion_mnist/kmnist the folder variable is $FASHION_MNIST_DATA_DIR/$KMNIST_DATA_DIR,
and there are no shipped images to fall back on.

The metrics come from the metric registry (mnist_xai/metrics; --list-metrics shows them):
the table's columns, results.json and the figures are generated from each metric's result
(its title, direction, mean and bootstrap 95% interval), so a newly registered metric needs
no edit here. Each map explains the predicted class; a random map and a Sobel edge map are
scored beside the methods as baselines. Metrics that re-run the explainer (they "need" one:
randomisation, robustness, input invariance) score the first --randomization-images images. A metric that does not apply to a method (completeness needs a path method) shows
its reason in the table. --import adds metrics of your own (a module or a .py file whose
@register_metric functions then count as registered). Metric options: --steps and
--temperature go to every metric that takes them (deletion/insertion steps; the
probability softmax(logits / T), 'checkpoint': the checkpoint's calibrated T); any other
with --metric-option NAME.OPTION=VALUE.

Writes into --out: results.json (every summary), values.npz (every per-image value, as
"method/metric"), results.md (the table, the ranking and where the measures disagree),
chart.png (method x metric with 95% intervals, the best marked, the rank agreement) and
curves.png (the mean curve of every metric that returns per-image curves); prints the table.

Several processes (jax.distributed): --num-processes P --process-id I --coordinator HOST:PORT
(or $JAX_NUM_PROCESSES, $JAX_PROCESS_ID, $JAX_COORDINATOR_ADDRESS). The images are cut into
blocks of --block images, each with its own random key; each process scores its share of the
blocks, the per-image values are gathered, and process 0 writes the same outputs a single
process writes.
"""
from __future__ import annotations

import datetime
import inspect
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

import cli

if __name__ == "__main__":
    cli.before_jax()  # each chunk split over the cores, compilation cache: before JAX is imported

DEFAULT_OUT = Path("outputs") / "xai_eval"
# The eight methods this evaluation has always run; any others by name, by family or "all".
DEFAULT_METHODS = "gradcam,gradcam++,scorecam,saliency,gradient_x_input,integrated_gradients,smoothgrad,occlusion"
# The measures this evaluation has always reported, now by their registered names.
DEFAULT_METRICS = ("deletion", "insertion", "road", "ink_share", "frame_share", "model_parameter_randomisation",
                   "completeness")
BASELINES = ("random (baseline)", "sobel edges (baseline)")
RANDOM = BASELINES[0]
DEFAULT_BLOCK = 250  # images per unit of work: one key, one progress step, one share of a process
# Today's files and those of the evaluation before the registry (an --out holding them is a previous output).
OUTPUT_FILES = frozenset({"results.json", "results.md", "values.npz", "chart.png", "curves.png",
                          "randomization.png", "randomization_maps.png"})
INK_THRESHOLD = 0.5  # the ink mask of grayscale digits: pixels > 0.5 (mnist_xai_metrics.INK_THRESHOLD)
DISAGREE_TAU = 0.5  # two metrics whose method rankings agree less (Kendall tau) are said to disagree


# ----------------------------------------------------------------------------- choosing metrics


def parse_metric_list(text: str) -> tuple[list[str], list[str]]:
    """"deletion,insertion" (names), "faithfulness" (a family) or "all" -> ``(registered names to
    run, default names not registered yet)``. A name that is neither registered nor one of
    ``DEFAULT_METRICS``: one ValueError line."""
    from mnist_xai.metrics import FAMILIES, METRICS, metric_names

    names, missing, unknown = [], [], []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if part == "all":
            names += metric_names()
        elif part in dict(FAMILIES):
            names += metric_names(part)
        elif part in METRICS:
            names.append(part)
        elif part in DEFAULT_METRICS:
            missing.append(part)
        else:
            unknown.append(part)
    if unknown or not (names or missing):
        raise ValueError(f"metrics: expected names from {', '.join(metric_names()) or '(none registered)'} "
                         f"(or 'all', or a family: {', '.join(dict(FAMILIES))}), got {', '.join(unknown) or 'none'}")
    return list(dict.fromkeys(names)), list(dict.fromkeys(missing))


def list_metrics() -> str:
    """The registered metrics by family, one line each: name, direction, needs, title, summary."""
    from mnist_xai.metrics import FAMILIES, METRICS, metric_names

    lines = []
    for family, title in FAMILIES:
        names = metric_names(family)
        if names:
            lines.append(f"{title}:")
            for n in names:
                s = METRICS[n]
                lines.append(f"  {n:<32} {'↑' if s.higher_is_better else '↓'}  needs {'+'.join(s.needs):<20} "
                             f"{s.title}: {s.summary}")
    missing = [n for n in DEFAULT_METRICS if n not in METRICS]
    if missing:
        lines.append(f"not registered yet (defaults): {', '.join(missing)}")
    return "\n".join(lines) if lines else "no metrics registered"


def import_metrics(spec: str) -> None:
    """Import a module by name or a .py file by path, so its ``@register_metric`` functions register."""
    import importlib
    import importlib.util

    path = Path(spec)
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise ValueError(f"--import: expected a module name or a .py file, found no file {spec}")
            module_spec = importlib.util.spec_from_file_location(f"_evaluate_xai_import_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except ImportError as e:
        raise ValueError(f"--import: expected an importable module or a .py file, got {spec} ({cli.first_line(e)})") \
            from None


def accepted_options(name: str, pool: dict) -> dict:
    """The entries of ``pool`` that metric ``name``'s function takes as keyword arguments."""
    from mnist_xai.metrics import METRICS

    params = inspect.signature(METRICS[name].fn).parameters
    return {k: v for k, v in pool.items()
            if k in params and params[k].kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def parse_metric_options(items, metrics) -> dict[str, dict]:
    """``["road.noise=0.02", ...]`` -> ``{"road": {"noise": 0.02}}``, each value read as JSON (else
    the string), each checked against the metric's signature; ValueError (one line) otherwise."""
    from mnist_xai.metrics import METRICS

    out: dict[str, dict] = {}
    for item in items or ():
        head, sep, value = item.partition("=")
        metric, dot, option = head.partition(".")
        if not (sep and dot and metric and option):
            raise ValueError(f"--metric-option: expected NAME.OPTION=VALUE, got {item!r}")
        if metric not in metrics:
            raise ValueError(f"--metric-option {item}: expected a metric being run ({', '.join(metrics)}), got {metric!r}")
        params = inspect.signature(METRICS[metric].fn).parameters
        takes = [p for p in list(params)[1:] if params[p].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                       inspect.Parameter.VAR_KEYWORD)]
        if option not in takes:
            raise ValueError(f"--metric-option {item}: {metric} takes {', '.join(takes) or 'no options'}, "
                             f"got {option!r}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(metric, {})[option] = parsed
    return out


# ----------------------------------------------------------------------------- scoring


class BaselineExplainer:
    """Carries the model for a baseline map (random, Sobel): its forward pass is ``carrier``'s,
    but there is no method to re-run, so metrics that need an explainer are skipped for it."""

    def __init__(self, carrier, name: str):
        self.carrier, self.name = carrier, name
        self.target, self.logits = carrier.target, carrier.logits

    def attribute(self, *args, **kwargs):
        from mnist_xai.metrics.base import NotApplicable
        raise NotApplicable(f"{self.name} is a fixed map: there is no explainer to re-run")


def sobel_maps(images) -> np.ndarray:
    """Gradient magnitude (Sobel) of the channel mean, (N, H, W): an edge map that ignores the
    model (for one channel, ``mnist_xai_metrics.sobel_attribution``)."""
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(np.asarray(images, np.float32).mean(-1))
    kx = jnp.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], jnp.float32)
    conv = jax.vmap(lambda im, k: jax.scipy.signal.convolve2d(im, k, mode="same"), in_axes=(0, None))
    return np.asarray(jnp.hypot(conv(x, kx), conv(x, kx.T)))


def blocks_of(n: int, block: int, process_index: int = 0, process_count: int = 1) -> list[tuple[int, int, int]]:
    """``(block index, start, stop)`` of the images' blocks that process ``process_index`` of
    ``process_count`` scores: contiguous shares of whole blocks, so a block (and its key) is
    the same whatever the number of processes."""
    starts = list(range(0, n, block))
    share = np.array_split(np.arange(len(starts)), process_count)[process_index]
    return [(int(b), starts[b], min(starts[b] + block, n)) for b in share]


def _merge_details(parts: list[tuple[int, dict]]) -> tuple[dict, dict]:
    """Blocks' details -> ``(one dict, {key: image axis})``. An array whose first or last axis has
    the block's image count in every block is per-image: concatenated along that axis. Where
    both do in every block (a square (stages, N) with N = stages, say) the axis is unknown, and
    like anything else (fractions, layer names) the first block's value is kept, axis None."""
    if not parts:
        return {}, {}
    out, axes = {}, {}
    for k, first in parts[0][1].items():
        arrays, candidates = [], None
        for n, d in parts:
            a = np.asarray(d[k]) if k in d and not isinstance(d[k], (str, bytes)) else None
            if a is None or a.dtype == object or a.ndim == 0:
                candidates = set()
                break
            here = {ax for ax in (0, a.ndim - 1) if a.shape[ax] == n}
            candidates = here if candidates is None else candidates & here
            arrays.append(a)
        axis = candidates.pop() if candidates and len(candidates) == 1 else None
        out[k] = np.concatenate(arrays, axis) if axis is not None else first
        axes[k] = axis
    return out, axes


def score_blocks(params, batch_stats, model, images, methods, metrics, seed=0, options=None,
                 explainer_images=100, block=DEFAULT_BLOCK, masks="ink", baselines=True, process_index=0,
                 process_count=1, progress=print) -> dict:
    """This process's share of the work: for each block of images, the predicted classes, and for
    each map (the baselines', each method's) and each metric the per-image values and details.

    ``images`` (N, H, W, C) float32 (all of them: every process reads the same set and scores its
    blocks); ``model``: anything the explainers take. ``masks``: "ink" (pixels of the channel mean
    > 0.5: the object of a digit), None, or (N, H, W) bool. ``options``: ``{metric: {option: value}}``.
    Returns ``{"targets": {b: (n,)}, "records": {(map, metric): {b: (n_scored, values, details)} or
    {"skipped": reason}}, "seconds": {...}}`` (picklable: what the processes exchange).
    """
    import jax
    from tqdm import tqdm

    import mnist_xai_visualizations as X
    from mnist_xai.metrics import METRICS, MetricInput, evaluate
    from mnist_xai.metrics.base import NotApplicable, not_applicable

    options = options or {}
    images = np.asarray(images, np.float32)
    n, h, w = images.shape[:3]
    if isinstance(masks, str) and masks == "ink":
        masks = images.mean(-1) > INK_THRESHOLD
    elif masks is not None:
        masks = np.asarray(masks, bool).reshape(n, h, w)
    mine = blocks_of(n, block, process_index, process_count)
    root = jax.random.PRNGKey(seed)

    def bar(total, desc):  # a progress bar on a terminal, nothing in logs (disable=None)
        return tqdm(total=total, desc=f"  {desc}", unit="image", leave=False, disable=None, dynamic_ncols=True)

    carrier = X.make_explainer("saliency", model)
    explainers = {name: X.make_explainer(name, model) for name in methods}  # reused below: compiled once
    if baselines:
        explainers = {b: BaselineExplainer(carrier, b) for b in BASELINES} | explainers
    targets = {b: MetricInput(images[s:e], explainer=carrier, params=params, batch_stats=batch_stats).targets
               for b, s, e in mine}
    keys = {b: jax.random.fold_in(root, b) for b, _, _ in mine}
    records, seconds = {}, {}
    for name, explainer in explainers.items():
        t0 = time.perf_counter()
        maps = {}
        with bar(sum(e - s for _, s, e in mine), f"{name}: maps") as pb:
            for b, s, e in mine:
                if name == BASELINES[0]:
                    maps[b] = np.asarray(jax.random.uniform(jax.random.fold_in(keys[b], 1), (e - s, h, w)))
                elif name == BASELINES[1]:
                    maps[b] = sobel_maps(images[s:e])
                else:
                    maps[b] = np.asarray(explainer.attribute(params, batch_stats, images[s:e], targets[b],
                                                             key=keys[b], progress=pb.update))
                    continue
                pb.update(e - s)
        seconds[(name, "maps")] = time.perf_counter() - t0
        progress(f"  {name}: maps in {seconds[(name, 'maps')]:.1f} s")
        inputs = {}
        for metric in metrics:
            spec = METRICS[metric]
            reexplains = "explainer" in spec.needs
            reason = "a fixed baseline map: no explainer to re-run" if reexplains and name in BASELINES else None
            if reason is None and "masks" in spec.needs and masks is None:
                reason = "no object masks for these images"
            if reason is None:
                reason = not_applicable(metric, explainer)
            if reason is not None:
                records[(name, metric)] = {"skipped": reason}
                continue
            t0 = time.perf_counter()
            limit = explainer_images if reexplains else n
            todo = [(b, s, min(e, limit)) for b, s, e in mine if s < limit]
            out = {}
            with bar(sum(e - s for _, s, e in todo), f"{name}: {metric}") as pb:
                for b, s, e in todo:
                    k = e - s
                    if (b, k) not in inputs:  # one input a block for all metrics: they share work
                        inputs[(b, k)] = MetricInput(images[s:e], targets[b][:k], maps[b][:k], explainer, params,
                                                     batch_stats, None if masks is None else masks[s:e], keys[b])
                    inp = inputs[(b, k)]
                    try:
                        r = evaluate(metric, inp, **options.get(metric, {}))
                    except NotApplicable as err:
                        out = {"skipped": cli.first_line(err)}
                        break
                    if r.values.shape != (k,):
                        raise ValueError(f"{metric}: expected one value per image ({k}), got shape {r.values.shape}")
                    out[b] = (k, r.values, r.details)
                    pb.update(k)
            records[(name, metric)] = out
            seconds[(name, metric)] = time.perf_counter() - t0
        progress(f"  {name}: metrics in {sum(v for (m, k), v in seconds.items() if m == name and k != 'maps'):.1f} s")
    return {"targets": targets, "records": records, "seconds": seconds}


def gather(local: dict) -> list[dict]:
    """Every process's ``local`` (any picklable object), in process order, on every process
    (``multihost_utils.process_allgather`` of its pickled bytes; one process: ``[local]``)."""
    import pickle

    import jax

    if jax.process_count() == 1:
        return [local]
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(local), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([len(data)], np.int32))).reshape(-1)
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:len(data)] = data
    everyone = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), -1)
    return [pickle.loads(everyone[i, :int(sizes[i])].tobytes()) for i in range(len(sizes))]


def merge(parts: list[dict], names: list[str], metrics: list[str], seed: int = 0):
    """The processes' ``score_blocks`` outputs -> ``(targets (N,), results {map: {metric:
    MetricResult or reason}}, seconds)``: blocks in order, so the result is a single run's."""
    from mnist_xai.metrics import METRICS, MetricResult
    from mnist_xai.metrics.base import bootstrap_ci

    targets = {b: t for p in parts for b, t in p["targets"].items()}
    targets = np.concatenate([targets[b] for b in sorted(targets)]) if targets else np.zeros(0, np.int32)
    results, seconds = {}, {}
    for p in parts:
        for k, v in p["seconds"].items():
            seconds[k] = max(seconds.get(k, 0.0), v)  # the processes run side by side: the slowest counts
    for name in names:
        row = {}
        for metric in metrics:
            recs = [p["records"].get((name, metric)) for p in parts]
            skipped = [r["skipped"] for r in recs if r is not None and "skipped" in r]
            if skipped:
                row[metric] = skipped[0]
                continue
            blocks = {b: v for r in recs if r for b, v in r.items()}
            order = sorted(blocks)
            values = np.concatenate([blocks[b][1] for b in order]) if order else np.zeros(0)
            details, axes = _merge_details([(blocks[b][0], blocks[b][2]) for b in order])
            res = MetricResult(metric, values, METRICS[metric].higher_is_better, details=details)
            res.image_axes = axes  # which details are per image, along which axis (the curves)
            res.mean, res.low, res.high = bootstrap_ci(values, seed)
            row[metric] = res
        results[name] = row
    return targets, results, seconds


# ----------------------------------------------------------------------------- the report


def _finite(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def rankings(report: dict) -> dict[str, list[str]]:
    """Per metric: the methods (baselines left out) with a value, best first (by its direction)."""
    out = {}
    for metric, info in report["metrics"].items():
        scored = [(r[metric]["mean"], name) for name, r in report["results"].items()
                  if name not in BASELINES and isinstance(r.get(metric), dict) and r[metric].get("mean") is not None]
        scored.sort(key=lambda t: -t[0] if info["higher_is_better"] else t[0])
        out[metric] = [name for _, name in scored]
    return out


def rank_agreement(ranks: dict[str, list[str]]) -> dict:
    """Kendall's tau between every two metrics' rankings, over the methods both rank (>= 3 of
    them; else None): 1 = the same order, -1 = reversed."""
    from scipy.stats import kendalltau

    names = [m for m, r in ranks.items() if len(r) >= 3]
    tau = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = [m for m in ranks[a] if m in ranks[b]]
            if len(common) >= 3:
                t = kendalltau([ranks[a].index(m) for m in common], [ranks[b].index(m) for m in common]).statistic
                tau[f"{a}|{b}"] = _finite(t)
    return tau


def _overlap(report: dict, a: str, b: str, metric: str) -> bool:
    """Whether the 95% intervals of maps ``a`` and ``b`` by ``metric`` overlap."""
    ra, rb = report["results"][a][metric].get("ci95"), report["results"][b][metric].get("ci95")
    if not ra or not rb or None in ra + rb:
        return False
    return ra[0] <= rb[1] and rb[0] <= ra[1]


def verdict(report: dict) -> list[str]:
    """Sentences for the chart and results.md: the best method by each measure, the most faithful
    (faithfulness family), and where the measures disagree (Kendall tau of their rankings)."""
    ranks, info = report["rankings"], report["metrics"]
    lines = []
    best_by: dict[str, list[str]] = {}
    for metric, r in ranks.items():
        if r:
            best_by.setdefault(r[0], []).append(info[metric]["title"])
    faithful = {}
    for metric, r in ranks.items():
        if r and info[metric]["family"] == "faithfulness":
            tied = [m for m in r[1:] if _overlap(report, r[0], m, metric)]
            faithful.setdefault(r[0], []).append(info[metric]["title"] + (
                f" (tied with {', '.join(tied[:2])}{' and more' if len(tied) > 2 else ''} within the 95% intervals)"
                if tied else ""))
    if faithful:
        lines.append("Most faithful: " + "; ".join(f"{m} by {', '.join(t)}" for m, t in faithful.items()) + ".")
    if best_by:
        lines.append("Best by each measure: " + "; ".join(f"{m} ({', '.join(t)})" for m, t in best_by.items()) + ".")
    tau = {k: v for k, v in report["rank_agreement"].items() if v is not None}
    if tau:
        low = sorted(tau.items(), key=lambda kv: kv[1])
        bad = [kv for kv in low if kv[1] < DISAGREE_TAU]
        title = lambda k: " and ".join(info[m]["title"] for m in k.split("|"))  # noqa: E731
        if bad:
            lines.append(f"The measures disagree (Kendall τ of the method rankings < {DISAGREE_TAU}): "
                         + "; ".join(f"{title(k)} τ = {v:.2f}" for k, v in bad[:4])
                         + (f"; and {len(bad) - 4} more pairs" if len(bad) > 4 else "") + ".")
        else:
            lines.append(f"Every two measures rank the methods alike (Kendall τ ≥ {DISAGREE_TAU}; "
                         f"lowest {title(low[0][0])} τ = {low[0][1]:.2f}).")
    return lines


def build_report(results: dict, targets, labels, metrics: list[str], seconds: dict, **facts) -> dict:
    """The JSON-ready report: per map and metric its summary (or why it was skipped), the metrics'
    facts from the registry, the ranking, the rank agreement and the verdict."""
    from mnist_xai.metrics import METRICS

    report = {"num_images": int(len(targets)), **facts,
              "model_accuracy": _finite(np.mean(np.asarray(targets) == np.asarray(labels))) if len(targets) else None,
              "metrics": {m: {"title": METRICS[m].title, "family": METRICS[m].family,
                              "higher_is_better": METRICS[m].higher_is_better, "needs": list(METRICS[m].needs),
                              "reference": METRICS[m].reference, "paper": METRICS[m].paper,
                              "summary": METRICS[m].summary} for m in metrics},
              "results": {}, "curves": {}, "seconds_by_step": {}}
    for name, row in results.items():
        out, curves = {}, {}
        for metric, r in row.items():
            if isinstance(r, str):
                out[metric] = {"skipped": r}
                continue
            s = r.summary()
            out[metric] = {"mean": _finite(s["mean"]), "ci95": [_finite(v) for v in s["ci95"]], "n": s["n"]}
            for k, axis in getattr(r, "image_axes", {}).items():
                a = np.asarray(r.details[k]) if axis is not None else None
                if a is not None and a.ndim == 2 and a.shape[1 - axis] > 1:  # a per-image curve
                    with np.errstate(all="ignore"):
                        mean = np.nanmean(a.astype(np.float64), axis)
                    curves[f"{metric}/{k}"] = [_finite(x) for x in mean]
        report["results"][name] = out
        if curves:
            report["curves"][name] = curves
    report["seconds_by_step"] = {f"{m}/{k}": round(v, 3) for (m, k), v in seconds.items()}
    report["rankings"] = rankings(report)
    report["rank_agreement"] = rank_agreement(report["rankings"])
    report["verdict"] = verdict(report)
    return report


def _fmt(v) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if v == 0 or 1e-3 <= abs(v) < 1e4 else f"{v:.3g}"


def beats_random(report: dict, name: str, metric: str) -> bool:
    """The method's 95% interval lies wholly on the better side of the random map's."""
    rnd = report["results"].get(RANDOM, {}).get(metric, {})
    r = report["results"][name].get(metric, {})
    if name in BASELINES or "ci95" not in rnd or "ci95" not in r or None in rnd["ci95"] + r["ci95"]:
        return False
    if report["metrics"][metric]["higher_is_better"]:
        return r["ci95"][0] > rnd["ci95"][1]
    return r["ci95"][1] < rnd["ci95"][0]


def format_table(report: dict) -> str:
    """The results as a markdown table, one column per metric (its title, ↑/↓ and the 95%
    interval), generated from the report; bold: the best method; °: beats the random map;
    a skipped cell points to its reason below the table."""
    metrics = list(report["metrics"])
    ranks = report.get("rankings") or rankings(report)
    head = ["method"] + [f"{report['metrics'][m]['title']} {'↑' if report['metrics'][m]['higher_is_better'] else '↓'}"
                         " (95% CI)" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reasons: list[str] = []
    for name, row in report["results"].items():
        cells = [name]
        for m in metrics:
            r = row.get(m, {})
            if "skipped" in r:
                if r["skipped"] not in reasons:
                    reasons.append(r["skipped"])
                cells.append(f"n/a [{reasons.index(r['skipped']) + 1}]")
                continue
            if r.get("mean") is None:
                cells.append("—")
                continue
            lo, hi = r["ci95"]
            cell = f"{_fmt(r['mean'])} ({_fmt(lo)}–{_fmt(hi)})"
            if ranks.get(m) and ranks[m][0] == name:
                cell = f"**{cell}**"
            cells.append(cell + ("°" if beats_random(report, name, m) else ""))
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["", "Bold: the best method by that measure (baselines left out); °: its 95% interval lies wholly "
                 "on the better side of the random map's."] if any(ranks.values()) else []
    notes += [f"[{i + 1}] {r}" for i, r in enumerate(reasons)]
    return "\n".join(lines + notes)


def format_ranking(report: dict) -> str:
    """Each method's rank by each metric (1 = best), as a markdown table."""
    ranks = report["rankings"]
    metrics = [m for m in report["metrics"] if ranks.get(m)]
    methods = [n for n in report["results"] if n not in BASELINES]
    if not metrics or not methods:
        return ""
    head = ["method"] + [report["metrics"][m]["title"] for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in methods:
        lines.append("| " + " | ".join([name] + [str(ranks[m].index(name) + 1) if name in ranks[m] else "—"
                                                for m in metrics]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def plot_chart(report: dict, path: Path) -> bool:
    """The method x metric chart: one panel per metric (its title and direction), the methods as
    rows with their mean and 95% interval, the best method starred, the random map's interval as
    a grey band; a last panel of the rank agreement (Kendall tau); the verdict as the caption.
    A Figure of its own (no pyplot state). Returns False when there is nothing to draw."""
    from matplotlib.figure import Figure

    metrics = [m for m in report["metrics"] if any("mean" in r.get(m, {}) for r in report["results"].values())]
    if not metrics:
        return False
    names = list(report["results"])
    tau = report.get("rank_agreement", {})
    ranked = [m for m in metrics if len(report["rankings"].get(m, [])) >= 3]
    panels = len(metrics) + (1 if len(ranked) >= 2 else 0)
    cols = min(4, panels)
    rows = -(-panels // cols)
    caption = report.get("verdict", [])
    fig = Figure(figsize=(3.4 * cols + 1.2, (0.28 * len(names) + 1.3) * rows + 0.35 * len(caption) + 0.9))
    axes = fig.subplots(rows, cols, squeeze=False)
    y = np.arange(len(names))[::-1]
    for i, m in enumerate(metrics):
        ax = axes.flat[i]
        info = report["metrics"][m]
        best = report["rankings"].get(m, [None])[0] if report["rankings"].get(m) else None
        rnd = report["results"].get(RANDOM, {}).get(m, {})
        if rnd.get("ci95") and None not in rnd["ci95"]:
            ax.axvspan(*rnd["ci95"], color="0.85", zorder=0)
        for yi, name in zip(y, names):
            r = report["results"][name].get(m, {})
            if r.get("mean") is None:
                ax.text(0.02, yi, "n/a" if "skipped" in r else "—", transform=ax.get_yaxis_transform(),
                        va="center", fontsize=6, color="0.4")
                continue
            lo, hi = (v if v is not None else r["mean"] for v in r["ci95"])
            color = "0.55" if name in BASELINES else ("C3" if name == best else "C0")
            ax.errorbar(r["mean"], yi, xerr=[[r["mean"] - lo], [hi - r["mean"]]], fmt="o", ms=3.5, color=color,
                        capsize=2, lw=1)
            if name == best:
                ax.plot(r["mean"], yi, "*", ms=11, color="C3", zorder=3)
        ax.set_yticks(y, names if i % cols == 0 else [""] * len(names), fontsize=7)
        ax.set_ylim(-0.7, len(names) - 0.3)
        ax.set_title(f"{info['title']}\n{'↑ higher' if info['higher_is_better'] else '↓ lower'} is better"
                     + (f"; best: {best}" if best else ""), fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.grid(axis="x", alpha=0.3)
    k = len(metrics)
    if len(ranked) >= 2:
        ax = axes.flat[k]
        mat = np.full((len(ranked), len(ranked)), np.nan)
        for a_i, a in enumerate(ranked):
            for b_i, b in enumerate(ranked):
                v = 1.0 if a == b else tau.get(f"{a}|{b}", tau.get(f"{b}|{a}"))
                mat[a_i, b_i] = np.nan if v is None else v
        ax.imshow(mat, cmap="RdBu", vmin=-1, vmax=1)
        for a_i in range(len(ranked)):
            for b_i in range(len(ranked)):
                if np.isfinite(mat[a_i, b_i]):
                    ax.text(b_i, a_i, f"{mat[a_i, b_i]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if abs(mat[a_i, b_i]) > 0.6 else "black")
        labels = [textwrap.fill(report["metrics"][m]["title"], 18) for m in ranked]  # whole, on two lines
        ax.set_xticks(range(len(ranked)), labels, rotation=60, ha="right", fontsize=6)
        ax.set_yticks(range(len(ranked)), labels, fontsize=6)
        ax.set_title("Rank agreement of the methods\n(Kendall τ; 1 = same order)", fontsize=8)
        k += 1
    for ax in axes.flat[k:]:
        ax.set_visible(False)
    n = report["num_images"]
    fig.suptitle(f"{len(names)} maps x {len(metrics)} metrics on {n} {report.get('dataset_name', '')} test images: "
                 "mean and 95% bootstrap interval; ★ best method; grey band: the random map's interval",
                 fontsize=9)
    if caption:
        fig.text(0.01, 0.005, "\n".join(caption), fontsize=7.5, va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.02 + 0.022 * len(caption), 1, 0.97))
    fig.savefig(path, dpi=90)
    return True


def plot_curves(report: dict, path: Path) -> bool:
    """The mean curve of every metric detail that is a per-image curve (deletion, insertion, ROAD,
    a randomisation cascade...), one panel each, one line per map. Returns False when none."""
    from matplotlib.figure import Figure

    keys = list(dict.fromkeys(k for c in report.get("curves", {}).values() for k in c))
    if not keys:
        return False
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig = Figure(figsize=(4.4 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    colour = {name: f"C{i % 10}" for i, name in enumerate(report["curves"])}  # one colour per map in every panel
    for ax, key in zip(axes.flat, keys):
        metric, detail = key.split("/", 1)
        info = report["metrics"].get(metric, {"title": metric, "higher_is_better": True})
        for name, curves in report["curves"].items():
            if key in curves:
                c = np.array([np.nan if v is None else v for v in curves[key]])
                ax.plot(np.linspace(0, 1, len(c)) if len(c) > 1 else [0], c, "--" if name in BASELINES else "-",
                        label=name, lw=1, color=colour[name])
        ax.set_title(f"{info['title']}: {detail}\n({'↑ higher' if info['higher_is_better'] else '↓ lower'} is better)",
                     fontsize=8)
        ax.set_xlabel("position along the curve (0 to 1)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=colour[n], ls="--" if n in BASELINES else "-", lw=1) for n in colour]
    if len(keys) % cols:  # a free panel: the legend there
        axes.flat[-1].legend(handles, list(colour), fontsize=7, loc="center")
    else:
        axes.flat[0].legend(handles, list(colour), fontsize=6)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"Mean curves over {report['num_images']} test images", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def write_outputs(report: dict, values: dict, out: Path, command: str) -> None:
    """Write everything into a fresh folder beside ``out``, then swap it in (``cli.atomic_folder``)."""
    with cli.atomic_folder(out) as tmp:
        (tmp / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        np.savez_compressed(tmp / "values.npz", **values)
        figures = ""
        if plot_chart(report, tmp / "chart.png"):
            figures += "\n![method x metric](chart.png)\n"
        if plot_curves(report, tmp / "curves.png"):
            figures += "\n![curves](curves.png)\n"
        ranking = format_ranking(report)
        facts = ", ".join(f"{k} {v}" for k, v in report.get("options", {}).items())
        (tmp / "results.md").write_text(
            f"# The explanations, by every metric\n\n{report.get('date', '')}, `{command}`, {report.get('machine', '')}\n\n"
            f"{report['num_images']} test images"
            + (f" (model accuracy {100 * report['model_accuracy']:.2f}%)" if report.get("model_accuracy") is not None else "")
            + f"; metrics that re-run the explainer on the first {report.get('explainer_images')}. "
            + (f"Options: {facts}. " if facts else "") + "\n\n"
            + f"{format_table(report)}\n\n" + "\n".join(report.get("verdict", [])) + "\n"
            + (f"\n## Rank of each method by each measure (1 = best)\n\n{ranking}\n" if ranking else "")
            + figures, encoding="utf-8")


def values_of(results: dict) -> dict[str, np.ndarray]:
    """Every per-image value array, named "map/metric" (values.npz)."""
    return {f"{name}/{metric}": r.values for name, row in results.items() for metric, r in row.items()
            if not isinstance(r, str)}


# ----------------------------------------------------------------------------- the library call


def evaluate_methods(params, batch_stats, model, images, labels, methods, metrics=None, seed=0, options=None,
                     explainer_images=100, block=DEFAULT_BLOCK, masks="ink", baselines=True, progress=print):
    """Score ``methods`` by ``metrics`` (registered names; default: those of ``DEFAULT_METRICS``
    that are registered) on ``images`` (N, H, W, C) float32 with ``model`` (anything the
    explainers take). Under ``jax.distributed`` each process scores its blocks and every process
    gets the merged result. Returns ``(report, results)``: the JSON-ready report and
    ``{map: {metric: MetricResult or skip reason}}``."""
    import jax

    from mnist_xai.metrics import METRICS

    metrics = list(metrics) if metrics is not None else [m for m in DEFAULT_METRICS if m in METRICS]
    local = score_blocks(params, batch_stats, model, images, methods, metrics, seed, options, explainer_images,
                         block, masks, baselines, jax.process_index(), jax.process_count(), progress)
    names = (list(BASELINES) if baselines else []) + list(methods)
    targets, results, seconds = merge(gather(local), names, metrics, seed)
    report = build_report(results, targets, labels, metrics, seconds, seed=seed,
                          explainer_images=min(explainer_images, len(targets)), block=block,
                          processes=jax.process_count(), options={m: o for m, o in (options or {}).items() if o})
    return report, results


# ----------------------------------------------------------------------------- command line


def _distributed(args, parser) -> tuple[int, int, str | None]:
    """(processes, this process's id, coordinator) from the flags, else $JAX_NUM_PROCESSES,
    $JAX_PROCESS_ID, $JAX_COORDINATOR_ADDRESS; checked (one line, exit 2)."""
    def read(value, env, flag):
        text = value if value is not None else os.environ.get(env)
        if text is None:
            return None
        try:
            return int(text)
        except ValueError:
            parser.error(f"{flag} (or ${env}): expected an integer, got {text}")
    count = read(args.num_processes, "JAX_NUM_PROCESSES", "--num-processes")
    index = read(args.process_id, "JAX_PROCESS_ID", "--process-id")
    coordinator = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    count = 1 if count is None else count
    if count < 1:
        parser.error(f"--num-processes: expected an integer >= 1, got {count}")
    if count == 1:
        return 1, 0, None
    if index is None or not 0 <= index < count:
        parser.error(f"--process-id: expected an integer in [0, {count}) with --num-processes {count}, got {index}")
    host, _, port = (coordinator or "").rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--coordinator: expected HOST:PORT (process 0's address) with --num-processes {count}, "
                     f"got {coordinator}")
    return count, index, coordinator


def main(argv=None) -> int:
    from mnist_data import DATA_FALLBACK

    parser = cli.parser(__doc__)
    parser.add_argument("--num-images", type=int, metavar="N",
                        help="test digits to evaluate on (default: 1000, or all when fewer are available)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, metavar="NAMES",
                        help="comma-separated method names, families (cam, gradient, path, perturbation, "
                             "propagation) or 'all'; `python -m mnist_xai` lists them (default: %(default)s)")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), metavar="NAMES",
                        help="comma-separated metric names, families (faithfulness, robustness, localisation, "
                             "complexity, randomisation, axiomatic) or 'all' (default: %(default)s)")
    parser.add_argument("--list-metrics", action="store_true", help="list the registered metrics and exit")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="a module name or .py file that registers metrics of your own (repeatable)")
    parser.add_argument("--metric-option", action="append", default=[], metavar="NAME.OPTION=VALUE",
                        help="an option of one metric, the value read as JSON (repeatable), e.g. road.noise=0.02")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help=f"a workdir or step folder (default: {cli.CHECKPOINT_FALLBACK})")
    parser.add_argument("--data-dir", metavar="DIR",
                        help=f"folder with the MNIST IDX files (default: {DATA_FALLBACK}, else the 200 shipped digits)")
    parser.add_argument("--tfds", action="store_true",
                        help="read the test set with tensorflow-datasets, downloading it on first use "
                             "(pip install -r requirements-tfds.txt)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR",
                        help="output folder: new, or a previous evaluation's output (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seeds the random baseline, every metric's and SmoothGrad's noise and the "
                             "bootstrap (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=16, metavar="N",
                        help="deletion/insertion steps, for every metric with a 'steps' option (default: %(default)s)")
    parser.add_argument("--randomization-images", type=int, default=100, metavar="N",
                        help="images for the metrics that re-run the explainer (they need one: randomisation, "
                             "robustness, input invariance) (default: %(default)s)")
    parser.add_argument("--temperature", default="checkpoint", metavar="T",
                        help="for every metric with a 'temperature' option: the probability is softmax(logits / T); "
                             "'checkpoint' uses the temperature the checkpoint stores (1 if none), 1 the plain "
                             "softmax (default: %(default)s)")
    parser.add_argument("--block", type=int, default=DEFAULT_BLOCK, metavar="N",
                        help="images per block: the unit of work, of randomness and of a process's share "
                             "(default: %(default)s)")
    parser.add_argument("--num-processes", metavar="P", help="processes of a jax.distributed run (default: 1)")
    parser.add_argument("--process-id", metavar="I", help="this process's index in [0, P)")
    parser.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, e.g. 127.0.0.1:8476")
    args = parser.parse_args(argv)
    for flag, value, least in (("--num-images", args.num_images, 1), ("--steps", args.steps, 2),
                               ("--randomization-images", args.randomization_images, 1), ("--block", args.block, 1)):
        if value is not None and value < least:
            parser.error(f"{flag}: expected an integer >= {least}, got {value}")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed: expected an integer in [0, 2**32), got {args.seed}")
    if args.tfds and args.data_dir:
        parser.error("--tfds and --data-dir are alternatives; give one")
    temperature = None
    if args.temperature != "checkpoint":
        try:
            temperature = float(args.temperature)
        except ValueError:
            temperature = float("nan")
        if not 0 < temperature < float("inf"):
            parser.error(f"--temperature: expected 'checkpoint' or a number > 0, got {args.temperature}")
    processes, process_id, coordinator = _distributed(args, parser)

    import mnist_xai.metrics  # noqa: F401 - registers the metric families
    import mnist_xai_visualizations as X

    for spec in args.imports:
        import_metrics(spec)
    if args.list_metrics:
        print(list_metrics())
        return 0
    try:
        methods = X.parse_method_list(args.methods)  # names once each, in order
    except ValueError as e:
        parser.error(f"--{e}")
    try:
        metrics, missing = parse_metric_list(args.metrics)
    except ValueError as e:
        parser.error(f"--{e}")
    if missing:
        print(f"note: metrics not registered yet, left out: {', '.join(missing)}", file=sys.stderr)
    options = parse_metric_options(args.metric_option, metrics)

    import jax

    from mnist_checkpoint import check_output_folder, checkpoint_info, default_checkpoint, describe, load_checkpoint
    from mnist_data import DISPLAY_NAMES, MNISTDataError, load_test_or_sample

    if process_id == 0:
        check_output_folder(args.out, OUTPUT_FILES, "--out")  # before the minutes of work, not after
    if processes > 1:
        jax.distributed.initialize(coordinator, processes, process_id)
    checkpoint = args.checkpoint or default_checkpoint()
    params, batch_stats, model, meta = load_checkpoint(checkpoint)
    say = print if process_id == 0 else (lambda *a, **k: None)
    say(f"checkpoint: {describe(checkpoint, meta)}")
    info = checkpoint_info(meta)  # the test set of the dataset it was trained on, its temperature
    if temperature is None:
        temperature = info.temperature or 1.0
    split, _, note = load_test_or_sample(args.data_dir, args.tfds, info.dataset)
    if note:
        say(note)
    num_images = args.num_images or min(1000, len(split))
    if num_images > len(split):
        raise MNISTDataError(f"--num-images {num_images} is more than the {len(split)} test digits available")
    if not metrics:
        raise ValueError(f"--metrics: none of {args.metrics} is registered yet; `--list-metrics` shows what is")
    for m in metrics:  # the shared flags, for the metrics that take them; --metric-option wins
        options[m] = accepted_options(m, {"steps": args.steps, "temperature": float(temperature)}) | options.get(m, {})
    split = split.take(num_images)
    images = split.images.astype(np.float32) / 255.0
    t0 = time.perf_counter()
    report, results = evaluate_methods(params, batch_stats, model, images, split.labels, methods, metrics, args.seed,
                                       options, args.randomization_images, args.block, progress=say)
    import platform
    report.update({"checkpoint": describe(checkpoint, meta), "dataset": info.dataset,
                   "dataset_name": DISPLAY_NAMES[info.dataset], "class_names": list(info.class_names),
                   "temperature": float(temperature), "seconds": time.perf_counter() - t0,
                   "date": datetime.date.today().isoformat(),
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].platform}"
                              + (f", {processes} processes" if processes > 1 else "")})
    if process_id == 0:
        print(format_table(report))
        print("\n".join(report["verdict"]))
        command = "python evaluate_xai.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_outputs(report, values_of(results), Path(args.out), command.strip())
        written = sorted(p.name for p in Path(args.out).iterdir())
        print(f"wrote {', '.join(written[:-1])} and {written[-1]} into {args.out} ({report['seconds']:.0f} s)")
    if processes > 1:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

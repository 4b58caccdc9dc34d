"""How fast the explorer (explore_mnist_xai.py) answers, in server time, and how fast it starts.

    python benchmarks/bench_explorer.py                 # all figures
    python benchmarks/bench_explorer.py --repeats 20 --skip-startup
    python benchmarks/bench_explorer.py --methods cam,gradient    # the page's --methods

Prints, for a new drawing sent as the page's canvas sends it (a PNG data URL, decoded,
preprocessed with mnist_preprocess, explained, rendered to the page's HTML):
  - first answer: prediction + GradCAM + saliency maps on the page
  - + their deletion AUCs
  - every method shown (all registered ones by default) with their AUCs
for one model, for "why the prediction and not k" (two target rows), and for two models; the
first and the second drawing after the page's warm-up (App.warm_up, as explore_mnist_xai.start
runs it) in a fresh process, server time; and the start-up of `python explore_mnist_xai.py` to
a page that answers (the compiled programs on disk from a first start), with the time until
every method is ready. The machine's load is printed too: these are wall-clock times, and a
busy machine slows them. Not a test. The browser's clock for the first and second drawing is
printed by tests/test_explorer_browser.py (test_first_drawing_and_second_timed).
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return f"{cpu}, {os.cpu_count()} cores; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"


def drawings(n: int):
    """Canvas data URLs of real MNIST digits drawn large (as a user would), different each time."""
    import numpy as np
    from PIL import Image

    import explore_mnist_xai as E
    from mnist_data import load_sample_digits

    s = load_sample_digits()
    out = []
    for i in range(n):
        big = np.asarray(Image.fromarray(s.images[i % len(s.labels), :, :, 0]).resize((E.CANVAS, E.CANVAS), Image.BILINEAR))
        rgba = np.zeros((E.CANVAS, E.CANVAS, 4), np.uint8)
        rgba[..., 3] = big
        out.append(E.png_data_url(rgba))
    return out


def time_handler(app, values, target="none"):
    """Per request: seconds to the first answer, to the first stage's AUCs, to the end."""
    rows = []
    for v in values:
        t0 = time.perf_counter()
        marks = []
        for out in app.on_canvas(v, target):
            marks.append(time.perf_counter() - t0)
        assert 'data-kind="done"' in out[1], out[1]
        rows.append((marks[0], marks[1], marks[-1]))
    return rows


def summary(rows, label):
    import numpy as np

    a = np.asarray(rows) * 1000
    med, p90 = np.median(a, 0), np.percentile(a, 90, 0)
    print(f"{label:44s} first answer {med[0]:6.0f} ms (p90 {p90[0]:5.0f})   + AUCs {med[1]:6.0f} ms (p90 {p90[1]:5.0f})"
          f"   every method + AUCs {med[2]:6.0f} ms (p90 {p90[2]:5.0f})", flush=True)


FIRST_DRAWINGS = """
import sys, time, json
sys.path.insert(0, {root!r})
from cpu_devices import use_compilation_cache
use_compilation_cache()
import explore_mnist_xai as E
sys.path.insert(0, {bench!r})
from bench_explorer import drawings
app = E.App(E.Explorer(E.load_models(None), methods={methods!r}))
app.warm_up(stages=1)   # what start() runs before it serves the page
ready = time.perf_counter()
app.warm_up(background=True)  # what start() runs after, in the background
out = []
for v in drawings(3)[1:]:
    t0 = time.perf_counter(); marks = [time.perf_counter() - t0 for _ in app.on_canvas(v, "none")]
    out.append((marks[0], marks[-1]))
print(json.dumps(out))
"""


def first_drawings(methods) -> None:
    """The first and second drawing in a fresh process after the page's warm-up, server time."""
    import json

    code = FIRST_DRAWINGS.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), methods=methods)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if p.returncode:
        print(f"first drawings: failed: {p.stderr.strip().splitlines()[-1][:200]}")
        return
    (f0, f1), (s0, s1) = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"fresh process, after the warm-up: first drawing {1000 * f0:5.0f} ms to the prediction, "
          f"{1000 * f1:6.0f} ms to every map; second {1000 * s0:5.0f} ms, {1000 * s1:6.0f} ms", flush=True)


def latency(repeats: int, methods=None) -> None:
    import explore_mnist_xai as E
    from mnist_data import load_sample_digits

    models = E.load_models(None)
    samples = load_sample_digits()
    one = E.App(E.Explorer(models, methods=methods), samples)
    t0 = time.perf_counter()
    one.explorer.warm_up()
    print(f"warm-up in this process: {time.perf_counter() - t0:.1f} s", flush=True)
    values = drawings(repeats)
    time_handler(one, values[:2])  # the page's first renders import matplotlib's colormaps
    print(f"methods shown: {len(one.explorer.methods)}", flush=True)
    summary(time_handler(one, values), "one model, predicted class")
    summary(time_handler(one, values, "3"), "one model, predicted and class 3")
    two = E.App(E.Explorer(E.load_models(None) * 2, methods=methods), samples)
    two.explorer.warm_up()
    summary(time_handler(two, values), "two models, predicted class")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux), NaN elsewhere: on a busy machine
    the wall time says more about the neighbours than about the explorer."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def startup(port: int, methods: str = "all") -> None:
    env = dict(os.environ)
    cmd = [sys.executable, str(ROOT / "explore_mnist_xai.py"), "--port", str(port), "--methods", methods]
    for attempt in ("first start (fills the compile cache if empty)", "second start (programs on disk)"):
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = every = page = None
        cpu = float("nan")
        try:
            for line in p.stdout:
                if "explorer ready" in line and ready is None:
                    ready = time.perf_counter() - t0
                    cpu = cpu_seconds(p.pid)
                    url = re.search(r"(http://\S+)", line).group(1)
                    with urllib.request.urlopen(url, timeout=30) as r:
                        assert r.status == 200 and b"<html" in r.read(2000).lower()
                    page = time.perf_counter() - t0
                if "every method ready" in line:
                    every = time.perf_counter() - t0
                    break
        finally:
            p.terminate()
            try:
                _, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
        if err.strip():
            print(f"  stderr: {err.strip().splitlines()[-1][:200]}")
        print(f"{attempt:48s} page served {page:5.1f} s (first stage warm; {cpu:.1f} s of CPU by then)   "
              f"every method ready {every or float('nan'):5.1f} s", flush=True)


def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=10, help="drawings per figure (default: %(default)s)")
    parser.add_argument("--skip-startup", action="store_true", help="only the server-time figures")
    parser.add_argument("--port", type=int, default=0, help="port for the start-up runs (default: a free one)")
    parser.add_argument("--methods", default="all", help="the methods shown, as the page's --methods (default: all)")
    parser.add_argument("--skip-first", action="store_true", help="without the fresh-process first drawings")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error(f"--repeats: expected at least 2, got {args.repeats}")
    import explore_mnist_xai as E
    try:
        methods = E._registry().parse_method_list(args.methods)
    except ValueError as e:
        parser.error(f"--methods: {cli.first_line(e)}")
    print(f"machine: {machine()}")
    if not args.skip_startup:
        startup(args.port or E.free_port("127.0.0.1"), args.methods)
    if not args.skip_first:
        first_drawings(methods)
    latency(args.repeats, methods)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    from cpu_devices import use_compilation_cache
    use_compilation_cache()
    sys.exit(main())

"""Speed of our metrics beside Quantus 0.6.0's, every family in one run, on the same maps.

    /work/refvenv/bin/python benchmarks/bench_metrics.py --num-images 64 [--families faithfulness,...]
    (the reference venv: requirements-reference.txt + quantus==0.6.0 zennit saliency scikit-image)

Each family's ``benchmarks/bench_metrics_<family>.py`` times its metrics beside Quantus's in this
process (ours after an untimed warm-up call that compiles, Quantus's on the ported torch twin of the
same weights, the same maps and perturbations both sides) and returns rows
``{name, n, ours_s, quantus_s, ratio}``. This script gathers them into one markdown table, in the
families' order, and writes it as JSON with ``--json``. A family whose module is missing or fails
is named in one line and skipped; the other families still run.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

FAMILIES = ("faithfulness", "robustness", "localisation", "complexity", "randomisation", "axiomatic")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"


def table(rows: list[dict]) -> str:
    out = ["| family | metric | images | ours (s) | Quantus (s) | ours / Quantus |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        q = "—" if r.get("quantus_s") is None else f"{r['quantus_s']:.3f}"
        ratio = "—" if r.get("ratio") is None else f"{r['ratio']:.1f}×"
        out.append(f"| {r['family']} | {r['name']} | {r['n']} | {r['ours_s']:.3f} | {q} | {ratio} |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=64, help="images per metric, both sides (default 64)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated families (default: all)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error(f"--num-images: expected a positive integer, got {args.num_images}")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"--families: expected names from {', '.join(FAMILIES)}, got {', '.join(unknown)}")
    rows, started = [], time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for family in families:
        try:
            module = importlib.import_module(f"bench_metrics_{family}")
            got = module.rows(args.num_images)
        except Exception as err:  # one family's failure should not hide the others' figures
            print(f"{family}: skipped ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                  file=sys.stderr)
            continue
        rows += [dict(r, family=family) for r in got]
    print(f"{started}; {machine()}\n")
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": started, "machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

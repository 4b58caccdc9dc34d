"""Temperature scaling for a trained checkpoint, without retraining (issue 15).

    python benchmarks/calibrate_checkpoint.py --data-dir ../shared/data/mnist                # pretrained/
    python benchmarks/calibrate_checkpoint.py --checkpoint runs/x --data-dir ../shared/data/mnist

Fits the temperature T on the validation split the checkpoint was trained beside (the 5,000
training images ``mnist_data.load_mnist`` holds out with its fixed permutation, seed 0: the
split ``train_mnist.py`` uses for every run; its ``num_validation`` is read from the
checkpoint's train_config), then reports the expected calibration error (15 equal-width bins)
on the 10,000 test digits before and after. Writes ``temperature`` and ``calibration`` into
the checkpoint step's metadata and, when the checkpoint folder has one, into its
``metrics.json`` (``temperature``, ``calibration``, as a training run writes them), each file rewritten atomically (a temporary file
renamed into place), metadata first. ``--dry-run`` only prints.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":
    from cpu_devices import use_compilation_cache
    use_compilation_cache()


def main(argv=None) -> int:
    import cli
    parser = cli.parser(__doc__)
    parser.add_argument("--checkpoint", default=str(ROOT / "pretrained"), help="default: the shipped pretrained/")
    parser.add_argument("--data-dir", help="IDX folder of the checkpoint's dataset (default: $MNIST_DATA_DIR, else tfds)")
    parser.add_argument("--dry-run", action="store_true", help="print the figures, write nothing")
    args = parser.parse_args(argv)

    import numpy as np

    import mnist_calibration as C
    from cli import write_atomic
    from mnist_checkpoint import CheckpointError, checkpoint_info, load_checkpoint, resolve_checkpoint_dir
    from mnist_data import MNISTDataError, load_mnist

    try:
        step_dir = resolve_checkpoint_dir(args.checkpoint)
        params, batch_stats, model, meta = load_checkpoint(step_dir)
        num_val = int((meta.get("train_config") or {}).get("num_validation", 5000))
        data = load_mnist(args.data_dir, num_validation=num_val, dataset=checkpoint_info(meta).dataset)
    except (CheckpointError, MNISTDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    val = C.model_logits(model, params, batch_stats, data.validation.images)
    test = C.model_logits(model, params, batch_stats, data.test.images)
    report = C.calibration_report(val, data.validation.labels, test, data.test.labels)
    report.update({"test_accuracy": float((test.argmax(1) == data.test.labels).mean()),
                   "val_accuracy": float((val.argmax(1) == data.validation.labels).mean()),
                   "data_source": data.source})
    print(f"{step_dir}: T = {report['temperature']:.4f} (fitted on {report['fitted_on']}, val accuracy "
          f"{100 * report['val_accuracy']:.2f}%)")
    print(f"test ECE ({report['ece_bins']} bins): {100 * report['test_ece_before']:.3f}% before, "
          f"{100 * report['test_ece_after']:.3f}% after; NLL {report['test_nll_before']:.4f} -> "
          f"{report['test_nll_after']:.4f} (test accuracy {100 * report['test_accuracy']:.2f}%)")
    bins = C.calibration_bins(C.softmax(test), data.test.labels)
    full = np.flatnonzero(bins["count"])
    print("reliability before (bin: count, accuracy, confidence): " + "; ".join(
        f"{bins['edges'][k]:.2f}-{bins['edges'][k + 1]:.2f}: {bins['count'][k]}, {bins['accuracy'][k]:.3f}, "
        f"{bins['confidence'][k]:.3f}" for k in full))
    if args.dry_run:
        return 0
    meta_file = Path(step_dir) / "meta" / "metadata"
    stored = json.loads(meta_file.read_text())
    stored.update({"temperature": report["temperature"], "calibration": report})
    write_atomic(meta_file, json.dumps(stored))  # one line, as orbax writes it
    metrics_file = Path(step_dir).parent.parent / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        metrics.update({"temperature": report["temperature"], "calibration": report})  # as train_mnist.py writes it
        write_atomic(metrics_file, json.dumps(metrics, indent=2))
    print(f"wrote temperature into {meta_file}" + (f" and {metrics_file}" if metrics_file.is_file() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

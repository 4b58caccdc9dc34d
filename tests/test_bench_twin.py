"""benchmarks/torch_twin.py and bench_train.py --vs-torch without torch: the twin's shuffle is the
project's, the twin module imports without torch, and bad --vs-torch configs are refused in one line."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_twin_imports_without_torch_and_shuffles_as_train_mnist(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now raises ImportError
    monkeypatch.delitem(sys.modules, "torch_twin", raising=False)
    twin = importlib.import_module("torch_twin")
    import train_mnist as T

    for epoch in (0, 1, 14):
        np.testing.assert_array_equal(twin.epoch_batches(0, epoch, 55_000, 128), T.epoch_batches(0, epoch, 55_000, 128))
    assert not np.array_equal(twin.epoch_batches(0, 0, 1000, 128), twin.epoch_batches(0, 1, 1000, 128))


def test_vs_torch_configs():
    bench = importlib.import_module("bench_train")
    jax_cfg, torch_cfg = bench.parse_vs_configs("side=jax;side=torch,batch=256,lr=6e-3", epochs=1)
    assert (jax_cfg["augment"], torch_cfg["augment"]) == (1, 0)  # each side's default
    assert (torch_cfg["batch"], torch_cfg["lr"], torch_cfg["epochs"]) == (256, 6e-3, 1)
    assert torch_cfg["label"] == "side=torch,batch=256,lr=0.006,augment=0"
    for bad, message in (("sde=jax", "unknown key 'sde'"), ("batch=big", "batch='big'"),
                         ("side=tf", "side='tf'")):
        with pytest.raises(ValueError, match=message):
            bench.parse_vs_configs(bad, epochs=1)


def test_vs_torch_without_a_torch_python_exits_2():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--data-dir", str(ROOT),
                           "--vs-torch", "side=torch"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "BENCH_TORCH_PYTHON"}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --vs-torch runs the PyTorch twin: give --torch-python (or set BENCH_TORCH_PYTHON), a venv's "
        "python with requirements-bench.txt installed"]

"""Shared pytest setup: make the repository root importable (``import mnist_data`` etc.), and
give the tests and the scripts they run one compilation cache of their own, not the user's
(unless JAX_COMPILATION_CACHE_DIR is set, which cpu_devices leaves as it is).

The cache is shared by both xdist workers (they inherit the controller's folder) and by the
tests themselves: many tests compile the same programs for the same model through fresh
explainers, and reading them from disk cut test_model_train.py + test_xai.py from 203 s to
153 s on two workers (2026-12-04)."""
import os
import sys
import tempfile
from pathlib import Path

# No hub look-ups, analytics or telemetry from Gradio / huggingface_hub in any test: they read these
# when first imported, and another test file in the same worker may import them before the explorer
# sets them (explore_mnist_xai.offline_environment), so they are set before anything is imported.
for _name, _value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
                      ("HF_HUB_DISABLE_TELEMETRY", "1"), ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(_name, _value)
os.environ.setdefault("MNIST_XAI_COMPILE_CACHE", tempfile.mkdtemp(prefix="mnist_xai_test_jax_cache_"))

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cpu_devices  # noqa: E402

cpu_devices.use_compilation_cache()  # the tests' own processes too, as the scripts do (before jax is imported)

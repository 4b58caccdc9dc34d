"""Shared pytest setup: make the repository root importable (``import mnist_data`` etc.), and
give the scripts the tests run one compilation cache of their own, not the user's."""
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

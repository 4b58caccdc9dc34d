"""Shared pytest setup: make the repository root importable (``import mnist_data`` etc.), and
give the scripts the tests run one compilation cache of their own, not the user's."""
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MNIST_XAI_COMPILE_CACHE", tempfile.mkdtemp(prefix="mnist_xai_test_jax_cache_"))

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

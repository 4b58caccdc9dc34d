"""Process settings the command-line scripts make before JAX is imported.

``use_one_device_per_core()`` splits the host CPU into one JAX device per core (at most 8),
for data-parallel work. XLA's CPU backend runs many of this model's ops on one thread; with
the batch sharded over one device per core both cores stay busy (training step 1.3x faster,
explanations 1.0-1.4x on this project's 2-core machine). It changes nothing once JAX is
imported, nor when XLA_FLAGS already sets a device count.

``use_compilation_cache()`` keeps compiled programs on disk between runs (JAX's persistent
compilation cache), so only a machine's first run pays for compiling. Measured: a cold
``train_mnist.py --epochs 1 --no-augment`` on an H100 took 15.7 s, 7.0 s with the cache
filled; ``evaluate_xai.py`` 64 s and 14 s; on the 2-core CPU a one-epoch run of 512 digits
48 s and 30 s. The cache lives in ``$MNIST_XAI_COMPILE_CACHE`` (default
``~/.cache/mnist_xai/jax``); ``MNIST_XAI_COMPILE_CACHE=off`` turns it off, and a
``JAX_COMPILATION_CACHE_DIR`` already set is left as it is.

Library modules never call these; the scripts call both through ``cli.before_jax()``, their
shared ``__main__`` preamble. The quickstart notebook calls the first in its first cell, and a
notebook that imports JAX first keeps JAX's default of one CPU device.
"""
import os
import sys


def use_one_device_per_core(max_devices: int = 8) -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" in sys.modules or "xla_force_host_platform_device_count" in flags:
        return
    count = min(os.cpu_count() or 1, max_devices)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def use_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at a folder; returns it (None: left off)."""
    if "jax" in sys.modules or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return os.environ.get("JAX_COMPILATION_CACHE_DIR")
    setting = os.environ.get("MNIST_XAI_COMPILE_CACHE", "")
    if setting.lower() in ("0", "off", "no", "false"):
        return None
    home_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = setting or os.path.join(home_cache, "mnist_xai", "jax")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # a read-only home, say: run without the cache
        return None
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    # JAX keeps only programs that took over 1 s to compile by default; this model's smaller
    # ones (evaluation, each explanation's call) add up to seconds too.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    return path

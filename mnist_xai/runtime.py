"""Device plumbing: one compiled call split over the local devices, large batches in chunks."""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P


def split_over_devices(fn: Callable, batched: Sequence[bool]):
    """``jax.jit(fn)`` with the ``batched`` arguments split over the local devices.

    Rows must be independent (they are at inference: BatchNorm uses running statistics).
    With several local devices (GPUs, or CPU cores split by
    ``XLA_FLAGS=--xla_force_host_platform_device_count``, as the scripts do) the batched
    arguments and every output are sharded along their first axis (``jax.shard_map``); the
    others are replicated. With one device it is a plain jit. Returns ``(jitted, devices)``:
    batch sizes must be a multiple of ``devices``.
    """
    devices = jax.local_devices()
    if len(devices) > 1:
        mesh = Mesh(np.array(devices), ("batch",))
        fn = jax.shard_map(fn, mesh=mesh, in_specs=tuple(P("batch") if b else P() for b in batched),
                           out_specs=P("batch"), check_vma=False)
    return jax.jit(fn), len(devices)


def in_chunks(call: Callable, arrays: Sequence[np.ndarray], chunk: int, multiple: int = 1,
              progress: Callable[[int], object] | None = None) -> list[np.ndarray]:
    """``call(*rows)`` over chunks of ``chunk`` rows of ``arrays``; outputs concatenated as numpy.

    Memory stays bounded by the chunk. The last chunk is zero-padded to the full chunk size
    (or, when everything fits in one chunk, to a multiple of ``multiple``, e.g. the device
    count), so each shape compiles once; the padded rows are dropped from the outputs.
    ``progress(rows)`` (e.g. a tqdm bar's ``update``) is called after each chunk.

    Calls are dispatched one ahead of the copy back to numpy (JAX runs them asynchronously),
    so the device starts the next chunk while the host collects the last one.
    """
    n = len(arrays[0])
    outputs, pending = [], None

    def collect(done):
        outs, k = done
        outputs.append([np.asarray(out)[:k] for out in outs])
        if progress is not None:
            progress(k)

    for start in range(0, n, chunk):
        rows = [a[start:start + chunk] for a in arrays]
        k = len(rows[0])
        pad = (chunk - k) if n > chunk else (-k) % multiple
        if pad:
            rows = [np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) for a in rows]
        launched = (call(*rows), k)
        if pending is not None:
            collect(pending)
        pending = launched
    if pending is not None:
        collect(pending)
    return [np.concatenate(parts) for parts in zip(*outputs)]


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"

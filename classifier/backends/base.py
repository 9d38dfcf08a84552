"""The inference backend protocol and helpers shared by the backends (no torch here)."""

from __future__ import annotations

import logging
import os
from typing import Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

BACKEND_KINDS = ("torch", "onnx")


@runtime_checkable
class InferenceBackend(Protocol):
    """A model that maps preprocessed images to logits.

    `logits` takes a float32 batch of shape (N, 3, H, W) and returns float32
    logits of shape (N, num_classes). It may be called from several threads at
    once, and must not be called on the event loop.
    """

    name: str
    precision: str

    def logits(self, batch: np.ndarray) -> np.ndarray: ...

    def warmup(self) -> None: ...

    def close(self) -> None: ...


def available_cpus() -> int:
    """Return how many CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # sched_getaffinity is Linux-only
        return max(1, os.cpu_count() or 1)


def check_batch(batch: np.ndarray) -> np.ndarray:
    """Return `batch` as a C-contiguous float32 array of shape (N, 3, H, W), or raise ValueError."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[0] < 1:
        raise ValueError(f"expected a batch of shape (N, 3, H, W) with N >= 1, got {batch.shape}")
    return batch

"""Inference backends: PyTorch (`torch`) and ONNX Runtime (`onnx`).

This module imports neither torch nor onnxruntime; each backend imports its
runtime when it is loaded, so an ONNX-only install works without PyTorch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from classifier.backends.base import BACKEND_KINDS, InferenceBackend, available_cpus, check_batch

if TYPE_CHECKING:
    from classifier.backends.onnx_backend import OnnxBackend
    from classifier.backends.torch_backend import TorchBackend
    from classifier.bundle import Bundle

logger = logging.getLogger(__name__)

__all__ = [
    "BACKEND_KINDS",
    "InferenceBackend",
    "OnnxBackend",
    "TorchBackend",
    "available_cpus",
    "check_batch",
    "load_backend",
    "unservable_reason",
]


def load_backend(
    bundle: Bundle,
    kind: str = "torch",
    device: str = "auto",
    precision: str = "auto",
    *,
    num_threads: int | None = None,
    low_precision_mode: str = "auto",
    optimize: str = "auto",
) -> InferenceBackend:
    """Load `bundle` into the backend `kind` (`torch` or `onnx`).

    `device` and `precision` apply to the torch backend (`auto`, `cpu`,
    `cuda`; `auto`, `fp32`, `bf16`, `fp16`). The ONNX backend runs fp32 on
    the CPU and rejects any other request. `num_threads` defaults to the CPUs
    the process may use. `low_precision_mode` picks how the torch backend runs
    bf16 and fp16 (`auto`, `mixed`, `precast`, `autocast`, `pure`). `optimize`
    picks how its graph runs (`auto`, `off`, `jit`, `inductor`). `TorchBackend`
    describes both.
    """
    if kind == "torch":
        from classifier.backends.torch_backend import TorchBackend

        return TorchBackend(
            bundle,
            device=device,
            precision=precision,
            num_threads=num_threads,
            low_precision_mode=low_precision_mode,
            optimize=optimize,
        )
    if kind == "onnx":
        from classifier.backends.onnx_backend import OnnxBackend

        if device not in ("auto", "cpu"):
            raise ValueError(f"the onnx backend runs on the CPU only; got device={device!r}, use auto or cpu")
        if precision not in ("auto", "fp32"):
            raise ValueError(f"the onnx backend runs in fp32 only; got precision={precision!r}, use auto or fp32")
        return OnnxBackend(bundle, num_threads=num_threads)
    raise ValueError(f"unknown backend {kind!r}; expected one of {', '.join(BACKEND_KINDS)}")


def unservable_reason(bundle: Bundle, kind: str) -> str | None:
    """Return why backend `kind` cannot serve `bundle` from its files, or None when it can.

    Only the ONNX backend needs more than the weights every bundle has: an ONNX export
    fit for serving. Device and precision problems show only when the backend loads.
    """
    if kind == "onnx":
        from classifier.backends.onnx_backend import onnx_export_problem

        return onnx_export_problem(bundle)
    if kind not in BACKEND_KINDS:
        return f"unknown backend {kind!r}; expected one of {', '.join(BACKEND_KINDS)}"
    return None


def __getattr__(name: str) -> Any:
    # Lazy access to the backend classes keeps torch and onnxruntime out of this import.
    if name == "TorchBackend":
        from classifier.backends.torch_backend import TorchBackend

        return TorchBackend
    if name == "OnnxBackend":
        from classifier.backends.onnx_backend import OnnxBackend

        return OnnxBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

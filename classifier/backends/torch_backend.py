"""PyTorch inference backend: CUDA when present, else the CPU, in bf16 where the CPU has bf16 instructions.

On such a CPU the default (`precision="auto"`) is bf16 autocast over weights
cast to bf16 once at load, compiled with torch.compile. That was the fastest
configuration that keeps fp32's top-1 on this project's 2-CPU AVX512-BF16
machine; `python -m benchmarks.latency` and `python -m benchmarks.agreement`
measure the alternatives (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch._dynamo.exc
import torch._inductor.exc

from classifier.backends.base import available_cpus, check_batch
from classifier.bundle import Bundle

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# How a bf16 or fp16 model runs (see `TorchBackend`); "auto" is "precast".
LOW_PRECISION_MODES = ("auto", "precast", "autocast", "pure")
# Whether the backbone goes through torch.compile; "auto" compiles bf16 on the CPU.
COMPILE_MODES = ("auto", "on", "off")
# Errors of torch.compile that mean "this graph cannot be compiled here" (no C++
# compiler, an unsupported operator); the backend then runs eagerly.
_COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError)
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

# torch.set_num_threads is process-wide, so it is set once, by the first backend.
_threads_lock = threading.Lock()
_threads_configured = False


@functools.cache
def cpu_has_bf16() -> bool:
    """Return whether the CPU has native bf16 instructions (AVX512-BF16 or AMX-BF16).

    `torch.backends.cpu.get_cpu_capability()` reports only the vector ISA level
    (for example `AVX512`), and oneDNN accepts bf16 on any AVX512 CPU through
    slow emulation, so the flags in /proc/cpuinfo are what decides. Without
    /proc/cpuinfo (not Linux), this returns False and `auto` picks fp32.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        logger.info("cannot read /proc/cpuinfo; assuming no bf16 instructions (capability %s)",
                    torch.backends.cpu.get_cpu_capability())
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def resolve_device(device: str) -> torch.device:
    """Map `auto`, `cpu`, `cuda` or `cuda:N` to a torch device; `auto` prefers CUDA."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={device} was requested but CUDA is not available; use auto or cpu")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; expected auto, cpu or cuda")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    """Pick `fp32`, `bf16` or `fp16` for `device`; `auto` is bf16 where the hardware runs it natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if precision == "fp16":
        raise ValueError("fp16 is only supported on CUDA; use fp32 or bf16 on the CPU")
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return precision


def configure_cpu_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count to the CPUs this process may use (once per process)."""
    global _threads_configured
    threads = num_threads or available_cpus()
    with _threads_lock:
        if not _threads_configured or num_threads is not None:
            torch.set_num_threads(threads)
            _threads_configured = True
            logger.info("torch uses %d intra-op threads", threads)
    return torch.get_num_threads()


class TorchBackend:
    """A bundle's FlowerNet on one torch device, run in inference mode.

    In bf16 and fp16 the backbone runs in one of three `low_precision_mode`s:

    - `precast` (the default): Conv2d and Linear weights are converted to the
      low-precision dtype once, at load, and the backbone runs under
      `torch.autocast`. LayerNorm weights, the layer scales and the residual
      stream stay fp32, so the numbers equal plain autocast, but no forward
      pass pays for casting 28 M weights again.
    - `autocast`: plain `torch.autocast` over fp32 weights. Autocast casts
      every weight on every call.
    - `pure`: the whole backbone, activations included, in the low-precision
      dtype (`model.to(dtype)`). The residual stream is rounded after each block.

    In every mode the head (LayerNorm and Linear over the 768 pooled
    features, a negligible share of the FLOPs) runs in fp32 on fp32 features,
    so that close logits are not rounded into ties.

    `compile="auto"` compiles the backbone with torch.compile (inductor, with
    freezing) for bf16 on the CPU; `on` and `off` force it. Compiling needs a
    C++ compiler and happens in `warmup`. When it fails, the backend logs a
    warning and runs eagerly.
    """

    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        precision: str = "auto",
        *,
        num_threads: int | None = None,
        channels_last: bool = True,
        low_precision_mode: str = "auto",
        compile: str = "auto",
    ) -> None:
        if low_precision_mode not in LOW_PRECISION_MODES:
            raise ValueError(f"unknown low_precision_mode {low_precision_mode!r}; expected one of {', '.join(LOW_PRECISION_MODES)}")
        if compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {compile!r}; expected one of {', '.join(COMPILE_MODES)}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.low_precision_mode = "fp32" if self.precision == "fp32" else (
            "precast" if low_precision_mode == "auto" else low_precision_mode
        )
        self.name = "torch"
        self.num_classes = bundle.num_classes
        self.version = bundle.version
        if self.device.type == "cpu":
            self.num_threads = configure_cpu_threads(num_threads)
        else:
            self.num_threads = torch.get_num_threads()
        # channels_last lets oneDNN (CPU) and cuDNN (CUDA) pick their fastest
        # convolution layouts for ConvNeXt's 7x7 depthwise convolutions.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

        model = bundle.build_torch_model().eval()
        self.model = model.to(self.device, memory_format=self.memory_format)
        self._input_dtype = torch.float32
        if self.low_precision_mode == "precast":
            _cast_matmul_weights(self.model.features, _DTYPES[self.precision])
        elif self.low_precision_mode == "pure":
            self.model.features.to(_DTYPES[self.precision])
            self._input_dtype = _DTYPES[self.precision]

        self._compile_lock = threading.Lock()
        self._compiled_features = None
        if compile == "on" or (compile == "auto" and self.device.type == "cpu" and self.precision == "bf16"):
            # Inductor's freezing folds the weights into the graph as constants and lets oneDNN
            # pre-pack them; it fuses bias, GELU, LayerNorm and the dtype casts around the GEMMs.
            # Compilation itself happens on the first call of each shape (see `warmup`).
            self._compiled_features = torch.compile(self.model.forward_features, dynamic=None, options={"freezing": True})
        self.compiled = self._compiled_features is not None
        logger.info(
            "torch backend ready: bundle %s, device %s, precision %s (%s), %s, %d threads",
            bundle.version, self.device, self.precision, self.low_precision_mode,
            "torch.compile" if self.compiled else "eager", self.num_threads,
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.low_precision_mode in ("fp32", "pure"):
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Return float32 logits (N, num_classes) for a float32 batch (N, 3, H, W)."""
        batch = check_batch(batch)
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
            inputs = inputs.to(self._input_dtype).contiguous(memory_format=self.memory_format)
            with self._autocast():
                features = self._forward_features(inputs)
            outputs = self.model.forward_head(features.float())
            return outputs.float().cpu().numpy()

    def _forward_features(self, inputs: torch.Tensor) -> torch.Tensor:
        compiled = self._compiled_features
        if compiled is None:
            return self.model.forward_features(inputs)
        # One graph serves every batch size from 2 up; batch 1 gets its own specialized graph.
        torch._dynamo.maybe_mark_dynamic(inputs, 0)
        try:
            return compiled(inputs)
        except _COMPILE_ERRORS as error:
            with self._compile_lock:
                if self._compiled_features is not None:
                    logger.warning("torch.compile failed, running the model eagerly: %s: %s", type(error).__name__, error)
                    self._compiled_features = None
                    self.compiled = False
            return self.model.forward_features(inputs)

    def warmup(self, batch_size: int = 1, image_size: int = 224) -> None:
        """Run dummy batches so that the first real request does not pay for kernel selection.

        A compiled backend compiles here: once for batch 1 and once for every
        larger batch (a graph with a dynamic batch size). On 2 CPUs that takes
        tens of seconds, less when inductor's on-disk cache has the graphs.
        """
        sizes = (1, max(2, batch_size)) if self._compiled_features is not None else (batch_size,)
        for size in sizes:
            started = time.perf_counter()
            self.logits(np.zeros((size, 3, image_size, image_size), dtype=np.float32))
            logger.info("warm-up with batch %d took %.1f s", size, time.perf_counter() - started)

    def close(self) -> None:
        """Release the model; CUDA memory is returned to the driver."""
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.info("torch backend for bundle %s closed", self.version)


def _cast_matmul_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Convert the weights and biases of every Conv2d and Linear in `module` to `dtype`, in place."""
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            layer.to(dtype)

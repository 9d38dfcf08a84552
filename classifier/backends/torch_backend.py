"""PyTorch inference backend: CUDA when present, else the CPU, in bf16 where the CPU has bf16 instructions.

On such a CPU the default (`precision="auto"`) runs the ConvNeXt blocks in
bf16 and the stem, downsampling layers and head in fp32, traced with
torch.jit and fused by oneDNN Graph. That was the fastest configuration that
kept fp32's top-1 on a 2-CPU AVX512-BF16 machine. `python -m
benchmarks.latency` and `python -m benchmarks.agreement` measure it against
the alternatives (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import warnings
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
# Execution modes of a bf16 or fp16 backbone (see `TorchBackend`).
LOW_PRECISION_MODES = ("auto", "mixed", "precast", "autocast", "pure")
# Graph optimizations of the backbone (see `TorchBackend`).
OPTIMIZE_MODES = ("auto", "off", "jit", "inductor")
# Errors of torch.compile that mean "this graph cannot be compiled here" (no C++
# compiler, an unsupported operator). The backend then runs eagerly.
_COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError)
# A traced graph runs only these batch sizes: a larger batch is split into them (13 = 8 + 4 + 1).
# TorchScript's profiling executor and oneDNN Graph specialize on each new input shape, so the
# first two calls of a new batch size ran 1.3 to 2.5 times slower per image than later calls. The
# warm-up runs each of these sizes three times. Per image, batch 8 was the fastest measured (about
# 10% under batch 1), and batch 16 was slower than 8.
JIT_BATCH_SIZES = (8, 4, 2, 1)
_JIT_WARMUP_CALLS = 3
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

# torch.set_num_threads is process-wide, so it is set once, by the first backend.
_threads_lock = threading.Lock()
_threads_configured = False
_onednn_fusion_enabled = False


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

    In bf16 and fp16 the backbone runs in one of these `low_precision_mode`s:

    - `mixed` (`auto` on the CPU): the 18 ConvNeXt blocks, about 96% of the
      FLOPs, hold bf16 weights and compute on bf16 activations. The stem and
      the three downsampling layers stay fp32 and cast their output to bf16.
      On the flowers5 val photos, those fp32 layers turned the traced bf16
      graph's top-1 agreement with fp32 from 0.990-0.995 into 1.000, at 2-4%
      more time per image (docs/benchmarks.md).
    - `precast` (`auto` on CUDA): Conv2d and Linear weights are converted to
      the low-precision dtype once, at load, and the backbone runs under
      `torch.autocast`. LayerNorm weights, the layer scales and the residual
      stream stay fp32, so the numbers equal plain autocast, but no forward
      pass pays for casting 28 M weights again.
    - `autocast`: plain `torch.autocast` over fp32 weights. Autocast casts
      every weight on every call.
    - `pure`: the whole backbone, activations included, in the low-precision
      dtype (`model.to(dtype)`).

    In every mode the head (LayerNorm and Linear over the 768 pooled
    features, a negligible share of the FLOPs) runs in fp32 on fp32 features,
    so that close logits are not rounded into ties.

    `optimize` picks how the backbone's graph runs:

    - `jit` (`auto` on the CPU for bf16, and for `precision="auto"` on a CPU
      without bf16, where traced fp32 took 28% less time than eager fp32):
      traced with `torch.jit.trace`, frozen, and fused by oneDNN Graph. The
      GELUs, layer scales and residual adds join the convolutions and matrix
      multiplications; the blocks' LayerNorms stay separate. On 2
      AVX512-BF16 cores this was the fastest configuration measured, with
      about 20% less time per image than eager bf16. Each batch size a traced
      graph runs is specialized and cached (see `JIT_BATCH_SIZES`), which
      costs memory: the bot's resident set grew from 1.0 GiB (fp32 eager) to
      1.5 GiB.
    - `inductor`: `torch.compile` with freezing. It needs a C++ compiler,
      compiles in `warmup` (tens of seconds) and was no faster than eager here.
    - `off` (`auto` for an explicit fp32 and on CUDA): eager PyTorch.

    When tracing or compiling fails, the backend logs a warning and runs eagerly.
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
        optimize: str = "auto",
    ) -> None:
        if low_precision_mode not in LOW_PRECISION_MODES:
            raise ValueError(f"unknown low_precision_mode {low_precision_mode!r}; expected one of {', '.join(LOW_PRECISION_MODES)}")
        if optimize not in OPTIMIZE_MODES:
            raise ValueError(f"unknown optimize mode {optimize!r}; expected one of {', '.join(OPTIMIZE_MODES)}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.low_precision_mode = _resolve_low_precision_mode(low_precision_mode, self.precision, self.device)
        self.optimize = _resolve_optimize(optimize, precision, self.precision, self.device)
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

        # Inference only: no parameter needs a gradient, which also lets torch.jit freeze autocast's casts.
        model = bundle.build_torch_model().eval().requires_grad_(False)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self._input_dtype = torch.float32
        low_dtype = _DTYPES.get(self.precision)
        if self.low_precision_mode == "mixed":
            self._features: torch.nn.Module = MixedPrecisionFeatures(self.model, low_dtype)
        else:
            if self.low_precision_mode == "precast":
                _cast_matmul_weights(self.model.features, low_dtype)
            elif self.low_precision_mode == "pure":
                self.model.features.to(low_dtype)
                self._input_dtype = low_dtype
            self._features = PooledFeatures(self.model)
        self._eager_features = self._features
        self._optimize_lock = threading.Lock()
        self._optimize()
        logger.info(
            "torch backend ready: bundle %s, device %s, precision %s (%s), graph %s, %d threads",
            bundle.version, self.device, self.precision, self.low_precision_mode, self.optimize, self.num_threads,
        )

    def _optimize(self) -> None:
        if self.optimize == "jit":
            try:
                _enable_onednn_fusion()
                example = torch.zeros(2, 3, 224, 224, dtype=self._input_dtype, device=self.device)
                example = example.contiguous(memory_format=self.memory_format)
                with torch.no_grad(), self._autocast(), warnings.catch_warnings():
                    # NOTE: torch 2.14 marks torch.jit.trace and torch.jit.freeze as deprecated in favour
                    # of torch.compile, which was slower here (see the class docstring). The eager
                    # fallback below keeps the backend working if a later torch drops them.
                    warnings.simplefilter("ignore", FutureWarning)
                    self._features = torch.jit.freeze(torch.jit.trace(self._eager_features.eval(), example))
            except (RuntimeError, torch.jit.Error, torch.jit._trace.TracingCheckError) as error:
                self._fall_back(error)
        elif self.optimize == "inductor":
            # Compilation happens on the first call of each shape (see `warmup`).
            self._features = torch.compile(self._eager_features, dynamic=None, options={"freezing": True})

    def _fall_back(self, error: BaseException) -> None:
        with self._optimize_lock:
            if self.optimize != "off":
                logger.warning("%s optimization failed, running the model eagerly: %s: %s", self.optimize, type(error).__name__, error)
                self._features = self._eager_features
                self.optimize = "off"

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.low_precision_mode in ("precast", "autocast"):
            return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])
        return contextlib.nullcontext()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Return float32 logits (N, num_classes) for a float32 batch (N, 3, H, W)."""
        batch = check_batch(batch)
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(self.device, non_blocking=True)
            inputs = inputs.to(self._input_dtype).contiguous(memory_format=self.memory_format)
            if self.optimize == "jit":
                features = torch.cat([self._run_features(inputs[start : start + size]) for start, size in jit_chunks(len(inputs))])
            else:
                features = self._run_features(inputs)
            outputs = self.model.forward_head(features.float())
            return outputs.float().cpu().numpy()

    def _run_features(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self._features
        if features is self._eager_features:
            with self._autocast():
                return features(inputs)
        if self.optimize == "jit":
            # The traced graph already contains the autocast casts it was traced with.
            try:
                return features(inputs)
            except RuntimeError as error:
                # Run eagerly; only when that works is the traced graph at fault and dropped.
                with self._autocast():
                    result = self._eager_features(inputs)
                self._fall_back(error)
                return result
        # One inductor graph serves every batch size from 2 up, and batch 1 gets its own.
        torch._dynamo.maybe_mark_dynamic(inputs, 0)
        try:
            with self._autocast():
                return features(inputs)
        except _COMPILE_ERRORS as error:
            self._fall_back(error)
        with self._autocast():
            return self._eager_features(inputs)

    def warmup(self, batch_size: int = 1, image_size: int = 224) -> None:
        """Run dummy batches so that the first real request does not pay for kernel selection.

        A traced graph runs every size in `JIT_BATCH_SIZES` three times, so
        that TorchScript specializes and fuses each (seconds). An inductor
        graph is compiled for batch 1 and for batch 2 and up (tens of seconds
        on 2 CPUs, less when inductor's on-disk cache has the graphs).
        """
        if self.optimize == "jit":
            sizes = tuple(size for size in sorted(JIT_BATCH_SIZES) for _ in range(_JIT_WARMUP_CALLS))
        elif self.optimize == "inductor":
            sizes = (1, max(2, batch_size))
        else:
            sizes = (batch_size,)
        started = time.perf_counter()
        for size in sizes:
            self.logits(np.zeros((size, 3, image_size, image_size), dtype=np.float32))
        logger.info("warm-up (%s graph, batch sizes %s) took %.1f s", self.optimize, sorted(set(sizes)), time.perf_counter() - started)

    def close(self) -> None:
        """Release the model; CUDA memory is returned to the driver."""
        self.model = None
        self._features = None
        self._eager_features = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.info("torch backend for bundle %s closed", self.version)


def jit_chunks(count: int) -> list[tuple[int, int]]:
    """Split `count` images into (start, size) chunks with sizes from `JIT_BATCH_SIZES`, largest first."""
    chunks = []
    start = 0
    while start < count:
        size = next(size for size in JIT_BATCH_SIZES if size <= count - start)
        chunks.append((start, size))
        start += size
    return chunks


class PooledFeatures(torch.nn.Module):
    """`FlowerNet.forward_features` as a module of its own, so that it can be traced or compiled without the head."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


class MixedPrecisionFeatures(torch.nn.Module):
    """The backbone with its ConvNeXt stages in a low-precision dtype and the stem and downsampling layers in fp32.

    Takes fp32 images (N, 3, H, W) and returns fp32 pooled features (N, 768).
    The stages of `model.features` are converted in place.
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.layers = model.features
        self.avgpool = model.avgpool
        self.dtypes = []
        for layer in self.layers:
            is_stage = any(type(child).__name__ == "CNBlock" for child in layer.children())
            if is_stage:
                layer.to(dtype)
            self.dtypes.append(dtype if is_stage else torch.float32)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for layer, dtype in zip(self.layers, self.dtypes):
            x = layer(x.to(dtype))
        return torch.flatten(self.avgpool(x), 1).float()


def _resolve_low_precision_mode(mode: str, precision: str, device: torch.device) -> str:
    if precision == "fp32":
        return "fp32"
    if mode == "auto":
        return "mixed" if device.type == "cpu" else "precast"
    return mode


def _resolve_optimize(optimize: str, requested_precision: str, precision: str, device: torch.device) -> str:
    # An explicit fp32 stays eager, as the reference the other configurations are compared with.
    if optimize == "auto":
        return "jit" if device.type == "cpu" and (precision == "bf16" or requested_precision == "auto") else "off"
    return optimize


def _enable_onednn_fusion() -> None:
    """Turn on oneDNN Graph fusion of TorchScript graphs (a process-wide switch, set once)."""
    global _onednn_fusion_enabled
    with _threads_lock:
        if not _onednn_fusion_enabled:
            torch.jit.enable_onednn_fusion(True)
            _onednn_fusion_enabled = True
            logger.info("oneDNN Graph fusion of TorchScript graphs is on for this process")


def _cast_matmul_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Convert the weights and biases of every Conv2d and Linear in `module` to `dtype`, in place."""
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            layer.to(dtype)

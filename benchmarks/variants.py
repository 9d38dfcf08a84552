"""The inference configurations the benchmarks compare, each as a `Variant` with `run(batch) -> logits`.

The product configurations go through `classifier.backends.load_backend`
exactly as the bot loads them. The others are experiments kept here so that
their numbers can be measured again next to the product ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.backends import available_cpus, load_backend
from classifier.bundle import Bundle

logger = logging.getLogger(__name__)


@dataclass
class Variant:
    """One way to run the model: `run` maps a float32 batch (N, 3, 224, 224) to float32 logits (N, C)."""

    name: str
    # The dtype of the multiply-adds, which picks the GEMM peak the variant is compared with.
    dtype: str
    run: Callable[[np.ndarray], np.ndarray]
    note: str = ""
    setup_s: float = 0.0


def backend_variant(bundle: Bundle, name: str, kind: str, precision: str, dtype: str, note: str = "", **options) -> Variant:
    """Wrap a product backend from `load_backend`, warmed up."""
    started = time.perf_counter()
    backend = load_backend(bundle, kind, "cpu", precision, **options)
    backend.warmup()
    return Variant(name, dtype, backend.logits, note, time.perf_counter() - started)


def torch_variant(bundle: Bundle, name: str, *, bf16_weights: bool, script: str | None) -> Variant:
    """An experimental torch configuration: bf16 weights or fp32, eager, TorchScript-frozen or inductor-compiled."""
    import torch

    started = time.perf_counter()
    model = bundle.build_torch_model().eval().to(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if bf16_weights else torch.float32
    model = model.to(dtype)
    example = torch.zeros(1, 3, 224, 224, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if script == "jit":
            model = torch.jit.freeze(torch.jit.trace(model, example))
        elif script == "inductor":
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            model = torch.compile(model, dynamic=False)
        model(example)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(dtype).contiguous(memory_format=torch.channels_last)
            return model(inputs).float().numpy()

    return Variant(name, "bf16" if bf16_weights else "fp32", run, setup_s=time.perf_counter() - started)


def onnx_file_variant(path: Path, name: str, dtype: str, note: str = "") -> Variant:
    """An ONNX Runtime session over any .onnx file, with the product backend's session options."""
    import onnxruntime

    started = time.perf_counter()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = available_cpus()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0].astype(np.float32)

    run(np.zeros((1, 3, 224, 224), dtype=np.float32))
    return Variant(name, dtype, run, note, time.perf_counter() - started)


def torchscript_file_variant(path: Path, name: str, dtype: str, note: str = "") -> Variant:
    import torch

    started = time.perf_counter()
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float().numpy()

    run(np.zeros((1, 3, 224, 224), dtype=np.float32))
    return Variant(name, dtype, run, note, time.perf_counter() - started)


def build_variants(bundle: Bundle, onnx_bundle: Bundle | None, names: list[str], onnx_int8: Path | None) -> list[Variant]:
    """Build the variants in `names` (see `VARIANT_NAMES`), skipping those whose files are missing."""
    variants = []
    for name in names:
        logger.info("setting up %s", name)
        if name == "torch-fp32":
            variants.append(backend_variant(bundle, name, "torch", "fp32", "fp32", "eager, channels_last"))
        elif name == "torch-bf16-autocast":
            variants.append(backend_variant(bundle, name, "torch", "bf16", "bf16", "eager, channels_last, autocast", low_precision_mode="autocast"))
        elif name == "torch-bf16-precast":
            variants.append(backend_variant(bundle, name, "torch", "bf16", "bf16", "eager, channels_last, autocast over bf16 conv/linear weights", low_precision_mode="precast"))
        elif name == "torch-bf16-pure":
            variants.append(backend_variant(bundle, name, "torch", "bf16", "bf16", "eager, channels_last, whole backbone in bf16", low_precision_mode="pure"))
        elif name == "torch-auto":
            variant = backend_variant(bundle, name, "torch", "auto", "bf16", "the default: PRECISION=auto")
            variants.append(variant)
        elif name == "torch-fp32-jit":
            variants.append(_noted(torch_variant(bundle, name, bf16_weights=False, script="jit"), "torch.jit.trace + freeze"))
        elif name == "torch-bf16-jit":
            variants.append(_noted(torch_variant(bundle, name, bf16_weights=True, script="jit"), "bf16 weights, torch.jit.trace + freeze"))
        elif name == "torch-fp32-inductor":
            variants.append(_noted(torch_variant(bundle, name, bf16_weights=False, script="inductor"), "torch.compile (inductor, freezing)"))
        elif name == "torch-bf16-inductor":
            variants.append(_noted(torch_variant(bundle, name, bf16_weights=True, script="inductor"), "bf16 weights, torch.compile (inductor, freezing)"))
        elif name == "onnx-fp32":
            if onnx_bundle is not None:
                variants.append(backend_variant(onnx_bundle, name, "onnx", "fp32", "fp32", "ONNX Runtime, ORT_ENABLE_ALL"))
        elif name == "onnx-int8":
            if onnx_int8 is not None:
                variants.append(onnx_file_variant(onnx_int8, name, "int8", "ONNX Runtime, dynamic int8 MatMul weights"))
        elif name == "torchscript-int8":
            path = onnx_bundle.export_path("int8") if onnx_bundle is not None else None
            if path is not None and path.is_file():
                variants.append(torchscript_file_variant(path, name, "int8", "the bundle's int8 export: dynamic qint8 Linear"))
        else:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANT_NAMES)}")
    return variants


def _noted(variant: Variant, note: str) -> Variant:
    variant.note = note
    return variant


VARIANT_NAMES = (
    "torch-fp32",
    "torch-bf16-autocast",
    "torch-bf16-precast",
    "torch-bf16-pure",
    "torch-auto",
    "torch-fp32-jit",
    "torch-bf16-jit",
    "torch-fp32-inductor",
    "torch-bf16-inductor",
    "onnx-fp32",
    "onnx-int8",
    "torchscript-int8",
)

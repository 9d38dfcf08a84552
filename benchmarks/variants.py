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


def onnx_file_variant(path: Path, name: str, dtype: str, note: str = "") -> Variant:
    """Open an ONNX Runtime session over any .onnx file with the product backend's session options."""
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
    torch_options = {
        "torch-fp32": ("fp32", "fp32", "eager", {"optimize": "off"}),
        "torch-fp32-jit": ("fp32", "fp32", "torch.jit trace + freeze, oneDNN Graph fusion", {"optimize": "jit"}),
        "torch-fp32-inductor": ("fp32", "fp32", "torch.compile (inductor, freezing)", {"optimize": "inductor"}),
        "torch-bf16-autocast": ("bf16", "bf16", "autocast, eager", {"low_precision_mode": "autocast", "optimize": "off"}),
        "torch-bf16-precast": ("bf16", "bf16", "autocast over bf16 conv/linear weights, eager",
                               {"low_precision_mode": "precast", "optimize": "off"}),
        "torch-bf16-pure": ("bf16", "bf16", "whole backbone bf16, eager", {"low_precision_mode": "pure", "optimize": "off"}),
        "torch-bf16-mixed": ("bf16", "bf16", "bf16 blocks, fp32 stem and downsampling, eager",
                             {"low_precision_mode": "mixed", "optimize": "off"}),
        "torch-bf16-precast-jit": ("bf16", "bf16", "precast, torch.jit + oneDNN Graph", {"low_precision_mode": "precast", "optimize": "jit"}),
        "torch-bf16-pure-jit": ("bf16", "bf16", "whole backbone bf16, torch.jit + oneDNN Graph", {"low_precision_mode": "pure", "optimize": "jit"}),
        "torch-bf16-mixed-inductor": ("bf16", "bf16", "mixed, torch.compile (inductor, freezing)",
                                      {"low_precision_mode": "mixed", "optimize": "inductor"}),
        "torch-auto": ("auto", "bf16", "the default, PRECISION=auto: mixed, torch.jit + oneDNN Graph", {}),
    }
    variants = []
    for name in names:
        logger.info("setting up %s", name)
        if name in torch_options:
            precision, dtype, note, options = torch_options[name]
            variant = backend_variant(bundle, name, "torch", precision, dtype, note, **options)
            variants.append(variant)
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


VARIANT_NAMES = (
    "torch-fp32",
    "torch-fp32-jit",
    "torch-fp32-inductor",
    "torch-bf16-autocast",
    "torch-bf16-precast",
    "torch-bf16-pure",
    "torch-bf16-mixed",
    "torch-bf16-precast-jit",
    "torch-bf16-pure-jit",
    "torch-bf16-mixed-inductor",
    "torch-auto",
    "onnx-fp32",
    "onnx-int8",
    "torchscript-int8",
)

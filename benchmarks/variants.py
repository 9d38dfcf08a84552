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


def jit_variant(bundle: Bundle, name: str, *, bf16: bool) -> Variant:
    """An experiment: the whole model traced with torch.jit, frozen, and fused by oneDNN Graph.

    `torch.jit.enable_onednn_fusion` is process-wide, so every jit variant in a run is fused.
    """
    import torch

    started = time.perf_counter()
    torch.jit.enable_onednn_fusion(True)
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = bundle.build_torch_model().eval().to(memory_format=torch.channels_last).to(dtype)
    example = torch.zeros(2, 3, 224, 224, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        model = torch.jit.freeze(torch.jit.trace(model, example))
        # The profiling executor specializes and fuses after a few calls of each shape.
        for size in (1, 1, 1, 2, 2, 2):
            model(example[:size])

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            inputs = torch.from_numpy(batch).to(dtype).contiguous(memory_format=torch.channels_last)
            return model(inputs).float().numpy()

    return Variant(name, "bf16" if bf16 else "fp32", run, setup_s=time.perf_counter() - started)


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
    torch_options = {
        "torch-fp32": ("fp32", "fp32", "eager", {"compile": "off"}),
        "torch-fp32-compiled": ("fp32", "fp32", "torch.compile (inductor, freezing)", {"compile": "on"}),
        "torch-bf16-autocast": ("bf16", "bf16", "eager, autocast", {"low_precision_mode": "autocast", "compile": "off"}),
        "torch-bf16-precast": ("bf16", "bf16", "eager, autocast over bf16 conv/linear weights",
                               {"low_precision_mode": "precast", "compile": "off"}),
        "torch-bf16-pure": ("bf16", "bf16", "eager, whole backbone in bf16", {"low_precision_mode": "pure", "compile": "off"}),
        "torch-bf16-compiled": ("bf16", "bf16", "precast, torch.compile (inductor, freezing)",
                                {"low_precision_mode": "precast", "compile": "on"}),
        "torch-bf16-pure-compiled": ("bf16", "bf16", "pure bf16, torch.compile (inductor, freezing)",
                                     {"low_precision_mode": "pure", "compile": "on"}),
        "torch-auto": ("auto", "bf16", "the product default: PRECISION=auto", {}),
    }
    variants = []
    for name in names:
        logger.info("setting up %s", name)
        if name in torch_options:
            precision, dtype, note, options = torch_options[name]
            variant = backend_variant(bundle, name, "torch", precision, dtype, note, **options)
            variants.append(variant)
        elif name == "torch-fp32-jit":
            variants.append(_noted(jit_variant(bundle, name, bf16=False), "torch.jit.trace + freeze, oneDNN Graph fusion"))
        elif name == "torch-bf16-jit":
            variants.append(_noted(jit_variant(bundle, name, bf16=True), "whole model bf16, torch.jit.trace + freeze, oneDNN Graph fusion"))
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
    "torch-fp32-compiled",
    "torch-bf16-autocast",
    "torch-bf16-precast",
    "torch-bf16-pure",
    "torch-bf16-compiled",
    "torch-bf16-pure-compiled",
    "torch-auto",
    "torch-fp32-jit",
    "torch-bf16-jit",
    "onnx-fp32",
    "onnx-int8",
    "torchscript-int8",
)

"""Export a bundle to ONNX, TorchScript and dynamically quantized int8, each checked against fp32.

Every export is run on the same sample images as the fp32 PyTorch model and
compared on two numbers: the largest absolute logit difference and the
fraction of images whose top-1 class agrees. An export whose agreement is
below `min_agreement` is recorded with `fit_for_serving: false`, which the
ONNX serving backend refuses to load.

Files, written beside `model.pt` and listed in bundle.json `exports`:

- `model.onnx`: torch.onnx.export (the dynamo exporter for opset 18 and
  later, the TorchScript exporter for opset 17), one self-contained file
  (no external data), input `input` (N, 3, H, W) float32 with a dynamic
  batch axis, output `logits` (N, C).
- `model.torchscript.pt`: torch.jit.trace of the fp32 model. torch 2.14
  warns that torch.jit.trace is deprecated, but it still works.
- `model.int8.torchscript.pt`: torch.ao.quantization.quantize_dynamic of
  every Linear layer to qint8 (ConvNeXt's pointwise layers are Linear, so
  this covers most of the compute), then traced.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from classifier.bundle import Bundle
from classifier.preprocess import to_array
from training.data import DataSpec, list_images, load_image, load_splits
from training.synthetic import synthetic_non_flowers

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "int8")
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "int8": "model.int8.torchscript.pt"}
MIN_OPSET = 17


def sample_images(bundle: Bundle, *, images: str | os.PathLike | None, data: DataSpec | None, limit: int) -> tuple[list, str]:
    """Pick up to `limit` sample images and name their source.

    In order: the files under `images`; the val split of `data`; the val
    split of the data recorded in the bundle; synthetic images. A val split
    is sampled evenly across its length, so every class is represented.
    """
    if images is not None:
        paths = list_images(images)
        if not paths:
            raise ValueError(f"no images found under {images}")
        return [load_image(path) for path in _spread(paths, limit)], f"images:{images}"
    from training.evaluate import recorded_data_spec

    for spec in (data, recorded_data_spec(bundle)):
        if spec is None:
            continue
        try:
            val = load_splits(spec).val
        except (FileNotFoundError, ValueError, AssertionError) as error:
            logger.warning("cannot read sample images from %s: %s", spec.source, error)
            continue
        return [load_image(sample.path) for sample in _spread(val, limit)], f"val:{spec.source}"
    logger.warning("no sample photos available; checking exports on %d synthetic images", limit)
    return synthetic_non_flowers(limit, seed=0), "synthetic"


def _spread(items: Sequence, limit: int) -> list:
    if len(items) <= limit:
        return list(items)
    positions = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[position] for position in positions]


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Return the max absolute logit difference and top-1 agreement of `candidate` against `reference`."""
    return {
        "max_abs_logit_diff": float(np.max(np.abs(reference - candidate))),
        "top1_agreement": float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1))),
        "samples": int(len(reference)),
    }


def _timed_run(run, batch: np.ndarray) -> tuple[np.ndarray, float]:
    """Run `run(batch)` twice (the first warms up) and return the outputs and the milliseconds per image of the second."""
    run(batch[:1])
    started = time.perf_counter()
    outputs = run(batch)
    return outputs, 1000.0 * (time.perf_counter() - started) / len(batch)


def export_onnx(model: nn.Module, path: Path, *, opset: int, example: torch.Tensor) -> str:
    """Write `model` as one self-contained ONNX file with a dynamic batch axis; return the exporter used.

    Opset 18 and later go through the dynamo exporter. For opset 17 the
    legacy TorchScript exporter is used, because in torch 2.14 the dynamo
    exporter cannot convert ConvNeXt's graph down to 17 (the ONNX version
    converter fails on its ReduceMean nodes) and silently keeps opset 18.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"ONNX opset must be {MIN_OPSET} or later, got {opset}")
    # The exporters print their steps on stdout, which --progress-json and
    # the command's JSON output reserve for machine-readable lines.
    with contextlib.redirect_stdout(sys.stderr):
        if opset >= 18:
            exporter = "dynamo"
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            )
        else:
            exporter = "torchscript"
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
    import onnx

    onnx.checker.check_model(str(path))
    written = onnx_opset(path)
    if written != opset:
        raise RuntimeError(f"requested ONNX opset {opset}, but the {exporter} exporter wrote opset {written}")
    return exporter


def onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(item.version for item in model.opset_import if item.domain in ("", "ai.onnx"))


def run_onnx(path: Path, batch: np.ndarray) -> tuple[np.ndarray, float]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return _timed_run(lambda array: session.run(None, {input_name: array})[0], batch)


def run_torchscript(path: Path, batch: np.ndarray) -> tuple[np.ndarray, float]:
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(array: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(array)).float().numpy()

    return _timed_run(run, batch)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Return a copy of `model` with every Linear layer dynamically quantized to int8 weights."""
    # NOTE: torch 2.14 marks torch.ao.quantization as deprecated in favor of
    # torchao (not a dependency here) but still ships it. This call needs a
    # port to torchao's quantize_ once torch removes it.
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def export_bundle(
    model: str | os.PathLike | Bundle,
    *,
    formats: Sequence[str] = FORMATS,
    images: str | os.PathLike | None = None,
    data: DataSpec | None = None,
    samples: int = 32,
    opset: int = 18,
    min_agreement: float = 0.99,
) -> dict[str, dict[str, Any]]:
    """Write the requested exports into the bundle directory and record them in bundle.json.

    Returns the new `exports` entries, one per format:
    `{"file", "format", "fit_for_serving", "top1_agreement",
    "max_abs_logit_diff", "samples", "sample_source", "ms_per_image",
    "reference_ms_per_image", "bytes"}`, plus `"opset"` for ONNX and
    `"quantization"` for int8. The bundle is rewritten atomically with the
    new files (Bundle.save).
    """
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown export format(s) {unknown or formats}; choose from {', '.join(FORMATS)}")
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be within [0, 1], got {min_agreement}")
    bundle = model if isinstance(model, Bundle) else Bundle.load(model)
    if bundle.path is None:
        raise ValueError("export_bundle needs a bundle that was saved to a directory")
    network = bundle.build_torch_model()

    pictures, source = sample_images(bundle, images=images, data=data, limit=samples)
    batch = np.stack([to_array(picture, bundle.preprocessing) for picture in pictures]).astype(np.float32)

    def run_reference(array: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return network(torch.from_numpy(array)).numpy()

    reference, reference_ms = _timed_run(run_reference, batch)
    example = torch.from_numpy(batch[:2])
    logger.info("exporting bundle %s (%s) checked on %d images from %s", bundle.version, ", ".join(formats), len(batch), source)

    entries: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=bundle.path.parent) as staging_name:
        staging = Path(staging_name)
        for name in formats:
            path = staging / FILE_NAMES[name]
            started = time.monotonic()
            entry: dict[str, Any] = {"file": FILE_NAMES[name], "format": name}
            if name == "onnx":
                entry["exporter"] = export_onnx(network, path, opset=opset, example=example)
                entry["opset"] = onnx_opset(path)
                outputs, milliseconds = run_onnx(path, batch)
                entry["runtime"] = "onnxruntime"
            elif name == "torchscript":
                with torch.inference_mode():
                    torch.jit.save(torch.jit.trace(network, example), str(path))
                outputs, milliseconds = run_torchscript(path, batch)
                entry["runtime"] = "torch.jit"
            else:
                quantized = quantize_int8(network)
                with torch.inference_mode():
                    torch.jit.save(torch.jit.trace(quantized, example), str(path))
                outputs, milliseconds = run_torchscript(path, batch)
                entry["runtime"] = "torch.jit"
                entry["quantization"] = f"dynamic qint8 Linear weights ({torch.backends.quantized.engine})"
            entry.update(compare_logits(reference, outputs))
            entry["fit_for_serving"] = entry["top1_agreement"] >= min_agreement
            entry["min_agreement"] = min_agreement
            entry["sample_source"] = source
            entry["ms_per_image"] = round(milliseconds, 2)
            entry["reference_ms_per_image"] = round(reference_ms, 2)
            entry["bytes"] = path.stat().st_size
            entry["seconds"] = round(time.monotonic() - started, 2)
            log = logger.info if entry["fit_for_serving"] else logger.warning
            log(
                "%s: top-1 agreement %.4f, max |logit diff| %.2e, %.1f ms/image (fp32 %.1f): %s",
                name,
                entry["top1_agreement"],
                entry["max_abs_logit_diff"],
                milliseconds,
                reference_ms,
                "fit for serving" if entry["fit_for_serving"] else f"UNFIT (below {min_agreement})",
            )
            entries[name] = entry

        bundle.exports.update(entries)
        bundle.save(bundle.path, extra_files={FILE_NAMES[name]: staging / FILE_NAMES[name] for name in entries})
    return entries


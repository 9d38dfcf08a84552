"""ONNX Runtime inference backend (CPU, fp32), for serving without PyTorch."""

from __future__ import annotations

import logging

import numpy as np

from classifier.backends.base import available_cpus, check_batch
from classifier.bundle import Bundle

logger = logging.getLogger(__name__)

EXPORT_HINT = "run `python -m training export --model DIR` to add an ONNX export to the bundle"


def onnx_export_problem(bundle: Bundle) -> str | None:
    """Return why `bundle` cannot be served by ONNX Runtime, or None when its ONNX export is usable.

    Checks only the bundle's files and records, so it runs without onnxruntime.
    """
    entry = bundle.exports.get("onnx")
    if not entry:
        return f"model bundle {bundle.path} has no ONNX export; {EXPORT_HINT}"
    if not entry.get("fit_for_serving", False):
        return (
            f"the ONNX export in {bundle.path} is marked unfit for serving "
            f"(top-1 agreement {entry.get('top1_agreement')}, max logit difference {entry.get('max_abs_logit_diff')}); "
            f"{EXPORT_HINT} again or use BACKEND=torch"
        )
    model_path = bundle.export_path("onnx")
    if model_path is None or not model_path.is_file():
        return f"the ONNX file {model_path} listed in the bundle is missing; {EXPORT_HINT}"
    return None


class OnnxBackend:
    """An ONNX Runtime CPU session over the file in `bundle.exports["onnx"]["file"]`."""

    def __init__(self, bundle: Bundle, *, num_threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise RuntimeError("the onnx backend needs onnxruntime; install flowerbot with the onnx extra") from error

        problem = onnx_export_problem(bundle)
        if problem is not None:
            raise RuntimeError(problem)
        model_path = bundle.export_path("onnx")

        self.name = "onnx"
        self.precision = "fp32"
        self.version = bundle.version
        self.num_classes = bundle.num_classes
        self.num_threads = num_threads or available_cpus()

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        # An export with a fixed batch size of 1 is run one image at a time.
        self.fixed_batch_size = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
        logger.info(
            "onnx backend ready: bundle %s, %s, %d intra-op threads",
            bundle.version, model_path.name, self.num_threads,
        )

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Return float32 logits (N, num_classes) for a float32 batch (N, 3, H, W)."""
        batch = check_batch(batch)
        if self.fixed_batch_size == 1 and batch.shape[0] > 1:
            rows = [self.session.run(None, {self.input_name: batch[i : i + 1]})[0] for i in range(batch.shape[0])]
            return np.concatenate(rows).astype(np.float32, copy=False)
        return self.session.run(None, {self.input_name: batch})[0].astype(np.float32, copy=False)

    def warmup(self, batch_size: int = 1, image_size: int = 224) -> None:
        """Run one dummy batch so that the first real request does not pay for session set-up."""
        self.logits(np.zeros((batch_size, 3, image_size, image_size), dtype=np.float32))

    def close(self) -> None:
        """Drop the session."""
        self.session = None
        logger.info("onnx backend for bundle %s closed", self.version)

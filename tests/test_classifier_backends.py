"""Inference backends: torch (fp32 and bf16) and ONNX Runtime against the plain PyTorch model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from classifier.backends import available_cpus, load_backend  # noqa: E402
from classifier.backends.torch_backend import TorchBackend, cpu_has_bf16, resolve_device, resolve_precision  # noqa: E402
from classifier.bundle import Bundle  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(flowers5_bundle: Bundle) -> Bundle:
    """The session's random-init flowers5 bundle, read only here."""
    return flowers5_bundle


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(0, 1, (2, 3, 224, 224)).astype(np.float32)


@pytest.fixture(scope="module")
def reference_logits(bundle: Bundle, batch: np.ndarray) -> np.ndarray:
    model = bundle.build_torch_model()
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


def test_torch_fp32_matches_model(bundle: Bundle, batch: np.ndarray, reference_logits: np.ndarray):
    backend = TorchBackend(bundle, device="cpu", precision="fp32")

    logits = backend.logits(batch)

    assert backend.name == "torch"
    assert backend.precision == "fp32"
    assert logits.dtype == np.float32
    assert logits.shape == (2, 5)
    assert np.allclose(logits, reference_logits, atol=1e-4)
    backend.close()


def test_torch_bf16_is_close_to_fp32(bundle: Bundle, batch: np.ndarray, reference_logits: np.ndarray):
    backend = TorchBackend(bundle, device="cpu", precision="bf16")

    logits = backend.logits(batch)

    assert backend.precision == "bf16"
    assert logits.dtype == np.float32
    scale = np.abs(reference_logits).max()
    assert np.abs(logits - reference_logits).max() < 0.1 * scale
    backend.close()


def test_thread_count_follows_affinity(bundle: Bundle):
    TorchBackend(bundle, device="cpu", precision="fp32", num_threads=None).close()

    assert torch.get_num_threads() == available_cpus() == len(os.sched_getaffinity(0))


def test_auto_precision_on_cpu():
    expected = "bf16" if cpu_has_bf16() else "fp32"

    assert resolve_precision("auto", torch.device("cpu")) == expected


def test_invalid_precision_and_device():
    with pytest.raises(ValueError, match="fp16 is only supported on CUDA"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int4", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_warmup_runs(bundle: Bundle):
    backend = load_backend(bundle, "torch", "cpu", "fp32")

    backend.warmup()

    assert isinstance(backend, TorchBackend)
    backend.close()


def test_unknown_backend_kind(bundle: Bundle):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        load_backend(bundle, "tensorrt")


def test_onnx_without_export_says_how_to_export(bundle: Bundle):
    with pytest.raises(RuntimeError, match="python -m training export --model DIR"):
        load_backend(bundle, "onnx")


def test_onnx_rejects_gpu_and_bf16(bundle: Bundle):
    with pytest.raises(ValueError, match="CPU only"):
        load_backend(bundle, "onnx", device="cuda")
    with pytest.raises(ValueError, match="fp32 only"):
        load_backend(bundle, "onnx", precision="bf16")


def test_serving_modules_import_without_torch():
    code = (
        "import sys\n"
        "import classifier, classifier.backends, classifier.service, classifier.bundle, classifier.decode\n"
        "import classifier.labels, classifier.preprocess, classifier.batching, classifier.scores\n"
        "from classifier.backends import load_backend\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def onnx_bundle(bundle: Bundle, tmp_path_factory) -> Bundle:
    """Export the random model to ONNX (opset 18, dynamic batch) and save it as a bundle export."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    work = tmp_path_factory.mktemp("onnx")
    onnx_path = work / "model.onnx"
    model = bundle.build_torch_model()
    batch_dim = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(
        model,
        (torch.zeros(2, 3, 224, 224),),
        str(onnx_path),
        input_names=["images"],
        output_names=["logits"],
        dynamo=True,
        dynamic_shapes={"x": {0: batch_dim}},
        external_data=False,
    )
    exported = bundle.copy()
    exported.exports["onnx"] = {
        "file": "model.onnx",
        "opset": 18,
        "fit_for_serving": True,
        "top1_agreement": 1.0,
        "max_abs_logit_diff": 0.0,
    }
    exported.save(work / "bundle", extra_files={"model.onnx": onnx_path})
    return Bundle.load(work / "bundle")


@pytest.mark.slow
def test_onnx_matches_torch(onnx_bundle: Bundle, batch: np.ndarray, reference_logits: np.ndarray):
    backend = load_backend(onnx_bundle, "onnx")

    logits = backend.logits(batch)
    single = backend.logits(batch[:1])

    assert backend.name == "onnx"
    assert backend.precision == "fp32"
    assert backend.num_threads == available_cpus()
    assert logits.dtype == np.float32
    assert np.allclose(logits, reference_logits, atol=1e-3)
    assert np.allclose(single[0], reference_logits[0], atol=1e-3)
    backend.warmup()
    backend.close()


@pytest.mark.slow
def test_onnx_marked_unfit_is_rejected(onnx_bundle: Bundle):
    unfit = onnx_bundle.copy()
    unfit.exports["onnx"] = {**unfit.exports["onnx"], "fit_for_serving": False, "top1_agreement": 0.8}

    with pytest.raises(RuntimeError, match="unfit for serving"):
        load_backend(unfit, "onnx")


@pytest.mark.slow
def test_onnx_file_missing(onnx_bundle: Bundle, tmp_path: Path):
    broken = onnx_bundle.copy()
    broken.path = tmp_path

    with pytest.raises(RuntimeError, match="missing.*training export"):
        load_backend(broken, "onnx")

"""Serving speed features, checked by structure and never by wall time.

- Micro-batching coalesces concurrent requests, gives each caller its own row,
  and keeps doing so when photos in the same burst fail to decode.
- A full batch runs without waiting for `max_wait_s`.
- The bf16 modes of the torch backend. `precast` computes what plain autocast
  computes, and `mixed` keeps the stem, downsampling layers and head fp32.
  Every mode and graph optimization stays close to fp32, and `auto` picks
  `mixed` with a traced graph on a bf16 CPU. A traced batch is split into
  warmed sizes without mixing rows, and a failed trace falls back to eager.
- A /start sent during a burst of photos is answered while the burst is still
  held in inference.

Batch boundaries are made deterministic by holding the first batch in the
backend until the test has queued everything it wants in the second one.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from classifier.backends import load_backend, torch_backend  # noqa: E402
from classifier.backends.torch_backend import JIT_BATCH_SIZES, TorchBackend, cpu_has_bf16, jit_chunks  # noqa: E402
from classifier.batching import MicroBatcher  # noqa: E402
from classifier.bundle import Bundle  # noqa: E402
from classifier.decode import ImageDecodeError, decode_image  # noqa: E402
from classifier.preprocess import to_array  # noqa: E402
from classifier.service import ClassifierService, Prediction  # noqa: E402
from tests.emulator import make_user  # noqa: E402

# Generous bound on waits that finish at once when the code is right, so a bug fails instead of hanging.
HANG_GUARD_S = 60


class HoldingBackend:
    """Wraps a backend, records each batch size, and holds the first batch until `release` is set."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.precision = inner.precision
        self.num_classes = inner.num_classes
        self.batch_sizes: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(batch.shape[0])
        if len(self.batch_sizes) == 1:
            self.entered.set()
            assert self.release.wait(HANG_GUARD_S), "the test never released the first batch"
        return self.inner.logits(batch)

    def warmup(self) -> None:
        pass

    def close(self) -> None:
        pass


async def wait_for_queued(batcher: MicroBatcher, count: int) -> None:
    """Wait until `count` requests wait in the batcher's queue (the worker is busy with the held batch)."""
    for _ in range(HANG_GUARD_S * 100):
        if batcher._queue.qsize() >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {batcher._queue.qsize()} of {count} requests reached the batcher queue")


def direct_logits(backend, data: bytes) -> np.ndarray:
    """Logits of one photo computed without the service, decoded as the service decodes it."""
    return backend.logits(to_array(decode_image(data, draft_size=512))[None])[0]


@pytest.fixture(scope="module")
def photos(flowers5_val_photos: list[Path]) -> list[bytes]:
    return [path.read_bytes() for path in flowers5_val_photos[::20][:8]]


def truncated_jpeg(data: bytes) -> bytes:
    return data[: len(data) // 3]


async def test_batch_with_undecodable_photos(flowers5_bundle: Bundle, shared_backend, photos: list[bytes]):
    backend = HoldingBackend(shared_backend)
    service = ClassifierService(flowers5_bundle, backend, max_batch=16, max_wait_s=0.0)
    try:
        held = asyncio.ensure_future(service.classify(photos[0]))
        assert await asyncio.to_thread(backend.entered.wait, HANG_GUARD_S)
        inputs = [photos[1], b"not an image at all", photos[2], truncated_jpeg(photos[3]), photos[4], b""]
        burst = asyncio.ensure_future(asyncio.gather(*(service.classify(data) for data in inputs), return_exceptions=True))
        await wait_for_queued(service.batcher, 3)
        backend.release.set()
        outcomes = await burst
        first = await held
    finally:
        await service.close()

    assert backend.batch_sizes == [1, 3], "the three decodable photos must share one batch"
    assert isinstance(first, Prediction)
    for index in (1, 3, 5):
        assert isinstance(outcomes[index], ImageDecodeError), f"input {index} gave {outcomes[index]!r}"
    assert outcomes[1].reason == "not_image"
    assert outcomes[3].reason == "truncated"
    assert outcomes[5].reason == "empty"
    for index in (0, 2, 4):
        assert isinstance(outcomes[index], Prediction), f"input {index} gave {outcomes[index]!r}"
        expected = direct_logits(shared_backend, inputs[index])
        assert np.allclose(outcomes[index].logits, expected, atol=1e-3), f"input {index} got another caller's row"
    rows = [outcomes[index].logits for index in (0, 2, 4)]
    assert not np.allclose(rows[0], rows[1]), "distinct photos must give distinct rows"
    assert not np.allclose(rows[1], rows[2]), "distinct photos must give distinct rows"


async def test_burst_is_coalesced_in_max_batch_chunks(flowers5_bundle: Bundle, shared_backend, photos: list[bytes]):
    backend = HoldingBackend(shared_backend)
    service = ClassifierService(flowers5_bundle, backend, max_batch=4, max_wait_s=0.0)
    burst_photos = photos[1:8] + photos[1:3]  # 9 requests wait behind the held one
    try:
        held = asyncio.ensure_future(service.classify(photos[0]))
        assert await asyncio.to_thread(backend.entered.wait, HANG_GUARD_S)
        burst = asyncio.ensure_future(asyncio.gather(*(service.classify(data) for data in burst_photos)))
        await wait_for_queued(service.batcher, len(burst_photos))
        backend.release.set()
        predictions = await burst
        await held
    finally:
        await service.close()

    assert backend.batch_sizes == [1, 4, 4, 1]
    assert service.batcher.batch_count == 4
    assert service.batcher.request_count == 10
    for data, prediction in zip(burst_photos, predictions):
        assert np.allclose(prediction.logits, direct_logits(shared_backend, data), atol=1e-3)


class CountingBackend:
    name = "counting"
    precision = "fp32"
    num_classes = 3

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def logits(self, batch: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(batch.shape[0])
        return np.repeat(batch.reshape(batch.shape[0], -1).mean(axis=1, keepdims=True), 3, axis=1).astype(np.float32)

    def warmup(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_full_batch_runs_without_waiting():
    backend = CountingBackend()
    # An hour-long wait: the four requests must run as soon as the batch is full, not when the wait ends.
    batcher = MicroBatcher(backend, max_batch=4, max_wait_s=3600.0)
    images = [np.full((3, 4, 4), float(value), dtype=np.float32) for value in range(4)]

    rows = await asyncio.wait_for(asyncio.gather(*(batcher.submit(image) for image in images)), HANG_GUARD_S)
    await asyncio.wait_for(batcher.aclose(), HANG_GUARD_S)

    assert backend.batch_sizes == [4]
    for value, row in enumerate(rows):
        assert np.allclose(row, float(value))


def random_batch(size: int) -> np.ndarray:
    return np.random.default_rng(7).normal(0, 1, (size, 3, 224, 224)).astype(np.float32)


def test_precast_equals_autocast(flowers5_bundle: Bundle):
    batch = random_batch(3)
    autocast = TorchBackend(flowers5_bundle, device="cpu", precision="bf16", low_precision_mode="autocast", optimize="off")
    precast = TorchBackend(flowers5_bundle, device="cpu", precision="bf16", low_precision_mode="precast", optimize="off")

    expected = autocast.logits(batch)
    logits = precast.logits(batch)

    assert precast.low_precision_mode == "precast"
    assert np.allclose(logits, expected, atol=1e-4), np.abs(logits - expected).max()
    convolution = precast.model.features[0][0]
    assert convolution.weight.dtype == torch.bfloat16
    assert precast.model.classifier[1].weight.dtype == torch.float32, "the head LayerNorm must stay fp32"
    assert precast.model.classifier[2].weight.dtype == torch.float32, "the head Linear must stay fp32"
    layer_norm = next(module for module in precast.model.features.modules() if "LayerNorm" in type(module).__name__)
    assert layer_norm.weight.dtype == torch.float32, "backbone LayerNorms must stay fp32"


def test_mixed_keeps_stem_and_downsampling_fp32(flowers5_bundle: Bundle):
    backend = TorchBackend(flowers5_bundle, device="cpu", precision="bf16", low_precision_mode="mixed", optimize="off")

    features = backend.model.features
    for index in (0, 2, 4, 6):
        dtypes = {parameter.dtype for parameter in features[index].parameters()}
        assert dtypes == {torch.float32}, f"layer {index} (stem or downsampling) has {dtypes}"
    for index in (1, 3, 5, 7):
        dtypes = {parameter.dtype for parameter in features[index].parameters()}
        assert dtypes == {torch.bfloat16}, f"stage {index} has {dtypes}"
    assert {parameter.dtype for parameter in backend.model.classifier.parameters()} == {torch.float32}


@pytest.mark.parametrize(
    ("mode", "optimize"),
    [("mixed", "off"), ("mixed", "jit"), ("precast", "off"), ("precast", "jit"), ("autocast", "jit"), ("pure", "off"), ("pure", "jit")],
)
def test_low_precision_modes_close_to_fp32(flowers5_bundle: Bundle, shared_backend, mode: str, optimize: str):
    batch = random_batch(3)
    reference = shared_backend.logits(batch)
    scale = np.abs(reference).max()

    backend = TorchBackend(flowers5_bundle, device="cpu", precision="bf16", low_precision_mode=mode, optimize=optimize)
    backend.warmup()
    logits = backend.logits(batch)
    single = backend.logits(batch[:1])
    backend.close()

    assert backend.optimize == optimize, "tracing failed and the backend fell back to eager"
    assert logits.dtype == np.float32
    assert logits.shape == reference.shape
    assert np.abs(logits - reference).max() < 0.05 * scale, np.abs(logits - reference).max()
    assert np.allclose(single[0], logits[0], atol=0.05 * scale), "batch size changed the result"


def test_auto_is_mixed_jit_on_bf16_cpu(flowers5_bundle: Bundle):
    backend = load_backend(flowers5_bundle, "torch", "cpu", "auto")

    if cpu_has_bf16():
        assert backend.precision == "bf16"
        assert backend.low_precision_mode == "mixed"
        assert backend.optimize == "jit"
    else:
        assert backend.precision == "fp32"
        assert backend.low_precision_mode == "fp32"
        assert backend.optimize == "off"
    backend.close()


@pytest.mark.parametrize(
    ("count", "sizes"),
    [(0, []), (1, [1]), (3, [2, 1]), (7, [4, 2, 1]), (8, [8]), (13, [8, 4, 1]), (16, [8, 8]), (19, [8, 8, 2, 1])],
)
def test_jit_chunks_cover_batch(count: int, sizes: list[int]):
    chunks = jit_chunks(count)

    assert [size for _, size in chunks] == sizes
    assert [start for start, _ in chunks] == [sum(sizes[:index]) for index in range(len(sizes))]
    assert all(size in JIT_BATCH_SIZES for size in sizes)


def test_jit_batch_rows_match_single_images(flowers5_bundle: Bundle, shared_backend):
    batch = random_batch(13)
    backend = TorchBackend(flowers5_bundle, device="cpu", precision="bf16", optimize="jit")
    backend.warmup()

    together = backend.logits(batch)
    alone = np.concatenate([backend.logits(batch[index : index + 1]) for index in range(len(batch))])
    reference = shared_backend.logits(batch)

    assert together.shape == (13, flowers5_bundle.num_classes)
    assert np.allclose(together, alone, atol=2e-2), np.abs(together - alone).max()
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05  # rounding may flip near-ties only
    assert np.array_equal(together.argmax(axis=1)[clear], reference.argmax(axis=1)[clear])


class UntraceableFeatures(torch.nn.Module):
    """Pooled features that raise while torch.jit traces them, as an unsupported operator would."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images):
        if torch.jit.is_tracing():
            raise RuntimeError("this graph cannot be traced")
        return self.model.forward_features(images)


def test_failed_trace_falls_back_to_eager(flowers5_bundle: Bundle, shared_backend, caplog):
    batch = random_batch(2)
    backend = TorchBackend(flowers5_bundle, device="cpu", precision="bf16", low_precision_mode="pure", optimize="off")
    backend._eager_features = backend._features = UntraceableFeatures(backend.model)
    backend.optimize = "jit"

    with caplog.at_level("WARNING", logger="classifier.backends.torch_backend"):
        backend._optimize()
    logits = backend.logits(batch)

    assert backend.optimize == "off"
    assert "jit optimization failed" in caplog.text
    assert "this graph cannot be traced" in caplog.text
    assert np.abs(logits - shared_backend.logits(batch)).max() < 0.05 * np.abs(logits).max()


def test_auto_traces_fp32_without_bf16(flowers5_bundle: Bundle, shared_backend, monkeypatch):
    monkeypatch.setattr(torch_backend, "cpu_has_bf16", lambda: False)
    batch = random_batch(2)

    backend = load_backend(flowers5_bundle, "torch", "cpu", "auto")
    backend.warmup()

    assert backend.precision == "fp32"
    assert backend.optimize == "jit"
    assert np.allclose(backend.logits(batch), shared_backend.logits(batch), atol=1e-3)


def test_fp32_ignores_low_precision_mode(flowers5_bundle: Bundle, shared_backend):
    batch = random_batch(1)

    backend = TorchBackend(flowers5_bundle, device="cpu", precision="fp32", low_precision_mode="pure")

    assert backend.low_precision_mode == "fp32"
    assert backend.optimize == "off"
    assert np.allclose(backend.logits(batch), shared_backend.logits(batch), atol=1e-5)


def test_unknown_modes_are_rejected(flowers5_bundle: Bundle):
    with pytest.raises(ValueError, match="unknown low_precision_mode 'int4'"):
        TorchBackend(flowers5_bundle, device="cpu", precision="bf16", low_precision_mode="int4")
    with pytest.raises(ValueError, match="unknown optimize mode 'tensorrt'"):
        TorchBackend(flowers5_bundle, device="cpu", precision="bf16", optimize="tensorrt")


async def test_start_answered_during_held_burst(flowerbot, photos: list[bytes]):
    emulator = flowerbot.emulator
    gate = flowerbot.hold_inference(photos[0])
    burst = [emulator.send_photo(make_user(5000 + index, f"Sender {index}"), None, data) for index, data in enumerate(photos[:6])]
    await gate.wait_entered()

    start = emulator.send_command(make_user(5999, "Greeter"), None, "start")
    answer = await emulator.wait_for_response(start, timeout=HANG_GUARD_S)

    assert answer["text"], "/start must get a text answer"
    assert gate.blocking, "the held photo must still be in inference when /start is answered"
    assert not emulator.replies_to(burst[0]), "the held photo was answered before /start"
    gate.release()
    for message in burst:
        reply = await emulator.wait_for_reply(message, timeout=HANG_GUARD_S)
        assert reply["text"].count("\n") >= 2, reply["text"]

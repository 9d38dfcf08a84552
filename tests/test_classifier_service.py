"""ClassifierService end to end on a random-init ConvNeXt-Tiny: predictions, albums, bad input, swaps."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from classifier.backends import load_backend  # noqa: E402
from classifier.bundle import Bundle, new_random_bundle  # noqa: E402
from classifier.decode import ImageDecodeError, decode_image  # noqa: E402
from classifier.labels import LabelSet  # noqa: E402
from classifier.preprocess import to_array  # noqa: E402
from classifier.scores import logsumexp, softmax  # noqa: E402
from classifier.service import ClassifierService, Prediction  # noqa: E402

HANG_GUARD_S = 60
LABELS = LabelSet.from_names(["daisy", "dandelion", "roses", "sunflowers", "tulips"])


@pytest.fixture
def bundle_dir(flowers5_bundle_dir: Path) -> Path:
    """The session's random-init flowers5 bundle; tests load their own `Bundle` from it before changing one."""
    return flowers5_bundle_dir


@pytest.fixture
def backend(shared_backend):
    """The session's torch fp32 CPU backend for that bundle."""
    return shared_backend


@pytest.fixture
async def service(bundle_dir: Path, backend):
    service = ClassifierService(Bundle.load(bundle_dir), _Unclosable(backend), max_batch=8, max_wait_s=0.01)
    yield service
    await service.close()


class _Unclosable:
    """Shares the module's torch backend between tests; the service's close() leaves it open."""

    def __init__(self, backend) -> None:
        self.inner = backend
        self.name = backend.name
        self.precision = backend.precision
        self.num_classes = backend.num_classes

    def logits(self, batch):
        return self.inner.logits(batch)

    def warmup(self):
        self.inner.warmup()

    def close(self):
        pass


class HeldBackend(_Unclosable):
    """Holds every batch until the test sets `gate`; records that it was closed."""

    def __init__(self, backend) -> None:
        super().__init__(backend)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.closed = False

    def logits(self, batch):
        self.entered.set()
        assert self.gate.wait(HANG_GUARD_S), "the test never released the held batch"
        return self.inner.logits(batch)

    def close(self):
        self.closed = True


@pytest.fixture(scope="module")
def photos(flowers5_val_photos: list[Path]) -> list[bytes]:
    return [path.read_bytes() for path in flowers5_val_photos[::50][:4]]


def direct_logits(backend, data: bytes) -> np.ndarray:
    """Logits computed without the service: decode, preprocess, run one image."""
    return backend.logits(to_array(decode_image(data))[None])[0]


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **options)
    return buffer.getvalue()


async def test_classify_photo(service: ClassifierService, backend, photos: list[bytes]):
    prediction = await service.classify(photos[0], k=3)

    assert isinstance(prediction, Prediction)
    assert len(prediction.top) == 3
    probabilities = [candidate.probability for candidate in prediction.top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= probability <= 1.0 for probability in probabilities)
    assert prediction.probabilities.shape == (5,)
    assert abs(float(prediction.probabilities.sum()) - 1.0) < 1e-5
    assert prediction.top[0].class_id == LABELS.class_ids[prediction.top[0].index]
    assert prediction.top[0].index == int(np.argmax(prediction.logits))
    assert prediction.model_version == service.version
    assert prediction.image_sha256 == hashlib.sha256(photos[0]).hexdigest()
    assert prediction.latency_ms > 0
    assert prediction.photo_count == 1
    assert np.allclose(prediction.logits, direct_logits(backend, photos[0]), atol=1e-3)


async def test_energy_score_and_no_threshold(service: ClassifierService, photos: list[bytes]):
    prediction = await service.classify(photos[1])

    assert prediction.ood_score == pytest.approx(float(logsumexp(prediction.logits)), rel=1e-6)
    assert prediction.is_ood is False


async def test_k_is_clamped(service: ClassifierService, photos: list[bytes]):
    five = await service.classify(photos[0], k=5)
    many = await service.classify(photos[0], k=50)
    clamped_to_one = await service.classify(photos[0], k=0)

    assert len(five.top) == 5
    assert len(many.top) == 5
    assert len(clamped_to_one.top) == 1


async def test_display_names_follow_language(service: ClassifierService, photos: list[bytes]):
    prediction = await service.classify(photos[0])

    best = prediction.best
    assert prediction.display_name(best, "zh") == LABELS.display_name(best.index, "zh")
    assert prediction.display_name(best, "en") == LABELS.class_ids[best.index]


async def test_temperature_and_threshold_from_bundle(bundle_dir: Path, backend, photos: list[bytes]):
    bundle = Bundle.load(bundle_dir)
    bundle.calibration = {"temperature": 2.5}
    bundle.ood = {"score": "energy", "temperature": 1.0, "threshold": 1e6}
    service = ClassifierService(bundle, _Unclosable(backend))

    prediction = await service.classify(photos[0])
    await service.close()

    assert np.allclose(prediction.probabilities, softmax(prediction.logits, 2.5), atol=1e-6)
    assert prediction.temperature == 2.5
    assert prediction.is_ood is True


async def test_msp_score(bundle_dir: Path, backend, photos: list[bytes]):
    bundle = Bundle.load(bundle_dir)
    bundle.ood = {"score": "msp", "threshold": 0.0}
    service = ClassifierService(bundle, _Unclosable(backend))

    prediction = await service.classify(photos[0])
    await service.close()

    assert prediction.ood_score == pytest.approx(prediction.top[0].probability, rel=1e-5)
    assert prediction.is_ood is False


async def test_garbage_in_concurrent_batch(service: ClassifierService, backend, photos: list[bytes]):
    inputs = [photos[0], b"definitely not an image", photos[1], b"", photos[2]]

    outcomes = await asyncio.gather(*(service.classify(data) for data in inputs), return_exceptions=True)

    assert isinstance(outcomes[1], ImageDecodeError)
    assert outcomes[1].reason == "not_image"
    assert isinstance(outcomes[3], ImageDecodeError)
    assert outcomes[3].reason == "empty"
    for index in (0, 2, 4):
        assert isinstance(outcomes[index], Prediction), outcomes[index]
        expected = direct_logits(backend, inputs[index])
        assert np.allclose(outcomes[index].logits, expected, atol=1e-3), f"input {index} got another row"


async def test_concurrent_callers_get_own_rows(service: ClassifierService, backend, photos: list[bytes]):
    predictions = await asyncio.gather(*(service.classify(data) for data in photos))

    for data, prediction in zip(photos, predictions):
        assert prediction.image_sha256 == hashlib.sha256(data).hexdigest()
        assert np.allclose(prediction.logits, direct_logits(backend, data), atol=1e-3)
    assert service.batcher.largest_batch >= 1


async def test_album_averages_logits(service: ClassifierService, backend, photos: list[bytes]):
    album = photos[:3]

    prediction = await service.classify_many(album, k=3)

    expected = np.mean([direct_logits(backend, data) for data in album], axis=0)
    assert np.allclose(prediction.logits, expected, atol=1e-3)
    assert prediction.photo_count == 3
    assert prediction.skipped_photos == 0
    assert prediction.image_sha256s == tuple(hashlib.sha256(data).hexdigest() for data in album)


async def test_album_skips_bad_photo(service: ClassifierService, photos: list[bytes]):
    prediction = await service.classify_many([photos[0], b"junk", photos[1]])

    assert prediction.photo_count == 2
    assert prediction.skipped_photos == 1
    assert prediction.skipped_errors[0].reason == "not_image"


async def test_album_of_garbage_raises(service: ClassifierService):
    with pytest.raises(ImageDecodeError):
        await service.classify_many([b"junk", b""])


async def test_exif_rotation_matches_manual_rotation(service: ClassifierService, photos: list[bytes]):
    upright = Image.open(io.BytesIO(photos[0])).convert("RGB")
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = jpeg_bytes(sideways, exif=exif)
    plain = jpeg_bytes(sideways)
    by_hand = Image.open(io.BytesIO(plain)).transpose(Image.Transpose.ROTATE_270)

    from_exif = await service.classify(tagged)
    from_hand = await service.classify(_png_bytes(by_hand))

    assert from_exif.best.index == from_hand.best.index
    assert np.allclose(from_exif.logits, from_hand.logits, atol=1e-3)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_large_jpeg_draft_keeps_prediction(service: ClassifierService, backend, photos: list[bytes]):
    for data in photos[:2]:
        source = Image.open(io.BytesIO(data)).convert("RGB")
        large = jpeg_bytes(source.resize((source.width * 10, source.height * 10), Image.Resampling.BICUBIC))

        prediction = await service.classify(large)
        full = backend.logits(to_array(decode_image(large, draft_size=None))[None])[0]

        assert prediction.best.index == int(np.argmax(full))
        assert np.abs(prediction.logits - full).max() < 0.05 * np.abs(full).max()


async def test_decoding_runs_off_the_event_loop(bundle_dir: Path, backend, photos: list[bytes]):
    threads: list[str] = []

    class RecordingService(ClassifierService):
        def _decode_and_preprocess(self, data, spec):
            threads.append(threading.current_thread().name)
            return super()._decode_and_preprocess(data, spec)

    service = RecordingService(Bundle.load(bundle_dir), _Unclosable(backend))
    await service.classify(photos[0])
    await service.close()

    assert threads
    assert threading.current_thread().name not in threads
    assert all(name.startswith("image-decode") for name in threads)


async def test_swap_lets_requests_in_flight_finish(bundle_dir: Path, backend, tmp_path: Path, photos: list[bytes]):
    old_bundle = Bundle.load(bundle_dir)
    held = HeldBackend(backend)
    service = ClassifierService(old_bundle, held, max_wait_s=0.0)
    new_bundle = new_random_bundle(LABELS, tmp_path / "new", seed=1)
    new_backend = load_backend(new_bundle, "torch", "cpu", "fp32")

    in_flight = asyncio.ensure_future(service.classify(photos[0]))
    entered = await asyncio.get_running_loop().run_in_executor(None, held.entered.wait, HANG_GUARD_S)
    assert entered
    swapping = asyncio.ensure_future(service.swap(new_bundle, new_backend))
    await asyncio.sleep(0)

    assert service.version == new_bundle.version
    fresh = await asyncio.wait_for(service.classify(photos[0]), HANG_GUARD_S)
    assert fresh.model_version == new_bundle.version
    assert not in_flight.done()
    assert not held.closed

    held.gate.set()
    finished = await in_flight
    await swapping
    await service.close()

    assert finished.model_version == old_bundle.version
    assert held.closed
    assert not np.allclose(finished.logits, fresh.logits)


async def test_closed_service_rejects_requests(bundle_dir: Path, backend, photos: list[bytes]):
    service = ClassifierService(Bundle.load(bundle_dir), _Unclosable(backend))
    await service.close()

    with pytest.raises(RuntimeError, match="closed"):
        await service.classify(photos[0])


async def test_from_path(bundle_dir: Path, photos: list[bytes]):
    service = await asyncio.to_thread(
        ClassifierService.from_path, bundle_dir, backend_kind="torch", device="cpu", precision="fp32", warmup=False
    )

    prediction = await service.classify(photos[0])
    await service.close()

    assert prediction.model_version == Bundle.load(bundle_dir).version
    assert service.labels == LABELS


async def test_pixel_limit_is_applied(bundle_dir: Path, backend):
    service = ClassifierService(Bundle.load(bundle_dir), _Unclosable(backend), max_pixels=1000)

    with pytest.raises(ImageDecodeError) as caught:
        await service.classify(jpeg_bytes(Image.new("RGB", (100, 100), (10, 120, 30))))
    await service.close()

    assert caught.value.reason == "too_large"

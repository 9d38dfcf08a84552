"""The async classifier facade that the bot and the HTTP API call.

`ClassifierService.classify(data, k)` decodes and preprocesses the bytes in a
thread pool, runs the model through a `MicroBatcher` (worker threads), and
turns the logits into calibrated probabilities and an OOD score. Nothing
CPU-heavy runs on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from classifier.backends import InferenceBackend, available_cpus, load_backend
from classifier.batching import MicroBatcher
from classifier.bundle import Bundle
from classifier.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from classifier.labels import LabelSet
from classifier.preprocess import Preprocessing, to_array
from classifier.scores import ood_score, softmax

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One class in a prediction: its output index, class id and calibrated probability (0-1)."""

    index: int
    class_id: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """The result of classifying one photo, or an album of photos of one plant.

    `ood_score` is computed from the logits with the bundle's score (`energy`:
    `T * logsumexp(logits / T)`, or `msp`: the top calibrated probability);
    higher means more like the training flowers. `is_ood` is True when the
    bundle has a fitted threshold and the score is below it, and always False
    without a threshold. For an album, `logits` is the mean over its photos.
    """

    top: list[Candidate]
    logits: np.ndarray
    probabilities: np.ndarray
    ood_score: float
    is_ood: bool
    model_version: str
    latency_ms: float
    image_sha256: str
    labels: LabelSet
    temperature: float = 1.0
    photo_count: int = 1
    image_sha256s: tuple[str, ...] = ()
    skipped_photos: int = 0
    skipped_errors: tuple[ImageDecodeError, ...] = field(default=(), repr=False)

    @property
    def best(self) -> Candidate:
        """The candidate with the maximum probability."""
        return self.top[0]

    def display_name(self, candidate: Candidate | int, lang: str | None = "en") -> str:
        """Return the display name of a candidate (or class index) in `lang`, from the predicting model's labels."""
        index = candidate.index if isinstance(candidate, Candidate) else candidate
        return self.labels.display_name(index, lang)


@dataclass
class _ModelState:
    """One bundle with its backend and batcher; replaced as a whole by `swap`."""

    bundle: Bundle
    backend: InferenceBackend
    batcher: MicroBatcher
    in_flight: int = 0
    retired: bool = False
    drained: asyncio.Event | None = None


class ClassifierService:
    """Image classification with one model bundle at a time, safe to call from many coroutines at once."""

    def __init__(
        self,
        bundle: Bundle,
        backend: InferenceBackend,
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        workers: int = 1,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decode_threads: int | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.workers = workers
        self.max_pixels = max_pixels
        decode_threads = decode_threads or min(4, available_cpus())
        self._executor = concurrent.futures.ThreadPoolExecutor(decode_threads, thread_name_prefix="image-decode")
        self._state = self._new_state(bundle, backend)
        self._closed = False
        logger.info(
            "classifier service started: bundle %s, backend %s/%s, %d decode threads",
            bundle.version, backend.name, backend.precision, decode_threads,
        )

    @classmethod
    def from_path(
        cls,
        model_path: str | os.PathLike,
        *,
        backend_kind: str = "torch",
        device: str = "auto",
        precision: str = "auto",
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        workers: int = 1,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        warmup: bool = True,
    ) -> ClassifierService:
        """Load the bundle at `model_path` into a backend, warm it up, and start a service.

        Blocks for model loading (seconds); from a coroutine, run it in a thread.
        Raises `BundleError` for a missing or broken bundle.
        """
        bundle = Bundle.load(model_path)
        backend = load_backend(bundle, backend_kind, device, precision)
        if warmup:
            backend.warmup()
        return cls(bundle, backend, max_batch=max_batch, max_wait_s=max_wait_s, workers=workers, max_pixels=max_pixels)

    # Alias for callers written against the name used while the API was drafted.
    from_settings_like = from_path

    def _new_state(self, bundle: Bundle, backend: InferenceBackend) -> _ModelState:
        if getattr(backend, "num_classes", bundle.num_classes) != bundle.num_classes:
            raise ValueError(f"backend has {backend.num_classes} outputs but bundle {bundle.version} has {bundle.num_classes} classes")
        batcher = MicroBatcher(backend, max_batch=self.max_batch, max_wait_s=self.max_wait_s, workers=self.workers)
        return _ModelState(bundle=bundle, backend=backend, batcher=batcher)

    # Current model

    @property
    def bundle(self) -> Bundle:
        """The bundle that new requests use."""
        return self._state.bundle

    @property
    def backend(self) -> InferenceBackend:
        """The backend that new requests use."""
        return self._state.backend

    @property
    def batcher(self) -> MicroBatcher:
        """The micro-batcher that new requests use."""
        return self._state.batcher

    @property
    def version(self) -> str:
        """Version id of the bundle that new requests use."""
        return self._state.bundle.version

    @property
    def labels(self) -> LabelSet:
        """Label set of the bundle that new requests use."""
        return self._state.bundle.labels

    # Classification

    async def classify(self, data: bytes, k: int = 3) -> Prediction:
        """Classify one image; raise `ImageDecodeError` when the bytes are not a usable image."""
        started = time.perf_counter()
        state = self._acquire()
        try:
            array, digest = await self._prepare(data, state.bundle.preprocessing)
            logits = await state.batcher.submit(array)
        finally:
            self._release(state)
        latency_ms = (time.perf_counter() - started) * 1000
        return self._predict(state.bundle, logits, k, latency_ms, [digest])

    async def classify_many(self, images: Sequence[bytes], k: int = 3) -> Prediction:
        """Classify photos of one plant together by averaging their logits.

        Photos that fail to decode are skipped and counted in
        `skipped_photos`; when none decodes, the first photo's
        `ImageDecodeError` is raised.
        """
        if not images:
            raise ValueError("classify_many needs at least one image")
        started = time.perf_counter()
        state = self._acquire()
        try:
            spec = state.bundle.preprocessing
            prepared = await asyncio.gather(*(self._prepare(data, spec) for data in images), return_exceptions=True)
            errors = [item for item in prepared if isinstance(item, ImageDecodeError)]
            others = [item for item in prepared if isinstance(item, BaseException) and not isinstance(item, ImageDecodeError)]
            if others:
                raise others[0]
            good = [item for item in prepared if not isinstance(item, BaseException)]
            if not good:
                raise errors[0]
            rows = await asyncio.gather(*(state.batcher.submit(array) for array, _ in good))
        finally:
            self._release(state)

        mean_logits = np.mean(np.stack(rows), axis=0)
        latency_ms = (time.perf_counter() - started) * 1000
        digests = [digest for _, digest in good]
        return self._predict(state.bundle, mean_logits, k, latency_ms, digests, errors)

    async def classify_array(self, array: np.ndarray, k: int = 3) -> Prediction:
        """Classify an already preprocessed image (3, H, W); `image_sha256` is empty."""
        started = time.perf_counter()
        state = self._acquire()
        try:
            logits = await state.batcher.submit(array)
        finally:
            self._release(state)
        return self._predict(state.bundle, logits, k, (time.perf_counter() - started) * 1000, [""])

    async def _prepare(self, data: bytes, spec: Preprocessing) -> tuple[np.ndarray, str]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._decode_and_preprocess, bytes(data), spec)

    def _decode_and_preprocess(self, data: bytes, spec: Preprocessing) -> tuple[np.ndarray, str]:
        # Runs in the decode thread pool.
        digest = hashlib.sha256(data).hexdigest()
        # Draft decoding keeps twice the resize, where it changes the tensor very little (see decode.py).
        image = decode_image(data, max_pixels=self.max_pixels, draft_size=2 * spec.resize)
        return to_array(image, spec), digest

    def _predict(
        self,
        bundle: Bundle,
        logits: np.ndarray,
        k: int,
        latency_ms: float,
        digests: list[str],
        errors: Sequence[ImageDecodeError] = (),
    ) -> Prediction:
        logits = np.asarray(logits, dtype=np.float32)
        temperature = bundle.temperature
        probabilities = softmax(logits, temperature)
        k = max(1, min(int(k), logits.shape[-1]))
        order = np.argsort(-probabilities, kind="stable")[:k]
        top = [
            Candidate(index=int(index), class_id=bundle.labels.class_ids[index], probability=float(probabilities[index]))
            for index in order
        ]
        score = float(
            ood_score(
                logits,
                score=bundle.ood.get("score", "energy"),
                energy_temperature=float(bundle.ood.get("temperature") or 1.0),
                calibration_temperature=temperature,
            )
        )
        threshold = bundle.ood_threshold
        return Prediction(
            top=top,
            logits=logits,
            probabilities=probabilities,
            ood_score=score,
            is_ood=threshold is not None and score < threshold,
            model_version=bundle.version,
            latency_ms=latency_ms,
            image_sha256=digests[0],
            labels=bundle.labels,
            temperature=temperature,
            photo_count=len(digests),
            image_sha256s=tuple(digests),
            skipped_photos=len(errors),
            skipped_errors=tuple(errors),
        )

    # Model lifecycle

    def _acquire(self) -> _ModelState:
        if self._closed:
            raise RuntimeError("the classifier service is closed")
        state = self._state
        state.in_flight += 1
        return state

    def _release(self, state: _ModelState) -> None:
        state.in_flight -= 1
        if state.retired and state.in_flight == 0 and state.drained is not None:
            state.drained.set()

    async def swap(self, bundle: Bundle, backend: InferenceBackend | None = None) -> None:
        """Serve `bundle` for new requests; requests in flight finish on the old model, which is then closed.

        Without `backend`, one of the current kind is loaded (torch or onnx, on
        the current device) and warmed up in a thread. Returns once the old
        model is closed.
        """
        loop = asyncio.get_running_loop()
        if backend is None:
            current = self._state.backend
            device = str(getattr(current, "device", "auto"))
            precision = getattr(current, "precision", "auto") if current.name == "torch" else "auto"
            load = functools.partial(load_backend, bundle, current.name, device, precision)
            backend = await loop.run_in_executor(None, load)
            await loop.run_in_executor(None, backend.warmup)

        old = self._state
        self._state = self._new_state(bundle, backend)
        logger.info("serving bundle %s in place of %s", bundle.version, old.bundle.version)
        await self._retire(old)

    async def _retire(self, state: _ModelState) -> None:
        state.retired = True
        state.drained = asyncio.Event()
        if state.in_flight == 0:
            state.drained.set()
        await state.drained.wait()
        await state.batcher.aclose()
        await asyncio.get_running_loop().run_in_executor(None, state.backend.close)
        logger.info("closed bundle %s", state.bundle.version)

    async def close(self) -> None:
        """Finish requests in flight, then stop the batcher, the backend and the decode threads."""
        if self._closed:
            return
        self._closed = True
        await self._retire(self._state)
        self._executor.shutdown(wait=True)
        logger.info("classifier service stopped")

"""Micro-batching: coalesce concurrent requests into one backend call.

Callers on the event loop `await submit(array)`. A worker thread takes the
first waiting request and gathers more until it has `max_batch` of them or
`max_wait_s` has passed. It then runs them as one batch and returns each
caller its own row. A lone request therefore waits at most `max_wait_s` before it runs. With
several workers, a second batch starts while the first is still running, so
one slow batch does not hold up the next.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from classifier.backends.base import InferenceBackend

logger = logging.getLogger(__name__)


class BatcherClosedError(RuntimeError):
    """`submit` was called after `close`."""


@dataclass
class _Request:
    array: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()


class MicroBatcher:
    """A queue of submitted images that worker threads run through `backend.logits` in batches."""

    def __init__(
        self,
        backend: InferenceBackend,
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        workers: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.backend = backend
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        # Counters for metrics and tests; written by the workers under _lock.
        self.batch_count = 0
        self.request_count = 0
        self.largest_batch = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"micro-batcher-{index}", daemon=True) for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()
        logger.info(
            "micro-batcher started: backend %s, max_batch %d, max_wait %.1f ms, %d workers",
            getattr(backend, "name", type(backend).__name__), max_batch, max_wait_s * 1000, workers,
        )

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    async def submit(self, array: np.ndarray) -> np.ndarray:
        """Queue one preprocessed image (3, H, W) and return its logits row (num_classes,)."""
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 3:
            raise ValueError(f"expected one image of shape (3, H, W), got shape {array.shape}")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._closed:
                raise BatcherClosedError("the micro-batcher is closed")
            self._queue.put(_Request(array, future, loop))
        return await future

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._collect(first)
            self._run(batch)
            if stop:
                return

    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        """Gather requests after `first` until the batch is full or `max_wait_s` has passed."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, batch: list[_Request]) -> None:
        live = [request for request in batch if not request.future.cancelled()]
        if not live:
            return
        try:
            logits = self.backend.logits(np.stack([request.array for request in live]))
            if logits.shape[0] != len(live):
                raise RuntimeError(f"backend returned {logits.shape[0]} rows for a batch of {len(live)}")
        except Exception as error:
            logger.warning("batch of %d failed: %s: %s", len(live), type(error).__name__, error, exc_info=True)
            for request in live:
                _deliver(request, _set_exception, error)
            return

        with self._lock:
            self.batch_count += 1
            self.request_count += len(live)
            self.largest_batch = max(self.largest_batch, len(live))
        for row, request in zip(logits, live):
            _deliver(request, _set_result, np.array(row, copy=True))

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish the ones already queued, and join the workers.

        Blocks until the workers exit; call `aclose` from a coroutine.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout)
        logger.info("micro-batcher stopped after %d batches, %d requests", self.batch_count, self.request_count)

    async def aclose(self) -> None:
        """Close from a coroutine without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)


def _deliver(request: _Request, setter, value) -> None:
    try:
        request.loop.call_soon_threadsafe(setter, request.future, value)
    except RuntimeError:
        # The caller's event loop has closed, so no caller is waiting for this result.
        logger.info("dropping a result for a closed event loop")


def _set_result(future: asyncio.Future, value: np.ndarray) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)

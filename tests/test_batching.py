"""MicroBatcher: coalescing, per-caller results, errors, several workers, and closing.

The backends here are small classes written for the tests. They compute
logits from the pixel values, so each row shows which image it came from, and
they can hold a batch until the test releases it, which makes batch
boundaries deterministic without timing.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from classifier.batching import BatcherClosedError, MicroBatcher

NUM_CLASSES = 4
# Generous bound on waits that should finish at once, so a bug fails the test instead of hanging it.
HANG_GUARD_S = 30


def image(value: float) -> np.ndarray:
    return np.full((3, 8, 8), value, dtype=np.float32)


def expected_row(value: float) -> np.ndarray:
    return value * np.arange(1, NUM_CLASSES + 1, dtype=np.float32)


class RecordingBackend:
    """Logits row i = mean(image i) * [1, 2, ..., C]; records batch sizes; fails batches containing NaN."""

    name = "recording"
    precision = "fp32"

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.hold_values: set[float] = set()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(batch.shape[0])
        self.threads.add(threading.current_thread().name)
        means = batch.reshape(batch.shape[0], -1).mean(axis=1)
        if self.hold_values & set(means.tolist()):
            self.entered.set()
            assert self.gate.wait(HANG_GUARD_S), "the test never released the held batch"
        if np.isnan(means).any():
            raise ValueError("batch contains a NaN image")
        return (means[:, None] * np.arange(1, NUM_CLASSES + 1)).astype(np.float32)

    def warmup(self) -> None:
        pass

    def close(self) -> None:
        pass


async def wait_until_entered(backend: RecordingBackend) -> None:
    entered = await asyncio.get_running_loop().run_in_executor(None, backend.entered.wait, HANG_GUARD_S)
    assert entered, "the held batch never reached the backend"


async def test_each_caller_gets_its_own_row():
    backend = RecordingBackend()
    batcher = MicroBatcher(backend, max_batch=8, max_wait_s=0.01)
    values = [float(value) for value in range(1, 21)]

    rows = await asyncio.gather(*(batcher.submit(image(value)) for value in values))
    await batcher.aclose()

    for value, row in zip(values, rows):
        assert np.array_equal(row, expected_row(value)), f"caller {value} got {row}"
    assert sum(backend.batch_sizes) == len(values)
    assert max(backend.batch_sizes) <= 8


async def test_waiting_requests_are_coalesced():
    backend = RecordingBackend()
    backend.hold_values = {1.0}
    backend.gate.clear()
    batcher = MicroBatcher(backend, max_batch=16, max_wait_s=0.0)

    first = asyncio.ensure_future(batcher.submit(image(1.0)))
    await wait_until_entered(backend)
    rest = [asyncio.ensure_future(batcher.submit(image(value))) for value in (2.0, 3.0, 4.0, 5.0, 6.0)]
    await asyncio.sleep(0)  # let the submits enqueue
    backend.gate.set()
    results = await asyncio.gather(first, *rest)
    await batcher.aclose()

    assert backend.batch_sizes == [1, 5]
    assert all(np.array_equal(row, expected_row(value)) for value, row in zip((1, 2, 3, 4, 5, 6), results))


async def test_max_batch_is_respected():
    backend = RecordingBackend()
    backend.hold_values = {1.0}
    backend.gate.clear()
    batcher = MicroBatcher(backend, max_batch=4, max_wait_s=0.0)

    first = asyncio.ensure_future(batcher.submit(image(1.0)))
    await wait_until_entered(backend)
    rest = [asyncio.ensure_future(batcher.submit(image(float(value)))) for value in range(2, 11)]
    await asyncio.sleep(0)
    backend.gate.set()
    await asyncio.gather(first, *rest)
    await batcher.aclose()

    assert backend.batch_sizes == [1, 4, 4, 1]
    assert batcher.largest_batch == 4
    assert batcher.request_count == 10


async def test_failing_batch_reaches_each_caller():
    backend = RecordingBackend()
    backend.hold_values = {1.0}
    backend.gate.clear()
    batcher = MicroBatcher(backend, max_batch=16, max_wait_s=0.0)

    first = asyncio.ensure_future(batcher.submit(image(1.0)))
    await wait_until_entered(backend)
    doomed = [asyncio.ensure_future(batcher.submit(image(value))) for value in (2.0, float("nan"), 3.0)]
    await asyncio.sleep(0)
    backend.gate.set()
    outcomes = await asyncio.gather(first, *doomed, return_exceptions=True)
    later = await batcher.submit(image(7.0))
    await batcher.aclose()

    assert np.array_equal(outcomes[0], expected_row(1.0))
    for outcome in outcomes[1:]:
        assert isinstance(outcome, ValueError)
        assert "NaN" in str(outcome)
    assert np.array_equal(later, expected_row(7.0)), "the worker must survive a failing batch"


async def test_second_worker_runs_while_first_is_held():
    backend = RecordingBackend()
    backend.hold_values = {1.0}
    backend.gate.clear()
    batcher = MicroBatcher(backend, max_batch=16, max_wait_s=0.0, workers=2)

    held = asyncio.ensure_future(batcher.submit(image(1.0)))
    await wait_until_entered(backend)
    free = await asyncio.wait_for(batcher.submit(image(2.0)), HANG_GUARD_S)

    assert np.array_equal(free, expected_row(2.0))
    assert not held.done()
    backend.gate.set()
    assert np.array_equal(await held, expected_row(1.0))
    await batcher.aclose()
    assert len(backend.threads) == 2


async def test_backend_runs_off_the_event_loop():
    backend = RecordingBackend()
    batcher = MicroBatcher(backend, max_batch=2, max_wait_s=0.0)

    await batcher.submit(image(1.0))
    await batcher.aclose()

    assert threading.current_thread().name not in backend.threads
    assert all(name.startswith("micro-batcher-") for name in backend.threads)


async def test_lone_request_completes_with_wait():
    backend = RecordingBackend()
    batcher = MicroBatcher(backend, max_batch=64, max_wait_s=0.05)

    row = await asyncio.wait_for(batcher.submit(image(5.0)), HANG_GUARD_S)
    await batcher.aclose()

    assert np.array_equal(row, expected_row(5.0))
    assert backend.batch_sizes == [1]


async def test_close_drains_queued_requests():
    backend = RecordingBackend()
    backend.hold_values = {1.0}
    backend.gate.clear()
    batcher = MicroBatcher(backend, max_batch=2, max_wait_s=0.0)
    pending = [asyncio.ensure_future(batcher.submit(image(float(value)))) for value in range(1, 6)]
    await wait_until_entered(backend)

    closing = asyncio.ensure_future(batcher.aclose())
    await asyncio.sleep(0)
    backend.gate.set()
    results = await asyncio.gather(*pending)
    await closing

    assert [row[0] for row in results] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert batcher.closed
    with pytest.raises(BatcherClosedError):
        await batcher.submit(image(9.0))


async def test_cancelled_caller_does_not_disturb_others():
    backend = RecordingBackend()
    backend.hold_values = {1.0}
    backend.gate.clear()
    batcher = MicroBatcher(backend, max_batch=16, max_wait_s=0.0)

    first = asyncio.ensure_future(batcher.submit(image(1.0)))
    await wait_until_entered(backend)
    cancelled = asyncio.ensure_future(batcher.submit(image(2.0)))
    kept = asyncio.ensure_future(batcher.submit(image(3.0)))
    await asyncio.sleep(0)
    cancelled.cancel()
    backend.gate.set()

    assert np.array_equal(await kept, expected_row(3.0))
    assert np.array_equal(await first, expected_row(1.0))
    assert cancelled.cancelled()
    await batcher.aclose()


async def test_wrong_shape_is_rejected_at_submit():
    batcher = MicroBatcher(RecordingBackend())

    with pytest.raises(ValueError, match=r"shape \(3, H, W\)"):
        await batcher.submit(np.zeros((1, 3, 8, 8), dtype=np.float32))
    await batcher.aclose()


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(RecordingBackend(), max_batch=0)
    with pytest.raises(ValueError, match="workers"):
        MicroBatcher(RecordingBackend(), workers=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        MicroBatcher(RecordingBackend(), max_wait_s=-1)

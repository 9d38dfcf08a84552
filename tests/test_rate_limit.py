"""Per-person rate limits and Telegram's flood control (RetryAfter) on the photo path."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bot.i18n import text
from bot.metrics import Metrics
from bot.rate_limit import IMAGES, REPLIES, RateLimiter, get_rate_limiter
from tests.emulator import make_user
from tests.fixtures.bot import BotHarness

ALICE = make_user(6001, "Alice", language_code="en")
BOB = make_user(6002, "Bob", language_code="en")
LI = make_user(6003, "Li", language_code="zh-hans")


class FakeClock:
    """A monotonic clock that the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def small_jpeg(seed: int) -> bytes:
    """Return a small JPEG of random blocks. Each seed gives a different picture."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    picture = Image.fromarray(blocks).resize((128, 96), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def limit_seconds(message_text: str, lang: str) -> int | None:
    """Return the seconds a rate-limit message in `lang` names, or None for any other text."""
    for seconds in range(1, 61):
        if message_text == text("rate_limit.images", lang, seconds=seconds):
            return seconds
    return None


def retry_seconds(message_text: str, lang: str) -> int:
    """Return the seconds a rate-limit message names; fail when it is not that message."""
    seconds = limit_seconds(message_text, lang)
    assert seconds is not None, f"not a rate-limit message in {lang}: {message_text!r}"
    return seconds


# -- the limiter ----------------------------------------------------------------


def test_limiter_allows_up_to_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, clock=clock)

    decisions = [limiter.acquire(1) for _ in range(3)]

    assert all(decision.allowed for decision in decisions)
    assert limiter.rejected == 0


def test_limiter_rejection_says_when() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, clock=clock)
    limiter.acquire(1)
    clock.now += 15.0
    limiter.acquire(1)
    clock.now += 5.0

    first = limiter.acquire(1)
    second = limiter.acquire(1)

    assert not first.allowed
    assert first.retry_after_s == pytest.approx(40.0)
    assert first.retry_after_whole_s == 40
    assert first.notify is True
    assert not second.allowed
    assert second.notify is False
    assert limiter.rejected == 2


def test_limiter_window_slides() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, clock=clock)
    limiter.acquire(1)
    clock.now += 30.0
    limiter.acquire(1)
    assert not limiter.acquire(1).allowed

    clock.now += 30.0  # the first request leaves the window
    allowed = limiter.acquire(1)
    rejected = limiter.acquire(1)

    assert allowed.allowed
    assert not rejected.allowed
    assert rejected.notify is True, "a new rejection after an allowed request is announced again"
    assert rejected.retry_after_s == pytest.approx(30.0)


def test_limiter_keys_are_independent() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, clock=clock)

    assert limiter.acquire(1).allowed
    assert not limiter.acquire(1).allowed
    assert limiter.acquire(2).allowed


def test_limiter_rounds_seconds_up() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, clock=clock)
    limiter.acquire(1)
    clock.now += 59.95

    decision = limiter.acquire(1)

    assert decision.retry_after_s == pytest.approx(0.05)
    assert decision.retry_after_whole_s == 1


def test_limiter_forgets_idle_people(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bot.rate_limit.PRUNE_THRESHOLD", 3)
    clock = FakeClock()
    limiter = RateLimiter(1, clock=clock)
    for key in range(3):
        limiter.acquire(key)
    clock.now += 61.0

    limiter.acquire(99)

    assert len(limiter) == 1


def test_limiter_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="limit"):
        RateLimiter(0)
    with pytest.raises(ValueError, match="window_s"):
        RateLimiter(1, window_s=0)


# -- through the bot ------------------------------------------------------------


async def test_photos_over_limit_told_once(bot_harness: BotHarness) -> None:
    await bot_harness.start(rate_limit_per_minute=2)
    emulator = bot_harness.emulator
    metrics = bot_harness.context.extras["metrics"] = Metrics()

    photos = [emulator.send_photo(ALICE, None, small_jpeg(seed)) for seed in range(4)]
    await bot_harness.wait_idle()
    bob_photo = emulator.send_photo(BOB, None, small_jpeg(10))
    await emulator.wait_for_reply(bob_photo)
    await bot_harness.wait_idle()

    answered = [photo for photo in photos if emulator.replies_to(photo)]
    texts = [reply["text"] for photo in photos for reply in emulator.replies_to(photo)]
    limit_messages = [message for message in texts if limit_seconds(message, "en") is not None]
    assert len(answered) == 3, "two answers and one rate-limit message; the fourth photo gets nothing"
    assert len(limit_messages) == 1
    assert 1 <= retry_seconds(limit_messages[0], "en") <= 60
    rows = [await bot_harness.repository.get_prediction_by_message(ALICE["id"], photo["message_id"]) for photo in photos]
    assert sum(row is not None for row in rows) == 2
    # Photos over the limit were not downloaded.
    assert len(emulator.calls_to("getFile")) == 3
    assert metrics.registry.get_sample_value("flowerbot_errors_total", {"kind": "rate_limited"}) == 2
    # Another person is not limited by Alice.
    assert await bot_harness.repository.get_prediction_by_message(BOB["id"], bob_photo["message_id"]) is not None


async def test_limit_message_in_persons_language(bot_harness: BotHarness) -> None:
    await bot_harness.start(rate_limit_per_minute=1)
    emulator = bot_harness.emulator

    first = emulator.send_photo(LI, None, small_jpeg(1))
    await emulator.wait_for_reply(first)
    second = emulator.send_photo(LI, None, small_jpeg(2))
    reply = await emulator.wait_for_reply(second)

    assert 1 <= retry_seconds(reply["text"], "zh") <= 60


async def test_top5_counts_against_limit(bot_harness: BotHarness) -> None:
    await bot_harness.start(rate_limit_per_minute=1)
    emulator = bot_harness.emulator

    photo = emulator.send_photo(ALICE, None, small_jpeg(3))
    await emulator.wait_for_reply(photo)
    command = emulator.send_command(ALICE, None, "top5")
    reply = await emulator.wait_for_reply(command)

    assert 1 <= retry_seconds(reply["text"], "en") <= 60
    limiter = get_rate_limiter(bot_harness.context, IMAGES)
    assert limiter.rejected == 1


async def test_short_replies_have_own_limit(bot_harness: BotHarness) -> None:
    await bot_harness.start(rate_limit_per_minute=2)
    emulator = bot_harness.emulator

    stickers = [emulator.send_sticker(ALICE, None) for _ in range(4)]
    await bot_harness.wait_idle()
    photo = emulator.send_photo(ALICE, None, small_jpeg(4))
    await emulator.wait_for_reply(photo)

    answered = [sticker for sticker in stickers if emulator.replies_to(sticker)]
    assert len(answered) == 2, "over the limit, stickers get no answer and no rate-limit message"
    assert get_rate_limiter(bot_harness.context, REPLIES).rejected == 2
    # The photo budget is separate, so the photo is answered.
    assert await bot_harness.repository.get_prediction_by_message(ALICE["id"], photo["message_id"]) is not None


# AIORateLimiter reads `RetryAfter.retry_after`, which python-telegram-bot 22 marks as changing type.
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_photo_answer_waits_out_flood_control(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    emulator.inject_retry_after("sendMessage", seconds=1)

    photo = emulator.send_photo(ALICE, None, small_jpeg(5))
    reply = await emulator.wait_for_reply(photo)
    await flowerbot.wait_idle()

    assert [call.status for call in emulator.calls_to("sendMessage")] == [429, 200]
    assert emulator.replies_to(photo) == [reply]
    row = await flowerbot.repository.get_prediction_by_message(ALICE["id"], photo["message_id"])
    assert row is not None
    assert row.reply_message_id == reply["message_id"]

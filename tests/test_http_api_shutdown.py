"""A graceful stop of the running bot in the middle of a burst of Telegram photos and HTTP predictions.

The bot runs against the Telegram emulator with its HTTP server on. One photo's inference
is held at a gate, so that when `BotRuntime.stop()` begins, Telegram photos and HTTP
requests are in flight for certain. The test then checks that every reply the bot sent
has its stored prediction, that nothing accepted before the stop was dropped, and that
photos sent while the bot was down get one reply after a restart.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.emulator import make_user
from tests.fixtures.bot import BotHarness

PEOPLE = [make_user(6001 + number, f"Person{number}", language_code="en") for number in range(3)]
HELD_HTTP_REQUESTS = 3


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def wait_for_in_progress(metrics: Any, endpoint: str, count: int) -> None:
    """Wait until `count` requests to `endpoint` are inside their handlers."""
    labels = {"endpoint": endpoint}
    for _ in range(3000):
        if (metrics.sample("flowerbot_http_requests_in_progress", labels) or 0) >= count:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{count} requests to {endpoint} never were in progress at once")


async def test_shutdown_during_burst_loses_no_reply(bot_harness: BotHarness, flowers5_val_photos: list[Path]) -> None:
    if len(flowers5_val_photos) < 8:
        pytest.skip("needs 8 flowers5 val photos")
    port = free_port()
    runtime = await bot_harness.start(http_port=port)
    emulator = bot_harness.emulator
    metrics = runtime.context.extras["metrics"]
    photos = [path.read_bytes() for path in flowers5_val_photos[:8]]
    held_photo = photos[0]
    gate = bot_harness.hold_inference(held_photo)

    # The burst: six photos from three people and HTTP predictions, the held photo among them.
    before_stop = [emulator.send_photo(PEOPLE[number % 3], None, data) for number, data in enumerate(photos[:6])]
    async with aiohttp.ClientSession() as client:

        async def predict(data: bytes) -> tuple[int, dict[str, Any]]:
            async with client.post(f"http://127.0.0.1:{port}/predict?k=3", data=data) as response:
                return response.status, await response.json()

        held_requests = [asyncio.create_task(predict(held_photo)) for _ in range(HELD_HTTP_REQUESTS)]
        await gate.wait_entered()
        await wait_for_in_progress(metrics, "/predict", HELD_HTTP_REQUESTS)

        stopping = asyncio.create_task(runtime.stop())
        while runtime.application.updater.running:
            await asyncio.sleep(0.01)
        # Sent while the bot is going down: Telegram keeps these until the next start.
        after_stop = [emulator.send_photo(PEOPLE[number % 3], None, data) for number, data in enumerate(photos[6:])]
        assert emulator.replies_to(before_stop[0]) == []
        gate.release()
        await asyncio.wait_for(stopping, 120)
        bot_harness.runtime = None

        http_results = await asyncio.gather(*held_requests)
        with pytest.raises(aiohttp.ClientConnectionError):
            await predict(photos[1])

    # Every HTTP request accepted before the stop got a complete response.
    for status, payload in http_results:
        assert status == 200, payload
        assert len(payload["predictions"]) == 3
        assert payload["model_version"] == bot_harness.bundle.version

    # The stopped bot replied once to every photo it had fetched. The later photos wait at Telegram.
    answered_before_restart = {}
    for message in before_stop:
        replies = emulator.replies_to(message)
        assert len(replies) == 1, f"message {message['message_id']} got {len(replies)} replies before the restart"
        answered_before_restart[(message["chat"]["id"], message["message_id"])] = replies[0]["message_id"]
    for message in after_stop:
        assert emulator.replies_to(message) == []

    await bot_harness.start()
    for message in after_stop:
        await emulator.wait_for_reply(message, timeout=60)
    await bot_harness.wait_idle()

    # Each reply, before and after the restart, has its stored prediction, and no photo got two replies.
    for message in before_stop + after_stop:
        (reply,) = emulator.replies_to(message)
        chat_id, message_id = message["chat"]["id"], message["message_id"]
        row = await bot_harness.repository.get_prediction_by_message(chat_id, message_id)
        assert row is not None, f"no stored prediction for answered message {message_id}"
        assert row.reply_message_id == reply["message_id"]
        if (chat_id, message_id) in answered_before_restart:
            assert answered_before_restart[(chat_id, message_id)] == reply["message_id"]

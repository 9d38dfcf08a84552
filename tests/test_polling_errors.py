"""Errors of long polling: one log line per kind and interval, and the bot recovers.

The end-to-end test makes a second client poll the emulator with the bot's token, as a
second bot process would, so the bot's own getUpdates calls end in 409 Conflict.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from telegram.error import BadRequest, Conflict, NetworkError

from bot.polling_errors import PollingErrorLog
from tests.emulator import make_user, private_chat
from tests.fixtures.bot import BotHarness
from tests.test_feedback import noise_jpeg

LOGGER = "bot.polling_errors"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def polling_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER]


def test_repeats_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    error_log = PollingErrorLog(interval_s=60.0, clock=clock)
    conflict = Conflict("Conflict: terminated by other getUpdates request")

    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(5):
            error_log(conflict)
            clock.now += 1.0
        clock.now += 60.0
        error_log(conflict)

    records = polling_records(caplog)
    assert len(records) == 2
    assert records[0].levelno == logging.ERROR
    assert "another process is polling with this bot token" in records[0].getMessage()
    assert "more since" not in records[0].getMessage()
    assert "(4 more since the last report)" in records[1].getMessage()
    assert all(record.exc_info is None for record in records)


def test_kinds_counted_separately(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    error_log = PollingErrorLog(interval_s=60.0, clock=clock)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        error_log(Conflict("Conflict: terminated by other getUpdates request"))
        error_log(NetworkError("httpx.ConnectError: connection refused"))
        error_log(NetworkError("httpx.ConnectError: connection refused"))
        error_log(BadRequest("Bad Request: invalid offset"))

    records = polling_records(caplog)
    assert [record.levelno for record in records] == [logging.ERROR, logging.WARNING, logging.ERROR]
    assert "network error" in records[1].getMessage()
    assert "connection refused" in records[1].getMessage()
    assert "BadRequest" in records[2].getMessage()


async def test_second_poller_logged_without_tracebacks(flowerbot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    emulator = flowerbot.emulator
    url = f"{emulator.base_url}{emulator.token}/getUpdates"
    caplog.set_level(logging.INFO)

    async with aiohttp.ClientSession() as client:
        # Each call of the second poller ends the other's pending long poll with 409 Conflict,
        # so either side may get it.
        statuses = []
        for _ in range(8):
            async with client.post(url, json={"timeout": 0.5}) as response:
                statuses.append(response.status)
            await asyncio.sleep(0.1)
    assert set(statuses) <= {200, 409}

    conflict_lines = [record for record in polling_records(caplog) if "another process" in record.getMessage()]
    assert len(conflict_lines) == 1
    assert conflict_lines[0].levelno == logging.ERROR
    tracebacks = [record for record in caplog.records if record.name.startswith("telegram") and record.exc_info]
    assert tracebacks == []

    # Once the other poller is gone, the bot takes updates again.
    user = make_user(3101, "Polly")
    photo = emulator.send_photo(user, private_chat(user), noise_jpeg(5))
    answer = await emulator.wait_for_reply(photo, timeout=60)
    assert answer["reply_markup"]["inline_keyboard"]

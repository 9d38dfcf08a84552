"""Faults on the photo path: blocked people, failed downloads, crashed handlers, a locked database."""

from __future__ import annotations

import asyncio
import io
import logging
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import make_url

from bot.i18n import text
from tests.emulator import make_user
from tests.fixtures.bot import BotHarness
from tests.fixtures.database import selected_database_backend

ALICE = make_user(9001, "Alice", language_code="en")
BOB = make_user(9002, "Bob", language_code="en")
LI = make_user(9003, "Li", language_code="zh")


def small_jpeg(seed: int) -> bytes:
    """Return a small JPEG of random blocks. Each seed gives a different picture."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blocks).resize((128, 96), Image.Resampling.NEAREST).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def records_from(caplog: pytest.LogCaptureFixture, logger_name: str, level: int) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == logger_name and record.levelno == level]


def saved_files(harness: BotHarness) -> list[Path]:
    photos_dir = harness.settings.photos_dir
    return [path for path in photos_dir.rglob("*") if path.is_file()] if photos_dir.exists() else []


# -- people who blocked the bot -------------------------------------------------


async def test_block_during_photo_marks_inactive_once(flowerbot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    emulator = flowerbot.emulator
    first_data, second_data = small_jpeg(1), small_jpeg(2)
    gates = [flowerbot.hold_inference(first_data), flowerbot.hold_inference(second_data)]
    # One photo at a time, so each is held in a batch of its own on one of the two inference workers.
    first = emulator.send_photo(ALICE, None, first_data)
    await gates[0].wait_entered()
    second = emulator.send_photo(ALICE, None, second_data)
    await gates[1].wait_entered()

    # Alice blocks the bot while both photos are being classified.
    emulator.block_user(ALICE["id"])
    with caplog.at_level(logging.DEBUG, logger="bot"):
        for gate in gates:
            gate.release()
        await emulator.wait_for(lambda: len([call for call in emulator.calls_to("sendMessage") if call.status == 403]) >= 2)
        await flowerbot.wait_idle()

    stored_user = await flowerbot.repository.get_user(ALICE["id"])
    assert stored_user is not None
    assert stored_user.is_active is False
    blocked_logs = [record for record in records_from(caplog, "bot.handlers.errors", logging.WARNING) if "blocked the bot" in record.getMessage()]
    assert len(blocked_logs) == 1
    assert records_from(caplog, "bot.handlers.errors", logging.ERROR) == []
    # Two answers were attempted and no apology.
    assert [call.status for call in emulator.calls_to("sendMessage")] == [403, 403]
    # Both predictions were stored before their answers failed.
    for photo in (first, second):
        row = await flowerbot.repository.get_prediction_by_message(ALICE["id"], photo["message_id"])
        assert row is not None
        assert row.reply_message_id is None

    # The bot keeps serving others.
    bob_photo = emulator.send_photo(BOB, None, small_jpeg(3))
    await emulator.wait_for_reply(bob_photo)


async def test_block_before_apology_marks_inactive(flowerbot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    emulator = flowerbot.emulator
    # The answer fails with a 400 (injected faults come first), then the apology meets the block.
    emulator.inject_error("sendMessage", 400, "Bad Request: injected failure")
    emulator.block_user(ALICE["id"])

    with caplog.at_level(logging.INFO, logger="bot.handlers.errors"):
        emulator.send_photo(ALICE, None, small_jpeg(4))
        await emulator.wait_for_call("sendMessage", lambda call: call.status == 403)
        await flowerbot.wait_idle()

    stored_user = await flowerbot.repository.get_user(ALICE["id"])
    assert stored_user is not None
    assert stored_user.is_active is False
    assert [call.status for call in emulator.calls_to("sendMessage")] == [400, 403]
    assert len(records_from(caplog, "bot.handlers.errors", logging.ERROR)) == 1
    assert len([record for record in caplog.records if "blocked the bot" in record.getMessage()]) == 1


# -- the global error handler ----------------------------------------------------


async def test_failed_answer_is_stored_and_apologized(flowerbot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    emulator = flowerbot.emulator
    emulator.inject_error("sendMessage", 400, "Bad Request: injected failure")

    with caplog.at_level(logging.ERROR, logger="bot.handlers.errors"):
        photo = emulator.send_photo(ALICE, None, small_jpeg(5))
        apology = await emulator.wait_for_response(photo)
        await flowerbot.wait_idle()

    assert apology["text"] == text("error.generic", "en")
    (record,) = records_from(caplog, "bot.handlers.errors", logging.ERROR)
    assert record.exc_info is not None
    update_ids = [update["update_id"] for call in emulator.calls_to("getUpdates") for update in call.response.get("result") or []]
    assert any(f"update {update_id} failed" in record.getMessage() for update_id in update_ids)
    # The prediction was stored before the answer was attempted, so the failed send lost nothing.
    row = await flowerbot.repository.get_prediction_by_message(ALICE["id"], photo["message_id"])
    assert row is not None
    assert row.reply_message_id is None


async def test_crashed_button_gets_apology_notice(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    command = emulator.send_command(LI, None, "lang")
    offer = await emulator.wait_for_response(command)
    emulator.inject_error("answerCallbackQuery", 500, "Internal Server Error: injected failure")

    query = emulator.press_button(LI, None, offer, "lang:zh")
    notice = await emulator.wait_for_callback_answer(query)
    await flowerbot.wait_idle()

    assert notice.get("text") == text("error.generic", "zh")
    # The notice was the apology, and no message was added to the chat.
    assert emulator.sent_messages(LI["id"]) == [offer]


# -- downloads -------------------------------------------------------------------


async def test_getfile_server_error_gets_message(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    emulator.inject_error("getFile", 500, "Internal Server Error: injected failure")

    document = emulator.send_document(ALICE, None, small_jpeg(6), "flower.jpg", "image/jpeg")
    reply = await emulator.wait_for_reply(document)
    await flowerbot.wait_idle()

    assert reply["text"] == text("photo.download_failed", "en")
    assert await flowerbot.repository.get_prediction_by_message(ALICE["id"], document["message_id"]) is None
    assert saved_files(flowerbot) == []


async def test_expired_file_path_gets_message(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    photo = emulator.send_photo(ALICE, None, small_jpeg(7), deliver=False)
    # The file path answers 404, as when Telegram's download link has expired.
    largest = photo["photo"][-1]
    del emulator._files_by_path[emulator._files[largest["file_id"]].file_path]
    emulator.queue_update({"message": photo})

    reply = await emulator.wait_for_reply(photo)
    await flowerbot.wait_idle()

    assert reply["text"] == text("photo.download_failed", "en")
    assert await flowerbot.repository.get_prediction_by_message(ALICE["id"], photo["message_id"]) is None
    assert saved_files(flowerbot) == []


# -- the database ----------------------------------------------------------------


@pytest.mark.skipif(selected_database_backend() != "sqlite", reason="reads SQLite's journal mode")
async def test_database_file_in_wal_mode(flowerbot: BotHarness) -> None:
    photo = flowerbot.emulator.send_photo(ALICE, None, small_jpeg(9))
    await flowerbot.emulator.wait_for_reply(photo)

    # WAL mode is stored in the database file, so a second connection sees it.
    with sqlite3.connect(make_url(flowerbot.settings.resolved_database_url).database) as connection:
        (journal_mode,) = connection.execute("PRAGMA journal_mode").fetchone()
    assert journal_mode == "wal"



class RetryWatcher(logging.Handler):
    """Sets an event when the repository logs that it retries a busy database."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.retried = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "database busy" in record.getMessage():
            self.retried.set()


@pytest.mark.skipif(selected_database_backend() != "sqlite", reason="locks the SQLite file from a second connection")
async def test_locked_database_retried_and_stored(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    data = small_jpeg(8)
    gate = flowerbot.hold_inference(data)
    photo = emulator.send_photo(ALICE, None, data)
    await gate.wait_entered()

    watcher = RetryWatcher()
    repository_logger = logging.getLogger("storage.repository")
    repository_logger.addHandler(watcher)
    locker = sqlite3.connect(make_url(flowerbot.settings.resolved_database_url).database, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        gate.release()
        # The first attempt waits out SQLite's busy timeout (5 s), fails and is retried.
        retried = await asyncio.to_thread(watcher.retried.wait, 60)
        assert retried, "the prediction write never reported a busy database"
        assert emulator.replies_to(photo) == [], "an answer went out while its prediction could not be stored"
        locker.execute("COMMIT")
    finally:
        repository_logger.removeHandler(watcher)
        locker.close()

    reply = await emulator.wait_for_reply(photo)
    await flowerbot.wait_idle()
    row = await flowerbot.repository.get_prediction_by_message(ALICE["id"], photo["message_id"])
    assert row is not None
    assert row.reply_message_id == reply["message_id"]

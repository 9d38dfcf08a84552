"""The durable inbox with the real bot on the emulator: recording, replay after a cut-off run, attempt limit.

A crash is acted out in-process by cancelling the asyncio task that handles the update
while its inference is held: nothing after that point runs, as when the process dies.
`HandlerTasks` finds that task with a handler of its own that runs first for every update.
"""

from __future__ import annotations

import asyncio
import io
import logging
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, text, update
from telegram import Update
from telegram.ext import ContextTypes, TypeHandler

from bot.runtime import BotRuntime
from storage.db import create_engine, new_session_factory
from storage.models import InboxUpdate, Prediction
from bot import i18n
from tests.emulator import JSON, make_user, message_text
from tests.fixtures.bot import BotHarness

ALICE = make_user(7301, "Alice", language_code="en")
BO = make_user(7302, "Bo", language_code="zh-hans")
ALBUM_QUIET_S = 0.3
# A handler group that runs before every group the bot registers.
FIRST_GROUP = -1000


def small_jpeg(seed: int) -> bytes:
    """Return a small JPEG of random blocks. Each seed gives a different picture."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blocks).resize((160, 120), Image.Resampling.NEAREST).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class HandlerTasks:
    """Notes the asyncio task that handles each update, so a test can cut handling off as a crash would."""

    def __init__(self) -> None:
        self.by_update_id: dict[int, asyncio.Task[Any]] = {}

    def attach(self, runtime: BotRuntime) -> None:
        runtime.application.add_handler(TypeHandler(Update, self._note), group=FIRST_GROUP)

    async def _note(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.by_update_id[update.update_id] = task

    async def cut_off_running(self) -> int:
        """Cancel every noted task that is still running, wait until they end and return how many."""
        running = [task for task in self.by_update_id.values() if not task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=30)
        assert all(task.done() for task in running)
        return len(running)


async def with_session(harness: BotHarness, work):
    """Run `work(session)` in a committed transaction on a separate engine, as another process would."""
    engine = create_engine(harness.settings.resolved_database_url)
    try:
        async with new_session_factory(engine)() as session, session.begin():
            return await work(session)
    finally:
        await engine.dispose()


async def inbox_rows(harness: BotHarness) -> list[InboxUpdate]:
    async def work(session) -> list[InboxUpdate]:
        return list((await session.scalars(select(InboxUpdate).order_by(InboxUpdate.update_id))).all())

    return await with_session(harness, work)


async def inbox_row_for(harness: BotHarness, message: JSON) -> InboxUpdate:
    """Return the inbox row of the update that delivered `message`. Fail unless there is exactly one."""
    rows = [row for row in await inbox_rows(harness) if row.payload["message"]["message_id"] == message["message_id"]]
    assert len(rows) == 1, f"expected one inbox row for message {message['message_id']}, found {len(rows)}"
    return rows[0]


async def predictions_in(harness: BotHarness, chat_id: int) -> list[Prediction]:
    async def work(session) -> list[Prediction]:
        statement = select(Prediction).where(Prediction.chat_id == chat_id).order_by(Prediction.id)
        return list((await session.scalars(statement)).all())

    return await with_session(harness, work)


async def set_inbox_columns(harness: BotHarness, update_id: int, **values: Any) -> None:
    async def work(session) -> None:
        await session.execute(update(InboxUpdate).where(InboxUpdate.update_id == update_id).values(**values))

    await with_session(harness, work)


async def cut_off_photo(harness: BotHarness, tasks: HandlerTasks, photo: bytes) -> JSON:
    """Send a photo, hold its inference, then cut its handling off and stop the bot, as a crash mid-classification."""
    gate = harness.hold_inference(photo)
    message = harness.emulator.send_photo(ALICE, None, photo)
    await gate.wait_entered()
    assert await tasks.cut_off_running() == 1
    await harness.stop()
    return message


async def test_photo_update_recorded_then_finished(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    photo = small_jpeg(1)
    gate = flowerbot.hold_inference(photo)

    message = emulator.send_photo(ALICE, None, photo)
    await gate.wait_entered()
    held_row = await inbox_row_for(flowerbot, message)
    gate.release()
    reply = await emulator.wait_for_reply(message)
    await flowerbot.wait_idle()

    assert held_row.finished_at is None
    assert held_row.attempts == 1
    assert held_row.payload["message"]["photo"] == message["photo"]
    assert held_row.user_id == ALICE["id"]
    finished = await inbox_row_for(flowerbot, message)
    assert finished.finished_at is not None
    assert finished.attempts == 1
    assert emulator.replies_to(message) == [reply]


async def test_only_image_updates_recorded(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    command = emulator.send_command(ALICE, None, "start")
    await emulator.wait_for_response(command)
    document = emulator.send_document(ALICE, None, small_jpeg(2), "flower.jpg", "image/jpeg")
    await emulator.wait_for_reply(document)
    await flowerbot.wait_idle()

    rows = await inbox_rows(flowerbot)

    assert [row.payload["message"]["message_id"] for row in rows] == [document["message_id"]]
    assert rows[0].finished_at is not None


async def test_replay_answers_cut_off_photo(bot_harness: BotHarness) -> None:
    emulator = bot_harness.emulator
    tasks = HandlerTasks()
    tasks.attach(await bot_harness.start())
    message = await cut_off_photo(bot_harness, tasks, small_jpeg(3))
    assert emulator.replies_to(message) == []
    assert await predictions_in(bot_harness, ALICE["id"]) == []
    assert (await inbox_row_for(bot_harness, message)).finished_at is None

    await bot_harness.start()
    reply = await emulator.wait_for_reply(message, timeout=60)
    await bot_harness.wait_idle()
    await bot_harness.stop()

    assert emulator.replies_to(message) == [reply]
    predictions = await predictions_in(bot_harness, ALICE["id"])
    assert [row.message_id for row in predictions] == [message["message_id"]]
    assert predictions[0].reply_message_id == reply["message_id"]
    row = await inbox_row_for(bot_harness, message)
    assert row.finished_at is not None
    assert row.attempts == 2


@pytest.mark.parametrize("reply_recorded", [True, False], ids=["reply-recorded", "reply-in-flight"])
async def test_replay_skips_answered_photo(bot_harness: BotHarness, reply_recorded: bool) -> None:
    emulator = bot_harness.emulator
    await bot_harness.start()
    message = emulator.send_photo(ALICE, None, small_jpeg(4))
    await emulator.wait_for_reply(message)
    await bot_harness.wait_idle()
    await bot_harness.stop()
    # Acts out a crash after the answer went out but before the update was marked finished.
    # Without `reply_recorded`, the crash came before Telegram's response with the reply's id.
    row = await inbox_row_for(bot_harness, message)
    await set_inbox_columns(bot_harness, row.update_id, finished_at=None)
    if not reply_recorded:

        async def clear_reply(session) -> None:
            await session.execute(update(Prediction).where(Prediction.message_id == message["message_id"]).values(reply_message_id=None))

        await with_session(bot_harness, clear_reply)
    downloads_before = len(emulator.calls_to("getFile"))

    await bot_harness.start()
    await bot_harness.wait_idle()
    await bot_harness.stop()

    assert len(emulator.replies_to(message)) == 1
    assert len(emulator.calls_to("getFile")) == downloads_before
    assert len(await predictions_in(bot_harness, ALICE["id"])) == 1
    row = await inbox_row_for(bot_harness, message)
    assert row.finished_at is not None


@pytest.mark.parametrize(
    ("earlier_attempts", "replayed"), [(2, True), (3, False)], ids=["below-limit", "at-limit"]
)
async def test_attempt_limit_drops_update(
    bot_harness: BotHarness, caplog: pytest.LogCaptureFixture, earlier_attempts: int, replayed: bool
) -> None:
    emulator = bot_harness.emulator
    tasks = HandlerTasks()
    tasks.attach(await bot_harness.start())
    message = await cut_off_photo(bot_harness, tasks, small_jpeg(5))
    row = await inbox_row_for(bot_harness, message)
    # Acts out the restarts that the photo cut off before this one.
    await set_inbox_columns(bot_harness, row.update_id, attempts=earlier_attempts)
    assert bot_harness.settings.inbox_max_attempts == 3

    with caplog.at_level(logging.INFO, logger="bot.inbox"):
        await bot_harness.start()
        if replayed:
            await emulator.wait_for_reply(message, timeout=60)
        await bot_harness.wait_idle()
        await bot_harness.stop()

    dropped = [record for record in caplog.records if record.name == "bot.inbox" and "dropping inbox update" in record.getMessage()]
    row = await inbox_row_for(bot_harness, message)
    assert row.finished_at is not None
    assert row.attempts == earlier_attempts + 1
    if replayed:
        assert len(emulator.replies_to(message)) == 1
        assert dropped == []
    else:
        notices = emulator.replies_to(message)
        assert [message_text(notice) for notice in notices] == [i18n.text("inbox.dropped", "en")]
        assert len(dropped) == 1
        assert dropped[0].levelno == logging.WARNING
        assert str(row.update_id) in dropped[0].getMessage()
        assert await predictions_in(bot_harness, ALICE["id"]) == []


async def drop_on_restart(harness: BotHarness, messages: list[JSON]) -> None:
    """Mark the answered updates of `messages` unfinished at the attempt limit, as if each restart had crashed on them."""
    for message in messages:
        row = await inbox_row_for(harness, message)
        await set_inbox_columns(harness, row.update_id, finished_at=None, attempts=harness.settings.inbox_max_attempts)


async def test_dropped_album_notified_once(bot_harness: BotHarness) -> None:
    emulator = bot_harness.emulator
    await bot_harness.start()
    album = emulator.send_album(BO, None, [small_jpeg(20), small_jpeg(21), small_jpeg(22)])
    await emulator.wait_for_reply(album[0], timeout=60)
    await bot_harness.wait_idle()
    await bot_harness.stop()
    await drop_on_restart(bot_harness, album)
    sent_before = len(emulator.sent_messages(BO["id"]))

    await bot_harness.start()
    await bot_harness.wait_idle()
    await bot_harness.stop()

    notices = emulator.sent_messages(BO["id"])[sent_before:]
    assert [message_text(notice) for notice in notices] == [i18n.text("inbox.dropped", "zh")]
    assert notices[0]["reply_to_message"]["message_id"] in {message["message_id"] for message in album}
    for message in album:
        assert (await inbox_row_for(bot_harness, message)).finished_at is not None


async def test_dropped_notice_failure_logged(bot_harness: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    emulator = bot_harness.emulator
    await bot_harness.start()
    message = emulator.send_photo(ALICE, None, small_jpeg(23))
    await emulator.wait_for_reply(message)
    await bot_harness.wait_idle()
    await bot_harness.stop()
    await drop_on_restart(bot_harness, [message])
    emulator.inject_error("sendMessage", 403, "Forbidden: bot was blocked by the user")
    calls_before = len(emulator.calls_to("sendMessage"))

    with caplog.at_level(logging.ERROR, logger="bot.inbox"):
        await bot_harness.start()
        await bot_harness.wait_idle()
        await bot_harness.stop()

    assert len(emulator.calls_to("sendMessage")) == calls_before + 1
    assert len(emulator.replies_to(message)) == 1
    assert (await inbox_row_for(bot_harness, message)).finished_at is not None
    errors = [record.getMessage() for record in caplog.records if record.name == "bot.inbox" and record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "could not be sent" in errors[0]


async def test_recording_error_still_answers(flowerbot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    emulator = flowerbot.emulator

    async def drop_inbox(session) -> None:
        await session.execute(text("DROP TABLE inbox_updates"))

    await with_session(flowerbot, drop_inbox)

    with caplog.at_level(logging.ERROR, logger="bot.inbox"):
        message = emulator.send_photo(ALICE, None, small_jpeg(6))
        reply = await emulator.wait_for_reply(message)
        await flowerbot.wait_idle()

    assert emulator.replies_to(message) == [reply]
    assert len(await predictions_in(flowerbot, ALICE["id"])) == 1
    errors = [record.getMessage() for record in caplog.records if record.name == "bot.inbox"]
    assert len(errors) == 1
    assert "could not be stored in the inbox" in errors[0]


async def test_cut_off_album_replayed_whole(bot_harness: BotHarness) -> None:
    emulator = bot_harness.emulator
    tasks = HandlerTasks()
    tasks.attach(await bot_harness.start(album_quiet_s=ALBUM_QUIET_S))
    photos = [small_jpeg(7), small_jpeg(8)]
    gate = bot_harness.hold_inference(photos[1])

    messages = emulator.send_album(ALICE, None, photos)
    await gate.wait_entered()
    # The second photo's handler has returned, but its album is not answered yet.
    held_rows = [await inbox_row_for(bot_harness, message) for message in messages]
    assert await tasks.cut_off_running() == 1
    await bot_harness.stop()
    assert all(row.finished_at is None for row in held_rows)
    assert all(emulator.replies_to(message) == [] for message in messages)

    await bot_harness.start()
    reply = await emulator.wait_for_reply(messages[0], timeout=60)
    await bot_harness.wait_idle()
    await bot_harness.stop()

    assert emulator.replies_to(messages[0]) == [reply]
    assert emulator.replies_to(messages[1]) == []
    predictions = await predictions_in(bot_harness, ALICE["id"])
    assert len(predictions) == 1
    assert predictions[0].photo_count == 2
    assert predictions[0].message_id == messages[0]["message_id"]
    for message in messages:
        assert (await inbox_row_for(bot_harness, message)).finished_at is not None


async def test_album_finished_after_answer(bot_harness: BotHarness) -> None:
    emulator = bot_harness.emulator
    await bot_harness.start(album_quiet_s=ALBUM_QUIET_S)
    photos = [small_jpeg(9), small_jpeg(10)]
    gate = bot_harness.hold_inference(photos[0])

    messages = emulator.send_album(ALICE, None, photos)
    await gate.wait_entered()
    while_held = [await inbox_row_for(bot_harness, message) for message in messages]
    gate.release()
    await emulator.wait_for_reply(messages[0])
    await bot_harness.wait_idle()

    assert [row.finished_at for row in while_held] == [None, None]
    for message in messages:
        assert (await inbox_row_for(bot_harness, message)).finished_at is not None


async def test_start_deletes_old_finished_rows(bot_harness: BotHarness) -> None:
    emulator = bot_harness.emulator
    await bot_harness.start()
    old = emulator.send_photo(ALICE, None, small_jpeg(11))
    recent = emulator.send_photo(ALICE, None, small_jpeg(12))
    await emulator.wait_for_reply(old)
    await emulator.wait_for_reply(recent)
    await bot_harness.wait_idle()
    await bot_harness.stop()
    old_row = await inbox_row_for(bot_harness, old)
    await set_inbox_columns(bot_harness, old_row.update_id, finished_at=old_row.finished_at - timedelta(hours=25))

    await bot_harness.start()
    await bot_harness.stop()

    remaining = [row.payload["message"]["message_id"] for row in await inbox_rows(bot_harness)]
    assert remaining == [recent["message_id"]]


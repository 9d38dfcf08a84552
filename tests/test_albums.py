"""Albums through the emulator: one answer from averaged logits, one row, captions, redelivery, concurrency."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from telegram import Chat, Message

from bot.albums import AlbumCollector
from bot.answers import IncomingImage
from bot.honesty import skipped_photos_line
from bot.i18n import text
from classifier.decode import decode_image
from classifier.preprocess import to_array
from classifier.scores import softmax
from storage.db import create_engine, new_session_factory
from storage.models import Prediction
from tests.emulator import make_user
from tests.fixtures.bot import BotHarness
from tests.fixtures.honesty import TEST_ALBUM_QUIET_S

ALICE = make_user(5201, "Alice", language_code="en")
BOB = make_user(5202, "Bob", language_code="en")
SPECIES_LINE = re.compile(r"^\d+\. (?P<name>.+) — (?P<percent>\d{1,3}\.\d)%$")


def species_lines(answer: str) -> list[tuple[str, float]]:
    matches = [SPECIES_LINE.match(line) for line in answer.splitlines()]
    return [(match["name"], float(match["percent"])) for match in matches if match]


async def prediction_rows(bot: BotHarness, chat_id: int) -> list[Prediction]:
    """Return every stored prediction in a chat, read through a separate engine."""
    engine = create_engine(bot.settings.resolved_database_url)
    try:
        async with new_session_factory(engine)() as session:
            result = await session.scalars(select(Prediction).where(Prediction.chat_id == chat_id).order_by(Prediction.id))
            return list(result)
    finally:
        await engine.dispose()


async def count_rows(bot: BotHarness) -> int:
    engine = create_engine(bot.settings.resolved_database_url)
    try:
        async with new_session_factory(engine)() as session:
            return int(await session.scalar(select(func.count()).select_from(Prediction)))
    finally:
        await engine.dispose()


@pytest.fixture
async def album_bot(bot_harness: BotHarness) -> BotHarness:
    await bot_harness.start(album_quiet_s=TEST_ALBUM_QUIET_S)
    return bot_harness


async def test_album_of_three_gets_one_answer(album_bot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = album_bot.emulator
    photos = [flowers5_val_photos[position].read_bytes() for position in (2, 50, 90)]

    messages = emulator.send_album(ALICE, None, photos)
    answer = await emulator.wait_for_reply(messages[0])
    await album_bot.wait_idle()

    assert emulator.sent_messages(ALICE["id"]) == [answer]
    assert answer["text"].splitlines()[0] == text("honesty.album", "en", count=3)
    rows = await prediction_rows(album_bot, ALICE["id"])
    assert len(rows) == 1
    row = rows[0]
    assert row.photo_count == 3
    assert row.media_group_id == messages[0]["media_group_id"]
    assert row.message_id == messages[0]["message_id"]
    assert row.reply_message_id == answer["message_id"]

    # The answer is the softmax of the mean logits of the three photos.
    batch = np.stack([to_array(decode_image(data), album_bot.bundle.preprocessing) for data in photos])
    mean_logits = album_bot.backend.inner.logits(batch).mean(axis=0)
    probabilities = softmax(mean_logits, album_bot.bundle.temperature)
    order = np.argsort(-probabilities)[:3]
    expected = [(album_bot.bundle.labels.class_ids[index], probabilities[index] * 100) for index in order]
    shown = species_lines(answer["text"])
    assert [name for name, _ in shown] == [name for name, _ in expected]
    assert [percent for _, percent in shown] == pytest.approx([percent for _, percent in expected], abs=0.051)


async def test_caption_command_on_any_photo(album_bot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = album_bot.emulator
    first = emulator.send_photo(ALICE, None, flowers5_val_photos[5].read_bytes(), media_group_id="album-77")
    emulator.send_photo(ALICE, None, flowers5_val_photos[60].read_bytes(), media_group_id="album-77", caption="/top5")

    answer = await emulator.wait_for_reply(first)
    await album_bot.wait_idle()

    assert len(species_lines(answer["text"])) == 5
    rows = await prediction_rows(album_bot, ALICE["id"])
    assert [(row.k, row.photo_count) for row in rows] == [(5, 2)]


async def test_redelivered_album_not_duplicated(album_bot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = album_bot.emulator
    messages = emulator.send_album(ALICE, None, [flowers5_val_photos[position].read_bytes() for position in (8, 88)])
    await emulator.wait_for_reply(messages[0])
    await album_bot.wait_idle()

    # Telegram delivers the same updates again, as after a crash before they were confirmed.
    for message in messages:
        emulator.queue_update({"message": message})
    # And one photo alone, as a late straggler of the answered album.
    emulator.queue_update({"message": messages[1]})
    await album_bot.wait_idle()

    assert len(emulator.sent_messages(ALICE["id"])) == 1
    assert await count_rows(album_bot) == 1


async def test_interleaved_albums_answered_apart(album_bot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = album_bot.emulator
    alice_first = emulator.send_photo(ALICE, None, flowers5_val_photos[10].read_bytes(), media_group_id="a")
    bob_first = emulator.send_photo(BOB, None, flowers5_val_photos[110].read_bytes(), media_group_id="b")
    emulator.send_photo(ALICE, None, flowers5_val_photos[20].read_bytes(), media_group_id="a")
    emulator.send_photo(BOB, None, flowers5_val_photos[120].read_bytes(), media_group_id="b")
    emulator.send_photo(BOB, None, flowers5_val_photos[130].read_bytes(), media_group_id="b")

    alice_answer = await emulator.wait_for_reply(alice_first)
    bob_answer = await emulator.wait_for_reply(bob_first)
    await album_bot.wait_idle()

    assert alice_answer["text"].startswith(text("honesty.album", "en", count=2))
    assert bob_answer["text"].startswith(text("honesty.album", "en", count=3))
    assert [row.photo_count for row in await prediction_rows(album_bot, ALICE["id"])] == [2]
    assert [row.photo_count for row in await prediction_rows(album_bot, BOB["id"])] == [3]


async def test_unreadable_album_photo_left_out(album_bot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = album_bot.emulator
    good = [flowers5_val_photos[position].read_bytes() for position in (30, 130)]
    messages = emulator.send_album(ALICE, None, [good[0], b"this is not an image at all", good[1]])

    answer = await emulator.wait_for_reply(messages[0])
    await album_bot.wait_idle()

    lines = answer["text"].splitlines()
    assert lines[0] == text("honesty.album", "en", count=2)
    assert lines[-1] == skipped_photos_line(1, "en")
    rows = await prediction_rows(album_bot, ALICE["id"])
    assert [row.photo_count for row in rows] == [2]
    saved = sorted(path for path in album_bot.settings.photos_dir.rglob("*") if path.is_file())
    assert len(saved) == 2


async def test_album_of_unreadable_photos(album_bot: BotHarness) -> None:
    emulator = album_bot.emulator
    messages = emulator.send_album(ALICE, None, [b"not an image", b"also not an image"])

    reply = await emulator.wait_for_reply(messages[0])
    await album_bot.wait_idle()

    assert reply["text"] == text("photo.not_image", "en")
    assert await count_rows(album_bot) == 0


# -- the collector alone ----------------------------------------------------------


def album_message(message_id: int, group: str = "g1", chat_id: int = 1) -> Message:
    return Message(message_id, dt.datetime.now(dt.timezone.utc), Chat(chat_id, Chat.PRIVATE), media_group_id=group)


def image(number: int) -> IncomingImage:
    return IncomingImage(f"file-{number}", f"unique-{number}", 1000)


async def test_collector_opens_once_and_closes() -> None:
    collector = AlbumCollector(quiet_s=0.05)

    album = collector.add(album_message(3), image(3), k=3, lang="en")
    assert album is not None
    assert collector.add(album_message(1), image(1), k=5, lang="en") is None
    # A redelivered photo is not added twice.
    assert collector.add(album_message(3), image(3), k=3, lang="en") is None
    # Another album in the same chat is separate.
    assert collector.add(album_message(2, group="g2"), image(2), k=3, lang="en") is not None
    await collector.wait_quiet(album)
    assert collector.add(album_message(4), image(4), k=3, lang="en") is None

    assert [photo.message.message_id for photo in album.ordered()] == [1, 3]
    assert [photo.k for photo in album.ordered()] == [5, 3]
    assert album.closed
    assert album.late_photos == 1
    collector.finish(album)
    assert len(collector) == 1


async def test_collector_waits_for_last_photo() -> None:
    collector = AlbumCollector(quiet_s=0.2)
    album = collector.add(album_message(1), image(1), k=3, lang="en")

    async def add_later() -> None:
        for message_id in (2, 3):
            await asyncio.sleep(0.1)
            collector.add(album_message(message_id), image(message_id), k=3, lang="en")

    await asyncio.gather(collector.wait_quiet(album), add_later())

    assert [photo.message.message_id for photo in album.ordered()] == [1, 2, 3]

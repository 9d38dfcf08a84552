"""Commands about an album through the emulator: /top5 ranks the whole album, /forget reaches albums in progress.

Photos are noise JPEGs made by the test, so the random-init model's answer is
arbitrary. Tests compare the /top5 answer with the album's first answer instead
of assuming a species.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from bot.albums import get_collector
from bot.callbacks import Action
from bot.i18n import text
from tests.emulator import make_user
from tests.fixtures.bot import BotHarness
from tests.fixtures.honesty import TEST_ALBUM_QUIET_S
from tests.test_albums_storage import send_album
from tests.test_feedback import Chat, eventually, forget_button, noise_jpeg

JSON = dict[str, Any]

ALICE = make_user(5401, "Alice", language_code="en")
SPECIES_LINE = re.compile(r"^\d+\. .+ — \d{1,3}\.\d%$")
# Long enough for the test to send /forget and press its button while the album is still collected.
SLOW_ALBUM_QUIET_S = 5.0


def species_lines(answer: JSON) -> list[str]:
    return [line for line in answer["text"].splitlines() if SPECIES_LINE.match(line)]


@pytest.fixture
async def album_bot(bot_harness: BotHarness) -> BotHarness:
    await bot_harness.start(album_quiet_s=TEST_ALBUM_QUIET_S)
    return bot_harness


async def top5_reply(bot: BotHarness, reply_to: JSON | None) -> JSON:
    command = bot.emulator.send_command(ALICE, None, "top5", reply_to=reply_to)
    return copy.deepcopy(await bot.emulator.wait_for_reply(command))


@pytest.mark.parametrize("target", ["first photo", "third photo", "no reply"])
async def test_top5_ranks_whole_album(album_bot: BotHarness, target: str) -> None:
    messages, answer, prediction = await send_album(album_bot, ALICE, [noise_jpeg(seed) for seed in (401, 402, 403)])
    reply_to = {"first photo": messages[0], "third photo": messages[2], "no reply": None}[target]

    top5 = await top5_reply(album_bot, reply_to)
    await album_bot.wait_idle()

    assert top5["text"].splitlines()[0] == text("honesty.album", "en", count=3)
    shown = species_lines(top5)
    assert len(shown) == 5
    # The album's first answer listed three classes, and /top5 of the same photos starts with the same three.
    assert shown[:3] == species_lines(answer)
    stored = await album_bot.repository.latest_prediction(ALICE["id"])
    assert stored is not None
    assert stored.id == prediction.id
    assert stored.photo_count == 3
    assert len(await album_bot.repository.history(ALICE["id"], 10)) == 1


async def test_forget_discards_collected_album(bot_harness: BotHarness) -> None:
    await bot_harness.start(album_quiet_s=SLOW_ALBUM_QUIET_S)
    alice = Chat(bot_harness, ALICE)
    collector = get_collector(bot_harness.context)
    messages = bot_harness.emulator.send_album(ALICE, None, [noise_jpeg(seed) for seed in (411, 412)])
    await eventually(lambda: [len(album.photos) for album in collector.pending()] == [2])

    question = await alice.command("forget")
    notice = await alice.press(question, forget_button(bot_harness, question, Action.FORGET_CONFIRM))

    assert notice == text("forget.done", "en")
    # The handler of the album's first photo ends once it reads the discard flag.
    await eventually(lambda: len(collector) == 0)
    await bot_harness.wait_idle()
    assert all(bot_harness.emulator.replies_to(message) == [] for message in messages)
    assert await bot_harness.repository.latest_prediction(ALICE["id"]) is None
    assert [path for path in bot_harness.settings.photos_dir.rglob("*") if path.is_file()] == []


async def test_forget_during_album_inference(album_bot: BotHarness) -> None:
    alice = Chat(album_bot, ALICE)
    images = [noise_jpeg(seed) for seed in (421, 422)]
    gate = album_bot.hold_inference(images[0])
    messages = album_bot.emulator.send_album(ALICE, None, images)
    await gate.wait_entered()

    question = await alice.command("forget")
    query = album_bot.emulator.press_button(
        ALICE, None, question, forget_button(album_bot, question, Action.FORGET_CONFIRM)
    )
    # /forget waits for the album being answered, then deletes what it stored.
    await eventually(lambda: get_collector(album_bot.context).answering(ALICE["id"]))
    gate.release()
    notice = await album_bot.emulator.wait_for_callback_answer(query)

    assert notice.get("text") == text("forget.done", "en")
    assert len(album_bot.emulator.replies_to(messages[0])) == 1
    assert await album_bot.repository.latest_prediction(ALICE["id"]) is None
    await eventually(lambda: not any(path.is_file() for path in album_bot.settings.photos_dir.rglob("*")))

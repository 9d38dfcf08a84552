"""Inputs that are not photos: each gets its short answer in a private chat, or is ignored on purpose."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.i18n import text
from tests.emulator import JSON, TelegramEmulator, group_chat, make_user
from tests.fixtures.bot import BotHarness

ALICE = make_user(7001, "Alice", language_code="en")
LI = make_user(7002, "Li", language_code="zh-hans")
GROUP = group_chat(-1007001)


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def queue_content(emulator: TelegramEmulator, user: JSON, chat: JSON | None, content: JSON) -> JSON:
    """Queue a message with arbitrary Bot API content (an audio, a venue, a dice, ...)."""
    # The emulator has no public helper for every kind of message. Its building block keeps
    # the message in the chat, so the bot can reply to it.
    return emulator._queue_message(user, chat, content)


def file_fields(number: int) -> JSON:
    return {"file_id": f"BQACAgIAAxkBAAE{number:08d}other", "file_unique_id": f"AQADother{number}", "file_size": 2048}


# Kinds the emulator cannot send with a helper of its own: (id, content, expected message key).
RAW_KINDS = [
    (
        "animation",
        {
            "animation": {**file_fields(1), "width": 320, "height": 240, "duration": 2, "mime_type": "video/mp4", "file_name": "flower.gif.mp4"},
            "document": {**file_fields(1), "mime_type": "video/mp4", "file_name": "flower.gif.mp4"},
        },
        "input.video",
    ),
    ("video_note", {"video_note": {**file_fields(2), "length": 240, "duration": 3}}, "input.video"),
    ("audio", {"audio": {**file_fields(3), "duration": 30, "mime_type": "audio/mpeg"}}, "input.voice"),
    (
        "venue",
        {
            "location": {"latitude": 51.75, "longitude": -1.25},
            "venue": {"location": {"latitude": 51.75, "longitude": -1.25}, "title": "Botanic Garden", "address": "Rose Lane"},
        },
        "input.location",
    ),
    ("contact", {"contact": {"phone_number": "+441234567890", "first_name": "Rose"}}, "input.other"),
    ("dice", {"dice": {"emoji": "🎲", "value": 4}}, "input.other"),
    ("game", {"game": {"title": "Petals", "description": "A game", "photo": [{"file_id": "g", "file_unique_id": "g", "width": 1, "height": 1}]}}, "input.other"),
]


async def test_each_kind_gets_its_answer(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    sent = {
        "sticker": (emulator.send_sticker(ALICE, None), "input.sticker"),
        "video": (emulator.send_video(ALICE, None), "input.video"),
        "voice": (emulator.send_voice(ALICE, None), "input.voice"),
        "location": (emulator.send_location(ALICE, None), "input.location"),
        "text": (emulator.send_text(ALICE, None, "what flower is this?"), "input.text"),
        "unknown command": (emulator.send_command(ALICE, None, "bloom"), "input.unknown_command"),
    }
    for kind, content, key in RAW_KINDS:
        sent[kind] = (queue_content(emulator, ALICE, None, content), key)
    await flowerbot.wait_idle()

    answers = {kind: [reply["text"] for reply in emulator.replies_to(message)] for kind, (message, _) in sent.items()}
    expected = {kind: [text(key, "en")] for kind, (_, key) in sent.items()}
    assert answers == expected
    # Nothing was downloaded, classified or stored.
    assert emulator.calls_to("getFile") == []
    assert await flowerbot.repository.latest_prediction(ALICE["id"]) is None


async def test_answer_in_persons_language(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator

    sticker = emulator.send_sticker(LI, None)
    reply = await emulator.wait_for_reply(sticker)

    assert reply["text"] == text("input.sticker", "zh")


async def test_known_command_gets_one_answer(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator

    command = emulator.send_command(ALICE, None, "help")
    await emulator.wait_for_response(command)
    await flowerbot.wait_idle()

    sent = emulator.sent_messages(ALICE["id"])
    assert len(sent) == 1
    assert sent[0]["text"] != text("input.unknown_command", "en")


async def test_photo_gets_no_fallback_answer(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator

    photo = emulator.send_photo(ALICE, None, small_png())
    await emulator.wait_for_reply(photo)
    await flowerbot.wait_idle()

    assert len(emulator.replies_to(photo)) == 1
    assert await flowerbot.repository.get_prediction_by_message(ALICE["id"], photo["message_id"]) is not None


async def test_group_ignores_other_inputs(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    emulator.send_sticker(ALICE, GROUP)
    emulator.send_text(ALICE, GROUP, "lovely roses")
    emulator.send_voice(ALICE, GROUP)
    emulator.send_command(ALICE, GROUP, "bloom")

    await flowerbot.wait_idle()
    # A command with a handler still works in the group, after the ignored messages.
    command = emulator.send_command(ALICE, GROUP, "help")
    await emulator.wait_for_reply(command)
    await flowerbot.wait_idle()

    assert [message["reply_to_message"]["message_id"] for message in emulator.sent_messages(GROUP["id"])] == [command["message_id"]]


async def test_service_message_ignored(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator

    queue_content(emulator, ALICE, None, {"pinned_message": {"message_id": 1, "date": 0, "chat": {"id": ALICE["id"], "type": "private"}}})
    await flowerbot.wait_idle()

    assert emulator.sent_messages(ALICE["id"]) == []


@pytest.mark.parametrize(
    ("original", "edited"),
    [
        ("/start", "/help"),
        ("roses", "/forget"),
        ("hello", "what flower is this?"),
    ],
)
async def test_edited_text_ignored(flowerbot: BotHarness, original: str, edited: str) -> None:
    emulator = flowerbot.emulator
    message = emulator.send_text(ALICE, None, original)
    await emulator.wait_for_response(message)
    await flowerbot.wait_idle()
    before = len(emulator.sent_messages(ALICE["id"]))

    emulator.send_edited_message(ALICE, None, message, edited)
    await flowerbot.wait_idle()

    assert len(emulator.sent_messages(ALICE["id"])) == before


async def test_edited_caption_not_classified_again(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    photo = emulator.send_photo(ALICE, None, small_png(), caption="my garden")
    await emulator.wait_for_reply(photo)
    await flowerbot.wait_idle()

    emulator.send_edited_message(ALICE, None, photo, "/top5")
    await flowerbot.wait_idle()

    assert len(emulator.replies_to(photo)) == 1
    assert len(emulator.calls_to("getFile")) == 1
    row = await flowerbot.repository.get_prediction_by_message(ALICE["id"], photo["message_id"])
    assert row is not None
    assert row.k == 3

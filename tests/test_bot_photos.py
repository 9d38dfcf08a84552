"""Photos and image files through the emulator: answers, stored predictions, /top5, bad files, concurrency."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from bot.answers import MAX_DOWNLOAD_BYTES
from bot.i18n import text
from tests.emulator import group_chat, make_user
from tests.fixtures.bot import FLOWERS5_CLASSES, BotHarness

pytestmark = pytest.mark.photos

ANSWER_LINE = re.compile(r"^(?P<rank>\d+)\. (?P<name>.+) — (?P<percent>\d{1,3}\.\d)%$")
ALICE = make_user(2001, "Alice", language_code="en")
BOB = make_user(2002, "Bob", language_code="en-GB")


def parse_answer(answer: str) -> list[tuple[str, float]]:
    """Return (name, percent) per species line of an answer; fail on any other line before the blank line.

    The paragraph after the blank line says how sure the answer is (bot/honesty.py).
    """
    parsed = []
    for line in answer.split("\n\n", 1)[0].splitlines():
        match = ANSWER_LINE.match(line)
        assert match is not None, f"not an answer line: {line!r} in {answer!r}"
        parsed.append((match["name"], float(match["percent"])))
    return parsed


def assert_ranked(lines: list[tuple[str, float]], count: int) -> None:
    assert len(lines) == count
    percents = [percent for _, percent in lines]
    assert percents == sorted(percents, reverse=True)
    assert all(0.0 <= percent <= 100.0 for percent in percents)
    assert all(name in FLOWERS5_CLASSES for name, _ in lines)
    assert len({name for name, _ in lines}) == count


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


async def test_photo_answer_and_stored_prediction(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator
    data = flowers5_val_photos[0].read_bytes()

    message = emulator.send_photo(ALICE, None, data)
    reply = await emulator.wait_for_reply(message)
    await flowerbot.wait_idle()

    assert emulator.replies_to(message) == [reply]
    assert len(emulator.sent_messages(ALICE["id"])) == 1
    assert_ranked(parse_answer(reply["text"]), 3)
    assert "typing" in emulator.chat_actions(ALICE["id"])
    # The largest photo size was downloaded, and nothing else.
    assert [call.params["file_id"] for call in emulator.calls_to("getFile")] == [message["photo"][-1]["file_id"]]

    row = await flowerbot.repository.get_prediction_by_message(ALICE["id"], message["message_id"])
    assert row is not None
    assert row.user_id == ALICE["id"]
    assert row.model_version == flowerbot.bundle.version
    assert row.image_sha256 == hashlib.sha256(data).hexdigest()
    assert row.reply_message_id == reply["message_id"]
    assert row.file_unique_id == message["photo"][-1]["file_unique_id"]
    assert row.k == 3
    assert [entry["class_id"] for entry in row.top_k] == [name for name, _ in parse_answer(reply["text"])]
    assert row.latency_ms > 0
    saved = Path(row.image_path)
    assert saved.is_file()
    assert saved.is_relative_to(flowerbot.settings.photos_dir.resolve())
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == row.image_sha256


async def test_top5_as_caption(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator

    message = emulator.send_photo(ALICE, None, flowers5_val_photos[1].read_bytes(), caption="/top5")
    reply = await emulator.wait_for_reply(message)

    assert_ranked(parse_answer(reply["text"]), 5)
    row = await flowerbot.repository.get_prediction_by_message(ALICE["id"], message["message_id"])
    assert row is not None
    assert row.k == 5


async def test_top5_reply_to_photo(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator
    photo = emulator.send_photo(ALICE, None, flowers5_val_photos[2].read_bytes())
    answer = await emulator.wait_for_reply(photo)

    command = emulator.send_command(ALICE, None, "top5", reply_to=photo)
    top5 = await emulator.wait_for_reply(command)
    # Replying to the bot's answer works too.
    command_on_answer = emulator.send_command(ALICE, None, "top5", reply_to=answer)
    top5_again = await emulator.wait_for_reply(command_on_answer)
    await flowerbot.wait_idle()

    three = parse_answer(answer["text"])
    five = parse_answer(top5["text"])
    assert_ranked(five, 5)
    assert [name for name, _ in five[:3]] == [name for name, _ in three]
    assert parse_answer(top5_again["text"]) == five
    # The stored image was classified again; no second prediction was stored for the photo.
    latest = await flowerbot.repository.latest_prediction(ALICE["id"], ALICE["id"])
    assert latest is not None
    assert latest.message_id == photo["message_id"]
    assert len(emulator.calls_to("getFile")) == 1


async def test_top5_reply_to_unclassified_photo(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    """A photo in a group that the bot never answered (as with privacy mode) is classified on /top5."""
    emulator = flowerbot.emulator
    group = group_chat(-1002001)
    data = flowers5_val_photos[3].read_bytes()
    photo = emulator.send_photo(BOB, group, data, deliver=False)

    command = emulator.send_command(ALICE, group, "top5", reply_to=photo)
    reply = await emulator.wait_for_reply(command)
    await flowerbot.wait_idle()

    assert_ranked(parse_answer(reply["text"]), 5)
    row = await flowerbot.repository.get_prediction_by_message(group["id"], photo["message_id"])
    assert row is not None
    assert row.user_id == BOB["id"]
    assert row.reply_message_id == reply["message_id"]


async def test_top5_alone_uses_last_photo(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator

    nothing_yet = emulator.send_command(ALICE, None, "top5")
    no_photo = await emulator.wait_for_reply(nothing_yet)
    assert no_photo["text"] == text("top5.no_photo", "en")

    first = emulator.send_photo(ALICE, None, flowers5_val_photos[4].read_bytes())
    await emulator.wait_for_reply(first)
    # Choose a second photo whose answer differs from the first one's, so the check can tell them apart.
    first_answer = parse_answer(emulator.replies_to(first)[0]["text"])
    second_answer = first_answer
    for candidate in flowers5_val_photos[-8:]:
        second = emulator.send_photo(ALICE, None, candidate.read_bytes())
        second_answer = parse_answer((await emulator.wait_for_reply(second))["text"])
        if second_answer != first_answer:
            break
    assert second_answer != first_answer, "every photo got the same answer; the model ignores its input"

    command = emulator.send_command(ALICE, None, "top5")
    five = parse_answer((await emulator.wait_for_reply(command))["text"])

    assert_ranked(five, 5)
    assert five[:3] == second_answer


async def test_png_with_transparency_is_classified(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator
    with Image.open(flowers5_val_photos[5]) as photo:
        rgba = photo.convert("RGBA")
    # A transparent frame around the flower, as a cut-out would have.
    alpha = Image.new("L", rgba.size, 0)
    alpha.paste(255, (20, 20, rgba.width - 20, rgba.height - 20))
    rgba.putalpha(alpha)
    data = encode(rgba, "PNG")

    message = emulator.send_document(ALICE, None, data, "cut-out.png", "image/png")
    reply = await emulator.wait_for_reply(message)

    assert_ranked(parse_answer(reply["text"]), 3)
    row = await flowerbot.repository.get_prediction_by_message(ALICE["id"], message["message_id"])
    assert row is not None
    assert row.image_path.endswith(".png")
    assert row.image_sha256 == hashlib.sha256(data).hexdigest()


async def test_exif_rotation_matches_rotation_by_hand(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator
    service = flowerbot.context.service

    # Find a photo whose ranking changes when it is rotated, so that ignoring EXIF would fail the test.
    for path in flowers5_val_photos[::7]:
        with Image.open(path) as photo:
            stored_pixels = photo.convert("RGB")
        upright = stored_pixels.transpose(Image.Transpose.ROTATE_270)
        unrotated = await service.classify(encode(stored_pixels, "JPEG", quality=95), 3)
        rotated = await service.classify(encode(upright, "JPEG", quality=95), 3)
        if unrotated.best.class_id != rotated.best.class_id:
            break
    else:
        pytest.fail("no sampled photo changes its top-1 when rotated; cannot tell whether EXIF is applied")

    # EXIF orientation 6: the stored pixels must be turned 90 degrees clockwise for display.
    exif = Image.Exif()
    exif[0x0112] = 6
    with_exif = encode(stored_pixels, "JPEG", quality=95, exif=exif.tobytes())
    by_hand = encode(upright, "JPEG", quality=95)

    exif_message = emulator.send_document(ALICE, None, with_exif, "IMG_0001.JPG", "image/jpeg")
    exif_answer = parse_answer((await emulator.wait_for_reply(exif_message))["text"])
    hand_message = emulator.send_document(ALICE, None, by_hand, "rotated.jpg", "image/jpeg")
    hand_answer = parse_answer((await emulator.wait_for_reply(hand_message))["text"])

    assert exif_answer[0][0] == hand_answer[0][0]
    assert exif_answer[0][0] == rotated.best.class_id
    assert exif_answer[0][0] != unrotated.best.class_id


async def test_pdf_and_empty_file_get_messages(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"

    pdf_message = emulator.send_document(ALICE, None, pdf, "leaflet.pdf", "application/pdf")
    pdf_reply = await emulator.wait_for_reply(pdf_message)
    empty_message = emulator.send_document(ALICE, None, b"", "flower.jpg", "image/jpeg")
    empty_reply = await emulator.wait_for_reply(empty_message)
    await flowerbot.wait_idle()

    assert pdf_reply["text"] == text("photo.not_image", "en")
    assert empty_reply["text"] == text("photo.empty", "en")
    assert "reply_markup" not in pdf_reply
    assert await flowerbot.repository.latest_prediction(ALICE["id"]) is None
    photos_dir = flowerbot.settings.photos_dir
    assert not photos_dir.exists() or not any(path.is_file() for path in photos_dir.rglob("*"))

    # The bot keeps working.
    photo = emulator.send_photo(ALICE, None, flowers5_val_photos[6].read_bytes())
    assert_ranked(parse_answer((await emulator.wait_for_reply(photo))["text"]), 3)


async def test_file_over_download_limit(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator

    message = emulator.send_document(
        ALICE, None, b"\xff\xd8\xff", "huge.jpg", "image/jpeg", declared_size=MAX_DOWNLOAD_BYTES + 5 * 1024 * 1024
    )
    reply = await emulator.wait_for_reply(message)

    assert reply["text"] == text("photo.too_big", "en", size_mb="25.0")
    assert emulator.calls_to("getFile") == []


async def test_second_person_not_held_by_first(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator
    first_photo = flowers5_val_photos[0].read_bytes()
    second_photo = flowers5_val_photos[-1].read_bytes()
    gate = flowerbot.hold_inference(first_photo)

    first = emulator.send_photo(ALICE, None, first_photo)
    await gate.wait_entered()
    second = emulator.send_photo(BOB, None, second_photo)
    second_reply = await emulator.wait_for_reply(second)

    # Alice's inference is still held while Bob has his answer.
    assert gate.blocking
    assert emulator.replies_to(first) == []
    assert_ranked(parse_answer(second_reply["text"]), 3)

    gate.release()
    first_reply = await emulator.wait_for_reply(first)
    assert_ranked(parse_answer(first_reply["text"]), 3)
    sent = emulator.sent_messages()
    assert sent.index(second_reply) < sent.index(first_reply)

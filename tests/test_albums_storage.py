"""Every photo of an album through the emulator: saved with a row each, deleted by /forget, used by retraining.

Photos are noise JPEGs made by the test, so the random-init model's answer is
arbitrary; tests read the stored top-k instead of assuming it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from bot.callbacks import Action
from bot.i18n import text
from storage.models import Prediction
from tests.emulator import make_user
from tests.fixtures.bot import FLOWERS5_CLASSES, BotHarness
from tests.fixtures.honesty import TEST_ALBUM_QUIET_S
from tests.test_feedback import Chat, button, class_index, eventually, forget_button, noise_jpeg
from training.retrain import split_corrections

JSON = dict[str, Any]

ALICE = make_user(5301, "Alice", language_code="en")
BOB = make_user(5302, "Bob", language_code="en")


@pytest.fixture
async def album_bot(bot_harness: BotHarness) -> BotHarness:
    await bot_harness.start(album_quiet_s=TEST_ALBUM_QUIET_S)
    return bot_harness


async def send_album(bot: BotHarness, user: JSON, images: list[bytes]) -> tuple[list[JSON], JSON, Prediction]:
    """Send an album; return its messages, the bot's answer and the stored prediction once its answer id is stored."""
    messages = bot.emulator.send_album(user, None, images)
    answer = await bot.emulator.wait_for_reply(messages[0])

    async def prediction_with_reply() -> Prediction | None:
        row = await bot.repository.get_prediction_by_message(user["id"], messages[0]["message_id"])
        return row if row is not None and row.reply_message_id is not None else None

    return messages, answer, await eventually(prediction_with_reply)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_album_photos_stored_in_order(album_bot: BotHarness) -> None:
    images = [noise_jpeg(seed) for seed in (301, 302, 303)]

    messages, answer, prediction = await send_album(album_bot, ALICE, images)
    await album_bot.wait_idle()

    assert answer["text"].splitlines()[0] == text("honesty.album", "en", count=3)
    rows = await album_bot.repository.prediction_images(prediction.id)
    assert [row.position for row in rows] == [0, 1, 2]
    assert [row.image_sha256 for row in rows] == [sha256(data) for data in images]
    assert [row.file_unique_id for row in rows] == [message["photo"][-1]["file_unique_id"] for message in messages]
    store = album_bot.context.images
    assert [store.read(row.image_path) for row in rows] == images
    assert (prediction.image_path, prediction.image_sha256) == (rows[0].image_path, rows[0].image_sha256)


async def test_redelivered_album_adds_no_photo_rows(album_bot: BotHarness) -> None:
    messages, _answer, prediction = await send_album(album_bot, ALICE, [noise_jpeg(seed) for seed in (311, 312)])
    await album_bot.wait_idle()

    for message in messages:
        album_bot.emulator.queue_update({"message": message})
    await album_bot.wait_idle()

    assert len(album_bot.emulator.sent_messages(ALICE["id"])) == 1
    assert [row.position for row in await album_bot.repository.prediction_images(prediction.id)] == [0, 1]


async def test_forget_deletes_every_album_photo(album_bot: BotHarness) -> None:
    alice = Chat(album_bot, ALICE)
    shared = noise_jpeg(320)
    _messages, _answer, album = await send_album(album_bot, ALICE, [noise_jpeg(seed) for seed in (321, 322, 323)])
    _answer, alice_shared = await alice.photo(0, image=shared)
    # Bob sends the same photo as the second photo of his album, so only prediction_images references it.
    _messages, _answer, bob_album = await send_album(album_bot, BOB, [noise_jpeg(324), shared])
    await album_bot.wait_idle()
    store = album_bot.context.images
    album_paths = [row.image_path for row in await album_bot.repository.prediction_images(album.id)]
    bob_paths = [row.image_path for row in await album_bot.repository.prediction_images(bob_album.id)]
    assert len(album_paths) == 3
    assert all(store.exists(path) for path in album_paths)
    assert bob_paths[1] == alice_shared.image_path

    question = await alice.command("forget")
    notice = await alice.press(question, forget_button(album_bot, question, Action.FORGET_CONFIRM))

    assert notice == text("forget.done", "en")
    await eventually(lambda: not any(store.exists(path) for path in album_paths))
    assert await album_bot.repository.prediction_images(album.id) == []
    # The photo Bob sent too stays, with Bob's album.
    assert store.exists(alice_shared.image_path)
    assert all(store.exists(path) for path in bob_paths)
    assert [row.image_path for row in await album_bot.repository.prediction_images(bob_album.id)] == bob_paths


async def test_album_correction_trains_on_every_photo(album_bot: BotHarness) -> None:
    alice = Chat(album_bot, ALICE)
    images = [noise_jpeg(seed) for seed in (331, 332, 333)]
    _messages, answer, prediction = await send_album(album_bot, ALICE, images)
    label = prediction.top_k[1]["class_id"]

    notice = await alice.press(answer, button(album_bot, answer, prediction, Action.PICK, class_index(label)))

    assert notice == text("feedback.notice.recorded", "en")
    examples = await album_bot.repository.labelled_examples()
    assert [(example.prediction_id, example.label) for example in examples] == [(prediction.id, label)] * 3
    assert [example.image_sha256 for example in examples] == [sha256(data) for data in images]
    # The photos as the retrain supervisor hands them to the job, split as the job splits them.
    store = album_bot.context.images
    job_examples = [
        {"path": str(store.resolve(example.image_path)), "label": example.label, "image_sha256": example.image_sha256, "prediction_id": example.prediction_id}
        for example in examples
    ]
    data = split_corrections(job_examples, [], FLOWERS5_CLASSES, fraction=0.2, seed=0)
    used = data.train + data.holdout
    assert sorted(entry["path"] for entry in used) == sorted(entry["path"] for entry in job_examples)
    assert {entry["label"] for entry in used} == {label}
    assert data.duplicates == 0

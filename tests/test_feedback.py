"""Corrections through the emulator: buttons under answers, typed names, /history, /forget and /stats.

Each test drives the real bot (`flowerbot` fixture) as people would, then checks the
database through the bot's repository. Photos are noise images made by the test, so the
random-init model's answer is arbitrary; tests read the stored top-k instead of assuming it.
"""

from __future__ import annotations

import asyncio
import copy
import io
import logging
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.callbacks import FEEDBACK_ACTIONS, Action, InvalidCallback, get_signer, prediction_binding
from bot.handlers.feedback import PENDING_SPECIES_NAME, STATUS_MARK
from bot.i18n import text
from bot.name_search import MAX_QUERY_CHARS
from storage.models import Prediction
from tests.emulator import group_chat, inline_buttons, make_user, message_text, private_chat
from tests.fixtures.bot import FLOWERS5_CLASSES, BotHarness

JSON = dict[str, Any]

ALICE = make_user(1001, "Alice")
BOB = make_user(1002, "Bob")
ADMIN = make_user(4242, "Admin")
GROUP = group_chat(-1001234567890)


def noise_jpeg(seed: int) -> bytes:
    """Return a small JPEG of random pixels, different for every seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def notice(key: str) -> str:
    return text(key, "en")


class Chat:
    """One person's view of a chat with the bot: send things, press buttons, read notices."""

    def __init__(self, bot: BotHarness, user: JSON, chat: JSON | None = None) -> None:
        self.bot = bot
        self.user = user
        self.chat = chat or private_chat(user)

    @property
    def chat_id(self) -> int:
        return self.chat["id"]

    async def photo(self, seed: int, *, image: bytes | None = None, caption: str | None = None) -> tuple[JSON, Prediction]:
        """Send a photo; return the bot's answer as sent and the stored prediction once its answer id is stored."""
        photo = self.bot.emulator.send_photo(self.user, self.chat, image or noise_jpeg(seed), caption=caption)
        answer = await self.bot.emulator.wait_for_reply(photo)

        async def prediction_with_reply() -> Prediction | None:
            row = await self.bot.repository.get_prediction_by_message(self.chat_id, photo["message_id"])
            return row if row is not None and row.reply_message_id is not None else None

        prediction = await eventually(prediction_with_reply)
        assert prediction.reply_message_id == answer["message_id"]
        return copy.deepcopy(answer), prediction

    def current(self, message: JSON) -> JSON:
        """Return the message as it is now, after the bot's edits."""
        current = self.bot.emulator.message(self.chat_id, message["message_id"])
        assert current is not None
        return current

    async def press(self, message: JSON, data: str, *, require_button: bool = True) -> str | None:
        """Press a button (or send made-up data) and return the notice the bot answered with."""
        query = self.bot.emulator.press_button(self.user, self.chat, message, data, require_button=require_button)
        answer = await self.bot.emulator.wait_for_callback_answer(query)
        return answer.get("text")

    async def send_text(self, content: str) -> JSON:
        """Send a text and return the bot's reply to it."""
        sent = self.bot.emulator.send_text(self.user, self.chat, content)
        return copy.deepcopy(await self.bot.emulator.wait_for_reply(sent))

    async def command(self, command: str, args: str = "") -> JSON:
        """Send a command and return the bot's reply to it."""
        sent = self.bot.emulator.send_command(self.user, self.chat, command, args)
        return copy.deepcopy(await self.bot.emulator.wait_for_reply(sent))


async def eventually(check, *, attempts: int = 400):
    """Poll a check (a function or a coroutine function) until it returns something truthy.

    The bot writes some rows and deletes files after it replies, so tests wait for them.
    """
    for _ in range(attempts):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.025)
    raise AssertionError(f"{check.__name__} never held")


def button(bot: BotHarness, message: JSON, prediction: Prediction, action: Action, argument: int | None = None) -> str:
    """Return the callback data of the message's button for `action` (and `argument`) on `prediction`."""
    signer = get_signer(bot.context)
    binding = prediction_binding(prediction)
    for entry in inline_buttons(message):
        data = entry.get("callback_data")
        if not data or data[0] != action.value:
            continue
        decoded = signer.decode(data, binding=binding)
        if argument is None or decoded.argument == argument:
            return data
    texts = [entry["text"] for entry in inline_buttons(message)]
    raise AssertionError(f"no {action.name} button (argument {argument}) in {texts}")


def feedback_texts(message: JSON) -> list[str]:
    """Return the texts of the message's feedback buttons, leaving out rows other features add."""
    return [
        entry["text"]
        for entry in inline_buttons(message)
        if (entry.get("callback_data") or "")[:1] in {action.value for action in FEEDBACK_ACTIONS}
    ]


def forget_button(bot: BotHarness, message: JSON, action: Action) -> str:
    """Return the callback data of a /forget question's button for `action`."""
    signer = get_signer(bot.context)
    for entry in inline_buttons(message):
        if signer.decode(entry["callback_data"]).action is action:
            return entry["callback_data"]
    raise AssertionError(f"no {action.name} button in {[entry['text'] for entry in inline_buttons(message)]}")


def class_index(class_id: str) -> int:
    return FLOWERS5_CLASSES.index(class_id)


async def corrections(bot: BotHarness, prediction: Prediction) -> list[tuple[str | None, str, bool]]:
    rows = await bot.repository.correction_history(prediction.id)
    return [(row.label, row.kind, row.is_current) for row in rows]


# -- buttons under the answer -------------------------------------------------


async def test_answer_has_feedback_buttons(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(1)
    texts = [entry["text"] for entry in inline_buttons(answer)]
    listed = [entry["class_id"] for entry in prediction.top_k]
    assert texts[: len(listed)] == [f"✓ {class_id}" for class_id in listed]
    assert texts[len(listed) : len(listed) + 2] == ["None of these", "Not a flower"]
    for class_id in listed:
        assert button(flowerbot, answer, prediction, Action.PICK, class_index(class_id))


async def test_confirm_records_top1(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(2)
    top1 = prediction.top1_class_id

    assert await alice.press(answer, button(flowerbot, answer, prediction, Action.PICK, class_index(top1))) == notice(
        "feedback.notice.recorded"
    )
    assert await corrections(flowerbot, prediction) == [(top1, "confirmed", True)]

    edited = await flowerbot.emulator.wait_for(lambda: STATUS_MARK in message_text(alice.current(answer)) and alice.current(answer))
    assert message_text(edited).endswith(f"{STATUS_MARK}Recorded: {top1} ✓")
    assert message_text(edited).startswith(message_text(answer))
    assert feedback_texts(edited) == ["Change"]


async def test_top5_reply_follows_recorded_correction(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    photo = flowerbot.emulator.send_photo(alice.user, alice.chat, noise_jpeg(44))
    answer = copy.deepcopy(await flowerbot.emulator.wait_for_reply(photo))
    prediction = await eventually(lambda: flowerbot.repository.get_prediction_by_message(alice.chat_id, photo["message_id"]))
    top1 = prediction.top1_class_id
    await alice.press(answer, button(flowerbot, answer, prediction, Action.PICK, class_index(top1)))
    await flowerbot.emulator.wait_for(lambda: STATUS_MARK in message_text(alice.current(answer)))

    # /top5 as a reply to the confirmed photo shows what was recorded, with "Change".
    command = flowerbot.emulator.send_command(alice.user, alice.chat, "top5", reply_to=photo)
    top5 = copy.deepcopy(await flowerbot.emulator.wait_for_reply(command))
    assert message_text(top5).endswith(f"{STATUS_MARK}Recorded: {top1} ✓")
    assert feedback_texts(top5) == ["Change"]

    # A new pick under the /top5 reply updates the first answer too.
    await alice.press(top5, button(flowerbot, top5, prediction, Action.CHANGE))
    choices = await flowerbot.emulator.wait_for(lambda: len(feedback_texts(alice.current(top5))) > 1 and alice.current(top5))
    other = next(class_id for class_id in FLOWERS5_CLASSES if f"✓ {class_id}" in feedback_texts(choices) and class_id != top1)
    assert await alice.press(choices, button(flowerbot, choices, prediction, Action.PICK, class_index(other))) == notice(
        "feedback.notice.recorded"
    )
    expected = f"Recorded: {other} ✓ (corrected)"
    await flowerbot.emulator.wait_for(lambda: message_text(alice.current(answer)).endswith(expected))
    assert message_text(alice.current(top5)).endswith(expected)


async def test_correct_by_button(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(3)
    second = prediction.top_k[1]["class_id"]

    assert await alice.press(answer, button(flowerbot, answer, prediction, Action.PICK, class_index(second))) == notice(
        "feedback.notice.recorded"
    )
    assert await corrections(flowerbot, prediction) == [(second, "corrected", True)]
    edited = await flowerbot.emulator.wait_for(lambda: STATUS_MARK in message_text(alice.current(answer)) and alice.current(answer))
    assert message_text(edited).endswith(f"Recorded: {second} ✓ (corrected)")


async def test_not_a_flower(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(4)

    assert await alice.press(answer, button(flowerbot, answer, prediction, Action.NOT_FLOWER)) == notice("feedback.notice.recorded")
    assert await corrections(flowerbot, prediction) == [(None, "not_flower", True)]


async def test_none_of_these_offers_rest(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(5)
    listed = {entry["class_id"] for entry in prediction.top_k}

    assert await alice.press(answer, button(flowerbot, answer, prediction, Action.NONE_OF_THESE, 0)) is None
    shown = await flowerbot.emulator.wait_for(
        lambda: any(entry["text"] == "Type the name" for entry in inline_buttons(alice.current(answer))) and alice.current(answer)
    )
    offered = [FLOWERS5_CLASSES[index] for index in range(len(FLOWERS5_CLASSES)) if any(
        entry.get("callback_data", "")[:1] == Action.PICK.value and entry["text"].startswith(f"✓ {FLOWERS5_CLASSES[index]} (")
        for entry in inline_buttons(shown)
    )]
    # Every species the answer did not list is offered, and none that it did.
    assert sorted(offered) == sorted(set(FLOWERS5_CLASSES) - listed)
    # Nothing is recorded by looking at more candidates.
    assert await corrections(flowerbot, prediction) == []

    # Picking a further candidate records it as a correction.
    other = offered[0]
    assert await alice.press(shown, button(flowerbot, shown, prediction, Action.PICK, class_index(other))) == notice(
        "feedback.notice.recorded"
    )
    assert await corrections(flowerbot, prediction) == [(other, "corrected", True)]


async def test_candidates_page_offers_unknown_species(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(40)

    await alice.press(answer, button(flowerbot, answer, prediction, Action.NONE_OF_THESE, 0))
    shown = await flowerbot.emulator.wait_for(
        lambda: any(entry["text"] == "Type the name" for entry in inline_buttons(alice.current(answer))) and alice.current(answer)
    )
    texts = feedback_texts(shown)
    # Two further candidates of five classes, then the rest of the page.
    assert len(texts) == 5
    assert texts[2:] == ["Not in this list", "Type the name", "« Back"]

    assert await alice.press(shown, button(flowerbot, shown, prediction, Action.UNKNOWN_SPECIES)) == notice(
        "feedback.notice.recorded"
    )
    assert await corrections(flowerbot, prediction) == [(None, "unknown_species", True)]
    edited = await flowerbot.emulator.wait_for(lambda: STATUS_MARK in message_text(alice.current(answer)) and alice.current(answer))
    assert message_text(edited).endswith(f"{STATUS_MARK}{text('feedback.recorded.unknown_species', 'en')}")
    assert feedback_texts(edited) == ["Change"]


async def test_every_class_listed_has_no_dead_end(flowerbot: BotHarness) -> None:
    """With /top5 on a five-class model the answer lists every class; "None of these" still opens the page."""
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(41, caption="/top5")
    assert sorted(entry["class_id"] for entry in prediction.top_k) == sorted(FLOWERS5_CLASSES)

    assert await alice.press(answer, button(flowerbot, answer, prediction, Action.NONE_OF_THESE, 0)) == notice(
        "feedback.notice.all_listed"
    )
    shown = await flowerbot.emulator.wait_for(
        lambda: any(entry["text"] == "Type the name" for entry in inline_buttons(alice.current(answer))) and alice.current(answer)
    )
    assert feedback_texts(shown) == ["Not in this list", "Type the name", "« Back"]
    assert await corrections(flowerbot, prediction) == []

    assert await alice.press(shown, button(flowerbot, shown, prediction, Action.UNKNOWN_SPECIES)) == notice(
        "feedback.notice.recorded"
    )
    assert await corrections(flowerbot, prediction) == [(None, "unknown_species", True)]
    recorded = await flowerbot.emulator.wait_for(
        lambda: feedback_texts(alice.current(answer)) == ["Change"] and alice.current(answer)
    )
    assert message_text(recorded).endswith(f"{STATUS_MARK}Recorded: a species not in my list ✓")

    # "Change" opens the choices again, and a species picked there replaces the record.
    assert await alice.press(recorded, button(flowerbot, recorded, prediction, Action.CHANGE)) is None
    choices = await flowerbot.emulator.wait_for(
        lambda: len(feedback_texts(alice.current(answer))) > 1 and alice.current(answer)
    )
    top1 = prediction.top1_class_id
    assert await alice.press(choices, button(flowerbot, choices, prediction, Action.PICK, class_index(top1))) == notice(
        "feedback.notice.recorded"
    )
    assert await corrections(flowerbot, prediction) == [(None, "unknown_species", False), (top1, "confirmed", True)]
    edited = await flowerbot.emulator.wait_for(
        lambda: message_text(alice.current(answer)).endswith(f"Recorded: {top1} ✓") and alice.current(answer)
    )
    assert message_text(edited).count(STATUS_MARK) == 1


async def test_back_restores_choices(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(6)
    original = inline_buttons(answer)

    await alice.press(answer, button(flowerbot, answer, prediction, Action.NONE_OF_THESE, 0))
    shown = await flowerbot.emulator.wait_for(lambda: inline_buttons(alice.current(answer)) != original and alice.current(answer))
    assert await alice.press(shown, button(flowerbot, shown, prediction, Action.BACK)) is None
    await flowerbot.emulator.wait_for(lambda: inline_buttons(alice.current(answer)) == original)


def about_texts(message: JSON) -> list[str]:
    """Return the texts of the message's "About <species>" buttons."""
    return [entry["text"] for entry in inline_buttons(message) if (entry.get("callback_data") or "")[:1] == Action.SPECIES_CARD.value]


def about(class_id: str) -> str:
    return text("reference.button.about", "en", name=class_id)


async def test_about_button_follows_correction(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(46)
    top1 = prediction.top1_class_id
    second = prediction.top_k[1]["class_id"]
    assert about_texts(answer) == [about(top1)]

    await alice.press(answer, button(flowerbot, answer, prediction, Action.PICK, class_index(second)))
    recorded = await flowerbot.emulator.wait_for(
        lambda: feedback_texts(alice.current(answer)) == ["Change"] and alice.current(answer)
    )
    assert about_texts(recorded) == [about(second)]
    assert button(flowerbot, recorded, prediction, Action.SPECIES_CARD, class_index(second))

    # The choices opened by "Change" still name the recorded species.
    await alice.press(recorded, button(flowerbot, recorded, prediction, Action.CHANGE))
    choices = await flowerbot.emulator.wait_for(lambda: len(feedback_texts(alice.current(answer))) > 1 and alice.current(answer))
    assert about_texts(choices) == [about(second)]

    # "Not a flower" has no species card.
    await alice.press(choices, button(flowerbot, choices, prediction, Action.NOT_FLOWER))
    not_flower = await flowerbot.emulator.wait_for(
        lambda: feedback_texts(alice.current(answer)) == ["Change"] and alice.current(answer)
    )
    assert message_text(not_flower).endswith(text("feedback.recorded.not_flower", "en"))
    assert about_texts(not_flower) == []


# -- changing and tapping twice -----------------------------------------------


async def test_change_keeps_history(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(7)
    top1 = prediction.top1_class_id
    second = prediction.top_k[1]["class_id"]

    await alice.press(answer, button(flowerbot, answer, prediction, Action.PICK, class_index(top1)))
    recorded = await flowerbot.emulator.wait_for(
        lambda: feedback_texts(alice.current(answer)) == ["Change"] and alice.current(answer)
    )
    assert await alice.press(recorded, button(flowerbot, recorded, prediction, Action.CHANGE)) is None
    choices = await flowerbot.emulator.wait_for(
        lambda: len(feedback_texts(alice.current(answer))) > 1 and alice.current(answer)
    )
    # The status stays while the choices are open again.
    assert message_text(choices).endswith(f"Recorded: {top1} ✓")

    assert await alice.press(choices, button(flowerbot, choices, prediction, Action.PICK, class_index(second))) == notice(
        "feedback.notice.recorded"
    )
    assert await corrections(flowerbot, prediction) == [(top1, "confirmed", False), (second, "corrected", True)]
    current = await flowerbot.repository.current_correction(prediction.id)
    assert current is not None
    assert current.label == second
    edited = await flowerbot.emulator.wait_for(lambda: "(corrected)" in message_text(alice.current(answer)) and alice.current(answer))
    # One status paragraph, replaced rather than appended.
    assert message_text(edited).count(STATUS_MARK) == 1


async def test_double_tap_records_once(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(8)
    data = button(flowerbot, answer, prediction, Action.PICK, class_index(prediction.top1_class_id))

    # Both presses are queued before the bot handles either, as with a fast double tap.
    first = flowerbot.emulator.press_button(alice.user, alice.chat, answer, data)
    second = flowerbot.emulator.press_button(alice.user, alice.chat, answer, data)
    notices = sorted(
        [
            (await flowerbot.emulator.wait_for_callback_answer(first)).get("text"),
            (await flowerbot.emulator.wait_for_callback_answer(second)).get("text"),
        ]
    )
    assert notices == sorted([notice("feedback.notice.recorded"), notice("feedback.notice.already_recorded")])
    assert await corrections(flowerbot, prediction) == [(prediction.top1_class_id, "confirmed", True)]

    # A third tap later, from a client that still shows the old keyboard, is also only a notice.
    assert await alice.press(answer, data, require_button=False) == notice("feedback.notice.already_recorded")
    assert await corrections(flowerbot, prediction) == [(prediction.top1_class_id, "confirmed", True)]
    # Edits that would change nothing are skipped or end as "not modified", never another error.
    for call in flowerbot.emulator.calls:
        if call.method.lower().startswith("edit") and not call.ok:
            assert "not modified" in call.response.get("description", ""), call.response


# -- forged and foreign presses -----------------------------------------------


async def test_forged_signature_changes_nothing(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(9)
    data = button(flowerbot, answer, prediction, Action.PICK, class_index(prediction.top1_class_id))
    flipped = data[:-1] + ("A" if data[-1] != "A" else "B")

    assert await alice.press(answer, flipped, require_button=False) == notice("feedback.notice.invalid_button")
    assert await corrections(flowerbot, prediction) == []


async def test_altered_prediction_id_changes_nothing(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    first_answer, first = await alice.photo(10)
    _second_answer, second = await alice.photo(11)
    data = button(flowerbot, first_answer, first, Action.NOT_FLOWER)
    # Same action, argument and signature, but the id of Alice's other prediction.
    altered = f"{Action.NOT_FLOWER.value}{np.base_repr(second.id, 36).lower()}.{data.split('.', 1)[1]}"
    assert altered != data

    assert await alice.press(first_answer, altered, require_button=False) == notice("feedback.notice.invalid_button")
    assert await corrections(flowerbot, first) == []
    assert await corrections(flowerbot, second) == []


async def test_data_from_other_chat_changes_nothing(flowerbot: BotHarness) -> None:
    in_private = Chat(flowerbot, ALICE)
    in_group = Chat(flowerbot, ALICE, GROUP)
    private_answer, private_prediction = await in_private.photo(23)
    group_answer, group_prediction = await in_group.photo(24)
    # Correctly signed data of the private answer, sent from under the group answer.
    data = button(flowerbot, private_answer, private_prediction, Action.NOT_FLOWER)

    assert await in_group.press(group_answer, data, require_button=False) == notice("feedback.notice.invalid_button")
    assert await corrections(flowerbot, private_prediction) == []
    assert await corrections(flowerbot, group_prediction) == []
    assert message_text(in_group.current(group_answer)) == message_text(group_answer)
    assert inline_buttons(in_group.current(group_answer)) == inline_buttons(group_answer)


async def test_invalid_label_index_rejected(flowerbot: BotHarness) -> None:
    """Even correctly signed data is checked: a label index past the label set records nothing."""
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(12)
    data = get_signer(flowerbot.context).encode(
        Action.PICK, prediction.id, len(FLOWERS5_CLASSES), binding=prediction_binding(prediction)
    )
    assert await alice.press(answer, data, require_button=False) == notice("feedback.notice.invalid_button")
    assert await corrections(flowerbot, prediction) == []


async def test_garbage_callback_gets_notice(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(13)
    for data in ["x", "p1.1.short", "hello world", "p" + "9" * 20 + ".0.AAAAAAAAAAA"]:
        reply = await alice.press(answer, data, require_button=False)
        assert reply in (notice("feedback.notice.invalid_button"), notice("feedback.notice.prediction_gone")), data
    assert await corrections(flowerbot, prediction) == []


async def test_empty_callback_gets_notice(flowerbot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    # python-telegram-bot offers empty data to every pattern handler, the language buttons' one included.
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(22)
    with caplog.at_level(logging.ERROR):
        reply = await alice.press(answer, "", require_button=False)
        await flowerbot.wait_idle()

    assert reply == notice("feedback.notice.invalid_button")
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []
    assert await corrections(flowerbot, prediction) == []


async def test_other_person_in_group_rejected(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE, GROUP)
    bob = Chat(flowerbot, BOB, GROUP)
    answer, prediction = await alice.photo(14)
    data = button(flowerbot, answer, prediction, Action.PICK, class_index(prediction.top1_class_id))

    assert await bob.press(answer, data) == notice("feedback.notice.only_sender")
    assert await bob.press(answer, button(flowerbot, answer, prediction, Action.NOT_FLOWER)) == notice("feedback.notice.only_sender")
    assert await corrections(flowerbot, prediction) == []
    # Bob's press left the answer as it was.
    assert inline_buttons(alice.current(answer)) == inline_buttons(answer)

    assert await alice.press(answer, data) == notice("feedback.notice.recorded")
    assert await corrections(flowerbot, prediction) == [(prediction.top1_class_id, "confirmed", True)]


# -- typed names --------------------------------------------------------------


async def _start_typing(flowerbot: BotHarness, alice: Chat, answer: JSON, prediction: Prediction) -> None:
    """Press "None of these", then "Type the name", and wait for the prompt."""
    await alice.press(answer, button(flowerbot, answer, prediction, Action.NONE_OF_THESE, 0))
    shown = await flowerbot.emulator.wait_for(
        lambda: any(entry["text"] == "Type the name" for entry in inline_buttons(alice.current(answer))) and alice.current(answer)
    )
    assert await alice.press(shown, button(flowerbot, shown, prediction, Action.TYPE_NAME)) == notice("feedback.notice.type_name")
    prompt = text("feedback.type_name.prompt", "en")
    await flowerbot.emulator.wait_for(lambda: any(message_text(sent) == prompt for sent in flowerbot.emulator.sent_messages(alice.chat_id)))


async def test_typed_name_with_typo(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(15)
    await _start_typing(flowerbot, alice, answer, prediction)
    pending = await flowerbot.repository.get_pending_input(ALICE["id"], alice.chat_id)
    assert pending is not None
    assert (pending.prediction_id, pending.kind) == (prediction.id, PENDING_SPECIES_NAME)

    matches = await alice.send_text("sunflowr")
    assert message_text(matches).startswith("Species matching “sunflowr”")
    assert [entry["text"] for entry in inline_buttons(matches)][0] == "✓ sunflowers"
    # Nothing is recorded until a match is picked.
    assert await corrections(flowerbot, prediction) == []

    assert await alice.press(matches, button(flowerbot, matches, prediction, Action.PICK, class_index("sunflowers"))) == notice(
        "feedback.notice.recorded"
    )
    expected_kind = "confirmed" if prediction.top1_class_id == "sunflowers" else "corrected"
    assert await corrections(flowerbot, prediction) == [("sunflowers", expected_kind, True)]
    assert await flowerbot.repository.get_pending_input(ALICE["id"], alice.chat_id) is None

    # The answer shows what was recorded, and the matches list turns into the status line.
    edited = await flowerbot.emulator.wait_for(lambda: STATUS_MARK in message_text(alice.current(answer)) and alice.current(answer))
    assert "Recorded: sunflowers ✓" in message_text(edited)
    assert feedback_texts(edited) == ["Change"]
    assert message_text(alice.current(matches)).startswith("Recorded: sunflowers ✓")

    # With nothing pending, text goes to the other handlers again and records nothing.
    flowerbot.emulator.send_text(alice.user, alice.chat, "roses")
    await flowerbot.wait_idle()
    assert await corrections(flowerbot, prediction) == [("sunflowers", expected_kind, True)]


async def test_typed_name_in_group(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE, GROUP)
    bob = Chat(flowerbot, BOB, GROUP)
    answer, prediction = await alice.photo(43)
    await _start_typing(flowerbot, alice, answer, prediction)

    # The prompt replies to Alice's photo with a selective ForceReply, so in a group with
    # privacy mode her reply reaches the bot and only her reply field opens.
    prompt_text = text("feedback.type_name.prompt", "en")
    prompt = next(sent for sent in flowerbot.emulator.sent_messages(GROUP["id"]) if message_text(sent) == prompt_text)
    assert prompt["reply_to_message"]["message_id"] == prediction.message_id
    # Telegram leaves a ForceReply out of the returned message, so the request shows it.
    request = next(call for call in flowerbot.emulator.calls_to("sendMessage") if call.params.get("text") == prompt_text)
    assert request.params["reply_markup"]["force_reply"] is True
    assert request.params["reply_markup"]["selective"] is True

    # Bob's text in the group is not taken as a name for Alice's photo.
    flowerbot.emulator.send_text(bob.user, bob.chat, "tulips")
    await flowerbot.wait_idle()
    assert await corrections(flowerbot, prediction) == []
    assert await flowerbot.repository.get_pending_input(BOB["id"], GROUP["id"]) is None

    # With privacy mode off, or with the bot an admin, the bot receives all of Alice's
    # messages too. One that does not reply to the bot is conversation, not the name.
    chatter = flowerbot.emulator.send_text(alice.user, alice.chat, "hi all")
    await flowerbot.wait_idle()
    assert flowerbot.emulator.replies_to(chatter) == []
    assert await flowerbot.repository.get_pending_input(ALICE["id"], GROUP["id"]) is not None

    sent = flowerbot.emulator.send_text(alice.user, alice.chat, "tulpis", reply_to=prompt)
    matches = copy.deepcopy(await flowerbot.emulator.wait_for_reply(sent))
    assert message_text(matches).startswith("Species matching “tulpis”")
    pick = button(flowerbot, matches, prediction, Action.PICK, class_index("tulips"))
    assert await bob.press(matches, pick) == notice("feedback.notice.only_sender")
    assert await alice.press(matches, pick) == notice("feedback.notice.recorded")
    assert [label for label, _kind, _current in await corrections(flowerbot, prediction)] == ["tulips"]
    assert await flowerbot.repository.get_pending_input(ALICE["id"], GROUP["id"]) is None


async def test_typed_name_too_long_offers_cancel(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(44)
    await _start_typing(flowerbot, alice, answer, prediction)

    reply = await alice.send_text("sunflower " * 11)
    assert message_text(reply) == text("feedback.type_name.too_long", "en", limit=MAX_QUERY_CHARS)
    assert [entry["text"] for entry in inline_buttons(reply)] == ["Cancel"]

    assert await alice.press(reply, button(flowerbot, reply, prediction, Action.CANCEL_TYPING)) == notice(
        "feedback.notice.typing_cancelled"
    )
    assert await flowerbot.repository.get_pending_input(ALICE["id"], alice.chat_id) is None
    await flowerbot.emulator.wait_for(lambda: message_text(alice.current(reply)) == text("feedback.type_name.cancelled", "en"))


@pytest.mark.parametrize("blank", ["   ", " - _ "], ids=["spaces", "separators"])
async def test_typed_name_blank_asks_again(flowerbot: BotHarness, blank: str) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(45)
    await _start_typing(flowerbot, alice, answer, prediction)

    reply = await alice.send_text(blank)
    assert message_text(reply) == text("feedback.type_name.empty", "en")
    assert [entry["text"] for entry in inline_buttons(reply)] == ["Cancel"]
    # Still waiting for the name.
    assert await flowerbot.repository.get_pending_input(ALICE["id"], alice.chat_id) is not None

    matches = await alice.send_text("tulips")
    assert message_text(matches).startswith("Species matching “tulips”")


async def test_typed_name_in_chinese(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(16)
    await _start_typing(flowerbot, alice, answer, prediction)

    matches = await alice.send_text("郁金香")
    assert await alice.press(matches, button(flowerbot, matches, prediction, Action.PICK, class_index("tulips"))) == notice(
        "feedback.notice.recorded"
    )
    assert [label for label, _kind, _current in await corrections(flowerbot, prediction)] == ["tulips"]


async def test_typed_name_without_match(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(17)
    await _start_typing(flowerbot, alice, answer, prediction)

    reply = await alice.send_text("qwertyuiop")
    assert message_text(reply) == text("feedback.type_name.no_match", "en", query="qwertyuiop")
    assert [entry["text"] for entry in inline_buttons(reply)] == ["Not in this list", "Cancel"]
    # Still waiting: the next text is taken as the name too.
    assert await flowerbot.repository.get_pending_input(ALICE["id"], alice.chat_id) is not None

    assert await alice.press(reply, button(flowerbot, reply, prediction, Action.CANCEL_TYPING)) == notice(
        "feedback.notice.typing_cancelled"
    )
    assert await flowerbot.repository.get_pending_input(ALICE["id"], alice.chat_id) is None
    assert await corrections(flowerbot, prediction) == []


async def test_unknown_species_after_no_match(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(42)
    await _start_typing(flowerbot, alice, answer, prediction)

    reply = await alice.send_text("edelweiss")
    assert message_text(reply) == text("feedback.type_name.no_match", "en", query="edelweiss")
    assert await alice.press(reply, button(flowerbot, reply, prediction, Action.UNKNOWN_SPECIES)) == notice(
        "feedback.notice.recorded"
    )

    assert await corrections(flowerbot, prediction) == [(None, "unknown_species", True)]
    assert await flowerbot.repository.get_pending_input(ALICE["id"], alice.chat_id) is None
    # The reply turns into the status line, and the answer shows it with "Change".
    status = text("feedback.recorded.unknown_species", "en")
    await flowerbot.emulator.wait_for(lambda: message_text(alice.current(reply)) == status)
    edited = await flowerbot.emulator.wait_for(lambda: STATUS_MARK in message_text(alice.current(answer)) and alice.current(answer))
    assert message_text(edited).endswith(f"{STATUS_MARK}{status}")
    assert feedback_texts(edited) == ["Change"]


async def test_new_photo_ends_typing_name(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(19)
    await _start_typing(flowerbot, alice, answer, prediction)

    await alice.photo(20)
    assert await flowerbot.repository.get_pending_input(ALICE["id"], alice.chat_id) is None

    # Text after the new photo is no longer taken as a name for the first one.
    flowerbot.emulator.send_text(alice.user, alice.chat, "roses")
    await flowerbot.wait_idle()
    assert await corrections(flowerbot, prediction) == []
    assert not any(message_text(sent).startswith("Species matching") for sent in flowerbot.emulator.sent_messages(alice.chat_id))


async def test_command_ends_typing_name(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(21)
    await _start_typing(flowerbot, alice, answer, prediction)

    command = flowerbot.emulator.send_command(alice.user, alice.chat, "help")
    await flowerbot.emulator.wait_for_response(command)
    await flowerbot.wait_idle()

    assert await flowerbot.repository.get_pending_input(ALICE["id"], alice.chat_id) is None


async def test_restart_while_typing_name(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(18)
    await _start_typing(flowerbot, alice, answer, prediction)

    await flowerbot.restart()

    matches = await alice.send_text("Dandelon")
    assert await alice.press(matches, button(flowerbot, matches, prediction, Action.PICK, class_index("dandelion"))) == notice(
        "feedback.notice.recorded"
    )
    expected_kind = "confirmed" if prediction.top1_class_id == "dandelion" else "corrected"
    assert await corrections(flowerbot, prediction) == [("dandelion", expected_kind, True)]
    assert await flowerbot.repository.get_pending_input(ALICE["id"], alice.chat_id) is None


async def test_button_after_restart(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(19)
    data = button(flowerbot, answer, prediction, Action.NOT_FLOWER)
    await alice.press(answer, data)
    recorded = await flowerbot.emulator.wait_for(
        lambda: feedback_texts(alice.current(answer)) == ["Change"] and alice.current(answer)
    )

    await flowerbot.restart()

    # Buttons sent before the restart still verify: "Change" opens the choices again.
    assert await alice.press(recorded, button(flowerbot, recorded, prediction, Action.CHANGE)) is None
    choices = await flowerbot.emulator.wait_for(
        lambda: len(feedback_texts(alice.current(answer))) > 1 and alice.current(answer)
    )
    # Tapping the recorded choice again is a double tap.
    assert await alice.press(choices, data) == notice("feedback.notice.already_recorded")
    assert await corrections(flowerbot, prediction) == [(None, "not_flower", True)]


# -- /history, /forget and /stats ---------------------------------------------


async def test_history_lists_corrections(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    _first_answer, first = await alice.photo(20)
    second_answer, second = await alice.photo(21)
    await alice.press(second_answer, button(flowerbot, second_answer, second, Action.NOT_FLOWER))

    reply = await alice.command("history")
    lines = message_text(reply).splitlines()
    assert lines[0] == "Your last 2 photos:"
    # Newest first.
    assert lines[1].startswith(f"1. {second.created_at:%Y-%m-%d}")
    assert second.top1_class_id in lines[1]
    assert lines[1].endswith("you marked it not a flower")
    assert first.top1_class_id in lines[2]
    assert lines[2].endswith("no feedback")

    empty = await Chat(flowerbot, BOB).command("history")
    assert message_text(empty) == text("history.empty", "en")


async def test_history_shows_unknown_species(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(43)
    await flowerbot.repository.record_correction(prediction.id, ALICE["id"], label=None, kind="unknown_species")

    reply = await alice.command("history")
    assert message_text(reply).splitlines()[1].endswith("you marked it a species not in my list")

    chinese = Chat(flowerbot, make_user(ALICE["id"], "Alice", language_code="zh-hans"))
    reply = await chinese.command("history")
    assert message_text(reply).splitlines()[1].endswith(text("history.unknown_species", "zh"))


async def test_forget_deletes_only_own_data(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    bob = Chat(flowerbot, BOB)
    shared_image = noise_jpeg(22)
    alice_answer, alice_shared = await alice.photo(0, image=shared_image)
    _answer, alice_own = await alice.photo(23)
    bob_answer, bob_shared = await bob.photo(0, image=shared_image)
    await alice.press(alice_answer, button(flowerbot, alice_answer, alice_shared, Action.NOT_FLOWER))
    await bob.press(bob_answer, button(flowerbot, bob_answer, bob_shared, Action.NOT_FLOWER))
    images = flowerbot.context.images
    assert alice_shared.image_path == bob_shared.image_path
    assert images.exists(alice_own.image_path)

    question = await alice.command("forget")
    assert message_text(question) == text("forget.question", "en")
    # Cancel first: nothing is deleted.
    assert await alice.press(question, forget_button(flowerbot, question, Action.FORGET_CANCEL)) == notice("forget.cancelled")
    assert len(await flowerbot.repository.history(ALICE["id"], 10)) == 2

    question = await alice.command("forget")
    assert await alice.press(question, forget_button(flowerbot, question, Action.FORGET_CONFIRM)) == notice("forget.done")

    assert await flowerbot.repository.history(ALICE["id"], 10) == []
    assert await flowerbot.repository.get_prediction(alice_shared.id) is None
    assert await flowerbot.repository.correction_history(alice_shared.id) == []
    await eventually(lambda: not images.exists(alice_own.image_path))
    # The photo Bob sent too stays, with Bob's prediction and correction.
    assert images.exists(bob_shared.image_path)
    assert await flowerbot.repository.get_prediction(bob_shared.id) is not None
    assert await corrections(flowerbot, bob_shared) == [(None, "not_flower", True)]

    # Alice's old buttons now only give a notice.
    old_button = button(flowerbot, alice_answer, alice_shared, Action.NOT_FLOWER)
    assert await alice.press(alice_answer, old_button, require_button=False) == notice("feedback.notice.prediction_gone")
    assert await flowerbot.repository.correction_history(alice_shared.id) == []


async def test_forget_expired_confirmation(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    _answer, prediction = await alice.photo(26)
    question = await alice.command("forget")
    asked = get_signer(flowerbot.context).decode(forget_button(flowerbot, question, Action.FORGET_CONFIRM)).argument
    # A confirmation signed an hour before, as if the question had been left open that long.
    stale = get_signer(flowerbot.context).encode(Action.FORGET_CONFIRM, ALICE["id"], asked - 60)

    assert await alice.press(question, stale, require_button=False) == notice("forget.expired")
    assert await flowerbot.repository.get_prediction(prediction.id) is not None


async def test_forget_button_of_other_user(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE, GROUP)
    bob = Chat(flowerbot, BOB, GROUP)
    _answer, prediction = await alice.photo(24)
    question = await alice.command("forget")

    assert await bob.press(question, forget_button(flowerbot, question, Action.FORGET_CONFIRM)) == notice(
        "forget.only_owner"
    )
    assert await flowerbot.repository.get_prediction(prediction.id) is not None
    # The question stays open for Alice.
    assert inline_buttons(alice.current(question)) == inline_buttons(question)


async def test_stats_rejects_non_admin(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    await alice.photo(25)
    reply = await alice.command("stats")
    assert message_text(reply) == text("stats.admins_only", "en")
    assert inline_buttons(reply) == []


async def test_stats_numbers_for_admin(bot_harness: BotHarness) -> None:
    await bot_harness.start(admin_ids=frozenset({ADMIN["id"]}))
    alice = Chat(bot_harness, ALICE)
    answers = [await alice.photo(seed) for seed in (30, 31, 32, 33, 34)]
    (confirm_answer, confirmed), (correct_answer, corrected), (flower_answer, not_flower), (unknown_answer, unknown), _untouched = answers
    wrong_label = corrected.top_k[1]["class_id"]
    await alice.press(confirm_answer, button(bot_harness, confirm_answer, confirmed, Action.PICK, class_index(confirmed.top1_class_id)))
    await alice.press(correct_answer, button(bot_harness, correct_answer, corrected, Action.PICK, class_index(wrong_label)))
    await alice.press(flower_answer, button(bot_harness, flower_answer, not_flower, Action.NOT_FLOWER))
    await alice.press(unknown_answer, button(bot_harness, unknown_answer, unknown, Action.NONE_OF_THESE, 0))
    page = await bot_harness.emulator.wait_for(
        lambda: any(entry["text"] == "Not in this list" for entry in inline_buttons(alice.current(unknown_answer)))
        and alice.current(unknown_answer)
    )
    await alice.press(page, button(bot_harness, page, unknown, Action.UNKNOWN_SPECIES))

    # Alice is not an admin and learns nothing.
    assert message_text(await alice.command("stats")) == text("stats.admins_only", "en")

    reply = message_text(await Chat(bot_harness, ADMIN).command("stats"))
    assert "Predictions: 5" in reply
    assert "With feedback: 4 (80.0%)" in reply
    assert "Confirmed: 1 · corrected: 1 · not a flower: 1 · not in the list: 1" in reply
    version = bot_harness.bundle.version
    # Two predictions carry a species label and one is a species the model lacks; one of the three was right.
    assert f"{version}: 33.3% of 3 rated (5 predictions)" in reply
    assert f"{corrected.top1_class_id} → {wrong_label}: 1" in reply


async def test_stats_in_chinese(bot_harness: BotHarness) -> None:
    await bot_harness.start(admin_ids=frozenset({ADMIN["id"]}))
    admin = make_user(ADMIN["id"], "Admin", language_code="zh-hans")
    reply = message_text(await Chat(bot_harness, admin).command("stats"))
    assert reply.startswith(text("stats.title", "zh"))
    assert "预测：0" in reply
    assert "不是花：0 · 不在列表中：0" in reply


async def test_signature_binds_to_message(flowerbot: BotHarness) -> None:
    """A button signed for one prediction row does not verify for another row with the same id."""
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(34)
    data = inline_buttons(answer)[0]["callback_data"]
    signer = get_signer(flowerbot.context)
    assert signer.decode(data, binding=prediction_binding(prediction)).subject == prediction.id
    with pytest.raises(InvalidCallback):
        signer.decode(data, binding=f"{prediction.chat_id}:{prediction.message_id + 1}")


async def test_private_prompt_offers_cancel(flowerbot: BotHarness) -> None:
    alice = Chat(flowerbot, ALICE)
    answer, prediction = await alice.photo(46)
    await _start_typing(flowerbot, alice, answer, prediction)
    prompt_text = text("feedback.type_name.prompt", "en")
    prompt = next(sent for sent in flowerbot.emulator.sent_messages(alice.chat_id) if message_text(sent) == prompt_text)

    assert [entry["text"] for entry in inline_buttons(prompt)] == ["Cancel"]
    assert await alice.press(prompt, button(flowerbot, prompt, prediction, Action.CANCEL_TYPING)) == notice(
        "feedback.notice.typing_cancelled"
    )
    assert await flowerbot.repository.get_pending_input(ALICE["id"], alice.chat_id) is None
    await flowerbot.emulator.wait_for(lambda: message_text(alice.current(prompt)) == text("feedback.type_name.cancelled", "en"))

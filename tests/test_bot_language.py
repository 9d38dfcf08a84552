"""English and Simplified Chinese through the emulator: language codes, /lang, restarts, command menus."""

from __future__ import annotations

import re
from pathlib import Path

from bot.answers import species_name
from bot.commands import menu_commands
from bot.i18n import text
from tests.emulator import inline_buttons, make_user
from tests.fixtures.bot import BotHarness

CJK = re.compile(r"[\u4e00-\u9fff]")
LI = make_user(3001, "Li", language_code="zh-hans")
ANNA = make_user(3002, "Anna", language_code="de")


async def test_chinese_language_code_gets_chinese(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator

    start = emulator.send_command(LI, None, "start")
    greeting = await emulator.wait_for_response(start)
    photo = emulator.send_photo(LI, None, flowers5_val_photos[0].read_bytes())
    answer = await emulator.wait_for_reply(photo)
    await flowerbot.wait_idle()

    assert greeting["text"] == text("start.welcome", "zh", name="Li")
    row = await flowerbot.repository.get_prediction_by_message(LI["id"], photo["message_id"])
    assert row is not None
    labels = flowerbot.context.service.labels
    expected_lines = [
        text("answer.line", "zh", rank=rank, name=species_name(labels, entry["index"], "zh"), percent=f"{entry['probability'] * 100:.1f}%")
        for rank, entry in enumerate(row.top_k, start=1)
    ]
    species_lines = answer["text"].splitlines()[: len(expected_lines)]
    assert species_lines == expected_lines
    # After a blank line, how sure the answer is, in Chinese.
    assert CJK.search(answer["text"].split("\n\n", 1)[1])
    for line in species_lines:
        # The Chinese name, then the English name the field uses in brackets.
        assert CJK.search(line), line
        assert re.search(r"\([a-z ]+\)", line), line
    button_texts = [button["text"] for button in inline_buttons(answer)]
    assert text("feedback.button.none_of_these", "zh") in button_texts


async def test_other_language_codes_get_english(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator

    reply = await emulator.wait_for_response(emulator.send_command(ANNA, None, "help"))

    assert reply["text"].startswith(text("help.text", "en", commands="").split("\n")[0])
    assert not CJK.search(reply["text"])


async def test_lang_en_switches_and_survives_restart(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator

    switch = emulator.send_command(LI, None, "lang", "en")
    confirmation = await emulator.wait_for_response(switch)
    assert confirmation["text"] == text("lang.set", "en")
    stored = await flowerbot.repository.get_user(LI["id"])
    assert stored is not None
    assert stored.language == "en"

    await flowerbot.restart()

    help_message = emulator.send_command(LI, None, "help")
    help_reply = await emulator.wait_for_response(help_message)
    photo = emulator.send_photo(LI, None, flowers5_val_photos[1].read_bytes())
    answer = await emulator.wait_for_reply(photo)

    assert not CJK.search(help_reply["text"])
    assert help_reply["text"].startswith("Send a photo of a flower")
    assert not CJK.search(answer["text"])


async def test_lang_buttons_and_reset(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator

    offer = await emulator.wait_for_response(emulator.send_command(ANNA, None, "lang"))
    assert offer["text"] == text("lang.choose", "en")
    assert [button["callback_data"] for button in inline_buttons(offer)] == ["lang:en", "lang:zh"]

    query = emulator.press_button(ANNA, None, offer, "lang:zh")
    notice = await emulator.wait_for_callback_answer(query)
    await flowerbot.wait_idle()
    assert notice["text"] == text("lang.set", "zh")
    assert emulator.message(ANNA["id"], offer["message_id"])["text"] == text("lang.set", "zh")
    stored = await flowerbot.repository.get_user(ANNA["id"])
    assert stored is not None
    assert stored.language == "zh"

    reset = await emulator.wait_for_response(emulator.send_command(ANNA, None, "lang", "auto"))
    assert reset["text"] == text("lang.reset", "en")
    stored = await flowerbot.repository.get_user(ANNA["id"])
    assert stored is not None
    assert stored.language is None


async def test_lang_unknown_value(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator

    reply = await emulator.wait_for_response(emulator.send_command(LI, None, "lang", "fr"))

    assert reply["text"] == text("lang.unknown", "zh", value="fr")
    stored = await flowerbot.repository.get_user(LI["id"])
    assert stored is not None
    assert stored.language is None


async def test_command_menus_for_both_languages(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    expected_commands = [entry.command for entry in menu_commands()]

    english = emulator.commands_for("en")
    chinese = emulator.commands_for("zh")
    default = emulator.commands_for("")

    assert {"start", "help", "top5", "lang"} <= set(expected_commands)
    for menu in (english, chinese, default):
        assert menu is not None
        assert [command["command"] for command in menu] == expected_commands
    assert [command["description"] for command in english] == [text(entry.description_key, "en") for entry in menu_commands()]
    assert [command["description"] for command in chinese] == [text(entry.description_key, "zh") for entry in menu_commands()]
    assert all(CJK.search(command["description"]) for command in chinese)
    assert default == english


"""Confidence words, calibrated probabilities and the "not a flower" answer, in units and through the emulator."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from bot.honesty import Assessment, ConfidenceThresholds, assess_stored, compose_answer, skipped_photos_line
from bot.i18n import text
from bot.settings import Settings
from classifier.decode import decode_image
from classifier.labels import LabelSet
from classifier.preprocess import to_array
from classifier.scores import softmax
from tests.emulator import make_user
from tests.fixtures.bot import FLOWERS5_CLASSES, BotHarness
from tests.fixtures.honesty import HonestBundle

ALICE = make_user(5101, "Alice", language_code="en")
LI = make_user(5102, "Li", language_code="zh-hans")
SPECIES_LINE = re.compile(r"^\d+\. .+ — (?P<percent>\d{1,3}\.\d)%$")
LABELS = LabelSet.from_names(FLOWERS5_CLASSES)


def species_lines(answer: str) -> list[str]:
    return [line for line in answer.splitlines() if SPECIES_LINE.match(line)]


def shown_percents(answer: str) -> list[float]:
    return [float(SPECIES_LINE.match(line)["percent"]) for line in species_lines(answer)]


def confidence_sentence(level: str, lang: str, name: str) -> str:
    return text(f"honesty.{level}", lang, name=name)


# -- units ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probability", "level"),
    [(0.95, "sure"), (0.80, "sure"), (0.7999, "likely"), (0.50, "likely"), (0.4999, "unsure"), (0.2, "unsure")],
)
def test_threshold_levels(probability: float, level: str) -> None:
    assert ConfidenceThresholds(sure=0.80, likely=0.50).level(probability) == level


def test_thresholds_reject_wrong_order() -> None:
    with pytest.raises(ValueError, match="likely <= sure"):
        ConfidenceThresholds(sure=0.4, likely=0.6)


def test_settings_reject_wrong_order() -> None:
    with pytest.raises(ValidationError, match="CONFIDENCE_LIKELY"):
        Settings(_env_file=None, telegram_bot_token="1:x", model_path=Path("."), confidence_sure=0.5, confidence_likely=0.7)


def test_compose_confident_answer() -> None:
    lines = ["1. daisy — 91.0%", "2. tulips — 5.0%"]
    assessment = Assessment(top_index=0, top_probability=0.91, level="sure")

    answer = compose_answer(lines, assessment, LABELS, "en")

    assert answer == "1. daisy — 91.0%\n2. tulips — 5.0%\n\n" + confidence_sentence("sure", "en", "daisy")


def test_compose_rejected_answer_keeps_guesses() -> None:
    lines = ["1. daisy — 41.0%", "2. tulips — 30.0%"]
    assessment = Assessment(top_index=0, top_probability=0.41, level="unsure", is_ood=True)

    answer = compose_answer(lines, assessment, LABELS, "zh")

    assert answer.splitlines() == [text("honesty.not_a_flower", "zh"), *lines]
    assert confidence_sentence("unsure", "zh", "雏菊") not in answer


def test_compose_album_answer() -> None:
    lines = ["1. 雏菊 (daisy) — 61.0%"]
    assessment = Assessment(top_index=0, top_probability=0.61, level="likely", photo_count=3, skipped_photos=1)

    answer = compose_answer(lines, assessment, LABELS, "zh")

    assert answer.splitlines() == [
        text("honesty.album", "zh", count=3),
        lines[0],
        "",
        confidence_sentence("likely", "zh", "雏菊"),
        "有 1 张照片无法读取，已略过。",
    ]


@pytest.mark.parametrize(
    ("count", "lang", "expected"),
    [
        (1, "en", "1 of the photos could not be read and was left out."),
        (2, "en", "2 of the photos could not be read and were left out."),
        (1, "zh", "有 1 张照片无法读取，已略过。"),
        (3, "zh", "有 3 张照片无法读取，已略过。"),
    ],
)
def test_skipped_photos_line_plural(count: int, lang: str, expected: str) -> None:
    assert skipped_photos_line(count, lang) == expected


def test_assess_stored_row() -> None:
    class Row:
        top_k = [{"index": 9, "class_id": "tulips", "probability": 0.55}]
        is_ood = False
        photo_count = 2

    settings = Settings(_env_file=None, telegram_bot_token="1:x", model_path=Path("."))

    assessment = assess_stored(Row(), LABELS, settings)

    # The class id decides the index, not the stored index.
    assert assessment == Assessment(top_index=4, top_probability=0.55, level="likely", photo_count=2)


# -- through the emulator ---------------------------------------------------------


async def test_answer_states_confidence(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator
    photo = emulator.send_photo(ALICE, None, flowers5_val_photos[3].read_bytes())
    answer = await emulator.wait_for_reply(photo)
    await flowerbot.wait_idle()

    row = await flowerbot.repository.get_prediction_by_message(ALICE["id"], photo["message_id"])
    top = row.top_k[0]
    level = ConfidenceThresholds.from_settings(flowerbot.settings).level(top["probability"])
    assert answer["text"].endswith("\n\n" + confidence_sentence(level, "en", top["class_id"]))
    assert len(species_lines(answer["text"])) == 3
    assert text("honesty.not_a_flower", "en") not in answer["text"]


async def test_words_follow_thresholds(bot_harness: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = bot_harness.emulator
    data = flowers5_val_photos[7].read_bytes()
    await bot_harness.start()
    first = emulator.send_photo(ALICE, None, data)
    await emulator.wait_for_reply(first)
    await bot_harness.wait_idle()
    row = await bot_harness.repository.get_prediction_by_message(ALICE["id"], first["message_id"])
    probability = row.top_k[0]["probability"]
    name = row.top_k[0]["class_id"]

    # The same photo again, with "sure" starting just below its probability.
    await bot_harness.restart(confidence_sure=probability - 1e-6, confidence_likely=probability / 2)
    second = emulator.send_photo(ALICE, None, data)
    sure_answer = await emulator.wait_for_reply(second)
    # And with both limits just above it.
    above = min(1.0, probability + 0.01)
    await bot_harness.restart(confidence_sure=above, confidence_likely=above)
    third = emulator.send_photo(ALICE, None, data)
    unsure_answer = await emulator.wait_for_reply(third)

    assert sure_answer["text"].endswith(confidence_sentence("sure", "en", name))
    assert unsure_answer["text"].endswith(confidence_sentence("unsure", "en", name))


@pytest.mark.parametrize("temperature", [0.1, 5.0])
async def test_shown_percent_is_calibrated(
    bot_harness: BotHarness, flowers5_val_photos: list[Path], temperature: float
) -> None:
    data = flowers5_val_photos[11].read_bytes()
    calibrated = bot_harness.bundle.copy()
    calibrated.calibration = {"temperature": temperature}
    bot_harness.bundle = calibrated
    await bot_harness.start()
    array = to_array(decode_image(data), calibrated.preprocessing)
    logits = bot_harness.backend.inner.logits(array[None])[0]
    expected = np.sort(softmax(logits, temperature))[::-1][:3] * 100

    answer = await bot_harness.emulator.wait_for_reply(bot_harness.emulator.send_photo(ALICE, None, data))

    assert shown_percents(answer["text"]) == pytest.approx(expected, abs=0.051)
    # Uncalibrated probabilities differ from these by far more than the rounding.
    uncalibrated = np.sort(softmax(logits, 1.0))[::-1][:3] * 100
    assert abs(uncalibrated[0] - expected[0]) > 1.0


async def test_non_flower_gets_rejection(honest_bot: BotHarness, honest_bundle: HonestBundle) -> None:
    emulator = honest_bot.emulator

    synthetic = emulator.send_photo(ALICE, None, honest_bundle.non_flower)
    rejection = await emulator.wait_for_reply(synthetic)
    flower = emulator.send_photo(ALICE, None, honest_bundle.flower_photos[0].read_bytes())
    answer = await emulator.wait_for_reply(flower)
    await honest_bot.wait_idle()

    lines = rejection["text"].splitlines()
    assert lines[0] == text("honesty.not_a_flower", "en")
    # The best guesses are still offered.
    assert len(species_lines(rejection["text"])) == 3
    assert not any(rejection["text"].endswith(confidence_sentence(level, "en", name)) for level in ("sure", "likely", "unsure") for name in FLOWERS5_CLASSES)
    rejected_row = await honest_bot.repository.get_prediction_by_message(ALICE["id"], synthetic["message_id"])
    assert rejected_row.is_ood is True
    assert rejected_row.ood_score < honest_bundle.threshold

    assert text("honesty.not_a_flower", "en") not in answer["text"]
    flower_row = await honest_bot.repository.get_prediction_by_message(ALICE["id"], flower["message_id"])
    assert flower_row.is_ood is False
    assert flower_row.ood_score >= honest_bundle.threshold


async def test_rejection_in_chinese(honest_bot: BotHarness, honest_bundle: HonestBundle) -> None:
    emulator = honest_bot.emulator

    reply = await emulator.wait_for_reply(emulator.send_photo(LI, None, honest_bundle.non_flower))

    assert reply["text"].splitlines()[0] == text("honesty.not_a_flower", "zh")

"""Pieces of the retrain supervisor: the throttled progress message, progress texts, and crash leftovers.

The progress message talks to the Telegram emulator through a real `telegram.Bot`.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from telegram import Bot

from bot.model_registry import clean_model_dir
from bot.retrain_progress import ProgressMessage, RunProgress, exit_error, progress_text
from tests.emulator import TelegramEmulator, make_user, private_chat

ADMIN = make_user(4242, "Admin")
ADMIN_CHAT = private_chat(ADMIN)


@pytest.fixture
async def bot(telegram_emulator: TelegramEmulator) -> AsyncIterator[Bot]:
    telegram_emulator.add_chat(ADMIN_CHAT)
    async with Bot(telegram_emulator.token, base_url=telegram_emulator.base_url, base_file_url=telegram_emulator.base_file_url) as client:
        yield client


def edits(emulator: TelegramEmulator) -> list:
    return emulator.calls_to("editMessageText")


# ---------------------------------------------------------------------------
# ProgressMessage


async def test_progress_updates_edit_one_message(bot: Bot, telegram_emulator: TelegramEmulator) -> None:
    message = ProgressMessage(bot, ADMIN_CHAT["id"], min_interval_s=1.0)
    message_id = await message.open("step 0")
    for step in range(1, 40):
        message.update(f"step {step}")
    await message.close("finished")

    sent = telegram_emulator.sent_messages(ADMIN_CHAT["id"])
    assert len(sent) == 1
    assert sent[0]["message_id"] == message_id
    assert sent[0]["text"] == "finished"
    edit_calls = edits(telegram_emulator)
    assert 1 <= len(edit_calls) < 39
    assert {call.params["message_id"] for call in edit_calls} == {message_id}


async def test_unchanged_text_is_not_edited(bot: Bot, telegram_emulator: TelegramEmulator) -> None:
    message = ProgressMessage(bot, ADMIN_CHAT["id"], min_interval_s=1.0)
    await message.open("same")
    message.update("same")
    await message.close("same")
    assert edits(telegram_emulator) == []


async def test_retry_after_is_waited_out(bot: Bot, telegram_emulator: TelegramEmulator) -> None:
    message = ProgressMessage(bot, ADMIN_CHAT["id"], min_interval_s=1.0)
    message_id = await message.open("start")
    telegram_emulator.inject_retry_after("editMessageText", 1, times=1)
    await message.close("finished")

    statuses = [call.ok for call in edits(telegram_emulator)]
    assert statuses == [False, True]
    assert telegram_emulator.message(ADMIN_CHAT["id"], message_id)["text"] == "finished"


async def test_blocked_chat_stops_sending_without_error(bot: Bot, telegram_emulator: TelegramEmulator) -> None:
    telegram_emulator.block_user(ADMIN_CHAT["id"])
    message = ProgressMessage(bot, ADMIN_CHAT["id"], min_interval_s=1.0)
    assert await message.open("start") is None
    assert message.blocked
    calls_after_open = len(telegram_emulator.calls)
    message.update("more")
    await message.close("finished")
    assert len(telegram_emulator.calls) == calls_after_open


async def test_blocking_mid_run_stops_edits(bot: Bot, telegram_emulator: TelegramEmulator) -> None:
    message = ProgressMessage(bot, ADMIN_CHAT["id"], min_interval_s=1.0)
    await message.open("start")
    telegram_emulator.block_user(ADMIN_CHAT["id"])
    await message.close("finished")
    assert message.blocked
    assert [call.ok for call in edits(telegram_emulator)] == [False]


async def test_deleted_message_is_sent_again(bot: Bot, telegram_emulator: TelegramEmulator) -> None:
    message = ProgressMessage(bot, ADMIN_CHAT["id"], min_interval_s=1.0)
    first_id = await message.open("start")
    telegram_emulator.inject_error("editMessageText", 400, "Bad Request: message to edit not found")
    await message.close("finished")
    assert message.message_id != first_id
    assert telegram_emulator.message(ADMIN_CHAT["id"], message.message_id)["text"] == "finished"


# ---------------------------------------------------------------------------
# Progress texts


def test_progress_text_shows_epoch_and_accuracy() -> None:
    progress = RunProgress()
    for event in (
        {"event": "phase", "phase": "prepare"},
        {"event": "data", "corrections_train": 4, "corrections_holdout": 1, "not_flower": 2, "unknown_species": 5, "skipped_unknown_label": 3, "skipped_missing_file": 0},
        {"event": "phase", "phase": "train"},
        {"event": "epoch", "epoch": 2, "epochs": 5, "val_acc": 0.25, "best_val_acc": 0.5},
    ):
        progress.apply(event)
    assert progress.phase_label == "train 2/5"
    english = progress_text(7, "v1", progress, "en")
    assert "#7" in english
    assert "Epoch 2/5: validation accuracy 25.0% (best 50.0%)" in english
    assert "4 corrected photos for training, 1 held out" in english
    assert "skipped 3 with labels" in english
    assert "2 “not a flower” and 5 “not in this list” photos for rejection" in english
    chinese = progress_text(7, "v1", progress, "zh")
    assert "第 2/5 轮" in chinese
    assert "2 张“不是花”和 5 张“不在列表中”照片用于拒识" in chinese


def test_progress_keeps_error_and_result() -> None:
    progress = RunProgress()
    progress.apply({"event": "error", "message": "ValueError: bad"})
    progress.apply({"event": "result", "version": "v2"})
    assert progress.error == "ValueError: bad"
    assert progress.result == {"event": "result", "version": "v2"}
    assert progress.phase == "finishing"


def test_exit_error_names_signal() -> None:
    assert "SIGKILL" in exit_error(-signal.SIGKILL, "en")
    assert "status 1" in exit_error(1, "en")


# ---------------------------------------------------------------------------
# Crash leftovers in the model directory


def make_bundle_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "bundle.json").write_text("{}", encoding="utf-8")
    return path


def test_clean_model_dir_removes_partial_work(tmp_path: Path) -> None:
    models = tmp_path / "models"
    kept = make_bundle_dir(models / "20250101-000000-aaaaaa")
    leftovers = [
        make_bundle_dir(models / ".retrain-4"),
        make_bundle_dir(models / ".20250102-000000-bbbbbb.tmp-1234abcd"),
        make_bundle_dir(models / ".candidate.training-99aa11bb"),
        make_bundle_dir(models / ".20250101-000000-aaaaaa.old-5678abcd"),
    ]
    removed = clean_model_dir(models)
    assert sorted(removed) == sorted(leftovers)
    assert kept.is_dir()
    assert sorted(path.name for path in models.iterdir()) == [kept.name]


def test_clean_model_dir_restores_only_copy(tmp_path: Path) -> None:
    models = tmp_path / "models"
    aside = make_bundle_dir(models / ".20250101-000000-aaaaaa.old-5678abcd")
    assert clean_model_dir(models) == []
    assert not aside.exists()
    assert (models / "20250101-000000-aaaaaa" / "bundle.json").is_file()


def test_clean_model_dir_without_directory(tmp_path: Path) -> None:
    assert clean_model_dir(tmp_path / "absent") == []

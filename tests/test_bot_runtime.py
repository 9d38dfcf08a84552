"""Start-up, shutdown and the error handler of the running bot."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bot.i18n import text
from bot.settings import Settings
from tests.emulator import TelegramEmulator, group_chat, make_user
from tests.fixtures.bot import BotHarness

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
ALICE = make_user(4001, "Alice", language_code="en")
# The start of a log record as `bot.logging_config` writes it to stderr.
LOG_RECORD = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def run_bot(tmp_path: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m bot` in an empty folder (no .env) with only the given settings."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPOSITORY_ROOT),
        "DATA_DIR": str(tmp_path / "data"),
        "HTTP_PORT": "0",
        **environment,
    }
    return subprocess.run(
        [sys.executable, "-m", "bot"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_missing_token_is_one_line(tmp_path: Path, flowers5_bundle_dir: Path) -> None:
    result = run_bot(tmp_path, MODEL_PATH=str(flowers5_bundle_dir))

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("TELEGRAM_BOT_TOKEN is not set")
    assert "Traceback" not in result.stderr


def test_missing_model_is_one_line(tmp_path: Path) -> None:
    result = run_bot(tmp_path, TELEGRAM_BOT_TOKEN="123:secret-token-value-for-the-test")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("MODEL_PATH is not set")
    assert "new-bundle" in lines[0]
    assert "secret-token-value" not in result.stderr


def test_model_path_without_bundle_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-bundle"
    empty.mkdir()

    result = run_bot(tmp_path, TELEGRAM_BOT_TOKEN="123:secret-token-value-for-the-test", MODEL_PATH=str(empty))

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"MODEL_PATH={empty} is not a model bundle")
    assert "Traceback" not in result.stderr


def assert_one_line_exit(result: subprocess.CompletedProcess[str], start: str) -> str:
    """Assert the bot ended with exit status 2 and one stderr line, apart from log records, that starts with `start`.

    Log records (lines that start with a date) may come before it once logging is set up. Returns the line.
    """
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not LOG_RECORD.match(line)]
    assert len(lines) == 1, result.stderr[-2000:]
    assert result.stderr.strip().endswith(lines[0])
    assert lines[0].startswith(start), lines[0]
    return lines[0]


@pytest.mark.parametrize("token", ["", "no-colon-in-this-token", "abc:secret-token-value"])
def test_malformed_token_is_one_line(tmp_path: Path, flowers5_bundle_dir: Path, token: str) -> None:
    result = run_bot(tmp_path, TELEGRAM_BOT_TOKEN=token, MODEL_PATH=str(flowers5_bundle_dir))

    line = assert_one_line_exit(result, "TELEGRAM_BOT_TOKEN is invalid")
    assert "@BotFather" in line
    if token:
        assert token not in result.stderr


def test_onnx_backend_without_export_is_one_line(tmp_path: Path, flowers5_bundle_dir: Path) -> None:
    result = run_bot(
        tmp_path, TELEGRAM_BOT_TOKEN="123:secret-token-value-for-the-test", MODEL_PATH=str(flowers5_bundle_dir), BACKEND="onnx"
    )

    line = assert_one_line_exit(result, "BACKEND=onnx")
    assert f"python -m training export --model {flowers5_bundle_dir}" in line


def test_data_dir_not_creatable_is_one_line(tmp_path: Path, flowers5_bundle_dir: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    result = run_bot(
        tmp_path,
        TELEGRAM_BOT_TOKEN="123:secret-token-value-for-the-test",
        MODEL_PATH=str(flowers5_bundle_dir),
        DATA_DIR=str(blocker / "data"),
    )

    assert_one_line_exit(result, f"DATA_DIR={blocker / 'data'} cannot be created")


@pytest.mark.parametrize("url", ["mysql://x", "nosuchdatabase://x", "not a url"])
def test_unusable_database_url_is_one_line(tmp_path: Path, flowers5_bundle_dir: Path, url: str) -> None:
    result = run_bot(
        tmp_path, TELEGRAM_BOT_TOKEN="123:secret-token-value-for-the-test", MODEL_PATH=str(flowers5_bundle_dir), DATABASE_URL=url
    )

    line = assert_one_line_exit(result, "DATABASE_URL")
    assert "sqlite+aiosqlite" in line


async def test_http_port_in_use_is_one_line(
    telegram_emulator: TelegramEmulator, flowers5_bundle_dir: Path, database_url: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPOSITORY_ROOT),
            "TELEGRAM_BOT_TOKEN": telegram_emulator.token,
            "TELEGRAM_BASE_URL": telegram_emulator.base_url,
            "TELEGRAM_BASE_FILE_URL": telegram_emulator.base_file_url,
            "DATABASE_URL": database_url,
            "DATA_DIR": str(tmp_path / "data"),
            "MODEL_PATH": str(flowers5_bundle_dir),
            "DEVICE": "cpu",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(port),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
        )
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), 120)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    result = subprocess.CompletedProcess(["python", "-m", "bot"], process.returncode, "", stderr.decode())
    line = assert_one_line_exit(result, f"HTTP_PORT={port} is already in use")
    assert "HTTP_PORT to a free port or 0" in line


async def test_error_handler_logs_and_apologizes(flowerbot: BotHarness, caplog: pytest.LogCaptureFixture) -> None:
    emulator = flowerbot.emulator
    emulator.inject_error("sendMessage", 400, "Bad Request: injected failure")

    with caplog.at_level(logging.ERROR, logger="bot.handlers.errors"):
        command = emulator.send_command(ALICE, None, "help")
        apology = await emulator.wait_for_response(command)
        await flowerbot.wait_idle()

    assert apology["text"] == text("error.generic", "en")
    records = [record for record in caplog.records if record.name == "bot.handlers.errors"]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert f"update {command_update_id(emulator, command)}" in records[0].getMessage()


async def test_blocked_user_is_marked_inactive(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    emulator.block_user(ALICE["id"])

    emulator.send_command(ALICE, None, "start")
    await emulator.wait_for_call("sendMessage", lambda call: call.status == 403)
    await flowerbot.wait_idle()

    stored = await flowerbot.repository.get_user(ALICE["id"])
    assert stored is not None
    assert stored.is_active is False
    # No apology is attempted to someone who blocked the bot.
    assert len(emulator.calls_to("sendMessage")) == 1

    # Writing again shows the block is over.
    emulator.unblock_user(ALICE["id"])
    command = emulator.send_command(ALICE, None, "help")
    await emulator.wait_for_response(command)
    stored = await flowerbot.repository.get_user(ALICE["id"])
    assert stored is not None
    assert stored.is_active is True


async def test_removed_from_group_keeps_user_active(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    group = group_chat(-1004001)
    emulator.block_user(group["id"])

    emulator.send_command(ALICE, group, "help")
    await emulator.wait_for_call("sendMessage", lambda call: call.status == 403)
    await flowerbot.wait_idle()

    stored = await flowerbot.repository.get_user(ALICE["id"])
    assert stored is not None
    assert stored.is_active is True
    assert len(emulator.calls_to("sendMessage")) == 1


# AIORateLimiter reads `RetryAfter.retry_after`, which python-telegram-bot 22 marks as changing type.
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_flood_control_is_respected(flowerbot: BotHarness) -> None:
    emulator = flowerbot.emulator
    emulator.inject_retry_after("sendMessage", seconds=1)

    command = emulator.send_command(ALICE, None, "help")
    reply = await emulator.wait_for_response(command)

    assert reply["text"].startswith("Send a photo of a flower")
    assert [call.status for call in emulator.calls_to("sendMessage")] == [429, 200]


async def test_stop_finishes_photo_in_flight(flowerbot: BotHarness, flowers5_val_photos: list[Path]) -> None:
    emulator = flowerbot.emulator
    data = flowers5_val_photos[0].read_bytes()
    gate = flowerbot.hold_inference(data)
    photo = emulator.send_photo(ALICE, None, data)
    await gate.wait_entered()

    runtime = flowerbot.runtime
    assert runtime is not None
    stopping = asyncio.create_task(runtime.stop())
    while runtime.application.updater.running:
        await asyncio.sleep(0.01)
    assert emulator.replies_to(photo) == []
    gate.release()
    await asyncio.wait_for(stopping, 60)
    flowerbot.runtime = None

    (reply,) = emulator.replies_to(photo)
    await flowerbot.start()
    row = await flowerbot.repository.get_prediction_by_message(ALICE["id"], photo["message_id"])
    assert row is not None
    assert row.reply_message_id == reply["message_id"]


def command_update_id(emulator: TelegramEmulator, message: dict) -> int:
    """Return the update_id under which `message` was delivered."""
    for call in emulator.calls_to("getUpdates"):
        for update in call.response.get("result") or []:
            if update.get("message", {}).get("message_id") == message["message_id"]:
                return update["update_id"]
    raise AssertionError(f"message {message['message_id']} was never delivered")


async def test_python_m_bot_serves_until_sigterm(
    telegram_emulator: TelegramEmulator, flowers5_bundle_dir: Path, database_url: str, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPOSITORY_ROOT),
        "TELEGRAM_BOT_TOKEN": telegram_emulator.token,
        "TELEGRAM_BASE_URL": telegram_emulator.base_url,
        "TELEGRAM_BASE_FILE_URL": telegram_emulator.base_file_url,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path / "data"),
        "MODEL_PATH": str(flowers5_bundle_dir),
        "DEVICE": "cpu",
        "HTTP_PORT": "0",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await telegram_emulator.wait_for_call("getUpdates", timeout=120)
        command = telegram_emulator.send_command(ALICE, None, "start")
        greeting = await telegram_emulator.wait_for_response(command)
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert greeting["text"] == text("start.welcome", "en", name="Alice")
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert telegram_emulator.token.split(":", 1)[1] not in stderr.decode()
    assert "flowerbot stopped" in stderr.decode()


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, 16),
        ({"BACKEND": "onnx"}, 1),
        ({"BACKEND": "onnx", "BATCH_MAX_SIZE": "8"}, 8),
        ({"BACKEND": "torch", "BATCH_MAX_SIZE": "4"}, 4),
    ],
)
def test_batch_max_size_default_per_backend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, environment: dict[str, str], expected: int
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:secret-token-value-for-the-test")
    monkeypatch.setenv("MODEL_PATH", str(tmp_path))
    monkeypatch.delenv("BATCH_MAX_SIZE", raising=False)
    monkeypatch.delenv("BACKEND", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.resolved_batch_max_size == expected

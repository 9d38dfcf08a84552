"""The bot token never reaches the logs, the database, the data folder or a message.

`python -m bot` runs as a subprocess at LOG_LEVEL=DEBUG with its stderr in a file,
through a session that touches every path where a token could slip out: photos and bad
files, a download whose error message carries the token's file URL, an expired file
URL, a handler that crashes on an error echoing the token, a person who blocked the
bot, buttons and commands. The log file, every table and the raw database files, every
file name and file under DATA_DIR, and every message the bot sent are then searched for
the token and for its secret part.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import secrets
import signal
import sqlite3
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from bot.logging_config import configure_logging
from tests.emulator import TelegramEmulator, inline_buttons, make_user
from tests.fixtures.database import selected_database_backend

pytestmark = pytest.mark.skipif(selected_database_backend() != "sqlite", reason="searches the SQLite files byte by byte")

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
ALICE = make_user(9801, "Alice", language_code="en")
BOB = make_user(9802, "Bob", language_code="zh")
START_TIMEOUT_S = 180
REDACTED = "[REDACTED]"


def realistic_token() -> str:
    """Return a token shaped like BotFather's: a bot id, a colon and 35 URL-safe characters."""
    secret_part = "AAH" + secrets.token_urlsafe(24)[:32]
    return f"7{secrets.randbelow(10**9):09d}:{secret_part}"


def small_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blocks).resize((160, 120), Image.Resampling.NEAREST).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def needles(token: str) -> dict[str, bytes]:
    """Return the forms of the token to search for, by name."""
    secret_part = token.split(":", 1)[1]
    return {
        "token": token.encode(),
        "secret part": secret_part.encode(),
        "URL-encoded token": quote(token, safe="").encode(),
    }


def first_line_masked(lines: list[bytes], needle: bytes) -> str:
    """Return the first line with `needle` replaced, to show where a leak is without repeating it."""
    if not lines:
        return ""
    return lines[0].replace(needle, b"<TOKEN>").decode("utf-8", errors="replace")[:300]


def database_values(database: Path) -> list[str]:
    """Return every value of every row of every table, as text."""
    values = []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                values.extend(str(value) for value in row)
    return values


async def run_session(emulator: TelegramEmulator, process: asyncio.subprocess.Process) -> None:
    """Act out a session that goes through the bot's ordinary and failing paths."""
    token = emulator.token
    start = emulator.send_command(ALICE, None, "start")
    await emulator.wait_for_response(start)

    photo = emulator.send_photo(ALICE, None, small_jpeg(1))
    answer = await emulator.wait_for_reply(photo)
    buttons = [button["callback_data"] for button in inline_buttons(answer) if button.get("callback_data")]
    if buttons:
        query = emulator.press_button(ALICE, None, answer, buttons[0])
        await emulator.wait_for_callback_answer(query)
    top5 = emulator.send_command(ALICE, None, "top5")
    await emulator.wait_for_reply(top5)

    for data, name in [(b"%PDF-1.4\n%%EOF\n", "leaflet.pdf"), (small_jpeg(2)[:300], "cut.jpg"), (b"", "empty.jpg")]:
        document = emulator.send_document(ALICE, None, data, name)
        await emulator.wait_for_reply(document)
    huge = emulator.send_document(ALICE, None, b"\xff\xd8\xff", "huge.jpg", declared_size=30 * 1024 * 1024)
    await emulator.wait_for_reply(huge)

    # A download refused with an error that quotes the file URL, token included.
    emulator.inject_error("getFile", 400, f"Bad Request: file at {emulator.base_file_url}{token}/photos/file_9.jpg is gone")
    refused = emulator.send_photo(ALICE, None, small_jpeg(3))
    await emulator.wait_for_reply(refused)

    # A file URL that answers 404, as an expired one does.
    expired = emulator.send_photo(ALICE, None, small_jpeg(4), deliver=False)
    del emulator._files_by_path[emulator._files[expired["photo"][-1]["file_id"]].file_path]
    emulator.queue_update({"message": expired})
    await emulator.wait_for_reply(expired)

    # A handler that crashes on an error whose message carries the token.
    emulator.inject_error("sendMessage", 500, f"Internal Server Error: upstream rejected bot{token}")
    crashed = emulator.send_photo(ALICE, None, small_jpeg(5))
    await emulator.wait_for_response(crashed)

    emulator.send_sticker(ALICE, None)
    emulator.send_text(ALICE, None, "which flower is this?")
    lang = emulator.send_command(BOB, None, "lang", "zh")
    await emulator.wait_for_response(lang)

    # Bob blocks the bot before his photo is answered.
    emulator.block_user(BOB["id"])
    emulator.send_photo(BOB, None, small_jpeg(6))
    await emulator.wait_for_call("sendMessage", lambda call: call.status == 403 and call.params.get("chat_id") == BOB["id"])
    await emulator.wait_until_idle()
    assert process.returncode is None, "the bot died during the session"


async def test_token_found_nowhere(flowers5_bundle_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    database = data_dir / "flowerbot.db"
    log_path = tmp_path / "bot.log"

    async with TelegramEmulator(realistic_token()) as emulator:
        token = emulator.token
        environment = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPOSITORY_ROOT),
            "TELEGRAM_BOT_TOKEN": token,
            "TELEGRAM_BASE_URL": emulator.base_url,
            "TELEGRAM_BASE_FILE_URL": emulator.base_file_url,
            "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "DATA_DIR": str(data_dir),
            "MODEL_PATH": str(flowers5_bundle_dir),
            "DEVICE": "cpu",
            "HTTP_PORT": "0",
            "LOG_LEVEL": "DEBUG",
        }
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", cwd=tmp_path, env=environment, stdout=log_file, stderr=log_file
            )
            try:
                await emulator.wait_for_call("getUpdates", timeout=START_TIMEOUT_S)
                await run_session(emulator, process)
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 60)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        assert process.returncode == 0
        sent_texts = [message.get("text") or message.get("caption") or "" for message in emulator.sent_messages()]
        sent_texts += [answer.get("text") or "" for answer in emulator.callback_answers.values()]

    log_bytes = log_path.read_bytes()
    log_text = log_bytes.decode("utf-8", errors="replace")
    # The session reached the paths it was meant to: debug records, caught errors, a traceback.
    assert " DEBUG " in log_text
    assert "download failed" in log_text
    assert "Traceback" in log_text
    assert "blocked the bot" in log_text
    # The token reached the logging through error messages and was redacted there.
    assert REDACTED in log_text

    stored_values = database_values(database)
    assert stored_values, "the database is empty; the session stored nothing"
    data_files = [path for path in data_dir.rglob("*") if path.is_file()]
    assert any(path.name.startswith("flowerbot.db") for path in data_files)

    for name, needle in needles(token).items():
        leaking_lines = [line for line in log_bytes.splitlines() if needle in line]
        assert leaking_lines == [], f"the {name} is in {len(leaking_lines)} log lines, first: {first_line_masked(leaking_lines, needle)}"
        assert not any(needle.decode() in value for value in stored_values), f"the {name} is in a database row"
        for path in data_files:
            assert needle not in path.read_bytes(), f"the {name} is in {path.relative_to(data_dir)}"
            assert needle.decode() not in str(path), f"the {name} is in the path {path}"
        assert not any(needle.decode() in sent for sent in sent_texts), f"the {name} is in a message the bot sent"


def test_httpx_stays_at_warning() -> None:
    """The per-request INFO lines of httpx contain Bot API URLs, so they stay off at INFO."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), {name: logging.getLogger(name).level for name in ("httpx", "httpcore")})
    try:
        handler = configure_logging("INFO", stream=io.StringIO())
        root.removeHandler(handler)
        assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
        assert logging.getLogger("httpcore").getEffectiveLevel() == logging.WARNING
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)

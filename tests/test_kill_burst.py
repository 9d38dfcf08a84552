"""SIGKILL in the middle of a burst of photos: every photo gets exactly one answer, each with its prediction row.

`python -m bot` runs as a subprocess against the emulator. The emulator holds every
answer after the second one until the test releases it, so the kill lands while answers
are in flight. The held answers are then let through, as Telegram delivers a message
whose sender died before reading the response. The photos still being classified at the
kill were already confirmed to Telegram, so only the bot's inbox (`bot.inbox`) has
them: the restarted bot replays them and answers each once, and it does not answer
again the photos whose predictions the killed process had stored.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.emulator import JSON, TelegramEmulator, make_user
from tests.fixtures.database import selected_database_backend

pytestmark = pytest.mark.skipif(selected_database_backend() != "sqlite", reason="reads the SQLite file while the bot writes it")

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
ALICE = make_user(9701, "Alice", language_code="en")
BURST = 6
ANSWERS_BEFORE_HOLD = 2
START_TIMEOUT_S = 180


def small_jpeg(seed: int) -> bytes:
    """Return a small JPEG of random blocks. Each seed gives a different picture."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blocks).resize((160, 120), Image.Resampling.NEAREST).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class AnswerGate:
    """Wraps the emulator's sendMessage: notes whether each answer's row existed, and holds later answers."""

    def __init__(self, emulator: TelegramEmulator, database: Path) -> None:
        self.emulator = emulator
        self.database = database
        self.release = asyncio.Event()
        self.passed = 0
        self.held = 0
        # (replied-to message id, whether its prediction row existed when the answer arrived)
        self.stored_at_send: list[tuple[int, bool]] = []
        self._send_message = emulator._methods["sendmessage"]
        # The emulator has no hook for delaying a method, so the test wraps its method table entry.
        emulator._methods["sendmessage"] = self._held_send_message

    def row_exists(self, chat_id: int, message_id: int) -> bool:
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as connection:
            found = connection.execute(
                "SELECT 1 FROM predictions WHERE chat_id = ? AND message_id = ?", (chat_id, message_id)
            ).fetchone()
        return found is not None

    async def _held_send_message(self, params: JSON, files: dict[str, Any]) -> JSON:
        reply_to = (params.get("reply_parameters") or {}).get("message_id")
        if reply_to is not None:
            self.stored_at_send.append((reply_to, self.row_exists(int(params["chat_id"]), reply_to)))
            if self.passed >= ANSWERS_BEFORE_HOLD and not self.release.is_set():
                self.held += 1
                self.emulator._notify()
                await self.release.wait()
            self.passed += 1
        return self._send_message(params, files)


def bot_environment(emulator: TelegramEmulator, bundle_dir: Path, data_dir: Path, database: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPOSITORY_ROOT),
        "TELEGRAM_BOT_TOKEN": emulator.token,
        "TELEGRAM_BASE_URL": emulator.base_url,
        "TELEGRAM_BASE_FILE_URL": emulator.base_file_url,
        "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "DATA_DIR": str(data_dir),
        "MODEL_PATH": str(bundle_dir),
        "DEVICE": "cpu",
        "HTTP_PORT": "0",
        # One photo classified at a time: when an answer reaches the gate, the next photo is
        # still in inference, far from the moment its prediction is stored and answered.
        "INFERENCE_WORKERS": "1",
        "BATCH_MAX_SIZE": "1",
    }


async def start_bot(emulator: TelegramEmulator, environment: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    """Start `python -m bot` and wait until it polls for updates."""
    polls_before = len(emulator.calls_to("getUpdates"))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=cwd, env=environment, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await emulator.wait_for(lambda: len(emulator.calls_to("getUpdates")) > polls_before, timeout=START_TIMEOUT_S)
    return process


async def stop_bot(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if process.returncode is None:
        process.send_signal(sig)
        await asyncio.wait_for(process.wait(), 60)


async def test_killed_mid_burst_answers_every_photo_once(flowers5_bundle_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    database = data_dir / "flowerbot.db"
    async with TelegramEmulator() as emulator:
        environment = bot_environment(emulator, flowers5_bundle_dir, data_dir, database)
        gate = AnswerGate(emulator, database)
        first = await start_bot(emulator, environment, tmp_path)
        second = None
        try:
            photos = [emulator.send_photo(ALICE, None, small_jpeg(seed)) for seed in range(BURST)]
            await emulator.wait_for(lambda: gate.passed >= ANSWERS_BEFORE_HOLD and gate.held >= 1, timeout=120)

            first.send_signal(signal.SIGKILL)
            await asyncio.wait_for(first.wait(), 60)
            assert first.returncode == -signal.SIGKILL
            # Answers the dead process had sent reach the chat anyway.
            gate.release.set()
            await emulator.wait_for(lambda: gate.passed == len(gate.stored_at_send), timeout=30)
            answered_at_kill = [photo for photo in photos if emulator.replies_to(photo)]
            assert ANSWERS_BEFORE_HOLD < len(answered_at_kill) < BURST

            second = await start_bot(emulator, environment, tmp_path)
            after_restart = emulator.send_photo(ALICE, None, small_jpeg(BURST))
            await emulator.wait_for_reply(after_restart, timeout=120)
            await emulator.wait_for(lambda: all(emulator.replies_to(photo) for photo in photos), timeout=120)
            await emulator.wait_until_idle()
        finally:
            gate.release.set()
            await stop_bot(first, signal.SIGKILL)
            if second is not None:
                await stop_bot(second, signal.SIGTERM)
        assert second.returncode == 0

        replied_to = [sent["reply_to_message"]["message_id"] for sent in emulator.sent_messages(ALICE["id"]) if "reply_to_message" in sent]
        answers_per_photo = {photo["message_id"]: len(emulator.replies_to(photo)) for photo in photos}

    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT message_id, COUNT(*) FROM predictions WHERE chat_id = ? GROUP BY message_id", (ALICE["id"],)).fetchall()
    stored = dict(rows)
    missing = [message_id for message_id in replied_to if message_id not in stored]
    assert missing == [], "answers went out for predictions that are not in the database"
    assert all(count == 1 for count in stored.values()), f"duplicate prediction rows: {stored}"
    assert gate.stored_at_send, "no answer passed the gate"
    assert all(existed for _, existed in gate.stored_at_send), f"answers sent before their row was stored: {gate.stored_at_send}"
    assert after_restart["message_id"] in stored
    assert answers_per_photo == {photo["message_id"]: 1 for photo in photos}
    assert all(photo["message_id"] in stored for photo in photos)
    with sqlite3.connect(database) as connection:
        unfinished = connection.execute("SELECT update_id FROM inbox_updates WHERE finished_at IS NULL").fetchall()
    assert unfinished == []

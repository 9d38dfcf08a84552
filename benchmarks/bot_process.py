"""`python -m bot` as a child process on the Telegram emulator, for the end-to-end benchmarks.

The emulator (tests/emulator.py) runs in the benchmark's event loop on
127.0.0.1; the bot is the real entry point in its own process, so its memory
and CPU use are its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import REPO_ROOT
from tests.emulator import TelegramEmulator, make_user

logger = logging.getLogger(__name__)

# Seconds to wait for the bot to load its model and start polling.
START_TIMEOUT_S = 600
STOP_TIMEOUT_S = 60

# Run `python -m bot` with torch and torchvision made unimportable, as in an install without the torch extra.
WITHOUT_TORCH = """
import importlib.abc, runpy, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: serving without PyTorch)", name=name)
        return None

sys.meta_path.insert(0, BlockTorch())
sys.argv[0] = "bot"
runpy.run_module("bot", run_name="__main__", alter_sys=True)
"""


@dataclass
class BotProcess:
    """One `python -m bot` child with its settings in the environment."""

    emulator: TelegramEmulator
    model_path: Path
    backend: str = "torch"
    precision: str = "auto"
    block_torch: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    workdir: tempfile.TemporaryDirectory | None = None
    log_path: Path | None = None
    started_s: float = 0.0

    async def start(self) -> None:
        """Start the bot and wait until it polls for updates."""
        self.workdir = tempfile.TemporaryDirectory(prefix="flowerbot-bench-")
        work = Path(self.workdir.name)
        env = {
            **{key: value for key, value in os.environ.items() if not key.startswith(("TELEGRAM_", "MODEL_", "BACKEND", "PRECISION"))},
            "PYTHONPATH": str(REPO_ROOT),
            "TELEGRAM_BOT_TOKEN": self.emulator.token,
            "TELEGRAM_BASE_URL": self.emulator.base_url,
            "TELEGRAM_BASE_FILE_URL": self.emulator.base_file_url,
            "MODEL_PATH": str(self.model_path),
            "DATA_DIR": str(work / "data"),
            "BACKEND": self.backend,
            "PRECISION": self.precision,
            "DEVICE": "cpu",
            "HTTP_PORT": "0",
            "LOG_LEVEL": "INFO",
            **self.extra_env,
        }
        command = [sys.executable, "-c", WITHOUT_TORCH] if self.block_torch else [sys.executable, "-m", "bot"]

        self.log_path = work / "bot.log"
        log = self.log_path.open("wb")
        polls_before = len(self.emulator.calls_to("getUpdates"))
        started = time.monotonic()
        # cwd is the empty work folder, so no .env file from the repository is read.
        self.process = await asyncio.create_subprocess_exec(*command, cwd=work, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT)
        log.close()

        waiter = asyncio.ensure_future(self.emulator.wait_for_call("getUpdates", count=polls_before + 1, timeout=START_TIMEOUT_S))
        exited = asyncio.ensure_future(self.process.wait())
        done, _ = await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited in done:
            waiter.cancel()
            raise RuntimeError(f"the bot exited with status {self.process.returncode} during start-up:\n{self.log_tail()}")
        exited.cancel()
        waiter.result()
        self.started_s = time.monotonic() - started
        logger.info("bot pid %d (%s/%s%s) is polling after %.1f s", self.process.pid, self.backend, self.precision,
                    ", torch blocked" if self.block_torch else "", self.started_s)

    def status_kib(self, field_name: str) -> int:
        """Return a memory field of /proc/<pid>/status in KiB (VmRSS: now, VmHWM: the peak)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise KeyError(field_name)

    def loaded_torch(self) -> bool:
        """Return whether libtorch is mapped into the bot process."""
        return "libtorch_cpu" in Path(f"/proc/{self.process.pid}/maps").read_text()

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self) -> None:
        """Send SIGTERM and wait for a graceful exit; kill the bot when it does not exit in time."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                logger.warning("bot pid %d did not stop within %d s; killing it", self.process.pid, STOP_TIMEOUT_S)
                self.process.kill()
                await self.process.wait()
        if self.workdir is not None:
            with contextlib.suppress(OSError):
                self.workdir.cleanup()
            self.workdir = None


@dataclass
class Burst:
    """Update-to-reply seconds of one burst of photos and of a /start sent behind them."""

    photo_seconds: list[float]
    start_seconds: float
    burst_seconds: float
    photos_answered_before_start: int


async def photo_burst(emulator: TelegramEmulator, photos: list[bytes], *, first_user_id: int, timeout: float = 600) -> Burst:
    """Send each photo from its own person at once, then /start from another; wait for every answer.

    The /start is queued last, behind every photo, which is the hardest place for it.
    """
    loop = asyncio.get_running_loop()
    replies: dict[int, float] = {}

    async def record(key: int, message: dict, *, reply: bool) -> None:
        wait = emulator.wait_for_reply if reply else emulator.wait_for_response
        await wait(message, timeout=timeout)
        replies[key] = loop.time()

    sent: dict[int, float] = {}
    waiters = []
    for index, data in enumerate(photos):
        message = emulator.send_photo(make_user(first_user_id + index, f"Sender {index}"), None, data)
        sent[index] = loop.time()
        waiters.append(record(index, message, reply=True))
    start_message = emulator.send_command(make_user(first_user_id + len(photos), "Greeter"), None, "start")
    sent[-1] = loop.time()
    waiters.append(record(-1, start_message, reply=False))
    await asyncio.gather(*waiters)

    photo_seconds = [replies[index] - sent[index] for index in range(len(photos))]
    last_photo = max(replies[index] for index in range(len(photos)))
    return Burst(
        photo_seconds=photo_seconds,
        start_seconds=replies[-1] - sent[-1],
        burst_seconds=last_photo - sent[0],
        photos_answered_before_start=sum(1 for index in range(len(photos)) if replies[index] < replies[-1]),
    )

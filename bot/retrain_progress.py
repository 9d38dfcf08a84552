"""The retraining progress sent to the admin: one throttled, edited message and the texts in it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import signal
import warnings
from collections.abc import Mapping
from typing import Any

from telegram import Bot, ReplyParameters
from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError
from telegram.warnings import PTBDeprecationWarning

from bot.i18n import text
from training.gate import BASE_VAL, CORRECTIONS_HOLDOUT, GateDecision

logger = logging.getLogger(__name__)

# Maximum flood wait (seconds) that the first and the final progress message wait out; a longer one skips that send.
MAX_RETRY_AFTER_S = 60.0


def retry_after_seconds(error: RetryAfter) -> float:
    """Return the flood wait of a RetryAfter in seconds (python-telegram-bot 22 gives int or timedelta)."""
    with warnings.catch_warnings():
        # Reading it as an int is deprecated since 22.2; both types are handled here.
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


class ProgressMessage:
    """One message in the admin's chat that shows a run's progress, edited at a throttled rate.

    `update(text)` only records the newest text. A writer task edits the
    message at most once per `min_interval_s`, and only when the text differs
    from what is shown. Telegram allows a bot about 20 messages a minute in a
    group and about one a second in a chat
    (https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this);
    the default 3 s stays under both. RetryAfter is waited out. After
    Forbidden (the admin blocked the bot) nothing more is sent, and the run goes on.
    """

    def __init__(self, bot: Bot, chat_id: int, *, min_interval_s: float = 3.0) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.min_interval_s = min_interval_s
        self.message_id: int | None = None
        self.blocked = False
        self.edits = 0
        self._desired: str | None = None
        self._shown: str | None = None
        self._last_sent = -float("inf")
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._reply_to: int | None = None

    async def open(self, initial_text: str, *, reply_to_message_id: int | None = None) -> int | None:
        """Send the message (as a reply when given) and start the writer; return its id, None when sending failed."""
        self._desired = initial_text
        self._reply_to = reply_to_message_id
        await self._deliver(initial_text, max_attempts=3, max_wait_s=MAX_RETRY_AFTER_S)
        self._reply_to = None
        self._writer = asyncio.create_task(self._write_loop(), name=f"progress-message-{self.chat_id}")
        return self.message_id

    def update(self, new_text: str) -> None:
        self._desired = new_text
        self._wake.set()

    async def close(self, final_text: str | None = None) -> None:
        """Stop the writer and show `final_text`, waiting out the throttle interval first."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if final_text is None or self.blocked or final_text == self._shown:
            return
        self._desired = final_text
        delay = self._last_sent + self.min_interval_s - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        await self._deliver(final_text, max_attempts=3, max_wait_s=MAX_RETRY_AFTER_S)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.blocked:
            await self._wake.wait()
            self._wake.clear()
            delay = self._last_sent + self.min_interval_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._desired is not None and self._desired != self._shown:
                await self._deliver(self._desired, max_attempts=5)

    async def _deliver(self, new_text: str, *, max_attempts: int, max_wait_s: float | None = None) -> bool:
        """Send or edit the message; return whether `new_text` is now shown."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            for _ in range(max_attempts):
                if self.blocked:
                    return False
                try:
                    if self.message_id is None:
                        reply = ReplyParameters(self._reply_to, allow_sending_without_reply=True) if self._reply_to else None
                        message = await self.bot.send_message(self.chat_id, new_text, reply_parameters=reply)
                        self.message_id = message.message_id
                    else:
                        await self.bot.edit_message_text(new_text, chat_id=self.chat_id, message_id=self.message_id)
                        self.edits += 1
                except RetryAfter as error:
                    wait = retry_after_seconds(error)
                    if max_wait_s is not None and wait > max_wait_s:
                        logger.warning("progress message in chat %d: flood wait %.0f s is too long; skipping this edit", self.chat_id, wait)
                        return False
                    logger.info("progress message in chat %d: flood control, retrying in %.0f s", self.chat_id, wait)
                    await asyncio.sleep(wait)
                    continue
                except Forbidden as error:
                    self.blocked = True
                    logger.warning("chat %d blocked the bot (%s); the run continues without progress messages", self.chat_id, error)
                    return False
                except BadRequest as error:
                    description = error.message.lower()
                    if "message is not modified" in description:
                        self._shown = new_text
                        return True
                    if "message to edit not found" in description or "message can't be edited" in description:
                        logger.info("progress message %s in chat %d is gone; sending a new one", self.message_id, self.chat_id)
                        self.message_id = None
                        continue
                    logger.warning("progress message in chat %d rejected: %s", self.chat_id, error)
                    return False
                except TelegramError as error:
                    # Network errors and timeouts: the next update tries again.
                    logger.warning("progress message in chat %d failed: %s", self.chat_id, error)
                    return False
                self._shown = new_text
                self._last_sent = loop.time()
                return True
            return False


# ---------------------------------------------------------------------------
# Run state and texts


def percent(value: float | None, lang: str) -> str:
    return text("admin_model.not_available", lang) if value is None else f"{value * 100:.1f}%"


@dataclasses.dataclass
class RunProgress:
    """Progress of a run so far, folded from the job's events."""

    phase: str = "starting"
    features_done: int | None = None
    features_total: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    val_acc: float | None = None
    best_val_acc: float | None = None
    early_stop: dict[str, Any] | None = None
    data: dict[str, int] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None

    def apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        if kind == "phase":
            self.phase = str(event.get("phase") or self.phase)
        elif kind == "progress" and event.get("phase") == "features":
            self.features_done, self.features_total = event.get("done"), event.get("total")
        elif kind == "epoch":
            self.epoch, self.epochs = event.get("epoch"), event.get("epochs")
            self.val_acc, self.best_val_acc = event.get("val_acc"), event.get("best_val_acc")
        elif kind == "early_stop":
            self.early_stop = dict(event)
        elif kind == "data":
            self.data = {key: value for key, value in event.items() if isinstance(value, int)}
        elif kind == "result":
            self.result = dict(event)
            self.phase = "finishing"
        elif kind == "error":
            self.error = str(event.get("message") or "unknown error")

    @property
    def phase_label(self) -> str:
        """A short phase for the database row, such as `train 3/10`."""
        if self.phase == "train" and self.epoch is not None:
            return f"train {self.epoch}/{self.epochs}"
        return self.phase


def phase_name(phase: str, lang: str) -> str:
    key = f"admin_model.phase.{phase}"
    try:
        return text(key, lang)
    except KeyError:
        return phase


def progress_text(run_id: int, serving_version: str, progress: RunProgress, lang: str) -> str:
    """Return the progress message for the current state of a run."""
    lines = [
        text("admin_model.progress.header", lang, run_id=run_id, version=serving_version),
        text("admin_model.progress.phase", lang, phase=phase_name(progress.phase, lang)),
    ]
    if progress.data is not None:
        keys = ("corrections_train", "corrections_holdout", "not_flower", "unknown_species", "skipped_unknown_label", "skipped_missing_file")
        counts = {key: progress.data.get(key, 0) for key in keys}
        lines.append(text("admin_model.progress.data", lang, **counts))
    if progress.features_total and progress.epoch is None:
        lines.append(text("admin_model.progress.features", lang, done=progress.features_done, total=progress.features_total))
    if progress.epoch is not None:
        lines.append(
            text(
                "admin_model.progress.epoch",
                lang,
                epoch=progress.epoch,
                epochs=progress.epochs,
                val_acc=percent(progress.val_acc, lang),
                best_val_acc=percent(progress.best_val_acc, lang),
            )
        )
    if progress.early_stop is not None:
        lines.append(text("admin_model.progress.early_stop", lang, epoch=progress.early_stop.get("epoch"), best_epoch=progress.early_stop.get("best_epoch")))
    return "\n".join(lines)


def gate_lines(decision: GateDecision, lang: str) -> list[str]:
    """Return one line per gate split with both models' accuracy, and a note when the holdout was empty."""
    lines = []
    for comparison in decision.comparisons:
        if comparison.skipped:
            if comparison.split == CORRECTIONS_HOLDOUT:
                lines.append(text("admin_model.result.holdout_empty", lang))
            continue
        lines.append(
            text(
                "admin_model.result.split",
                lang,
                split=text(f"admin_model.split_heading.{comparison.split}", lang),
                candidate=percent(comparison.candidate_accuracy, lang),
                serving=percent(comparison.serving_accuracy, lang),
                samples=comparison.samples,
            )
        )
    return lines


def negatives_line(data: Mapping[str, Any], lang: str) -> str:
    """Return the result line that counts the OOD negatives by kind, from the job's `data` counts."""
    return text(
        "admin_model.result.negatives",
        lang,
        not_flower=data.get("not_flower", 0),
        unknown_species=data.get("unknown_species", 0),
    )


def failed_split(decision: GateDecision) -> str:
    """Return the split the candidate failed, from a rejected decision's reason."""
    for split in (BASE_VAL, CORRECTIONS_HOLDOUT):
        if decision.reason == f"worse_on_{split}":
            return split
    return BASE_VAL


def exit_error(returncode: int, lang: str) -> str:
    """Describe a child's exit status: a signal for a negative status (asyncio reports -N), else the number."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return text("admin_model.error.killed", lang, signal=name)
    return text("admin_model.error.exit_status", lang, status=returncode)

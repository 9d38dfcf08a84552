"""Logging of the errors that long polling (getUpdates) meets and retries.

python-telegram-bot (22.x, `telegram.ext._utils.networkloop`) retries a failed getUpdates
call forever and, without an error callback, logs a full traceback each time. It handles
RetryAfter, TimedOut and InvalidToken itself and passes every other TelegramError here.
Two processes polling with one token make Telegram reject the calls of one of them with
409 Conflict, which filled the log with identical tracebacks. `PollingErrorLog` logs one
line per error kind instead (for a conflict, with the fix), and logs later errors of a
kind at most once per interval, with their count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from telegram.error import BadRequest, Conflict, NetworkError, TelegramError

logger = logging.getLogger(__name__)

# Seconds between two log lines about the same kind of polling error.
REPEAT_LOG_INTERVAL_S = 60.0


@dataclass
class _Repeats:
    last_logged: float
    unlogged: int = 0


class PollingErrorLog:
    """The `error_callback` for `Updater.start_polling`: one log line per error kind and interval."""

    def __init__(self, interval_s: float = REPEAT_LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._repeats: dict[str, _Repeats] = {}

    def __call__(self, error: TelegramError) -> None:
        """Log `error` unless its kind was logged within the interval, in which case count it."""
        kind = type(error).__name__
        now = self._clock()
        repeats = self._repeats.get(kind)
        if repeats is not None and now - repeats.last_logged < self._interval_s:
            repeats.unlogged += 1
            return
        unlogged = repeats.unlogged if repeats is not None else 0
        self._repeats[kind] = _Repeats(last_logged=now)
        suffix = f" ({unlogged} more since the last report)" if unlogged else ""
        level, message = _describe(error)
        logger.log(level, "%s%s", message, suffix)


def _describe(error: TelegramError) -> tuple[int, str]:
    """Return the log level and the line for one polling error."""
    if isinstance(error, Conflict):
        return logging.ERROR, (
            f"getUpdates failed with a conflict ({error.message}): another process is polling with this bot "
            "token, or a webhook is set. Stop the other instance; the bot keeps retrying"
        )
    # BadRequest subclasses NetworkError in python-telegram-bot, but retrying does not cure it.
    if isinstance(error, NetworkError) and not isinstance(error, BadRequest):
        return logging.WARNING, f"getUpdates failed with a network error ({type(error).__name__}: {error.message}); retrying"
    return logging.ERROR, f"getUpdates failed ({type(error).__name__}: {error.message}); retrying"

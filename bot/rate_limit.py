"""Per-person rate limits: a sliding window of request times per Telegram user.

Two limiters share RATE_LIMIT_PER_MINUTE (requests per person in any 60 seconds):

- `images`: photos, files (each photo of an album counts) and `/top5`, the
  requests that download a file or run the model. A file counts before it is known
  to be an image, because only downloading and decoding it shows that, so a PDF
  costs a download like a photo. A person over the limit gets one message that says in how many
  seconds to try again, and nothing more until the window has room again.
- `replies`: the short answers to stickers, videos, voice messages, locations and
  plain text. Over the limit these are dropped without a reply, so a flood of
  stickers cannot make the bot flood the chat or hit Telegram's limits.

The limiters live in the bot process's memory, so a restart clears them. Handlers
run on one event loop and `acquire` never awaits, so no lock is needed.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.context import BotContext

logger = logging.getLogger(__name__)

WINDOW_S = 60.0
# Once this many people are tracked, people whose windows are empty are forgotten.
PRUNE_THRESHOLD = 10_000

IMAGES = "images"
REPLIES = "replies"
_EXTRAS_KEY = "rate_limiters"


@dataclass(frozen=True)
class Decision:
    """The outcome of one `RateLimiter.acquire` call."""

    allowed: bool
    # Seconds until the window has room for one more request, or 0 when allowed.
    retry_after_s: float = 0.0
    # True for the first rejection since the person's last allowed request, so the
    # caller tells the person once instead of answering every rejected message.
    notify: bool = False

    @property
    def retry_after_whole_s(self) -> int:
        """`retry_after_s` rounded up to whole seconds, at least 1, for messages."""
        return max(1, math.ceil(self.retry_after_s))


class RateLimiter:
    """Allows at most `limit` requests per key in any `window_s` seconds."""

    def __init__(
        self,
        limit: int,
        *,
        window_s: float = WINDOW_S,
        name: str = "requests",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.limit = limit
        self.window_s = window_s
        self.name = name
        self._clock = clock
        self._times: dict[int, deque[float]] = {}
        self._notified: set[int] = set()
        self.rejected = 0

    def __len__(self) -> int:
        """Return the number of keys tracked now."""
        return len(self._times)

    def acquire(self, key: int) -> Decision:
        """Count a request for `key` when the window has room, or else return when to retry."""
        now = self._clock()
        times = self._times.get(key)
        if times is None:
            if len(self._times) >= PRUNE_THRESHOLD:
                self._prune(now)
            times = self._times[key] = deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()

        if len(times) < self.limit:
            times.append(now)
            self._notified.discard(key)
            return Decision(allowed=True)

        self.rejected += 1
        retry_after_s = times[0] + self.window_s - now
        notify = key not in self._notified
        self._notified.add(key)
        if notify:
            logger.info("user %d is over the %s limit (%d per %g s); retry in %.1f s", key, self.name, self.limit, self.window_s, retry_after_s)
        else:
            logger.debug("user %d is still over the %s limit; request dropped", key, self.name)
        return Decision(allowed=False, retry_after_s=retry_after_s, notify=notify)

    def _prune(self, now: float) -> None:
        expired = [key for key, times in self._times.items() if not times or times[-1] <= now - self.window_s]
        for key in expired:
            del self._times[key]
            self._notified.discard(key)
        logger.debug("%s limiter forgot %d people with empty windows", self.name, len(expired))


def get_rate_limiter(bot_context: BotContext, kind: str = IMAGES) -> RateLimiter:
    """Return the bot's limiter of `kind` (`images` or `replies`), created on first use."""
    if kind not in (IMAGES, REPLIES):
        raise ValueError(f"unknown rate limiter {kind!r}; expected {IMAGES!r} or {REPLIES!r}")
    limiters: dict[str, RateLimiter] = bot_context.extras.setdefault(_EXTRAS_KEY, {})
    limiter = limiters.get(kind)
    if limiter is None:
        limiter = RateLimiter(bot_context.settings.rate_limit_per_minute, name=kind)
        limiters[kind] = limiter
    return limiter

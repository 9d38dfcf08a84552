"""Process-wide logging setup: one handler on the root logger, plain text or JSON lines.

`configure_logging` is called once at start-up, before anything logs. Every record that
reaches the root handler passes `RedactSecretsFilter`, which removes the bot token and
other configured secrets from the message, its arguments and the formatted traceback.
flowerbot's own code does not log secrets. The filter is a safety net for libraries that
put request URLs, which contain the token, into exception messages.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import IO, Any

logger = logging.getLogger(__name__)

REDACTED = "[REDACTED]"

# Telegram bot tokens are `<bot id>:<secret>`, for example `123456789:AAH...` (35 characters
# after the colon in practice), and appear in Bot API URLs as `bot<bot id>:<secret>`.
# The bot id is kept so a redacted URL still shows which bot it was for.
# The colon may arrive percent-encoded (`%3A`), as in the file URLs python-telegram-bot logs.
TOKEN_PATTERN = re.compile(r"(?<![A-Za-z0-9])(bot)?(\d{3,})(?::|%3[Aa])[A-Za-z0-9_-]{20,}")

# Libraries whose INFO records are per-request noise: httpx logs every Bot API call,
# including getUpdates every few seconds, and its request lines contain the token.
QUIET_LOGGERS = {"httpx": logging.WARNING, "httpcore": logging.WARNING}

TEXT_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

_HANDLER_NAME = "flowerbot"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return `text` with every secret in `secrets` and every bot token pattern replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return TOKEN_PATTERN.sub(lambda match: f"{match.group(1) or ''}{match.group(2)}:{REDACTED}", text)


class RedactSecretsFilter(logging.Filter):
    """A handler filter that rewrites each record so that no secret reaches the output.

    The message is formatted with its arguments first, because a token can hide in an
    argument as easily as in the format string. The traceback is formatted here too and
    stored in `record.exc_text`, which `logging.Formatter` then prints as it is.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # A wrong format string: print the template and the arguments as they are.
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message, self.secrets)
        record.args = None

        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object per line.

    Keys: `time` (ISO 8601, UTC), `level`, `logger`, `message`, `exception` and `stack`
    when present, and every field passed through `extra=`.
    """

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_RECORD_ATTRIBUTES and not key.startswith("_"):
                payload[key] = value
        return json.dumps(payload, ensure_ascii=False, default=str)


def parse_level(level: str | int) -> int:
    """Return the numeric logging level for a name such as `info` or a number."""
    if isinstance(level, int):
        return level
    name = level.strip().upper()
    if name.isdigit():
        return int(name)
    numeric = logging.getLevelNamesMapping().get(name)
    if numeric is None:
        accepted = ", ".join(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
        raise ValueError(f"invalid LOG_LEVEL {level!r}; use one of {accepted}")
    return numeric


def configure_logging(
    level: str | int = "INFO",
    json_output: bool = False,
    *,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install the root handler with the redaction filter and set the level.

    `secrets` are exact strings to hide (the bot token, the API token, the webhook
    secret), on top of the token pattern that is always hidden. Calling it again
    replaces the handler it installed before and leaves other handlers alone.
    Returns the installed handler.
    """
    numeric_level = parse_level(level)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
            existing.close()

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RedactSecretsFilter(secrets))
    handler.setFormatter(JsonFormatter() if json_output else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(numeric_level)

    for name, quiet_level in QUIET_LOGGERS.items():
        # These stay quiet even at DEBUG: httpx logs every request URL, and file URLs carry the bot token.
        logging.getLogger(name).setLevel(quiet_level)

    logger.debug("logging configured: level=%s json=%s", logging.getLevelName(numeric_level), json_output)
    return handler


def configure_logging_from_settings(settings: Any) -> logging.Handler:
    """Call `configure_logging` with LOG_LEVEL, LOG_JSON and every secret in `settings`."""
    secrets: list[str] = []
    for name in ("telegram_bot_token", "api_token", "metrics_token", "webhook_secret", "callback_secret"):
        value = getattr(settings, name, None)
        if value is not None:
            secrets.append(value.get_secret_value() if hasattr(value, "get_secret_value") else str(value))
    return configure_logging(settings.log_level, settings.log_json, secrets=secrets)

"""Logging set-up (redaction, JSON lines, quiet libraries) and the metrics registry."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from bot import metrics as metrics_module
from bot.logging_config import REDACTED, configure_logging, configure_logging_from_settings, parse_level, redact
from bot.metrics import Metrics
from bot.settings import Settings

TOKEN = "123456789:AAH4bq0xZ-Secret_Part_Of_The_Token_123"
OTHER_TOKEN = "987654321:BBQ_another-bots-secret-part-0123456"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the root logger and the quieted loggers back as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name, quiet_level in quiet.items():
        logging.getLogger(name).setLevel(quiet_level)


def test_redact_token_patterns() -> None:
    url = f"https://api.telegram.org/bot{TOKEN}/getUpdates"
    assert redact(url) == f"https://api.telegram.org/bot123456789:{REDACTED}/getUpdates"
    assert redact(f"token={OTHER_TOKEN}") == f"token=987654321:{REDACTED}"
    assert redact("api-token-xyz in text", ["api-token-xyz"]) == f"{REDACTED} in text"
    # Times and ratios are not tokens.
    assert redact("took 12:30 at 2024-01-01T10:20:30") == "took 12:30 at 2024-01-01T10:20:30"


def test_logging_hides_token_everywhere() -> None:
    stream = io.StringIO()
    configure_logging("INFO", False, secrets=[TOKEN, "my-api-token"], stream=stream)
    log = logging.getLogger("flowerbot.test")

    log.info("calling https://api.telegram.org/bot%s/getMe", TOKEN)
    log.info("api token is %s", "my-api-token")
    log.warning(f"format string with {OTHER_TOKEN} inside")
    try:
        raise RuntimeError(f"request to /bot{TOKEN}/sendMessage failed")
    except RuntimeError:
        log.exception("sending failed")

    output = stream.getvalue()
    assert "Secret_Part_Of_The_Token" not in output
    assert "another-bots-secret" not in output
    assert "my-api-token" not in output
    assert output.count(REDACTED) >= 4
    assert "RuntimeError" in output
    assert "sending failed" in output


def test_logging_json_lines() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", True, secrets=[TOKEN], stream=stream)
    log = logging.getLogger("flowerbot.json")

    log.debug("token %s", TOKEN, extra={"chat_id": 42})
    try:
        1 / 0
    except ZeroDivisionError:
        log.error("division failed", exc_info=True)

    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    records = [line for line in lines if line["logger"] == "flowerbot.json"]
    assert len(records) == 2
    first, second = records
    assert first["level"] == "DEBUG"
    # A configured secret is replaced whole, bot id included.
    assert first["message"] == f"token {REDACTED}"
    assert first["chat_id"] == 42
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR"
    assert "ZeroDivisionError" in second["exception"]


def test_logging_quiets_httpx() -> None:
    configure_logging("INFO", False, stream=io.StringIO())
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("httpcore").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger().level == logging.INFO

    # httpx logs request URLs, and file URLs carry the bot token, so it stays at WARNING at DEBUG too.
    configure_logging("debug", False, stream=io.StringIO())
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger().level == logging.DEBUG


def test_configure_logging_replaces_own_handler() -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    first = configure_logging("INFO", False, stream=io.StringIO())
    second = configure_logging("WARNING", True, stream=io.StringIO())

    assert len(root.handlers) == before + 1
    assert second in root.handlers
    assert first not in root.handlers
    assert root.level == logging.WARNING


def test_parse_level_rejects_unknown() -> None:
    assert parse_level("warning") == logging.WARNING
    assert parse_level(" Error ") == logging.ERROR
    assert parse_level(15) == 15
    with pytest.raises(ValueError, match="LOG_LEVEL"):
        parse_level("LOUD")


def test_configure_from_settings_hides_secrets(tmp_path) -> None:
    settings = Settings(
        _env_file=None,
        telegram_bot_token=TOKEN,
        model_path=tmp_path,
        api_token=SecretStr("api-secret-1"),
        webhook_secret=SecretStr("hook-secret-2"),
        log_level="INFO",
        log_json=False,
    )
    handler = configure_logging_from_settings(settings)
    stream = io.StringIO()
    handler.setStream(stream)

    logging.getLogger("flowerbot.settings").info("values: %s %s %s", TOKEN, "api-secret-1", "hook-secret-2")

    output = stream.getvalue()
    assert "api-secret-1" not in output
    assert "hook-secret-2" not in output
    assert "Secret_Part_Of_The_Token" not in output
    assert output.count(REDACTED) == 3


def test_metrics_registries_are_separate() -> None:
    first, second = Metrics(), Metrics()
    first.record_prediction("v1", 0.05, source="http")
    first.record_feedback("correct")
    first.record_error("decode_truncated")

    assert first.sample("flowerbot_predictions_total", {"model_version": "v1", "source": "http"}) == 1
    assert first.sample("flowerbot_prediction_duration_seconds_count", {"source": "http"}) == 1
    assert first.sample("flowerbot_feedback_total", {"kind": "correct"}) == 1
    assert first.sample("flowerbot_errors_total", {"kind": "decode_truncated"}) == 1
    assert second.sample("flowerbot_predictions_total", {"model_version": "v1", "source": "http"}) is None
    assert b"flowerbot_predictions_total" in first.render()


def test_metrics_module_helpers_use_active() -> None:
    mine = Metrics()
    previous = metrics_module.set_metrics(mine)
    try:
        metrics_module.record_prediction("v2", 0.1)
        metrics_module.record_feedback("wrong")
        metrics_module.record_error("telegram")
        assert metrics_module.get_metrics() is mine
    finally:
        metrics_module.set_metrics(previous)

    assert mine.sample("flowerbot_predictions_total", {"model_version": "v2", "source": "telegram"}) == 1
    assert mine.sample("flowerbot_feedback_total", {"kind": "wrong"}) == 1
    assert mine.sample("flowerbot_errors_total", {"kind": "telegram"}) == 1


def test_metrics_model_version_switches() -> None:
    metrics = Metrics()
    metrics.set_model_version("old")
    metrics.set_model_version("new")

    assert metrics.sample("flowerbot_model_info", {"model_version": "new"}) == 1
    assert metrics.sample("flowerbot_model_info", {"model_version": "old"}) is None

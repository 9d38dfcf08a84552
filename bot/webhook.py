"""Telegram webhook mode: updates arrive as POST requests on the bot's HTTP server.

When WEBHOOK_URL is set, `bot.http_api.build_http_app` adds the route WEBHOOK_PATH,
and the runtime calls `start_webhook` after the application starts and
`stop_webhook` before it stops. Telegram sends the secret given to `setWebhook` in
the `X-Telegram-Bot-Api-Secret-Token` header of every request
(https://core.telegram.org/bots/api#setwebhook). A request without the right
secret gets 403 and never reaches the application.

WEBHOOK_URL is the public HTTPS address that Telegram calls. When it does not end
with WEBHOOK_PATH, the path is appended: `https://bot.example.com` with the default
path registers `https://bot.example.com/telegram/webhook`. A reverse proxy must
forward that path to HTTP_HOST:HTTP_PORT.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web
from telegram import Update
from telegram.error import NetworkError, TelegramError

from bot.http_api import METRICS_KEY, RUNTIME_KEY, json_error

if TYPE_CHECKING:
    from bot.http_api import ServingRuntime
    from bot.settings import Settings

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Telegram accepts 1-256 characters from A-Z, a-z, 0-9, _ and - as the secret token.
SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,256}")
SET_WEBHOOK_ATTEMPTS = 3
SET_WEBHOOK_RETRY_DELAY_S = 2.0

SECRET_KEY = web.AppKey("webhook_secret", str)
REJECTED_KEY = web.AppKey("webhook_rejected", list)


class WebhookConfigError(ValueError):
    """WEBHOOK_URL, WEBHOOK_PATH or WEBHOOK_SECRET cannot be used."""


def webhook_secret(settings: Settings) -> str:
    """Return WEBHOOK_SECRET, or a secret derived from the bot token when it is unset.

    The derived secret is HMAC-SHA256(bot token, "flowerbot-webhook") in hex: stable
    across restarts, so a webhook set by a previous run keeps working, and unknown to
    anyone without the token.
    """
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
        if not SECRET_PATTERN.fullmatch(secret):
            raise WebhookConfigError(
                "WEBHOOK_SECRET must be 1 to 256 characters from A-Z, a-z, 0-9, '_' and '-' (a Telegram rule)"
            )
        return secret
    token = settings.telegram_bot_token.get_secret_value()
    return hmac.new(token.encode(), b"flowerbot-webhook", hashlib.sha256).hexdigest()


def webhook_public_url(settings: Settings) -> str:
    """Return the URL to register with `setWebhook`: WEBHOOK_URL with WEBHOOK_PATH appended when missing."""
    if not settings.webhook_url:
        raise WebhookConfigError("WEBHOOK_URL is not set")
    path = settings.webhook_path
    if not path.startswith("/"):
        raise WebhookConfigError(f"WEBHOOK_PATH must start with '/', got {path!r}")
    base = settings.webhook_url.rstrip("/")
    if base.endswith(path.rstrip("/")):
        return base
    return base + path


def add_webhook_route(app: web.Application, runtime: ServingRuntime) -> None:
    """Add `POST {WEBHOOK_PATH}` to `app`, which queues the updates for `runtime.application`."""
    settings = runtime.context.settings
    path = settings.webhook_path
    if not path.startswith("/"):
        raise WebhookConfigError(f"WEBHOOK_PATH must start with '/', got {path!r}")
    app[SECRET_KEY] = webhook_secret(settings)
    app[REJECTED_KEY] = [0]
    app.router.add_post(path, handle_webhook)
    logger.info("webhook route POST %s added", path)


def _log_rejection(app: web.Application, request: web.Request) -> None:
    # Log the 1st, 10th, 100th, ... rejection so a flood of bad requests cannot fill the log.
    counter = app[REJECTED_KEY]
    counter[0] += 1
    count = counter[0]
    if count == 1 or str(count).rstrip("0") == "1":
        logger.warning(
            "rejected a webhook request from %s without the right %s header (%d rejected so far)",
            request.remote,
            SECRET_HEADER,
            count,
        )


async def handle_webhook(request: web.Request) -> web.Response:
    """Check the secret header, parse the update and put it on the application's update queue."""
    expected = request.app[SECRET_KEY]
    received = request.headers.get(SECRET_HEADER, "")
    # compare_digest takes time independent of where the strings differ.
    if not hmac.compare_digest(received.encode(), expected.encode()):
        _log_rejection(request.app, request)
        request.app[METRICS_KEY].record_error("webhook_forbidden")
        return json_error(403, "forbidden", f"missing or wrong {SECRET_HEADER} header")

    try:
        data: Any = await request.json(loads=json.loads)
    except ValueError as error:
        logger.warning("webhook body is not JSON: %s", error)
        return json_error(400, "invalid_request", f"the body is not JSON: {error}")
    if not isinstance(data, dict) or "update_id" not in data:
        logger.warning("webhook body is not a Telegram update: %.200r", data)
        return json_error(400, "invalid_request", "the body is not a Telegram update (no update_id)")

    application = request.app[RUNTIME_KEY].application
    try:
        update = Update.de_json(data, application.bot)
    except (KeyError, TypeError, ValueError) as error:
        logger.warning("could not parse webhook update %s: %s", data.get("update_id"), error)
        return json_error(400, "invalid_request", f"could not parse the update: {error}")

    await application.update_queue.put(update)
    logger.debug("queued webhook update %s", update.update_id)
    return web.json_response({"ok": True})


async def start_webhook(runtime: ServingRuntime) -> str:
    """Register the webhook with Telegram (`setWebhook` with the secret) and return its URL.

    Retries network errors SET_WEBHOOK_ATTEMPTS times; raises `TelegramError` after
    that, or at once when Telegram rejects the URL.
    """
    settings = runtime.context.settings
    if not settings.http_port:
        raise WebhookConfigError("WEBHOOK_URL needs the HTTP server; set HTTP_PORT to a port, not 0")
    url = webhook_public_url(settings)
    if not url.startswith("https://"):
        # Telegram accepts only HTTPS webhooks; plain HTTP works with a local Bot API server only.
        logger.warning("WEBHOOK_URL %s is not HTTPS; api.telegram.org will reject it", url)
    secret = webhook_secret(settings)
    bot = runtime.application.bot

    for attempt in range(1, SET_WEBHOOK_ATTEMPTS + 1):
        try:
            await bot.set_webhook(url=url, secret_token=secret, allowed_updates=Update.ALL_TYPES)
            break
        except NetworkError as error:
            if attempt == SET_WEBHOOK_ATTEMPTS:
                logger.error("setWebhook failed after %d attempts: %s", attempt, error)
                raise
            logger.warning("setWebhook failed (attempt %d of %d): %s; retrying", attempt, SET_WEBHOOK_ATTEMPTS, error)
            await asyncio.sleep(SET_WEBHOOK_RETRY_DELAY_S * attempt)
    logger.info("webhook set to %s", url)
    return url


async def stop_webhook(runtime: ServingRuntime) -> None:
    """Remove the webhook with `deleteWebhook`; log and continue when Telegram cannot be reached.

    Updates sent after this wait on Telegram's side until the next start sets a
    webhook again or polling begins.
    """
    # NOTE: with two instances behind one URL (a rolling deploy), the old one's
    # deleteWebhook also unregisters the new one; run one instance per bot token.
    try:
        await runtime.application.bot.delete_webhook()
    except TelegramError as error:
        logger.warning("deleteWebhook failed, the webhook stays registered: %s", error)
        return
    logger.info("webhook deleted")

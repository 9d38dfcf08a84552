"""Build the python-telegram-bot `Application` and register the handler modules in order."""

from __future__ import annotations

import logging
from types import ModuleType

from telegram.ext import AIORateLimiter, Application

from bot.context import RUNTIME_KEY, BotContext
from bot.handlers import admin_model, admin_stats, errors, feedback, history, language, other_inputs, photos, reference, start
from bot.inbox import InboxUpdateProcessor
from bot.settings import Settings

logger = logging.getLogger(__name__)

# Registration order matters within a handler group: the first matching handler wins.
# Each module exposes `register(application)`. Add new feature modules here.
HANDLER_MODULES: tuple[ModuleType, ...] = (
    errors,
    language,
    start,
    photos,
    feedback,
    reference,
    history,
    admin_stats,
    admin_model,
    # Its fallback answers only what no module above claims (its own group, FALLBACK_GROUP).
    other_inputs,
)

# Seconds. Downloads and uploads of photos up to 20 MB get a longer write timeout.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 20.0
WRITE_TIMEOUT_S = 30.0
MEDIA_WRITE_TIMEOUT_S = 60.0
POOL_TIMEOUT_S = 10.0
# Updates handled at once: what `concurrent_updates(True)` sets in python-telegram-bot 22.
CONCURRENT_UPDATES = 256
# Retries of a request that Telegram rejected with 429 Too Many Requests, each after
# waiting the `retry_after` seconds from the response.
FLOOD_RETRIES = 3


def build_application(settings: Settings, bot_context: BotContext) -> Application:
    """Return an uninitialized `Application` for `settings` with every handler registered.

    Updates are processed concurrently, so one person's slow photo does not hold up another's.
    The update processor stores image updates in the inbox first (`bot.inbox`), so a
    restart answers the photos a crash cut off.
    Outgoing requests go through `AIORateLimiter`, which keeps under Telegram's flood limits
    (https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this) and
    retries after `RetryAfter`.
    """
    application = (
        Application.builder()
        .token(settings.telegram_bot_token.get_secret_value())
        .base_url(settings.telegram_base_url)
        .base_file_url(settings.telegram_base_file_url)
        .concurrent_updates(InboxUpdateProcessor(bot_context.repository, CONCURRENT_UPDATES))
        .rate_limiter(AIORateLimiter(max_retries=FLOOD_RETRIES))
        .connect_timeout(CONNECT_TIMEOUT_S)
        .read_timeout(READ_TIMEOUT_S)
        .write_timeout(WRITE_TIMEOUT_S)
        .media_write_timeout(MEDIA_WRITE_TIMEOUT_S)
        .pool_timeout(POOL_TIMEOUT_S)
        .build()
    )
    application.bot_data[RUNTIME_KEY] = bot_context
    for module in HANDLER_MODULES:
        module.register(application)
    logger.info("application built with handler modules: %s", ", ".join(module.__name__.rsplit(".", 1)[-1] for module in HANDLER_MODULES))
    return application

"""The global error handler: log first, then tell the person in one plain sentence.

Every exception a handler does not catch ends here. It is logged at ERROR with its
traceback and the update id, then the person gets `error.generic` in their language: as
the notice of the button they pressed, or else as a message in the chat. `Forbidden`
in a private chat means the person blocked the bot: the user is marked inactive, the
block is logged once (`Repository.mark_user_blocked` reports only the first time) and
nothing is sent. A `Forbidden` while sending the apology is handled the same way, so it
does not raise out of the error handler.
"""

from __future__ import annotations

import logging

from telegram import Update
from telegram.error import Forbidden, TelegramError
from telegram.ext import Application, ContextTypes

from bot import metrics
from bot.context import BotContext, get_bot_context
from bot.handlers.language import user_language
from bot.i18n import language_from_code, text

logger = logging.getLogger(__name__)


async def handle_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log an error raised while handling an update, then apologize to the person in their language.

    After `Forbidden` nothing is sent. In a private chat it means the person blocked the bot,
    so the user is marked inactive (logged once per block).
    """
    error = context.error
    update_id = update.update_id if isinstance(update, Update) else None
    if not isinstance(update, Update):
        logger.error("error outside an update: %r", error, exc_info=error)
        return

    user = update.effective_user
    chat = update.effective_chat
    if isinstance(error, Forbidden):
        # In a private chat Forbidden means the person blocked the bot. In a group it means
        # the bot was removed, which says nothing about the sender.
        if chat is not None and user is not None and chat.id == user.id:
            await _mark_blocked(context, update_id, user.id, error)
        else:
            logger.warning("update %s: sending to chat %s failed with Forbidden: %s", update_id, chat.id if chat else None, error)
        return

    logger.error(
        "update %s failed (user %s, chat %s): %r",
        update_id, user.id if user else None, chat.id if chat else None, error, exc_info=error,
    )
    _metrics(get_bot_context(context)).record_error("handler_failed")
    if chat is None:
        return
    try:
        lang = await user_language(get_bot_context(context), user)
    except Exception as language_error:  # noqa: BLE001 - the database may be what failed
        logger.warning("update %s: language lookup failed in the error handler: %r", update_id, language_error)
        lang = language_from_code(user.language_code if user else None)
    apology = text("error.generic", lang)

    query = update.callback_query
    if query is not None:
        try:
            # The notice stops the button's spinner. It fails when the handler has answered the query already.
            await query.answer(apology)
            return
        except TelegramError as answer_error:
            logger.info("update %s: callback query not answered with the apology: %s", update_id, answer_error)
    try:
        await context.bot.send_message(chat.id, apology)
    except Forbidden as send_error:
        if user is not None and chat.id == user.id:
            await _mark_blocked(context, update_id, user.id, send_error)
        else:
            logger.warning("update %s: sending the error message to chat %d failed with Forbidden: %s", update_id, chat.id, send_error)
    except TelegramError as send_error:
        logger.warning("update %s: could not send the error message to chat %d: %s", update_id, chat.id, send_error)


async def _mark_blocked(context: ContextTypes.DEFAULT_TYPE, update_id: int | None, user_id: int, error: Forbidden) -> None:
    try:
        newly_blocked = await get_bot_context(context).repository.mark_user_blocked(user_id)
    except Exception as storage_error:  # noqa: BLE001 - logged; the update has failed anyway
        logger.error("update %s: could not mark user %d inactive: %r", update_id, user_id, storage_error, exc_info=storage_error)
        return
    if newly_blocked:
        logger.warning("user %d blocked the bot (update %s): %s; marked inactive", user_id, update_id, error)
        _metrics(get_bot_context(context)).record_error("user_blocked")
    else:
        logger.debug("user %d is already marked inactive (update %s)", user_id, update_id)


def _metrics(bot_context: BotContext) -> metrics.Metrics:
    return bot_context.extras.get("metrics") or metrics.get_metrics()


def register(application: Application) -> None:
    """Install `handle_error` as the application's error handler."""
    application.add_error_handler(handle_error)

"""/history lists a person's last predictions; /forget deletes their photos, predictions and corrections after a confirmation."""

from __future__ import annotations

import asyncio
import logging
import time

from telegram import CallbackQuery, Message, Update, User
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes

from bot.albums import settle_albums_for_forget
from bot.callbacks import FORGET_ACTIONS, Action, InvalidCallback, action_pattern, get_signer
from bot.commands import add_menu_command
from bot.context import BotContext, get_bot_context
from bot.handlers.feedback import answer_query, class_display_name, edit_message
from bot.handlers.language import user_language
from bot.i18n import text
from bot.answers import format_percent
from bot.keyboards import forget_markup
from storage.repository import HistoryEntry

logger = logging.getLogger(__name__)

DEFAULT_HISTORY_LENGTH = 10
MAX_HISTORY_LENGTH = 30
# A /forget confirmation older than this many minutes no longer deletes anything.
FORGET_CONFIRMATION_MINUTES = 15


# -- /history -----------------------------------------------------------------


def format_history_line(bot_context: BotContext, entry: HistoryEntry, lang: str) -> str:
    """Return one /history line: date, top-1 with its confidence, and the person's feedback."""
    prediction, correction = entry
    top = prediction.top_k[0] if prediction.top_k else {}
    line = text(
        "history.line",
        lang,
        date=prediction.created_at.strftime("%Y-%m-%d %H:%M"),
        name=class_display_name(bot_context, top.get("class_id"), lang),
        percent=format_percent(float(top.get("probability", 0.0))),
    )
    if correction is None:
        feedback = text("history.no_feedback", lang)
    elif correction.kind == "not_flower":
        feedback = text("history.not_flower", lang)
    elif correction.kind == "unknown_species":
        feedback = text("history.unknown_species", lang)
    elif correction.label == prediction.top1_class_id:
        feedback = text("history.confirmed", lang)
    else:
        feedback = text("history.corrected", lang, name=class_display_name(bot_context, correction.label, lang))
    return f"{line} · {feedback}"


async def history_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Send the person's last predictions (`/history [count]`), newest first, with their feedback."""
    message, user = update.effective_message, update.effective_user
    if message is None or user is None:
        return
    bot_context = get_bot_context(context)
    lang = await user_language(bot_context, user)

    limit = DEFAULT_HISTORY_LENGTH
    if context.args:
        try:
            limit = min(max(int(context.args[0]), 1), MAX_HISTORY_LENGTH)
        except ValueError:
            logger.debug("/history argument %r is not a number; using %d", context.args[0], limit)

    entries = await bot_context.repository.history(user.id, limit)
    if not entries:
        await message.reply_text(text("history.empty", lang), do_quote=True)
        return
    lines = [text("history.title", lang, count=len(entries))]
    lines.extend(f"{number}. {format_history_line(bot_context, entry, lang)}" for number, entry in enumerate(entries, 1))
    await message.reply_text("\n".join(lines), do_quote=True)


# -- /forget ------------------------------------------------------------------


def _current_minute() -> int:
    return int(time.time()) // 60


async def forget_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Ask the person to confirm deleting all their photos, answers and corrections."""
    message, user = update.effective_message, update.effective_user
    if message is None or user is None:
        return
    bot_context = get_bot_context(context)
    lang = await user_language(bot_context, user)
    markup = forget_markup(bot_context, user.id, lang, asked_minute=_current_minute())
    await message.reply_text(text("forget.question", lang), reply_markup=markup, do_quote=True)


def _delete_files(bot_context: BotContext, paths: list[str]) -> int:
    """Delete image files through the image store; return how many were deleted."""
    deleted = 0
    for path in paths:
        try:
            if bot_context.images.delete(path):
                deleted += 1
        except (OSError, ValueError):
            logger.exception("deleting image %s failed; the database rows are already gone", path)
    return deleted


async def forget_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Handle "Yes, delete everything" and "Cancel" under a /forget question."""
    query = update.callback_query
    if query is None:
        return
    bot_context = get_bot_context(context)
    presser = update.effective_user
    lang = await user_language(bot_context, presser)
    try:
        await _handle_forget_press(bot_context, query, presser, lang)
    except Exception:
        # Answer so the client stops waiting, then let the application's error handler log it.
        await answer_query(query, text("feedback.notice.failed", lang))
        raise


async def _handle_forget_press(bot_context: BotContext, query: CallbackQuery, presser: User | None, lang: str) -> None:
    message = query.message if isinstance(query.message, Message) else None
    try:
        data = get_signer(bot_context).decode(query.data)
    except InvalidCallback as error:
        logger.warning("rejected /forget callback from user %s: %s", presser.id if presser else None, error)
        await answer_query(query, text("feedback.notice.invalid_button", lang))
        return
    if presser is None or data.subject != presser.id:
        logger.info("user %s pressed the /forget button of user %d; rejected", presser.id if presser else None, data.subject)
        await answer_query(query, text("forget.only_owner", lang))
        return

    if data.action is Action.FORGET_CANCEL:
        await answer_query(query, text("forget.cancelled", lang))
        if message is not None:
            await edit_message(message, markup=None, new_text=text("forget.cancelled", lang))
        return

    age_minutes = _current_minute() - data.argument
    if not 0 <= age_minutes <= FORGET_CONFIRMATION_MINUTES:
        await answer_query(query, text("forget.expired", lang))
        if message is not None:
            await edit_message(message, markup=None, new_text=text("forget.expired", lang))
        return

    # Albums still being collected are dropped, and rows of albums being answered are stored before the delete.
    discarded_albums = await settle_albums_for_forget(bot_context, presser.id)
    had_predictions = await bot_context.repository.latest_prediction(presser.id) is not None
    paths = await bot_context.repository.forget_user(presser.id)
    logger.info("user %d: predictions and corrections deleted; deleting %d image files", presser.id, len(paths))
    # Answer before deleting files, which may take a while on a slow disk.
    done = text("forget.done", lang) if had_predictions or discarded_albums else text("forget.nothing", lang)
    await answer_query(query, done)
    deleted = await asyncio.to_thread(_delete_files, bot_context, paths)
    logger.info("user %d: deleted %d of %d image files", presser.id, deleted, len(paths))
    if message is not None:
        await edit_message(message, markup=None, new_text=done)


def register(application: Application) -> None:
    """Add /history, /forget and the /forget confirmation buttons, and list both commands in the menu."""
    add_menu_command("history", "history.command_description")
    add_menu_command("forget", "forget.command_description")
    application.add_handler(CommandHandler("history", history_command))
    application.add_handler(CommandHandler("forget", forget_command))
    application.add_handler(CallbackQueryHandler(forget_button, pattern=action_pattern(FORGET_ACTIONS)))

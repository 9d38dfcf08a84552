"""Each person's language: Telegram's language code unless they chose one with /lang.

`/lang en` and `/lang zh` store a choice, `/lang auto` removes it, and `/lang` alone
offers both languages as buttons. The choice lives in the users table, so it survives a
restart. Every update from a person also refreshes their users row (name, language code,
active again after a block) before any other handler runs.
"""

from __future__ import annotations

import logging

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update, User
from telegram.error import BadRequest
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes, TypeHandler

from bot.context import BotContext, get_bot_context
from bot.i18n import LANGUAGES, language_from_code, text

logger = logging.getLogger(__name__)

# Runs before every other group, including the feedback module's group -1.
USER_TRACKING_GROUP = -100
CALLBACK_PREFIX = "lang:"
CALLBACK_PATTERN = rf"^{CALLBACK_PREFIX}({'|'.join(LANGUAGES)})$"
RESET_ARGUMENTS = frozenset({"auto", "reset"})
LANGUAGE_ALIASES = {"en": "en", "english": "en", "zh": "zh", "cn": "zh", "chinese": "zh", "中文": "zh"}


async def user_language(bot_context: BotContext, user: User | None) -> str:
    """Return `en` or `zh` for a Telegram user: their /lang choice, else their client's language code."""
    if user is None:
        return language_from_code(None)
    stored = await bot_context.repository.get_user(user.id)
    if stored is not None and stored.language:
        return stored.language
    return language_from_code(user.language_code)


async def track_user(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Store or refresh the sender's users row; writes only when something changed."""
    user = update.effective_user
    if user is None or user.is_bot:
        return
    repository = get_bot_context(context).repository
    stored = await repository.get_user(user.id)
    unchanged = (
        stored is not None
        and stored.is_active
        and stored.username == user.username
        and stored.first_name == user.first_name
        and stored.language_code == user.language_code
    )
    if unchanged:
        return
    await repository.upsert_user(
        user.id, username=user.username, first_name=user.first_name, language_code=user.language_code
    )
    if stored is None:
        logger.info("new user %d (language code %s)", user.id, user.language_code)


def language_markup() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(text(f"lang.button.{lang}", lang), callback_data=f"{CALLBACK_PREFIX}{lang}") for lang in LANGUAGES]]
    )


async def lang_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Set, reset or offer the person's language."""
    message = update.effective_message
    user = update.effective_user
    if message is None or user is None:
        return
    bot_context = get_bot_context(context)
    current = await user_language(bot_context, user)
    if not context.args:
        await message.reply_text(text("lang.choose", current), reply_markup=language_markup())
        return

    choice = context.args[0].strip().lower()
    if choice in RESET_ARGUMENTS:
        await bot_context.repository.set_user_language(user.id, None)
        lang = language_from_code(user.language_code)
        logger.info("user %d follows the Telegram language again (%s)", user.id, lang)
        await message.reply_text(text("lang.reset", lang))
        return
    lang = LANGUAGE_ALIASES.get(choice) or ("zh" if choice.startswith("zh-") else None)
    if lang is None:
        await message.reply_text(text("lang.unknown", current, value=context.args[0][:32]))
        return
    await bot_context.repository.set_user_language(user.id, lang)
    logger.info("user %d chose language %s", user.id, lang)
    await message.reply_text(text("lang.set", lang))


async def lang_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Store the language of the pressed button for the person who pressed it."""
    query = update.callback_query
    if query is None or query.data is None:
        return
    lang = query.data.removeprefix(CALLBACK_PREFIX)
    if not query.data.startswith(CALLBACK_PREFIX) or lang not in LANGUAGES:
        # python-telegram-bot hands empty callback data to every pattern handler, so it lands here too.
        bot_context = get_bot_context(context)
        logger.warning("rejected language button data from user %d (%d bytes)", query.from_user.id, len(query.data.encode("utf-8")))
        await query.answer(text("feedback.notice.invalid_button", await user_language(bot_context, query.from_user)))
        return
    await get_bot_context(context).repository.set_user_language(query.from_user.id, lang)
    logger.info("user %d chose language %s by button", query.from_user.id, lang)
    confirmation = text("lang.set", lang)
    await query.answer(confirmation)
    # In a group the buttons serve everyone, so the message stays and only the presser sees the notice.
    if query.message is None or query.message.chat.type != "private":
        return
    try:
        await query.edit_message_text(confirmation)
    except BadRequest as error:
        # A second press of the same button would not change the message.
        logger.info("language message not edited: %s", error)


def register(application: Application) -> None:
    """Add the user tracking pre-handler, /lang and its buttons."""
    application.add_handler(TypeHandler(Update, track_user), group=USER_TRACKING_GROUP)
    application.add_handler(CommandHandler("lang", lang_command))
    application.add_handler(CallbackQueryHandler(lang_button, pattern=CALLBACK_PATTERN))

"""/start and /help: what the bot does and what to send it."""

from __future__ import annotations

from telegram import Update
from telegram.ext import Application, CommandHandler, ContextTypes

from bot.commands import menu_commands
from bot.context import get_bot_context
from bot.handlers.language import user_language
from bot.i18n import text


def help_text(lang: str) -> str:
    """Return the help message in `lang`, with one line per command of the public menu."""
    lines = [
        text("help.command_line", lang, command=entry.command, description=text(entry.description_key, lang))
        for entry in menu_commands()
    ]
    return text("help.text", lang, commands="\n".join(lines))


async def start_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet the person and say what to send."""
    message = update.effective_message
    user = update.effective_user
    if message is None or user is None:
        return
    lang = await user_language(get_bot_context(context), user)
    await message.reply_text(text("start.welcome", lang, name=user.first_name))


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain what to send and list the commands."""
    message = update.effective_message
    if message is None:
        return
    lang = await user_language(get_bot_context(context), update.effective_user)
    await message.reply_text(help_text(lang))


def register(application: Application) -> None:
    """Add /start and /help."""
    application.add_handler(CommandHandler("start", start_command))
    application.add_handler(CommandHandler("help", help_command))

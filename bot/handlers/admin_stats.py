"""/stats for the admins in ADMIN_IDS: predictions, feedback share, accuracy by model version, confused pairs."""

from __future__ import annotations

import logging
from typing import Any

from telegram import Update
from telegram.ext import Application, CommandHandler, ContextTypes

from bot.commands import add_menu_command
from bot.context import BotContext, get_bot_context
from bot.handlers.feedback import class_display_name
from bot.handlers.language import user_language
from bot.i18n import text

logger = logging.getLogger(__name__)

MAX_CONFUSED_PAIRS = 10


def _percent(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.1f}%"


def format_stats(bot_context: BotContext, stats: dict[str, Any], lang: str) -> str:
    """Return the /stats message for the dict `Repository.stats()` returns."""
    by_kind = stats["feedback_by_kind"]
    sections = [
        text("stats.title", lang),
        text(
            "stats.totals",
            lang,
            predictions=stats["predictions"],
            with_feedback=stats["with_feedback"],
            feedback_share=_percent(stats["feedback_share"]),
            confirmed=by_kind.get("confirmed", 0),
            corrected=by_kind.get("corrected", 0),
            not_flower=by_kind.get("not_flower", 0),
            unknown_species=by_kind.get("unknown_species", 0),
        ),
    ]

    version_lines = [text("stats.by_version.title", lang)]
    rated_versions = [(version, entry) for version, entry in stats["by_model"].items() if entry["with_feedback"]]
    for version, entry in rated_versions:
        version_lines.append(
            text(
                "stats.by_version.line",
                lang,
                version=version,
                accuracy=_percent(entry["accuracy"]),
                rated=entry["rated"],
                predictions=entry["predictions"],
            )
        )
    if not rated_versions:
        version_lines.append(text("stats.by_version.none", lang))
    sections.append("\n".join(version_lines))

    confused_lines = [text("stats.confused.title", lang)]
    for pair in stats["confused_pairs"]:
        confused_lines.append(
            text(
                "stats.confused.line",
                lang,
                predicted=class_display_name(bot_context, pair["predicted"], lang),
                actual=class_display_name(bot_context, pair["actual"], lang),
                count=pair["count"],
            )
        )
    if not stats["confused_pairs"]:
        confused_lines.append(text("stats.confused.none", lang))
    sections.append("\n".join(confused_lines))
    return "\n\n".join(sections)


async def stats_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Send feedback statistics to an admin; anyone else gets a short refusal and nothing more."""
    message, user = update.effective_message, update.effective_user
    if message is None or user is None:
        return
    bot_context = get_bot_context(context)
    lang = await user_language(bot_context, user)
    # Checked on every call, so a change to ADMIN_IDS needs no handler re-registration.
    if user.id not in bot_context.settings.admin_ids:
        logger.info("user %d asked for /stats but is not an admin", user.id)
        await message.reply_text(text("stats.admins_only", lang), do_quote=True)
        return
    stats = await bot_context.repository.stats(max_pairs=MAX_CONFUSED_PAIRS)
    logger.info("admin %d requested /stats", user.id)
    await message.reply_text(format_stats(bot_context, stats, lang), do_quote=True)


def register(application: Application) -> None:
    """Add /stats and list it in the admins' command menu."""
    add_menu_command("stats", "stats.command_description", admin_only=True)
    application.add_handler(CommandHandler("stats", stats_command))

"""Model administration for the admins in ADMIN_IDS: /retrain, /retrain status, /retrain cancel, /model, /rollback.

Every command checks ADMIN_IDS on each call; anyone else gets a short refusal.
The work itself is in `bot.retrain.RetrainSupervisor`.
"""

from __future__ import annotations

import datetime as dt
import logging

from telegram import Message, Update, User
from telegram.ext import Application, CommandHandler, ContextTypes

from bot.commands import add_menu_command
from bot.context import BotContext, get_bot_context
from bot.handlers.language import user_language
from bot.i18n import text
from bot.retrain import RetrainError, get_supervisor
from bot.retrain_progress import gate_lines, percent, phase_name
from classifier.bundle import BundleError
from storage.models import ModelVersion, RetrainRun
from training.gate import GateDecision

logger = logging.getLogger(__name__)

RECENT_VERSIONS = 5


async def _admin_request(update: Update, context: ContextTypes.DEFAULT_TYPE, command: str) -> tuple[BotContext, Message, User, str] | None:
    """Return the context, message, user and language for an admin's command; refuse anyone else."""
    message, user = update.effective_message, update.effective_user
    if message is None or user is None:
        return None
    bot_context = get_bot_context(context)
    lang = await user_language(bot_context, user)
    # Checked on every call, so a change to ADMIN_IDS needs no handler re-registration.
    if user.id not in bot_context.settings.admin_ids:
        logger.info("user %d sent /%s but is not an admin", user.id, command)
        await message.reply_text(text("admin_model.admins_only", lang), do_quote=True)
        return None
    return bot_context, message, user, lang


def _when(moment: dt.datetime | None, lang: str) -> str:
    if moment is None:
        return text("admin_model.not_available", lang)
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


# /retrain


async def retrain_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Start a retraining run, or with `status` / `cancel` report on or stop the one in progress."""
    request = await _admin_request(update, context, "retrain")
    if request is None:
        return
    bot_context, message, user, lang = request
    argument = (context.args[0].lower() if context.args else "").strip()
    if argument == "status":
        await message.reply_text(await retrain_status_text(bot_context, lang), do_quote=True)
    elif argument == "cancel":
        await _cancel(bot_context, message, user, lang)
    elif argument == "":
        await _start(bot_context, message, user, lang)
    else:
        await message.reply_text(text("admin_model.retrain.usage", lang), do_quote=True)


async def _start(bot_context: BotContext, message: Message, user: User, lang: str) -> None:
    supervisor = get_supervisor(bot_context)
    try:
        outcome = await supervisor.start(user.id, message.chat_id, lang, command_message_id=message.message_id)
    except RetrainError as error:
        logger.warning("admin %d: /retrain not started: %s", user.id, error)
        await message.reply_text(text(error.key, lang, **error.values), do_quote=True)
        return
    if outcome.running_run_id is not None:
        phase = phase_name((outcome.running_phase or "starting").split(" ")[0], lang)
        await message.reply_text(text("admin_model.retrain.already_running", lang, run_id=outcome.running_run_id, phase=phase), do_quote=True)
        return
    logger.info("admin %d started retrain run %s", user.id, outcome.run_id)


async def _cancel(bot_context: BotContext, message: Message, user: User, lang: str) -> None:
    outcome, run_id = await get_supervisor(bot_context).cancel()
    logger.info("admin %d: /retrain cancel: %s (run %s)", user.id, outcome, run_id)
    keys = {
        "none": "admin_model.cancel.none",
        "requested": "admin_model.cancel.requested",
        "too_late": "admin_model.cancel.too_late",
        "elsewhere": "admin_model.cancel.elsewhere",
    }
    await message.reply_text(text(keys[outcome], lang, run_id=run_id), do_quote=True)


async def retrain_status_text(bot_context: BotContext, lang: str) -> str:
    """Return the /retrain status reply: the run in progress, else the last finished run."""
    active = get_supervisor(bot_context).active
    if active is not None:
        return text(
            "admin_model.status.running",
            lang,
            run_id=active.run_id,
            phase=_phase_with_epoch(active.progress.phase_label, lang),
            elapsed=_duration(active.elapsed_s),
            admin=active.admin_user_id,
        )
    lines = [text("admin_model.status.idle", lang)]
    last = await bot_context.repository.latest_retrain_run()
    if last is not None and last.status != "running":
        lines.append(_last_run_line(last, lang))
    return "\n".join(lines)


def _phase_with_epoch(label: str, lang: str) -> str:
    phase, _, rest = label.partition(" ")
    return f"{phase_name(phase, lang)} {rest}".strip()


def _last_run_line(run: RetrainRun, lang: str) -> str:
    """Return the line about the last finished run, with its stored error on a second line."""
    details = ""
    if run.candidate_version:
        details += text("admin_model.status.candidate", lang, version=run.candidate_version)
    line = text(
        "admin_model.status.last",
        lang,
        run_id=run.id,
        status=text(f"admin_model.run_status.{run.status}", lang),
        finished=_when(run.finished_at, lang),
        details=details,
    )
    if run.error:
        # The error is stored as the run recorded it, usually in English, so it follows the translated line.
        line += "\n" + text("admin_model.error.details", lang, error=run.error)
    return line


# /model


async def model_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show the serving model's version and metrics, the rollback target and recent versions."""
    request = await _admin_request(update, context, "model")
    if request is None:
        return
    bot_context, message, _, lang = request
    await message.reply_text(await model_text(bot_context, lang), do_quote=True)


async def model_text(bot_context: BotContext, lang: str) -> str:
    """Return the /model reply."""
    repository = bot_context.repository
    serving = await repository.serving_model()
    if serving is None:
        return text("admin_model.model.none", lang, version=bot_context.service.version)
    sections = [_model_section(serving, lang)]

    previous = await repository.previous_model()
    if previous is None:
        sections.append(text("admin_model.model.no_previous", lang))
    else:
        sections.append(text("admin_model.model.previous", lang, version=previous.version))

    recent = (await repository.list_models())[-RECENT_VERSIONS:]
    lines = [text("admin_model.model.recent", lang)]
    for model in reversed(recent):
        status = text(f"admin_model.model_status.{model.status}", lang)
        lines.append(text("admin_model.model.recent_line", lang, version=model.version, status=status, created=_when(model.created_at, lang)))
    sections.append("\n".join(lines))
    return "\n\n".join(sections)


def _model_section(model: ModelVersion, lang: str) -> str:
    lines = [
        text("admin_model.model.serving", lang, version=model.version, created=_when(model.created_at, lang), promoted=_when(model.promoted_at, lang)),
        text("admin_model.model.val", lang, top1=percent(model.metrics.get("val_top1"), lang)),
    ]
    gate = model.metrics.get("gate")
    if isinstance(gate, dict):
        lines.append(text("admin_model.model.gate", lang))
        lines.extend(gate_lines(GateDecision.from_dict(gate), lang))
    return "\n".join(lines)


# /rollback


async def rollback_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Serve the previous model again, in the registry and in memory."""
    request = await _admin_request(update, context, "rollback")
    if request is None:
        return
    bot_context, message, user, lang = request
    supervisor = get_supervisor(bot_context)
    current = bot_context.service.version
    # `/rollback VERSION` serves any registered version; plain /rollback the previous one.
    requested = context.args[0].strip() if context.args else None
    if requested:
        target_version = requested
    else:
        target = await bot_context.repository.previous_model()
        target_version = target.version if target else "?"
    try:
        previous, version = await supervisor.rollback(requested or None)
    except RetrainError as error:
        logger.info("admin %d: /rollback rejected: %s", user.id, error)
        # Some RetrainErrors carry no values (a version that is not registered), so the
        # placeholders of their messages are filled from the versions this handler has.
        values = {"version": target_version, "previous": current, "error": str(error), **error.values}
        await message.reply_text(text(error.key, lang, **values), do_quote=True)
        return
    except (BundleError, OSError, RuntimeError, ValueError) as error:
        logger.exception("admin %d: /rollback to %s failed", user.id, target_version)
        detail = f"{type(error).__name__}: {error}"
        await message.reply_text(text("admin_model.rollback.failed", lang, version=target_version, error=detail, previous=current), do_quote=True)
        return
    logger.info("admin %d rolled back from %s to %s", user.id, previous, version)
    await message.reply_text(text("admin_model.rollback.done", lang, version=version, previous=previous), do_quote=True)


def register(application: Application) -> None:
    """Add /retrain, /model and /rollback, and list them in the admins' command menu."""
    add_menu_command("retrain", "admin_model.command.retrain", admin_only=True)
    add_menu_command("model", "admin_model.command.model", admin_only=True)
    add_menu_command("rollback", "admin_model.command.rollback", admin_only=True)
    application.add_handler(CommandHandler("retrain", retrain_command))
    application.add_handler(CommandHandler("model", model_command))
    application.add_handler(CommandHandler("rollback", rollback_command))

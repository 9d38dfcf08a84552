"""Corrections: the buttons under each answer and the "type the name" step.

A press is handled in this order: parse the callback data, load the prediction, verify
the signature against that row, check that the presser sent the photo, act (record a
correction, show more candidates, wait for a typed name), answer the callback query, and
only then edit messages. Every press gets one `answerCallbackQuery`, with a short notice
when nothing was done or the press was rejected.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from telegram import (
    CallbackQuery,
    ForceReply,
    InlineKeyboardMarkup,
    Message,
    ReplyParameters,
    Update,
    User,
)
from telegram.constants import ChatType, ParseMode
from telegram.error import BadRequest, TelegramError
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot import metrics
from bot.answers import format_answer
from bot.callbacks import (
    FEEDBACK_ACTIONS,
    Action,
    CallbackData,
    InvalidCallback,
    action_pattern,
    get_signer,
    prediction_binding,
)
from bot.callbacks import parse as parse_callback
from bot.context import BotContext, get_bot_context
from bot.handlers.language import user_language
from bot.honesty import assess_stored
from bot.i18n import text
from bot.keyboards import (
    CANDIDATES_PER_PAGE,
    answer_markup,
    cancel_typing_markup,
    candidates_markup,
    label_index,
    listed_indices,
    matches_markup,
    recorded_markup,
)
from bot.name_search import MAX_QUERY_CHARS, normalize_name, search_names
from storage.models import Correction, Prediction, utc_now
from storage.repository import NotFoundError, NotOwnerError

logger = logging.getLogger(__name__)

# Kind stored in `pending_inputs` while the bot waits for a typed species name.
PENDING_SPECIES_NAME = "species_name"
# A text sent this long after "Type the name" is no longer taken as the name.
PENDING_INPUT_TTL = timedelta(hours=1)
# The status paragraph the bot appends to an answer starts with this mark, so a later
# edit can replace it instead of appending a second one.
STATUS_MARK = "📝 "
# Handler group of the typed-name handler: before group 0, where generic text handlers live.
TYPED_NAME_GROUP = -1
# Handler group of the fallback for unclaimed callback data: after every feature's buttons,
# so it handles only presses that no other callback handler matches.
UNKNOWN_BUTTON_GROUP = 100

_RANKING_CACHE_KEY = "feedback_rankings"
_RANKING_CACHE_SIZE = 256


# -- message helpers, also used by /forget ------------------------------------


def is_not_modified(error: BadRequest) -> bool:
    """Return whether Telegram rejected an edit because it would not change the message."""
    return "message is not modified" in error.message.lower()


def _message_body(message: Message) -> tuple[str, str | None]:
    """Return the text (or caption) of a message and the parse mode that reproduces its formatting."""
    if message.text is not None:
        return (message.text_html, ParseMode.HTML) if message.entities else (message.text, None)
    caption = message.caption or ""
    return (message.caption_html, ParseMode.HTML) if message.caption_entities else (caption, None)


async def edit_message(
    message: Message,
    *,
    markup: InlineKeyboardMarkup | None,
    new_text: str | None = None,
    parse_mode: str | None = None,
) -> bool:
    """Edit a message's text (when `new_text` is given) and keyboard; skip edits that change nothing.

    Returns whether Telegram applied an edit. "Message is not modified" and "message to
    edit not found" (the person deleted it) are logged and treated as no-ops.
    """
    current_text, _ = _message_body(message)
    same_text = new_text is None or new_text == current_text
    if same_text and message.reply_markup == markup:
        return False
    try:
        if same_text:
            await message.edit_reply_markup(reply_markup=markup)
        elif message.text is not None:
            await message.edit_text(new_text, reply_markup=markup, parse_mode=parse_mode)
        else:
            await message.edit_caption(caption=new_text, reply_markup=markup, parse_mode=parse_mode)
    except BadRequest as error:
        if is_not_modified(error):
            logger.debug("edit of message %d in chat %d changed nothing", message.message_id, message.chat_id)
            return False
        if "message to edit not found" in error.message.lower():
            logger.info("message %d in chat %d is gone; not edited", message.message_id, message.chat_id)
            return False
        raise
    return True


async def answer_query(query: CallbackQuery, notice: str | None = None) -> None:
    """Answer a callback query, logging instead of raising when Telegram rejects the answer."""
    try:
        await query.answer(text=notice)
    except TelegramError as error:
        # An answer after about 15 s, or a second answer, is rejected; the press itself was handled.
        logger.warning("answering callback query %s failed: %s", query.id, error)


# -- answer text and keyboards ------------------------------------------------


def class_display_name(bot_context: BotContext, class_id: str | None, lang: str) -> str:
    """Return the display name of a stored class id in `lang`, or the id itself when the served label set lacks it."""
    if not class_id:
        return "?"
    labels = bot_context.service.labels
    try:
        return labels.display_name(labels.index_of(class_id), lang)
    except KeyError:
        # A class of an older label set; its id is the best name left.
        return class_id


def status_line(bot_context: BotContext, correction: Correction, lang: str) -> str:
    """Return the "Recorded: ..." line for a correction in `lang`."""
    if correction.kind == "unknown_species":
        return text("feedback.recorded.unknown_species", lang)
    if correction.kind == "not_flower" or correction.label is None:
        return text("feedback.recorded.not_flower", lang)
    name = class_display_name(bot_context, correction.label, lang)
    return text(f"feedback.recorded.{correction.kind}", lang, name=name)


def with_status(answer_text: str, status: str | None) -> str:
    """Return the answer text with its status paragraph replaced by `status` (removed for None)."""
    base = answer_text.split(f"\n\n{STATUS_MARK}", 1)[0]
    if status is None:
        return base
    return f"{base}\n\n{STATUS_MARK}{status}"


def kind_for_label(prediction: Prediction, class_id: str) -> str:
    """Return `confirmed` when `class_id` is the prediction's top-1, else `corrected`."""
    return "confirmed" if class_id == prediction.top1_class_id else "corrected"


async def _record(bot_context: BotContext, prediction: Prediction, user_id: int, *, label: str | None, kind: str) -> tuple[Correction, bool]:
    correction, changed = await bot_context.repository.record_correction(prediction.id, user_id, label=label, kind=kind)
    if changed:
        logger.info("prediction %d: user %d recorded %s %s", prediction.id, user_id, kind, label)
        (bot_context.extras.get("metrics") or metrics.get_metrics()).record_feedback(kind)
    return correction, changed


async def _show_recorded(
    bot_context: BotContext,
    context: ContextTypes.DEFAULT_TYPE,
    prediction: Prediction,
    correction: Correction,
    lang: str,
    *,
    answer_message: Message | None,
) -> None:
    """Edit the answer to show the recorded correction, with "Change" under it.

    `answer_message` is the answer as the callback query carried it. When the press came
    from another message (the list of typed-name matches, or a /top5 reply for the same
    photo), the first answer is edited by id as well.
    """
    status = status_line(bot_context, correction, lang)
    markup = recorded_markup(bot_context, prediction, lang, correction=correction)
    if answer_message is not None:
        body, parse_mode = _message_body(answer_message)
        if parse_mode == ParseMode.HTML:
            status = html.escape(status, quote=False)
        await edit_message(answer_message, markup=markup, new_text=with_status(body, status), parse_mode=parse_mode)
        if answer_message.message_id == prediction.reply_message_id:
            return
        status = status_line(bot_context, correction, lang)
    if prediction.reply_message_id is None:
        return
    # The Bot API cannot read a message's current text, so the answer is rendered again
    # from the stored top-k, is_ood and photo_count.
    # NOTE: the count of unreadable album photos is not stored, so that line is dropped.
    labels = bot_context.service.labels
    ranked = [
        (index, float(entry.get("probability", 0.0)))
        for entry in prediction.top_k or []
        if (index := label_index(labels, entry)) is not None
    ]
    assessment = assess_stored(prediction, labels, bot_context.settings)
    new_text = with_status(format_answer(labels, ranked, lang, assessment=assessment), status)
    try:
        await context.bot.edit_message_text(
            new_text, chat_id=prediction.chat_id, message_id=prediction.reply_message_id, reply_markup=markup
        )
    except BadRequest as error:
        if is_not_modified(error):
            logger.debug("answer %d already shows the recorded correction", prediction.reply_message_id)
        else:
            logger.info("editing answer %d of prediction %d failed: %s", prediction.reply_message_id, prediction.id, error)


# -- candidates after "None of these" ----------------------------------------


async def _classify_saved_image(bot_context: BotContext, prediction: Prediction) -> list[tuple[int, float | None]] | None:
    """Rank every class for the prediction's saved photo with the served model, or None when that fails."""
    try:
        data = await asyncio.to_thread(bot_context.images.read, prediction.image_path)
        result = await bot_context.service.classify(data, 1)
    except Exception:  # noqa: BLE001 - any failure falls back to label order
        logger.warning(
            "re-ranking prediction %d from %s failed; offering classes in label order",
            prediction.id,
            prediction.image_path,
            exc_info=True,
        )
        return None
    probabilities = [float(value) for value in result.probabilities]
    order = sorted(range(len(probabilities)), key=lambda index: -probabilities[index])
    return [(index, probabilities[index]) for index in order]


async def ranked_candidates(bot_context: BotContext, prediction: Prediction) -> list[tuple[int, float | None]]:
    """Return `(label index, probability or None)` for every class the answer did not list, best first.

    The stored top-k is used when it covers every class. Otherwise the saved photo is
    classified again by the served model, which may be newer than the one that answered,
    and the ranking is cached per prediction. When the photo cannot be read, the remaining
    classes come in label-set order without probabilities.
    """
    labels = bot_context.service.labels
    listed = set(listed_indices(labels, prediction))
    cache: OrderedDict[tuple[int, str], list[tuple[int, float | None]]] = bot_context.extras.setdefault(
        _RANKING_CACHE_KEY, OrderedDict()
    )
    # The binding is part of the key because SQLite may reuse a deleted prediction's id.
    cache_key = (prediction.id, prediction_binding(prediction))
    ranking = cache.get(cache_key)
    if ranking is None:
        if len(prediction.top_k or []) >= len(labels):
            ranking = [
                (index, float(entry["probability"]))
                for entry in prediction.top_k
                if (index := label_index(labels, entry)) is not None
            ]
        else:
            ranking = await _classify_saved_image(bot_context, prediction)
        if ranking is None:
            ranking = [(index, None) for index in range(len(labels))]
        else:
            cache[cache_key] = ranking
            while len(cache) > _RANKING_CACHE_SIZE:
                cache.popitem(last=False)
    else:
        cache.move_to_end(cache_key)
    return [(index, probability) for index, probability in ranking if index not in listed and 0 <= index < len(labels)]


# -- the button handler -------------------------------------------------------


@dataclass
class _Press:
    """One verified press by the sender of the photo, with what handling it needs."""

    bot_context: BotContext
    context: ContextTypes.DEFAULT_TYPE
    query: CallbackQuery
    prediction: Prediction
    data: CallbackData
    presser: User
    lang: str
    answer: Callable[..., Awaitable[None]]

    @property
    def message(self) -> Message | None:
        """The message the pressed button is under, unless Telegram no longer has it."""
        return self.query.message if isinstance(self.query.message, Message) else None


async def feedback_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Handle a press on a feedback button under an answer or under typed-name matches."""
    query = update.callback_query
    if query is None:
        return
    bot_context = get_bot_context(context)
    presser = update.effective_user
    lang = await user_language(bot_context, presser)
    answered = False

    async def answer(notice_key: str | None = None) -> None:
        nonlocal answered
        if not answered:
            answered = True
            await answer_query(query, text(notice_key, lang) if notice_key else None)

    try:
        await _handle_press(bot_context, context, query, presser, lang, answer)
    except (NotFoundError, NotOwnerError) as error:
        # The prediction was deleted by /forget between the checks and the write.
        logger.info("feedback on a prediction that changed meanwhile: %s", error)
        await answer("feedback.notice.prediction_gone")
    finally:
        if not answered:
            # Reached only when an unexpected error escapes; the application's error handler logs it.
            await answer_query(query, text("feedback.notice.failed", lang))


async def _handle_press(
    bot_context: BotContext,
    context: ContextTypes.DEFAULT_TYPE,
    query: CallbackQuery,
    presser: User | None,
    lang: str,
    answer: Callable[..., Awaitable[None]],
) -> None:
    try:
        parsed = parse_callback(query.data)
        prediction = await bot_context.repository.get_prediction(parsed.subject)
        if prediction is None:
            # A button whose prediction was deleted (by /forget), or a made-up id; nothing to change.
            await answer("feedback.notice.prediction_gone")
            return
        # The binding fails for an old button whose prediction id now belongs to a newer row.
        data = get_signer(bot_context).verify(parsed, binding=prediction_binding(prediction))
    except InvalidCallback as error:
        logger.warning(
            "rejected callback data from user %s: %s (%d bytes)",
            presser.id if presser else None,
            error,
            len((query.data or "").encode("utf-8")),
        )
        await answer("feedback.notice.invalid_button")
        return
    if presser is None or prediction.user_id != presser.id:
        logger.info(
            "user %s pressed %s on prediction %d of user %d; rejected",
            presser.id if presser else None,
            data.action.name,
            prediction.id,
            prediction.user_id,
        )
        await answer("feedback.notice.only_sender")
        return

    # Signed data copied onto a button in another chat would edit a message there.
    message = query.message
    if message is not None and message.chat.id != prediction.chat_id:
        logger.warning(
            "user %d sent the data of prediction %d (chat %d) from chat %d; rejected",
            presser.id,
            prediction.id,
            prediction.chat_id,
            message.chat.id,
        )
        await answer("feedback.notice.invalid_button")
        return

    handler = _ACTION_HANDLERS.get(data.action)
    if handler is None:
        await answer("feedback.notice.invalid_button")
        return
    await handler(_Press(bot_context, context, query, prediction, data, presser, lang, answer))


def _is_matches_list(press: _Press) -> bool:
    """Return whether the button is under a list of typed-name matches rather than under an answer.

    Only a matches list has a "Cancel" button; an answer may also be a second message
    for the same prediction, such as a /top5 reply.
    """
    message = press.message
    if message is None or message.reply_markup is None:
        return False
    return any(
        (button.callback_data or "").startswith(Action.CANCEL_TYPING.value)
        for row in message.reply_markup.inline_keyboard
        for button in row
    )


async def _on_pick(press: _Press) -> None:
    labels = press.bot_context.service.labels
    if not 0 <= press.data.argument < len(labels):
        logger.warning(
            "prediction %d: label index %d out of range for %d classes",
            press.prediction.id,
            press.data.argument,
            len(labels),
        )
        await press.answer("feedback.notice.invalid_button")
        return
    class_id = labels.class_ids[press.data.argument]
    await _record_and_show(press, label=class_id, kind=kind_for_label(press.prediction, class_id))


async def _on_not_flower(press: _Press) -> None:
    await _record_and_show(press, label=None, kind="not_flower")


async def _on_unknown_species(press: _Press) -> None:
    await _record_and_show(press, label=None, kind="unknown_species")


async def _record_and_show(press: _Press, *, label: str | None, kind: str) -> None:
    bot_context, prediction, message = press.bot_context, press.prediction, press.message
    correction, changed = await _record(bot_context, prediction, press.presser.id, label=label, kind=kind)
    # A recorded answer ends a pending "type the name" for it in this chat.
    if message is not None:
        pending = await bot_context.repository.get_pending_input(press.presser.id, message.chat_id)
        if pending is not None and pending.prediction_id == prediction.id:
            await bot_context.repository.clear_pending_input(press.presser.id, message.chat_id)
    await press.answer("feedback.notice.recorded" if changed else "feedback.notice.already_recorded")

    if message is not None and not _is_matches_list(press):
        await _show_recorded(bot_context, press.context, prediction, correction, press.lang, answer_message=message)
        return
    # The press came from the matches list: the list turns into the status line.
    if message is not None:
        await edit_message(message, markup=None, new_text=status_line(bot_context, correction, press.lang))
    await _show_recorded(bot_context, press.context, prediction, correction, press.lang, answer_message=None)


async def _on_none_of_these(press: _Press) -> None:
    """Show a page of further candidates, with "Not in this list", "Type the name" and "Back".

    When the answer already lists every class, the page has no candidates but still
    offers the other buttons, so the person can say the species is not one the model has.
    """
    labels = press.bot_context.service.labels
    remaining = len(labels) - len(listed_indices(labels, press.prediction))
    last_page = max(0, (remaining - 1) // CANDIDATES_PER_PAGE)
    page = press.data.argument
    # The count is known without ranking, so the notice can go out before the slow part.
    if remaining <= 0:
        await press.answer("feedback.notice.all_listed")
    elif page > last_page:
        # A "More" button from before a model swap that left fewer classes to offer.
        page = last_page
        await press.answer("feedback.notice.no_more_candidates")
    else:
        await press.answer()
    candidates = await ranked_candidates(press.bot_context, press.prediction) if remaining > 0 else []
    markup = candidates_markup(press.bot_context, press.prediction, press.lang, page=page, candidates=candidates)
    if press.message is not None:
        await edit_message(press.message, markup=markup)


async def _on_choices(press: _Press) -> None:
    """Show the first choices again: "Change" on a recorded answer, "Back" from the candidates."""
    await press.answer()
    if press.message is None:
        return
    # A recorded correction stays in force while the choices are open, so "About" keeps naming it.
    correction = await press.bot_context.repository.current_correction(press.prediction.id)
    # NOTE: the choices come from the stored top-k, so under a /top5 reply they list
    # the stored species (usually three) rather than the five the reply shows.
    markup = answer_markup(press.bot_context, press.prediction, press.lang, correction=correction)
    await edit_message(press.message, markup=markup)


async def _on_type_name(press: _Press) -> None:
    message = press.message
    if message is None:
        await press.answer("feedback.notice.invalid_button")
        return
    await press.bot_context.repository.set_pending_input(
        press.presser.id, message.chat_id, press.prediction.id, PENDING_SPECIES_NAME
    )
    logger.info(
        "prediction %d: waiting for a typed name from user %d in chat %d",
        press.prediction.id,
        press.presser.id,
        message.chat_id,
    )
    await press.answer("feedback.notice.type_name")

    prompt = text("feedback.type_name.prompt", press.lang)
    if message.chat.type == ChatType.PRIVATE:
        # In a private chat the bot receives every message, so the prompt needs no
        # ForceReply and can carry the Cancel button instead.
        await press.context.bot.send_message(
            message.chat_id, prompt, reply_markup=cancel_typing_markup(press.bot_context, press.prediction, press.lang)
        )
        return
    # In a group, privacy mode hides messages that do not reply to the bot. The prompt
    # replies to the person's photo, so a selective ForceReply opens the reply field for
    # that person only (https://core.telegram.org/bots/api#forcereply).
    placeholder = text("feedback.type_name.placeholder", press.lang)
    await press.context.bot.send_message(
        message.chat_id,
        prompt,
        reply_parameters=ReplyParameters(message_id=press.prediction.message_id, allow_sending_without_reply=True),
        reply_markup=ForceReply(selective=True, input_field_placeholder=placeholder),
    )


async def _on_cancel_typing(press: _Press) -> None:
    message = press.message
    if message is not None:
        await press.bot_context.repository.clear_pending_input(press.presser.id, message.chat_id)
    await press.answer("feedback.notice.typing_cancelled")
    if message is not None:
        await edit_message(message, markup=None, new_text=text("feedback.type_name.cancelled", press.lang))


_ACTION_HANDLERS: dict[Action, Callable[[_Press], Awaitable[None]]] = {
    Action.PICK: _on_pick,
    Action.NOT_FLOWER: _on_not_flower,
    Action.UNKNOWN_SPECIES: _on_unknown_species,
    Action.NONE_OF_THESE: _on_none_of_these,
    Action.CHANGE: _on_choices,
    Action.BACK: _on_choices,
    Action.TYPE_NAME: _on_type_name,
    Action.CANCEL_TYPING: _on_cancel_typing,
}


# -- typed names --------------------------------------------------------------


def replies_to_bot(message: Message, bot_id: int) -> bool:
    """Return whether `message` replies to a message that the bot sent."""
    replied = message.reply_to_message
    return replied is not None and replied.from_user is not None and replied.from_user.id == bot_id


async def typed_name(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Take a text message as the species name when the sender has a pending "type the name".

    In a private chat any text is the name. In a group only a reply to one of the bot's
    messages (the prompt, or a list of matches) is: with privacy mode off, or with the
    bot an admin, the bot also receives the conversation around it. Any other message
    passes on to the handlers of later groups, and the pending input stays.
    """
    message = update.effective_message
    user = update.effective_user
    if message is None or user is None or not message.text:
        return
    if message.chat.type != ChatType.PRIVATE and not replies_to_bot(message, context.bot.id):
        return
    bot_context = get_bot_context(context)
    repository = bot_context.repository
    pending = await repository.get_pending_input(user.id, message.chat_id)
    if pending is None or pending.kind != PENDING_SPECIES_NAME:
        return
    if utc_now() - pending.created_at > PENDING_INPUT_TTL:
        logger.info("user %d: pending species name from %s expired", user.id, pending.created_at.isoformat())
        await repository.clear_pending_input(user.id, message.chat_id)
        return
    prediction = await repository.get_prediction(pending.prediction_id)
    if prediction is None:
        await repository.clear_pending_input(user.id, message.chat_id)
        return

    lang = await user_language(bot_context, user)
    query_text = message.text.strip()
    if len(query_text) > MAX_QUERY_CHARS:
        logger.info("prediction %d: typed name of %d characters rejected as too long", prediction.id, len(query_text))
        await message.reply_text(
            text("feedback.type_name.too_long", lang, limit=MAX_QUERY_CHARS),
            reply_markup=cancel_typing_markup(bot_context, prediction, lang),
            do_quote=True,
        )
        raise ApplicationHandlerStop
    if not normalize_name(query_text):
        # Only spaces or separators: ask for the name again instead of searching for nothing.
        await message.reply_text(
            text("feedback.type_name.empty", lang), reply_markup=cancel_typing_markup(bot_context, prediction, lang), do_quote=True
        )
        raise ApplicationHandlerStop

    labels = bot_context.service.labels
    matches = search_names(labels, query_text)
    logger.info("prediction %d: typed name matched %d species", prediction.id, len(matches))
    markup = matches_markup(bot_context, prediction, lang, [match.index for match in matches])
    key = "feedback.type_name.matches" if matches else "feedback.type_name.no_match"
    await message.reply_text(text(key, lang, query=query_text), reply_markup=markup, do_quote=True)
    # The text was the name, so no generic text handler should answer it too.
    raise ApplicationHandlerStop


# -- registration -------------------------------------------------------------


async def unknown_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer a press whose callback data no other handler claims, so the client stops its spinner."""
    query = update.callback_query
    if query is None:
        return
    for group_handlers in context.application.handlers.values():
        for handler in group_handlers:
            if isinstance(handler, CallbackQueryHandler) and handler.callback is not unknown_button:
                if handler.check_update(update):
                    return
    bot_context = get_bot_context(context)
    user = update.effective_user
    logger.warning(
        "no handler for callback data from user %s (%d bytes)",
        user.id if user else None,
        len((query.data or "").encode("utf-8")),
    )
    await answer_query(query, text("feedback.notice.invalid_button", await user_language(bot_context, user)))


def register(application: Application) -> None:
    """Add the typed-name handler (group -1), the feedback buttons (group 0) and the unknown-button fallback."""
    application.add_handler(
        MessageHandler(filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, typed_name, block=True),
        group=TYPED_NAME_GROUP,
    )
    application.add_handler(CallbackQueryHandler(feedback_button, pattern=action_pattern(FEEDBACK_ACTIONS)))
    application.add_handler(CallbackQueryHandler(unknown_button), group=UNKNOWN_BUTTON_GROUP)

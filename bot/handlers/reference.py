"""Reference photos and species cards: two buttons under every answer that help check it.

- "Reference photos" sends one training photo of each listed species, as one
  media group with the species names as captions, in reply to the answer. The
  photos come from the served bundle (`classifier.references`). The button is
  left out when the bundle has none, and a press then gets a short notice.
- "About <species>" sends a card with the first listed species' names in both
  languages and a link to its Wikipedia article in the person's language. The
  card has a button for each other listed species, which switches the card in
  place.

Both only read, so anyone in the chat may press them, not only the photo's sender.
A second press within a few seconds gets a notice and nothing is sent again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from telegram import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest
from telegram.ext import Application, CallbackQueryHandler, ContextTypes

from bot.answers import chat_action, species_name
from bot.callbacks import Action, CallbackData, InvalidCallback, action_pattern, get_signer, prediction_binding
from bot.callbacks import parse as parse_callback
from bot.context import BotContext, get_bot_context
from bot.handlers.feedback import answer_query
from bot.handlers.language import user_language
from bot.i18n import text
from bot.keyboards import listed_indices, prediction_button, register_answer_rows
from bot.species_card import species_card
from classifier.references import has_reference_photos, reference_paths
from storage.models import Prediction

logger = logging.getLogger(__name__)

REFERENCE_ACTIONS = frozenset({Action.REFERENCE_PHOTOS, Action.SPECIES_CARD})
# A second press on the same button within this many seconds sends nothing again.
REPEAT_WINDOW_S = 15.0
_RECENT_KEY = "reference_recent_presses"
_FILE_IDS_KEY = "reference_file_ids"

Answer = Callable[..., Awaitable[None]]


# -- the row under every answer -------------------------------------------------


def answer_rows(bot_context: BotContext, prediction: Any, lang: str) -> list[list[InlineKeyboardButton]]:
    """Return the "Reference photos" and "About <first species>" row for an answer's keyboard."""
    signer = get_signer(bot_context)
    labels = bot_context.service.labels
    row: list[InlineKeyboardButton] = []
    if has_reference_photos(bot_context.service.bundle):
        row.append(prediction_button(signer, prediction, text("reference.button.photos", lang), Action.REFERENCE_PHOTOS))
    indices = listed_indices(labels, prediction)
    if indices:
        label = text("reference.button.about", lang, name=labels.display_name(indices[0], lang))
        row.append(prediction_button(signer, prediction, label, Action.SPECIES_CARD, indices[0]))
    return [row] if row else []


def card_markup(bot_context: BotContext, prediction: Any, shown_index: int, lang: str) -> InlineKeyboardMarkup | None:
    """Return one "About <species>" button per other listed species, or None when there is none."""
    signer = get_signer(bot_context)
    labels = bot_context.service.labels
    rows = [
        [prediction_button(signer, prediction, text("reference.button.about", lang, name=labels.display_name(index, lang)), Action.SPECIES_CARD, index)]
        for index in listed_indices(labels, prediction)
        if index != shown_index
    ]
    return InlineKeyboardMarkup(rows) if rows else None


# -- repeated presses and uploaded photos ----------------------------------------


def _claim_press(bot_context: BotContext, key: tuple) -> bool:
    """Record a press; return False when the same press was recorded within REPEAT_WINDOW_S."""
    recent: dict[tuple, float] = bot_context.extras.setdefault(_RECENT_KEY, {})
    now = time.monotonic()
    for old_key in [old for old, at in recent.items() if now - at > REPEAT_WINDOW_S]:
        del recent[old_key]
    if key in recent:
        return False
    recent[key] = now
    return True


def _release_press(bot_context: BotContext, key: tuple) -> None:
    bot_context.extras.get(_RECENT_KEY, {}).pop(key, None)


def _file_ids(bot_context: BotContext) -> dict[tuple[str, str], str]:
    """Telegram file ids of reference photos already uploaded, by (bundle version, file name)."""
    return bot_context.extras.setdefault(_FILE_IDS_KEY, {})


# -- the button handler ----------------------------------------------------------


async def reference_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Handle a press on "Reference photos" or "About <species>"."""
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
        try:
            parsed = parse_callback(query.data)
            prediction = await bot_context.repository.get_prediction(parsed.subject)
            if prediction is None:
                await answer("reference.notice.prediction_gone")
                return
            data = get_signer(bot_context).verify(parsed, binding=prediction_binding(prediction))
        except InvalidCallback as error:
            logger.warning(
                "rejected callback data from user %s: %s (%d bytes)",
                presser.id if presser else None, error, len((query.data or "").encode("utf-8")),
            )
            await answer("reference.notice.invalid_button")
            return
        if data.action == Action.REFERENCE_PHOTOS:
            await send_reference_photos(bot_context, context, query, prediction, lang, answer)
        else:
            await send_species_card(bot_context, query, prediction, data, lang, answer)
    finally:
        if not answered:
            # Reached only when an unexpected error escapes; the application's error handler logs it.
            await answer("reference.notice.failed")


def _answer_message(query: CallbackQuery) -> Message | None:
    """Return the message the pressed button is under, unless Telegram no longer has it."""
    return query.message if isinstance(query.message, Message) else None


async def send_reference_photos(
    bot_context: BotContext,
    context: ContextTypes.DEFAULT_TYPE,
    query: CallbackQuery,
    prediction: Prediction,
    lang: str,
    answer: Answer,
) -> None:
    """Send one reference photo per listed species as a media group, in reply to the answer."""
    bundle = bot_context.service.bundle
    labels = bundle.labels
    chosen = []
    for rank, index in enumerate(listed_indices(labels, prediction), start=1):
        paths = reference_paths(bundle, index)
        if paths:
            # Different answers show different photos of a species when the bundle has several.
            chosen.append((rank, index, paths[prediction.id % len(paths)]))
    if not chosen:
        logger.info("prediction %d: bundle %s has no reference photos for the listed species", prediction.id, bundle.version)
        await answer("reference.notice.none")
        return

    message = _answer_message(query)
    chat_id = message.chat_id if message is not None else prediction.chat_id
    press_key = (chat_id, prediction.id, Action.REFERENCE_PHOTOS.value, message.message_id if message else 0)
    if not _claim_press(bot_context, press_key):
        await answer("reference.notice.already_sent")
        return
    await answer()

    file_ids = _file_ids(bot_context)
    media: list[InputMediaPhoto] = []
    cache_keys: list[tuple[str, str]] = []
    for rank, index, path in chosen:
        cache_key = (bundle.version, path.name)
        photo = file_ids.get(cache_key) or await asyncio.to_thread(path.read_bytes)
        caption = text("reference.caption", lang, rank=rank, name=species_name(labels, index, lang))
        media.append(InputMediaPhoto(photo, caption=caption))
        cache_keys.append(cache_key)
    reply = ReplyParameters(message_id=message.message_id, allow_sending_without_reply=True) if message else None

    try:
        async with chat_action(context.bot, chat_id, ChatAction.UPLOAD_PHOTO):
            sent = await _send_photos(context, chat_id, media, reply)
    except BaseException:
        # Let a press after the failure try again.
        _release_press(bot_context, press_key)
        raise
    for cache_key, photo_message in zip(cache_keys, sent):
        if photo_message.photo:
            file_ids[cache_key] = photo_message.photo[-1].file_id
    logger.info("prediction %d: sent %d reference photos to chat %d", prediction.id, len(sent), chat_id)


async def _send_photos(
    context: ContextTypes.DEFAULT_TYPE, chat_id: int, media: Sequence[InputMediaPhoto], reply: ReplyParameters | None
) -> Sequence[Message]:
    # sendMediaGroup takes 2-10 items (https://core.telegram.org/bots/api#sendmediagroup); one goes by sendPhoto.
    if len(media) == 1:
        item = media[0]
        return [await context.bot.send_photo(chat_id, item.media, caption=item.caption, reply_parameters=reply)]
    return await context.bot.send_media_group(chat_id, media, reply_parameters=reply)


def _is_card(message: Message | None) -> bool:
    """Return whether `message` is a species card: every button on it opens a card."""
    if message is None or message.reply_markup is None:
        return False
    buttons = [button for row in message.reply_markup.inline_keyboard for button in row]
    return bool(buttons) and all((button.callback_data or "").startswith(Action.SPECIES_CARD.value) for button in buttons)


async def send_species_card(
    bot_context: BotContext,
    query: CallbackQuery,
    prediction: Prediction,
    data: CallbackData,
    lang: str,
    answer: Answer,
) -> None:
    """Send the species card in reply to the answer, or switch a card in place to another species."""
    labels = bot_context.service.labels
    index = data.argument
    if not 0 <= index < len(labels):
        # Signed for a label set with more classes than the one served now.
        logger.info("prediction %d: species card for class %d, but the served label set has %d", prediction.id, index, len(labels))
        await answer("reference.notice.invalid_button")
        return
    card = species_card(labels, index, lang)
    markup = card_markup(bot_context, prediction, index, lang)
    message = _answer_message(query)

    if _is_card(message):
        await answer()
        try:
            await message.edit_text(card, parse_mode=ParseMode.HTML, reply_markup=markup)
        except BadRequest as error:
            if "not modified" not in error.message.lower():
                raise
        return

    chat_id = message.chat_id if message is not None else prediction.chat_id
    press_key = (chat_id, prediction.id, Action.SPECIES_CARD.value, index, message.message_id if message else 0)
    if not _claim_press(bot_context, press_key):
        await answer("reference.notice.already_sent")
        return
    await answer()
    reply = ReplyParameters(message_id=message.message_id, allow_sending_without_reply=True) if message else None
    try:
        await query.get_bot().send_message(chat_id, card, parse_mode=ParseMode.HTML, reply_markup=markup, reply_parameters=reply)
    except BaseException:
        _release_press(bot_context, press_key)
        raise
    logger.info("prediction %d: sent the species card of %s to chat %d", prediction.id, labels.class_ids[index], chat_id)


def register(application: Application) -> None:
    """Add the reference-photo and species-card buttons under every answer, and their handler."""
    register_answer_rows(answer_rows)
    application.add_handler(CallbackQueryHandler(reference_button, pattern=action_pattern(REFERENCE_ACTIONS)))

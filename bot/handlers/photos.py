"""Photos and image files in, the most likely species out; /top5 for five of them.

A photo is classified from the largest size Telegram offers. A file sent as a document
goes through the same pipeline. Whether it is an image is decided by decoding its
content, not by its name or MIME type, and a file that is not an image gets a message
saying what to send. `/top5` works in three ways: as the caption of a photo, as a reply
to a photo (or to the bot's answer), and alone for the person's last photo in that chat.
For an album, each of the three ranks the album's photos together, as its first answer did.

Photos, files and `/top5` count against the person's RATE_LIMIT_PER_MINUTE
(`bot.rate_limit`, each photo of an album counts). Over it, the first rejected request
gets a message that says in how many seconds to try again, and later ones are dropped
until the window has room. A file that turns out not to be an image (a PDF) counts
too, because the bot only learns that by downloading it (up to 20 MB) and decoding it,
and that download is the cost the limit bounds. GIF animations arrive with a
`document` too, but Telegram has turned them into MP4 videos, so `other_inputs.py`
answers them like videos.
"""

from __future__ import annotations

import logging

from telegram import Message, MessageEntity, Update, User
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters

from bot import metrics
from bot.albums import collect_album_photo
from bot.answers import DEFAULT_TOP_K, TOP5_K, answer_image, answer_stored, message_image
from bot.context import BotContext, get_bot_context
from bot.handlers.feedback import TYPED_NAME_GROUP
from bot.handlers.language import user_language
from bot.i18n import text
from bot.rate_limit import IMAGES, get_rate_limiter

logger = logging.getLogger(__name__)

TOP5_COMMAND = "top5"
# New messages only: edited messages and channel posts are not classified.
PHOTO_FILTER = filters.UpdateType.MESSAGE & filters.PHOTO
DOCUMENT_FILTER = filters.UpdateType.MESSAGE & filters.Document.ALL & ~filters.ANIMATION


def caption_requests_top5(message: Message, bot_username: str | None) -> bool:
    """Return whether the caption carries `/top5` (or `/top5@<this bot>`)."""
    for command in message.parse_caption_entities([MessageEntity.BOT_COMMAND]).values():
        name, _, addressee = command[1:].partition("@")
        if name.lower() == TOP5_COMMAND and (not addressee or addressee.lower() == (bot_username or "").lower()):
            return True
    return False


async def within_rate_limit(bot_context: BotContext, message: Message, user: User | None, lang: str) -> bool:
    """Count a photo or /top5 against the sender's rate limit. Over it, tell them once when to retry."""
    if user is None:
        return True
    decision = get_rate_limiter(bot_context, IMAGES).acquire(user.id)
    if decision.allowed:
        return True
    (bot_context.extras.get("metrics") or metrics.get_metrics()).record_error("rate_limited")
    if decision.notify:
        await message.reply_text(text("rate_limit.images", lang, seconds=decision.retry_after_whole_s), do_quote=True)
    return False


async def image_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Classify a photo, or a file that may be an image, and reply with the answer."""
    message = update.message
    image = message_image(message)
    if message is None or image is None:
        return
    bot_context = get_bot_context(context)
    lang = await user_language(bot_context, message.from_user)
    if not await within_rate_limit(bot_context, message, message.from_user, lang):
        return
    k = TOP5_K if caption_requests_top5(message, context.bot.username) else DEFAULT_TOP_K
    if message.media_group_id is not None:
        # An album: its photos are classified together and get one answer (bot/albums.py).
        await collect_album_photo(bot_context, context.bot, message, image, k=k, lang=lang)
        return
    await answer_image(bot_context, context.bot, message, image, k=k, lang=lang)


async def top5_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Reply with the five most likely species for the photo replied to, or for the last photo."""
    message = update.effective_message
    user = update.effective_user
    if message is None or user is None:
        return
    bot_context = get_bot_context(context)
    repository = bot_context.repository
    lang = await user_language(bot_context, user)
    if not await within_rate_limit(bot_context, message, user, lang):
        return

    target = message.reply_to_message
    if target is not None:
        row = await repository.get_prediction_by_message(message.chat_id, target.message_id)
        if row is None and target.media_group_id is not None:
            # The album's prediction is keyed by its first photo, so a reply to any other photo finds it by album.
            row = await repository.get_prediction_by_media_group(message.chat_id, target.media_group_id)
        if row is None:
            row = await repository.get_prediction_by_reply(message.chat_id, target.message_id)
        if row is not None:
            await answer_stored(bot_context, context.bot, row, message, k=TOP5_K, lang=lang)
            return
        image = message_image(target)
        if image is not None:
            # The photo was never classified (sent before the bot ran, or by someone else in a group).
            # NOTE: a photo of an album that is still being collected also lands here and is stored on its own.
            sender = target.from_user
            owner_id = sender.id if sender is not None and not sender.is_bot else user.id
            await answer_image(
                bot_context, context.bot, target, image, k=TOP5_K, lang=lang, owner_id=owner_id, reply_to=message
            )
            return

    row = await repository.latest_prediction(user.id, message.chat_id)
    if row is None:
        await message.reply_text(text("top5.no_photo", lang), do_quote=True)
        return
    await answer_stored(bot_context, context.bot, row, message, k=TOP5_K, lang=lang)


async def end_pending_input(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Drop the sender's pending "type the name" in this chat when they move on to a new photo, file or command.

    Without this, ordinary text sent later would still be matched against the earlier photo.
    """
    message = update.message
    user = message.from_user if message is not None else None
    if message is None or user is None:
        return
    if await get_bot_context(context).repository.clear_pending_input(user.id, message.chat_id):
        logger.info("user %d moved on in chat %d; pending input dropped", user.id, message.chat_id)


def register(application: Application) -> None:
    """Add the photo, document and /top5 handlers.

    `end_pending_input` runs in the typed-name group, before them; its filter never
    overlaps the typed-name handler's (text that is not a command).
    """
    application.add_handler(
        MessageHandler(PHOTO_FILTER | DOCUMENT_FILTER | (filters.UpdateType.MESSAGE & filters.COMMAND), end_pending_input),
        group=TYPED_NAME_GROUP,
    )
    application.add_handler(MessageHandler(PHOTO_FILTER | DOCUMENT_FILTER, image_message))
    application.add_handler(CommandHandler(TOP5_COMMAND, top5_command))

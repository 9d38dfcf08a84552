"""Everything people send that is not a photo or an image file: a short answer, or ignored on purpose.

What the bot does with each kind of input (photos and files are in `photos.py`):

| input | private chat | group |
| --- | --- | --- |
| sticker | `input.sticker`: stickers are drawings, send a photo | ignored |
| video, video note, GIF animation | `input.video`: send a photo or a screenshot | ignored |
| voice message, audio file | `input.voice` | ignored |
| location, venue | `input.location` | ignored |
| plain text | `input.text`, unless the feedback step is waiting for a typed species name | ignored |
| a command no handler knows | `input.unknown_command` | ignored |
| contact, poll, dice, game, story and similar | `input.other` | ignored |
| edited message or caption, of any kind | ignored | ignored |
| service messages (members joined, pinned message, ...) | ignored | ignored |
| channel posts | ignored: no handler subscribes to them | |

Edited messages are ignored because the original was already answered: answering each
edit would send a second answer and store a second prediction, and an edited `/forget`
or `/retrain` would run the command again. Live locations send their updates as edits,
so they are ignored too. In groups the bot answers photos and commands only, so it
does not talk over people. The short answers count against a per-person rate limit of
their own (`bot.rate_limit`, `replies`), and over it the input gets no answer.

`register` adds two handlers: one in `EDITED_GROUP`, which stops every edited message
before any other group, and a fallback in `FALLBACK_GROUP`, which answers only messages
that no handler in group 0 or a later group claims. New feature modules therefore need
no change here, wherever they sit in `bot.app.HANDLER_MODULES`.
"""

from __future__ import annotations

import logging

from telegram import Message, MessageEntity, Update
from telegram.ext import Application, ApplicationHandlerStop, ContextTypes, MessageHandler, filters

from bot import metrics
from bot.context import get_bot_context
from bot.handlers.language import USER_TRACKING_GROUP, user_language
from bot.i18n import text
from bot.rate_limit import REPLIES, get_rate_limiter

logger = logging.getLogger(__name__)

# After the users-row refresh (group -100), before every other handler.
EDITED_GROUP = USER_TRACKING_GROUP + 10
# After group 0, where the command, photo and button handlers are.
FALLBACK_GROUP = 50

STICKER = "sticker"
VIDEO = "video"
VOICE = "voice"
LOCATION = "location"
TEXT = "text"
UNKNOWN_COMMAND = "unknown_command"
OTHER = "other"


def input_kind(message: Message) -> str | None:
    """Return the kind of a message that gets a short answer, or None for messages ignored on purpose."""
    if message.sticker is not None:
        return STICKER
    # A GIF animation also carries `document`, so it is checked before anything else file-like.
    if message.animation is not None or message.video is not None or message.video_note is not None:
        return VIDEO
    if message.voice is not None or message.audio is not None:
        return VOICE
    # A venue carries its location too.
    if message.location is not None or message.venue is not None:
        return LOCATION
    if message.text:
        entities = message.entities or ()
        if any(entity.type == MessageEntity.BOT_COMMAND and entity.offset == 0 for entity in entities):
            return UNKNOWN_COMMAND
        return TEXT
    if any(
        content is not None
        for content in (message.contact, message.poll, message.dice, message.game, message.story, message.invoice)
    ):
        return OTHER
    return None


def claimed_by_another_handler(application: Application, update: Update) -> bool:
    """Return whether a handler in group 0 or a later group, other than the fallback, accepts `update`.

    Negative groups hold pre-handlers (the users-row refresh, the typed species name)
    that look at every update and then let it pass, so they do not count.
    """
    for group, handlers in application.handlers.items():
        if group < 0 or group == FALLBACK_GROUP:
            continue
        for handler in handlers:
            if handler.check_update(update) not in (None, False):
                return True
    return False


async def ignore_edited(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stop every edited message or caption from reaching the handlers of later groups."""
    message = update.edited_message or update.edited_channel_post or update.edited_business_message
    if message is not None:
        logger.debug("ignoring an edit of message %d in chat %d", message.message_id, message.chat_id)
    raise ApplicationHandlerStop


async def other_input(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Reply to a sticker, video, voice message, location, text or unknown command with what to send."""
    message = update.message
    user = update.effective_user
    if message is None or user is None:
        return
    kind = input_kind(message)
    if kind is None:
        logger.debug("message %d in chat %d has no content the bot answers; ignored", message.message_id, message.chat_id)
        return
    if claimed_by_another_handler(context.application, update):
        return

    bot_context = get_bot_context(context)
    if not get_rate_limiter(bot_context, REPLIES).acquire(user.id).allowed:
        (bot_context.extras.get("metrics") or metrics.get_metrics()).record_error("rate_limited_reply")
        return
    lang = await user_language(bot_context, user)
    logger.info("message %d in chat %d: %s, answered with what to send", message.message_id, message.chat_id, kind)
    await message.reply_text(text(f"input.{kind}", lang), do_quote=True)


def register(application: Application) -> None:
    """Add the edited-message stop (group `EDITED_GROUP`) and the fallback answer (group `FALLBACK_GROUP`)."""
    application.add_handler(MessageHandler(filters.UpdateType.EDITED, ignore_edited), group=EDITED_GROUP)
    application.add_handler(MessageHandler(filters.UpdateType.MESSAGE & filters.ChatType.PRIVATE, other_input), group=FALLBACK_GROUP)

"""The durable inbox: image updates are stored on arrival and replayed at start when a crash cut them off.

python-telegram-bot confirms an update to Telegram (the next getUpdates offset) as soon as it has
fetched it, not when its handlers are done, and Telegram never delivers a confirmed update again
(https://core.telegram.org/bots/api#getupdates). The webhook route also responds with 200 once the
update is queued. Without the inbox, a process killed (SIGKILL, out of memory, power loss) while photos were
downloaded or classified leaves those photos unanswered.

`InboxUpdateProcessor`, set with `ApplicationBuilder.concurrent_updates`, records every update that
the photo handler takes (a photo or a document, album parts included) before the update waits for a
processing slot. It marks the update finished once its handlers have run, whether they succeeded or
raised. Commands and button presses are not recorded, because a person can simply send them again.

`replay_unfinished_updates` runs at start, before polling or the webhook takes new updates. It puts
the unfinished updates back into the application's update queue, oldest first, and drops with a
warning those that were already handled INBOX_MAX_ATTEMPTS times. The sender of a dropped photo gets
one message asking them to send it again, once per album.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError
from telegram import Bot, ReplyParameters, Update
from telegram.error import TelegramError
from telegram.ext import Application, SimpleUpdateProcessor

from bot.handlers.photos import DOCUMENT_FILTER, PHOTO_FILTER
from bot.i18n import language_from_code, text
from storage.models import utc_now

if TYPE_CHECKING:
    from storage.models import InboxUpdate, Prediction
    from storage.repository import Repository

logger = logging.getLogger(__name__)

# The updates the inbox records: those the photo handler takes.
IMAGE_UPDATE_FILTER = PHOTO_FILTER | DOCUMENT_FILTER
# Finished rows are kept this long, then deleted at start and by the hourly pruning.
INBOX_RETENTION = timedelta(days=1)
PRUNE_INTERVAL_S = 3600.0
# Errors of a failing database: SQLAlchemy's, plus OSError for a database file that became unreadable.
DATABASE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, OSError)

AlbumKey = tuple[int, str]


def carries_image(update: object) -> bool:
    """Return whether the photo handler takes this update: a new message with a photo or a document."""
    return isinstance(update, Update) and bool(IMAGE_UPDATE_FILTER.check_update(update))


def album_key(update: Update) -> AlbumKey | None:
    """Return `(chat id, media_group_id)` for a part of an album, None for any other update."""
    message = update.message
    if message is None or message.media_group_id is None:
        return None
    return (message.chat_id, message.media_group_id)


def _close_unawaited(coroutine: Awaitable[Any]) -> None:
    """Close a coroutine that will never run, so Python does not warn that it was never awaited."""
    if inspect.iscoroutine(coroutine):
        coroutine.close()


@dataclass
class AlbumHandling:
    """The handlers of one album's updates: how many are running and which have returned."""

    running: int = 0
    returned: list[int] = field(default_factory=list)
    # Set when a handler of the album stopped without returning (its task was cancelled).
    cut_off: bool = False


class InboxUpdateProcessor(SimpleUpdateProcessor):
    """A `SimpleUpdateProcessor` that stores image updates before handling them and marks them finished after.

    An update whose handling is cancelled stays unfinished, so the next start replays it.
    An album part is marked finished only when no handler of its album is running any
    more. The handler of the album's first photo waits for the others and sends the one
    reply for the whole album (`bot.albums`). A crash before that reply therefore leaves
    every part of the album unfinished, and the replay rebuilds the whole album.

    A database error while recording or marking an update is logged and the update is
    handled anyway. Such an update is not replayed after a crash.

    NOTE: the Updater queues a batch of updates and then sends the next getUpdates, which
    confirms them, without waiting for this processor. A process killed in the few
    milliseconds before an update is recorded still loses that update.
    """

    def __init__(self, repository: Repository, max_concurrent_updates: int) -> None:
        super().__init__(max_concurrent_updates)
        self.repository = repository
        self._albums: dict[AlbumKey, AlbumHandling] = {}
        self._last_prune = time.monotonic()

    # `BaseUpdateProcessor.process_update` is marked @final for type checkers only. It
    # is overridden because the Application calls it as soon as it takes an update from
    # its queue, before the update waits for one of the `max_concurrent_updates` slots.
    async def process_update(self, update: object, coroutine: Awaitable[Any]) -> None:  # type: ignore[misc]
        """Record an image update, let the Application's handlers run, then mark the update finished."""
        if not isinstance(update, Update) or not carries_image(update):
            await super().process_update(update, coroutine)
            return

        try:
            stored = await self._record(update)
        except asyncio.CancelledError:
            _close_unawaited(coroutine)
            raise
        key = album_key(update) if stored else None
        if key is not None:
            self._albums.setdefault(key, AlbumHandling()).running += 1

        completed = False
        try:
            await super().process_update(update, coroutine)
            completed = True
        except Exception:
            # The Application passes handler errors to the error handlers itself, so an
            # error here comes from python-telegram-bot. The update was handled all the same.
            completed = True
            raise
        finally:
            if stored:
                await self._handling_ended(update, key, completed=completed)

    async def _record(self, update: Update) -> bool:
        """Store the update and return whether it is in the inbox, which is False after a database error."""
        try:
            user = update.effective_user
            await self.repository.record_update(update.update_id, update.to_dict(), user.id if user is not None else None)
        except DATABASE_ERRORS as error:
            logger.error(
                "update %d could not be stored in the inbox, handling it without a replay after a crash: %r",
                update.update_id, error,
            )
            return False
        return True

    async def _handling_ended(self, update: Update, key: AlbumKey | None, *, completed: bool) -> None:
        if key is None:
            if completed:
                await self._finish([update.update_id])
            else:
                logger.warning("update %d was cut off; it stays unfinished and is replayed at the next start", update.update_id)
            return

        album = self._albums[key]
        album.running -= 1
        if completed:
            album.returned.append(update.update_id)
        else:
            album.cut_off = True
        if album.running > 0:
            return
        del self._albums[key]
        if album.cut_off:
            logger.warning(
                "album %s in chat %d was cut off; its updates stay unfinished and are replayed at the next start",
                key[1], key[0],
            )
            return
        await self._finish(album.returned)

    async def _finish(self, update_ids: Sequence[int]) -> None:
        try:
            await self.repository.finish_updates(update_ids)
        except DATABASE_ERRORS as error:
            # The next start replays these updates. It skips a photo with a stored prediction,
            # and a photo without one (an unreadable file, say) gets its message a second time.
            logger.error("updates %s could not be marked finished in the inbox: %r", list(update_ids), error)
            return
        if time.monotonic() - self._last_prune >= PRUNE_INTERVAL_S:
            self._last_prune = time.monotonic()
            await prune_finished_updates(self.repository)


async def prune_finished_updates(repository: Repository) -> int:
    """Delete the updates finished more than INBOX_RETENTION ago and return how many, 0 after a logged error."""
    try:
        deleted = await repository.delete_finished_updates(utc_now() - INBOX_RETENTION)
    except DATABASE_ERRORS as error:
        logger.error("old finished inbox updates could not be deleted: %r", error)
        return 0
    if deleted:
        logger.info("deleted %d inbox updates finished more than %s ago", deleted, INBOX_RETENTION)
    return deleted


async def stored_prediction(repository: Repository, update: Update) -> Prediction | None:
    """Return the prediction stored for the update's photo, or for its album, or None."""
    message = update.message
    if message is None:
        return None
    if message.media_group_id is not None:
        return await repository.get_prediction_by_media_group(message.chat_id, message.media_group_id)
    return await repository.get_prediction_by_message(message.chat_id, message.message_id)


@dataclass
class ReplaySummary:
    """Update ids of the unfinished updates `replay_unfinished_updates` found, by what it did with each."""

    replayed: list[int] = field(default_factory=list)
    # Already handled INBOX_MAX_ATTEMPTS times.
    dropped: list[int] = field(default_factory=list)
    # A prediction for the photo or its album was stored by the run that was cut off.
    answered: list[int] = field(default_factory=list)
    # Stored payloads python-telegram-bot could not read back.
    unreadable: list[int] = field(default_factory=list)


def _decode(row: InboxUpdate, bot: Bot) -> Update | None:
    try:
        return Update.de_json(row.payload, bot)
    except (TypeError, ValueError, KeyError) as error:
        logger.error("inbox update %d has a payload that cannot be read back, dropping it: %r", row.update_id, error)
        return None


async def _sender_language(repository: Repository, update: Update) -> str:
    """Return the sender's language: their /lang choice, else their client's language code."""
    user = update.effective_user
    if user is None:
        return language_from_code(None)
    try:
        stored = await repository.get_user(user.id)
    except DATABASE_ERRORS as error:
        logger.error("user %d: stored language could not be read, using the client's language code: %r", user.id, error)
        stored = None
    if stored is not None and stored.language:
        return stored.language
    return language_from_code(user.language_code)


async def notify_dropped(bot: Bot, repository: Repository, update: Update) -> bool:
    """Send the sender of a dropped update a request to send the photo again, and return whether it went out.

    A failed send is logged and not retried, because the update is already marked finished.
    """
    message = update.message
    if message is None:
        return False
    lang = await _sender_language(repository, update)
    try:
        await bot.send_message(
            message.chat_id,
            text("inbox.dropped", lang),
            reply_parameters=ReplyParameters(message.message_id, allow_sending_without_reply=True),
        )
    except TelegramError as error:
        logger.error(
            "dropped inbox update %d: the notice to chat %d could not be sent, not retrying: %r",
            update.update_id, message.chat_id, error,
        )
        return False
    return True


async def replay_unfinished_updates(application: Application, repository: Repository, *, max_attempts: int) -> ReplaySummary:
    """Put the unfinished inbox updates back into `application.update_queue`, oldest first.

    Call it before polling or the webhook starts, so the replayed updates come before
    new ones. It first deletes the rows finished more than INBOX_RETENTION ago. Each
    unfinished update counts one more attempt. One that had `max_attempts` already is
    dropped with a warning, because a photo that kills the process would otherwise kill
    every restart. Its sender gets one notice per dropped photo or album (`notify_dropped`).
    A database error is logged and leaves the rows for the next start.
    """
    summary = ReplaySummary()
    await prune_finished_updates(repository)
    try:
        rows = await repository.claim_unfinished_updates()
    except DATABASE_ERRORS as error:
        logger.error("unfinished inbox updates could not be read; they are replayed at the next start: %r", error)
        return summary
    if not rows:
        return summary
    logger.info("found %d unfinished inbox updates from before the restart", len(rows))

    finished: list[int] = []
    # Albums whose sender already got the dropped-photo notice in this replay.
    notified_albums: set[AlbumKey] = set()
    for row in rows:
        update = _decode(row, application.bot)
        if update is None:
            summary.unreadable.append(row.update_id)
            finished.append(row.update_id)
            continue
        chat_id = update.effective_chat.id if update.effective_chat else None
        if row.attempts > max_attempts:
            logger.warning(
                "dropping inbox update %d (chat %s): it was handled %d times without finishing (INBOX_MAX_ATTEMPTS=%d)",
                row.update_id, chat_id, row.attempts - 1, max_attempts,
            )
            summary.dropped.append(row.update_id)
            finished.append(row.update_id)
            key = album_key(update)
            if key is None or key not in notified_albums:
                if key is not None:
                    notified_albums.add(key)
                await notify_dropped(application.bot, repository, update)
            continue
        try:
            prediction = await stored_prediction(repository, update)
        except DATABASE_ERRORS as error:
            logger.error("inbox update %d: stored prediction could not be looked up, replaying it: %r", row.update_id, error)
            prediction = None
        if prediction is not None:
            # NOTE: the reply id is stored only after Telegram confirms the reply, so a row
            # without one was most likely answered while the reply request was in flight. The
            # request lasts a network round trip, far longer than the local steps between
            # storing and sending, so the photo is not answered again. A process killed in
            # those local steps leaves that photo unanswered.
            logger.info(
                "inbox update %d (chat %s): prediction %d was stored before the restart (reply %s); not replaying it",
                row.update_id, chat_id, prediction.id, prediction.reply_message_id,
            )
            summary.answered.append(row.update_id)
            finished.append(row.update_id)
            continue
        await application.update_queue.put(update)
        summary.replayed.append(row.update_id)

    if finished:
        try:
            await repository.finish_updates(finished)
        except DATABASE_ERRORS as error:
            logger.error("inbox updates %s could not be marked finished: %r", finished, error)
    logger.info(
        "inbox replay: %d replayed, %d already answered, %d dropped after %d attempts, %d unreadable",
        len(summary.replayed), len(summary.answered), len(summary.dropped), max_attempts, len(summary.unreadable),
    )
    return summary

"""Albums: photos sent together (one `media_group_id`) are classified as one plant.

Telegram delivers each photo of an album as its own update, a moment apart, and
python-telegram-bot handles them concurrently. `AlbumCollector` gathers them
per `(chat id, media_group_id)`. The first photo's handler opens the album, waits
until no photo has arrived for ALBUM_QUIET_S seconds, then answers the whole
album. The handlers of the later photos only add their photo and return. All of
this runs on the event loop, and the collector's state changes between awaits
only, so concurrent handlers need no lock.

The album's photos are classified together by averaging their logits
(`ClassifierService.classify_many`). One prediction row stores the album: it is
keyed by the album's first message, and carries `media_group_id` and
`photo_count`. Every classified photo is saved and gets a `prediction_images`
row in album order, so /forget deletes them all and a correction trains on
each. A redelivered album, or a photo that arrives after its album was
answered, finds that row and gets no second answer. A `/top5` in the caption of
any photo applies to the whole album.

A confirmed /forget calls `settle_albums_for_forget`: the person's albums still
being collected are discarded (never answered or stored), and the handler waits
for albums already being answered to end, so the rows they store are among those
/forget deletes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from telegram import Bot, Message

from bot import metrics as metrics_module
from bot.answers import (
    DOWNLOAD_ERRORS,
    MAX_DOWNLOAD_BYTES,
    IncomingImage,
    chat_action,
    decode_error_message,
    download_image,
    format_answer,
    image_suffix,
    prediction_columns,
    ranked_candidates,
    reply_too_big,
)
from bot.honesty import assess
from bot.i18n import text
from bot.keyboards import answer_markup
from classifier.decode import ImageDecodeError
from storage.repository.predictions import ImageReference

if TYPE_CHECKING:
    from bot.context import BotContext
    from classifier.service import Prediction
    from storage.images import StoredImage
    from storage.models import Prediction as PredictionRow

logger = logging.getLogger(__name__)

# Telegram albums hold 2-10 items (https://core.telegram.org/bots/api#sendmediagroup).
MAX_ALBUM_PHOTOS = 10
# How long /forget waits for an album already being answered (download, inference, store) to end.
FORGET_WAIT_S = 60.0
_COLLECTOR_KEY = "album_collector"

AlbumKey = tuple[int, str]


@dataclass
class AlbumPhoto:
    """One photo of an album with the top-k its caption asks for."""

    message: Message
    image: IncomingImage
    k: int


@dataclass
class PendingAlbum:
    """An album whose photos are still arriving, or that is being answered (`closed`)."""

    key: AlbumKey
    lang: str
    # The person the album's prediction would belong to: the sender of its first photo.
    owner_id: int
    photos: dict[int, AlbumPhoto] = field(default_factory=dict)
    last_added: float = field(default_factory=time.monotonic)
    closed: bool = False
    # Set by /forget while the album is collected: it is then neither answered nor stored.
    discarded: bool = False
    late_photos: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def ordered(self) -> list[AlbumPhoto]:
        """Return the photos in the order they were sent (by message id)."""
        return [self.photos[message_id] for message_id in sorted(self.photos)]


class AlbumCollector:
    """Groups the photo updates of each album until it has been quiet for `quiet_s` seconds."""

    def __init__(self, quiet_s: float, *, max_photos: int = MAX_ALBUM_PHOTOS) -> None:
        if quiet_s <= 0:
            raise ValueError(f"quiet_s must be positive, got {quiet_s}")
        self.quiet_s = quiet_s
        self.max_photos = max_photos
        self._albums: dict[AlbumKey, PendingAlbum] = {}

    def __len__(self) -> int:
        return len(self._albums)

    def pending(self) -> list[PendingAlbum]:
        """Return the albums being collected or answered now."""
        return list(self._albums.values())

    def add(self, message: Message, image: IncomingImage, *, k: int, lang: str) -> PendingAlbum | None:
        """Add a photo to its album; return the album when this call opened it, else None.

        The caller that gets the album must `wait_quiet`, answer it and `finish` it.
        A photo of an album that is already being answered is counted and dropped.
        """
        if message.media_group_id is None:
            raise ValueError(f"message {message.message_id} is not part of an album")
        key = (message.chat_id, message.media_group_id)
        album = self._albums.get(key)
        opened = album is None
        if album is None:
            owner_id = message.from_user.id if message.from_user else message.chat_id
            album = PendingAlbum(key=key, lang=lang, owner_id=owner_id)
            self._albums[key] = album
        if album.closed:
            album.late_photos += 1
            logger.warning(
                "album %s in chat %d: message %d arrived after the album was closed and is not used",
                key[1], key[0], message.message_id,
            )
            return None
        if message.message_id in album.photos:
            logger.info("album %s in chat %d: message %d delivered twice", key[1], key[0], message.message_id)
        elif len(album.photos) >= self.max_photos:
            logger.warning("album %s in chat %d has more than %d photos; message %d is not used", key[1], key[0], self.max_photos, message.message_id)
        else:
            album.photos[message.message_id] = AlbumPhoto(message, image, k)
            album.last_added = time.monotonic()
        return album if opened else None

    async def wait_quiet(self, album: PendingAlbum) -> None:
        """Wait until no photo has joined `album` for `quiet_s` seconds, or it is discarded, then close it to new photos."""
        while not album.discarded:
            remaining = album.last_added + self.quiet_s - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(remaining)
        album.closed = True

    def discard_collecting(self, owner_id: int) -> list[PendingAlbum]:
        """Discard the owner's albums that are still collecting photos and return them.

        Each stays closed to new photos until its first photo's handler reads the
        flag and finishes it without answering.
        """
        discarded = [
            album for album in self._albums.values() if album.owner_id == owner_id and not album.closed
        ]
        for album in discarded:
            album.discarded = True
            album.closed = True
        return discarded

    def answering(self, owner_id: int) -> list[PendingAlbum]:
        """Return the owner's albums that are closed and being answered now."""
        return [
            album for album in self._albums.values() if album.owner_id == owner_id and album.closed and not album.discarded
        ]

    def finish(self, album: PendingAlbum) -> None:
        """Forget an answered album; later photos of it find its stored prediction instead."""
        if self._albums.get(album.key) is album:
            del self._albums[album.key]
        album.finished.set()


def get_collector(bot_context: BotContext) -> AlbumCollector:
    """Return the bot's album collector, created on first use with ALBUM_QUIET_S."""
    collector = bot_context.extras.get(_COLLECTOR_KEY)
    if collector is None:
        collector = AlbumCollector(bot_context.settings.album_quiet_s)
        bot_context.extras[_COLLECTOR_KEY] = collector
    return collector


async def collect_album_photo(
    bot_context: BotContext, bot: Bot, message: Message, image: IncomingImage, *, k: int, lang: str
) -> PredictionRow | None:
    """Add a photo to its album; the handler of the album's first photo answers the whole album.

    Returns the album's stored prediction from the handler that answered it,
    None from the others and when nothing could be classified.
    """
    collector = get_collector(bot_context)
    album = collector.add(message, image, k=k, lang=lang)
    if album is None:
        return None
    try:
        await collector.wait_quiet(album)
        if album.discarded:
            logger.info(
                "album %s in chat %d: %d photos discarded by /forget of user %d before they were answered",
                album.key[1], album.key[0], len(album.photos), album.owner_id,
            )
            return None
        return await answer_album(bot_context, bot, album.ordered(), lang=album.lang)
    finally:
        collector.finish(album)


async def settle_albums_for_forget(bot_context: BotContext, owner_id: int, *, timeout_s: float = FORGET_WAIT_S) -> int:
    """Prepare a confirmed /forget: discard the person's albums still being collected, wait for those being answered.

    Call it before deleting the person's rows, so a prediction that an album being
    answered stores is deleted with the rest. Returns how many albums were discarded.
    """
    collector = get_collector(bot_context)
    discarded = collector.discard_collecting(owner_id)
    for album in discarded:
        logger.info("album %s in chat %d of user %d discarded by /forget", album.key[1], album.key[0], owner_id)

    answering = collector.answering(owner_id)
    if answering:
        logger.info("/forget of user %d waits for %d albums being answered", owner_id, len(answering))
        waits = asyncio.gather(*(album.finished.wait() for album in answering))
        try:
            await asyncio.wait_for(waits, timeout_s)
        except TimeoutError:
            # NOTE: an album answered after this timeout keeps its prediction until the next /forget.
            logger.warning("/forget of user %d timed out after %.0f s waiting for albums being answered; deleting without them", owner_id, timeout_s)
    return len(discarded)


def _metrics(bot_context: BotContext) -> metrics_module.Metrics:
    return bot_context.extras.get("metrics") or metrics_module.get_metrics()


async def _download_all(bot: Bot, photos: Sequence[AlbumPhoto]) -> list[tuple[AlbumPhoto, bytes]]:
    """Download the photos concurrently; one whose download fails is logged and left out."""

    async def fetch(photo: AlbumPhoto) -> tuple[AlbumPhoto, bytes] | None:
        try:
            return photo, await download_image(bot, photo.image)
        except DOWNLOAD_ERRORS as error:
            logger.warning("album photo %d in chat %d: download failed: %s", photo.message.message_id, photo.message.chat_id, error)
            return None

    results = await asyncio.gather(*(fetch(photo) for photo in photos))
    return [result for result in results if result is not None]


async def _store_album(
    bot_context: BotContext,
    owner_id: int,
    first: Message,
    downloaded: Sequence[tuple[AlbumPhoto, bytes]],
    prediction: Prediction,
    k: int,
) -> PredictionRow:
    """Save the album's classified photos and store its prediction with one photo row each, in album order.

    Undecodable photos were not classified and are not saved. The row's own
    image columns name the first classified photo.
    """
    classified = set(prediction.image_sha256s)

    def save_classified() -> list[tuple[AlbumPhoto, StoredImage]]:
        # Runs in a worker thread: hashing and writing up to ten 20 MB files.
        return [
            (photo, bot_context.images.save(data, image_suffix(data)))
            for photo, data in downloaded
            if hashlib.sha256(data).hexdigest() in classified
        ]

    saved = await asyncio.to_thread(save_classified)
    images = [ImageReference(photo.image.file_unique_id, str(stored.path), stored.sha256) for photo, stored in saved]
    return await bot_context.repository.add_prediction(
        user_id=owner_id,
        chat_id=first.chat_id,
        message_id=first.message_id,
        file_unique_id=images[0].file_unique_id,
        image_path=images[0].image_path,
        image_sha256=images[0].image_sha256,
        k=k,
        media_group_id=first.media_group_id,
        photo_count=prediction.photo_count,
        images=images,
        **prediction_columns(prediction),
    )


async def answer_album(
    bot_context: BotContext, bot: Bot, photos: Sequence[AlbumPhoto], *, lang: str
) -> PredictionRow | None:
    """Classify an album's photos together, store one prediction and reply once to its first photo.

    Photos over the download limit, or that fail to download or decode, are
    left out and counted in the answer. Returns the stored prediction, or None
    when no photo could be classified (the person is told why).
    """
    first = photos[0].message
    chat_id, media_group_id = first.chat_id, first.media_group_id
    owner_id = first.from_user.id if first.from_user else chat_id
    repository = bot_context.repository

    existing = await repository.get_prediction_by_media_group(chat_id, media_group_id)
    if existing is not None and existing.reply_message_id is not None:
        logger.info("album %s in chat %d was answered before (prediction %d); not answering again", media_group_id, chat_id, existing.id)
        return existing

    usable = [photo for photo in photos if photo.image.file_size is None or photo.image.file_size <= MAX_DOWNLOAD_BYTES]
    if not usable:
        _metrics(bot_context).record_error("file_too_big")
        await reply_too_big(first, photos[0].image.file_size, lang)
        return None
    k = max(photo.k for photo in photos)

    async with chat_action(bot, chat_id):
        downloaded = await _download_all(bot, usable)
        if not downloaded:
            _metrics(bot_context).record_error("download_failed")
            await first.reply_text(text("photo.download_failed", lang), do_quote=True)
            return None
        try:
            prediction = await bot_context.service.classify_many([data for _, data in downloaded], k)
        except ImageDecodeError as error:
            logger.info("album %s in chat %d: no photo is a usable image (%s)", media_group_id, chat_id, error.reason)
            _metrics(bot_context).record_error(f"decode_{error.reason}")
            await first.reply_text(decode_error_message(error, lang), do_quote=True)
            return None

        skipped = len(photos) - prediction.photo_count
        if existing is None:
            row = await _store_album(bot_context, owner_id, first, downloaded, prediction, k)
        else:
            # An earlier handling saved the photos and stored the row, but did not send the reply.
            row = existing
        _metrics(bot_context).record_prediction(prediction.model_version, prediction.latency_ms / 1000.0)
        if row.reply_message_id is not None:
            logger.info("prediction %d already has its reply (message %d); skipping a second reply", row.id, row.reply_message_id)
            return row

    # Photos left out before classifying (too big, not downloaded) count as skipped too.
    assessment = dataclasses.replace(assess(prediction, bot_context.settings), skipped_photos=skipped)
    answer = format_answer(prediction.labels, ranked_candidates(prediction), lang, assessment=assessment)
    sent = await first.reply_text(answer, reply_markup=answer_markup(bot_context, row, lang), do_quote=True)
    await repository.set_reply_message(row.id, sent.message_id)
    logger.info(
        "prediction %d: album %s in chat %d, %d of %d photos, model %s, top-1 %s (%.3f), %.0f ms",
        row.id, media_group_id, chat_id, prediction.photo_count, len(photos), prediction.model_version,
        prediction.best.class_id, prediction.best.probability, prediction.latency_ms,
    )
    return row

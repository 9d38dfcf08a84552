"""From an image in a Telegram message to a stored prediction and one reply.

`answer_image` is the pipeline every image goes through: check the declared size,
download it, classify it (decoding and inference run in worker threads inside the
classifier service), save the bytes in the image store, store the prediction, and only
then send the answer and record its message id. A prediction is therefore in the
database before the person sees it. `format_answer` renders the k lines of an answer.

Failures: a file over 20 MB, a failed download and bytes the decoder rejects each get a
message that says what to do, and leave no saved file and no row. An error while
storing (after the repository's retries of a locked database) or while replying
(`Forbidden` from a person who blocked the bot) goes to the global error handler in
`bot.handlers.errors`, so no answer is ever sent for a prediction that was not stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect as sqlalchemy_inspect
from telegram import Bot, Document, Message, PhotoSize
from telegram.constants import ChatAction
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, TelegramError

from bot import metrics as metrics_module
from bot.context import BotContext
from bot.honesty import Assessment, assess, compose_answer
from bot.i18n import text
from bot.keyboards import answer_markup, recorded_markup
from classifier.decode import ImageDecodeError
from storage.models import Prediction as PredictionRow

if TYPE_CHECKING:
    from classifier.labels import LabelSet
    from classifier.service import Prediction

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 3
TOP5_K = 5
# getFile only serves files up to 20 MB (https://core.telegram.org/bots/api#getfile).
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
# Telegram shows a chat action for 5 seconds or until the bot's next message, so it is
# repeated a little more often than that while the bot works.
CHAT_ACTION_INTERVAL_S = 4.0

# What a failed download of a file raises: BadRequest when Telegram refuses it (such as
# "file is too big"), InvalidToken when the file path answers 404 (python-telegram-bot
# 22 maps 401 and 404 to InvalidToken), NetworkError (and its TimedOut) when the
# connection fails. Each gets the person a message instead of the generic apology.
DOWNLOAD_ERRORS: tuple[type[TelegramError], ...] = (BadRequest, InvalidToken, NetworkError)

DECODE_ERROR_MESSAGES = {
    "empty": "photo.empty",
    "not_image": "photo.not_image",
    "truncated": "photo.truncated",
    "too_large": "photo.too_large",
    "unsupported": "photo.unsupported",
}

# File signatures, for the suffix of a saved image. The decoder has already accepted the bytes.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", ".jpg"),
    (0, b"\x89PNG\r\n\x1a\n", ".png"),
    (0, b"GIF8", ".gif"),
    (8, b"WEBP", ".webp"),
    (0, b"BM", ".bmp"),
    (0, b"II*\x00", ".tif"),
    (0, b"MM\x00*", ".tif"),
    (4, b"ftypheic", ".heic"),
    (4, b"ftypheix", ".heic"),
    (4, b"ftypmif1", ".heif"),
    (4, b"ftypavif", ".avif"),
)


@dataclass(frozen=True)
class IncomingImage:
    """An image file in a Telegram message: a photo size or a document."""

    file_id: str
    file_unique_id: str
    # The size Telegram reports; None when it reports none.
    file_size: int | None

    @classmethod
    def from_photo(cls, sizes: Sequence[PhotoSize]) -> IncomingImage:
        """Return the largest of the sizes Telegram offers for a photo."""
        largest = max(sizes, key=lambda size: (size.width * size.height, size.file_size or 0))
        return cls(largest.file_id, largest.file_unique_id, largest.file_size)

    @classmethod
    def from_document(cls, document: Document) -> IncomingImage:
        return cls(document.file_id, document.file_unique_id, document.file_size)


def message_image(message: Message | None) -> IncomingImage | None:
    """Return the image of a photo or document message, or None for other messages."""
    if message is None:
        return None
    if message.photo:
        return IncomingImage.from_photo(message.photo)
    if message.document is not None:
        return IncomingImage.from_document(message.document)
    return None


def format_percent(probability: float) -> str:
    """Format a probability in [0, 1] as a percentage with one decimal, such as `87.3%`."""
    return f"{min(max(probability, 0.0), 1.0) * 100:.1f}%"


def species_name(labels: LabelSet, index: int, lang: str) -> str:
    """Return a species name in `lang`; in Chinese, the English name used in the field follows in brackets.

    A label set without Chinese names shows the English name in both languages.
    """
    name = labels.display_name(index, lang)
    if lang == "zh":
        english = labels.display_name(index, "en")
        if english and english != name:
            return f"{name} ({english})"
    return name


def format_answer(
    labels: LabelSet, ranked: Iterable[tuple[int, float]], lang: str, *, assessment: Assessment | None = None
) -> str:
    """Render one line per `(class index, probability)` pair, in the order given (highest first).

    With an `assessment`, the answer also says how sure it is, whether the photo
    looks like a known flower at all, and how many album photos it used.
    """
    lines = [
        text("answer.line", lang, rank=rank, name=species_name(labels, index, lang), percent=format_percent(probability))
        for rank, (index, probability) in enumerate(ranked, start=1)
    ]
    if assessment is not None:
        return compose_answer(lines, assessment, labels, lang)
    return "\n".join(lines)


def ranked_candidates(prediction: Prediction) -> list[tuple[int, float]]:
    """Return `(class index, probability)` pairs of a service prediction, highest first."""
    return [(candidate.index, candidate.probability) for candidate in prediction.top]


def top_k_entries(prediction: Prediction) -> list[dict[str, Any]]:
    """Return a prediction's top-k in the shape the predictions table stores."""
    return [
        {"index": candidate.index, "class_id": candidate.class_id, "probability": candidate.probability}
        for candidate in prediction.top
    ]


def prediction_columns(prediction: Prediction) -> dict[str, Any]:
    """Return the predictions-table columns that come from the classifier's result."""
    return {
        "model_version": prediction.model_version,
        "top_k": top_k_entries(prediction),
        "latency_ms": prediction.latency_ms,
        "ood_score": prediction.ood_score,
        "is_ood": prediction.is_ood,
    }


def image_suffix(data: bytes) -> str:
    """Return the file suffix for image bytes from their signature, `.img` when none matches."""
    for offset, signature, suffix in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return suffix
    return ".img"


def decode_error_message(error: ImageDecodeError, lang: str) -> str:
    """Return the message for an image that could not be decoded, chosen by the error's reason."""
    return text(DECODE_ERROR_MESSAGES.get(error.reason, "photo.not_image"), lang)


def with_top_k(row: PredictionRow, entries: list[dict[str, Any]], k: int) -> PredictionRow:
    """Return an unsaved copy of a stored prediction with another top-k, for building a keyboard.

    The copy keeps the row's id, so the buttons refer to the stored prediction.
    """
    columns = {attribute.key: getattr(row, attribute.key) for attribute in sqlalchemy_inspect(PredictionRow).column_attrs}
    columns.update(top_k=entries, k=k)
    return PredictionRow(**columns)


@contextlib.asynccontextmanager
async def chat_action(bot: Bot, chat_id: int, action: str = ChatAction.TYPING) -> AsyncIterator[None]:
    """Show a chat action such as "typing" in `chat_id` until the block ends."""

    async def repeat() -> None:
        while True:
            try:
                await bot.send_chat_action(chat_id, action)
            except Forbidden as error:
                # The person blocked the bot: the reply that follows meets the same error,
                # and the error handler marks the person inactive and logs it once.
                logger.debug("sendChatAction to chat %d failed, no longer repeating it: %s", chat_id, error)
                return
            except TelegramError as error:
                # The reply that follows meets the same error and reports it.
                logger.info("sendChatAction to chat %d failed, no longer repeating it: %s", chat_id, error)
                return
            await asyncio.sleep(CHAT_ACTION_INTERVAL_S)

    task = asyncio.create_task(repeat(), name=f"chat-action-{chat_id}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _metrics(bot_context: BotContext) -> metrics_module.Metrics:
    return bot_context.extras.get("metrics") or metrics_module.get_metrics()


async def download_image(bot: Bot, image: IncomingImage) -> bytes:
    """Download an image from Telegram; raises one of `DOWNLOAD_ERRORS` when that fails."""
    telegram_file = await bot.get_file(image.file_id)
    # NOTE: telegram_file.file_path is a URL that contains the bot token; it is never stored or logged.
    return bytes(await telegram_file.download_as_bytearray())


async def reply_too_big(message: Message, size: int | None, lang: str) -> None:
    size_mb = f"{size / (1024 * 1024):.1f}" if size else "?"
    await message.reply_text(text("photo.too_big", lang, size_mb=size_mb), do_quote=True)


async def answer_image(
    bot_context: BotContext,
    bot: Bot,
    message: Message,
    image: IncomingImage,
    *,
    k: int,
    lang: str,
    owner_id: int | None = None,
    reply_to: Message | None = None,
) -> PredictionRow | None:
    """Classify the image of `message`, store the prediction and reply with the answer.

    The prediction belongs to `owner_id` (default: the sender of `message`) and is keyed by
    `message`; the reply goes to `reply_to` (default: `message`). Returns the stored
    prediction, or None when the image could not be used; the person then got a message
    saying why and nothing was saved. A re-delivered update whose answer was already sent
    returns the stored prediction without a second reply.
    """
    reply_to = reply_to or message
    if owner_id is None:
        owner_id = message.from_user.id if message.from_user else message.chat_id
    if image.file_size is not None and image.file_size > MAX_DOWNLOAD_BYTES:
        logger.info("message %d in chat %d: file of %d bytes is over the download limit", message.message_id, message.chat_id, image.file_size)
        _metrics(bot_context).record_error("file_too_big")
        await reply_too_big(reply_to, image.file_size, lang)
        return None

    async with chat_action(bot, message.chat_id):
        try:
            data = await download_image(bot, image)
        except DOWNLOAD_ERRORS as error:
            logger.warning("message %d in chat %d: download failed: %s", message.message_id, message.chat_id, error)
            _metrics(bot_context).record_error("download_failed")
            if isinstance(error, BadRequest) and "too big" in error.message.lower():
                await reply_too_big(reply_to, image.file_size, lang)
            else:
                await reply_to.reply_text(text("photo.download_failed", lang), do_quote=True)
            return None

        try:
            prediction = await bot_context.service.classify(data, k)
        except ImageDecodeError as error:
            logger.info("message %d in chat %d: not a usable image (%s): %s", message.message_id, message.chat_id, error.reason, error)
            _metrics(bot_context).record_error(f"decode_{error.reason}")
            await reply_to.reply_text(decode_error_message(error, lang), do_quote=True)
            return None

        stored = await asyncio.to_thread(bot_context.images.save, data, image_suffix(data))
        row = await bot_context.repository.add_prediction(
            user_id=owner_id,
            chat_id=message.chat_id,
            message_id=message.message_id,
            file_unique_id=image.file_unique_id,
            image_path=str(stored.path),
            image_sha256=stored.sha256,
            k=k,
            media_group_id=message.media_group_id,
            **prediction_columns(prediction),
        )
        _metrics(bot_context).record_prediction(prediction.model_version, prediction.latency_ms / 1000.0)
        if row.reply_message_id is not None:
            logger.info("prediction %d already has its reply (message %d); skipping a second reply", row.id, row.reply_message_id)
            return row

    answer = format_answer(
        prediction.labels, ranked_candidates(prediction), lang, assessment=assess(prediction, bot_context.settings)
    )
    sent = await reply_to.reply_text(answer, reply_markup=answer_markup(bot_context, row, lang), do_quote=True)
    await bot_context.repository.set_reply_message(row.id, sent.message_id)
    logger.info(
        "prediction %d: chat %d message %d, model %s, top-1 %s (%.3f), %.0f ms",
        row.id, message.chat_id, message.message_id, prediction.model_version,
        prediction.best.class_id, prediction.best.probability, prediction.latency_ms,
    )
    return row


async def read_stored_images(bot_context: BotContext, row: PredictionRow) -> list[bytes]:
    """Read every saved photo of a stored prediction in album order. A photo whose file is gone is logged and left out.

    A prediction stored without `prediction_images` rows falls back to its own `image_path`.
    """
    images = await bot_context.repository.prediction_images(row.id)
    paths = [image.image_path for image in images] or [row.image_path]

    def read_all() -> list[bytes]:
        # Runs in a worker thread: up to ten files of up to 20 MB each.
        found: list[bytes] = []
        for path in paths:
            try:
                found.append(bot_context.images.read(path))
            except (OSError, ValueError) as error:
                logger.info("prediction %d: saved image %s unavailable: %s", row.id, path, error)
        return found

    return await asyncio.to_thread(read_all)


async def answer_stored(
    bot_context: BotContext,
    bot: Bot,
    row: PredictionRow,
    reply_to: Message,
    *,
    k: int,
    lang: str,
) -> bool:
    """Classify the saved photos of a stored prediction again with `k` classes and reply with the answer.

    An album's photos are classified together, as its first answer did. No new
    prediction is stored; the keyboard under the reply refers to `row`. Returns
    False when no saved photo is left (after /forget, for example) and the person was told so.
    """
    photos = await read_stored_images(bot_context, row)
    if not photos:
        await reply_to.reply_text(text("top5.image_gone", lang), do_quote=True)
        return False

    async with chat_action(bot, reply_to.chat_id):
        if len(photos) == 1:
            prediction = await bot_context.service.classify(photos[0], k)
        else:
            prediction = await bot_context.service.classify_many(photos, k)
    _metrics(bot_context).record_prediction(prediction.model_version, prediction.latency_ms / 1000.0)
    answer = format_answer(
        prediction.labels, ranked_candidates(prediction), lang, assessment=assess(prediction, bot_context.settings)
    )
    shown = with_top_k(row, top_k_entries(prediction), k)
    correction = await bot_context.repository.current_correction(row.id)
    if correction is None:
        markup = answer_markup(bot_context, shown, lang)
    else:
        # The photo was already confirmed or corrected: show that, with "Change", as the first answer does.
        from bot.handlers.feedback import status_line, with_status

        answer = with_status(answer, status_line(bot_context, correction, lang))
        markup = recorded_markup(bot_context, shown, lang, correction=correction)
    await reply_to.reply_text(answer, reply_markup=markup, do_quote=True)
    logger.info("prediction %d: top-%d of %d photos sent again in chat %d", row.id, k, len(photos), reply_to.chat_id)
    return True

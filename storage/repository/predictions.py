"""Queries on predictions: storing them, looking them up, /history and /forget."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import and_, delete, select, union, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Correction, InboxUpdate, PendingInput, Prediction, PredictionImage
from storage.repository.base import RepositoryBase, chunks

logger = logging.getLogger(__name__)

_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_PROBABILITY_TOLERANCE = 1e-4


class ImageReference(NamedTuple):
    """A saved photo of a prediction: the Telegram file id, the image store path and the SHA-256."""

    file_unique_id: str
    image_path: str
    image_sha256: str


class HistoryEntry(NamedTuple):
    """A prediction and its current correction, if the user gave one."""

    prediction: Prediction
    correction: Correction | None


def _normalize_sha256(value: str) -> str:
    value = value.lower()
    if not _SHA256_PATTERN.match(value):
        raise ValueError(f"image_sha256 must be 64 hex digits, got {value!r}")
    return value


def _normalize_images(
    images: Sequence[ImageReference] | None, first: ImageReference, photo_count: int
) -> list[ImageReference]:
    """Return the prediction's photos with lowercase hashes, checked against its first photo and photo count."""
    if images is None:
        return [first]
    images = [
        ImageReference(str(image.file_unique_id), str(image.image_path), _normalize_sha256(image.image_sha256))
        for image in images
    ]
    if not images or images[0] != first:
        raise ValueError(
            f"images must start with the photo given as image_path, image_sha256 and file_unique_id ({first}), "
            f"got {images[0] if images else 'no images'}"
        )
    if len(images) != photo_count:
        raise ValueError(f"photo_count is {photo_count} but {len(images)} images were given; pass every classified photo")
    return images


def _normalize_top_k(top_k: Iterable[Any]) -> list[dict[str, Any]]:
    """Return top-k entries as JSON-ready dicts with ``index``, ``class_id`` and ``probability``.

    Accepts dicts with those keys or ``(index, class_id, probability)`` tuples.
    """
    entries: list[dict[str, Any]] = []
    for item in top_k:
        if isinstance(item, dict):
            try:
                index, class_id, probability = item["index"], item["class_id"], item["probability"]
            except KeyError as error:
                raise ValueError(f"top_k entry {item!r} is missing key {error}") from None
        else:
            index, class_id, probability = item
        probability = float(probability)
        # float32 softmax output can overshoot 1.0 by rounding; clamp within a tolerance.
        if not -_PROBABILITY_TOLERANCE <= probability <= 1.0 + _PROBABILITY_TOLERANCE:
            raise ValueError(f"top_k probability must be within [0, 1], got {probability} for {class_id!r}")
        probability = min(1.0, max(0.0, probability))
        entries.append({"index": int(index), "class_id": str(class_id), "probability": probability})
    if not entries:
        raise ValueError("top_k is empty; a prediction needs at least one class")
    return entries


class PredictionQueries(RepositoryBase):
    """Predictions, their lookups, a user's history and forgetting a user."""

    @staticmethod
    async def _prediction_by_message(session: AsyncSession, chat_id: int, message_id: int) -> Prediction | None:
        statement = select(Prediction).where(Prediction.chat_id == chat_id, Prediction.message_id == message_id)
        return await session.scalar(statement)

    async def add_prediction(
        self,
        *,
        user_id: int,
        chat_id: int,
        message_id: int,
        file_unique_id: str,
        image_path: str,
        image_sha256: str,
        model_version: str,
        top_k: Iterable[Any],
        k: int,
        latency_ms: float,
        ood_score: float | None = None,
        is_ood: bool = False,
        media_group_id: str | None = None,
        photo_count: int = 1,
        images: Sequence[ImageReference] | None = None,
    ) -> Prediction:
        """Store a prediction with its photos and return it.

        ``images`` lists every classified photo in the order sent, starting
        with the one given as ``image_path``, ``image_sha256`` and
        ``file_unique_id``, and contains ``photo_count`` entries, or
        ValueError is raised. Without ``images`` only that one photo is stored, whatever
        the value of ``photo_count``. Each photo gets a ``prediction_images`` row in
        the same transaction.

        When a prediction for ``(chat_id, message_id)`` already exists (a
        re-delivered update), that row is returned unchanged and no photo rows
        are added. The user row is created when missing, so the prediction is
        stored even if :meth:`upsert_user` failed earlier. ``top_k`` takes
        dicts with ``index``, ``class_id`` and ``probability`` or tuples in
        that order.
        """
        image_sha256 = _normalize_sha256(image_sha256)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if photo_count < 1:
            raise ValueError(f"photo_count must be at least 1, got {photo_count}")
        photos = _normalize_images(images, ImageReference(file_unique_id, image_path, image_sha256), photo_count)
        entries = _normalize_top_k(top_k)

        async def work(session: AsyncSession) -> Prediction:
            existing = await self._prediction_by_message(session, chat_id, message_id)
            if existing is not None:
                logger.info(
                    "prediction for chat %d message %d already stored as %d", chat_id, message_id, existing.id
                )
                return existing
            await self._ensure_user(session, user_id)
            prediction = Prediction(
                user_id=user_id,
                chat_id=chat_id,
                message_id=message_id,
                media_group_id=media_group_id,
                file_unique_id=file_unique_id,
                image_path=image_path,
                image_sha256=image_sha256,
                photo_count=photo_count,
                model_version=model_version,
                top_k=entries,
                k=k,
                ood_score=ood_score,
                is_ood=is_ood,
                latency_ms=float(latency_ms),
            )
            session.add(prediction)
            await session.flush()
            session.add_all(
                PredictionImage(
                    prediction_id=prediction.id,
                    position=position,
                    file_unique_id=photo.file_unique_id,
                    image_path=photo.image_path,
                    image_sha256=photo.image_sha256,
                )
                for position, photo in enumerate(photos)
            )
            await session.flush()
            return prediction

        return await self._transaction("add_prediction", work, write=True, conflict_retries=1)

    async def set_reply_message(self, prediction_id: int, reply_message_id: int) -> bool:
        """Store the id of the bot's reply message; returns False when the prediction no longer exists."""

        async def work(session: AsyncSession) -> bool:
            statement = (
                update(Prediction).where(Prediction.id == prediction_id).values(reply_message_id=reply_message_id)
            )
            result = await session.execute(statement)
            return result.rowcount > 0

        return await self._transaction("set_reply_message", work, write=True)

    async def get_prediction(self, prediction_id: int) -> Prediction | None:
        """Return the prediction, or None when it does not exist."""

        async def work(session: AsyncSession) -> Prediction | None:
            return await session.get(Prediction, prediction_id)

        return await self._transaction("get_prediction", work, write=False)

    async def prediction_images(self, prediction_id: int) -> list[PredictionImage]:
        """Return the saved photos of a prediction by position, or an empty list when the prediction does not exist."""

        async def work(session: AsyncSession) -> list[PredictionImage]:
            statement = (
                select(PredictionImage)
                .where(PredictionImage.prediction_id == prediction_id)
                .order_by(PredictionImage.position)
            )
            return list(await session.scalars(statement))

        return await self._transaction("prediction_images", work, write=False)

    async def get_prediction_by_message(self, chat_id: int, message_id: int) -> Prediction | None:
        """Return the prediction made for the user's photo message ``message_id`` in ``chat_id``."""

        async def work(session: AsyncSession) -> Prediction | None:
            return await self._prediction_by_message(session, chat_id, message_id)

        return await self._transaction("get_prediction_by_message", work, write=False)

    async def get_prediction_by_reply(self, chat_id: int, reply_message_id: int) -> Prediction | None:
        """Return the prediction whose reply is the bot's message ``reply_message_id``."""

        async def work(session: AsyncSession) -> Prediction | None:
            statement = select(Prediction).where(
                Prediction.chat_id == chat_id, Prediction.reply_message_id == reply_message_id
            )
            return await session.scalar(statement)

        return await self._transaction("get_prediction_by_reply", work, write=False)

    async def get_prediction_by_media_group(self, chat_id: int, media_group_id: str) -> Prediction | None:
        """Return the first prediction stored for an album, or None."""

        async def work(session: AsyncSession) -> Prediction | None:
            statement = (
                select(Prediction)
                .where(Prediction.chat_id == chat_id, Prediction.media_group_id == media_group_id)
                .order_by(Prediction.id)
                .limit(1)
            )
            return await session.scalar(statement)

        return await self._transaction("get_prediction_by_media_group", work, write=False)

    async def latest_prediction(self, user_id: int, chat_id: int | None = None) -> Prediction | None:
        """Return the user's most recent prediction, in ``chat_id`` when given, else in any chat."""

        async def work(session: AsyncSession) -> Prediction | None:
            statement = select(Prediction).where(Prediction.user_id == user_id)
            if chat_id is not None:
                statement = statement.where(Prediction.chat_id == chat_id)
            statement = statement.order_by(Prediction.created_at.desc(), Prediction.id.desc()).limit(1)
            return await session.scalar(statement)

        return await self._transaction("latest_prediction", work, write=False)

    async def history(self, user_id: int, limit: int = 10) -> list[HistoryEntry]:
        """Return the user's last ``limit`` predictions, newest first, each with its current correction."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")

        async def work(session: AsyncSession) -> list[HistoryEntry]:
            statement = (
                select(Prediction, Correction)
                .outerjoin(
                    Correction,
                    and_(Correction.prediction_id == Prediction.id, Correction.is_current.is_(True)),
                )
                .where(Prediction.user_id == user_id)
                .order_by(Prediction.created_at.desc(), Prediction.id.desc())
                .limit(limit)
            )
            rows = await session.execute(statement)
            return [HistoryEntry(prediction, correction) for prediction, correction in rows]

        return await self._transaction("history", work, write=False)

    async def forget_user(self, user_id: int) -> list[str]:
        """Delete the user's predictions with their photo rows, corrections, pending inputs and stored updates.

        Returns the image paths of every photo of those predictions, album
        photos included, that no remaining prediction references; the caller
        deletes those files. A photo that another user also sent is stored
        once (by hash) and is not returned while a prediction of theirs
        references it, as its first photo or as any photo of an album. The
        user row stays, with the language choice and blocked state.
        """

        async def work(session: AsyncSession) -> list[str]:
            own_predictions = select(Prediction.id).where(Prediction.user_id == user_id)
            own_paths = union(
                select(Prediction.image_path).where(Prediction.user_id == user_id),
                select(PredictionImage.image_path).where(PredictionImage.prediction_id.in_(own_predictions)),
            )
            paths = set(await session.scalars(own_paths))
            # The inbox keeps each photo update's JSON (names, file ids) until a day after it is handled.
            await session.execute(delete(InboxUpdate).where(InboxUpdate.user_id == user_id))

            await session.execute(
                delete(PendingInput).where(
                    (PendingInput.user_id == user_id) | PendingInput.prediction_id.in_(own_predictions)
                )
            )
            await session.execute(
                delete(Correction).where(
                    (Correction.user_id == user_id) | Correction.prediction_id.in_(own_predictions)
                )
            )
            # The foreign key cascades too, but this delete does not rely on foreign keys being enforced.
            await session.execute(delete(PredictionImage).where(PredictionImage.prediction_id.in_(own_predictions)))
            deleted = await session.execute(delete(Prediction).where(Prediction.user_id == user_id))

            still_used: set[str] = set()
            for chunk in chunks(sorted(paths)):
                statement = union(
                    select(Prediction.image_path).where(Prediction.image_path.in_(chunk)),
                    select(PredictionImage.image_path).where(PredictionImage.image_path.in_(chunk)),
                )
                still_used.update(await session.scalars(statement))
            orphaned = sorted(paths - still_used)
            logger.info(
                "forgot user %d: %d predictions deleted, %d images to delete, %d kept for other predictions",
                user_id,
                deleted.rowcount,
                len(orphaned),
                len(still_used),
            )
            return orphaned

        return await self._transaction("forget_user", work, write=True)

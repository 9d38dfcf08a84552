"""Queries on user feedback: corrections, pending typed answers, /stats and training examples."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import (
    CORRECTION_KINDS,
    LABELLESS_CORRECTION_KINDS,
    Correction,
    PendingInput,
    Prediction,
    PredictionImage,
    utc_now,
)
from storage.repository.base import NotFoundError, NotOwnerError, RepositoryBase

logger = logging.getLogger(__name__)


class LabelledExample(NamedTuple):
    """A saved photo with the label users gave it, for retraining.

    ``label`` is None for "not a flower" and "unknown species" examples.
    ``created_at`` is when the prediction was made. An album yields one
    example per photo, all with the album's label, and ``position`` is the
    photo's place in the album (0 for a single photo).
    """

    image_path: str
    label: str | None
    prediction_id: int
    created_at: datetime
    image_sha256: str
    position: int = 0


def _validate_correction(label: str | None, kind: str) -> None:
    if kind not in CORRECTION_KINDS:
        raise ValueError(f"correction kind must be one of {CORRECTION_KINDS}, got {kind!r}")
    if kind in LABELLESS_CORRECTION_KINDS and label is not None:
        raise ValueError(f"a {kind!r} correction has no label, got {label!r}")
    if kind not in LABELLESS_CORRECTION_KINDS and not label:
        raise ValueError(f"a {kind!r} correction needs a label (a class id)")


class CorrectionQueries(RepositoryBase):
    """Corrections with their history, pending inputs, feedback statistics and labelled examples."""

    @staticmethod
    async def _current_correction(session: AsyncSession, prediction_id: int) -> Correction | None:
        statement = select(Correction).where(
            Correction.prediction_id == prediction_id, Correction.is_current.is_(True)
        )
        return await session.scalar(statement)

    async def record_correction(
        self, prediction_id: int, user_id: int, *, label: str | None, kind: str
    ) -> tuple[Correction, bool]:
        """Record the user's label for a prediction and make it the current one.

        ``kind`` is 'confirmed' or 'corrected' with a class id as ``label``,
        or 'not_flower' or 'unknown_species' (a flower of a species the model
        does not have) with ``label=None``. The previous current correction
        stays as history. When the current correction already has this label
        and kind (a double tap), nothing changes and ``changed`` is False.

        Raises NotFoundError when the prediction does not exist and
        NotOwnerError when ``user_id`` did not send the photo.
        """
        _validate_correction(label, kind)

        async def work(session: AsyncSession) -> tuple[Correction, bool]:
            # FOR UPDATE serializes taps on one prediction on PostgreSQL;
            # SQLite holds the database write lock already (BEGIN IMMEDIATE).
            statement = select(Prediction).where(Prediction.id == prediction_id).with_for_update()
            prediction = await session.scalar(statement)
            if prediction is None:
                raise NotFoundError(f"prediction {prediction_id} does not exist")
            if prediction.user_id != user_id:
                raise NotOwnerError(f"user {user_id} cannot correct prediction {prediction_id} of another user")

            current = await self._current_correction(session, prediction_id)
            if current is not None and current.label == label and current.kind == kind:
                return current, False
            if current is not None:
                current.is_current = False
                # Flush first, or the new row could reach the unique partial index first.
                await session.flush()

            correction = Correction(prediction_id=prediction_id, user_id=user_id, label=label, kind=kind)
            session.add(correction)
            await session.flush()
            return correction, True

        return await self._transaction("record_correction", work, write=True, conflict_retries=1)

    async def current_correction(self, prediction_id: int) -> Correction | None:
        """Return the prediction's current correction, or None."""

        async def work(session: AsyncSession) -> Correction | None:
            return await self._current_correction(session, prediction_id)

        return await self._transaction("current_correction", work, write=False)

    async def correction_history(self, prediction_id: int) -> list[Correction]:
        """Return every correction of the prediction, oldest first."""

        async def work(session: AsyncSession) -> list[Correction]:
            statement = (
                select(Correction)
                .where(Correction.prediction_id == prediction_id)
                .order_by(Correction.created_at, Correction.id)
            )
            return list(await session.scalars(statement))

        return await self._transaction("correction_history", work, write=False)

    async def set_pending_input(self, user_id: int, chat_id: int, prediction_id: int, kind: str) -> PendingInput:
        """Store what the bot waits for from the user in this chat, replacing an earlier wait."""

        async def work(session: AsyncSession) -> PendingInput:
            if await session.get(Prediction, prediction_id) is None:
                raise NotFoundError(f"prediction {prediction_id} does not exist")
            await self._ensure_user(session, user_id)
            pending = await session.get(PendingInput, (user_id, chat_id))
            if pending is None:
                pending = PendingInput(user_id=user_id, chat_id=chat_id, prediction_id=prediction_id, kind=kind)
                session.add(pending)
            else:
                pending.prediction_id = prediction_id
                pending.kind = kind
                pending.created_at = utc_now()
            await session.flush()
            return pending

        return await self._transaction("set_pending_input", work, write=True, conflict_retries=1)

    async def get_pending_input(self, user_id: int, chat_id: int) -> PendingInput | None:
        """Return what the bot waits for from the user in this chat, or None."""

        async def work(session: AsyncSession) -> PendingInput | None:
            return await session.get(PendingInput, (user_id, chat_id))

        return await self._transaction("get_pending_input", work, write=False)

    async def clear_pending_input(self, user_id: int, chat_id: int) -> bool:
        """Delete the pending input; returns True when there was one."""

        async def work(session: AsyncSession) -> bool:
            statement = delete(PendingInput).where(PendingInput.user_id == user_id, PendingInput.chat_id == chat_id)
            result = await session.execute(statement)
            return result.rowcount > 0

        return await self._transaction("clear_pending_input", work, write=True)

    async def stats(self, *, max_pairs: int = 10) -> dict[str, Any]:
        """Summarize predictions and feedback for /stats.

        Accuracy is ``correct / rated``. The rated predictions are those whose
        current correction carries a label (confirmed or corrected, counted in
        ``labelled``) or says 'unknown_species'. A labelled prediction is right
        when the label is its top-1 class id, whatever its kind, and an
        'unknown_species' one is always wrong, because the flower is none of
        the model's classes. 'not_flower' feedback is counted apart and left out
        of accuracy. Returns::

            {
              "predictions": int, "with_feedback": int, "feedback_share": float,
              "feedback_by_kind": {"confirmed": int, "corrected": int, "not_flower": int,
                                   "unknown_species": int},
              "by_model": {version: {"predictions", "with_feedback", "labelled", "unknown_species",
                                     "rated", "correct", "not_flower", "accuracy" (float or None)}},
              "confused_pairs": [{"predicted": class_id, "actual": label, "count": int}, ...],
            }

        ``confused_pairs`` lists the ``max_pairs`` most frequent (top-1, label)
        pairs of wrong labelled predictions, most frequent first.
        """

        async def work(session: AsyncSession) -> dict[str, Any]:
            counts = await session.execute(
                select(Prediction.model_version, func.count(Prediction.id))
                .group_by(Prediction.model_version)
                .order_by(Prediction.model_version)
            )
            by_model: dict[str, dict[str, Any]] = {
                version: {
                    "predictions": count,
                    "with_feedback": 0,
                    "labelled": 0,
                    "unknown_species": 0,
                    "rated": 0,
                    "correct": 0,
                    "not_flower": 0,
                    "accuracy": None,
                }
                for version, count in counts
            }

            feedback = await session.execute(
                select(Prediction.model_version, Prediction.top_k, Correction.kind, Correction.label).join(
                    Correction,
                    and_(Correction.prediction_id == Prediction.id, Correction.is_current.is_(True)),
                )
            )
            by_kind: Counter[str] = Counter({kind: 0 for kind in CORRECTION_KINDS})
            confused: Counter[tuple[str, str]] = Counter()
            for version, top_k, kind, label in feedback:
                entry = by_model[version]
                entry["with_feedback"] += 1
                by_kind[kind] += 1
                if kind == "not_flower":
                    entry["not_flower"] += 1
                    continue
                entry["rated"] += 1
                if kind == "unknown_species":
                    entry["unknown_species"] += 1
                    continue
                entry["labelled"] += 1
                predicted = str(top_k[0]["class_id"]) if top_k else ""
                if label == predicted:
                    entry["correct"] += 1
                else:
                    confused[(predicted, label)] += 1

            for entry in by_model.values():
                if entry["rated"]:
                    entry["accuracy"] = entry["correct"] / entry["rated"]

            total = sum(entry["predictions"] for entry in by_model.values())
            with_feedback = sum(entry["with_feedback"] for entry in by_model.values())
            # Most frequent first; ties in a fixed order so the output is stable.
            pairs = sorted(confused.items(), key=lambda item: (-item[1], item[0]))[:max_pairs]
            return {
                "predictions": total,
                "with_feedback": with_feedback,
                "feedback_share": with_feedback / total if total else 0.0,
                "feedback_by_kind": dict(by_kind),
                "by_model": by_model,
                "confused_pairs": [
                    {"predicted": predicted, "actual": actual, "count": count}
                    for (predicted, actual), count in pairs
                ],
            }

        return await self._transaction("stats", work, write=False)

    async def _examples(self, operation: str, kinds: tuple[str, ...]) -> list[LabelledExample]:
        async def work(session: AsyncSession) -> list[LabelledExample]:
            # A prediction without prediction_images rows (written around the repository)
            # still yields its first photo from its own columns.
            statement = (
                select(
                    func.coalesce(PredictionImage.image_path, Prediction.image_path),
                    Correction.label,
                    Prediction.id,
                    Prediction.created_at,
                    func.coalesce(PredictionImage.image_sha256, Prediction.image_sha256),
                    func.coalesce(PredictionImage.position, 0),
                )
                .join(Correction, and_(Correction.prediction_id == Prediction.id, Correction.is_current.is_(True)))
                .outerjoin(PredictionImage, PredictionImage.prediction_id == Prediction.id)
                .where(Correction.kind.in_(kinds))
                .order_by(Prediction.id, PredictionImage.position)
            )
            rows = await session.execute(statement)
            return [LabelledExample(*row) for row in rows]

        return await self._transaction(operation, work, write=False)

    async def labelled_examples(self) -> list[LabelledExample]:
        """Return every photo of the predictions whose current correction is 'confirmed' or 'corrected'.

        Oldest prediction first, an album's photos in album order. The same
        photo can appear more than once when it was sent twice. Split training
        and held-out data by ``image_sha256``, so that one photo never lands
        in both.
        """
        return await self._examples("labelled_examples", ("confirmed", "corrected"))

    async def not_flower_examples(self) -> list[LabelledExample]:
        """Return every photo of the predictions whose current correction is 'not_flower' (``label`` is None)."""
        return await self._examples("not_flower_examples", ("not_flower",))

    async def unknown_species_examples(self) -> list[LabelledExample]:
        """Return every photo of the predictions whose current correction is 'unknown_species' (``label`` is None).

        These photos show a flower of none of the model's classes. Retraining
        uses them only as out-of-distribution examples, never as a class.
        """
        return await self._examples("unknown_species_examples", ("unknown_species",))

"""How sure an answer is, in words, and the "not one of my flowers" line.

The probabilities an answer shows are calibrated: the classifier service
divides the logits by the bundle's temperature, which training fits on the
validation split. The first species' probability then picks a confidence
level by two settings:

- `sure` when it is at least CONFIDENCE_SURE,
- `likely` when it is at least CONFIDENCE_LIKELY,
- `unsure` otherwise.

A photo whose OOD score is below the bundle's threshold gets no level. Its
answer opens with a line saying that it does not look like a known flower, and
still lists the best guesses. An album's answer opens with the number of
photos it used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.i18n import text

if TYPE_CHECKING:
    from classifier.labels import LabelSet
    from classifier.service import Prediction

logger = logging.getLogger(__name__)

CONFIDENCE_LEVELS = ("sure", "likely", "unsure")


@dataclass(frozen=True)
class ConfidenceThresholds:
    """Probability limits (0-1) of the confidence words; `likely` may not exceed `sure`."""

    sure: float = 0.80
    likely: float = 0.50

    def __post_init__(self) -> None:
        if not 0.0 < self.likely <= self.sure <= 1.0:
            raise ValueError(
                f"confidence thresholds must satisfy 0 < likely <= sure <= 1, got likely={self.likely}, sure={self.sure}"
            )

    @classmethod
    def from_settings(cls, settings: Any) -> ConfidenceThresholds:
        """Read CONFIDENCE_SURE and CONFIDENCE_LIKELY from the bot settings."""
        return cls(sure=float(settings.confidence_sure), likely=float(settings.confidence_likely))

    def level(self, probability: float) -> str:
        """Return `sure`, `likely` or `unsure` for a calibrated probability."""
        if probability >= self.sure:
            return "sure"
        if probability >= self.likely:
            return "likely"
        return "unsure"


@dataclass(frozen=True)
class Assessment:
    """What an answer says beyond its species lines: how sure, whether rejected, how many photos."""

    top_index: int
    top_probability: float
    level: str
    is_ood: bool = False
    photo_count: int = 1
    skipped_photos: int = 0


def assess(prediction: Prediction, settings: Any) -> Assessment:
    """Return the assessment of a classifier prediction under the settings' thresholds."""
    thresholds = ConfidenceThresholds.from_settings(settings)
    best = prediction.best
    return Assessment(
        top_index=best.index,
        top_probability=best.probability,
        level=thresholds.level(best.probability),
        is_ood=prediction.is_ood,
        photo_count=prediction.photo_count,
        skipped_photos=prediction.skipped_photos,
    )


def assess_stored(row: Any, labels: LabelSet, settings: Any) -> Assessment | None:
    """Return the assessment of a stored prediction row, or None when its first class is not in `labels`.

    Skipped album photos are not stored, so the result counts none.
    """
    if not row.top_k:
        return None
    first = row.top_k[0]
    try:
        index = labels.index_of(str(first["class_id"]))
    except KeyError:
        return None
    probability = float(first.get("probability", 0.0))
    return Assessment(
        top_index=index,
        top_probability=probability,
        level=ConfidenceThresholds.from_settings(settings).level(probability),
        is_ood=bool(row.is_ood),
        photo_count=int(row.photo_count or 1),
    )


def skipped_photos_line(count: int, lang: str) -> str:
    """Return the sentence that `count` photos of an album could not be read, in singular or plural form."""
    key = "honesty.album_skipped.one" if count == 1 else "honesty.album_skipped.other"
    return text(key, lang, count=count)


def compose_answer(species_lines: Sequence[str], assessment: Assessment, labels: LabelSet, lang: str) -> str:
    """Join the species lines of an answer with its album, rejection and confidence lines.

    Layout: the album line and the rejection line (each only when it
    applies), the species lines, then after a blank line the confidence
    sentence (left out for a rejected photo) and the count of album photos
    that could not be read.
    """
    head: list[str] = []
    if assessment.photo_count > 1:
        head.append(text("honesty.album", lang, count=assessment.photo_count))
    if assessment.is_ood:
        head.append(text("honesty.not_a_flower", lang))

    tail: list[str] = []
    if not assessment.is_ood:
        name = labels.display_name(assessment.top_index, lang)
        tail.append(text(f"honesty.{assessment.level}", lang, name=name))
    if assessment.skipped_photos:
        tail.append(skipped_photos_line(assessment.skipped_photos, lang))

    body = "\n".join([*head, *species_lines])
    if not tail:
        return body
    return body + "\n\n" + "\n".join(tail)

"""The promotion gate: a retrained candidate replaces the serving model only if it is not worse.

Both models are scored on the same images, so the comparison uses counts of
correct top-1 predictions, not rounded fractions. A split passes when

    candidate_correct >= serving_correct - floor(tolerance * samples)

so `tolerance=0` (the default) means "at least as many correct predictions". The
candidate is promoted only when every split that has samples passes. The base
validation split must have samples; the held-out corrections may be empty,
and are then reported as skipped and left out of the decision.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BASE_VAL = "base_val"
CORRECTIONS_HOLDOUT = "corrections_holdout"
GATE_SPLITS = (BASE_VAL, CORRECTIONS_HOLDOUT)


@dataclasses.dataclass(frozen=True)
class SplitComparison:
    """Top-1 results of the candidate and the serving model on one split of images."""

    split: str
    samples: int
    candidate_correct: int
    serving_correct: int
    tolerance: float = 0.0

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError(f"samples must be >= 0, got {self.samples}")
        for name in ("candidate_correct", "serving_correct"):
            value = getattr(self, name)
            if not 0 <= value <= self.samples:
                raise ValueError(f"{name} must be within 0..{self.samples} for split {self.split!r}, got {value}")
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"tolerance must be within [0, 1), got {self.tolerance}")

    @property
    def skipped(self) -> bool:
        """Whether the split has no images and so takes no part in the decision."""
        return self.samples == 0

    @property
    def candidate_accuracy(self) -> float | None:
        return None if self.skipped else self.candidate_correct / self.samples

    @property
    def serving_accuracy(self) -> float | None:
        return None if self.skipped else self.serving_correct / self.samples

    @property
    def allowed_drop(self) -> int:
        """Correct predictions the candidate may lose against the serving model and still pass."""
        return math.floor(self.tolerance * self.samples)

    @property
    def passed(self) -> bool | None:
        """True or False for a split with images; None for a skipped one."""
        if self.skipped:
            return None
        return self.candidate_correct >= self.serving_correct - self.allowed_drop

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "samples": self.samples,
            "candidate_correct": self.candidate_correct,
            "serving_correct": self.serving_correct,
            "candidate_accuracy": self.candidate_accuracy,
            "serving_accuracy": self.serving_accuracy,
            "tolerance": self.tolerance,
            "passed": self.passed,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SplitComparison:
        return cls(
            split=str(values["split"]),
            samples=int(values["samples"]),
            candidate_correct=int(values["candidate_correct"]),
            serving_correct=int(values["serving_correct"]),
            tolerance=float(values.get("tolerance", 0.0)),
        )


@dataclasses.dataclass(frozen=True)
class GateDecision:
    """Whether to promote the candidate, with the comparison behind it.

    `reason` is `passed`, `base_val_empty`, or `worse_on_<split>` for the
    first split the candidate failed.
    """

    promote: bool
    reason: str
    comparisons: tuple[SplitComparison, ...]

    def comparison(self, split: str) -> SplitComparison | None:
        """Return the comparison for `split`, or None when the gate did not score it."""
        for comparison in self.comparisons:
            if comparison.split == split:
                return comparison
        return None

    @property
    def skipped_splits(self) -> list[str]:
        return [comparison.split for comparison in self.comparisons if comparison.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "comparisons": [comparison.to_dict() for comparison in self.comparisons],
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GateDecision:
        return cls(
            promote=bool(values["promote"]),
            reason=str(values["reason"]),
            comparisons=tuple(SplitComparison.from_dict(entry) for entry in values["comparisons"]),
        )


def count_correct(predicted: Sequence[int], labels: Sequence[int]) -> int:
    """Count positions where the predicted class index equals the label."""
    if len(predicted) != len(labels):
        raise ValueError(f"got {len(predicted)} predictions for {len(labels)} labels")
    return sum(1 for guess, label in zip(predicted, labels) if int(guess) == int(label))


def compare_split(
    split: str,
    labels: Sequence[int],
    candidate_predicted: Sequence[int],
    serving_predicted: Sequence[int],
    *,
    tolerance: float = 0.0,
) -> SplitComparison:
    """Score both models' top-1 predictions on one split."""
    return SplitComparison(
        split=split,
        samples=len(labels),
        candidate_correct=count_correct(candidate_predicted, labels),
        serving_correct=count_correct(serving_predicted, labels),
        tolerance=tolerance,
    )


def decide(base_val: SplitComparison, holdout: SplitComparison) -> GateDecision:
    """Promote only when the candidate is not worse on the base val split and on a non-empty holdout."""
    comparisons = (base_val, holdout)
    if base_val.skipped:
        return GateDecision(promote=False, reason="base_val_empty", comparisons=comparisons)
    for comparison in comparisons:
        if comparison.passed is False:
            return GateDecision(promote=False, reason=f"worse_on_{comparison.split}", comparisons=comparisons)
    return GateDecision(promote=True, reason="passed", comparisons=comparisons)


# ---------------------------------------------------------------------------
# Scoring two bundles on the gate's splits


@dataclasses.dataclass(frozen=True)
class GateResult:
    """The decision plus the files written while scoring: per-split reports and the confusion PNG."""

    decision: GateDecision
    reports: dict[str, dict[str, str]]
    confusion_png: str | None


def correct_from_report(report: Mapping[str, Any]) -> int:
    """Return the number of top-1 hits in an `evaluate_bundle` report (the confusion matrix trace)."""
    return sum(int(entry["correct"]) for entry in report["per_class"])


def run_gate(
    candidate: str | os.PathLike,
    serving: str | os.PathLike,
    *,
    base_data: Any,
    holdout: Sequence[Mapping[str, Any]],
    out: str | os.PathLike,
    tolerance: float = 0.0,
    device: str = "auto",
    batch_size: int = 64,
    workers: int = -1,
) -> GateResult:
    """Evaluate both bundles on the base val split and on the held-out corrections, then decide.

    `base_data` is a `training.data.DataSpec` or a source string. `holdout`
    contains `{"path", "label"}` photos, label being a class id. Reports and
    confusion matrices go to `out/<split>/<candidate|serving>/`; the
    candidate's base-val confusion matrix is the PNG the admin gets.
    """
    from training.evaluate import evaluate_bundle

    out = Path(out)
    options = {"device": device, "batch_size": batch_size, "workers": workers, "show_progress_bar": False}
    reports: dict[str, dict[str, str]] = {}

    counts: dict[str, dict[str, int]] = {}
    for role, bundle_dir in (("candidate", candidate), ("serving", serving)):
        report = evaluate_bundle(bundle_dir, base_data, split="val", out=out / BASE_VAL / role, **options)
        counts.setdefault(BASE_VAL, {"samples": int(report["samples"])})[role] = correct_from_report(report)
        reports.setdefault(BASE_VAL, {})[role] = str(report["report"])
        if holdout:
            report = evaluate_bundle(bundle_dir, examples=list(holdout), out=out / CORRECTIONS_HOLDOUT / role, **options)
            counts.setdefault(CORRECTIONS_HOLDOUT, {"samples": int(report["samples"])})[role] = correct_from_report(report)
            reports.setdefault(CORRECTIONS_HOLDOUT, {})[role] = str(report["report"])

    def comparison(split: str) -> SplitComparison:
        entry = counts.get(split, {"samples": 0, "candidate": 0, "serving": 0})
        return SplitComparison(
            split=split,
            samples=entry["samples"],
            candidate_correct=entry["candidate"],
            serving_correct=entry["serving"],
            tolerance=tolerance,
        )

    decision = decide(comparison(BASE_VAL), comparison(CORRECTIONS_HOLDOUT))
    confusion = out / BASE_VAL / "candidate" / "confusion.png"
    logger.info(
        "gate: %s (%s); %s",
        "promote" if decision.promote else "reject",
        decision.reason,
        "; ".join(
            f"{entry.split}: candidate {entry.candidate_correct}/{entry.samples}, serving {entry.serving_correct}/{entry.samples}"
            for entry in decision.comparisons
        ),
    )
    return GateResult(decision=decision, reports=reports, confusion_png=str(confusion) if confusion.is_file() else None)

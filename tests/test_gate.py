"""The promotion gate's decision: counts of correct predictions per split, ties, tolerance and empty splits."""

from __future__ import annotations

import pytest

from training.gate import (
    BASE_VAL,
    CORRECTIONS_HOLDOUT,
    GateDecision,
    SplitComparison,
    compare_split,
    count_correct,
    decide,
)


def split(name: str, samples: int, candidate: int, serving: int, tolerance: float = 0.0) -> SplitComparison:
    return SplitComparison(split=name, samples=samples, candidate_correct=candidate, serving_correct=serving, tolerance=tolerance)


def test_tie_on_both_splits_promotes() -> None:
    decision = decide(split(BASE_VAL, 20, 8, 8), split(CORRECTIONS_HOLDOUT, 5, 3, 3))
    assert decision.promote
    assert decision.reason == "passed"


def test_better_on_both_splits_promotes() -> None:
    decision = decide(split(BASE_VAL, 20, 12, 8), split(CORRECTIONS_HOLDOUT, 5, 4, 3))
    assert decision.promote


def test_worse_on_base_val_rejects() -> None:
    decision = decide(split(BASE_VAL, 20, 7, 8), split(CORRECTIONS_HOLDOUT, 5, 5, 0))
    assert not decision.promote
    assert decision.reason == "worse_on_base_val"


def test_worse_on_holdout_rejects() -> None:
    decision = decide(split(BASE_VAL, 20, 20, 8), split(CORRECTIONS_HOLDOUT, 5, 2, 3))
    assert not decision.promote
    assert decision.reason == "worse_on_corrections_holdout"


def test_empty_holdout_is_skipped() -> None:
    decision = decide(split(BASE_VAL, 20, 9, 8), split(CORRECTIONS_HOLDOUT, 0, 0, 0))
    assert decision.promote
    assert decision.skipped_splits == [CORRECTIONS_HOLDOUT]
    holdout = decision.comparison(CORRECTIONS_HOLDOUT)
    assert holdout is not None
    assert holdout.passed is None
    assert holdout.candidate_accuracy is None


def test_empty_base_val_rejects() -> None:
    decision = decide(split(BASE_VAL, 0, 0, 0), split(CORRECTIONS_HOLDOUT, 5, 5, 0))
    assert not decision.promote
    assert decision.reason == "base_val_empty"


@pytest.mark.parametrize(
    ("samples", "candidate", "serving", "tolerance", "passed"),
    [
        (20, 7, 8, 0.05, True),  # floor(0.05 * 20) = 1 correct prediction may be lost
        (20, 6, 8, 0.05, False),
        (19, 7, 8, 0.05, False),  # floor(0.05 * 19) = 0
        (10, 0, 2, 0.2, True),
    ],
)
def test_tolerance_allows_floor_of_fraction(samples: int, candidate: int, serving: int, tolerance: float, passed: bool) -> None:
    assert split(BASE_VAL, samples, candidate, serving, tolerance).passed is passed


def test_counts_outside_samples_raise() -> None:
    with pytest.raises(ValueError, match="candidate_correct"):
        split(BASE_VAL, 5, 6, 0)
    with pytest.raises(ValueError, match="tolerance"):
        split(BASE_VAL, 5, 1, 1, tolerance=1.0)


def test_compare_split_counts_top1_hits() -> None:
    labels = [0, 1, 2, 3, 4]
    comparison = compare_split(BASE_VAL, labels, candidate_predicted=[0, 1, 2, 0, 0], serving_predicted=[0, 0, 0, 0, 4])
    assert comparison.samples == 5
    assert comparison.candidate_correct == 3
    assert comparison.serving_correct == 2
    assert comparison.candidate_accuracy == pytest.approx(0.6)


def test_count_correct_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        count_correct([0, 1], [0, 1, 2])


def test_decision_round_trips_through_dict() -> None:
    decision = decide(split(BASE_VAL, 20, 7, 8, 0.1), split(CORRECTIONS_HOLDOUT, 0, 0, 0))
    restored = GateDecision.from_dict(decision.to_dict())
    assert restored == decision
    assert restored.to_dict()["comparisons"][0]["serving_accuracy"] == pytest.approx(0.4)

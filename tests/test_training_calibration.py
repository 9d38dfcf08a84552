"""Temperature scaling, expected calibration error, OOD scores and thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classifier.scores import ood_score
from training.calibration import (
    auroc,
    expected_calibration_error,
    fit_calibration,
    fit_ood,
    fit_temperature,
    ood_scores,
    separating_threshold,
)


def sampled_logits(temperature: float, count: int = 4000, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / temperature), so `temperature` is the true one."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, classes, generator=generator) * 3.0
    labels = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


def test_fit_temperature_recovers_the_true_temperature():
    logits, labels = sampled_logits(temperature=2.5)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)


def test_calibration_lowers_ece_and_nll_of_overconfident_logits():
    logits, labels = sampled_logits(temperature=3.0)
    result = fit_calibration(logits, labels, bins=15)
    assert result["temperature"] > 2.0
    assert result["ece_after"] < result["ece_before"]
    assert result["nll_after"] < result["nll_before"]
    assert result["bins"] == 15


def test_ece_extremes():
    probabilities = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probabilities, torch.tensor([0, 1])) == 0.0
    assert expected_calibration_error(probabilities, torch.tensor([1, 0])) == 1.0


def test_ece_weights_bins_by_size():
    # Two bins: 0.6 confidence with accuracy 1/2 (gap 0.1), 0.9 confidence with accuracy 1 (gap 0.1).
    probabilities = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.9, 0.1], [0.9, 0.1]])
    labels = torch.tensor([0, 1, 0, 0])
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(0.1)


def test_ood_scores_match_serving_formulas():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.0, 0.2]])
    np.testing.assert_allclose(ood_scores(logits, "energy", 1.0), ood_score(logits, score="energy"))
    np.testing.assert_allclose(ood_scores(logits, "msp", 2.0), ood_score(logits, score="msp", calibration_temperature=2.0))
    with pytest.raises(ValueError, match="unknown OOD score"):
        ood_scores(logits, "entropy")


def test_auroc_extremes_and_ties():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5


def test_percentile_threshold_without_non_flowers():
    generator = torch.Generator().manual_seed(0)
    val_logits = torch.randn(200, 5, generator=generator) * 4
    result = fit_ood(val_logits, temperature=1.0, percentile=5.0)
    assert result["score"] == "msp"
    assert result["method"] == "val_percentile"
    assert result["val_reject_rate"] == pytest.approx(0.05, abs=0.01)
    assert result["auroc"] == {}


def test_non_flower_examples_choose_score_and_separating_threshold():
    generator = torch.Generator().manual_seed(0)
    val_logits = torch.randn(200, 5, generator=generator)
    val_logits[torch.arange(200), torch.arange(200) % 5] += 8.0  # confident in-distribution photos
    non_flowers = torch.randn(50, 5, generator=generator) * 0.3  # flat logits
    result = fit_ood(val_logits, temperature=1.0, non_flower_logits=non_flowers, max_false_reject=0.1)
    assert result["method"] == "youden_capped"
    assert result["non_flower_source"] == "examples"
    assert set(result["auroc"]) == {"energy", "msp"}
    assert result["auroc"][result["score"]] == max(result["auroc"].values())
    assert result["val_reject_rate"] <= 0.1
    assert result["non_flower_reject_rate"] > 0.9


def test_synthetic_images_only_choose_the_score():
    generator = torch.Generator().manual_seed(0)
    val_logits = torch.randn(100, 5, generator=generator) * 3
    synthetic = torch.randn(20, 5, generator=generator) * 0.1
    result = fit_ood(val_logits, temperature=1.0, synthetic_logits=synthetic, percentile=5.0)
    assert result["method"] == "val_percentile"
    assert result["non_flower_source"] == "synthetic"
    assert result["val_reject_rate"] == pytest.approx(0.05, abs=0.011)


def test_separating_threshold_respects_the_false_reject_cap():
    in_scores = np.arange(10, dtype=float)  # 0..9
    out_scores = np.array([4.5, 5.5, 6.5])
    free = separating_threshold(in_scores, out_scores, max_false_reject=1.0)
    capped = separating_threshold(in_scores, out_scores, max_false_reject=0.2)
    assert np.mean(in_scores < capped) <= 0.2
    assert capped <= free

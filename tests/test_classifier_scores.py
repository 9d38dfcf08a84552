"""Softmax and OOD scores computed from logits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from classifier.scores import energy_score, logsumexp, msp_score, ood_score, softmax


def test_softmax_is_stable_for_large_logits():
    probabilities = softmax(np.array([1000.0, 1000.0, -1000.0]))

    assert np.allclose(probabilities, [0.5, 0.5, 0.0])
    assert probabilities.dtype == np.float32


def test_temperature_flattens_probabilities():
    logits = np.array([2.0, 0.0])

    sharp = softmax(logits, 1.0)
    flat = softmax(logits, 4.0)

    assert sharp[0] == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-6)
    assert flat[0] == pytest.approx(1 / (1 + math.exp(-0.5)), rel=1e-6)
    with pytest.raises(ValueError, match="temperature must be positive"):
        softmax(logits, 0.0)


def test_energy_score_is_temperature_times_logsumexp():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])

    scores = energy_score(logits, temperature=2.0)

    expected = [2.0 * math.log(sum(math.exp(v / 2.0) for v in row)) for row in logits]
    assert np.allclose(scores, expected)
    assert scores[0] > scores[1], "confident logits score as more in-distribution"


def test_logsumexp_large_values():
    assert logsumexp(np.array([1e4, 1e4])) == pytest.approx(1e4 + math.log(2))


def test_msp_and_dispatch():
    logits = np.array([3.0, 1.0, 0.0])

    assert ood_score(logits, score="msp") == pytest.approx(float(msp_score(logits)))
    assert ood_score(logits, score="energy") == pytest.approx(float(energy_score(logits)))
    with pytest.raises(ValueError, match="unknown OOD score 'mahalanobis'"):
        ood_score(logits, score="mahalanobis")

"""The calibration and OOD benchmark, and serving's use of the fitted temperature, score and threshold."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.calibration_ood import (
    NON_FLOWER_KINDS,
    cross_fitted_probabilities,
    false_positive_rate_at,
    main,
    non_flower_set,
    ood_report,
)
from classifier.backends import InferenceBackend
from classifier.bundle import Bundle
from classifier.decode import decode_image
from classifier.labels import LabelSet
from classifier.scores import softmax
from classifier.service import ClassifierService
from tests.fixtures.bot import GatedBackend
from training.calibration import expected_calibration_error, ood_scores


def overconfident_logits(count: int = 2000, classes: int = 5, temperature: float = 3.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels follow softmax(logits / temperature): the raw softmax is overconfident."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(count, classes, generator=generator) * 4.0
    labels = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


def test_non_flower_set_is_seeded() -> None:
    images = non_flower_set(2, seed=5)

    assert [kind for kind, _ in images] == [kind for kind in NON_FLOWER_KINDS for _ in range(2)]
    assert images == non_flower_set(2, seed=5)
    assert images != non_flower_set(2, seed=6)
    for _, data in images:
        assert decode_image(data).size == (320, 240)
    # Two images of one kind differ.
    assert len({data for _, data in images}) == len(images)


def test_cross_fitted_ece_improves() -> None:
    logits, labels = overconfident_logits()

    probabilities, temperatures = cross_fitted_probabilities(logits, labels, seed=0)

    assert all(temperature == pytest.approx(3.0, rel=0.15) for temperature in temperatures)
    before = expected_calibration_error(torch.softmax(logits, dim=1), labels, 15)
    after = expected_calibration_error(probabilities, labels, 15)
    assert after < before / 2
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(len(labels), dtype=torch.float64))


def test_false_positive_rate_at_95() -> None:
    in_scores = np.arange(100, dtype=np.float64)  # the threshold keeping 95 of them is 5
    out_scores = np.array([0.0, 4.0, 5.0, 50.0])

    assert false_positive_rate_at(in_scores, out_scores) == 0.5


def test_ood_report_on_separable_logits() -> None:
    rng = np.random.default_rng(0)
    flowers = rng.normal(0.0, 0.3, (40, 5))
    flowers[np.arange(40), rng.integers(0, 5, 40)] += 6.0
    non_flowers = rng.normal(0.0, 0.3, (20, 5))
    bundle = Bundle(version="v", labels=LabelSet.from_names(["a", "b", "c", "d", "e"]))
    bundle.ood = {"score": "energy", "temperature": 1.0, "threshold": 3.0}

    report = ood_report(flowers, non_flowers, ["noise"] * 10 + ["flat"] * 10, bundle)

    assert report["scores"]["energy"]["auroc"] == 1.0
    assert report["scores"]["msp"]["auroc"] == 1.0
    assert set(report["scores"]["energy"]["auroc_by_kind"]) == {"noise", "flat"}
    assert report["val_reject_rate"] == 0.0
    assert report["non_flower_reject_rate"] == 1.0


def test_benchmark_runs_on_a_bundle(flowers5_bundle_dir: Path, flowers5_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.json"

    status = main(
        [
            "--model", str(flowers5_bundle_dir),
            "--data", str(flowers5_dir),
            "--limit-per-class", "2",
            "--non-flower-per-kind", "1",
            "--out", str(out),
        ]
    )

    assert status == 0
    report = json.loads(out.read_text())
    assert report["calibration"]["samples"] == 10
    assert report["calibration"]["bins"] == 15
    assert report["ood"]["non_flower_samples"] == len(NON_FLOWER_KINDS)
    for name in ("energy", "msp"):
        assert 0.0 <= report["ood"]["scores"][name]["auroc"] <= 1.0
    assert report["trained_here"] is False
    printed = capsys.readouterr().out
    assert "| before scaling |" in printed
    assert "| glyphs |" in printed


def test_missing_model_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a model bundle"):
        main(["--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.json")])


# -- serving applies what training fitted ------------------------------------------


def jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("score", ["energy", "msp"])
async def test_service_scores_match_training(flowers5_bundle: Bundle, shared_backend: InferenceBackend, score: str) -> None:
    bundle = flowers5_bundle.copy()
    bundle.calibration = {"temperature": 2.5}
    score_temperature = 1.0 if score == "energy" else 2.5
    images = [jpeg((200, 30, 40)), jpeg((20, 180, 60))]
    # GatedBackend blocks nothing here, and its close() leaves the shared backend open.
    service = ClassifierService(bundle, GatedBackend(shared_backend))
    try:
        first = await service.classify(images[0])
        # A threshold just above the first image's score rejects it and not an image scoring higher.
        bundle.ood = {"score": score, "temperature": score_temperature, "threshold": first.ood_score + 1e-9}
        predictions = [await service.classify(data) for data in images]
    finally:
        await service.close()

    logits = np.stack([prediction.logits for prediction in predictions])
    expected = ood_scores(logits, score, score_temperature)
    assert [prediction.ood_score for prediction in predictions] == pytest.approx(expected.tolist(), rel=1e-6)
    for prediction in predictions:
        assert prediction.temperature == 2.5
        assert prediction.probabilities == pytest.approx(softmax(prediction.logits, 2.5), abs=1e-6)
        assert prediction.is_ood == (prediction.ood_score < bundle.ood_threshold)
    assert predictions[0].is_ood is True

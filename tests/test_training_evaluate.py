"""The evaluate command: accuracy figures, the confusion-matrix PNG and the JSON report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from classifier.bundle import new_random_bundle
from classifier.labels import LabelSet
from classifier.preprocess import Preprocessing
from tests.test_training_data import make_image_folder
from training.__main__ import main
from training.data import DataSpec
from training.evaluate import build_report, draw_confusion_matrix, evaluate_bundle


@pytest.fixture(scope="module")
def flowers5_bundle(flowers5_dir, tmp_path_factory):
    return new_random_bundle(LabelSet.from_path(flowers5_dir), tmp_path_factory.mktemp("bundle") / "flowers5-random", seed=3)


def test_evaluate_writes_png_and_json(flowers5_bundle, flowers5_dir, tmp_path):
    report = evaluate_bundle(
        flowers5_bundle.path,
        DataSpec(source=str(flowers5_dir), limit_per_class=2),
        out=tmp_path / "eval",
        workers=0,
        show_progress_bar=False,
    )
    written = json.loads((tmp_path / "eval" / "report.json").read_text(encoding="utf-8"))
    confusion = np.array(written["confusion"])
    assert written["samples"] == 10
    assert confusion.shape == (5, 5)
    assert confusion.sum(axis=1).tolist() == [2, 2, 2, 2, 2]
    assert written["top1"] == pytest.approx(np.trace(confusion) / 10)
    assert written["top1"] <= written["top5"] == 1.0
    assert [entry["id"] for entry in written["per_class"]] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert sum(entry["correct"] for entry in written["per_class"]) == np.trace(confusion)
    assert report["version"] == flowers5_bundle.version
    image = Image.open(tmp_path / "eval" / "confusion.png")
    assert image.format == "PNG"
    assert image.width > 200
    assert image.height > 200


def test_evaluate_command_on_labelled_examples(flowers5_bundle, flowers5_val_photos, tmp_path, capsys):
    examples = tmp_path / "examples.jsonl"
    chosen = [flowers5_val_photos[0], flowers5_val_photos[-1]]
    examples.write_text("".join(json.dumps({"path": str(p), "label": p.parent.name}) + "\n" for p in chosen), encoding="utf-8")
    status = main(["evaluate", "--model", str(flowers5_bundle.path), "--examples", str(examples), "--out", str(tmp_path / "ex"), "--no-progress-bar"])
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["samples"] == 2
    assert (tmp_path / "ex" / "confusion.png").is_file()


def test_report_counts_top1_and_top5(flowers5_bundle):
    import torch

    logits = torch.tensor([[5.0, 4, 3, 2, 1], [1.0, 2, 3, 4, 5], [0.0, 9, 0, 0, 0]])
    labels = torch.tensor([0, 0, 1])
    report = build_report(logits, labels, flowers5_bundle)
    assert report["top1"] == pytest.approx(2 / 3)
    assert report["top5"] == 1.0
    assert report["confusion"][0] == [1, 0, 0, 0, 1]
    assert report["per_class"][1]["accuracy"] == 1.0
    assert report["per_class"][2]["accuracy"] is None


def test_confusion_matrix_image_scales_to_102_classes():
    names = [f"class number {index}" for index in range(102)]
    matrix = np.eye(102, dtype=int) * 3
    image = draw_confusion_matrix(matrix, names, title="102 classes")
    assert image.width > 102 * 12
    # The diagonal is drawn dark (full recall) and an off-diagonal cell stays white.
    left_top = image.width - 10 - 102 * 12, image.height - 10 - 102 * 12
    diagonal = image.getpixel((left_top[0] + 6, left_top[1] + 6))
    off_diagonal = image.getpixel((left_top[0] + 12 + 6, left_top[1] + 6))
    assert sum(diagonal) < 300
    assert off_diagonal == (255, 255, 255)


def test_evaluate_without_data_uses_all_images(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", {"a": 1, "b": 1}, val_count=3)
    bundle = new_random_bundle(LabelSet.from_path(data), tmp_path / "bundle", seed=4, preprocessing=Preprocessing(resize=72, crop=64))
    bundle.recipe["data"] = DataSpec(source=str(data), limit_per_class=1).to_dict()
    bundle.save(tmp_path / "bundle")
    common = ["evaluate", "--model", str(tmp_path / "bundle"), "--device", "cpu", "--no-progress-bar"]

    assert main([*common, "--out", str(tmp_path / "all")]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 6

    assert main([*common, "--out", str(tmp_path / "two"), "--limit-per-class", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 4

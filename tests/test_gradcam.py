"""Grad-CAM: the heat map of the predicted class and the overlay PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.bundle import new_random_bundle
from classifier.labels import LabelSet
from classifier.preprocess import Preprocessing, to_array
from training.__main__ import main
from training.gradcam import center_crop_box, colorize, grad_cam


@pytest.fixture(scope="module")
def bundle(flowers5_dir, tmp_path_factory):
    return new_random_bundle(LabelSet.from_path(flowers5_dir), tmp_path_factory.mktemp("bundle") / "random", seed=9)


def test_gradcam_command_writes_overlay_for_predicted_class(bundle, flowers5_val_photos, tmp_path, capsys):
    photo = flowers5_val_photos[3]
    out = tmp_path / "cam.png"
    assert main(["gradcam", "--model", str(bundle.path), str(photo), "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    model = bundle.build_torch_model()
    with Image.open(photo) as source:
        batch = torch.from_numpy(to_array(source.convert("RGB"), bundle.preprocessing))[None]
    with torch.no_grad():
        predicted = int(model(batch).argmax())
    assert result["class_index"] == predicted
    assert result["name"] == bundle.labels.display_name(predicted, "en")
    image = Image.open(out)
    assert image.format == "PNG"
    assert image.width >= 224


def test_gradcam_map_is_normalized_and_follows_the_class(bundle):
    model = bundle.build_torch_model()
    batch = torch.from_numpy(to_array(Image.effect_mandelbrot((256, 256), (-2, -1.5, 1, 1.5), 40).convert("RGB")))[None]
    cam, target, probabilities = grad_cam(model, batch)
    assert cam.shape == (7, 7)
    assert cam.min() >= 0.0
    assert cam.max() <= 1.0
    assert target == int(np.argmax(probabilities))
    other_cam, other_target, _ = grad_cam(model, batch, class_index=(target + 1) % 5)
    assert other_target == (target + 1) % 5
    assert not np.allclose(cam, other_cam)
    assert all(parameter.grad is None for parameter in model.parameters())
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_center_crop_box_matches_the_resize_and_crop():
    assert center_crop_box(512, 256, resize=256, crop=224) == (144, 16, 368, 240)
    assert center_crop_box(256, 256, resize=256, crop=224) == (16, 16, 240, 240)


def test_colorize_runs_from_blue_to_red():
    colors = colorize(np.array([[0.0, 1.0]]))
    assert tuple(colors[0, 0]) == (0, 0, 160)
    assert tuple(colors[0, 1]) == (230, 20, 0)


@pytest.mark.parametrize("content", [None, b"plain text, not a photo\n"], ids=["missing", "not-an-image"])
def test_gradcam_command_rejects_unreadable_image(content, tmp_path, caplog):
    tiny_bundle = new_random_bundle(LabelSet.from_names(["a", "b"]), tmp_path / "bundle", seed=2, preprocessing=Preprocessing(resize=72, crop=64))
    photo = tmp_path / "photo.jpg"
    if content is not None:
        photo.write_bytes(content)
    out = tmp_path / "cam.png"
    assert main(["gradcam", "--model", str(tiny_bundle.path), str(photo), "--out", str(out), "--device", "cpu"]) == 2
    records = [record for record in caplog.records if record.name == "training" and record.levelname == "ERROR"]
    assert len(records) == 1
    assert not records[0].exc_info
    assert str(photo) in records[0].getMessage()
    assert not out.exists()

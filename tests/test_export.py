"""Exports: ONNX, TorchScript and int8, checked against fp32 and recorded in bundle.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from classifier.bundle import Bundle, new_random_bundle
from classifier.labels import LabelSet
from classifier.preprocess import to_array
from training.__main__ import main
from training.data import load_image
from training.export import compare_logits, export_bundle

pytestmark = pytest.mark.slow


def test_export_all_formats_agree_on_flowers5_photos(flowers5_dir, flowers5_val_photos, tmp_path, capsys):
    bundle = new_random_bundle(LabelSet.from_path(flowers5_dir), tmp_path / "bundle", seed=1)
    photos = tmp_path / "photos"
    photos.mkdir()
    chosen = flowers5_val_photos[::40][:5]
    for photo in chosen:
        (photos / photo.name).symlink_to(photo)

    assert main(["export", "--model", str(bundle.path), "--images", str(photos)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = Bundle.load(tmp_path / "bundle")
    assert saved.exports == printed

    onnx_entry = saved.exports["onnx"]
    assert onnx_entry["file"] == "model.onnx"
    assert onnx_entry["opset"] >= 17
    assert onnx_entry["samples"] == len(chosen)
    assert onnx_entry["top1_agreement"] == 1.0
    assert onnx_entry["max_abs_logit_diff"] < 1e-3
    assert onnx_entry["fit_for_serving"] is True
    assert saved.exports["torchscript"]["top1_agreement"] == 1.0
    int8 = saved.exports["int8"]
    assert int8["file"] == "model.int8.torchscript.pt"
    assert 0.0 <= int8["top1_agreement"] <= 1.0
    assert int8["fit_for_serving"] == (int8["top1_agreement"] >= 0.99)
    assert int8["bytes"] < saved.exports["torchscript"]["bytes"] / 2
    assert not list((tmp_path / "bundle").glob("*.onnx.data"))

    # The ONNX file is self-contained and accepts any batch size.
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "bundle" / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.stack([to_array(load_image(photo), saved.preprocessing) for photo in chosen[:3]])
    assert session.run(None, {"input": batch})[0].shape == (3, 5)
    assert session.run(None, {"input": batch[:1]})[0].shape == (1, 5)


def test_compare_logits_counts_disagreements():
    reference = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.9]])
    candidate = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.8, 0.9]])
    result = compare_logits(reference, candidate)
    assert result["top1_agreement"] == 0.75
    assert result["max_abs_logit_diff"] == pytest.approx(0.2)
    assert result["samples"] == 4


def test_export_rejects_bad_arguments(tmp_path):
    bundle = new_random_bundle(LabelSet.from_names(["a", "b"]), tmp_path / "bundle", seed=1)
    with pytest.raises(ValueError, match="unknown export format"):
        export_bundle(bundle.path, formats=["tflite"])
    with pytest.raises(ValueError, match="min_agreement"):
        export_bundle(bundle.path, formats=["onnx"], min_agreement=1.5)

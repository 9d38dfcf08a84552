"""Unreadable image files in training and evaluation data: checked once, skipped, counted, or fatal with --strict-data."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from classifier.bundle import Bundle, new_random_bundle
from classifier.labels import LabelSet
from classifier.preprocess import Preprocessing
from tests.test_training_data import make_image, make_image_folder
from training.__main__ import main
from training.data import DataSpec, ImageDataError
from training.recipe import Recipe
from training.train import train

TINY = {"crop_size": 64, "resize_size": 72, "views": 1, "workers": 0, "ood_synthetic": 0, "epochs": 1, "eval_batch_size": 1}
TINY_FLAGS = ["--epochs", "1", "--views", "1", "--crop-size", "64", "--resize-size", "72", "--ood-synthetic", "0", "--no-progress-bar"]


def write_png_400_megapixels(path: Path) -> Path:
    """Write a valid 20000 x 20000 grayscale PNG (all black, about 400 KB on disk)."""
    width = height = 20_000
    compressor = zlib.compressobj(9)
    rows = (b"\0" * (width + 1)) * 500  # each row: filter byte 0, then one byte per pixel
    pixels = b"".join(compressor.compress(rows) for _ in range(height // 500)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def write_truncated_png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def write_pdf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    return path


def write_empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_truncated_jpeg(path: Path) -> Path:
    make_image(path, 77, size=(160, 120))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    return write_png_400_megapixels(tmp_path_factory.mktemp("huge") / "huge.png")


def folder_with_bad_files(root: Path, huge_png: Path) -> Path:
    """12 good photos (2 classes x 4 train + 2 val) plus a 0-byte JPEG, a cut-off PNG, a PDF named .jpg and a 400 MP PNG."""
    make_image_folder(root, {"a": 4, "b": 4}, val_count=2)
    write_empty(root / "train" / "a" / "empty.jpg")
    write_truncated_png(root / "train" / "b" / "cut.png")
    write_pdf(root / "val" / "a" / "document.jpg")
    (root / "train" / "b" / "huge.png").write_bytes(huge_png.read_bytes())
    return root


def training_errors(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "training" and record.levelname == "ERROR"]


def skip_warnings(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "training.data" and record.getMessage().startswith("skipping unreadable image")
    ]


@pytest.mark.slow
def test_train_skips_unreadable_files(tmp_path, huge_png, caplog):
    data = folder_with_bad_files(tmp_path / "data", huge_png)
    out = tmp_path / "bundle"
    with caplog.at_level(logging.INFO):
        # One DataLoader worker process: images are decoded outside the main process, as by default.
        status = main(["train", "--data", str(data), "--weights", "none", "--out", str(out), "--workers", "1", *TINY_FLAGS])
    assert status == 0
    assert training_errors(caplog) == []
    warnings = skip_warnings(caplog)
    assert len(warnings) == 4
    for name in ("empty.jpg", "cut.png", "document.jpg", "huge.png"):
        assert sum(name in warning for warning in warnings) == 1, name

    bundle = Bundle.load(out)
    assert bundle.metrics["skipped_images"] == 4
    assert bundle.metrics["skipped_images_by_source"] == {"train": 3, "val": 1}
    assert bundle.metrics["train_samples"] == 8
    assert bundle.metrics["val_samples"] == 4


@pytest.mark.slow
def test_strict_data_stops_at_first_bad_file(tmp_path, huge_png, caplog):
    data = folder_with_bad_files(tmp_path / "data", huge_png)
    out = tmp_path / "bundle"
    status = main(["train", "--data", str(data), "--weights", "none", "--out", str(out), "--strict-data", "--workers", "0", *TINY_FLAGS])
    assert status == 2
    records = training_errors(caplog)
    assert len(records) == 1
    assert not records[0].exc_info
    message = records[0].getMessage()
    assert len(message.splitlines()) == 1
    assert f"cannot decode image {data / 'train' / 'a' / 'empty.jpg'}" in message
    assert "3 more unreadable images" in message
    assert not out.exists()


def test_class_without_readable_images_stops(tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", {"a": 2, "b": 2, "c": 1}, val_count=1)
    for path in (data / "train" / "b").iterdir():
        path.write_bytes(b"")
    status = main(["train", "--data", str(data), "--weights", "none", "--out", str(tmp_path / "bundle"), "--workers", "0", *TINY_FLAGS])
    assert status == 2
    records = training_errors(caplog)
    assert len(records) == 1
    message = records[0].getMessage()
    assert "after skipping 2 unreadable images" in message
    assert "no readable training images" in message
    assert message.endswith("b. Fix or replace their unreadable files")
    assert len(message.splitlines()) == 1


def test_one_class_left_stops(tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", {"a": 2, "b": 1, "c": 1}, val_count=1)
    write_truncated_jpeg(data / "train" / "b" / "000.jpg")
    write_pdf(data / "train" / "c" / "000.jpg")
    status = main(["train", "--data", str(data), "--weights", "none", "--out", str(tmp_path / "bundle"), "--workers", "0", *TINY_FLAGS])
    assert status == 2
    message = training_errors(caplog)[0].getMessage()
    assert "no readable training images" in message
    assert "b, c, which leaves 1 of 3 classes and training needs at least 2" in message


def test_empty_validation_split_stops(tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", {"a": 2, "b": 2}, val_count=1)
    for path in (data / "val").rglob("*.jpg"):
        write_pdf(path)
    status = main(["train", "--data", str(data), "--weights", "none", "--out", str(tmp_path / "bundle"), "--workers", "0", *TINY_FLAGS])
    assert status == 2
    message = training_errors(caplog)[0].getMessage()
    assert "after skipping 2 unreadable images, the validation split" in message
    assert "is empty" in message


class EmptyFileOnFirstPoll:
    """A `should_stop` callback that empties `path` the first time training polls it, then never stops the run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.polls = 0

    def __call__(self) -> bool:
        self.polls += 1
        if self.polls == 1:
            self.path.write_bytes(b"")
        return False


@pytest.mark.slow
@pytest.mark.parametrize("feature_cache", [True, False], ids=["feature_cache", "plain"])
def test_image_failing_during_run_is_skipped(tmp_path, feature_cache, caplog):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, val_count=1)
    changed = data / "train" / "b" / "002.jpg"
    hook = EmptyFileOnFirstPoll(changed)
    recipe = Recipe(**TINY, batch_size=2, feature_cache=feature_cache)
    with caplog.at_level(logging.WARNING, logger="training.data"):
        bundle = train(recipe, DataSpec(source=str(data)), "none", tmp_path / "bundle", should_stop=hook, show_progress_bar=False)
    assert hook.polls > 1
    assert bundle.metrics["skipped_images"] == 1
    assert bundle.metrics["skipped_images_by_source"] == {"during_run": 1}
    warnings = skip_warnings(caplog)
    assert len(warnings) == 1
    assert str(changed) in warnings[0]
    # The feature cache drops the sample; the plain path leaves it out of each batch it falls in.
    assert bundle.metrics["train_samples"] == (5 if feature_cache else 6)


@pytest.mark.slow
def test_strict_run_stops_on_failing_image(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, val_count=1)
    changed = data / "train" / "b" / "002.jpg"
    recipe = Recipe(**TINY)
    with pytest.raises(ImageDataError, match="the file is empty"):
        train(
            recipe,
            DataSpec(source=str(data)),
            "none",
            tmp_path / "bundle",
            should_stop=EmptyFileOnFirstPoll(changed),
            show_progress_bar=False,
            strict_data=True,
        )
    assert not (tmp_path / "bundle" / "bundle.json").exists()


@pytest.fixture
def small_bundle(tmp_path) -> Bundle:
    return new_random_bundle(LabelSet.from_names(["a", "b"]), tmp_path / "random", seed=2, preprocessing=Preprocessing(resize=72, crop=64))


def test_evaluate_skips_unreadable_files(tmp_path, small_bundle, huge_png, capsys, caplog):
    data = make_image_folder(tmp_path / "data", {"a": 1, "b": 1}, val_count=2)
    write_empty(data / "val" / "a" / "empty.jpg")
    (data / "val" / "b" / "huge.png").write_bytes(huge_png.read_bytes())
    status = main(["evaluate", "--model", str(small_bundle.path), "--data", str(data), "--out", str(tmp_path / "eval"), "--no-progress-bar"])
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["samples"] == 4
    assert printed["skipped_images"] == 2
    written = json.loads((tmp_path / "eval" / "report.json").read_text(encoding="utf-8"))
    assert written["skipped_images"] == 2
    assert len(skip_warnings(caplog)) == 2


def test_evaluate_strict_data_stops(tmp_path, small_bundle, caplog):
    data = make_image_folder(tmp_path / "data", {"a": 1, "b": 1}, val_count=2)
    write_pdf(data / "val" / "a" / "document.jpg")
    status = main(["evaluate", "--model", str(small_bundle.path), "--data", str(data), "--out", str(tmp_path / "eval"), "--strict-data", "--no-progress-bar"])
    assert status == 2
    records = training_errors(caplog)
    assert len(records) == 1
    assert not records[0].exc_info
    assert "document.jpg: the data is not an image" in records[0].getMessage()
    assert not (tmp_path / "eval").exists()


def test_evaluate_with_no_readable_image_stops(tmp_path, small_bundle, caplog):
    data = make_image_folder(tmp_path / "data", {"a": 1, "b": 1}, val_count=1)
    for path in (data / "val").rglob("*.jpg"):
        write_empty(path)
    status = main(["evaluate", "--model", str(small_bundle.path), "--data", str(data), "--out", str(tmp_path / "eval"), "--no-progress-bar"])
    assert status == 2
    assert "none of the 2 images to evaluate" in training_errors(caplog)[0].getMessage()

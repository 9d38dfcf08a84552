"""The image check before a run and the handling of images that fail to load during one."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.test_training_data import make_image
from tests.test_training_unreadable import huge_png, write_empty, write_pdf, write_truncated_jpeg, write_truncated_png  # noqa: F401 - huge_png is a fixture
from training.data import (
    ImageDataError,
    ImageSamples,
    Sample,
    SkippedImages,
    UnreadableImage,
    drop_unreadable,
    find_unreadable_images,
)
from training.features import run_batches


def test_check_names_each_bad_kind(tmp_path, huge_png):
    good = make_image(tmp_path / "good.jpg", 1)
    bad = {
        write_empty(tmp_path / "empty.jpg"): "empty",
        write_truncated_png(tmp_path / "cut.png"): "truncated",
        write_truncated_jpeg(tmp_path / "cut.jpg"): "truncated",
        write_pdf(tmp_path / "document.jpg"): "not_image",
        huge_png: "too_large",
        tmp_path / "missing.jpg": "unreadable",
    }
    found = find_unreadable_images([good, *bad, good], threads=2)
    assert [image.path for image in found] == list(bad)
    assert {image.path: image.reason for image in found} == bad
    for image in found:
        assert str(image.path) in image.message
        assert "\n" not in image.message


def test_skipped_images_warn_for_the_first_only(caplog):
    skipped = SkippedImages(max_warnings=2)
    images = [UnreadableImage(Path(f"/data/{index}.jpg"), "empty", f"cannot decode image /data/{index}.jpg") for index in range(5)]
    with caplog.at_level(logging.WARNING, logger="training.data"):
        for image in images:
            skipped.add(image, "train")
        skipped.add(images[0], "val")
        skipped.log_summary()
    messages = [record.getMessage() for record in caplog.records]
    assert len(skipped) == 5
    assert skipped.to_dict() == {"train": 5}
    assert [message for message in messages if message.startswith("skipping")] == [
        "skipping unreadable image (train): cannot decode image /data/0.jpg",
        "skipping unreadable image (train): cannot decode image /data/1.jpg",
    ]
    assert len(messages) == 4
    assert messages[-1] == "skipped 5 unreadable images in all (train 5)"


def test_run_batches_marks_unreadable_rows(tmp_path):
    good = make_image(tmp_path / "good.jpg", 1)
    empty = write_empty(tmp_path / "empty.jpg")
    dataset = ImageSamples([Sample(good, 0), Sample(empty, 1), Sample(good, 0)], lambda image: torch.ones(2), mark_unreadable=True)
    failures: list[UnreadableImage] = []
    rows = run_batches(
        lambda images: images * 3,
        dataset,
        [0, 1, 2],
        device=torch.device("cpu"),
        batch_size=2,
        workers=1,
        show_progress_bar=False,
        on_unreadable=failures.append,
    )
    assert rows.readable.tolist() == [True, False, True]
    assert rows.readable_values().tolist() == [[3.0, 3.0], [3.0, 3.0]]
    assert torch.isnan(rows.values[1]).all()
    assert [failure.path for failure in failures] == [empty]
    assert failures[0].reason == "empty"


def test_run_batches_raises_one_line_by_default(tmp_path):
    empty = write_empty(tmp_path / "empty.jpg")
    dataset = ImageSamples([Sample(empty, 0)], lambda image: torch.ones(2), mark_unreadable=True)
    with pytest.raises(ImageDataError) as caught:
        run_batches(lambda images: images, dataset, [0], device=torch.device("cpu"), batch_size=1, workers=1, show_progress_bar=False)
    message = str(caught.value)
    assert message == f"cannot decode image {empty}: the file is empty (0 bytes)"
    assert "DataLoader worker" not in message


@pytest.mark.parametrize(("bad_count", "suffix"), [(1, ""), (2, " (1 more unreadable image)"), (4, " (3 more unreadable images)")])
def test_strict_error_counts_others(bad_count, suffix):
    images = [UnreadableImage(Path(f"/data/{index}.jpg"), "empty", f"cannot decode image /data/{index}.jpg") for index in range(bad_count)]
    groups = {"train": [Sample(image.path, 0) for image in images]}
    with pytest.raises(ImageDataError) as caught:
        drop_unreadable(groups, images, strict=True, skipped=SkippedImages())
    assert str(caught.value).startswith(f"cannot decode image /data/0.jpg{suffix}; ")


def test_skipped_summary_singular(caplog):
    skipped = SkippedImages()
    skipped.add(UnreadableImage(Path("/data/0.jpg"), "empty", "cannot decode image /data/0.jpg"), "val")
    with caplog.at_level(logging.WARNING, logger="training.data"):
        skipped.log_summary()
    assert caplog.records[-1].getMessage() == "skipped 1 unreadable image in all (val 1)"

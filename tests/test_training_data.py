"""Data sources of the training package: ImageFolder layouts, splits, Oxford 102 checks, extra examples."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.labels import LabelSet
from training.data import (
    DataSpec,
    FLOWERS102_SPLIT_SIZES,
    Sample,
    SeededViews,
    limit_per_class,
    load_flowers102,
    load_splits,
    read_examples_file,
    render_view,
    resolve_examples,
    split_by_fraction,
    view_seed,
)
from training.presets import ClassificationPresetTrain


def make_image(path: Path, seed: int, size: tuple[int, int] = (96, 80)) -> Path:
    """Write a small random-color JPEG made from a seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    pixels = np.clip(base + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path, quality=90)
    return path


def make_image_folder(root: Path, classes: dict[str, int], *, splits: tuple[str, ...] = ("train", "val"), val_count: int = 1) -> Path:
    """Write an ImageFolder tree: `classes` maps class name to train image count; val gets `val_count` each."""
    seed = 0
    for split in splits:
        for name, count in classes.items():
            number = count if split == "train" else val_count
            for index in range(number):
                seed += 1
                target = root / split / name / f"{index:03d}.jpg" if split else root / name / f"{index:03d}.jpg"
                make_image(target, seed)
    return root


def test_image_folder_with_train_and_val(tmp_path):
    make_image_folder(tmp_path, {"b_class": 3, "a_class": 2})
    splits = load_splits(DataSpec(source=str(tmp_path)))
    assert splits.labels.class_ids == ("a_class", "b_class")
    assert Counter(sample.label for sample in splits.train) == {0: 2, 1: 3}
    assert Counter(sample.label for sample in splits.val) == {0: 1, 1: 1}
    assert splits.test is None
    assert all(sample.path.parent.parent.name == "train" for sample in splits.train)


def test_image_folder_without_val_is_rejected(tmp_path):
    make_image_folder(tmp_path, {"a": 2, "b": 2}, splits=("train",))
    with pytest.raises(FileNotFoundError, match="no val/"):
        load_splits(DataSpec(source=str(tmp_path)))


def test_val_class_unknown_to_train_is_rejected(tmp_path):
    make_image_folder(tmp_path, {"a": 2, "b": 2})
    make_image(tmp_path / "val" / "stray" / "x.jpg", 99)
    with pytest.raises(ValueError, match="stray"):
        load_splits(DataSpec(source=str(tmp_path)))


def test_single_folder_split_is_seeded_and_stratified(tmp_path):
    for name, count in {"a": 10, "b": 5}.items():
        for index in range(count):
            make_image(tmp_path / name / f"{index}.jpg", index + 100 * len(name))
    first = load_splits(DataSpec(source=str(tmp_path), val_fraction=0.2, split_seed=7))
    again = load_splits(DataSpec(source=str(tmp_path), val_fraction=0.2, split_seed=7))
    other = load_splits(DataSpec(source=str(tmp_path), val_fraction=0.2, split_seed=8))
    assert Counter(sample.label for sample in first.val) == {0: 2, 1: 1}
    assert Counter(sample.label for sample in first.train) == {0: 8, 1: 4}
    assert first.val == again.val
    assert {s.path for s in first.val} != {s.path for s in other.val}
    assert not {s.path for s in first.val} & {s.path for s in first.train}


def test_split_keeps_one_training_image_per_class():
    samples = [Sample(Path(f"{i}.jpg"), 0) for i in range(2)]
    train, val = split_by_fraction(samples, val_fraction=0.9, seed=0)
    assert len(train) == 1
    assert len(val) == 1


def test_limit_per_class_keeps_first_images():
    samples = [Sample(Path(f"{label}-{i}.jpg"), label) for label in (0, 1) for i in range(5)]
    kept = limit_per_class(samples, 2)
    assert kept == [samples[0], samples[1], samples[5], samples[6]]


def test_flowers5_layout(flowers5_dir):
    splits = load_splits(DataSpec(source=str(flowers5_dir), limit_per_class=4))
    assert splits.labels.class_ids == ("daisy", "dandelion", "roses", "sunflowers", "tulips")
    assert len(splits.train) == 20
    assert len(splits.val) == 20


def test_extra_examples_by_id_and_index(tmp_path):
    labels = LabelSet.from_names(["daisy", "roses"])
    photo = make_image(tmp_path / "p.jpg", 1)
    samples = resolve_examples([(photo, "roses"), {"path": str(photo), "label": 0}, Sample(photo, 1)], labels)
    assert [sample.label for sample in samples] == [1, 0, 1]


def test_extra_example_with_unknown_label_is_rejected(tmp_path):
    labels = LabelSet.from_names(["daisy", "roses"])
    photo = make_image(tmp_path / "p.jpg", 1)
    with pytest.raises(ValueError, match="'lily'"):
        resolve_examples([(photo, "lily")], labels)
    with pytest.raises(ValueError, match="outside 0..1"):
        resolve_examples([(photo, 5)], labels)


def test_extra_example_with_missing_file_is_rejected(tmp_path):
    labels = LabelSet.from_names(["daisy", "roses"])
    with pytest.raises(ValueError, match="not found"):
        resolve_examples([(tmp_path / "gone.jpg", "daisy")], labels)


def test_examples_file_json_lines_and_list(tmp_path):
    make_image(tmp_path / "photos" / "a.jpg", 1)
    lines = tmp_path / "extra.jsonl"
    lines.write_text('{"path": "photos/a.jpg", "label": "daisy"}\n', encoding="utf-8")
    listed = tmp_path / "extra.json"
    listed.write_text(json.dumps([{"path": str(tmp_path / "photos" / "a.jpg"), "label": 0}]), encoding="utf-8")
    assert read_examples_file(lines) == [{"path": tmp_path / "photos" / "a.jpg", "label": "daisy"}]
    assert read_examples_file(listed)[0]["path"] == tmp_path / "photos" / "a.jpg"


def test_flowers102_missing_data_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        load_flowers102(tmp_path, download=False)


def test_oxford102_names_match_torchvision():
    from torchvision.datasets import Flowers102

    labels = LabelSet.oxford102()
    assert len(labels) == 102
    ours = [name.rstrip("?") for name in labels.display_names("en")]
    theirs = [name.rstrip("?") for name in Flowers102.classes]
    assert ours == theirs
    assert sum(FLOWERS102_SPLIT_SIZES.values()) == 8189


def test_seeded_view_is_reproducible(tmp_path):
    photo = make_image(tmp_path / "a" / "x.jpg", 3, size=(120, 100))
    transform = ClassificationPresetTrain(crop_size=32)
    views = SeededViews([Sample(photo, 0)], transform, seed=5)
    first, label = views[(0, 1)]
    second, _ = views[(0, 1)]
    other, _ = views[(0, 2)]
    assert label == 0
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_render_view_restores_global_generator(tmp_path):
    image = Image.open(make_image(tmp_path / "x.jpg", 4))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    render_view(image, ClassificationPresetTrain(crop_size=32), view_seed(0, 0, 0))
    assert torch.equal(torch.rand(3), expected)

"""Starting weights: a torchvision 1000-class state dict file, bundles with the same or other labels."""

from __future__ import annotations

import io

import pytest
import torch
import torchvision

from classifier.bundle import Bundle, new_random_bundle
from classifier.labels import LabelSet
from tests.test_training_data import make_image_folder
from training.__main__ import main
from training.errors import InputError
from training.weights import build_starting_model


@pytest.fixture(scope="module")
def torchvision_checkpoint(tmp_path_factory):
    """A file with the layout of torchvision's ConvNeXt-Tiny state dict (1000 classes), random values."""
    torch.manual_seed(1234)
    state = torchvision.models.convnext_tiny().state_dict()
    assert state["classifier.2.weight"].shape == (1000, 768)
    path = tmp_path_factory.mktemp("weights") / "convnext_tiny_1000.pth"
    torch.save(state, path)
    return path, state


def test_torchvision_file_fills_backbone_and_replaces_head(torchvision_checkpoint):
    path, source = torchvision_checkpoint
    model, info = build_starting_model(path, LabelSet.from_names(["a", "b", "c"]), seed=0)
    target = model.state_dict()
    assert info.kind == "torchvision_file"
    for key, value in source.items():
        if key.startswith("features."):
            assert torch.equal(target[key], value), key
    assert torch.equal(target["classifier.1.weight"], source["classifier.0.weight"].flatten())
    assert torch.equal(target["classifier.1.bias"], source["classifier.0.bias"].flatten())
    assert target["classifier.2.weight"].shape == (3, 768)
    assert torch.count_nonzero(target["classifier.2.bias"]) == 0


@pytest.mark.slow
def test_weights_path_flag_trains_from_the_file(torchvision_checkpoint, tmp_path):
    path, source = torchvision_checkpoint
    data = make_image_folder(tmp_path / "data", {"a": 1, "b": 1}, val_count=1)
    status = main(
        [
            "train",
            "--data", str(data),
            "--weights", str(path),
            "--out", str(tmp_path / "bundle"),
            "--epochs", "1",
            "--views", "1",
            "--crop-size", "64",
            "--resize-size", "72",
            "--workers", "0",
            "--ood-synthetic", "0",
            "--no-progress-bar",
        ]
    )
    assert status == 0
    bundle = Bundle.load(tmp_path / "bundle")
    trained = bundle.state_dict()
    assert bundle.recipe["weights"]["kind"] == "torchvision_file"
    for key, value in source.items():
        if key.startswith("features."):
            assert torch.equal(trained[key], value), key
    assert trained["classifier.2.weight"].shape == (2, 768)


def test_bundle_with_same_labels_keeps_its_head(tmp_path):
    labels = LabelSet.from_names(["a", "b"])
    bundle = new_random_bundle(labels, tmp_path / "base", seed=5)
    with torch.no_grad():
        state = dict(bundle.state_dict())
        state["classifier.2.bias"] = torch.tensor([0.25, -0.5])
    bundle.save(tmp_path / "base", state_dict=state)
    model, info = build_starting_model(tmp_path / "base", labels, seed=0)
    assert info.kind == "bundle"
    assert info.head == "kept"
    assert info.bundle_version == bundle.version
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_bundle_with_other_labels_new_head(tmp_path):
    bundle = new_random_bundle(LabelSet.from_names(["a", "b"]), tmp_path / "base", seed=5)
    source = bundle.state_dict()
    model, info = build_starting_model(tmp_path / "base", LabelSet.from_names(["a", "b", "c"]), seed=0)
    target = model.state_dict()
    assert info.head == "new"
    assert target["classifier.2.weight"].shape == (3, 768)
    assert torch.equal(target["classifier.1.weight"], source["classifier.1.weight"])
    assert torch.equal(target["features.0.0.weight"], source["features.0.0.weight"])


def test_none_weights_are_seeded():
    labels = LabelSet.from_names(["a", "b"])
    first, _ = build_starting_model("none", labels, seed=3)
    second, _ = build_starting_model("none", labels, seed=3)
    other, _ = build_starting_model("none", labels, seed=4)
    assert torch.equal(first.features[0][0].weight, second.features[0][0].weight)
    assert not torch.equal(first.features[0][0].weight, other.features[0][0].weight)


def test_unknown_weights_spec_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'imagenet', 'none'"):
        build_starting_model(tmp_path / "missing.pth", LabelSet.from_names(["a", "b"]), seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without bundle.json"):
        build_starting_model(tmp_path / "empty", LabelSet.from_names(["a", "b"]), seed=0)


def error_records(caplog) -> list:
    return [record for record in caplog.records if record.name == "training" and record.levelname == "ERROR"]


def train_args(data, weights, out) -> list[str]:
    return ["train", "--data", str(data), "--weights", str(weights), "--out", str(out), "--epochs", "1", "--workers", "0", "--no-progress-bar"]


def test_corrupt_weights_file_exits_with_one_line(tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", {"a": 1, "b": 1}, val_count=1)
    corrupt = tmp_path / "convnext_tiny.pth"
    corrupt.write_bytes(bytes(range(256)) * 4)
    assert main(train_args(data, corrupt, tmp_path / "bundle")) == 2
    records = error_records(caplog)
    assert len(records) == 1
    assert not records[0].exc_info
    message = records[0].getMessage()
    assert f"could not read weights file {corrupt}" in message
    assert "'imagenet' or 'none'" in message
    assert "weights_only" not in message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "bundle").exists()


def test_truncated_weights_file_raises_input_error(torchvision_checkpoint, tmp_path):
    path, _ = torchvision_checkpoint
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(InputError, match="could not read weights file"):
        build_starting_model(truncated, LabelSet.from_names(["a", "b"]), seed=0)


def test_unavailable_imagenet_weights_exit_with_one_line(tmp_path, monkeypatch, caplog):
    # A file where the torch hub keeps its checkpoints directory makes the load fail before any download.
    torch_home = tmp_path / "torch-home"
    (torch_home / "hub").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints").write_text("not a directory\n", encoding="utf-8")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    data = make_image_folder(tmp_path / "data", {"a": 1, "b": 1}, val_count=1)
    assert main(train_args(data, "imagenet", tmp_path / "bundle")) == 2
    records = error_records(caplog)
    assert len(records) == 1
    assert not records[0].exc_info
    assert "could not load the ImageNet ConvNeXt-Tiny weights" in records[0].getMessage()


def test_damaged_imagenet_cache_exits_with_one_line(tmp_path, monkeypatch, caplog):
    torch_home = tmp_path / "torch-home"
    cached = torch_home / "hub" / "checkpoints" / "convnext_tiny-983f1562.pth"
    cached.parent.mkdir(parents=True)
    buffer = io.BytesIO()
    torch.save({"features.0.0.weight": torch.zeros(2, 2)}, buffer)
    # The first bytes of a real checkpoint, as an interrupted download leaves them.
    cached.write_bytes(buffer.getvalue()[:300])
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    data = make_image_folder(tmp_path / "data", {"a": 1, "b": 1}, val_count=1)

    assert main(train_args(data, "imagenet", tmp_path / "bundle")) == 2
    records = error_records(caplog)
    assert len(records) == 1
    assert not records[0].exc_info
    message = records[0].getMessage()
    assert "could not read the cached ImageNet ConvNeXt-Tiny weights" in message
    assert str(cached) in message
    assert cached.is_file()

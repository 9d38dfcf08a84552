"""One-line command errors: an unusable --device, and data directories recorded in a bundle."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from classifier.bundle import Bundle, new_random_bundle
from classifier.labels import LabelSet
from classifier.preprocess import Preprocessing
from tests.test_training_data import make_image, make_image_folder
from training.__main__ import main
from training.data import DataSpec
from training.engine import resolve_device
from training.errors import InputError
from training.retrain import error_detail

TINY_FLAGS = ["--epochs", "1", "--views", "1", "--crop-size", "64", "--resize-size", "72", "--workers", "0", "--ood-synthetic", "0", "--no-progress-bar"]

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


def training_errors(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "training" and record.levelname == "ERROR"]


def one_line_error(caplog) -> str:
    records = training_errors(caplog)
    assert len(records) == 1
    assert not records[0].exc_info
    message = records[0].getMessage()
    assert len(message.splitlines()) == 1
    return message


@pytest.fixture
def small_bundle(tmp_path) -> Bundle:
    return new_random_bundle(LabelSet.from_names(["a", "b"]), tmp_path / "random", seed=2, preprocessing=Preprocessing(resize=72, crop=64))


def command_with_device(command: str, tmp_path, bundle: Bundle, device: str) -> list[str]:
    photo = make_image(tmp_path / "photo.jpg", 5)
    data = make_image_folder(tmp_path / "data", {"a": 1, "b": 1}, val_count=1)
    arguments = {
        "train": ["train", "--data", str(data), "--weights", "none", "--out", str(tmp_path / "out"), *TINY_FLAGS],
        "evaluate": ["evaluate", "--model", str(bundle.path), "--data", str(data), "--out", str(tmp_path / "eval")],
        "export": ["export", "--model", str(bundle.path), "--formats", "torchscript", "--images", str(photo)],
        "gradcam": ["gradcam", "--model", str(bundle.path), str(photo), "--out", str(tmp_path / "cam.png")],
    }
    return [*arguments[command], "--device", device]


@no_cuda
@pytest.mark.parametrize("command", ["train", "evaluate", "export", "gradcam"])
def test_cuda_device_without_cuda_is_one_line(command, tmp_path, small_bundle, caplog):
    status = main(command_with_device(command, tmp_path, small_bundle, "cuda"))
    assert status == 2
    message = one_line_error(caplog)
    assert message.startswith(f"{command} failed: --device cuda was requested but CUDA is not available (")
    assert message.endswith("); use --device cpu or auto")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "cam.png").exists()
    assert Bundle.load(small_bundle.path).exports == {}


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "gradcam"])
def test_unknown_device_is_one_line(command, tmp_path, small_bundle, caplog):
    status = main(command_with_device(command, tmp_path, small_bundle, "gpu"))
    assert status == 2
    assert one_line_error(caplog) == f"{command} failed: invalid --device 'gpu'; expected auto, cpu, cuda or cuda:N"


@pytest.mark.slow
@pytest.mark.parametrize("device", ["mps", "meta", "xla", "cuda:x"])
def test_unsupported_device_type_is_one_line(device, tmp_path, small_bundle, caplog):
    status = main(command_with_device("train", tmp_path, small_bundle, device))
    assert status == 2
    assert one_line_error(caplog) == f"train failed: invalid --device {device!r}; expected auto, cpu, cuda or cuda:N"
    assert not (tmp_path / "out").exists()


@no_cuda
def test_retrain_device_error_names_setting():
    with pytest.raises(InputError) as raised:
        resolve_device("cuda", option="RETRAIN_DEVICE")
    message = str(raised.value)
    assert message.startswith("RETRAIN_DEVICE=cuda was requested but CUDA is not available (")
    assert message.endswith("); use RETRAIN_DEVICE=cpu or auto")
    assert "--device" not in message
    assert error_detail(raised.value) == message


def test_retrain_error_detail_keeps_other_class_names():
    assert error_detail(RuntimeError("out of memory")) == "RuntimeError: out of memory"


def test_bundle_records_absolute_data_directory(tmp_path, monkeypatch, capsys):
    make_image_folder(tmp_path / "work" / "data", {"a": 1, "b": 1}, val_count=1)
    monkeypatch.chdir(tmp_path / "work")
    assert main(["train", "--data", "data", "--weights", "none", "--out", "bundle", *TINY_FLAGS]) == 0
    recorded = Bundle.load(tmp_path / "work" / "bundle").recipe["data"]
    assert recorded["source"] == str((tmp_path / "work" / "data").resolve())

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    status = main(["evaluate", "--model", str(tmp_path / "work" / "bundle"), "--out", "eval", "--no-progress-bar"])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 2


def test_flowers102_source_is_kept_as_given():
    spec = DataSpec(source="flowers102", root="data").with_absolute_paths()
    assert spec.source == "flowers102"
    assert spec.root is not None
    assert spec.root.startswith("/")
    assert DataSpec(source="flowers102").with_absolute_paths().root is None


def record_data(bundle: Bundle, source: str) -> None:
    bundle.recipe = {**bundle.recipe, "data": DataSpec(source=source).to_dict()}
    bundle.save(bundle.path)


def test_relative_source_missing_asks_for_data(tmp_path, small_bundle, monkeypatch, caplog):
    record_data(small_bundle, "../shared/data/flowers5")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    status = main(["evaluate", "--model", str(small_bundle.path), "--no-progress-bar"])
    assert status == 2
    message = one_line_error(caplog)
    assert "records its data as the relative path '../shared/data/flowers5'" in message
    assert message.endswith("; pass --data with the data directory")


def test_relative_source_read_from_cwd(tmp_path, small_bundle, monkeypatch, capsys, caplog):
    make_image_folder(tmp_path / "work" / "data", {"a": 1, "b": 1}, val_count=1)
    record_data(small_bundle, "data")
    monkeypatch.chdir(tmp_path / "work")
    with caplog.at_level(logging.WARNING, logger="training.evaluate"):
        status = main(["evaluate", "--model", str(small_bundle.path), "--out", "eval", "--no-progress-bar"])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 2
    assert any("relative path data" in record.getMessage() for record in caplog.records)


def test_missing_source_asks_for_data(tmp_path, small_bundle, caplog):
    record_data(small_bundle, str(tmp_path / "moved"))
    status = main(["evaluate", "--model", str(small_bundle.path), "--no-progress-bar"])
    assert status == 2
    message = one_line_error(caplog)
    assert f"records its data as {tmp_path / 'moved'}, which does not exist" in message
    assert "pass --data" in message

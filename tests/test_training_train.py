"""End-to-end training runs: the command on flowers5, progress events, resume, extra photos, cancellation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from classifier.bundle import Bundle
from tests.test_training_data import make_image, make_image_folder
from training.__main__ import main
from training.checkpoint import CHECKPOINT_NAME, FEATURES_NAME
from training.data import DataSpec
from training.engine import TrainingCancelled
from training.errors import InputError
from training.recipe import Recipe
from training.train import check_out_dir, train

TINY = {"crop_size": 64, "resize_size": 72, "workers": 0, "ood_synthetic": 0}

pytestmark = pytest.mark.slow


def test_train_command_on_flowers5_writes_a_loadable_bundle(flowers5_dir, tmp_path, capsys):
    out = tmp_path / "flowers5-none"
    status = main(
        [
            "train",
            "--data", str(flowers5_dir),
            "--weights", "none",
            "--out", str(out),
            "--limit-per-class", "4",
            "--epochs", "2",
            "--views", "1",
            "--workers", "0",
            "--ood-synthetic", "8",
            "--progress-json",
            "--no-progress-bar",
        ]
    )
    assert status == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    phases = [event["phase"] for event in events if event["event"] == "phase"]
    assert phases == ["load_data", "weights", "features", "train", "calibrate", "save"]
    epochs = [event for event in events if event["event"] == "epoch"]
    assert [event["epoch"] for event in epochs] == [1, 2]
    assert all(event["epochs"] == 2 and 0.0 <= event["val_acc"] <= 1.0 for event in epochs)
    assert events[-1]["event"] == "done"

    bundle = Bundle.load(out)
    assert bundle.labels.display_names("en") == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert bundle.version == events[-1]["version"]
    assert bundle.metrics["val_samples"] == 20
    assert bundle.metrics["epochs_run"] == 2
    assert 0.0 <= bundle.metrics["val_top1"] <= bundle.metrics["val_top5"] <= 1.0
    assert bundle.recipe["epochs"] == 2
    assert bundle.recipe["data"]["limit_per_class"] == 4
    assert bundle.recipe["run"]["path"] == "feature_cache"
    assert bundle.calibration["temperature"] > 0
    assert bundle.ood["score"] in ("energy", "msp")
    assert bundle.ood["threshold"] is not None
    assert bundle.ood["non_flower_source"] == "synthetic"
    assert {"bundle.json", "model.pt"} <= {path.name for path in out.iterdir()}
    assert not (out / "checkpoint.pt").exists()
    assert not (out / "features.pt").exists()
    model = bundle.build_torch_model()
    assert model.num_classes == 5


def test_train_command_reports_errors_as_json(tmp_path, capsys):
    status = main(["train", "--data", str(tmp_path / "missing"), "--weights", "none", "--out", str(tmp_path / "o"), "--progress-json"])
    assert status == 1
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["event"] == "error"
    assert "does not exist" in last["message"]


def test_cancelled_run_resumes_to_the_same_head(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 3}, val_count=1)
    recipe = Recipe(epochs=4, batch_size=2, views=2, patience=0, seed=5, precision="fp32", **TINY)

    # Cancel once the second epoch is reported: the checkpoint then contains epoch 2.
    stopper = StopAfterEpochs(2)
    with pytest.raises(TrainingCancelled):
        train(recipe, str(data), "none", tmp_path / "resumed", progress=stopper.record, should_stop=stopper, show_progress_bar=False)
    assert (tmp_path / "resumed" / CHECKPOINT_NAME).is_file()
    assert not (tmp_path / "resumed" / "bundle.json").exists()

    # The uninterrupted run reuses the cached features, whose fingerprint matches.
    (tmp_path / "straight").mkdir()
    shutil.copy(tmp_path / "resumed" / FEATURES_NAME, tmp_path / "straight" / FEATURES_NAME)
    straight = train(recipe, str(data), "none", tmp_path / "straight", show_progress_bar=False)

    resumed_epochs: list[int] = []
    resumed = train(
        recipe,
        str(data),
        "none",
        tmp_path / "resumed",
        progress=lambda event: event["event"] == "epoch" and resumed_epochs.append(event["epoch"]),
        resume=True,
        show_progress_bar=False,
    )
    assert resumed_epochs == [3, 4]
    assert [r["epoch"] for r in resumed.metrics["history"]] == [1, 2, 3, 4]
    for ours, theirs in zip(resumed.metrics["history"], straight.metrics["history"]):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-6)
    resumed_state = Bundle.load(tmp_path / "resumed").state_dict()
    straight_state = Bundle.load(tmp_path / "straight").state_dict()
    assert torch.allclose(resumed_state["classifier.2.weight"], straight_state["classifier.2.weight"], atol=1e-6)
    assert not (tmp_path / "resumed" / CHECKPOINT_NAME).exists()


def test_resume_with_another_recipe_is_rejected(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 2, "b": 2}, val_count=1)
    recipe = Recipe(epochs=3, batch_size=2, views=1, patience=0, precision="fp32", **TINY)
    stopper = StopAfterEpochs(1)
    with pytest.raises(TrainingCancelled):
        train(recipe, str(data), "none", tmp_path / "run", progress=stopper.record, should_stop=stopper, show_progress_bar=False)
    assert (tmp_path / "run" / CHECKPOINT_NAME).is_file()
    with pytest.raises(ValueError, match="recipe.lr"):
        train(recipe.replace(lr=1e-3), str(data), "none", tmp_path / "run", resume=True, show_progress_bar=False)


class StopAfterEpochs:
    """A `should_stop` that turns true once `count` epoch events were reported."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.epochs: list[int] = []

    def record(self, event: dict) -> None:
        if event["event"] == "epoch":
            self.epochs.append(event["epoch"])

    def __call__(self) -> bool:
        return len(self.epochs) >= self.count


def test_extra_examples_and_non_flowers_join_the_run(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 2, "b": 2}, val_count=2)
    extra = [(make_image(tmp_path / "corrections" / f"{i}.jpg", 50 + i), "b") for i in range(3)]
    non_flowers = [make_image(tmp_path / "junk" / f"{i}.jpg", 90 + i) for i in range(3)]
    bundle = train(
        Recipe(epochs=1, views=1, **TINY),
        DataSpec(source=str(data)),
        "none",
        tmp_path / "out",
        extra_examples=extra,
        non_flower_examples=non_flowers,
        show_progress_bar=False,
    )
    assert bundle.metrics["train_samples"] == 7
    assert bundle.metrics["extra_samples"] == 3
    assert bundle.ood["non_flower_source"] == "examples"
    assert bundle.ood["non_flower_samples"] == 3
    assert bundle.ood["method"] == "youden_capped"


def test_finetune_trains_the_backbone(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 2, "b": 2}, val_count=1)
    recipe = Recipe(epochs=1, batch_size=4, finetune=True, precision="fp32", **TINY)
    bundle = train(recipe, str(data), "none", tmp_path / "out", show_progress_bar=False)
    torch.manual_seed(recipe.seed)
    from classifier.model import build_model

    initial = build_model(2).state_dict()
    trained = bundle.state_dict()
    assert bundle.recipe["run"]["path"] == "plain"
    assert not torch.equal(initial["features.0.0.weight"], trained["features.0.0.weight"])


def failure_records(caplog) -> list:
    return [record for record in caplog.records if record.name == "training" and record.levelname == "ERROR"]


def test_train_command_rejects_out_dir_in_use(tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", {"a": 1, "b": 1}, val_count=1)
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me\n", encoding="utf-8")
    status = main(["train", "--data", str(data), "--weights", "none", "--out", str(out), "--epochs", "1", "--views", "1", "--crop-size", "64", "--resize-size", "72", "--workers", "0", "--ood-synthetic", "0", "--no-progress-bar"])
    assert status == 2
    assert sorted(path.name for path in out.iterdir()) == ["todo.txt"]
    records = failure_records(caplog)
    assert len(records) == 1
    assert not records[0].exc_info
    assert str(out) in records[0].getMessage()
    assert "not a bundle" in records[0].getMessage()


def test_train_checkpoint_needs_resume(tmp_path):
    out = tmp_path / "unfinished"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_bytes(b"checkpoint of an earlier run")
    # The data directory does not exist: the output check must fail first.
    with pytest.raises(InputError, match="--resume"):
        train(Recipe(**TINY), str(tmp_path / "missing-data"), "none", out, show_progress_bar=False)
    assert sorted(path.name for path in out.iterdir()) == [CHECKPOINT_NAME]


def test_out_dir_check_accepts_reusable_dirs(tmp_path):
    check_out_dir(tmp_path / "missing", resume=False)
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty", resume=False)
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    (bundle_dir / "bundle.json").write_text("{}", encoding="utf-8")
    (bundle_dir / "model.pt").write_bytes(b"")
    check_out_dir(bundle_dir, resume=False)
    cache_only = tmp_path / "cache"
    cache_only.mkdir()
    (cache_only / FEATURES_NAME).write_bytes(b"")
    check_out_dir(cache_only, resume=False)
    (cache_only / CHECKPOINT_NAME).write_bytes(b"")
    check_out_dir(cache_only, resume=True)


def test_out_dir_check_rejects_a_file(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"")
    with pytest.raises(InputError, match="is a file"):
        check_out_dir(target, resume=False)

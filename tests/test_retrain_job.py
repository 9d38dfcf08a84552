"""The retraining job: job files, the corrections split, the sabotage hook, and the process's exits.

The process tests start `python -m training.retrain` as the bot does and read its
stdout, which must hold JSON lines only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from classifier.bundle import Bundle, new_random_bundle
from classifier.labels import LabelSet
from training.retrain import (
    CANDIDATE_DIR_NAME,
    EXIT_CANCELLED,
    EXIT_FAILED,
    HEAD_LINEAR_KEYS,
    JobError,
    RetrainJob,
    apply_sabotage,
    is_held_out,
    sabotage_mode,
    split_corrections,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
# Seconds a job process may take to react before a test fails.
PROCESS_TIMEOUT_S = 240


def make_flowers5_subset(source: Path, destination: Path, *, train: int, val: int) -> Path:
    """Link the first `train` and `val` photos of each flowers5 class into an ImageFolder at `destination`."""
    for split, count in (("train", train), ("val", val)):
        for class_dir in sorted((source / split).iterdir()):
            target = destination / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for photo in sorted(class_dir.glob("*.jpg"))[:count]:
                (target / photo.name).symlink_to(photo)
    return destination


def spare_val_photos(source: Path, *, skip: int, per_class: int) -> list[tuple[Path, str]]:
    """Return `per_class` val photos of each class after the first `skip`, with their class id."""
    photos = []
    for class_dir in sorted((source / "val").iterdir()):
        for photo in sorted(class_dir.glob("*.jpg"))[skip : skip + per_class]:
            photos.append((photo, class_dir.name))
    return photos


def example(path: Path, label: str | None, prediction_id: int, sha: str | None = None) -> dict[str, Any]:
    return {"path": str(path), "label": label, "image_sha256": sha or f"{prediction_id:064x}", "prediction_id": prediction_id}


def read_events(stdout: str) -> list[dict[str, Any]]:
    """Parse every stdout line as JSON; a line that is not JSON fails the test."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------------------
# The corrections split


def test_split_skips_unknown_labels_and_missing_files(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    examples = [
        example(photo, "roses", 1),
        example(photo, "orchids", 2),
        example(tmp_path / "gone.jpg", "roses", 3),
    ]
    data = split_corrections(examples, [], CLASSES, fraction=0.0, seed=0)
    assert data.train == [{"path": str(photo), "label": "roses"}]
    assert data.holdout == []
    assert data.skipped_unknown_label == 1
    assert data.skipped_missing_file == 1


def test_split_keeps_newest_label_of_a_photo(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    examples = [example(photo, "tulips", 7, sha="ab" * 32), example(photo, "roses", 3, sha="ab" * 32)]
    data = split_corrections(examples, [], CLASSES, fraction=0.0, seed=0)
    assert data.train == [{"path": str(photo), "label": "tulips"}]
    assert data.duplicates == 1


def test_not_flower_photos_never_become_a_class(tmp_path: Path) -> None:
    photo = tmp_path / "rock.jpg"
    photo.write_bytes(b"x")
    not_flower = [example(photo, None, 1, sha="cd" * 32), example(photo, None, 2, sha="cd" * 32)]
    data = split_corrections([], not_flower, CLASSES, fraction=0.5, seed=0)
    assert data.not_flower == [str(photo)]
    assert data.train == []
    assert data.holdout == []


def test_unknown_species_photos_are_negatives_only(tmp_path: Path) -> None:
    lily = tmp_path / "lily.jpg"
    lily.write_bytes(b"x")
    rock = tmp_path / "rock.jpg"
    rock.write_bytes(b"y")
    unknown_species = [
        example(lily, None, 1, sha="aa" * 32),
        example(lily, None, 2, sha="aa" * 32),
        # The same photo also marked "not a flower" is counted there only.
        example(rock, None, 3, sha="cd" * 32),
        example(tmp_path / "gone.jpg", None, 4),
    ]
    not_flower = [example(rock, None, 5, sha="cd" * 32)]
    data = split_corrections([], not_flower, CLASSES, fraction=0.5, seed=0, unknown_species=unknown_species)
    assert data.unknown_species == [str(lily)]
    assert data.not_flower == [str(rock)]
    assert data.ood_negatives == [str(rock), str(lily)]
    assert data.train == []
    assert data.holdout == []
    assert data.skipped_missing_file == 1
    assert data.counts()["unknown_species"] == 1
    assert data.counts()["not_flower"] == 1


def test_holdout_membership_is_stable_as_data_grows(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    first = [example(photo, "roses", index, sha=hashlib.sha256(str(index).encode()).hexdigest()) for index in range(40)]
    more = first + [example(photo, "daisy", index, sha=hashlib.sha256(str(index).encode()).hexdigest()) for index in range(40, 80)]
    before = split_corrections(first, [], CLASSES, fraction=0.3, seed=5)
    after = split_corrections(more, [], CLASSES, fraction=0.3, seed=5)
    held_before = {entry["label"] + entry["path"] for entry in before.holdout}
    assert len(before.holdout) > 0
    assert held_before <= {entry["label"] + entry["path"] for entry in after.holdout}


def test_holdout_fraction_is_respected_over_many_photos() -> None:
    hashes = [hashlib.sha256(str(index).encode()).hexdigest() for index in range(4000)]
    held = sum(is_held_out(value, fraction=0.2, seed=0) for value in hashes)
    assert 0.17 < held / len(hashes) < 0.23
    assert not any(is_held_out(value, fraction=0.0, seed=0) for value in hashes)


def test_holdout_depends_on_seed() -> None:
    hashes = [hashlib.sha256(str(index).encode()).hexdigest() for index in range(200)]
    first = [is_held_out(value, fraction=0.5, seed=0) for value in hashes]
    second = [is_held_out(value, fraction=0.5, seed=1) for value in hashes]
    assert first != second


# ---------------------------------------------------------------------------
# Job files


def new_job(tmp_path: Path, **changes: Any) -> RetrainJob:
    values = {"run_id": 3, "serving_bundle": str(tmp_path / "serving"), "base_data": str(tmp_path / "data"), "work_dir": str(tmp_path / "work")}
    return RetrainJob(**{**values, **changes})


def test_job_round_trips_through_file(tmp_path: Path) -> None:
    job = new_job(
        tmp_path,
        examples=(example(tmp_path / "a.jpg", "roses", 1),),
        not_flower=(example(tmp_path / "b.jpg", None, 2),),
        unknown_species=(example(tmp_path / "c.jpg", None, 3),),
        recipe={"epochs": 2},
        threads=1,
    )
    path = job.write(tmp_path / "job.json")
    assert RetrainJob.read(path) == job
    assert job.candidate_dir == tmp_path / "work" / CANDIDATE_DIR_NAME


def test_job_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    values = new_job(tmp_path).to_dict()
    with pytest.raises(JobError, match="unknown job keys: colour"):
        RetrainJob.from_dict({**values, "colour": "red"})
    with pytest.raises(JobError, match="format"):
        RetrainJob.from_dict({**values, "format": 99})
    with pytest.raises(JobError, match="holdout_fraction"):
        new_job(tmp_path, holdout_fraction=1.0)
    with pytest.raises(JobError, match="unknown sabotage mode"):
        new_job(tmp_path, sabotage="delete_everything")


# ---------------------------------------------------------------------------
# The sabotage hook


def test_sabotage_needs_testing_environment(tmp_path: Path) -> None:
    job = new_job(tmp_path, sabotage="negate_head")
    assert sabotage_mode(job, {}) is None
    assert sabotage_mode(job, {"FLOWERBOT_TESTING": "0"}) is None
    assert sabotage_mode(job, {"FLOWERBOT_TESTING": "1"}) == "negate_head"
    assert sabotage_mode(new_job(tmp_path), {"FLOWERBOT_TESTING": "1"}) is None


def test_negate_head_flips_final_layer_only(tmp_path: Path) -> None:
    bundle = new_random_bundle(LabelSet.from_names(CLASSES), tmp_path / "model", seed=3)
    before = {key: value.clone() for key, value in bundle.state_dict().items()}
    apply_sabotage(tmp_path / "model", "negate_head")
    after = Bundle.load(tmp_path / "model")
    state = after.state_dict()
    for key in HEAD_LINEAR_KEYS:
        assert (state[key] == -before[key]).all(), key
    backbone_key = next(key for key in before if key.startswith("features."))
    assert (state[backbone_key] == before[backbone_key]).all()
    assert after.metrics["sabotage"] == "negate_head"


# ---------------------------------------------------------------------------
# The job process


def start_job(job_path: Path, *, stdin: int | None = subprocess.DEVNULL, extra_args: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "training.retrain", "--job", str(job_path), *extra_args],
        cwd=PROJECT_ROOT,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def wait_for_event(process: subprocess.Popen[str], kind: str, phase: str | None = None) -> list[dict[str, Any]]:
    """Read stdout until an event of `kind` (and `phase`) arrives; return the events read."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        event = json.loads(line)
        seen.append(event)
        if event["event"] == kind and (phase is None or event.get("phase") == phase):
            return seen
    raise AssertionError(f"the job exited before a {kind} event; saw {seen}")


def test_unreadable_job_reports_error_on_stdout(tmp_path: Path) -> None:
    job_path = tmp_path / "job.json"
    job_path.write_text("{not json", encoding="utf-8")
    process = start_job(job_path)
    stdout, _ = process.communicate(timeout=PROCESS_TIMEOUT_S)
    assert process.returncode == EXIT_FAILED
    events = read_events(stdout)
    assert [event["event"] for event in events] == ["error"]
    assert "cannot read job file" in events[0]["message"]


def test_base_data_with_other_classes_fails(tmp_path: Path, flowers5_dir: Path) -> None:
    serving = tmp_path / "serving"
    new_random_bundle(LabelSet.from_names(("cactus", "fern")), serving, seed=0)
    job = new_job(tmp_path, serving_bundle=str(serving), base_data=str(flowers5_dir))
    process = start_job(job.write(tmp_path / "job.json"))
    stdout, _ = process.communicate(timeout=PROCESS_TIMEOUT_S)
    assert process.returncode == EXIT_FAILED
    error = read_events(stdout)[-1]
    assert error["event"] == "error"
    assert "set RETRAIN_BASE_DATA" in error["message"]
    assert not (tmp_path / "work" / CANDIDATE_DIR_NAME).exists()


@pytest.fixture
def tiny_job(tmp_path: Path, flowers5_dir: Path) -> RetrainJob:
    """A job on 3 train and 2 val photos per class, from a random-init bundle, that checks for a stop every 2 images."""
    data = make_flowers5_subset(flowers5_dir, tmp_path / "data", train=3, val=2)
    serving = tmp_path / "serving"
    new_random_bundle(LabelSet.from_path(data), serving, seed=0)
    return new_job(
        tmp_path,
        serving_bundle=str(serving),
        base_data=str(data),
        recipe={"epochs": 1, "views": 1, "workers": 0, "ood_synthetic": 0, "eval_batch_size": 2},
        nice=0,
    )


@pytest.mark.photos
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_cancels_job(tiny_job: RetrainJob, tmp_path: Path, signum: int) -> None:
    process = start_job(tiny_job.write(tmp_path / "job.json"))
    try:
        wait_for_event(process, "phase", "features")
        os.killpg(process.pid, signum)
        stdout, _ = process.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == EXIT_CANCELLED
    assert read_events(stdout)[-1]["event"] == "cancelled"
    assert not (Path(tiny_job.candidate_dir) / "bundle.json").exists()


@pytest.mark.photos
def test_closed_stdin_cancels_job(tiny_job: RetrainJob, tmp_path: Path) -> None:
    process = start_job(tiny_job.write(tmp_path / "job.json"), stdin=subprocess.PIPE, extra_args=("--stop-on-stdin-eof",))
    try:
        wait_for_event(process, "phase", "features")
        assert process.stdin is not None
        process.stdin.close()
        assert process.stdout is not None
        stdout = process.stdout.read()
        process.wait(timeout=PROCESS_TIMEOUT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == EXIT_CANCELLED
    cancelled = read_events(stdout)[-1]
    assert cancelled["event"] == "cancelled"
    assert "stdin" in cancelled["reason"]


@pytest.mark.photos
@pytest.mark.slow
def test_candidate_gets_serving_onnx_export(tiny_job: RetrainJob, tmp_path: Path) -> None:
    from classifier.backends import load_backend, unservable_reason
    from training.export import export_bundle

    export_bundle(tiny_job.serving_bundle, formats=["onnx"], samples=4)
    # A generous tolerance makes the gate pass, so the export step runs.
    job = dataclasses.replace(tiny_job, gate_tolerance=0.99)
    process = start_job(job.write(tmp_path / "job.json"))
    stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT_S)

    assert process.returncode == 0, stderr[-3000:]
    events = read_events(stdout)
    assert {"event": "phase", "phase": "export"} in events
    result = events[-1]
    assert result["event"] == "result"
    assert result["gate"]["promote"] is True
    candidate = Bundle.load(result["bundle"])
    assert candidate.exports["onnx"]["fit_for_serving"] is True
    assert candidate.exports["onnx"]["opset"] == Bundle.load(job.serving_bundle).exports["onnx"]["opset"]
    assert unservable_reason(candidate, "onnx") is None
    backend = load_backend(candidate, "onnx")
    logits = backend.logits(np.zeros((1, 3, 224, 224), dtype=np.float32))
    assert logits.shape == (1, candidate.num_classes)


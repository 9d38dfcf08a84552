"""Training across two processes with torchrun (gloo on the CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from classifier.bundle import Bundle
from tests.test_training_data import make_image_folder

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def run_torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1",
        "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()),
        "-m", "training", *args,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cwd)}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("cache", ["--feature-cache", "--no-feature-cache"])
def test_two_process_torchrun_writes_one_bundle(tmp_path, cache):
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = make_image_folder(tmp_path / "data", {"a": 3, "b": 2}, val_count=1)  # 5 train + 2 val images
    out = tmp_path / "bundle"

    result = run_torchrun(
        [
            "train",
            "--data", str(data),
            "--weights", "none",
            "--out", str(out),
            "--epochs", "1",
            "--views", "1",
            "--batch-size", "2",
            "--crop-size", "64",
            "--resize-size", "72",
            "--workers", "0",
            "--ood-synthetic", "3",
            "--progress-json",
            "--no-progress-bar",
            cache,
        ],
        cwd=repository,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    # Only rank 0 reports: one done event, one epoch event.
    assert [event["event"] for event in events].count("done") == 1
    assert [event["event"] for event in events].count("epoch") == 1

    bundle = Bundle.load(out)
    assert bundle.recipe["run"]["world_size"] == 2
    assert bundle.metrics["train_samples"] == 5
    assert bundle.metrics["val_samples"] == 2
    assert bundle.labels.class_ids == ("a", "b")
    assert {"bundle.json", "model.pt"} <= {path.name for path in out.iterdir()}
    assert not (out / "checkpoint.pt").exists()
    assert not (out / "features.pt").exists()
    assert torch.isfinite(bundle.state_dict()["classifier.2.weight"]).all()

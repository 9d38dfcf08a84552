"""Serving on the onnx backend without PyTorch, as `pip install .[onnx]` installs it.

A fresh virtual environment per CI run would take minutes. These tests start
Python subprocesses instead, in which an import hook makes torch and
torchvision unimportable. The serving code runs there: the ClassifierService
on an ONNX export, and `python -m bot` end to end on the Telegram emulator. The
real clean install is measured by hand with `python -m benchmarks.onnx_install`
(see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from classifier.bundle import Bundle
from classifier.decode import decode_image
from classifier.preprocess import to_array
from tests.emulator import TelegramEmulator, make_user

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180
REPLY_TIMEOUT_S = 120

BLOCK_TORCH = """
import importlib.abc, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, BlockTorch())
"""

SERVE_PHOTO = BLOCK_TORCH + """
import asyncio, json
try:
    import torch
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the import hook did not block torch")

import bot.__main__, bot.app, bot.runtime
from classifier.service import ClassifierService

async def classify(model, photo):
    service = ClassifierService.from_path(model, backend_kind="onnx", device="cpu")
    try:
        return await service.classify(open(photo, "rb").read(), k=3)
    finally:
        await service.close()

prediction = asyncio.run(classify(sys.argv[1], sys.argv[2]))
print(json.dumps({
    "logits": prediction.logits.tolist(),
    "top": [candidate.class_id for candidate in prediction.top],
    "torch_modules": sorted(name for name in sys.modules if name.partition(".")[0] in ("torch", "torchvision")),
}))
"""

RUN_BOT = BLOCK_TORCH + """
import runpy
sys.argv[0] = "bot"
runpy.run_module("bot", run_name="__main__", alter_sys=True)
"""


def test_onnx_extra_leaves_torch_out():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    serving = project["dependencies"] + project["optional-dependencies"]["onnx"]
    names = [requirement.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for requirement in serving]

    assert "onnxruntime" in names
    assert "torch" not in names
    assert "torchvision" not in names


@pytest.fixture(scope="module")
def onnx_bundle_dir(flowers5_bundle: Bundle, flowers5_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a copy of the session bundle with an ONNX export, written by `training.export`."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from training.export import export_bundle

    out = tmp_path_factory.mktemp("onnx-serving") / "bundle"
    flowers5_bundle.copy().save(out)
    entries = export_bundle(out, formats=("onnx",), images=flowers5_dir / "val" / "roses", samples=4)
    assert entries["onnx"]["fit_for_serving"], entries["onnx"]
    return out


def child_environment(**settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TELEGRAM_", "MODEL_", "BACKEND", "PRECISION"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(settings)
    return env


@pytest.mark.slow
def test_service_classifies_without_torch(onnx_bundle_dir: Path, flowers5_val_photos: list[Path], shared_backend, tmp_path: Path):
    photo = flowers5_val_photos[len(flowers5_val_photos) // 2]

    result = subprocess.run(
        [sys.executable, "-c", SERVE_PHOTO, str(onnx_bundle_dir), str(photo)],
        cwd=tmp_path, env=child_environment(), capture_output=True, text=True, timeout=START_TIMEOUT_S,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["torch_modules"] == []
    expected = shared_backend.logits(to_array(decode_image(photo.read_bytes(), draft_size=512))[None])[0]
    assert np.allclose(served["logits"], expected, atol=1e-3)
    assert served["top"][0] == Bundle.load(onnx_bundle_dir).labels.class_ids[int(np.argmax(expected))]
    assert len(served["top"]) == 3


@pytest.mark.slow
async def test_bot_answers_photo_without_torch(onnx_bundle_dir: Path, flowers5_val_photos: list[Path], tmp_path: Path):
    photo = flowers5_val_photos[0].read_bytes()
    async with TelegramEmulator() as emulator:
        env = child_environment(
            TELEGRAM_BOT_TOKEN=emulator.token,
            TELEGRAM_BASE_URL=emulator.base_url,
            TELEGRAM_BASE_FILE_URL=emulator.base_file_url,
            MODEL_PATH=str(onnx_bundle_dir),
            DATA_DIR=str(tmp_path / "data"),
            BACKEND="onnx",
            DEVICE="cpu",
            HTTP_PORT="0",
        )
        log_path = tmp_path / "bot.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", RUN_BOT, cwd=tmp_path, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
        try:
            await emulator.wait_for_call("getUpdates", timeout=START_TIMEOUT_S)
            message = emulator.send_photo(make_user(4242, "Onnx"), None, photo)
            reply = await emulator.wait_for_reply(message, timeout=REPLY_TIMEOUT_S)
            maps = Path(f"/proc/{process.pid}/maps").read_text()
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            status = await asyncio.wait_for(process.wait(), 60)

    log = log_path.read_text(errors="replace")
    assert status == 0, log[-3000:]
    assert "libtorch" not in maps, "torch was loaded into the bot process"
    lines = [line for line in reply["text"].splitlines() if line.strip()]
    labels = Bundle.load(onnx_bundle_dir).labels
    species_lines = [line for line in lines if any(labels.display_name(index, "en") in line for index in range(len(labels.class_ids)))]
    assert len(species_lines) >= 3, reply["text"]
    assert "onnx" in log, "the bot log should name the onnx backend"
    # Unset BATCH_MAX_SIZE means no micro-batching on ONNX Runtime, where it measured slower.
    assert "max_batch 1," in log, log[-3000:]

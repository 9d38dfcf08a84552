"""Admin retraining through the Telegram emulator: /retrain, /retrain status|cancel, /model, /rollback.

The bot runs for real (`bot_harness`) with a random-init flowers5 bundle. It trains in a
child process on a few flowers5 photos linked into a temporary ImageFolder, for a few
epochs, so each full run takes tens of seconds to a few minutes on a busy CPU.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot import app as bot_app
from bot.handlers import admin_model
from bot.i18n import text
from bot.model_registry import WORK_DIR_PREFIX
from bot.retrain import RETRAIN_KEY, RetrainSupervisor, stop_retrain_supervisor
from classifier.bundle import Bundle, new_random_bundle
from classifier.labels import LabelSet
from storage.models import Prediction, RetrainRun
from tests.emulator import make_user, message_text, private_chat
from tests.fixtures.bot import FLOWERS5_CLASSES, BotHarness
from tests.test_retrain_job import make_flowers5_subset, spare_val_photos

pytestmark = pytest.mark.photos

JSON = dict[str, Any]
ADMIN = make_user(4242, "Admin", language_code="en")
ALICE = make_user(1001, "Alice", language_code="en")
ADMIN_CHAT = private_chat(ADMIN)
ALICE_CHAT = private_chat(ALICE)
# Seconds a whole retraining run may take on a busy CPU before a test fails.
RUN_TIMEOUT_S = 540
# Recipe values for fast runs: no loader worker processes, no synthetic OOD images, small batches.
FAST_RECIPE = {"workers": 0, "ood_synthetic": 0, "eval_batch_size": 4}
PROGRESS_MARK = "🔁"
JOB_PHASES = {"prepare", "load_data", "weights", "features", "train", "calibrate", "save", "gate"}


def noise_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float = 60.0) -> Any:
    """Poll an async check until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"{check.__qualname__} did not hold within {timeout:g} s")
        await asyncio.sleep(0.05)


async def wire_retrain(bot: BotHarness) -> RetrainSupervisor:
    """Return the retrain supervisor that the runtime started."""
    assert admin_model in bot_app.HANDLER_MODULES
    return bot.context.extras[RETRAIN_KEY]


StartBot = Callable[..., Awaitable[tuple[BotHarness, RetrainSupervisor]]]


@pytest.fixture
async def retrain_bot(bot_harness: BotHarness, flowers5_dir: Path, tmp_path: Path) -> AsyncIterator[StartBot]:
    """Yield a function that starts the bot with retraining on a flowers5 subset of `train` and `val` photos per class."""

    async def start(*, train: int = 3, val: int = 4, **overrides: Any) -> tuple[BotHarness, RetrainSupervisor]:
        base = make_flowers5_subset(flowers5_dir, tmp_path / "base", train=train, val=val)
        recipe = tmp_path / "recipe.json"
        recipe.write_text(json.dumps(FAST_RECIPE), encoding="utf-8")
        settings = {
            "admin_ids": frozenset({ADMIN["id"]}),
            "retrain_base_data": str(base),
            "retrain_epochs": 10,
            "retrain_views": 1,
            "retrain_batch_size": 16,
            "retrain_recipe_config": recipe,
            "retrain_progress_interval_s": 1.0,
            **overrides,
        }
        await bot_harness.start(**settings)
        return bot_harness, await wire_retrain(bot_harness)

    try:
        yield start
    finally:
        if bot_harness.runtime is not None:
            await stop_retrain_supervisor(bot_harness.context)


async def command(bot: BotHarness, user: JSON, name: str, args: str = "") -> JSON:
    sent = bot.emulator.send_command(user, private_chat(user), name, args)
    return await bot.emulator.wait_for_reply(sent)


async def send_photo(bot: BotHarness, user: JSON, image: bytes) -> Prediction:
    """Send a photo, wait for the bot's reply, and return the stored prediction."""
    sent = bot.emulator.send_photo(user, private_chat(user), image)
    await bot.emulator.wait_for_reply(sent)

    async def stored() -> Prediction | None:
        return await bot.repository.get_prediction_by_message(sent["chat"]["id"], sent["message_id"])

    return await eventually(stored)


async def progress_message(bot: BotHarness) -> JSON:
    """Wait for the progress message in the admin's chat and return it."""

    async def find() -> JSON | None:
        for message in bot.emulator.sent_messages(ADMIN_CHAT["id"]):
            if message_text(message).startswith(PROGRESS_MARK):
                return message
        return None

    return await eventually(find)


async def wait_for_phase(supervisor: RetrainSupervisor, phases: set[str]) -> None:
    async def reached() -> bool:
        active = supervisor.active
        return active is not None and active.process is not None and active.progress.phase in phases

    await eventually(reached, timeout=RUN_TIMEOUT_S)


async def finished_run(bot: BotHarness, supervisor: RetrainSupervisor) -> RetrainRun:
    """Wait until a run has been recorded and has ended; return its row."""
    await eventually(bot.repository.latest_retrain_run)
    await asyncio.wait_for(supervisor.wait_idle(), RUN_TIMEOUT_S)
    run = await bot.repository.latest_retrain_run()
    assert run is not None
    assert run.status != "running"
    return run


def result_caption(bot: BotHarness) -> str:
    photos = [call for call in bot.emulator.calls_to("sendPhoto") if call.ok and call.params.get("chat_id") == ADMIN_CHAT["id"]]
    assert len(photos) == 1, f"expected one confusion-matrix photo, got {len(photos)}"
    return photos[0].params["caption"]


def leftover_work_dirs(bot: BotHarness) -> list[str]:
    models_dir = bot.settings.models_dir
    return [entry.name for entry in models_dir.iterdir() if entry.name.startswith(WORK_DIR_PREFIX)] if models_dir.is_dir() else []


async def add_corrections(bot: BotHarness, photos: list[tuple[Path, str]]) -> None:
    """Send each photo as Alice and record the true class as her correction."""
    for path, label in photos:
        prediction = await send_photo(bot, ALICE, path.read_bytes())
        kind = "confirmed" if prediction.top1_class_id == label else "corrected"
        await bot.repository.record_correction(prediction.id, ALICE["id"], label=label, kind=kind)


# ---------------------------------------------------------------------------


async def test_retrain_promotes_and_rollback_returns(retrain_bot: StartBot, flowers5_dir: Path) -> None:
    bot, supervisor = await retrain_bot(train=6, val=4, retrain_holdout_fraction=0.5)
    original = bot.context.service.version
    await add_corrections(bot, spare_val_photos(flowers5_dir, skip=4, per_class=2))
    rock = await send_photo(bot, ALICE, noise_jpeg(1))
    await bot.repository.record_correction(rock.id, ALICE["id"], label=None, kind="not_flower")
    # A flower of a species the model does not have: a negative for the OOD threshold, never a class.
    lily = await send_photo(bot, ALICE, noise_jpeg(5))
    await bot.repository.record_correction(lily.id, ALICE["id"], label=None, kind="unknown_species")

    # Start, then send a photo while the child process trains.
    bot.emulator.send_command(ADMIN, ADMIN_CHAT, "retrain")
    progress = await progress_message(bot)
    await wait_for_phase(supervisor, JOB_PHASES)
    during = await send_photo(bot, ALICE, noise_jpeg(2))
    assert supervisor.active is not None, "the run ended before the photo was answered"
    assert during.model_version == original

    run = await finished_run(bot, supervisor)
    assert run.status == "succeeded", run.error
    new_version = run.candidate_version
    assert new_version is not None
    assert new_version != original
    assert run.metrics["data"]["corrections_train"] + run.metrics["data"]["corrections_holdout"] == 10
    assert run.metrics["data"]["corrections_holdout"] > 0
    assert run.metrics["data"]["not_flower"] == 1
    assert run.metrics["data"]["unknown_species"] == 1
    candidate_ood = Bundle.load(bot.settings.models_dir / new_version).ood
    assert candidate_ood["non_flower_source"] == "examples"
    assert candidate_ood["non_flower_samples"] == 2

    # One progress message, edited in place, and the result with the confusion matrix.
    edits = [call for call in bot.emulator.calls_to("editMessageText") if call.params.get("chat_id") == ADMIN_CHAT["id"]]
    assert len(edits) >= 2
    assert {call.params["message_id"] for call in edits} == {progress["message_id"]}
    final_progress = message_text(bot.emulator.message(ADMIN_CHAT["id"], progress["message_id"]))
    assert "Phase: done" in final_progress
    assert "Epoch" in final_progress
    assert "1 “not a flower” and 1 “not in this list” photos for rejection" in final_progress
    caption = result_caption(bot)
    assert "passed the gate" in caption
    assert "Base validation split: candidate" in caption
    assert "Held-out corrections: candidate" in caption
    assert text("admin_model.result.negatives", "en", not_flower=1, unknown_species=1) in caption

    # The registry, the files and the service agree on the new version.
    serving = await bot.repository.serving_model()
    assert serving is not None
    assert serving.version == new_version
    assert serving.metrics["gate"]["promote"] is True
    assert serving.parent_version == original
    assert (bot.settings.models_dir / new_version / "bundle.json").is_file()
    assert leftover_work_dirs(bot) == []
    assert bot.context.service.version == new_version
    after = await send_photo(bot, ALICE, noise_jpeg(3))
    assert after.model_version == new_version

    model_reply = await command(bot, ADMIN, "model")
    assert f"Serving model: {new_version}" in message_text(model_reply)
    assert f"/rollback would return to {original}" in message_text(model_reply)
    status_reply = await command(bot, ADMIN, "retrain", "status")
    assert f"Last run #{run.id}: promoted" in message_text(status_reply)

    rollback_reply = await command(bot, ADMIN, "rollback")
    assert message_text(rollback_reply) == text("admin_model.rollback.done", "en", version=original, previous=new_version)
    assert bot.context.service.version == original
    serving = await bot.repository.serving_model()
    assert serving is not None
    assert serving.version == original
    rolled_back = await send_photo(bot, ALICE, noise_jpeg(4))
    assert rolled_back.model_version == original


async def test_sabotaged_candidate_is_not_promoted(retrain_bot: StartBot, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWERBOT_TESTING", "1")
    # With no old bundles kept, the rejected candidate's directory goes once the run ends.
    bot, supervisor = await retrain_bot(train=3, val=4, retrain_keep_old_models=0)
    supervisor.sabotage = "negate_head"
    original = bot.context.service.version

    bot.emulator.send_command(ADMIN, ADMIN_CHAT, "retrain")
    run = await finished_run(bot, supervisor)

    assert run.status == "rejected", run.error
    base_val = run.metrics["gate"]["comparisons"][0]
    assert base_val["split"] == "base_val"
    assert base_val["candidate_correct"] < base_val["serving_correct"], base_val
    candidate = await bot.repository.get_model(run.candidate_version)
    assert candidate is not None
    assert candidate.status == "rejected"
    assert not Path(candidate.path).exists()
    serving = await bot.repository.serving_model()
    assert serving is not None
    assert serving.version == original
    assert bot.context.service.version == original
    caption = result_caption(bot)
    assert "was not promoted" in caption
    assert "Base validation split: candidate" in caption
    assert text("admin_model.result.holdout_empty", "en") in caption
    assert (await send_photo(bot, ALICE, noise_jpeg(5))).model_version == original


async def test_killed_training_leaves_serving_intact(retrain_bot: StartBot) -> None:
    bot, supervisor = await retrain_bot(train=3, val=4)
    original = bot.context.service.version
    models_before = [(model.version, model.status) for model in await bot.repository.list_models()]

    bot.emulator.send_command(ADMIN, ADMIN_CHAT, "retrain")
    await progress_message(bot)
    await wait_for_phase(supervisor, {"load_data", "weights", "features"})
    second = await command(bot, ADMIN, "retrain")
    assert "is already running" in message_text(second)
    status = await command(bot, ADMIN, "retrain", "status")
    assert "is running" in message_text(status)

    pid = supervisor.process_id
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    run = await finished_run(bot, supervisor)

    assert run.status == "failed"
    assert "SIGKILL" in (run.error or "")
    failure = [message for message in bot.emulator.sent_messages(ADMIN_CHAT["id"]) if message_text(message).startswith("❌")]
    assert len(failure) == 1
    assert "SIGKILL" in message_text(failure[0])
    assert [(model.version, model.status) for model in await bot.repository.list_models()] == models_before
    assert bot.context.service.version == original
    assert leftover_work_dirs(bot) == []
    assert (await send_photo(bot, ALICE, noise_jpeg(6))).model_version == original


async def test_cancel_stops_the_run(retrain_bot: StartBot) -> None:
    bot, supervisor = await retrain_bot(train=3, val=4)
    original = bot.context.service.version

    bot.emulator.send_command(ADMIN, ADMIN_CHAT, "retrain")
    await wait_for_phase(supervisor, {"load_data", "weights", "features"})
    pid = supervisor.process_id
    reply = await command(bot, ADMIN, "retrain", "cancel")
    assert message_text(reply).startswith("Cancelling retraining run")
    run = await finished_run(bot, supervisor)

    assert run.status == "cancelled"
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert bot.context.service.version == original
    assert leftover_work_dirs(bot) == []
    admin_messages = [message_text(message) for message in bot.emulator.sent_messages(ADMIN_CHAT["id"])]
    assert any("was cancelled" in line for line in admin_messages)
    again = await command(bot, ADMIN, "retrain", "cancel")
    assert message_text(again) == text("admin_model.cancel.none", "en")


async def test_blocked_admin_does_not_stop_run(retrain_bot: StartBot) -> None:
    bot, supervisor = await retrain_bot(train=3, val=4)

    bot.emulator.send_command(ADMIN, ADMIN_CHAT, "retrain")
    await progress_message(bot)
    bot.emulator.block_user(ADMIN_CHAT["id"])
    run = await finished_run(bot, supervisor)

    assert run.status in ("succeeded", "rejected"), run.error
    assert run.candidate_version is not None
    assert await bot.repository.get_model(run.candidate_version) is not None
    rejected = [call for call in bot.emulator.calls if call.params.get("chat_id") == ADMIN_CHAT["id"] and call.status == 403]
    assert len(rejected) >= 1
    assert [call for call in bot.emulator.calls_to("sendPhoto") if call.ok and call.params.get("chat_id") == ADMIN_CHAT["id"]] == []


async def test_non_admin_is_rejected(retrain_bot: StartBot) -> None:
    bot, supervisor = await retrain_bot()
    rejection = text("admin_model.admins_only", "en")
    for name, args in (("retrain", ""), ("retrain", "cancel"), ("model", ""), ("rollback", "")):
        reply = await command(bot, ALICE, name, args)
        assert message_text(reply) == rejection, name
    assert supervisor.active is None
    assert await bot.repository.latest_retrain_run() is None


async def test_rollback_without_previous_model(retrain_bot: StartBot) -> None:
    bot, _ = await retrain_bot()
    reply = await command(bot, ADMIN, "rollback")
    assert message_text(reply) == text("admin_model.rollback.no_previous", "en")


async def test_rollback_to_unexported_model_under_onnx(retrain_bot: StartBot, tmp_path: Path) -> None:
    # The registry check reads BACKEND; the harness's classifier stays the shared torch one.
    bot, _ = await retrain_bot(backend="onnx")
    current = bot.context.service.version
    older = new_random_bundle(LabelSet.from_names(FLOWERS5_CLASSES), tmp_path / "older", seed=3)
    await bot.repository.register_model(older.version, str(older.path))
    await bot.repository.set_serving(older.version)
    await bot.repository.set_serving(current)
    previous = await bot.repository.previous_model()
    assert previous is not None and previous.version == older.version

    reply = await command(bot, ADMIN, "rollback")

    expected = text("serving.unservable", "en", version=older.version, backend="onnx", path=str(older.path))
    assert message_text(reply) == expected
    serving = await bot.repository.serving_model()
    assert serving is not None
    assert serving.version == current
    assert bot.context.service.version == current


async def test_rollback_to_named_version(retrain_bot: StartBot, tmp_path: Path) -> None:
    bot, _ = await retrain_bot()
    current = bot.context.service.version
    older = new_random_bundle(LabelSet.from_names(FLOWERS5_CLASSES), tmp_path / "older", seed=4)
    oldest = new_random_bundle(LabelSet.from_names(FLOWERS5_CLASSES), tmp_path / "oldest", seed=5)
    for bundle in (oldest, older):
        await bot.repository.register_model(bundle.version, str(bundle.path))
        await bot.repository.set_serving(bundle.version)
    await bot.repository.set_serving(current)

    reply = await command(bot, ADMIN, "rollback", "no-such-version")
    assert message_text(reply) == text("serving.unknown_version", "en", version="no-such-version")
    reply = await command(bot, ADMIN, "rollback", current)
    assert message_text(reply) == text("serving.already_serving", "en", version=current)

    # Plain /rollback would pick `older`; a version picks any registered one.
    reply = await command(bot, ADMIN, "rollback", oldest.version)
    assert message_text(reply) == text("admin_model.rollback.done", "en", version=oldest.version, previous=current)
    assert bot.context.service.version == oldest.version
    serving = await bot.repository.serving_model()
    assert serving is not None
    assert serving.version == oldest.version


async def test_restart_fails_stale_run_and_tells_admin(retrain_bot: StartBot) -> None:
    bot, _ = await retrain_bot()
    bot.emulator.add_chat(ADMIN_CHAT)
    stale = await bot.repository.start_retrain_run(ADMIN["id"], ADMIN_CHAT["id"])
    assert stale is not None
    await stop_retrain_supervisor(bot.context)
    await bot.restart()
    await wire_retrain(bot)

    run = await bot.repository.get_retrain_run(stale.id)
    assert run is not None
    assert run.status == "failed"
    notice = text("admin_model.result.stale", "en", run_id=stale.id)
    assert notice in [message_text(message) for message in bot.emulator.sent_messages(ADMIN_CHAT["id"])]


async def test_bot_stop_ends_run_and_tells_admin(retrain_bot: StartBot) -> None:
    bot, supervisor = await retrain_bot()
    bot.emulator.send_command(ADMIN, ADMIN_CHAT, "retrain")
    await wait_for_phase(supervisor, JOB_PHASES)
    pid = supervisor.process_id
    assert pid is not None

    await stop_retrain_supervisor(bot.context)

    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    run = await bot.repository.latest_retrain_run()
    assert run is not None
    assert run.status == "failed"
    assert run.error == "the bot stopped during the run"
    admin_messages = [message_text(message) for message in bot.emulator.sent_messages(ADMIN_CHAT["id"])]
    assert any(line.startswith("❌") and "the bot stopped" in line for line in admin_messages)
    assert leftover_work_dirs(bot) == []


async def test_retrain_without_base_data_is_rejected(retrain_bot: StartBot) -> None:
    bot, supervisor = await retrain_bot(retrain_base_data=None)
    reply = await command(bot, ADMIN, "retrain")
    assert message_text(reply) == text("admin_model.retrain.not_configured", "en")
    assert supervisor.active is None
    assert await bot.repository.latest_retrain_run() is None


async def test_invalid_recipe_file_is_rejected(retrain_bot: StartBot, tmp_path: Path) -> None:
    recipe = tmp_path / "bad-recipe.json"
    recipe.write_text(json.dumps({"epochz": 3}), encoding="utf-8")
    bot, supervisor = await retrain_bot(retrain_recipe_config=recipe)
    reply = await command(bot, ADMIN, "retrain")
    assert message_text(reply).startswith("The retraining settings (RETRAIN_RECIPE_CONFIG")
    assert "Details: unknown recipe key 'epochz'" in message_text(reply)
    assert await bot.repository.latest_retrain_run() is None

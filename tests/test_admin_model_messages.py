"""Admin model texts: capitalized gate lines, and stored errors shown after a translated message."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.i18n import text
from bot.retrain_progress import gate_lines
from tests.emulator import make_user, message_text
from tests.fixtures.bot import BotHarness
from tests.test_feedback import Chat
from training.gate import BASE_VAL, CORRECTIONS_HOLDOUT, GateDecision, SplitComparison

ADMIN_ID = 4343
ADMIN_ZH = make_user(ADMIN_ID, "Admin", language_code="zh-hans")


def _decision() -> GateDecision:
    comparisons = (
        SplitComparison(BASE_VAL, samples=20, candidate_correct=5, serving_correct=5),
        SplitComparison(CORRECTIONS_HOLDOUT, samples=4, candidate_correct=3, serving_correct=1),
    )
    return GateDecision(promote=True, reason="passed", comparisons=comparisons)


def test_gate_lines_start_capitalized() -> None:
    lines = gate_lines(_decision(), "en")

    assert lines == [
        "Base validation split: candidate 25.0% vs serving 25.0% (photos: 20)",
        "Held-out corrections: candidate 75.0% vs serving 25.0% (photos: 4)",
    ]


def test_gate_lines_in_chinese() -> None:
    lines = gate_lines(_decision(), "zh")

    assert lines[0] == "基础验证集：候选 25.0%，当前 25.0%（20 张照片）"
    assert lines[1].startswith("留出的更正照片：")


@pytest.mark.parametrize(
    "key",
    [
        "admin_model.retrain.invalid_recipe",
        "admin_model.retrain.start_failed",
        "admin_model.result.failed",
        "admin_model.result.promote_failed",
        "admin_model.rollback.failed",
    ],
)
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_error_detail_follows_translation(key: str, lang: str) -> None:
    detail = "ValueError: lr must be positive"
    message = text(key, lang, error=detail, run_id=3, version="v2", previous="v1")

    first_line, _, last_line = message.rpartition("\n")
    assert detail not in first_line
    assert last_line == text("admin_model.error.details", lang, error=detail)


async def test_retrain_status_error_on_own_line(bot_harness: BotHarness) -> None:
    await bot_harness.start(admin_ids=frozenset({ADMIN_ID}))
    admin = Chat(bot_harness, ADMIN_ZH)
    run = await bot_harness.repository.start_retrain_run(ADMIN_ID, admin.chat_id)
    assert run is not None
    await bot_harness.repository.finish_retrain_run(run.id, "failed", error="the bot stopped during the run")

    lines = message_text(await admin.command("retrain", "status")).splitlines()

    assert lines[0] == text("admin_model.status.idle", "zh")
    assert lines[1].startswith(f"上一次 #{run.id}：失败，结束于 ")
    assert "the bot stopped" not in lines[1]
    assert lines[2] == "技术细节：the bot stopped during the run"


async def test_rollback_failure_in_chinese(bot_harness: BotHarness, tmp_path: Path) -> None:
    await bot_harness.start(admin_ids=frozenset({ADMIN_ID}))
    repository = bot_harness.repository
    current = bot_harness.context.service.version
    # A previous model whose bundle directory is gone: loading it fails with a BundleError.
    await repository.register_model("gone-v0", str(tmp_path / "gone-v0"), status="serving")
    await repository.set_serving(current)
    admin = Chat(bot_harness, ADMIN_ZH)

    lines = message_text(await admin.command("rollback")).splitlines()

    assert lines[0] == f"回退到 gone-v0 失败。继续使用 {current}。"
    assert lines[1].startswith("技术细节：BundleError: model bundle not found")
    assert (await repository.serving_model()).version == current

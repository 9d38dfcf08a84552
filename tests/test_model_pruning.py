"""Old rejected and retired bundles are deleted from the model directory, newest kept."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.model_registry import prune_old_bundles
from storage.db import create_engine, new_session_factory, upgrade_database_async
from storage.repository import Repository
from tests.fixtures.bot import BotHarness

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def repository(migrated_repository: Repository) -> Repository:
    return migrated_repository


async def add_model(repository: Repository, models_dir: Path, version: str, status: str, hour: int) -> Path:
    """Register `version` with a bundle directory in `models_dir`, made `hour` hours after START."""
    path = models_dir / version
    path.mkdir(parents=True)
    (path / "bundle.json").write_text("{}", encoding="utf-8")
    await repository.register_model(version, str(path), created_at=START + timedelta(hours=hour))
    if status != "candidate":
        await repository.set_model_status(version, status)
    return path


async def test_keeps_newest_of_each_status(repository: Repository, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    paths = {}
    for hour, version in enumerate(("r1", "r2", "r3")):
        paths[version] = await add_model(repository, models_dir, version, "rejected", hour)
    for hour, version in enumerate(("old1", "old2", "old3", "old4"), start=10):
        paths[version] = await add_model(repository, models_dir, version, "serving", hour)
    paths["candidate"] = await add_model(repository, models_dir, "candidate", "candidate", 20)
    serving = await repository.serving_model()
    previous = await repository.previous_model()
    assert serving is not None and serving.version == "old4"
    assert previous is not None and previous.version == "old3"

    removed = await prune_old_bundles(repository, models_dir, keep=1)

    assert sorted(removed) == ["old1", "r1", "r2"]
    for version in ("r1", "r2", "old1"):
        assert not paths[version].exists(), version
    for version in ("r3", "old2", "old3", "old4", "candidate"):
        assert paths[version].is_dir(), version
    # The registry keeps every row as history.
    assert len(await repository.list_models()) == 8


async def test_keep_zero_spares_serving_and_previous(repository: Repository, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    rejected = await add_model(repository, models_dir, "rejected", "rejected", 0)
    first = await add_model(repository, models_dir, "first", "serving", 1)
    second = await add_model(repository, models_dir, "second", "serving", 2)

    removed = await prune_old_bundles(repository, models_dir, keep=0)

    assert removed == ["rejected"]
    assert not rejected.exists()
    assert first.is_dir()
    assert second.is_dir()


async def test_bundles_outside_models_dir_untouched(repository: Repository, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    outside = await add_model(repository, tmp_path / "operator", "mine", "rejected", 0)
    nested = await add_model(repository, models_dir / "nested", "deep", "rejected", 1)

    removed = await prune_old_bundles(repository, models_dir, keep=0)

    assert removed == []
    assert outside.is_dir()
    assert nested.is_dir()


async def test_bot_start_prunes_old_bundles(bot_harness: BotHarness) -> None:
    await upgrade_database_async(bot_harness.settings.resolved_database_url)
    engine = create_engine(bot_harness.settings.resolved_database_url)
    try:
        repository = Repository(new_session_factory(engine))
        models_dir = bot_harness.settings.models_dir
        paths = [await add_model(repository, models_dir, f"rejected-{hour}", "rejected", hour) for hour in range(3)]
    finally:
        await engine.dispose()

    await bot_harness.start(retrain_keep_old_models=1)

    assert not paths[0].exists()
    assert not paths[1].exists()
    assert paths[2].is_dir()

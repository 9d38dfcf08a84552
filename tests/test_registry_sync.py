"""Which bundle serves at start-up, and how the model registry is brought in line with it."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.model_registry import choose_serving_bundle, register_serving_bundle
from bot.settings import Settings
from classifier.bundle import Bundle, new_random_bundle
from classifier.labels import LabelSet
from storage.db import create_engine, new_session_factory, upgrade_database_async
from storage.repository import Repository

CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


@pytest.fixture
async def repository(database_url: str) -> AsyncIterator[Repository]:
    await upgrade_database_async(database_url)
    engine = create_engine(database_url)
    try:
        yield Repository(new_session_factory(engine))
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    """Two random-init bundles with different versions (made once for this module)."""
    root = tmp_path_factory.mktemp("registry-bundles")
    return {name: new_random_bundle(LabelSet.from_names(CLASSES), root / name, seed=seed) for seed, name in enumerate(("first", "second"))}


def settings_for(model_path: Path, tmp_path: Path) -> Settings:
    return Settings(_env_file=None, telegram_bot_token="1:x", model_path=model_path, data_dir=tmp_path / "data")  # type: ignore[call-arg]


async def test_empty_registry_registers_configured_bundle(repository: Repository, bundles: dict[str, Bundle], tmp_path: Path) -> None:
    first = bundles["first"]
    chosen = await choose_serving_bundle(settings_for(first.path, tmp_path), repository)
    assert chosen.version == first.version
    serving = await repository.serving_model()
    assert serving is not None
    assert serving.version == first.version
    assert serving.path == str(first.path)
    assert serving.promoted_at is not None


async def test_promoted_version_serves_after_restart(repository: Repository, bundles: dict[str, Bundle], tmp_path: Path) -> None:
    first, second = bundles["first"], bundles["second"]
    settings = settings_for(first.path, tmp_path)
    await choose_serving_bundle(settings, repository)
    await repository.register_model(second.version, str(second.path))
    await repository.set_serving(second.version)

    chosen = await choose_serving_bundle(settings, repository)
    assert chosen.version == second.version
    serving = await repository.serving_model()
    assert serving is not None
    assert serving.version == second.version


async def test_new_model_path_takes_over(repository: Repository, bundles: dict[str, Bundle], tmp_path: Path) -> None:
    first, second = bundles["first"], bundles["second"]
    await choose_serving_bundle(settings_for(first.path, tmp_path), repository)
    chosen = await choose_serving_bundle(settings_for(second.path, tmp_path), repository)
    assert chosen.version == second.version
    serving = await repository.serving_model()
    assert serving is not None
    assert serving.version == second.version
    previous = await repository.previous_model()
    assert previous is not None
    assert previous.version == first.version


async def test_missing_registry_files_fall_back_to_model_path(repository: Repository, bundles: dict[str, Bundle], tmp_path: Path) -> None:
    first, second = bundles["first"], bundles["second"]
    gone = tmp_path / "gone"
    shutil.copytree(second.path, gone)
    settings = settings_for(first.path, tmp_path)
    await choose_serving_bundle(settings, repository)
    await repository.register_model(second.version, str(gone))
    await repository.set_serving(second.version)
    shutil.rmtree(gone)

    chosen = await choose_serving_bundle(settings, repository)
    assert chosen.version == first.version
    serving = await repository.serving_model()
    assert serving is not None
    assert serving.version == first.version


async def test_register_serving_bundle_matches_what_serves(repository: Repository, bundles: dict[str, Bundle]) -> None:
    first, second = bundles["first"], bundles["second"]
    await register_serving_bundle(repository, first)
    await register_serving_bundle(repository, second)
    await register_serving_bundle(repository, first)
    models = {model.version: model.status for model in await repository.list_models()}
    assert models == {first.version: "serving", second.version: "retired"}

"""Which bundle serves at start-up, and how the model registry is brought in line with it."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bot.model_registry import UnservableBundleError, choose_serving_bundle, register_serving_bundle
from bot.settings import Settings
from classifier.bundle import MANIFEST_NAME, Bundle, new_random_bundle
from classifier.labels import LabelSet
from storage.repository import Repository

CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


@pytest.fixture
def repository(migrated_repository: Repository) -> Repository:
    return migrated_repository


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


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2024-01-02T03:04:05+00:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("2024-01-02T11:04:05+08:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
    ],
)
async def test_registry_keeps_bundle_creation_time(
    repository: Repository, bundles: dict[str, Bundle], tmp_path: Path, stamp: str, expected: datetime
) -> None:
    copied = tmp_path / "old-bundle"
    shutil.copytree(bundles["first"].path, copied)
    manifest = json.loads((copied / MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest["created_at"] = stamp
    (copied / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")

    await choose_serving_bundle(settings_for(copied, tmp_path), repository)
    serving = await repository.serving_model()
    assert serving is not None
    assert serving.created_at == expected
    assert serving.promoted_at is not None
    assert serving.promoted_at > expected


async def test_registry_ignores_invalid_creation_time(repository: Repository, bundles: dict[str, Bundle], tmp_path: Path) -> None:
    copied = tmp_path / "stampless-bundle"
    shutil.copytree(bundles["first"].path, copied)
    manifest = json.loads((copied / MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest["created_at"] = "last Tuesday"
    (copied / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    before = datetime.now(timezone.utc)

    await choose_serving_bundle(settings_for(copied, tmp_path), repository)
    serving = await repository.serving_model()
    assert serving is not None
    assert serving.created_at >= before


@pytest.mark.slow
async def test_onnx_backend_skips_unexported_registry_model(
    repository: Repository, bundles: dict[str, Bundle], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from training.export import export_bundle

    exported = tmp_path / "exported"
    shutil.copytree(bundles["first"].path, exported)
    export_bundle(exported, formats=["onnx"], samples=2)
    settings = settings_for(exported, tmp_path).model_copy(update={"backend": "onnx"})
    await choose_serving_bundle(settings, repository)
    # /retrain under BACKEND=torch promoted a bundle without an ONNX export.
    second = bundles["second"]
    await repository.register_model(second.version, str(second.path))
    await repository.set_serving(second.version)

    chosen = await choose_serving_bundle(settings, repository)

    assert chosen.version == bundles["first"].version
    assert chosen.path == exported
    serving = await repository.serving_model()
    assert serving is not None
    assert serving.version == bundles["first"].version
    assert any("cannot be served with BACKEND=onnx" in record.getMessage() for record in caplog.records)
    # BACKEND=torch serves the registry's choice as before.
    await repository.set_serving(second.version)
    torch_choice = await choose_serving_bundle(settings.model_copy(update={"backend": "torch"}), repository)
    assert torch_choice.version == second.version


async def test_unservable_model_path_leaves_registry_alone(
    repository: Repository, bundles: dict[str, Bundle], tmp_path: Path
) -> None:
    first, second = bundles["first"], bundles["second"]
    await choose_serving_bundle(settings_for(first.path, tmp_path), repository)
    # A new MODEL_PATH without an ONNX export, under BACKEND=onnx: the start fails.
    onnx_settings = settings_for(second.path, tmp_path).model_copy(update={"backend": "onnx"})

    with pytest.raises(UnservableBundleError, match="no ONNX export"):
        await choose_serving_bundle(onnx_settings, repository)

    serving = await repository.serving_model()
    assert serving is not None
    assert serving.version == first.version
    assert await repository.get_model(second.version) is None

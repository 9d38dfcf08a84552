"""`python -m storage orphans`: photo files that no row references, listed and deleted, run as a separate process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.db import create_engine, new_session_factory, upgrade_database_async
from storage.images import ImageStore, StoredImage
from storage.repository import Repository
from storage.repository.predictions import ImageReference

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ALICE = 3001
# Seconds the command may take before a test fails.
COMMAND_TIMEOUT_S = 120
# Modification time given to files that should count as old: two days back.
OLD_AGE_S = 2 * 24 * 3600


def _make_old(*paths: Path) -> None:
    old = time.time() - OLD_AGE_S
    for path in paths:
        os.utime(path, (old, old))


async def _run(data_dir: Path | None, database_url: str | None, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("DATA_DIR", "DATABASE_URL")}
    environment["PYTHONPATH"] = str(PROJECT_ROOT)
    if data_dir is not None:
        environment["DATA_DIR"] = str(data_dir)
    if database_url is not None:
        environment["DATABASE_URL"] = database_url
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "storage", "orphans", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


async def _store_album(database_url: str, images: list[StoredImage]) -> None:
    references = [ImageReference(f"unique-{index}", str(image.path), image.sha256) for index, image in enumerate(images)]
    engine = create_engine(database_url)
    try:
        await Repository(new_session_factory(engine)).add_prediction(
            user_id=ALICE,
            chat_id=ALICE,
            message_id=1,
            file_unique_id=references[0].file_unique_id,
            image_path=references[0].image_path,
            image_sha256=references[0].image_sha256,
            model_version="v1",
            top_k=[{"index": 0, "class_id": "daisy", "probability": 0.9}],
            k=1,
            latency_ms=5.0,
            media_group_id="album",
            photo_count=len(references),
            images=references,
        )
    finally:
        await engine.dispose()


@pytest.fixture
async def photo_store(database_url: str, tmp_path: Path) -> tuple[Path, ImageStore]:
    """Return a DATA_DIR with a migrated database and an image store in DATA_DIR/photos."""
    await upgrade_database_async(database_url)
    data_dir = tmp_path / "data"
    return data_dir, ImageStore(data_dir / "photos")


async def test_orphans_lists_then_deletes_only_unreferenced(photo_store, database_url: str, tmp_path: Path):
    data_dir, store = photo_store
    first = store.save(b"album photo one", ".jpg")
    second = store.save(b"album photo two", ".png")
    unreferenced = store.save(b"a photo saved before its album was stored", ".jpg")
    await _store_album(database_url, [first, second])
    _make_old(first.path, second.path, unreferenced.path)

    listed = await _run(data_dir, database_url, cwd=tmp_path)

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [str(unreferenced.path)]
    assert "1 of 3 files" in listed.stderr
    assert unreferenced.path.is_file()

    deleted = await _run(data_dir, database_url, "--delete", cwd=tmp_path)

    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.splitlines() == [str(unreferenced.path)]
    assert not unreferenced.path.exists()
    # The second photo is referenced by prediction_images only, and stays.
    assert first.path.is_file()
    assert second.path.is_file()
    again = await _run(data_dir, database_url, cwd=tmp_path)
    assert again.stdout == ""


async def test_orphans_keeps_recent_files(photo_store, database_url: str, tmp_path: Path):
    data_dir, store = photo_store
    recent = store.save(b"saved a moment ago, its row not stored yet", ".jpg")

    kept = await _run(data_dir, database_url, "--delete", cwd=tmp_path)

    assert kept.returncode == 0, kept.stderr
    assert kept.stdout == ""
    assert "1 more unreferenced files are younger than 3600 s" in kept.stderr
    assert recent.path.is_file()

    deleted = await _run(data_dir, database_url, "--delete", "--min-age-s", "0", cwd=tmp_path)

    assert deleted.stdout.splitlines() == [str(recent.path)]
    assert not recent.path.exists()


async def test_orphans_matches_moved_data_dir(photo_store, database_url: str, tmp_path: Path):
    data_dir, store = photo_store
    photo = store.save(b"a photo stored under the old DATA_DIR", ".jpg")
    await _store_album(database_url, [photo])
    moved = tmp_path / "moved"
    data_dir.rename(moved)
    moved_photo = moved / photo.path.relative_to(data_dir)
    _make_old(moved_photo)

    result = await _run(moved, database_url, "--delete", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert moved_photo.is_file()


async def test_orphans_default_database_in_data_dir(tmp_path: Path):
    data_dir = tmp_path / "data"
    await upgrade_database_async(f"sqlite+aiosqlite:///{data_dir / 'flowerbot.db'}")
    unreferenced = ImageStore(data_dir / "photos").save(b"nobody sent this", ".jpg")
    _make_old(unreferenced.path)

    result = await _run(data_dir, None, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(unreferenced.path)]


async def test_orphans_reads_dotenv(photo_store, database_url: str, tmp_path: Path):
    data_dir, store = photo_store
    unreferenced = store.save(b"found through .env", ".jpg")
    _make_old(unreferenced.path)
    (tmp_path / ".env").write_text(f"DATA_DIR={data_dir}\nDATABASE_URL={database_url}\n", encoding="utf-8")

    result = await _run(None, None, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(unreferenced.path)]


async def test_orphans_flags_override_environment(photo_store, database_url: str, tmp_path: Path):
    data_dir, store = photo_store
    unreferenced = store.save(b"listed through the flags", ".jpg")
    _make_old(unreferenced.path)

    result = await _run(
        tmp_path / "elsewhere", "sqlite+aiosqlite:///nowhere.db", "--data-dir", str(data_dir), "--database-url", database_url, cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(unreferenced.path)]


async def test_orphans_rejects_missing_database(tmp_path: Path):
    data_dir = tmp_path / "data"
    (data_dir / "photos").mkdir(parents=True)

    result = await _run(data_dir, None, cwd=tmp_path)

    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert not (data_dir / "flowerbot.db").exists()


async def test_orphans_rejects_database_before_0005(database_url: str, tmp_path: Path):
    await upgrade_database_async(database_url, "0004")
    data_dir = tmp_path / "data"
    unreferenced = ImageStore(data_dir / "photos").save(b"must not be deleted", ".jpg")
    _make_old(unreferenced.path)

    result = await _run(data_dir, database_url, "--delete", cwd=tmp_path)

    assert result.returncode == 2
    assert "has no prediction_images table" in result.stderr
    assert unreferenced.path.is_file()

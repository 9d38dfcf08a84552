"""Alembic migrations on a real database: up, down, up again, and agreement with the models."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, inspect
from sqlalchemy.engine import Connection

from storage.db import (
    alembic_config,
    create_engine,
    downgrade_database,
    upgrade_database,
)
from storage.models import Base
from tests.test_storage_support import database_url  # noqa: F401  (fixture)

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
TABLES_0001 = {"users", "predictions"}
TABLES_0002 = TABLES_0001 | {"corrections", "pending_inputs"}
TABLES_0003 = TABLES_0002 | {"model_versions", "retrain_runs"}
# 0004 changes constraints only.
TABLES_0004 = TABLES_0003
TABLES_0005 = TABLES_0004 | {"prediction_images"}
TABLES_0006 = TABLES_0005 | {"inbox_updates"}


async def _inspect(url: str, function):
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(function)
    finally:
        await engine.dispose()


def _application_tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _schema_diff(metadata: MetaData):
    def compare(connection: Connection) -> list:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata)

    return compare


async def _upgrade(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade_database, url, revision)


async def _downgrade(url: str, revision: str = "base") -> None:
    await asyncio.to_thread(downgrade_database, url, revision)


def test_revisions_form_one_chain():
    script = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://"))

    revisions = [revision.revision for revision in script.walk_revisions("base", "heads")]

    assert script.get_heads() == ["0006"]
    assert revisions == ["0006", "0005", "0004", "0003", "0002", "0001"]


async def test_upgrade_downgrade_upgrade(database_url):
    await _upgrade(database_url)
    assert await _inspect(database_url, _application_tables) == TABLES_0006
    assert await _inspect(database_url, _current_revision) == "0006"

    await _downgrade(database_url)
    assert await _inspect(database_url, _application_tables) == set()
    assert await _inspect(database_url, _current_revision) is None

    await _upgrade(database_url)
    assert await _inspect(database_url, _application_tables) == TABLES_0006
    assert await _inspect(database_url, _current_revision) == "0006"


async def test_each_revision_adds_and_removes_its_tables(database_url):
    await _upgrade(database_url, "0001")
    assert await _inspect(database_url, _application_tables) == TABLES_0001

    await _upgrade(database_url, "0002")
    assert await _inspect(database_url, _application_tables) == TABLES_0002

    await _upgrade(database_url, "0003")
    assert await _inspect(database_url, _application_tables) == TABLES_0003

    await _upgrade(database_url, "0004")
    assert await _inspect(database_url, _application_tables) == TABLES_0004

    await _upgrade(database_url, "0005")
    assert await _inspect(database_url, _application_tables) == TABLES_0005

    await _upgrade(database_url, "0006")
    assert await _inspect(database_url, _application_tables) == TABLES_0006

    await _downgrade(database_url, "0005")
    assert await _inspect(database_url, _application_tables) == TABLES_0005

    await _downgrade(database_url, "0004")
    assert await _inspect(database_url, _application_tables) == TABLES_0004

    await _downgrade(database_url, "0003")
    assert await _inspect(database_url, _application_tables) == TABLES_0003

    await _downgrade(database_url, "0002")
    assert await _inspect(database_url, _application_tables) == TABLES_0002

    await _downgrade(database_url, "0001")
    assert await _inspect(database_url, _application_tables) == TABLES_0001


async def test_upgrade_twice_is_a_no_op(database_url):
    await _upgrade(database_url)
    await _upgrade(database_url)

    assert await _inspect(database_url, _current_revision) == "0006"
    assert await _inspect(database_url, _application_tables) == TABLES_0006


async def test_models_match_migrations(database_url):
    await _upgrade(database_url)

    diff = await _inspect(database_url, _schema_diff(Base.metadata))

    assert diff == []


async def test_schema_comparison_detects_a_missing_column(database_url):
    # Guards the test above: the comparison must see a column the migrations lack.
    await _upgrade(database_url)
    metadata = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(metadata)
    metadata.tables["users"].append_column(Column("shoe_size", Integer))

    diff = await _inspect(database_url, _schema_diff(metadata))

    added = [entry for entry in diff if entry[0] == "add_column"]
    assert len(added) == 1
    assert added[0][3].name == "shoe_size"


async def test_upgrade_keeps_existing_rows(database_url):
    await _upgrade(database_url, "0001")
    created_at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    def insert_user(connection: Connection) -> None:
        connection.execute(
            Base.metadata.tables["users"].insert().values(
                id=42, is_active=True, created_at=created_at, updated_at=created_at
            )
        )
        connection.commit()

    await _inspect(database_url, insert_user)
    await _upgrade(database_url)

    def user_ids(connection: Connection) -> list[int]:
        return list(connection.execute(Base.metadata.tables["users"].select()).scalars())

    assert await _inspect(database_url, user_ids) == [42]


async def test_upgrade_from_another_directory(database_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    await _upgrade(database_url)

    assert await _inspect(database_url, _current_revision) == "0006"


async def test_alembic_command_line_reads_database_url(database_url, tmp_path):
    environment = dict(os.environ, DATABASE_URL=database_url)
    config_path = REPOSITORY_ROOT / "migrations" / "alembic.ini"

    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "alembic", "-c", str(config_path), "upgrade", "head"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    assert await _inspect(database_url, _current_revision) == "0006"


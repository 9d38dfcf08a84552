"""Engine settings: SQLite pragmas, BEGIN modes, URLs and UTC timestamps."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import make_url, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from storage.db import (
    SQLITE_BEGIN_OPTION,
    create_engine,
    default_database_url,
    is_sqlite,
    new_session_factory,
)
from storage.models import Base, Prediction, User
from storage.repository import Repository
from tests.test_storage_support import (  # noqa: F401  (fixtures)
    database_url,
    engine,
    migrated_database_url,
    sqlite_database_url,
)


def _sqlite_path(url: str) -> Path:
    return Path(make_url(url).database)


def test_default_database_url_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    url = make_url(default_database_url("data"))

    assert url.drivername == "sqlite+aiosqlite"
    assert Path(url.database) == tmp_path / "data" / "flowerbot.db"


def test_is_sqlite_by_backend():
    assert is_sqlite("sqlite+aiosqlite:///x.db")
    assert not is_sqlite("postgresql+asyncpg://user@127.0.0.1/flowerbot")


async def test_sqlite_pragmas_on_every_connection(sqlite_database_url):
    engine = create_engine(sqlite_database_url)
    try:
        async with engine.connect() as connection:
            journal_mode = (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
            busy_timeout = (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar_one()
            foreign_keys = (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
            synchronous = (await connection.exec_driver_sql("PRAGMA synchronous")).scalar_one()
    finally:
        await engine.dispose()

    assert journal_mode == "wal"
    assert busy_timeout == 5000
    assert foreign_keys == 1
    assert synchronous == 1  # NORMAL


async def test_sqlite_engine_creates_parent_directory(tmp_path):
    database = tmp_path / "nested" / "data" / "flowerbot.db"
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql("CREATE TABLE probe (id INTEGER)")
    finally:
        await engine.dispose()

    assert database.is_file()


async def test_foreign_keys_are_enforced(engine):
    session_factory = new_session_factory(engine)

    with pytest.raises(IntegrityError):
        async with session_factory() as session, session.begin():
            session.add(
                Prediction(
                    user_id=404,
                    chat_id=1,
                    message_id=1,
                    file_unique_id="f",
                    image_path="/x.jpg",
                    image_sha256="0" * 64,
                    model_version="v1",
                    top_k=[{"index": 0, "class_id": "daisy", "probability": 1.0}],
                    k=1,
                    latency_ms=1.0,
                )
            )


async def test_begin_immediate_takes_write_lock(sqlite_database_url):
    engine = create_engine(sqlite_database_url)
    other = sqlite3.connect(_sqlite_path(sqlite_database_url), timeout=0, isolation_level=None)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            async with connection.begin():
                await connection.execute(text("SELECT 1"))
                # The write lock is held before any write statement ran.
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
        await engine.dispose()


async def test_deferred_begin_leaves_write_lock_free(sqlite_database_url):
    engine = create_engine(sqlite_database_url)
    other = sqlite3.connect(_sqlite_path(sqlite_database_url), timeout=0, isolation_level=None)
    try:
        async with engine.connect() as connection, connection.begin():
            await connection.execute(text("SELECT 1"))
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
    finally:
        other.close()
        await engine.dispose()


async def test_unknown_begin_mode_is_rejected(sqlite_database_url):
    engine = create_engine(sqlite_database_url)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(**{SQLITE_BEGIN_OPTION: "SOMETIMES"})
            with pytest.raises(ValueError, match="SOMETIMES"):
                await connection.begin()
    finally:
        await engine.dispose()


async def test_negative_busy_timeout_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="busy_timeout"):
        create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", sqlite_busy_timeout_ms=-1)


async def test_timestamps_read_back_in_utc(engine):
    session_factory = new_session_factory(engine)
    plus_eight = timezone(timedelta(hours=8))
    blocked_at = datetime(2025, 3, 1, 20, 30, tzinfo=plus_eight)

    async with session_factory() as session, session.begin():
        session.add(User(id=7, blocked_at=blocked_at))
    async with session_factory() as session:
        stored = await session.scalar(select(User.blocked_at).where(User.id == 7))

    assert stored == blocked_at
    assert stored.utcoffset() == timedelta(0)
    assert stored.hour == 12


async def test_naive_timestamp_is_rejected(engine):
    session_factory = new_session_factory(engine)

    with pytest.raises(StatementError, match="naive datetime"):
        async with session_factory() as session, session.begin():
            session.add(User(id=8, blocked_at=datetime(2025, 3, 1, 12, 0)))


async def test_in_memory_engine_shares_one_database():
    engine = create_engine("sqlite+aiosqlite://")
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        repository = Repository(new_session_factory(engine))
        await repository.upsert_user(5, username="memory", first_name=None, language_code=None)

        stored = await repository.get_user(5)
    finally:
        await engine.dispose()

    assert stored.username == "memory"

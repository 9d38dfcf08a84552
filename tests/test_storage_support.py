"""Database fixtures for the storage and migration tests.

``database_url`` is an empty SQLite file in ``tmp_path``. When
``FLOWERBOT_TEST_DATABASE_URL`` contains a PostgreSQL admin URL (for example
``postgresql+asyncpg://postgres@127.0.0.1:5432/postgres``), each test gets a
new database on that server instead, dropped afterwards.

NOTE: these fixtures stand in until tests/fixtures/database.py provides
``database_url``; the modules that import them then drop the import.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from storage.db import create_engine, is_sqlite, new_session_factory, upgrade_database_async
from storage.repository import Repository

TEST_DATABASE_URL_ENV = "FLOWERBOT_TEST_DATABASE_URL"


async def _create_postgres_database(admin_url: str) -> str:
    """Create an empty database on the admin URL's server and return its URL."""
    name = f"flowerbot_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as connection:
            await connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        await admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def _drop_postgres_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as connection:
            await connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.dispose()


@pytest.fixture
async def database_url(tmp_path: Path) -> AsyncIterator[str]:
    """Return the URL of an empty database: SQLite in tmp_path, or PostgreSQL when configured."""
    admin_url = os.environ.get(TEST_DATABASE_URL_ENV)
    if not admin_url:
        yield f"sqlite+aiosqlite:///{tmp_path / 'flowerbot.db'}"
        return
    url = await _create_postgres_database(admin_url)
    try:
        yield url
    finally:
        await _drop_postgres_database(admin_url, url)


@pytest.fixture
def sqlite_database_url(database_url: str) -> str:
    """Return the SQLite database URL, or skip the test on another database."""
    if not is_sqlite(database_url):
        pytest.skip("this test locks a SQLite file; it has no PostgreSQL counterpart")
    return database_url


@pytest.fixture
async def migrated_database_url(database_url: str) -> str:
    """Return the URL of a database upgraded to the newest Alembic revision."""
    await upgrade_database_async(database_url)
    return database_url


@pytest.fixture
async def engine(migrated_database_url: str) -> AsyncIterator[AsyncEngine]:
    """Return an engine on the migrated database, disposed after the test."""
    engine = create_engine(migrated_database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def repository(engine: AsyncEngine) -> Repository:
    """Return a repository on the migrated database."""
    return Repository(new_session_factory(engine))

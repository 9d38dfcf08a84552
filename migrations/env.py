"""Alembic environment for flowerbot: migrations run on the async engine from storage.db.

The database URL comes from ``config.attributes["database_url"]`` (set by
``storage.db.alembic_config``), else from the ``DATABASE_URL`` environment
variable, else from ``sqlalchemy.url`` in alembic.ini. A caller that already
holds a synchronous connection (inside ``AsyncConnection.run_sync``) can pass
it as ``config.attributes["connection"]`` instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import make_url, pool
from sqlalchemy.engine import URL, Connection

from storage.db import create_engine
from storage.models import Base

config = context.config
logger = logging.getLogger("migrations.env")

if config.attributes.get("configure_logging", True) and config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _database_url() -> URL:
    url = (
        config.attributes.get("database_url")
        or os.environ.get("DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise RuntimeError(
            "no database URL for the migrations: set DATABASE_URL, e.g. "
            "DATABASE_URL=sqlite+aiosqlite:///data/flowerbot.db"
        )
    return make_url(url)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        # SQLite can roll back DDL. Alembic assumes it cannot because the
        # sqlite3 driver commits on its own, but storage.db emits BEGIN
        # itself, so a failed upgrade leaves the schema as it was.
        transactional_ddl=True,
        compare_type=True,
    )


def _set_sqlite_foreign_keys(connection: Connection, enabled: bool) -> None:
    # The pragma is a no-op inside a transaction, so it goes to the DBAPI
    # connection, which runs outside one (storage.db turns off the driver's
    # own BEGIN).
    cursor = connection.connection.cursor()
    try:
        cursor.execute(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")
    finally:
        cursor.close()


def _run_migrations(connection: Connection) -> None:
    if connection.dialect.name != "sqlite":
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    # A batch migration drops and recreates a table. With foreign keys on,
    # that DROP would cascade into the rows that reference the table.
    _set_sqlite_foreign_keys(connection, False)
    try:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
            violations = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if violations:
                raise RuntimeError(f"the migration left rows with broken foreign keys: {violations[:10]}")
    finally:
        _set_sqlite_foreign_keys(connection, True)


async def _run_async_migrations(url: URL) -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    """Write the migration SQL for ``alembic upgrade --sql`` without connecting."""
    url = _database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.get_backend_name() == "sqlite",
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Apply the migrations on a live connection."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_migrations(connection)
        return
    asyncio.run(_run_async_migrations(_database_url()))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

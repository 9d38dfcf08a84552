"""Engine and session factories, and Alembic upgrades run from Python.

Works with ``sqlite+aiosqlite://`` and ``postgresql+asyncpg://`` URLs.

SQLite connections get WAL journal mode, so readers and the one writer do
not block each other. A busy timeout makes a writer wait for the lock instead
of failing at once. Foreign keys are on. ``synchronous=NORMAL`` is safe with
WAL, because a power loss can drop the last commits but does not corrupt the
file. SQLAlchemy, not the ``sqlite3`` driver, emits BEGIN, so a transaction
really starts at its first statement. A session can ask for
``BEGIN IMMEDIATE`` (see :data:`SQLITE_BEGIN_OPTION`), which takes the write
lock up front. Lock waits then go through the busy timeout, and a
read-then-write transaction cannot fail half-way with ``SQLITE_BUSY_SNAPSHOT``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, make_url
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

logger = logging.getLogger(__name__)

DATABASE_FILENAME = "flowerbot.db"
SQLITE_BUSY_TIMEOUT_MS = 5000

# Connection execution option read by the SQLite "begin" hook: "DEFERRED"
# (the default), "IMMEDIATE" or "EXCLUSIVE". Pass it with
# ``await session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})``
# as the first statement of a transaction. Other dialects ignore it.
SQLITE_BEGIN_OPTION = "flowerbot_sqlite_begin"
_SQLITE_BEGIN_MODES = ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")

# Log label of the engines created while Alembic runs. migrations/env.py builds its own
# engine and disposes of it after the migration, so a bot start logs two engines for one database.
MIGRATION_ENGINE_PURPOSE = "Alembic migrations, disposed when they finish"
_engine_purpose: contextvars.ContextVar[str | None] = contextvars.ContextVar("flowerbot_engine_purpose", default=None)


def migrations_dir() -> Path:
    """Return the directory of the ``migrations`` package, in a checkout or an installed wheel."""
    import migrations

    return Path(migrations.__file__).resolve().parent


def default_database_url(data_dir: str | Path) -> str:
    """Return the SQLite URL of ``flowerbot.db`` inside ``data_dir`` (made absolute)."""
    path = Path(data_dir).expanduser().resolve() / DATABASE_FILENAME
    return f"sqlite+aiosqlite:///{path}"


def is_sqlite(url: str | URL) -> bool:
    """Return True when ``url`` names a SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_is_in_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in database


def _sqlite_file(url: URL) -> Path | None:
    """Return the database file of a SQLite URL, or None for in-memory and ``file:`` URI databases."""
    if _sqlite_is_in_memory(url) or url.database.startswith("file:"):
        return None
    return Path(url.database)


def create_engine(
    url: str | URL,
    *,
    sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    purpose: str | None = None,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """Create an async engine for ``url`` with the settings flowerbot relies on.

    For a SQLite file the parent directory is created when missing, because
    SQLite cannot create it and fails with "unable to open database file".
    ``purpose`` ends the log line, so that two engines for one database can be
    distinguished. Inside :func:`upgrade_database` and :func:`downgrade_database`
    it defaults to :data:`MIGRATION_ENGINE_PURPOSE`. ``engine_kwargs`` go to
    :func:`sqlalchemy.ext.asyncio.create_async_engine` and override the pool
    settings chosen here.
    """
    url = make_url(url)
    purpose = purpose or _engine_purpose.get()
    if url.get_backend_name() == "sqlite":
        return _create_sqlite_engine(url, sqlite_busy_timeout_ms, engine_kwargs, purpose)

    options: dict[str, Any] = {}
    if "poolclass" not in engine_kwargs:
        # A server can close idle connections; a ping replaces them first.
        options.update(pool_pre_ping=True, pool_size=5, max_overflow=10)
    options.update(engine_kwargs)
    engine = create_async_engine(url, **options)
    logger.info("created database engine for %s%s", url.render_as_string(hide_password=True), _purpose_suffix(purpose))
    return engine


def _purpose_suffix(purpose: str | None) -> str:
    return f" for {purpose}" if purpose else ""


def _create_sqlite_engine(url: URL, busy_timeout_ms: int, engine_kwargs: dict[str, Any], purpose: str | None) -> AsyncEngine:
    if busy_timeout_ms < 0:
        raise ValueError(f"sqlite_busy_timeout_ms must be 0 or more, got {busy_timeout_ms}")

    database_file = _sqlite_file(url)
    if database_file is not None:
        database_file.parent.mkdir(parents=True, exist_ok=True)

    in_memory = _sqlite_is_in_memory(url)
    options: dict[str, Any] = {}
    if "poolclass" not in engine_kwargs:
        if in_memory:
            # One shared connection, or each checkout would see its own empty database.
            options["poolclass"] = StaticPool
        else:
            # Every aiosqlite connection owns a thread. SQLite has one writer at
            # a time anyway, so a few pooled connections serve the readers in
            # WAL mode, and a checkout waits instead of opening many threads.
            options.update(pool_size=5, max_overflow=5, pool_timeout=30)
    options.update(engine_kwargs)
    engine = create_async_engine(url, **options)

    @event.listens_for(engine.sync_engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
        # Stop the sqlite3 driver from emitting its own BEGIN; _begin_sqlite does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # An in-memory database has no write-ahead log to switch to.
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin_sqlite(connection: Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        if mode not in _SQLITE_BEGIN_MODES:
            raise ValueError(f"{SQLITE_BEGIN_OPTION} must be one of {_SQLITE_BEGIN_MODES}, got {mode!r}")
        connection.exec_driver_sql(f"BEGIN {mode}")

    logger.info(
        "created SQLite engine for %s (WAL, busy_timeout=%d ms)%s",
        "an in-memory database" if in_memory else url.database,
        busy_timeout_ms,
        _purpose_suffix(purpose),
    )
    return engine


def new_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Return a session factory whose objects stay readable after commit (``expire_on_commit=False``)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | URL) -> Config:
    """Build an Alembic configuration for ``url`` that works from any current directory.

    The URL travels in ``config.attributes`` rather than in the ini options,
    so a ``%`` in a password needs no escaping and the URL is never logged.
    """
    directory = migrations_dir()
    config = Config(str(directory / "alembic.ini"))
    config.set_main_option("script_location", str(directory))
    config.attributes["database_url"] = make_url(url)
    # Keep the application's logging set-up; env.py reads this flag.
    config.attributes["configure_logging"] = False
    return config


def upgrade_database(url: str | URL, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision``.

    This blocks, and env.py starts its own event loop, so call it before the
    application's loop runs or through :func:`upgrade_database_async`.
    """
    safe_url = make_url(url).render_as_string(hide_password=True)
    logger.info("upgrading database %s to %s", safe_url, revision)
    token = _engine_purpose.set(MIGRATION_ENGINE_PURPOSE)
    try:
        command.upgrade(alembic_config(url), revision)
    finally:
        _engine_purpose.reset(token)
    logger.info("database %s is at %s", safe_url, revision)


async def upgrade_database_async(url: str | URL, revision: str = "head") -> None:
    """Run :func:`upgrade_database` in a worker thread, for callers inside an event loop."""
    await asyncio.to_thread(upgrade_database, url, revision)


def downgrade_database(url: str | URL, revision: str = "base") -> None:
    """Run the Alembic downgrades down to ``revision`` (blocks like :func:`upgrade_database`)."""
    safe_url = make_url(url).render_as_string(hide_password=True)
    logger.info("downgrading database %s to %s", safe_url, revision)
    token = _engine_purpose.set(MIGRATION_ENGINE_PURPOSE)
    try:
        command.downgrade(alembic_config(url), revision)
    finally:
        _engine_purpose.reset(token)
    logger.info("database %s is at %s", safe_url, revision)

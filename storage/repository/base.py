"""Transactions with retries, shared by every group of repository queries."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.db import SQLITE_BEGIN_OPTION
from storage.models import User

logger = logging.getLogger(__name__)

T = TypeVar("T")

# PostgreSQL SQLSTATEs worth retrying: serialization_failure, deadlock_detected.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
_SQLITE_LOCK_MESSAGES = ("database is locked", "database table is locked", "database schema is locked")
# Bound parameters per IN (...) query, well under SQLite's limit on host parameters.
IN_CHUNK_SIZE = 500


class StorageError(Exception):
    """Base class of the errors the repository raises on purpose."""


class NotFoundError(StorageError, LookupError):
    """The row a method needs does not exist (it may have been deleted by /forget)."""


class NotOwnerError(StorageError, PermissionError):
    """A user tried to change a prediction that belongs to another user."""


def is_retryable(error: DBAPIError) -> bool:
    """Return True for a transient lock or serialization error."""
    if isinstance(error, OperationalError):
        message = str(error.orig).lower()
        if any(text in message for text in _SQLITE_LOCK_MESSAGES):
            return True
    sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return sqlstate in _RETRYABLE_SQLSTATES


async def serialize_transactions(session: AsyncSession, name: str) -> None:
    """Make transactions that call this with the same ``name`` run one at a time.

    On PostgreSQL this takes a transaction-scoped advisory lock. SQLite needs
    nothing, because a write transaction already holds the database write lock
    from BEGIN IMMEDIATE.
    """
    connection = await session.connection()
    if connection.dialect.name != "postgresql":
        return
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def chunks(values: Sequence[T], size: int = IN_CHUNK_SIZE) -> Iterable[Sequence[T]]:
    """Yield consecutive slices of ``values`` of at most ``size`` items."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


class RepositoryBase:
    """Runs each query in its own short transaction, retried when the database is busy.

    ``max_attempts`` bounds how often a transaction runs when the database is
    locked. The waits between attempts double from ``retry_base_delay_s`` up
    to ``retry_max_delay_s``, with random jitter so that competing writers do
    not retry in step. Each attempt also waits up to the SQLite busy timeout.
    """

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        max_attempts: int = 6,
        retry_base_delay_s: float = 0.05,
        retry_max_delay_s: float = 2.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self._session_factory = session_factory
        self._max_attempts = max_attempts
        self._retry_base_delay_s = retry_base_delay_s
        self._retry_max_delay_s = retry_max_delay_s

    async def _transaction(
        self,
        operation: str,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        write: bool,
        conflict_retries: int = 0,
    ) -> T:
        """Run ``work`` in a new transaction and commit it, retrying transient failures.

        ``conflict_retries`` allows that many reruns after an IntegrityError,
        for check-then-insert code that can race with another transaction on
        PostgreSQL. The rerun then reads the row the other transaction committed.
        """
        attempt = 1
        conflicts = 0
        while True:
            try:
                async with self._session_factory() as session, session.begin():
                    if write:
                        await session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                    return await work(session)
            except IntegrityError as error:
                if conflicts >= conflict_retries:
                    raise
                conflicts += 1
                logger.info("%s conflicted with a concurrent transaction, rerunning: %s", operation, error.orig)
            except DBAPIError as error:
                if not is_retryable(error):
                    raise
                if attempt >= self._max_attempts:
                    logger.error("%s failed after %d attempts: %s", operation, attempt, error.orig)
                    raise
                delay = min(self._retry_max_delay_s, self._retry_base_delay_s * 2 ** (attempt - 1))
                delay *= random.uniform(0.5, 1.0)
                logger.warning(
                    "%s: database busy (attempt %d of %d): %s; retrying in %.2f s",
                    operation,
                    attempt,
                    self._max_attempts,
                    error.orig,
                    delay,
                )
                await asyncio.sleep(delay)
                attempt += 1

    async def ping(self) -> None:
        """Run ``SELECT 1``; raises when the database does not respond."""

        async def work(session: AsyncSession) -> None:
            await session.execute(select(1))

        await self._transaction("ping", work, write=False)

    @staticmethod
    async def _ensure_user(session: AsyncSession, user_id: int) -> User:
        user = await session.get(User, user_id)
        if user is None:
            user = User(id=user_id)
            session.add(user)
            await session.flush()
        return user

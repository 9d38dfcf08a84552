"""Queries on Telegram users: profile, language choice and blocked state."""

from __future__ import annotations

import logging

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import LANGUAGES, User, utc_now
from storage.repository.base import RepositoryBase

logger = logging.getLogger(__name__)


def _truncate(value: str | None, length: int) -> str | None:
    return value if value is None else value[:length]


class UserQueries(RepositoryBase):
    """Users, their language override and whether they blocked the bot."""

    async def upsert_user(
        self,
        user_id: int,
        *,
        username: str | None = None,
        first_name: str | None = None,
        language_code: str | None = None,
    ) -> User:
        """Insert or update a user from a Telegram update.

        An update from the user proves they have not blocked the bot, so an
        inactive user becomes active again.
        """

        # Telegram caps usernames at 32 and first names at 64 characters; the
        # cut only guards the column sizes against a client that sends more.
        username = _truncate(username, User.username.type.length)
        first_name = _truncate(first_name, User.first_name.type.length)
        language_code = _truncate(language_code, User.language_code.type.length)

        async def work(session: AsyncSession) -> User:
            user = await session.get(User, user_id)
            if user is None:
                user = User(id=user_id, username=username, first_name=first_name, language_code=language_code)
                session.add(user)
                await session.flush()
                return user
            if user.username != username:
                user.username = username
            if user.first_name != first_name:
                user.first_name = first_name
            if user.language_code != language_code:
                user.language_code = language_code
            if not user.is_active:
                logger.info("user %d is active again", user_id)
                user.is_active = True
                user.blocked_at = None
            await session.flush()
            return user

        return await self._transaction("upsert_user", work, write=True, conflict_retries=1)

    async def get_user(self, user_id: int) -> User | None:
        """Return the user, or None when the bot has never stored them."""

        async def work(session: AsyncSession) -> User | None:
            return await session.get(User, user_id)

        return await self._transaction("get_user", work, write=False)

    async def set_user_language(self, user_id: int, language: str | None) -> User:
        """Store the user's language override ('en' or 'zh'); None returns to the Telegram language."""
        if language is not None and language not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES} or None, got {language!r}")

        async def work(session: AsyncSession) -> User:
            user = await self._ensure_user(session, user_id)
            user.language = language
            await session.flush()
            return user

        return await self._transaction("set_user_language", work, write=True, conflict_retries=1)

    async def mark_user_blocked(self, user_id: int) -> bool:
        """Mark the user inactive after Telegram rejected a message with Forbidden.

        Returns True only when the user was active before, so the caller logs
        the block once.
        """

        async def work(session: AsyncSession) -> bool:
            # _ensure_user flushes a new row, so the UPDATE below finds it.
            await self._ensure_user(session, user_id)
            # One conditional UPDATE, so two concurrent Forbidden errors cannot both see the
            # user active: on PostgreSQL the second waits for the first's row lock and then
            # finds is_active false.
            changed = await session.execute(
                update(User)
                .where(User.id == user_id, User.is_active.is_(True))
                .values(is_active=False, blocked_at=utc_now())
                .execution_options(synchronize_session="fetch")
            )
            return changed.rowcount == 1

        return await self._transaction("mark_user_blocked", work, write=True, conflict_retries=1)

    async def mark_user_active(self, user_id: int) -> bool:
        """Mark the user active again; returns True when they were inactive."""

        async def work(session: AsyncSession) -> bool:
            # _ensure_user flushes a new row, so the UPDATE below finds it.
            await self._ensure_user(session, user_id)
            changed = await session.execute(
                update(User)
                .where(User.id == user_id, User.is_active.is_(False))
                .values(is_active=True, blocked_at=None)
                .execution_options(synchronize_session="fetch")
            )
            return changed.rowcount == 1

        return await self._transaction("mark_user_active", work, write=True, conflict_retries=1)

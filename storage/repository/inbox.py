"""Queries on the inbox: image updates stored on arrival until their handlers have run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import InboxUpdate, utc_now
from storage.repository.base import RepositoryBase, chunks

logger = logging.getLogger(__name__)


class InboxQueries(RepositoryBase):
    """Recording updates, marking them finished, claiming the unfinished ones for a replay, pruning."""

    async def record_update(self, update_id: int, payload: dict[str, Any], user_id: int | None = None) -> bool:
        """Store an update of user `user_id` as unfinished with one attempt. Return False when it was already stored.

        A stored update is left unchanged, whether finished or not, so recording a
        replayed or re-delivered update keeps its attempt count.
        """

        async def work(session: AsyncSession) -> bool:
            if await session.get(InboxUpdate, update_id) is not None:
                return False
            session.add(InboxUpdate(update_id=update_id, payload=payload, user_id=user_id, received_at=utc_now(), attempts=1))
            await session.flush()
            return True

        # A concurrent insert of the same update_id fails with IntegrityError, and the rerun finds its row.
        return await self._transaction("record_update", work, write=True, conflict_retries=1)

    async def finish_updates(self, update_ids: Sequence[int]) -> int:
        """Mark updates finished and return how many were unfinished. Unknown ids are ignored."""
        ids = list(dict.fromkeys(update_ids))
        if not ids:
            return 0

        async def work(session: AsyncSession) -> int:
            finished_at = utc_now()
            count = 0
            for chunk in chunks(ids):
                statement = (
                    update(InboxUpdate)
                    .where(InboxUpdate.update_id.in_(chunk), InboxUpdate.finished_at.is_(None))
                    .values(finished_at=finished_at)
                )
                count += (await session.execute(statement)).rowcount
            return count

        return await self._transaction("finish_updates", work, write=True)

    async def claim_unfinished_updates(self) -> list[InboxUpdate]:
        """Return the unfinished updates, oldest first, after adding one attempt to each.

        The returned rows carry the new count, which includes the replay the caller is
        about to make.
        """

        async def work(session: AsyncSession) -> list[InboxUpdate]:
            statement = (
                select(InboxUpdate)
                .where(InboxUpdate.finished_at.is_(None))
                .order_by(InboxUpdate.received_at, InboxUpdate.update_id)
            )
            rows = list((await session.scalars(statement)).all())
            for row in rows:
                row.attempts += 1
            await session.flush()
            return rows

        return await self._transaction("claim_unfinished_updates", work, write=True)

    async def get_inbox_update(self, update_id: int) -> InboxUpdate | None:
        """Return the stored update, or None when it was never recorded or has been deleted."""

        async def work(session: AsyncSession) -> InboxUpdate | None:
            return await session.get(InboxUpdate, update_id)

        return await self._transaction("get_inbox_update", work, write=False)

    async def delete_finished_updates(self, finished_before: datetime) -> int:
        """Delete the updates finished before `finished_before` (an aware datetime) and return how many."""
        if finished_before.tzinfo is None:
            raise ValueError(f"finished_before must be an aware datetime, got naive {finished_before!r}")

        async def work(session: AsyncSession) -> int:
            statement = delete(InboxUpdate).where(InboxUpdate.finished_at < finished_before)
            return (await session.execute(statement)).rowcount

        return await self._transaction("delete_finished_updates", work, write=True)

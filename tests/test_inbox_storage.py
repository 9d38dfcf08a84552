"""The inbox table on a real migrated database: repository queries and migration 0006 up, down and up."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
from sqlalchemy import inspect, update
from sqlalchemy.engine import Connection

from storage.db import create_engine, downgrade_database, new_session_factory, upgrade_database
from storage.models import InboxUpdate, utc_now
from storage.repository import Repository


def photo_payload(update_id: int, message_id: int) -> dict:
    """Return an update body in the shape `telegram.Update.to_dict()` gives for a photo message."""
    return {
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "date": 1_760_000_000,
            "chat": {"id": 7001, "type": "private", "first_name": "Alice"},
            "from": {"id": 7001, "is_bot": False, "first_name": "Alice"},
            "photo": [{"file_id": f"file-{message_id}", "file_unique_id": f"unique-{message_id}", "width": 160, "height": 120}],
        },
    }


@pytest.fixture
def repository(migrated_repository: Repository) -> Repository:
    return migrated_repository


async def set_finished_at(repository: Repository, update_id: int, age: timedelta) -> None:
    """Mark one update as finished `age` ago, as if it had been handled back then."""

    async def work(session) -> None:
        await session.execute(update(InboxUpdate).where(InboxUpdate.update_id == update_id).values(finished_at=utc_now() - age))

    await repository._transaction("test_set_finished_at", work, write=True)


async def test_record_update_is_idempotent(repository: Repository) -> None:
    payload = photo_payload(101, 1)

    first = await repository.record_update(101, payload)
    second = await repository.record_update(101, photo_payload(101, 999))

    assert first is True
    assert second is False
    row = await repository.get_inbox_update(101)
    assert row is not None
    assert row.payload == payload
    assert row.attempts == 1
    assert row.finished_at is None
    assert row.received_at.tzinfo is not None


async def test_record_keeps_finished_update_finished(repository: Repository) -> None:
    await repository.record_update(102, photo_payload(102, 2))
    await repository.finish_updates([102])

    recorded_again = await repository.record_update(102, photo_payload(102, 2))

    assert recorded_again is False
    row = await repository.get_inbox_update(102)
    assert row is not None
    assert row.finished_at is not None


async def test_finish_updates_counts_unfinished_only(repository: Repository) -> None:
    for update_id in (201, 202, 203):
        await repository.record_update(update_id, photo_payload(update_id, update_id))

    first = await repository.finish_updates([201, 202, 202, 9999])
    second = await repository.finish_updates([201, 203])
    nothing = await repository.finish_updates([])

    assert first == 2
    assert second == 1
    assert nothing == 0
    for update_id in (201, 202, 203):
        row = await repository.get_inbox_update(update_id)
        assert row is not None and row.finished_at is not None


async def test_claim_counts_attempt_oldest_first(repository: Repository) -> None:
    # Recorded out of update_id order: the claim follows the arrival order.
    for update_id in (303, 301, 302, 304):
        await repository.record_update(update_id, photo_payload(update_id, update_id))
    await repository.finish_updates([302])

    claimed = await repository.claim_unfinished_updates()
    claimed_again = await repository.claim_unfinished_updates()

    assert [row.update_id for row in claimed] == [303, 301, 304]
    assert [row.attempts for row in claimed] == [2, 2, 2]
    assert [row.attempts for row in claimed_again] == [3, 3, 3]
    assert (await repository.get_inbox_update(301)).attempts == 3
    assert (await repository.get_inbox_update(302)).attempts == 1
    assert claimed[0].payload == photo_payload(303, 303)


async def test_delete_finished_updates_by_age(repository: Repository) -> None:
    for update_id in (401, 402, 403):
        await repository.record_update(update_id, photo_payload(update_id, update_id))
    await set_finished_at(repository, 401, timedelta(days=2))
    await set_finished_at(repository, 402, timedelta(minutes=5))

    deleted = await repository.delete_finished_updates(utc_now() - timedelta(days=1))

    assert deleted == 1
    assert await repository.get_inbox_update(401) is None
    assert await repository.get_inbox_update(402) is not None
    # Unfinished rows stay however old they are.
    assert await repository.get_inbox_update(403) is not None


async def test_delete_finished_rejects_naive_time(repository: Repository) -> None:
    with pytest.raises(ValueError, match="aware"):
        await repository.delete_finished_updates(utc_now().replace(tzinfo=None))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def _read(url: str, function):
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(function)
    finally:
        await engine.dispose()


async def test_forget_user_deletes_own_updates(repository: Repository) -> None:
    await repository.record_update(301, photo_payload(301, 1), user_id=7001)
    await repository.record_update(302, photo_payload(302, 2), user_id=7002)
    await repository.record_update(303, photo_payload(303, 3))

    await repository.forget_user(7001)

    assert await repository.get_inbox_update(301) is None
    kept = await repository.get_inbox_update(302)
    assert kept is not None
    assert kept.user_id == 7002
    assert await repository.get_inbox_update(303) is not None


async def test_migration_0006_up_down_up(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    await asyncio.to_thread(upgrade_database, database_url, "0006")
    assert "inbox_updates" in await _read(database_url, _tables)
    engine = create_engine(database_url)
    try:
        repository = Repository(new_session_factory(engine))
        await repository.record_update(501, photo_payload(501, 1))
        await repository.record_update(502, photo_payload(502, 2))
        await repository.finish_updates([502])
    finally:
        await engine.dispose()

    with caplog.at_level(logging.INFO):
        await asyncio.to_thread(downgrade_database, database_url, "0005")
    tables = await _read(database_url, _tables)
    assert "inbox_updates" not in tables
    assert "prediction_images" in tables
    assert any("drops 1 unfinished inbox updates" in record.getMessage() for record in caplog.records)

    await asyncio.to_thread(upgrade_database, database_url, "0006")
    engine = create_engine(database_url)
    try:
        repository = Repository(new_session_factory(engine))
        assert await repository.claim_unfinished_updates() == []
        assert await repository.record_update(501, photo_payload(501, 1)) is True
    finally:
        await engine.dispose()

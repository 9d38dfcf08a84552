"""Revision 0004 on a real database: the 'unknown_species' correction kind, up, down and up again.

Rows of every kind are written through SQL at each revision, so the database itself
enforces the check constraints under test.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from storage.models import Base
from tests.test_migrations import _downgrade, _inspect, _upgrade
from tests.test_storage_support import database_url  # noqa: F401  (fixture)

CREATED_AT = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
USER_ID = 42
USERS = Base.metadata.tables["users"]
PREDICTIONS = Base.metadata.tables["predictions"]
CORRECTIONS = Base.metadata.tables["corrections"]
# Rows written at revision 0003, which 0004 must keep: (prediction id, label, kind, is_current).
OLD_ROWS = [
    (1, "daisy", "confirmed", True),
    (2, "roses", "corrected", True),
    (3, None, "not_flower", True),
    (4, "tulips", "confirmed", False),
]


def _insert_predictions(connection: Connection) -> None:
    connection.execute(USERS.insert().values(id=USER_ID, is_active=True, created_at=CREATED_AT, updated_at=CREATED_AT))
    for prediction_id in range(1, 5):
        connection.execute(
            PREDICTIONS.insert().values(
                id=prediction_id,
                user_id=USER_ID,
                chat_id=USER_ID,
                message_id=prediction_id,
                file_unique_id=f"unique-{prediction_id}",
                image_path=f"/data/images/{prediction_id}.jpg",
                image_sha256=f"{prediction_id:064x}",
                model_version="v1",
                top_k=[{"index": 0, "class_id": "daisy", "probability": 0.9}],
                k=1,
                latency_ms=10.0,
                created_at=CREATED_AT,
            )
        )
    connection.commit()


def _correction(prediction_id: int, label: str | None, kind: str, is_current: bool = True) -> dict:
    return {
        "prediction_id": prediction_id,
        "user_id": USER_ID,
        "label": label,
        "kind": kind,
        "is_current": is_current,
        "created_at": CREATED_AT,
    }


def _insert_old_rows(connection: Connection) -> None:
    for prediction_id, label, kind, is_current in OLD_ROWS:
        connection.execute(CORRECTIONS.insert().values(**_correction(prediction_id, label, kind, is_current)))
    connection.commit()


def _insert_unknown_species(connection: Connection) -> None:
    # Prediction 4 changes from its old label to "not in this list". Prediction 3 keeps
    # "not a flower" as history under a newer "not in this list".
    connection.execute(CORRECTIONS.insert().values(**_correction(4, None, "unknown_species")))
    connection.execute(update(CORRECTIONS).where(CORRECTIONS.c.prediction_id == 3).values(is_current=False))
    connection.execute(CORRECTIONS.insert().values(**_correction(3, None, "unknown_species")))
    connection.commit()


def _ordered(rows: list[tuple]) -> list[tuple]:
    """Sort (prediction id, label, kind, is_current) rows by prediction and kind; labels may be None."""
    return sorted(rows, key=lambda row: (row[0], row[2]))


def _rows(connection: Connection) -> list[tuple]:
    statement = select(CORRECTIONS.c.prediction_id, CORRECTIONS.c.label, CORRECTIONS.c.kind, CORRECTIONS.c.is_current)
    return _ordered([tuple(row) for row in connection.execute(statement)])


def _accepts(row: dict):
    """Return a check that inserts `row` and reports whether the database accepted it, leaving nothing behind."""

    def check(connection: Connection) -> bool:
        try:
            connection.execute(CORRECTIONS.insert().values(**row))
        except IntegrityError:
            connection.rollback()
            return False
        connection.rollback()
        return True

    return check


async def _accepts_row(url: str, prediction_id: int, label: str | None, kind: str) -> bool:
    return await _inspect(url, _accepts(_correction(prediction_id, label, kind, is_current=False)))


async def test_0003_rejects_unknown_species(database_url):
    await _upgrade(database_url, "0003")
    await _inspect(database_url, _insert_predictions)

    assert not await _accepts_row(database_url, 1, None, "unknown_species")
    assert await _accepts_row(database_url, 1, None, "not_flower")


async def test_0004_accepts_only_valid_pairs(database_url):
    await _upgrade(database_url)
    await _inspect(database_url, _insert_predictions)

    assert await _accepts_row(database_url, 1, None, "unknown_species")
    assert not await _accepts_row(database_url, 1, "daisy", "unknown_species")
    assert not await _accepts_row(database_url, 1, "daisy", "not_flower")
    assert await _accepts_row(database_url, 1, None, "not_flower")
    assert not await _accepts_row(database_url, 1, None, "corrected")
    assert not await _accepts_row(database_url, 1, None, "confirmed")
    assert not await _accepts_row(database_url, 1, "daisy", "wrong_kind")


async def test_unknown_species_up_down_up(database_url, caplog: pytest.LogCaptureFixture):
    await _upgrade(database_url, "0003")
    await _inspect(database_url, _insert_predictions)
    await _inspect(database_url, _insert_old_rows)

    await _upgrade(database_url, "0004")
    assert await _inspect(database_url, _rows) == _ordered(OLD_ROWS)
    await _inspect(database_url, _insert_unknown_species)
    assert await _inspect(database_url, _rows) == _ordered(
        [
            (1, "daisy", "confirmed", True),
            (2, "roses", "corrected", True),
            (3, None, "not_flower", False),
            (3, None, "unknown_species", True),
            (4, "tulips", "confirmed", False),
            (4, None, "unknown_species", True),
        ]
    )
    # SQLite copies the table to change a constraint; the partial unique index must survive it.
    assert not await _inspect(database_url, _accepts(_correction(2, "daisy", "corrected", is_current=True)))

    with caplog.at_level(logging.INFO):
        await _downgrade(database_url, "0003")
    assert any("deleted 2 'unknown_species' corrections" in record.getMessage() for record in caplog.records)
    # The two 'unknown_species' rows are gone; their predictions have no current correction left.
    assert await _inspect(database_url, _rows) == _ordered(
        [
            (1, "daisy", "confirmed", True),
            (2, "roses", "corrected", True),
            (3, None, "not_flower", False),
            (4, "tulips", "confirmed", False),
        ]
    )
    assert not await _accepts_row(database_url, 1, None, "unknown_species")
    assert not await _accepts_row(database_url, 1, "daisy", "not_flower")

    await _upgrade(database_url)
    assert await _inspect(database_url, _rows) == _ordered(
        [
            (1, "daisy", "confirmed", True),
            (2, "roses", "corrected", True),
            (3, None, "not_flower", False),
            (4, "tulips", "confirmed", False),
        ]
    )
    assert await _accepts_row(database_url, 1, None, "unknown_species")
    assert not await _inspect(database_url, _accepts(_correction(2, "daisy", "corrected", is_current=True)))

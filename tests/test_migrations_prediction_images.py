"""Revision 0005 on a real database: prediction_images, its backfill from existing predictions, up, down and up again."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from storage.models import Base
from tests.test_migrations import _application_tables, _downgrade, _inspect, _upgrade

CREATED_AT = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
USER_ID = 42
USERS = Base.metadata.tables["users"]
PREDICTIONS = Base.metadata.tables["predictions"]
PREDICTION_IMAGES = Base.metadata.tables["prediction_images"]
# Predictions stored before 0005: (id, file_unique_id, image_path, image_sha256, photo_count).
OLD_PREDICTIONS = [
    (1, "unique-1", "/data/photos/aa/aa/1.jpg", "1" * 64, 1),
    (2, "unique-2", "/data/photos/bb/bb/2.png", "2" * 64, 3),
    (5, "unique-5", "/data/photos/cc/cc/5.jpg", "5" * 64, 1),
]
BACKFILLED = [(prediction_id, 0, unique, path, sha) for prediction_id, unique, path, sha, _count in OLD_PREDICTIONS]


def _insert_predictions(connection: Connection) -> None:
    connection.execute(USERS.insert().values(id=USER_ID, is_active=True, created_at=CREATED_AT, updated_at=CREATED_AT))
    for prediction_id, unique, path, sha, photo_count in OLD_PREDICTIONS:
        connection.execute(
            PREDICTIONS.insert().values(
                id=prediction_id,
                user_id=USER_ID,
                chat_id=USER_ID,
                message_id=prediction_id,
                media_group_id="album" if photo_count > 1 else None,
                file_unique_id=unique,
                image_path=path,
                image_sha256=sha,
                photo_count=photo_count,
                model_version="v1",
                top_k=[{"index": 0, "class_id": "daisy", "probability": 0.9}],
                k=1,
                latency_ms=10.0,
                created_at=CREATED_AT,
            )
        )
    connection.commit()


def _image_rows(connection: Connection) -> list[tuple]:
    columns = PREDICTION_IMAGES.c
    statement = select(
        columns.prediction_id, columns.position, columns.file_unique_id, columns.image_path, columns.image_sha256
    ).order_by(columns.prediction_id, columns.position)
    return [tuple(row) for row in connection.execute(statement)]


def _prediction_ids(connection: Connection) -> list[int]:
    return list(connection.execute(select(PREDICTIONS.c.id).order_by(PREDICTIONS.c.id)).scalars())


def _add_album_photo(prediction_id: int, position: int):
    def add(connection: Connection) -> None:
        connection.execute(
            PREDICTION_IMAGES.insert().values(
                prediction_id=prediction_id,
                position=position,
                file_unique_id=f"unique-{prediction_id}-{position}",
                image_path=f"/data/photos/dd/dd/{prediction_id}-{position}.jpg",
                image_sha256=f"{prediction_id}{position}".ljust(64, "0"),
            )
        )
        connection.commit()

    return add


async def test_upgrade_backfills_down_drops_up_again(database_url, caplog: pytest.LogCaptureFixture):
    await _upgrade(database_url, "0004")
    await _inspect(database_url, _insert_predictions)

    with caplog.at_level(logging.INFO):
        await _upgrade(database_url, "0005")
    assert await _inspect(database_url, _image_rows) == BACKFILLED
    assert any("copied the photos of 3 predictions" in record.getMessage() for record in caplog.records)

    # The album's other photos, as the bot stores them from 0005 on.
    await _inspect(database_url, _add_album_photo(2, 1))
    await _inspect(database_url, _add_album_photo(2, 2))
    assert len(await _inspect(database_url, _image_rows)) == 5

    caplog.clear()
    with caplog.at_level(logging.INFO):
        await _downgrade(database_url, "0004")
    assert "prediction_images" not in await _inspect(database_url, _application_tables)
    assert await _inspect(database_url, _prediction_ids) == [1, 2, 5]
    assert any("drops 2 album photo rows after position 0" in record.getMessage() for record in caplog.records)

    await _upgrade(database_url)
    # Only position 0 comes back: the later album photos were never in the predictions table.
    assert await _inspect(database_url, _image_rows) == BACKFILLED


async def test_upgrade_of_empty_database_adds_no_rows(database_url):
    await _upgrade(database_url)

    assert await _inspect(database_url, _image_rows) == []


async def test_position_unique_per_prediction(database_url):
    await _upgrade(database_url, "0004")
    await _inspect(database_url, _insert_predictions)
    await _upgrade(database_url, "0005")

    with pytest.raises(IntegrityError):
        await _inspect(database_url, _add_album_photo(1, 0))
    await _inspect(database_url, _add_album_photo(1, 1))
    assert [row[:2] for row in await _inspect(database_url, _image_rows)][:2] == [(1, 0), (1, 1)]

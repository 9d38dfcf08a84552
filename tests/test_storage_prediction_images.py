"""Every photo of a prediction in prediction_images: storing, /forget and retraining examples, on a migrated database."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from storage.db import new_session_factory
from storage.images import ImageStore, StoredImage
from storage.models import Prediction, PredictionImage
from storage.repository import Repository
from storage.repository.predictions import ImageReference
from tests.test_storage_support import engine, migrated_database_url, repository  # noqa: F401  (fixtures)
from training.retrain import split_corrections

ALICE = 2001
BOB = 2002
TOP_K = [{"index": 0, "class_id": "daisy", "probability": 0.7}, {"index": 1, "class_id": "roses", "probability": 0.2}]


def _sha(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def _reference(name: str) -> ImageReference:
    return ImageReference(f"unique-{name}", f"/data/photos/{name}.jpg", _sha(name))


def _stored_reference(stored: StoredImage, name: str) -> ImageReference:
    return ImageReference(f"unique-{name}", str(stored.path), stored.sha256)


async def _add_album(
    repository: Repository, user_id: int, message_id: int, images: list[ImageReference], **extra
) -> Prediction:
    first = images[0]
    return await repository.add_prediction(
        user_id=user_id,
        chat_id=user_id,
        message_id=message_id,
        file_unique_id=first.file_unique_id,
        image_path=first.image_path,
        image_sha256=first.image_sha256,
        model_version="v1",
        top_k=TOP_K,
        k=2,
        latency_ms=5.0,
        media_group_id=f"album-{message_id}" if len(images) > 1 else None,
        photo_count=len(images),
        images=images,
        **extra,
    )


async def _rows(engine) -> list[tuple[int, int, str]]:
    async with new_session_factory(engine)() as session:
        statement = select(PredictionImage.prediction_id, PredictionImage.position, PredictionImage.image_path).order_by(
            PredictionImage.prediction_id, PredictionImage.position
        )
        return [tuple(row) for row in await session.execute(statement)]


# -- storing ------------------------------------------------------------------


async def test_single_photo_gets_one_row(repository):
    prediction = await repository.add_prediction(
        user_id=ALICE,
        chat_id=ALICE,
        message_id=1,
        file_unique_id="unique-a",
        image_path="/data/photos/a.jpg",
        image_sha256=_sha("a").upper(),
        model_version="v1",
        top_k=TOP_K,
        k=2,
        latency_ms=5.0,
    )

    images = await repository.prediction_images(prediction.id)

    assert [(image.position, image.file_unique_id, image.image_path) for image in images] == [
        (0, "unique-a", "/data/photos/a.jpg")
    ]
    assert images[0].image_sha256 == _sha("a")


async def test_album_photos_stored_in_order(repository):
    album = [_reference(name) for name in ("c", "a", "b")]

    prediction = await _add_album(repository, ALICE, 10, album)

    images = await repository.prediction_images(prediction.id)
    assert [image.position for image in images] == [0, 1, 2]
    assert [ImageReference(image.file_unique_id, image.image_path, image.image_sha256) for image in images] == album
    assert prediction.image_path == album[0].image_path
    assert prediction.photo_count == 3


async def test_redelivered_album_adds_no_rows(repository, engine):
    album = [_reference(name) for name in ("a", "b", "c")]
    first = await _add_album(repository, ALICE, 10, album)

    again = await _add_album(repository, ALICE, 10, album)

    assert again.id == first.id
    assert len(await _rows(engine)) == 3


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([_reference("b"), _reference("a")], "must start with the photo"),
        ([_reference("a")], "photo_count is 2 but 1 images"),
        ([_reference("a"), ImageReference("unique-x", "/data/photos/x.jpg", "not-a-hash")], "64 hex digits"),
    ],
)
async def test_invalid_album_images_rejected(repository, engine, images, message):
    with pytest.raises(ValueError, match=message):
        await repository.add_prediction(
            user_id=ALICE,
            chat_id=ALICE,
            message_id=1,
            file_unique_id="unique-a",
            image_path="/data/photos/a.jpg",
            image_sha256=_sha("a"),
            model_version="v1",
            top_k=TOP_K,
            k=2,
            latency_ms=5.0,
            photo_count=2,
            images=images,
        )

    assert await _rows(engine) == []


async def test_database_rejects_duplicate_position(repository, engine):
    prediction = await _add_album(repository, ALICE, 10, [_reference("a"), _reference("b")])

    async with new_session_factory(engine)() as session:
        session.add(
            PredictionImage(
                prediction_id=prediction.id, position=1, file_unique_id="u", image_path="/p.jpg", image_sha256=_sha("p")
            )
        )
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_deleting_prediction_cascades_to_images(repository, engine):
    prediction = await _add_album(repository, ALICE, 10, [_reference("a"), _reference("b")])

    async with new_session_factory(engine)() as session, session.begin():
        await session.execute(delete(Prediction).where(Prediction.id == prediction.id))

    assert await _rows(engine) == []


# -- /forget --------------------------------------------------------------------


async def test_forget_returns_every_album_photo(repository, engine, tmp_path: Path):
    store = ImageStore(tmp_path / "photos")
    saved = {name: store.save(f"photo {name}".encode(), ".jpg") for name in ("a1", "a2", "a3", "shared", "b1", "b2")}
    reference = {name: _stored_reference(stored, name) for name, stored in saved.items()}
    # Alice: an album of three own photos, then the shared photo alone.
    alice_album = await _add_album(repository, ALICE, 1, [reference["a1"], reference["a2"], reference["a3"]])
    await _add_album(repository, ALICE, 2, [reference["shared"]])
    # Bob: the shared photo as the second photo of his album, and an album whose second
    # photo is Alice's a2 saved once more (the same bytes, so the same file).
    bob_album = await _add_album(repository, BOB, 3, [reference["b1"], reference["shared"]])
    await _add_album(repository, BOB, 4, [reference["b2"], reference["a2"]])
    await repository.record_correction(alice_album.id, ALICE, label="daisy", kind="confirmed")

    orphaned = await repository.forget_user(ALICE)

    # a2 and the shared photo stay: Bob's albums still reference them after position 0.
    assert orphaned == sorted([str(saved["a1"].path), str(saved["a3"].path)])
    assert await repository.prediction_images(alice_album.id) == []
    remaining = await _rows(engine)
    assert {path for _, _, path in remaining} == {str(saved[name].path) for name in ("b1", "shared", "b2", "a2")}
    assert [image.image_path for image in await repository.prediction_images(bob_album.id)] == [
        str(saved["b1"].path),
        str(saved["shared"].path),
    ]


# -- retraining examples --------------------------------------------------------


async def test_album_correction_gives_example_per_photo(repository):
    single = await _add_album(repository, ALICE, 1, [_reference("s")])
    album = await _add_album(repository, ALICE, 2, [_reference("a"), _reference("b"), _reference("c")])
    rejected = await _add_album(repository, ALICE, 3, [_reference("x"), _reference("y")])
    await repository.record_correction(single.id, ALICE, label="daisy", kind="confirmed")
    await repository.record_correction(album.id, ALICE, label="daisy", kind="confirmed")
    await repository.record_correction(album.id, ALICE, label="tulips", kind="corrected")
    await repository.record_correction(rejected.id, ALICE, label=None, kind="not_flower")

    labelled = await repository.labelled_examples()
    not_flower = await repository.not_flower_examples()

    assert [(example.prediction_id, example.position, example.label) for example in labelled] == [
        (single.id, 0, "daisy"),
        (album.id, 0, "tulips"),
        (album.id, 1, "tulips"),
        (album.id, 2, "tulips"),
    ]
    assert [example.image_path for example in labelled[1:]] == [f"/data/photos/{name}.jpg" for name in "abc"]
    assert [example.image_sha256 for example in labelled[1:]] == [_sha(name) for name in "abc"]
    assert [(example.prediction_id, example.image_sha256) for example in not_flower] == [
        (rejected.id, _sha("x")),
        (rejected.id, _sha("y")),
    ]


async def test_prediction_without_image_rows_keeps_first_photo(repository, engine):
    # A row written around the repository has no prediction_images rows.
    prediction = await _add_album(repository, ALICE, 1, [_reference("a")])
    async with new_session_factory(engine)() as session, session.begin():
        await session.execute(delete(PredictionImage))
    await repository.record_correction(prediction.id, ALICE, label="roses", kind="corrected")

    labelled = await repository.labelled_examples()

    assert [(example.image_path, example.image_sha256, example.position) for example in labelled] == [
        ("/data/photos/a.jpg", _sha("a"), 0)
    ]


async def test_album_examples_split_together(repository, tmp_path: Path):
    store = ImageStore(tmp_path / "photos")
    albums = []
    for album_number in range(12):
        photos = [
            _stored_reference(store.save(f"album {album_number} photo {position}".encode(), ".jpg"), f"{album_number}-{position}")
            for position in range(3)
        ]
        albums.append(await _add_album(repository, ALICE, album_number + 1, photos))
        await repository.record_correction(albums[-1].id, ALICE, label="daisy", kind="confirmed")
    # Album 0's first photo sent again alone, later, with another label: it keeps that newer label.
    first_photo = (await repository.prediction_images(albums[0].id))[0]
    again = await _add_album(
        repository, ALICE, 100, [ImageReference(first_photo.file_unique_id, first_photo.image_path, first_photo.image_sha256)]
    )
    await repository.record_correction(again.id, ALICE, label="roses", kind="corrected")
    examples = [
        {"path": row.image_path, "label": row.label, "image_sha256": row.image_sha256, "prediction_id": row.prediction_id}
        for row in await repository.labelled_examples()
    ]

    data = split_corrections(examples, [], ("daisy", "roses"), fraction=0.5, seed=3)

    assert data.duplicates == 1
    assert len(data.train) + len(data.holdout) == 36
    assert len(data.holdout) > 0
    assert len(data.train) > 0
    held_out_paths = {entry["path"] for entry in data.holdout}
    by_album = {}
    for example in examples:
        if example["prediction_id"] != again.id:
            by_album.setdefault(example["prediction_id"], set()).add(example["path"] in held_out_paths)
    # Album 0 is left out of this check: its first photo now belongs to the newer prediction.
    by_album.pop(albums[0].id)
    assert all(len(sides) == 1 for sides in by_album.values()), by_album

"""Repository methods on a real database migrated by Alembic."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, make_url, select, update
from sqlalchemy.exc import IntegrityError

from storage.db import create_engine, new_session_factory
from storage.images import ImageStore
from storage.models import Correction, ModelVersion, PendingInput, Prediction, RetrainRun, User
from storage.repository import NotFoundError, NotOwnerError, Repository
from tests.test_storage_support import (  # noqa: F401  (fixtures)
    database_url,
    engine,
    migrated_database_url,
    repository,
    sqlite_database_url,
)

ALICE = 1001
BOB = 1002
GROUP_CHAT = -1001234567890  # supergroup ids exceed 32 bits


def _sha(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def _top_k(*class_ids: str) -> list[dict]:
    share = 1.0 / (len(class_ids) + 1)
    return [
        {"index": index, "class_id": class_id, "probability": share * (len(class_ids) - index)}
        for index, class_id in enumerate(class_ids)
    ]


async def _add(
    repository: Repository,
    *,
    user_id: int = ALICE,
    chat_id: int | None = None,
    message_id: int = 1,
    image: str = "a",
    model_version: str = "v1",
    top: tuple[str, ...] = ("daisy", "roses", "tulips"),
    **extra,
) -> Prediction:
    return await repository.add_prediction(
        user_id=user_id,
        chat_id=user_id if chat_id is None else chat_id,
        message_id=message_id,
        file_unique_id=f"unique-{image}",
        image_path=f"/data/images/{image}.jpg",
        image_sha256=_sha(image),
        model_version=model_version,
        top_k=_top_k(*top),
        k=len(top),
        latency_ms=12.5,
        **extra,
    )


async def _count(engine, model) -> int:
    async with new_session_factory(engine)() as session:
        return await session.scalar(select(func.count()).select_from(model))


# -- users ------------------------------------------------------------------


async def test_upsert_user_inserts_then_updates(repository):
    created = await repository.upsert_user(ALICE, username="alice", first_name="Alice", language_code="en")
    updated = await repository.upsert_user(ALICE, username="alice2", first_name="Alice", language_code="zh-hans")

    stored = await repository.get_user(ALICE)
    assert created.username == "alice"
    assert updated.username == "alice2"
    assert stored.username == "alice2"
    assert stored.language_code == "zh-hans"
    assert stored.language is None
    assert stored.is_active is True
    assert stored.created_at.tzinfo is not None


async def test_upsert_user_cuts_oversized_names(repository):
    user = await repository.upsert_user(ALICE, username="u" * 100, first_name="名" * 300, language_code="en")

    assert user.username == "u" * 64
    assert user.first_name == "名" * 128
    assert (await repository.get_user(ALICE)).first_name == "名" * 128


async def test_get_user_missing_returns_none(repository):
    assert await repository.get_user(999) is None


async def test_user_language_survives_restart(repository, migrated_database_url):
    await repository.upsert_user(ALICE, username=None, first_name="A", language_code="zh-hans")
    await repository.set_user_language(ALICE, "en")

    restarted_engine = create_engine(migrated_database_url)
    try:
        restarted = Repository(new_session_factory(restarted_engine))
        stored = await restarted.get_user(ALICE)
    finally:
        await restarted_engine.dispose()

    assert stored.language == "en"


async def test_set_user_language_rejects_unknown(repository):
    with pytest.raises(ValueError, match="fr"):
        await repository.set_user_language(ALICE, "fr")


async def test_set_user_language_none_clears_override(repository):
    await repository.set_user_language(ALICE, "zh")
    await repository.set_user_language(ALICE, None)

    assert (await repository.get_user(ALICE)).language is None


async def test_mark_user_blocked_reports_first_time(repository):
    await repository.upsert_user(ALICE, username="alice", first_name="Alice", language_code="en")

    first = await repository.mark_user_blocked(ALICE)
    second = await repository.mark_user_blocked(ALICE)

    stored = await repository.get_user(ALICE)
    assert first is True
    assert second is False
    assert stored.is_active is False
    assert stored.blocked_at is not None


async def test_mark_user_active_after_block(repository):
    await repository.mark_user_blocked(BOB)

    assert await repository.mark_user_active(BOB) is True
    assert await repository.mark_user_active(BOB) is False
    stored = await repository.get_user(BOB)
    assert stored.is_active is True
    assert stored.blocked_at is None


async def test_upsert_user_reactivates_blocked_user(repository):
    await repository.mark_user_blocked(ALICE)

    await repository.upsert_user(ALICE, username="alice", first_name="Alice", language_code="en")

    stored = await repository.get_user(ALICE)
    assert stored.is_active is True
    assert await repository.mark_user_blocked(ALICE) is True


# -- predictions ------------------------------------------------------------


async def test_add_prediction_stores_every_field(repository):
    prediction = await _add(
        repository, chat_id=GROUP_CHAT, message_id=77, ood_score=0.25, is_ood=True, media_group_id="album-1",
        photo_count=3,
    )

    stored = await repository.get_prediction(prediction.id)
    assert stored.user_id == ALICE
    assert stored.chat_id == GROUP_CHAT
    assert stored.message_id == 77
    assert stored.reply_message_id is None
    assert stored.file_unique_id == "unique-a"
    assert stored.image_sha256 == _sha("a")
    assert stored.model_version == "v1"
    assert stored.top_k == _top_k("daisy", "roses", "tulips")
    assert stored.top1_class_id == "daisy"
    assert stored.k == 3
    assert stored.latency_ms == 12.5
    assert stored.ood_score == 0.25
    assert stored.is_ood is True
    assert stored.media_group_id == "album-1"
    assert stored.photo_count == 3
    assert stored.created_at.utcoffset() == timedelta(0)


async def test_add_prediction_creates_missing_user(repository):
    await _add(repository, user_id=BOB)

    stored = await repository.get_user(BOB)
    assert stored is not None
    assert stored.is_active is True


async def test_add_prediction_accepts_tuples(repository):
    prediction = await repository.add_prediction(
        user_id=ALICE,
        chat_id=ALICE,
        message_id=5,
        file_unique_id="u",
        image_path="/x.jpg",
        image_sha256=_sha("x").upper(),
        model_version="v1",
        top_k=[(4, "roses", 0.75), (0, "daisy", 0.25)],
        k=2,
        latency_ms=3,
    )

    assert prediction.top_k == [
        {"index": 4, "class_id": "roses", "probability": 0.75},
        {"index": 0, "class_id": "daisy", "probability": 0.25},
    ]
    assert prediction.image_sha256 == _sha("x")


async def test_add_prediction_clamps_rounding_overshoot(repository):
    prediction = await _add(repository)
    overshoot = await repository.add_prediction(
        user_id=ALICE,
        chat_id=ALICE,
        message_id=2,
        file_unique_id="u",
        image_path="/x.jpg",
        image_sha256=_sha("x"),
        model_version="v1",
        top_k=[(0, "daisy", 1.0000001)],
        k=1,
        latency_ms=3,
    )

    assert overshoot.top_k[0]["probability"] == 1.0
    assert overshoot.id != prediction.id


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image_sha256", "abc", "64 hex"),
        ("k", 0, "k must be"),
        ("photo_count", 0, "photo_count"),
        ("top_k", [], "empty"),
        ("top_k", [{"index": 0, "class_id": "daisy"}], "probability"),
        ("top_k", [{"index": 0, "class_id": "daisy", "probability": 1.5}], "within"),
        ("top_k", [{"index": 0, "class_id": "daisy", "probability": float("nan")}], "within"),
    ],
)
async def test_add_prediction_rejects_invalid(repository, engine, field, value, message):
    arguments = {
        "user_id": ALICE,
        "chat_id": ALICE,
        "message_id": 1,
        "file_unique_id": "u",
        "image_path": "/x.jpg",
        "image_sha256": _sha("x"),
        "model_version": "v1",
        "top_k": _top_k("daisy"),
        "k": 1,
        "latency_ms": 1.0,
    }
    arguments[field] = value

    with pytest.raises(ValueError, match=message):
        await repository.add_prediction(**arguments)

    assert await _count(engine, Prediction) == 0


async def test_duplicate_prediction_returns_existing(repository, engine):
    first = await _add(repository, message_id=10, image="a")
    again = await _add(repository, message_id=10, image="b", model_version="v2")

    assert again.id == first.id
    assert again.image_sha256 == _sha("a")
    assert again.model_version == "v1"
    assert await _count(engine, Prediction) == 1


async def test_concurrent_duplicate_predictions_store_one_row(repository, engine):
    results = await asyncio.gather(*(_add(repository, message_id=11) for _ in range(5)))

    assert len({prediction.id for prediction in results}) == 1
    assert await _count(engine, Prediction) == 1


async def test_same_message_id_in_other_chat_is_new(repository, engine):
    await _add(repository, chat_id=1, message_id=10)
    await _add(repository, chat_id=2, message_id=10)

    assert await _count(engine, Prediction) == 2


async def test_reply_message_lookup(repository):
    prediction = await _add(repository, chat_id=GROUP_CHAT, message_id=20)

    assert await repository.set_reply_message(prediction.id, 21) is True
    assert await repository.set_reply_message(999_999, 21) is False

    by_reply = await repository.get_prediction_by_reply(GROUP_CHAT, 21)
    by_message = await repository.get_prediction_by_message(GROUP_CHAT, 20)
    assert by_reply.id == prediction.id
    assert by_message.id == prediction.id
    assert by_message.reply_message_id == 21
    assert await repository.get_prediction_by_message(GROUP_CHAT, 21) is None
    assert await repository.get_prediction(999_999) is None


async def test_media_group_lookup_returns_first(repository):
    first = await _add(repository, message_id=30, media_group_id="album", image="p1")
    await _add(repository, message_id=31, media_group_id="album", image="p2")

    found = await repository.get_prediction_by_media_group(ALICE, "album")

    assert found.id == first.id
    assert await repository.get_prediction_by_media_group(ALICE, "other") is None


async def test_latest_prediction_per_chat(repository):
    await _add(repository, chat_id=ALICE, message_id=1, image="a")
    in_group = await _add(repository, chat_id=GROUP_CHAT, message_id=2, image="b")
    private = await _add(repository, chat_id=ALICE, message_id=3, image="c")
    await _add(repository, user_id=BOB, chat_id=GROUP_CHAT, message_id=4, image="d")

    assert (await repository.latest_prediction(ALICE, ALICE)).id == private.id
    assert (await repository.latest_prediction(ALICE, GROUP_CHAT)).id == in_group.id
    assert (await repository.latest_prediction(ALICE)).id == private.id
    assert await repository.latest_prediction(ALICE, 555) is None


async def test_history_newest_first_with_corrections(repository):
    first = await _add(repository, message_id=1, image="a")
    second = await _add(repository, message_id=2, image="b")
    third = await _add(repository, message_id=3, image="c")
    await _add(repository, user_id=BOB, message_id=4, image="d")
    await repository.record_correction(first.id, ALICE, label="daisy", kind="confirmed")
    await repository.record_correction(first.id, ALICE, label="roses", kind="corrected")
    await repository.record_correction(third.id, ALICE, label=None, kind="not_flower")

    entries = await repository.history(ALICE, limit=10)
    limited = await repository.history(ALICE, limit=2)

    assert [entry.prediction.id for entry in entries] == [third.id, second.id, first.id]
    assert entries[0].correction.kind == "not_flower"
    assert entries[1].correction is None
    assert entries[2].correction.label == "roses"
    prediction, correction = entries[2]
    assert prediction.id == first.id
    assert correction.is_current is True
    assert [entry.prediction.id for entry in limited] == [third.id, second.id]


# -- corrections ------------------------------------------------------------


async def test_record_correction_confirm(repository):
    prediction = await _add(repository)

    correction, changed = await repository.record_correction(prediction.id, ALICE, label="daisy", kind="confirmed")

    assert changed is True
    assert correction.label == "daisy"
    assert correction.kind == "confirmed"
    assert correction.is_current is True
    assert (await repository.current_correction(prediction.id)).id == correction.id


async def test_double_tap_changes_nothing(repository, engine):
    prediction = await _add(repository)
    first, _ = await repository.record_correction(prediction.id, ALICE, label="daisy", kind="confirmed")

    second, changed = await repository.record_correction(prediction.id, ALICE, label="daisy", kind="confirmed")

    assert changed is False
    assert second.id == first.id
    assert await _count(engine, Correction) == 1


async def test_concurrent_double_taps_store_one_row(repository, engine):
    prediction = await _add(repository)

    results = await asyncio.gather(
        *(repository.record_correction(prediction.id, ALICE, label="roses", kind="corrected") for _ in range(5))
    )

    assert sorted(changed for _, changed in results) == [False, False, False, False, True]
    assert await _count(engine, Correction) == 1


async def test_changed_correction_keeps_history(repository):
    prediction = await _add(repository)
    await repository.record_correction(prediction.id, ALICE, label="daisy", kind="confirmed")
    await repository.record_correction(prediction.id, ALICE, label="tulips", kind="corrected")

    latest, changed = await repository.record_correction(prediction.id, ALICE, label=None, kind="not_flower")

    history = await repository.correction_history(prediction.id)
    assert changed is True
    assert [(row.label, row.kind) for row in history] == [
        ("daisy", "confirmed"),
        ("tulips", "corrected"),
        (None, "not_flower"),
    ]
    assert [row.is_current for row in history] == [False, False, True]
    assert (await repository.current_correction(prediction.id)).id == latest.id


async def test_returning_to_an_earlier_label_is_a_change(repository):
    prediction = await _add(repository)
    await repository.record_correction(prediction.id, ALICE, label="daisy", kind="confirmed")
    await repository.record_correction(prediction.id, ALICE, label="roses", kind="corrected")

    _, changed = await repository.record_correction(prediction.id, ALICE, label="daisy", kind="confirmed")

    assert changed is True
    assert len(await repository.correction_history(prediction.id)) == 3
    assert (await repository.current_correction(prediction.id)).label == "daisy"


async def test_correction_by_other_user_is_rejected(repository, engine):
    prediction = await _add(repository, chat_id=GROUP_CHAT)

    with pytest.raises(NotOwnerError):
        await repository.record_correction(prediction.id, BOB, label="daisy", kind="confirmed")

    assert await _count(engine, Correction) == 0


async def test_correction_of_missing_prediction(repository):
    with pytest.raises(NotFoundError):
        await repository.record_correction(424242, ALICE, label="daisy", kind="confirmed")


@pytest.mark.parametrize(
    ("label", "kind"),
    [("daisy", "not_flower"), ("daisy", "unknown_species"), (None, "confirmed"), ("", "corrected"), ("daisy", "maybe")],
)
async def test_invalid_correction_is_rejected(repository, label, kind):
    prediction = await _add(repository)

    with pytest.raises(ValueError):
        await repository.record_correction(prediction.id, ALICE, label=label, kind=kind)

    assert await repository.current_correction(prediction.id) is None


async def test_unknown_species_correction(repository):
    prediction = await _add(repository)
    await repository.record_correction(prediction.id, ALICE, label="daisy", kind="confirmed")

    recorded, changed = await repository.record_correction(prediction.id, ALICE, label=None, kind="unknown_species")
    again, changed_again = await repository.record_correction(prediction.id, ALICE, label=None, kind="unknown_species")
    # "Not a flower" after it is a change of kind, though both have no label.
    _, changed_to_not_flower = await repository.record_correction(prediction.id, ALICE, label=None, kind="not_flower")

    assert changed is True
    assert recorded.label is None
    assert changed_again is False
    assert again.id == recorded.id
    assert changed_to_not_flower is True
    history = await repository.correction_history(prediction.id)
    assert [(row.label, row.kind, row.is_current) for row in history] == [
        ("daisy", "confirmed", False),
        (None, "unknown_species", False),
        (None, "not_flower", True),
    ]


async def test_database_rejects_unknown_species_label(repository, engine):
    prediction = await _add(repository)

    with pytest.raises(IntegrityError):
        async with new_session_factory(engine)() as session, session.begin():
            session.add(Correction(prediction_id=prediction.id, user_id=ALICE, label="daisy", kind="unknown_species"))

    assert await _count(engine, Correction) == 0


async def test_database_allows_one_current_correction(repository, engine):
    prediction = await _add(repository)
    await repository.record_correction(prediction.id, ALICE, label="daisy", kind="confirmed")

    with pytest.raises(IntegrityError):
        async with new_session_factory(engine)() as session, session.begin():
            session.add(
                Correction(prediction_id=prediction.id, user_id=ALICE, label="roses", kind="corrected")
            )


# -- pending inputs ---------------------------------------------------------


async def test_pending_input_set_replace_clear(repository):
    first = await _add(repository, message_id=1, image="a")
    second = await _add(repository, message_id=2, image="b")

    await repository.set_pending_input(ALICE, ALICE, first.id, "type_name")
    await repository.set_pending_input(ALICE, ALICE, second.id, "type_name")
    pending = await repository.get_pending_input(ALICE, ALICE)

    assert pending.prediction_id == second.id
    assert pending.kind == "type_name"
    assert await repository.get_pending_input(ALICE, GROUP_CHAT) is None
    assert await repository.clear_pending_input(ALICE, ALICE) is True
    assert await repository.clear_pending_input(ALICE, ALICE) is False
    assert await repository.get_pending_input(ALICE, ALICE) is None


async def test_pending_input_survives_restart(repository, migrated_database_url):
    prediction = await _add(repository)
    await repository.set_pending_input(ALICE, ALICE, prediction.id, "type_name")

    restarted_engine = create_engine(migrated_database_url)
    try:
        restarted = Repository(new_session_factory(restarted_engine))
        pending = await restarted.get_pending_input(ALICE, ALICE)
    finally:
        await restarted_engine.dispose()

    assert pending.prediction_id == prediction.id
    assert pending.kind == "type_name"


async def test_pending_input_for_missing_prediction(repository):
    with pytest.raises(NotFoundError):
        await repository.set_pending_input(ALICE, ALICE, 31337, "type_name")


# -- forget ------------------------------------------------------------------


async def test_forget_user_keeps_shared_images(repository, engine, tmp_path):
    store = ImageStore(tmp_path / "images")
    shared = store.save(b"the same photo bytes", ".jpg")
    alice_only = store.save(b"a photo only alice sent", ".jpg")
    bob_only = store.save(b"a photo only bob sent", ".jpg")

    async def add(user_id, message_id, stored):
        return await repository.add_prediction(
            user_id=user_id,
            chat_id=user_id,
            message_id=message_id,
            file_unique_id=f"u{message_id}",
            image_path=str(stored.path),
            image_sha256=stored.sha256,
            model_version="v1",
            top_k=_top_k("daisy"),
            k=1,
            latency_ms=1.0,
        )

    alice_shared = await add(ALICE, 1, shared)
    alice_own = await add(ALICE, 2, alice_only)
    alice_own_again = await add(ALICE, 3, alice_only)
    bob_shared = await add(BOB, 4, shared)
    bob_own = await add(BOB, 5, bob_only)
    await repository.record_correction(alice_shared.id, ALICE, label="daisy", kind="confirmed")
    await repository.record_correction(alice_own.id, ALICE, label="roses", kind="corrected")
    await repository.record_correction(alice_own.id, ALICE, label="tulips", kind="corrected")
    await repository.record_correction(bob_shared.id, BOB, label="daisy", kind="confirmed")
    await repository.set_pending_input(ALICE, ALICE, alice_own_again.id, "type_name")
    await repository.set_pending_input(BOB, BOB, bob_own.id, "type_name")

    orphaned = await repository.forget_user(ALICE)
    for path in orphaned:
        store.delete(path)

    assert orphaned == [str(alice_only.path)]
    assert shared.path.is_file()
    assert bob_only.path.is_file()
    assert not alice_only.path.exists()
    assert await repository.history(ALICE) == []
    assert await repository.get_pending_input(ALICE, ALICE) is None
    assert [entry.prediction.id for entry in await repository.history(BOB)] == [bob_own.id, bob_shared.id]
    assert (await repository.current_correction(bob_shared.id)).label == "daisy"
    assert (await repository.get_pending_input(BOB, BOB)).prediction_id == bob_own.id
    assert await _count(engine, Correction) == 1
    assert await repository.get_user(ALICE) is not None


async def test_forget_unknown_user_returns_nothing(repository):
    assert await repository.forget_user(31337) == []


# -- statistics and training data -------------------------------------------


async def test_stats_by_model_and_confusions(repository):
    v1_right = await _add(repository, message_id=1, image="a", model_version="v1", top=("daisy", "roses"))
    v1_wrong = await _add(repository, message_id=2, image="b", model_version="v1", top=("daisy", "roses"))
    v1_wrong_again = await _add(repository, message_id=3, image="c", model_version="v1", top=("daisy", "tulips"))
    v1_not_flower = await _add(repository, message_id=4, image="d", model_version="v1", top=("roses",))
    await _add(repository, message_id=5, image="e", model_version="v1")
    v2_right = await _add(repository, message_id=6, image="f", model_version="v2", top=("tulips", "roses"))
    v2_second_choice = await _add(repository, message_id=7, image="g", model_version="v2", top=("tulips", "roses"))
    await _add(repository, message_id=8, image="h", model_version="v2")
    v2_unknown = await _add(repository, message_id=9, image="i", model_version="v2", top=("tulips", "roses"))

    await repository.record_correction(v1_right.id, ALICE, label="daisy", kind="confirmed")
    await repository.record_correction(v1_wrong.id, ALICE, label="daisy", kind="confirmed")
    await repository.record_correction(v1_wrong.id, ALICE, label="roses", kind="corrected")
    await repository.record_correction(v1_wrong_again.id, ALICE, label="roses", kind="corrected")
    await repository.record_correction(v1_not_flower.id, ALICE, label=None, kind="not_flower")
    await repository.record_correction(v2_right.id, ALICE, label="tulips", kind="confirmed")
    # A tap on the second listed species: recorded as confirmed, but top-1 was wrong.
    await repository.record_correction(v2_second_choice.id, ALICE, label="roses", kind="confirmed")
    # A flower of a species the model does not have: the model was wrong.
    await repository.record_correction(v2_unknown.id, ALICE, label="tulips", kind="confirmed")
    await repository.record_correction(v2_unknown.id, ALICE, label=None, kind="unknown_species")

    stats = await repository.stats()

    assert stats["predictions"] == 9
    assert stats["with_feedback"] == 7
    assert stats["feedback_share"] == pytest.approx(7 / 9)
    assert stats["feedback_by_kind"] == {"confirmed": 3, "corrected": 2, "not_flower": 1, "unknown_species": 1}
    assert stats["by_model"]["v1"] == {
        "predictions": 5,
        "with_feedback": 4,
        "labelled": 3,
        "unknown_species": 0,
        "rated": 3,
        "correct": 1,
        "not_flower": 1,
        "accuracy": pytest.approx(1 / 3),
    }
    assert stats["by_model"]["v2"]["labelled"] == 2
    assert stats["by_model"]["v2"]["unknown_species"] == 1
    assert stats["by_model"]["v2"]["rated"] == 3
    assert stats["by_model"]["v2"]["correct"] == 1
    assert stats["by_model"]["v2"]["accuracy"] == pytest.approx(1 / 3)
    assert stats["confused_pairs"] == [
        {"predicted": "daisy", "actual": "roses", "count": 2},
        {"predicted": "tulips", "actual": "roses", "count": 1},
    ]


async def test_stats_on_empty_database(repository):
    stats = await repository.stats()

    assert stats["predictions"] == 0
    assert stats["feedback_share"] == 0.0
    assert stats["by_model"] == {}
    assert stats["confused_pairs"] == []


async def test_stats_model_without_feedback_has_no_accuracy(repository):
    await _add(repository, model_version="v9")

    stats = await repository.stats()

    assert stats["by_model"]["v9"]["accuracy"] is None


async def test_labelled_and_not_flower_examples(repository):
    confirmed = await _add(repository, message_id=1, image="a")
    changed = await _add(repository, message_id=2, image="b")
    not_flower = await _add(repository, message_id=3, image="c")
    await _add(repository, message_id=4, image="d")
    await repository.record_correction(confirmed.id, ALICE, label="daisy", kind="confirmed")
    await repository.record_correction(changed.id, ALICE, label=None, kind="not_flower")
    await repository.record_correction(changed.id, ALICE, label="tulips", kind="corrected")
    await repository.record_correction(not_flower.id, ALICE, label="roses", kind="corrected")
    await repository.record_correction(not_flower.id, ALICE, label=None, kind="not_flower")

    labelled = await repository.labelled_examples()
    rejected = await repository.not_flower_examples()

    assert [(example.prediction_id, example.label) for example in labelled] == [
        (confirmed.id, "daisy"),
        (changed.id, "tulips"),
    ]
    assert labelled[0].image_path == "/data/images/a.jpg"
    assert labelled[0].image_sha256 == _sha("a")
    assert labelled[0].created_at == confirmed.created_at
    assert [(example.prediction_id, example.label) for example in rejected] == [(not_flower.id, None)]


async def test_unknown_species_examples_are_apart(repository):
    labelled_first = await _add(repository, message_id=1, image="a")
    unknown = await _add(repository, message_id=2, image="b")
    not_flower = await _add(repository, message_id=3, image="c")
    await repository.record_correction(labelled_first.id, ALICE, label=None, kind="unknown_species")
    await repository.record_correction(labelled_first.id, ALICE, label="roses", kind="corrected")
    await repository.record_correction(unknown.id, ALICE, label="daisy", kind="confirmed")
    await repository.record_correction(unknown.id, ALICE, label=None, kind="unknown_species")
    await repository.record_correction(not_flower.id, ALICE, label=None, kind="not_flower")

    labelled = await repository.labelled_examples()
    rejected = await repository.not_flower_examples()
    unknown_species = await repository.unknown_species_examples()

    # Only the current correction counts, and an unknown species is never a class label.
    assert [(example.prediction_id, example.label) for example in labelled] == [(labelled_first.id, "roses")]
    assert [(example.prediction_id, example.label) for example in rejected] == [(not_flower.id, None)]
    assert [(example.prediction_id, example.label) for example in unknown_species] == [(unknown.id, None)]
    assert unknown_species[0].image_path == "/data/images/b.jpg"
    assert unknown_species[0].image_sha256 == _sha("b")


# -- model registry ---------------------------------------------------------


async def test_register_and_serve_models(repository):
    await repository.register_model("v1", "/models/v1", {"val_accuracy": 0.8})
    await repository.set_serving("v1")
    await repository.register_model("v2", "/models/v2", {"val_accuracy": 0.9}, parent_version="v1")

    serving = await repository.set_serving("v2")

    models = {model.version: model for model in await repository.list_models()}
    assert serving.version == "v2"
    assert models["v1"].status == "retired"
    assert models["v2"].status == "serving"
    assert models["v2"].parent_version == "v1"
    assert models["v2"].metrics == {"val_accuracy": 0.9}
    assert models["v2"].promoted_at is not None
    assert (await repository.serving_model()).version == "v2"
    assert (await repository.previous_model()).version == "v1"


async def test_rollback_twice_returns_to_the_latest(repository):
    for version in ("v1", "v2", "v3"):
        await repository.register_model(version, f"/models/{version}")
        await repository.set_serving(version)

    previous = await repository.previous_model()
    await repository.set_serving(previous.version)

    assert previous.version == "v2"
    assert (await repository.serving_model()).version == "v2"
    assert (await repository.previous_model()).version == "v3"


async def test_previous_model_skips_never_served(repository):
    await repository.register_model("v1", "/models/v1")
    await repository.set_serving("v1")
    await repository.register_model("v2", "/models/v2")
    await repository.set_model_status("v2", "rejected", {"val_accuracy": 0.1})

    assert await repository.previous_model() is None
    assert (await repository.get_model("v2")).metrics == {"val_accuracy": 0.1}


async def test_one_serving_model(repository, engine):
    versions = [f"v{number}" for number in range(1, 7)]
    for version in versions:
        await repository.register_model(version, f"/models/{version}")
    await asyncio.gather(*(repository.set_serving(version) for version in versions))

    statuses = sorted(model.status for model in await repository.list_models())
    assert statuses == ["retired"] * 5 + ["serving"]
    with pytest.raises(IntegrityError):
        async with new_session_factory(engine)() as session, session.begin():
            await session.execute(update(ModelVersion).values(status="serving"))


async def test_register_serving_model_retires_previous(repository):
    await repository.register_model("v1", "/models/v1", status="serving")
    await repository.register_model("v2", "/models/v2", status="serving")

    assert (await repository.serving_model()).version == "v2"
    assert (await repository.get_model("v1")).status == "retired"


async def test_register_existing_model_updates_path_only(repository):
    await repository.register_model("v1", "/old/v1", {"a": 1})
    await repository.set_serving("v1")

    updated = await repository.register_model("v1", "/new/v1")

    assert updated.path == "/new/v1"
    assert updated.status == "serving"
    assert updated.metrics == {"a": 1}


async def test_register_existing_with_status_applies_it(repository):
    await repository.register_model("v1", "/models/v1", status="serving")
    await repository.register_model("v2", "/models/v2", status="serving")

    restored = await repository.register_model("v1", "/models/v1", status="serving")
    rejected = await repository.register_model("v3", "/models/v3", status="rejected")

    assert restored.status == "serving"
    assert (await repository.get_model("v2")).status == "retired"
    assert rejected.status == "rejected"


async def test_set_serving_unknown_model(repository):
    with pytest.raises(NotFoundError):
        await repository.set_serving("missing")
    with pytest.raises(ValueError, match="status"):
        await repository.set_model_status("missing", "promoted")


async def test_set_model_status_serving_promotes(repository):
    await repository.register_model("v1", "/models/v1", status="serving")
    await repository.register_model("v2", "/models/v2")

    await repository.set_model_status("v2", "serving")

    assert (await repository.serving_model()).version == "v2"
    assert (await repository.get_model("v1")).status == "retired"


# -- retrain runs -------------------------------------------------------------


async def test_one_running_retrain(repository):
    run = await repository.start_retrain_run(ALICE, ALICE)
    second = await repository.start_retrain_run(BOB, BOB)

    assert run.status == "running"
    assert run.admin_user_id == ALICE
    assert second is None
    assert (await repository.active_retrain_run()).id == run.id


async def test_concurrent_retrain_starts_one_run(repository, engine):
    runs = await asyncio.gather(*(repository.start_retrain_run(ALICE, ALICE) for _ in range(8)))

    assert sum(run is not None for run in runs) == 1
    assert await _count(engine, RetrainRun) == 1


async def test_retrain_progress_and_finish(repository):
    run = await repository.start_retrain_run(ALICE, ALICE)

    await repository.update_retrain_run(run.id, phase="epoch 1/2", progress_message_id=55)
    finished = await repository.finish_retrain_run(
        run.id, "succeeded", metrics={"val_accuracy": 0.9}, candidate_version="v2"
    )
    again = await repository.start_retrain_run(ALICE, ALICE)

    assert finished.status == "succeeded"
    assert finished.phase == "epoch 1/2"
    assert finished.progress_message_id == 55
    assert finished.candidate_version == "v2"
    assert finished.metrics == {"val_accuracy": 0.9}
    assert finished.finished_at >= finished.started_at
    assert again is not None
    assert (await repository.latest_retrain_run()).id == again.id


async def test_finished_retrain_keeps_first_status(repository):
    run = await repository.start_retrain_run(ALICE, ALICE)
    await repository.finish_retrain_run(run.id, "cancelled")

    after = await repository.finish_retrain_run(run.id, "failed", error="exit code -9")

    assert after.status == "cancelled"
    assert after.error is None


async def test_update_retrain_run_rejects_status(repository):
    run = await repository.start_retrain_run(ALICE, ALICE)

    with pytest.raises(ValueError, match="status"):
        await repository.update_retrain_run(run.id, status="succeeded")
    with pytest.raises(ValueError, match="running"):
        await repository.finish_retrain_run(run.id, "running")
    with pytest.raises(NotFoundError):
        await repository.update_retrain_run(run.id + 100, phase="x")

    assert (await repository.get_retrain_run(run.id)).status == "running"


async def test_fail_stale_retrain_runs(repository):
    run = await repository.start_retrain_run(ALICE, ALICE)

    failed = await repository.fail_stale_retrain_runs()

    stored = await repository.get_retrain_run(run.id)
    assert [item.id for item in failed] == [run.id]
    assert stored.status == "failed"
    assert "restarted" in stored.error
    assert stored.finished_at is not None
    assert await repository.active_retrain_run() is None
    assert await repository.fail_stale_retrain_runs() == []


# -- locked database ----------------------------------------------------------


class _RetryWatcher(logging.Handler):
    """Sets an event when the repository logs a retry of a busy database."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.retried = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if "database busy" in message:
            self.retried.set()


async def test_locked_database_write_lands_after_retry(sqlite_database_url, migrated_database_url):
    # A short busy timeout makes the first attempt fail while the file is locked.
    engine = create_engine(migrated_database_url, sqlite_busy_timeout_ms=50)
    repository = Repository(new_session_factory(engine), max_attempts=50, retry_base_delay_s=0.02)
    watcher = _RetryWatcher()
    repository_logger = logging.getLogger("storage.repository")
    repository_logger.addHandler(watcher)
    locker = sqlite3.connect(Path(make_url(migrated_database_url).database), isolation_level=None)
    try:
        await repository.upsert_user(ALICE, username="alice", first_name="Alice", language_code="en")
        locker.execute("BEGIN EXCLUSIVE")

        write = asyncio.create_task(_add(repository, message_id=99))
        retried = await asyncio.to_thread(watcher.retried.wait, 60)
        assert retried, "the write never reported a busy database"
        assert not write.done()
        locker.execute("COMMIT")

        prediction = await asyncio.wait_for(write, timeout=60)
    finally:
        repository_logger.removeHandler(watcher)
        locker.close()
        await engine.dispose()

    check_engine = create_engine(migrated_database_url)
    try:
        stored = await Repository(new_session_factory(check_engine)).get_prediction_by_message(ALICE, 99)
    finally:
        await check_engine.dispose()
    assert stored is not None
    assert stored.id == prediction.id
    assert any("database is locked" in message for message in watcher.messages)


async def test_locked_database_gives_up_after_max_attempts(sqlite_database_url, migrated_database_url, engine):
    locked_engine = create_engine(migrated_database_url, sqlite_busy_timeout_ms=10)
    repository = Repository(new_session_factory(locked_engine), max_attempts=2, retry_base_delay_s=0.01)
    locker = sqlite3.connect(Path(make_url(migrated_database_url).database), isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(Exception, match="database is locked"):
            await _add(repository, message_id=100)
        locker.execute("ROLLBACK")
    finally:
        locker.close()
        await locked_engine.dispose()

    assert await _count(engine, Prediction) == 0


async def test_pending_input_removed_with_prediction(repository, engine):
    prediction = await _add(repository)
    await repository.set_pending_input(ALICE, ALICE, prediction.id, "type_name")

    async with new_session_factory(engine)() as session, session.begin():
        await session.delete(await session.get(Prediction, prediction.id))

    assert await repository.get_pending_input(ALICE, ALICE) is None
    assert await _count(engine, PendingInput) == 0
    assert await _count(engine, User) == 1


async def test_concurrent_blocks_report_one_change(migrated_repository: Repository) -> None:
    # Creates the user, active by default.
    assert await migrated_repository.mark_user_active(7301) is False
    results = await asyncio.gather(*(migrated_repository.mark_user_blocked(7301) for _ in range(8)))
    assert sum(results) == 1
    results = await asyncio.gather(*(migrated_repository.mark_user_active(7301) for _ in range(8)))
    assert sum(results) == 1

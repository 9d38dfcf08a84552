"""ORM tables for flowerbot, portable across SQLite and PostgreSQL.

Telegram user and chat ids use BigInteger because they exceed 32 bits.
Enumerations are plain strings with named CHECK constraints instead of
database ENUM types, so migrations stay the same on both dialects. Every
timestamp is stored in UTC and read back as an aware ``datetime``.

The schema is created by the Alembic revisions in ``migrations/versions``.
A test compares these models with the migrated schema, so a change here needs
a new revision.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Constraint names follow one pattern, so autogenerate and hand-written
# revisions name them the same way on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

LANGUAGES = ("en", "zh")
CORRECTION_KINDS = ("confirmed", "corrected", "not_flower", "unknown_species")
# Kinds stored without a class id: "not a flower", and "a flower of a species the
# model does not have". Every other kind carries the chosen class id as its label.
LABELLESS_CORRECTION_KINDS = ("not_flower", "unknown_species")
MODEL_STATUSES = ("candidate", "serving", "rejected", "retired")
RETRAIN_STATUSES = ("running", "succeeded", "failed", "cancelled", "rejected")
RETRAIN_FINISHED_STATUSES = tuple(status for status in RETRAIN_STATUSES if status != "running")


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp stored in UTC.

    PostgreSQL stores it as ``timestamptz``. SQLite has no time zone type and
    SQLAlchemy's SQLite DATETIME drops ``tzinfo`` silently, so values are
    converted to UTC before binding and marked as UTC when read back.
    Naive datetimes are rejected because their zone is unknown.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} is not allowed; pass an aware datetime, e.g. in UTC")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({_quoted(values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[dict[str, Any]]: JSON(),
    }


class User(Base):
    """A Telegram user who has talked to the bot."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(_in_list("language", LANGUAGES), name="language"),
    )

    # The Telegram user id, not a generated key.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    username: Mapped[str | None] = mapped_column(String(64))
    first_name: Mapped[str | None] = mapped_column(String(128))
    # The IETF language tag Telegram reports for the user's client, e.g. "zh-hans".
    language_code: Mapped[str | None] = mapped_column(String(16))
    # The language the user chose with /lang; None means "follow language_code".
    language: Mapped[str | None] = mapped_column(String(8))
    # False once sending to the user failed with Forbidden (the user blocked the bot).
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    blocked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(default=utc_now, onupdate=utc_now)


class Prediction(Base):
    """One classification of a user's photo (or album): the image, the model and its top-k."""

    __tablename__ = "predictions"
    __table_args__ = (
        # A re-delivered Telegram update carries the same message, so this
        # pair makes storing a prediction idempotent.
        UniqueConstraint("chat_id", "message_id"),
        Index(None, "user_id", "created_at"),
        Index(None, "image_sha256"),
        Index(None, "chat_id", "media_group_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    chat_id: Mapped[int] = mapped_column(BigInteger)
    # The user's photo message.
    message_id: Mapped[int] = mapped_column(BigInteger)
    # The bot's reply message, set once it is sent.
    reply_message_id: Mapped[int | None] = mapped_column(BigInteger)
    media_group_id: Mapped[str | None] = mapped_column(String(64))
    # The first photo. Every photo, this one included, has a row in prediction_images.
    file_unique_id: Mapped[str] = mapped_column(String(128))
    image_path: Mapped[str] = mapped_column(String(1024))
    # Lowercase hex SHA-256 of the saved image bytes (64 characters).
    image_sha256: Mapped[str] = mapped_column(String(64))
    # Number of photos classified together (an album gets one reply).
    photo_count: Mapped[int] = mapped_column(Integer, default=1)
    model_version: Mapped[str] = mapped_column(String(128))
    # [{"index": int, "class_id": str, "probability": float}, ...], highest first.
    top_k: Mapped[list[dict[str, Any]]]
    k: Mapped[int] = mapped_column(Integer)
    ood_score: Mapped[float | None] = mapped_column(Float)
    is_ood: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)

    @property
    def top1_class_id(self) -> str | None:
        """Return the class id ranked first, or None for an empty top-k."""
        if not self.top_k:
            return None
        return str(self.top_k[0]["class_id"])


class PredictionImage(Base):
    """One saved photo of a prediction, so that /forget and retraining reach every photo of an album.

    A single photo has one row at position 0. An album has one row per
    classified photo, positions 0 to n-1 in the order the photos were sent.
    The prediction's own ``image_path``, ``image_sha256`` and
    ``file_unique_id`` repeat the position-0 row.
    """

    __tablename__ = "prediction_images"
    __table_args__ = (
        CheckConstraint("position >= 0", name="position"),
        UniqueConstraint("prediction_id", "position"),
        Index(None, "image_sha256"),
        # /forget and `python -m storage orphans` look rows up by path.
        Index(None, "image_path"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    file_unique_id: Mapped[str] = mapped_column(String(128))
    image_path: Mapped[str] = mapped_column(String(1024))
    # Lowercase hex SHA-256 of the saved image bytes (64 characters).
    image_sha256: Mapped[str] = mapped_column(String(64))


class Correction(Base):
    """A label a user gave to a prediction. Older rows stay as history."""

    __tablename__ = "corrections"
    __table_args__ = (
        CheckConstraint(_in_list("kind", CORRECTION_KINDS), name="kind"),
        CheckConstraint(
            f"({_in_list('kind', LABELLESS_CORRECTION_KINDS)} AND label IS NULL) "
            f"OR (kind NOT IN ({_quoted(LABELLESS_CORRECTION_KINDS)}) AND label IS NOT NULL)",
            name="label_matches_kind",
        ),
        # At most one current correction per prediction.
        Index(
            "uq_corrections_current",
            "prediction_id",
            unique=True,
            sqlite_where=text("is_current"),
            postgresql_where=text("is_current"),
        ),
        Index(None, "prediction_id", "created_at"),
        Index(None, "user_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    # The class id the user chose; None for the kinds in LABELLESS_CORRECTION_KINDS.
    label: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class PendingInput(Base):
    """A question the bot is waiting for the user to answer in a chat, e.g. a typed species name."""

    __tablename__ = "pending_inputs"

    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    chat_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class ModelVersion(Base):
    """A model bundle known to the registry."""

    __tablename__ = "model_versions"
    __table_args__ = (
        CheckConstraint(_in_list("status", MODEL_STATUSES), name="status"),
        # At most one serving model.
        Index(
            "uq_model_versions_serving",
            "status",
            unique=True,
            sqlite_where=text("status = 'serving'"),
            postgresql_where=text("status = 'serving'"),
        ),
    )

    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    parent_version: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    # The last time this version was made the serving one.
    promoted_at: Mapped[datetime | None]


class RetrainRun(Base):
    """One /retrain run, from start to its final status."""

    __tablename__ = "retrain_runs"
    __table_args__ = (
        CheckConstraint(_in_list("status", RETRAIN_STATUSES), name="status"),
        # At most one running retrain.
        Index(
            "uq_retrain_runs_running",
            "status",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    admin_user_id: Mapped[int] = mapped_column(BigInteger)
    admin_chat_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="running")
    # Free text set by the supervisor, e.g. "features", "epoch 3/10", "gate".
    phase: Mapped[str | None] = mapped_column(String(64))
    # The progress message the bot edits in the admin's chat.
    progress_message_id: Mapped[int | None] = mapped_column(BigInteger)
    candidate_version: Mapped[str | None] = mapped_column(String(128))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utc_now)
    finished_at: Mapped[datetime | None]


class InboxUpdate(Base):
    """A Telegram update with an image, stored before its handlers run so that a restart can replay it.

    Telegram considers an update delivered once the bot has fetched it, so an update
    whose handling a crash cut off would otherwise never be answered.
    """

    __tablename__ = "inbox_updates"
    __table_args__ = (
        # Replay looks up the unfinished rows, and pruning the old finished ones.
        Index(None, "finished_at"),
        # /forget deletes a person's stored updates.
        Index(None, "user_id"),
    )

    # Telegram's update_id, not a generated key.
    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # The update as `telegram.Update.to_dict()` returns it.
    payload: Mapped[dict[str, Any]]
    # The sender (`Update.effective_user`), so /forget can delete the update; None when unknown.
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(default=utc_now)
    # How often handling has started: 1 when the update arrives, plus one per replay.
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    # Set once the handlers have run, or when the update was given up; None until then.
    finished_at: Mapped[datetime | None]

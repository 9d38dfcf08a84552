"""Add prediction_images: every saved photo of a prediction, an album's photos included.

Before this revision a prediction stored only its first photo, so /forget left
the other photos of an album on disk and retraining learned from the first
photo only. The upgrade copies each prediction's ``image_path``,
``image_sha256`` and ``file_unique_id`` into one position-0 row. Album photos
saved before this revision have no row, because their paths were never
stored; ``python -m storage orphans`` finds those files.

Downgrading drops the table. The rows after position 0 are lost, so their
files are no longer referenced by any row and /forget no longer deletes them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 23:50:00+00:00
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger(__name__)

BACKFILL = sa.text(
    "INSERT INTO prediction_images (prediction_id, position, file_unique_id, image_path, image_sha256) "
    "SELECT id, 0, file_unique_id, image_path, image_sha256 FROM predictions"
)
COUNT_LATER_POSITIONS = sa.text("SELECT COUNT(*) FROM prediction_images WHERE position > 0")


def upgrade() -> None:
    op.create_table(
        "prediction_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("file_unique_id", sa.String(length=128), nullable=False),
        sa.Column("image_path", sa.String(length=1024), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.CheckConstraint("position >= 0", name=op.f("ck_prediction_images_position")),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_prediction_images_prediction_id_predictions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_images")),
        sa.UniqueConstraint("prediction_id", "position", name=op.f("uq_prediction_images_prediction_id_position")),
    )
    op.create_index(op.f("ix_prediction_images_image_sha256"), "prediction_images", ["image_sha256"])
    op.create_index(op.f("ix_prediction_images_image_path"), "prediction_images", ["image_path"])

    if context.is_offline_mode():
        op.execute(BACKFILL)
        return
    copied = op.get_bind().execute(BACKFILL).rowcount
    logger.info("upgrade to 0005 copied the photos of %d predictions into prediction_images", copied)


def downgrade() -> None:
    if not context.is_offline_mode():
        dropped = op.get_bind().execute(COUNT_LATER_POSITIONS).scalar_one()
        level = logging.WARNING if dropped else logging.INFO
        logger.log(
            level,
            "downgrade of 0005 drops %d album photo rows after position 0; their files stay on disk unreferenced",
            dropped,
        )
    op.drop_index(op.f("ix_prediction_images_image_path"), table_name="prediction_images")
    op.drop_index(op.f("ix_prediction_images_image_sha256"), table_name="prediction_images")
    op.drop_table("prediction_images")

"""Create users and predictions.

Revision ID: 0001
Revises:
Create Date: 2025-12-04 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("first_name", sa.String(length=128), nullable=True),
        sa.Column("language_code", sa.String(length=16), nullable=True),
        sa.Column("language", sa.String(length=8), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("language IN ('en', 'zh')", name=op.f("ck_users_language")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("reply_message_id", sa.BigInteger(), nullable=True),
        sa.Column("media_group_id", sa.String(length=64), nullable=True),
        sa.Column("file_unique_id", sa.String(length=128), nullable=False),
        sa.Column("image_path", sa.String(length=1024), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("photo_count", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("top_k", sa.JSON(), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("ood_score", sa.Float(), nullable=True),
        sa.Column("is_ood", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_predictions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint("chat_id", "message_id", name=op.f("uq_predictions_chat_id_message_id")),
    )
    op.create_index(op.f("ix_predictions_user_id_created_at"), "predictions", ["user_id", "created_at"])
    op.create_index(op.f("ix_predictions_image_sha256"), "predictions", ["image_sha256"])
    op.create_index(op.f("ix_predictions_chat_id_media_group_id"), "predictions", ["chat_id", "media_group_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_predictions_chat_id_media_group_id"), table_name="predictions")
    op.drop_index(op.f("ix_predictions_image_sha256"), table_name="predictions")
    op.drop_index(op.f("ix_predictions_user_id_created_at"), table_name="predictions")
    op.drop_table("predictions")
    op.drop_table("users")

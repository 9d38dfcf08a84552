"""Add corrections and pending inputs.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-04 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('confirmed', 'corrected', 'not_flower')", name=op.f("ck_corrections_kind")),
        sa.CheckConstraint(
            "(kind = 'not_flower' AND label IS NULL) OR (kind <> 'not_flower' AND label IS NOT NULL)",
            name=op.f("ck_corrections_label_matches_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_corrections_prediction_id_predictions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_corrections_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_corrections")),
    )
    # One current correction per prediction; older rows stay as history.
    op.create_index(
        "uq_corrections_current",
        "corrections",
        ["prediction_id"],
        unique=True,
        sqlite_where=sa.text("is_current"),
        postgresql_where=sa.text("is_current"),
    )
    op.create_index(op.f("ix_corrections_prediction_id_created_at"), "corrections", ["prediction_id", "created_at"])
    op.create_index(op.f("ix_corrections_user_id"), "corrections", ["user_id"])

    op.create_table(
        "pending_inputs",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("chat_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_pending_inputs_prediction_id_predictions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_pending_inputs_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "chat_id", name=op.f("pk_pending_inputs")),
    )
    op.create_index(op.f("ix_pending_inputs_prediction_id"), "pending_inputs", ["prediction_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_pending_inputs_prediction_id"), table_name="pending_inputs")
    op.drop_table("pending_inputs")
    op.drop_index(op.f("ix_corrections_user_id"), table_name="corrections")
    op.drop_index(op.f("ix_corrections_prediction_id_created_at"), table_name="corrections")
    op.drop_index("uq_corrections_current", table_name="corrections")
    op.drop_table("corrections")

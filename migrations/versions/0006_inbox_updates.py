"""Add inbox_updates: image updates stored on arrival, so a restart answers those a crash cut off.

Downgrading drops the table. Updates that were still unfinished are then lost,
as they were before this revision.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 00:00:00+00:00
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger(__name__)

COUNT_UNFINISHED = sa.text("SELECT COUNT(*) FROM inbox_updates WHERE finished_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "inbox_updates",
        sa.Column("update_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("update_id", name=op.f("pk_inbox_updates")),
    )
    op.create_index(op.f("ix_inbox_updates_finished_at"), "inbox_updates", ["finished_at"])
    op.create_index(op.f("ix_inbox_updates_user_id"), "inbox_updates", ["user_id"])


def downgrade() -> None:
    if not context.is_offline_mode():
        unfinished = op.get_bind().execute(COUNT_UNFINISHED).scalar_one()
        level = logging.WARNING if unfinished else logging.INFO
        logger.log(level, "downgrade of 0006 drops %d unfinished inbox updates; they will not be answered", unfinished)
    op.drop_index(op.f("ix_inbox_updates_user_id"), table_name="inbox_updates")
    op.drop_index(op.f("ix_inbox_updates_finished_at"), table_name="inbox_updates")
    op.drop_table("inbox_updates")

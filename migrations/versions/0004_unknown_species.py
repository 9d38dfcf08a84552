"""Allow the correction kind 'unknown_species': a flower of a species the model does not have.

Like 'not_flower', it has no label. Both CHECK constraints on ``corrections``
are widened. SQLite cannot alter a constraint, so batch mode copies the table.

Downgrading deletes the 'unknown_species' rows, because the old constraints
reject them. A prediction whose current correction was one of them is left
with no current correction; its older corrections stay as history.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 23:40:00+00:00
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger(__name__)

KIND_0003 = "kind IN ('confirmed', 'corrected', 'not_flower')"
LABEL_MATCHES_KIND_0003 = "(kind = 'not_flower' AND label IS NULL) OR (kind <> 'not_flower' AND label IS NOT NULL)"
KIND_0004 = "kind IN ('confirmed', 'corrected', 'not_flower', 'unknown_species')"
LABEL_MATCHES_KIND_0004 = (
    "(kind IN ('not_flower', 'unknown_species') AND label IS NULL) "
    "OR (kind NOT IN ('not_flower', 'unknown_species') AND label IS NOT NULL)"
)


def _replace_check_constraints(kind: str, label_matches_kind: str) -> None:
    with op.batch_alter_table("corrections") as batch:
        batch.drop_constraint(op.f("ck_corrections_kind"), type_="check")
        batch.drop_constraint(op.f("ck_corrections_label_matches_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_corrections_kind"), kind)
        batch.create_check_constraint(op.f("ck_corrections_label_matches_kind"), label_matches_kind)


def upgrade() -> None:
    _replace_check_constraints(KIND_0004, LABEL_MATCHES_KIND_0004)


def downgrade() -> None:
    delete = sa.text("DELETE FROM corrections WHERE kind = 'unknown_species'")
    if context.is_offline_mode():
        op.execute(delete)
        logger.warning("downgrade of 0004 deletes every 'unknown_species' correction; the count is unknown offline")
    else:
        deleted = op.get_bind().execute(delete).rowcount
        level = logging.WARNING if deleted else logging.INFO
        logger.log(level, "downgrade of 0004 deleted %d 'unknown_species' corrections", deleted)
    _replace_check_constraints(KIND_0003, LABEL_MATCHES_KIND_0003)

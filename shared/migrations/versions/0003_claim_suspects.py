"""index the queued runs that were rescued (claim suspects)

A queued run with claim_count >= 2 lost two claims without finishing (its runners died or
stopped heartbeating). Runners claim at most one such run at a time (shared/store/claims.py),
looking for one on every claim: this keeps that look-up from scanning the whole queue.

Revision ID: 0003_claim_suspects
Revises: 0002_control
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_claim_suspects"
down_revision = "0002_control"
branch_labels = None
depends_on = None

WHERE = "status = 'queued' AND claim_count >= 2"


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_runs_suspects",
            ["queue", sa.literal_column("priority DESC"), "id"],
            unique=False,
            sqlite_where=sa.text(WHERE),
            postgresql_where=sa.text(WHERE),
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_suspects")

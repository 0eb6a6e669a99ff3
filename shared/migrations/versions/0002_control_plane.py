"""control plane: approval decisions on tasks, rate-limit counters

Revision ID: 0002_control
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_control"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("approval_decision", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("approval_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("approval_comment", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("decided_at", sa.BigInteger(), nullable=True))

    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "window_start", name=op.f("pk_rate_limits")),
    )
    with op.batch_alter_table("rate_limits", schema=None) as batch_op:
        batch_op.create_index("ix_rate_limits_window_start", ["window_start"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rate_limits", schema=None) as batch_op:
        batch_op.drop_index("ix_rate_limits_window_start")
    op.drop_table("rate_limits")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("decided_at")
        batch_op.drop_column("approval_comment")
        batch_op.drop_column("approval_by")
        batch_op.drop_column("approval_decision")

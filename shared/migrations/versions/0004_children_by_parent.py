"""index children by (parent_run_id, id)

Run detail lists a run's children newest-last (`WHERE parent_run_id = ? ORDER BY id LIMIT
100`). With an index on parent_run_id alone, SQLite's planner — seeing that almost every run
has no parent — walked the primary key instead and read every run (seconds at 1M runs). The
composite index answers the filter and the order together, and still serves the foreign key.

Revision ID: 0004_children_by_parent
Revises: 0003_claim_suspects
"""

from __future__ import annotations

from alembic import op

revision = "0004_children_by_parent"
down_revision = "0003_claim_suspects"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_parent_run_id_id", ["parent_run_id", "id"], unique=False)
        batch_op.drop_index("ix_runs_parent_run_id")


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_parent_run_id", ["parent_run_id"], unique=False)
        batch_op.drop_index("ix_runs_parent_run_id_id")

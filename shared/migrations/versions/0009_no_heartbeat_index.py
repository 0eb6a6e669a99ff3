"""drop the index of running runs by heartbeat: the runs' heartbeats become HOT updates

`ix_runs_running_heartbeat` (heartbeat_at, partial on running runs) served the reaper's and
the metrics' search for stalled runs. Those searches read running runs only, which
`ix_runs_status_id` finds as well (status first; there are as many as the runners' slots),
and check the heartbeat on the rows. The index cost more than it saved:

- every heartbeat changed an indexed column, so each one (a row per running run, every
  heartbeat interval) was a non-HOT update: a new entry in seven of the table's indexes
  (each one whose condition a running run meets);
  without it a heartbeat leaves every index alone and, with the room fillfactor 80 keeps on
  the page, is a HOT update;
- every claim added an entry to it.

On SQLite the index is dropped too (a heartbeat there rewrote its entry each time).

Revision ID: 0009_no_heartbeat_index
Revises: 0008_byte_order_keys
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0009_no_heartbeat_index"
down_revision = "0008_byte_order_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_runs_running_heartbeat", table_name="runs")


def downgrade() -> None:
    running = text("status = 'running'")
    op.create_index(
        "ix_runs_running_heartbeat", "runs", ["heartbeat_at"],
        sqlite_where=running, postgresql_where=running,
    )  # fmt: skip

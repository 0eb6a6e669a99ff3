"""index only the runs that have an idempotency key or a parent, and running runs' tokens;
PostgreSQL: room for a task's next row version on its page

PostgreSQL adds an entry to every index of a table for each new row version that is not a HOT
update — three per drained run (insert, claim, completion) — even when the indexed column did
not change. Almost no run has an idempotency key or a parent, yet each version added a NULL
under every other NULL of the unique index and (NULL, id) beside the run's earlier entries in
the parent index; a finished run's version added its claim token again. PostgreSQL then spent
its time removing those duplicates (bottom-up index deletion, `heap_index_delete_tuples`, the
top function of a drain's server profile). The lookups all name a value (`idempotency_key =
?`, `parent_run_id = ?`, the foreign key's `ON DELETE SET NULL`) or, for a token, a running
run (claims.py says so in every such query): the key and parent indexes now hold only runs
that have one, the token index only running runs. Server CPU per drained run fell by about a
tenth: 632 → 572 µs (`python -m bench.cycle --n 6000` on PostgreSQL, medians of five runs
alternating with the code before; bench/RESULTS.md, ninth run).

A task's row is written twice or more while its run executes; with room on its page (fillfactor
80, as runs have since 0005) most of those writes are HOT updates, which add no index entry at
all: 69 % of a drain's task updates were, 87 % are.

SQLite updates an index only when a statement changes one of its columns (or, for a partial
index, a column of its condition), so there only a run's insert saved anything. The parent
index becomes partial there too; the token index stays as it was (its condition on the status
would make every completion touch it); the unique constraint on idempotency_key stays (on
SQLite it lives in the table's definition: removing it means copying the table, with its
children's foreign keys pointing at it).

On PostgreSQL the new indexes are built inside the upgrade's transaction, which keeps `runs`
locked against writes for as long as that takes (seconds per million runs).

Revision ID: 0007_fewer_index_entries
Revises: 0006_sqlite_check_or_chains
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0007_fewer_index_entries"
down_revision = "0006_sqlite_check_or_chains"
branch_labels = None
depends_on = None


def _parent_index(where: str | None) -> None:
    op.drop_index("ix_runs_parent_run_id_id", table_name="runs")
    cond = None if where is None else text(where)
    op.create_index(
        "ix_runs_parent_run_id_id", "runs", ["parent_run_id", "id"],
        sqlite_where=cond, postgresql_where=cond,
    )  # fmt: skip


def _token_index(where: str) -> None:
    op.drop_index("ix_runs_claim_token", table_name="runs")
    op.create_index("ix_runs_claim_token", "runs", ["claim_token"], postgresql_where=text(where))


def upgrade() -> None:
    _parent_index("parent_run_id IS NOT NULL")
    if op.get_bind().dialect.name == "postgresql":
        _token_index("status = 'running'")
        op.execute("ALTER TABLE tasks SET (fillfactor = 80)")
        op.drop_constraint("uq_runs_idempotency_key", "runs", type_="unique")
        op.create_index(
            "ix_runs_idempotency_key",
            "runs",
            ["idempotency_key"],
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _token_index("claim_token IS NOT NULL")
        op.execute("ALTER TABLE tasks RESET (fillfactor)")
        op.drop_index("ix_runs_idempotency_key", table_name="runs")
        op.create_unique_constraint("uq_runs_idempotency_key", "runs", ["idempotency_key"])
    _parent_index(None)

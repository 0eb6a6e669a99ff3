"""PostgreSQL: key columns compared byte by byte, and events without a foreign key to runs

Two costs of every drained run on PostgreSQL, found in the server's profile of a two-runner
drain (`perf record -a -g`; bench/RESULTS.md, twelfth run):

- **Collation.** Text is compared in the database's collation, and PostgreSQL takes the
  memcmp path only for the one named "C" (or "POSIX"). Under C.UTF-8, en_US.UTF-8 and the
  rest, each comparison of an index descent copies both strings and calls strcoll
  (`varstr_cmp`, `bttextcmp`): about a tenth of the server's CPU went there, for ids, tokens,
  statuses and queue and workflow names that are ASCII and want byte order anyway — SQLite's
  (BINARY), so keyset pages now come in the same order on both backends. The key columns of
  the hot indexes now say COLLATE "C".
- **The events' foreign key.** Its check runs as a trigger per inserted event (a lookup of
  the run that also locks it against deletion), and a run writes four events or more: about
  a seventh of the server's CPU. Nothing relies on it: every writer of events writes or locks
  the run's row first in the same transaction (a runner's guarded update, an intent's FOR
  UPDATE, the insert of a new run), and the only thing that deletes runs — the prune — locks
  them FOR UPDATE, re-checks them, and deletes their events itself. SQLite keeps the key (its
  check is an index probe in the same B-tree library, not a query).

`python -m bench.cycle --n 8000 --limit 64` on PostgreSQL, alternating with the schema before:
server CPU per run 105–114 → 85–88 µs.

The collation change rebuilds the indexes on those columns, not the tables, inside the
upgrade's transaction: `runs`, `tasks`, `events` and `artifacts` are locked against writes for
as long as that takes (seconds per million rows).

Revision ID: 0008_byte_order_keys
Revises: 0007_fewer_index_entries
"""

from __future__ import annotations

from alembic import op

revision = "0008_byte_order_keys"
down_revision = "0007_fewer_index_entries"
branch_labels = None
depends_on = None

# table → (column, varchar length): shared/schema.py declares them with `Key`.
KEYS = {
    "runs": (
        ("id", 40),
        ("workflow", 200),
        ("status", 16),
        ("queue", 100),
        ("parent_run_id", 40),
        ("claim_token", 40),
    ),
    "tasks": (("id", 40), ("run_id", 40)),
    "events": (("run_id", 40),),
    "artifacts": (("run_id", 40),),
}


def _collate(collation: str) -> None:
    for table, columns in KEYS.items():
        changes = ", ".join(
            f'ALTER COLUMN {name} TYPE varchar({length}) COLLATE "{collation}"'
            for name, length in columns
        )
        op.execute(f"ALTER TABLE {table} {changes}")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_constraint("fk_events_run_id_runs", "events", type_="foreignkey")
    _collate("C")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _collate("default")
    op.create_foreign_key(
        "fk_events_run_id_runs", "events", "runs", ["run_id"], ["id"], ondelete="CASCADE"
    )

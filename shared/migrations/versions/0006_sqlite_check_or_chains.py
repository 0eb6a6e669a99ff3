"""SQLite: the CHECK constraints on status and kind columns as OR chains, not IN lists

SQLite evaluates `status IN ('queued', 'running', …)` in a CHECK constraint by building a
temporary b-tree of the list — every time a row is inserted or its status changes. Runners
change a run's and a task's status several times per run, so a drained run paid for five or
six of these (page allocation, zeroing, inserts): a tenth of the instructions the runner
spent per run (callgrind over `python -m bench.cycle`, bench/RESULTS.md). The same test as
`status = 'queued' OR status = 'running' OR …` is evaluated in place.

The constraints allow exactly the same values, so no row needs checking: the stored table
definitions are rewritten in place, as SQLite documents for changes of CHECK constraints
(https://www.sqlite.org/lang_altertable.html#otheralter): writable_schema, then a new schema
version. No table is copied.

PostgreSQL evaluates IN lists without such a cost: nothing changes there. On a remote
libSQL server the migration does nothing either (writing the schema table through a server is
not something to bet a migration on): its constraints stay as they were — same rules, the old
cost.

Revision ID: 0006_sqlite_check_or_chains
Revises: 0005_runs_fillfactor
"""

from __future__ import annotations

import re
from collections.abc import Callable

from alembic import op

revision = "0006_sqlite_check_or_chains"
down_revision = "0005_runs_fillfactor"
branch_labels = None
depends_on = None

TABLES = ("runs", "tasks", "artifacts", "runners")
# CHECK (status IN ('a', 'b')) — the form migration 0001 wrote.
_IN_LIST = re.compile(r"CHECK \((\w+) IN \(('[a-z_]+'(?:, '[a-z_]+')*)\)\)")
# CHECK (status = 'a' OR status = 'b') — the form this migration writes.
_OR_CHAIN = re.compile(r"CHECK \((\w+) = ('[a-z_]+'(?: OR \1 = '[a-z_]+')*)\)")


def _to_or_chain(m: re.Match[str]) -> str:
    column, values = m.group(1), m.group(2).split(", ")
    return "CHECK (" + " OR ".join(f"{column} = {v}" for v in values) + ")"


def _to_in_list(m: re.Match[str]) -> str:
    column = m.group(1)
    values = m.group(2).split(f" OR {column} = ")
    return f"CHECK ({column} IN ({', '.join(values)}))"


def _rewrite(pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str]) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite" or bind.dialect.driver != "pysqlite":
        return
    cursor = bind.connection.driver_connection.cursor()  # type: ignore[union-attr]
    names = ", ".join(f"'{t}'" for t in TABLES)
    rows = cursor.execute(
        f"SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name IN ({names})"
    ).fetchall()
    changed = [(new, name) for name, sql in rows if (new := pattern.sub(replace, sql)) != sql]
    if not changed:
        return
    (version,) = cursor.execute("PRAGMA schema_version").fetchone()
    cursor.execute("PRAGMA writable_schema = ON")
    try:
        cursor.executemany(
            "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", changed
        )
        cursor.execute(f"PRAGMA schema_version = {version + 1}")
    finally:
        cursor.execute("PRAGMA writable_schema = OFF")
    # Connections that parsed the old definitions keep them until they reconnect; the
    # constraints mean the same either way (shared.migrate.upgrade drops its own connection).


def upgrade() -> None:
    _rewrite(_IN_LIST, _to_or_chain)


def downgrade() -> None:
    _rewrite(_OR_CHAIN, _to_in_list)

"""Helpers shared by the store verb modules."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    Integer,
    String,
    Text,
    bindparam,
    cast,
    func,
    insert,
    literal_column,
    select,
)

from ..clock import db_now_ms
from ..db import Database
from ..schema import audit, events
from .fast import Prepared, PreparedCache


class StatementCache:
    """Built statements by shape, so a hot path reuses one statement object (whose SQLAlchemy
    cache key is memoized) instead of building and cache-keying a new one per call."""

    def __init__(self, limit: int = 512) -> None:
        self._items: dict[Any, Any] = {}
        self._limit = limit

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        stmt = self._items.get(key)
        if stmt is None:
            if len(self._items) >= self._limit:
                self._items.clear()
            stmt = self._items[key] = build()
        return stmt


class StoreBase(Database):
    """What every verb mixin may use: the transaction shapes, the liveness settings and the
    statement cache."""

    stall_after_ms: int = 120_000
    max_claims: int = 3
    max_inputs_bytes: int = 64 * 1024
    statements: StatementCache
    prepared: PreparedCache


@dataclass(frozen=True)
class Actor:
    """Who asks for a change, for the audit log: `name` (token name, user@host, runner id)."""

    name: str = "anonymous"
    client: str | None = None
    request_id: str | None = None
    # A person named in the request (`requested_by`) when `name` is an API token's name.
    on_behalf_of: str | None = None

    @property
    def person(self) -> str:
        """Who to credit on the object itself (e.g. a task's last_rerun_by)."""
        return self.on_behalf_of or self.name


def const(value: str | int) -> Any:
    """A constant written into the SQL text instead of bound as a parameter.

    Partial indexes (`WHERE status = 'queued'`, DESIGN §3) serve a query only when the planner
    can prove the index predicate from the query's own WHERE clause. A bound `status = $1`
    proves nothing: PostgreSQL's generic plan for a prepared statement (psycopg prepares after
    5 executions) and SQLite's planner (it does not look at bound values) then scan the table
    instead — 4 ms per claim at 10,000 runs, growing with the table. Only our own constants go
    through here, never user input.
    """
    if isinstance(value, int):
        return literal_column(str(int(value)))
    if "'" in value:
        raise ValueError(f"not a plain constant: {value!r}")
    return literal_column(f"'{value}'")


def now_expr(now_ms: int | None) -> Any:
    """`now_ms` when a caller (a test, a loop's run_once) passes the time in; else the DB clock."""
    return db_now_ms() if now_ms is None else now_ms


def db_now(conn: Connection) -> int:
    return int(conn.execute(select(db_now_ms())).scalar_one())


class JsonText(str):
    """Event data already encoded as JSON (by a runner's execution thread, which measures the
    encoding anyway to cap its size): the dispatcher writes the text as it is instead of
    encoding the object again inside its transaction."""


def _encoded(data: Any) -> str:
    return data if isinstance(data, JsonText) else json.dumps(data)


def _insert_encoded_events() -> Any:
    # The text goes into the JSON column as SQLAlchemy's JSON type would put it there.
    return insert(events).values(created_at=db_now_ms(), data=bindparam("data", type_=Text))


_UNNEST_TYPES = (String, String, String, String, Integer, Text, Text)  # as _EVENT_COLUMNS


def _insert_events_unnest() -> Any:
    """PostgreSQL: every event of a batch in one statement, each column one array parameter
    (`{column}s`): one execution instead of one per row, whatever the number of rows (so it
    is prepared once, fast.py). Inserted in the arrays' order, so ids follow it."""
    arrays: list[Any] = [
        bindparam(f"{column}s", type_=ARRAY(type_))
        for column, type_ in zip(_EVENT_COLUMNS, _UNNEST_TYPES, strict=True)
    ]
    rows = (
        func.unnest(*arrays)
        .table_valued(*_EVENT_COLUMNS, with_ordinality="n")
        .render_derived(name="e")
    )
    columns = [rows.c[column] for column in _EVENT_COLUMNS[:-1]]
    source = select(*columns, cast(rows.c.data, events.c.data.type), db_now_ms()).order_by(rows.c.n)
    return insert(events).from_select([*_EVENT_COLUMNS, "created_at"], source)


def add_events(
    conn: Connection, rows: list[dict[str, Any]], prepared: PreparedCache | None = None
) -> None:
    """Append events; every row needs run_id and type. created_at comes from the DB clock.
    With `prepared` (the dispatcher's hot path), through a prepared statement (fast.py), and
    `data` may be JsonText."""
    if not rows:
        return
    if prepared is not None:
        statement, bound = bind_events(rows, prepared, conn.dialect.name == "postgresql")
        statement.execute_bound(conn, bound)
        return
    conn.execute(_INSERT_EVENTS, [_event_row(r, r.get("data")) for r in rows])


def bind_events(
    rows: list[dict[str, Any]], prepared: PreparedCache, postgres: bool
) -> tuple[Prepared, list[Any]]:
    """The prepared insert of these events and its bound parameters (see add_events), made
    without a connection: a writer can build them before it takes the write lock."""
    if postgres:
        statement = prepared.get("insert_events_unnest", _insert_events_unnest)
        return statement, statement.bind(
            {
                "run_ids": [r["run_id"] for r in rows],
                "task_ids": [r.get("task_id") for r in rows],
                "types": [r["type"] for r in rows],
                "stages": [r.get("stage") for r in rows],
                "attempts": [r.get("attempt") for r in rows],
                "messages": [r.get("message") for r in rows],
                "datas": [_encoded(r.get("data")) for r in rows],
            }
        )
    statement = prepared.get("insert_events", _insert_encoded_events, _EVENT_COLUMNS)
    return statement, statement.bind_many(_event_row(r, _encoded(r.get("data"))) for r in rows)


def _event_row(row: dict[str, Any], data: Any) -> dict[str, Any]:
    """Every column of _EVENT_COLUMNS (an executemany needs the same keys in every row)."""
    return {
        "run_id": row["run_id"],
        "task_id": row.get("task_id"),
        "type": row["type"],
        "stage": row.get("stage"),
        "attempt": row.get("attempt"),
        "message": row.get("message"),
        "data": data,
    }


_INSERT_EVENTS = insert(events).values(created_at=db_now_ms())
_EVENT_COLUMNS = ("run_id", "task_id", "type", "stage", "attempt", "message", "data")
_INSERT_AUDIT = insert(audit).values(at=db_now_ms())
_AUDIT_COLUMNS = ("actor", "action", "run_id", "reason", "details", "request_id", "client")


def add_audit(
    conn: Connection,
    actor: Actor | None,
    action: str,
    run_id: str | None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
    prepared: PreparedCache | None = None,
) -> None:
    """One audit row; with `prepared` (a hot path such as create), through a prepared
    statement (fast.py)."""
    actor = actor or Actor()
    if actor.on_behalf_of and actor.on_behalf_of != actor.name:
        details = {**(details or {}), "requested_by": actor.on_behalf_of}
    params = {
        "actor": actor.name,
        "action": action,
        "run_id": run_id,
        "reason": reason,
        "details": details,
        "request_id": actor.request_id,
        "client": actor.client,
    }
    if prepared is None:
        conn.execute(_INSERT_AUDIT, params)
    else:
        prepared.get("insert_audit", lambda: _INSERT_AUDIT, _AUDIT_COLUMNS).execute(conn, params)

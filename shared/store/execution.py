"""Execution state, written only by the runner that holds the claim (DESIGN §2, §5).

A runner does not write row by row. It hands `RunWrites` batches — one per run, holding the
run's column changes, task inserts/updates, events and artifacts since the last flush — to
`apply_run_writes`, which applies many runs' batches in one transaction (River's completer
does the same), optionally claiming new runs in that same transaction.

Fencing: each batch starts with a guarded UPDATE of its run,
`WHERE id = :id AND claim_token = :token AND fence = :fence AND status = 'running'`, which also
bumps `fence`. Zero rows means the lease is gone (reaped, reset, cancelled-and-finished): the
batch's other writes are dropped and the runner is told. Because that UPDATE comes first, it also
takes the run's row lock (PostgreSQL) for the rest of the transaction, so a concurrent reset or
rescue — which updates the runs row first as well — waits for this batch and then sees it.
On a retry after an ambiguous commit, `fence == :fence + 1` with our token means the first
attempt landed: the batch is reported applied and not written twice. When every batch of a
cycle changes the same run columns (a drain: they all finish), that guarded UPDATE writes them
too (`_guard_statement`), so a run's row is written once per cycle.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    Connection,
    Integer,
    String,
    Text,
    bindparam,
    case,
    cast,
    func,
    insert,
    select,
    tuple_,
    update,
)

from ..clock import db_now_ms
from ..ids import new_id
from ..schema import artifacts, runs, tasks
from .approvals import route_released
from .base import StoreBase, add_events, bind_events, const
from .claims import (
    ClaimedRun,
    any_claimable,
    claim_statement,
    claimed_events_statement,
    claimed_runs,
    earlier_claim,
    lazy_commit_statement,
    tasks_of_claim_statement,
)
from .fast import Prepared, PreparedCache, commit_in_pipeline, pipeline


class _Now:
    def __repr__(self) -> str:
        return "NOW"


NOW: Any = _Now()
"""A value meaning "the database clock at write time"."""


@dataclass
class RunWrites:
    run_id: str
    token: str
    fence: int
    run: dict[str, Any] = field(default_factory=dict)
    task_inserts: list[dict[str, Any]] = field(default_factory=list)
    task_updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    # "waiting": the run's last batch gives the claim up at an approval gate (see approvals.py).
    release_to: str | None = None


@dataclass
class WriteOutcome:
    run_id: str
    applied: bool
    cancel_requested: bool = False
    landed_earlier: bool = False  # a retry found this batch already committed
    released_to: str | None = None  # where a release_to batch sent the run: waiting or queued


@dataclass
class ClaimRequest:
    runner_id: str
    queues: tuple[str, ...]
    workflows: tuple[str, ...]
    limit: int
    # How many suspects (rescued runs, see claims.py) this claim may take: 1, or 0 while the
    # runner still holds one. The rest of `limit` is filled with fresh runs only.
    suspects: int = 1
    token: str = field(default_factory=lambda: new_id("clm"))
    # Set by the store: the claim took as many fresh runs as it asked for (more may wait).
    filled: bool = False


def _signature(values: dict[str, Any]) -> tuple[tuple[str, bool], ...]:
    return tuple(sorted((k, v is NOW) for k, v in values.items()))


def _guard_statement(
    postgres: bool, sig: tuple[tuple[str, bool], ...] = (), varying: frozenset[str] = frozenset()
) -> Any:
    """One guard for every run of a cycle: bump the fence where (id, token, fence) still match.

    With `sig`, the guard also writes the runs' own column changes — the same columns for every
    run: a finished run's row gets one new version instead of two (the guard's, then the
    update's), and the cycle one statement less (on SQLite one per run less). PostgreSQL takes
    the values as one more array per column (`b_{column}`, as `_update_unnest`). SQLite takes
    a column whose value is the same for every run as one parameter (`b_{column}`), and the
    `varying` ones from one JSON object by run id (`vals`, `{id: {column: value}}`, a JSON
    column's value as its text), which `json_extract` reads per row and column — in a drain
    every run finishes the same way and nothing varies.

    The keys arrive as one parameter (three arrays on PostgreSQL, a JSON array on SQLite), so
    the SQL is the same whatever the number of runs (prepared once, fast.py), in the shape
    each planner turns into one primary-key probe per key, generic plans included: a join
    (`UPDATE … FROM unnest(…)`) on PostgreSQL, where `IN (SELECT … FROM unnest(…))` got a
    scan of runs from the generic plan; `id IN (…)` on SQLite, whose planner drives an
    UPDATE … FROM from the runs table instead."""
    fence_bump = {"fence": runs.c.fence + 1}
    if postgres:
        columns = [k for k, is_now in sig if not is_now]
        keys = (
            func.unnest(
                bindparam("ids", type_=ARRAY(String)),
                bindparam("tokens", type_=ARRAY(String)),
                bindparam("fences", type_=ARRAY(Integer)),
                *(bindparam(f"b_{k}", type_=ARRAY(_item_type(runs.c[k].type))) for k in columns),
            )
            .table_valued("id", "token", "fence", *columns)
            .render_derived(name="k")
        )
        # The rows are locked in id order first, by a statement of their own just before
        # (_guard_lock_statement).
        return (
            update(runs)
            .where(
                runs.c.id == keys.c.id,
                runs.c.claim_token == keys.c.token,
                runs.c.fence == keys.c.fence,
                # Not `status = 'running'`: from that the planner may prove the predicate of
                # a partial index of running runs (ix_runs_claim_token; until 0009 also one
                # by heartbeat) and bitmap-scan it, which keeps the entries of every run that
                # finished since the last vacuum (seen: 9,000 entries, 2 ms a cycle, growing
                # through a drain) instead of probing the primary key per key.
                func.coalesce(runs.c.status, "") == const("running"),
            )
            .values(**fence_bump, **_unnested_values(runs, sig, keys))
            .returning(runs.c.id, runs.c.cancel_requested_at)
        )
    each = func.json_each(bindparam("keys", type_=String)).table_valued("value")
    key_rows = select(
        func.json_extract(each.c.value, "$[0]"),
        func.json_extract(each.c.value, "$[1]"),
        func.json_extract(each.c.value, "$[2]"),
    )
    return (
        update(runs)
        .where(
            runs.c.id.in_(select(func.json_extract(each.c.value, "$[0]"))),
            tuple_(runs.c.id, runs.c.claim_token, runs.c.fence).in_(key_rows),
            runs.c.status == const("running"),
        )
        .values(**fence_bump, **_json_values(sig, varying))
        .returning(runs.c.id, runs.c.cancel_requested_at)
    )


def _guard_lock_statement() -> Any:
    """PostgreSQL: lock the guard's rows in id order, as the heartbeat does (claims.py), before
    the guard updates them: its join locks them in its plan's order — the table's physical
    order when the planner hashes the keys — and a heartbeat of the same runs then deadlocked
    it now and then (PostgreSQL breaks that only after deadlock_timeout, 1 s). A statement of
    its own, sent in the same round trip: as a CTE of the guard it made the guard's plan —
    made again at every execution — twice as costly (server log, a cycle of 8 runs: bind
    263–303 µs, against 130–136 µs for the guard alone plus 78–89 µs for this statement)."""
    return (
        select(runs.c.id)
        .where(runs.c.id == func.any(bindparam("ids", type_=ARRAY(String))))
        .order_by(runs.c.id)
        .with_for_update()
    )


def _json_safe(values: dict[str, Any]) -> bool:
    return all(type(v) is not float or math.isfinite(v) for v in values.values())


def _json_values(sig: tuple[tuple[str, bool], ...], varying: frozenset[str]) -> dict[str, Any]:
    """SQLite: SET clauses for the columns of `sig` (see _guard_statement): the database clock
    for NOW, the `vals` document for a varying column, else a parameter of its own."""
    vals = bindparam("vals", type_=String)
    return {
        k: db_now_ms()
        if is_now
        else func.json_extract(vals, const('$."') + runs.c.id + const(f'".{k}'))
        if k in varying
        else bindparam(f"b_{k}", type_=runs.c[k].type)
        for k, is_now in sig
    }


def _varying(batches: list[RunWrites], sig: tuple[tuple[str, bool], ...]) -> frozenset[str]:
    """The columns of `sig` whose values differ between the batches (1 and 1.0 and True are
    different values here: each is stored as its own type)."""
    first = batches[0].run
    return frozenset(
        k
        for k, is_now in sig
        if not is_now
        and any(type(b.run[k]) is not type(first[k]) or b.run[k] != first[k] for b in batches)
    )


def _guard_params(
    batches: list[RunWrites],
    postgres: bool,
    sig: tuple[tuple[str, bool], ...] = (),
    varying: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    # In id order: the order the heartbeat locks runs in (claims.py), so that the two never
    # wait for each other's rows.
    batches = sorted(batches, key=lambda b: b.run_id)
    if postgres:
        params = {
            "ids": [b.run_id for b in batches],
            "tokens": [b.token for b in batches],
            "fences": [b.fence for b in batches],
        }
        if sig:
            params.update(_arrays(runs, sig, [b.run for b in batches]))
        return params
    keys: dict[str, Any] = {"keys": json.dumps([[b.run_id, b.token, b.fence] for b in batches])}
    if sig:
        keys.update(
            (f"b_{k}", batches[0].run[k]) for k, is_now in sig if not is_now and k not in varying
        )
    if varying:
        keys["vals"] = json.dumps(
            {b.run_id: {k: _as_sent(runs, k, b.run[k]) for k in varying} for b in batches}
        )
    return keys


_AFTER_AMBIGUOUS = select(
    runs.c.id, runs.c.claim_token, runs.c.fence, runs.c.cancel_requested_at, runs.c.status
).where(runs.c.id.in_(bindparam("ids", expanding=True)))
_INSERT_ARTIFACTS = insert(artifacts).values(created_at=db_now_ms())
# Give the claim up at an approval gate, not counting it towards the claim limit (like a
# shutdown release); the status is settled after the batch's task writes (route_released).
_RELEASE = (
    update(runs)
    .where(runs.c.id == bindparam("b_id"))
    .values(
        status="waiting",
        claim_token=None,
        claimed_by=None,
        claimed_at=None,
        heartbeat_at=None,
        claim_count=case((runs.c.claim_count > 0, runs.c.claim_count - 1), else_=0),
    )
)


def _setters(table: Any, sig: tuple[tuple[str, bool], ...]) -> dict[str, Any]:
    return {
        key: db_now_ms() if is_now else bindparam(f"b_{key}", type_=table.c[key].type)
        for key, is_now in sig
    }


def _update_by_id(table: Any, sig: tuple[tuple[str, bool], ...]) -> Any:
    return update(table).where(table.c.id == bindparam("b_id")).values(**_setters(table, sig))


def _update_unnest(table: Any, sig: tuple[tuple[str, bool], ...]) -> Any:
    """PostgreSQL: the updates of many rows with the same columns in one statement, each
    column one array parameter (`b_id`, `b_{column}`), joined on the primary key: one
    execution per cycle instead of one per row (each is a bind, an executor start and a
    result on the server). JSON values travel as their text (`_arrays`)."""
    keys = [k for k, is_now in sig if not is_now]
    arrays = [bindparam("b_id", type_=ARRAY(String))] + [
        bindparam(f"b_{k}", type_=ARRAY(_item_type(table.c[k].type))) for k in keys
    ]
    rows = func.unnest(*arrays).table_valued("id", *keys).render_derived(name="v")
    return update(table).where(table.c.id == rows.c.id).values(**_unnested_values(table, sig, rows))


def _unnested_values(table: Any, sig: tuple[tuple[str, bool], ...], rows: Any) -> dict[str, Any]:
    """SET clauses taking each column of `sig` from the unnested arrays `rows` (JSON from its
    text) or, for NOW, from the database clock."""
    return {
        k: db_now_ms()
        if is_now
        else (cast(rows.c[k], table.c[k].type) if _is_json(table.c[k].type) else rows.c[k])
        for k, is_now in sig
    }


def _is_json(type_: Any) -> bool:
    return isinstance(type_, JSON)


def _item_type(type_: Any) -> Any:
    return Text() if _is_json(type_) else type_


def _by_column(
    table: Any, sig: tuple[tuple[str, bool], ...], params: list[dict[str, Any]]
) -> dict[str, list[Any]] | None:
    """The parameter sets of `_update_by_id` as the arrays of `_update_unnest`, or None when
    one row comes twice (a join updates it once, with either set)."""
    ids = [p["b_id"] for p in params]
    if len(set(ids)) != len(ids):
        return None
    return {"b_id": ids, **_arrays(table, sig, [_unprefixed(p) for p in params])}


def _unprefixed(params: dict[str, Any]) -> dict[str, Any]:
    return {k[2:]: v for k, v in params.items()}


def _arrays(
    table: Any, sig: tuple[tuple[str, bool], ...], rows: list[dict[str, Any]]
) -> dict[str, list[Any]]:
    """Per column of `sig` (NOW aside), the rows' values as one array parameter `b_{column}`,
    a JSON column's as its text (as `_as_sent`, decided once per column, not per value)."""
    out: dict[str, list[Any]] = {}
    for k, is_now in sig:
        if is_now:
            continue
        if _is_json(table.c[k].type):
            out[f"b_{k}"] = ["null" if row[k] is None else json.dumps(row[k]) for row in rows]
        else:
            out[f"b_{k}"] = [row[k] for row in rows]
    return out


def _as_sent(table: Any, column: str, value: Any) -> Any:
    """A value as the array and JSON-document parameters carry it: a JSON column's as its
    text, as SQLAlchemy's JSON type writes it (None included: JSON null)."""
    return json.dumps(value) if _is_json(table.c[column].type) else value


def _updates(
    table: Any,
    name: str,
    sig: tuple[tuple[str, bool], ...],
    params: list[dict[str, Any]],
    cache: PreparedCache,
    postgres: bool,
) -> tuple[Prepared, list[Any]]:
    arrays = _by_column(table, sig, params) if postgres and len(params) > 1 else None
    if arrays is not None:
        statement = cache.get((f"{name}_unnest", sig), partial(_update_unnest, table, sig))
        return statement, statement.bind(arrays)
    statement = cache.get((name, sig), partial(_update_by_id, table, sig))
    return statement, statement.bind_many(params)


def _insert_now(table: Any, sig: tuple[tuple[str, bool], ...]) -> Any:
    return insert(table).values(**{k: db_now_ms() for k, is_now in sig if is_now})


def _params(row_id: str, values: dict[str, Any]) -> dict[str, Any]:
    return {"b_id": row_id, **{f"b_{k}": v for k, v in values.items() if v is not NOW}}


def _guard(
    conn: Connection,
    batches: list[RunWrites],
    attempt: int,
    prepared: PreparedCache,
    sig: tuple[tuple[str, bool], ...] = (),
) -> dict[str, WriteOutcome]:
    """Fence the batches (see the module docstring); with `sig`, also write their runs' column
    changes (`_guard_statement`)."""
    postgres = conn.dialect.name == "postgresql"
    varying = _varying(batches, sig) if sig and not postgres else frozenset()
    guard = prepared.get(
        ("guard", postgres, sig, varying), partial(_guard_statement, postgres, sig, varying)
    )
    params = _guard_params(batches, postgres, sig, varying)
    if postgres:
        prepared.get(("guard_lock",), _guard_lock_statement).execute(conn, {"ids": params["ids"]})
    outcomes = {
        row.id: WriteOutcome(row.id, True, row.cancel_requested_at is not None)
        for row in guard.rows(conn, params)
    }
    missing = [b for b in batches if b.run_id not in outcomes]
    if missing and attempt > 1:
        # A retry after an ambiguous commit: `fence + 1` with our token means it landed.
        current = {
            r.id: r for r in conn.execute(_AFTER_AMBIGUOUS, {"ids": [b.run_id for b in missing]})
        }
        for b in missing:
            r = current.get(b.run_id)
            if r is not None and r.claim_token == b.token and r.fence == b.fence + 1:
                outcomes[b.run_id] = WriteOutcome(
                    b.run_id, True, r.cancel_requested_at is not None, landed_earlier=True
                )
            # A release gave the token up; its fence (≥ 1, where a reset or a claim sets 0)
            # stays until the next claim.
            elif (
                r is not None
                and b.release_to is not None
                and r.claim_token is None
                and r.fence == b.fence + 1
                and r.status in ("waiting", "queued")
            ):
                outcomes[b.run_id] = WriteOutcome(
                    b.run_id, True, landed_earlier=True, released_to=r.status
                )
    for b in missing:
        outcomes.setdefault(b.run_id, WriteOutcome(b.run_id, False))
    return outcomes


def _plan_writes(
    batches: list[RunWrites], cache: PreparedCache, postgres: bool, runs_written: bool = False
) -> tuple[list[tuple[Prepared, list[Any]]], list[dict[str, Any]]]:
    """The batches' run updates, task inserts and task updates as prepared statements with
    bound parameters, in the order they run, and the batches' events. Needs no connection:
    the dispatcher builds them before it takes the write lock (SQLite has one writer, so
    every microsecond inside the transaction is one the other runners wait)."""
    run_updates: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    task_inserts: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    task_updates: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    event_rows: list[dict[str, Any]] = []
    for batch in batches:
        if batch.run and not runs_written:  # unless the guard wrote them
            run_updates[_signature(batch.run)].append(_params(batch.run_id, batch.run))
        for row in batch.task_inserts:
            task_inserts[_signature(row)].append({k: v for k, v in row.items() if v is not NOW})
        # Updates are grouped by column set for executemany below, which would reorder two
        # updates of one task (`succeeded` landing before its own `running`): merge each
        # task's updates, in order, into one first.
        merged: dict[str, dict[str, Any]] = {}
        for task_id, values in batch.task_updates:
            merged.setdefault(task_id, {}).update(values)
        for task_id, values in merged.items():
            task_updates[_signature(values)].append(_params(task_id, values))
        event_rows.extend(batch.events)
    steps: list[tuple[Prepared, list[Any]]] = []
    for sig, params in run_updates.items():
        steps.append(_updates(runs, "run_update", sig, params, cache, postgres))
    for sig, rows in task_inserts.items():
        columns = [k for k, is_now in sig if not is_now]
        statement = cache.get(("task_insert", sig), partial(_insert_now, tasks, sig), columns)
        steps.append((statement, statement.bind_many(rows)))
    for sig, params in task_updates.items():
        steps.append(_updates(tasks, "task_update", sig, params, cache, postgres))
    return steps, event_rows


def _apply(
    conn: Connection,
    batches: list[RunWrites],
    attempt: int,
    cache: PreparedCache,
    events_out: list[dict[str, Any]] | None = None,
    outcomes: dict[str, WriteOutcome] | None = None,
    runs_written: bool = False,
) -> list[WriteOutcome]:
    """Apply the batches; returns their outcomes. With `events_out`, the batches' events are
    appended there instead of inserted (the caller writes them with its own, in one
    statement, later in the same transaction). `outcomes`: the guard's, if it ran already;
    `runs_written`: that guard also wrote the runs' column changes."""
    if outcomes is None:
        outcomes = _guard(conn, batches, attempt, cache)
    landing = [
        b for b in batches
        if outcomes[b.run_id].applied and not outcomes[b.run_id].landed_earlier
    ]  # fmt: skip
    steps, event_rows = _plan_writes(
        landing, cache, conn.dialect.name == "postgresql", runs_written
    )
    # The guard above holds the runs' rows (PostgreSQL) or the database (SQLite) until commit,
    # so these need no token condition of their own.
    for statement, bound in steps:
        statement.execute_bound(conn, bound)
    releases = [{"b_id": b.run_id} for b in landing if b.release_to is not None]
    if releases:
        conn.execute(_RELEASE, releases)
    artifact_rows = [row for b in landing for row in b.artifacts]
    if artifact_rows:
        conn.execute(_INSERT_ARTIFACTS, artifact_rows)
    if events_out is None or releases:
        # route_released writes events of its own, which must follow the batches' events.
        add_events(conn, event_rows, cache)
    else:
        events_out.extend(event_rows)
    for batch in landing:
        if batch.release_to is not None:
            outcomes[batch.run_id].released_to = route_released(conn, batch.run_id)
    return [outcomes[b.run_id] for b in batches]


class ExecutionVerbs(StoreBase):
    def apply_run_writes(
        self, batches: list[RunWrites], claim: ClaimRequest | None = None
    ) -> tuple[list[WriteOutcome], list[ClaimedRun]]:
        """Apply fenced batches and, in the same transaction, claim up to `claim.limit` runs
        (at most `claim.suspects` of them rescued ones, see claims.py). One batch per run: the
        outcomes are the run's, whichever claim's token a batch carries."""
        if len({b.run_id for b in batches}) != len(batches):
            raise ValueError("apply_run_writes takes one batch per run")
        claiming = (
            claim is not None and claim.limit > 0 and bool(claim.queues) and bool(claim.workflows)
        )

        def claim_statement_for(req: ClaimRequest, suspect: bool) -> Prepared:
            queues, workflows = tuple(req.queues), tuple(req.workflows)
            return self.prepared.get(
                ("claim", queues, workflows, suspect),
                lambda: claim_statement(
                    queues, workflows, db_now_ms(), self.is_postgres, suspect=suspect, record=True
                ),
            )

        # One writer at a time (SQLite, libSQL): an idle runner's poll must not take the write
        # lock only to find nothing. A read first; claim when there is something.
        if (
            not batches
            and claiming
            and claim is not None
            and self.is_sqlite
            and not self.read(lambda conn: any_claimable(conn, claim.queues, claim.workflows))
        ):
            return [], []

        # The common cycle (no artifacts, no approval releases): its writes are bound before
        # the transaction, on the bet that the guard lets every batch through.
        planned = None
        # When every run of the cycle changes the same columns (a drain: they all finish),
        # the guard writes them (see _guard_statement) — not through libSQL's remote driver,
        # which takes SQLAlchemy's own execution (fast.py) and has not been measured.
        sigs = {_signature(b.run) for b in batches} if not self.is_libsql else set()
        guard_sig = sigs.pop() if len(sigs) == 1 else ()
        if guard_sig and self.is_sqlite and not all(_json_safe(b.run) for b in batches):
            guard_sig = ()  # NaN has no JSON form: the run updates then go as they are
        if batches and not any(b.artifacts or b.release_to for b in batches):
            steps, event_rows = _plan_writes(
                batches, self.prepared, self.is_postgres, runs_written=bool(guard_sig)
            )
            if event_rows:
                steps.append(bind_events(event_rows, self.prepared, self.is_postgres))
            planned = steps

        def apply(conn: Connection, attempt: int, pending: list[dict[str, Any]]) -> Any:
            if planned is None:
                return _apply(conn, batches, attempt, self.prepared, pending)
            guarded = _guard(conn, batches, attempt, self.prepared, guard_sig)
            if not all(o.applied and not o.landed_earlier for o in guarded.values()):
                return _apply(
                    conn, batches, attempt, self.prepared, pending, guarded, bool(guard_sig)
                )
            for statement, bound in planned:
                statement.execute_bound(conn, bound)
            return [guarded[b.run_id] for b in batches]

        # The transaction returns what builds the claimed runs: their rows are decoded (JSON
        # columns) after the commit, outside the write lock.
        def tx(
            conn: Connection, attempt: int
        ) -> tuple[list[WriteOutcome], Callable[[], list[ClaimedRun]]]:
            outcomes: list[WriteOutcome] = []
            pending_events: list[dict[str, Any]] = []
            req = claim if claiming else None
            if req is not None and attempt > 1:
                earlier = earlier_claim(conn, req.token)
                if earlier:
                    if batches:
                        outcomes = _apply(conn, batches, attempt, self.prepared)
                    req.filled = True  # as far as we know: claim again next cycle
                    return outcomes, lambda: earlier
            params = {} if req is None else {"token": req.token, "runner_id": req.runner_id}
            # A suspect (see claims.py) takes one slot of the claim. With more than one free,
            # one is kept for it and the suspect claim runs with the rest; with one, it runs
            # first, since whether it found a suspect decides whether a fresh run fits.
            suspects_due = req is not None and req.suspects > 0
            suspects: Callable[[], list[Any]] = list
            if req is not None and suspects_due and req.limit == 1:
                found = claim_statement_for(req, True).start(
                    conn, {**params, "lim": 1}, decode=False
                )()
                suspects = lambda: found  # noqa: E731
            # The rest goes out in one round trip on PostgreSQL (fast.pipeline) unless a
            # batch needs SQLAlchemy's own execution (artifacts, releases, a retry's checks).
            simple = attempt == 1 and not any(b.artifacts or b.release_to for b in batches)
            with pipeline(conn) if simple else nullcontext():
                if batches:
                    outcomes = apply(conn, attempt, pending_events)
                add_events(conn, pending_events, self.prepared)
                if req is None:
                    if simple:
                        commit_in_pipeline(conn)
                    return outcomes, list
                if simple and not batches and self.is_postgres:
                    self.prepared.get(("lazy_commit",), lazy_commit_statement).execute(conn)
                fresh_limit = req.limit - (1 if suspects_due else 0)
                if suspects_due and req.limit > 1:
                    suspects = claim_statement_for(req, True).start(
                        conn, {**params, "lim": 1}, decode=False
                    )
                elif suspects_due:
                    fresh_limit = req.limit - len(suspects())
                fresh: Callable[[], list[Any]] = list
                if fresh_limit > 0:
                    fresh = claim_statement_for(req, False).start(
                        conn, {**params, "lim": fresh_limit}, decode=False
                    )
                if not self.is_postgres:  # PostgreSQL's claim statements wrote them
                    self.prepared.get(("claimed_events",), claimed_events_statement).execute(
                        conn, params
                    )
                tasks_statement = tasks_of_claim_statement(self.prepared, self.is_postgres)
                task_rows = tasks_statement.start(conn, {"token": req.token}, decode=False)
                if simple:
                    commit_in_pipeline(conn)
            fresh_rows, suspect_rows, raw_tasks = fresh(), suspects(), task_rows()
            req.filled = fresh_limit > 0 and len(fresh_rows) >= fresh_limit

            def build() -> list[ClaimedRun]:
                rows = [
                    *(claim_statement_for(req, True).decode(suspect_rows) if suspect_rows else ()),
                    *claim_statement_for(req, False).decode(fresh_rows),
                ]
                return claimed_runs(rows, [t._asdict() for t in tasks_statement.decode(raw_tasks)])

            return outcomes, build

        if not batches and not claiming:
            return [], []
        outcomes, build = self.write_attempts(tx)
        return outcomes, build()

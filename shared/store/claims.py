"""Claiming, heartbeating and releasing runs (DESIGN §5).

A claim is one atomic `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING`: on PostgreSQL the
inner SELECT takes `FOR UPDATE SKIP LOCKED` and the outer WHERE re-checks the state; on SQLite
the write transaction is `BEGIN IMMEDIATE`, so there is a single writer and no SKIP LOCKED (which
SQLAlchemy would silently drop there anyway). Every claim sets a fresh `claim_token`; every later
runner write is conditional on it.

Suspects: a queued run with claim_count >= SUSPECT_CLAIMS lost that many claims without
finishing — its runners died or went silent twice, maybe because of this very run (a stage that
crashes its process). A runner's dispatcher holds at most one suspect at a time, so once a run
that kills its runner is a suspect it takes down only non-suspects alongside it, each of which is
then at most a suspect itself and never shares a runner with it again: it alone reaches the
claim limit. A run orphaned once is not a suspect, so one crash's orphans are re-claimed at once,
all together. (Released runs give their claim back, so they are never suspects.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    String,
    any_,
    bindparam,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)

from ..clock import db_now_ms
from ..ids import new_id
from ..schema import events, runners, runs, tasks
from .base import StoreBase, add_events, const, now_expr
from .fast import Prepared, PreparedCache

_CLAIM_RETURNING = (
    runs.c.id,
    runs.c.workflow,
    runs.c.version,
    runs.c.kind,
    runs.c.config_snapshot,
    runs.c.inputs,
    runs.c.current_attempt,
    runs.c.claim_count,
    runs.c.cancel_requested_at,
    runs.c.metrics,
    runs.c.claim_token,
    # How long the run waited for this claim, by the database clock (the runner's metrics).
    (
        runs.c.claimed_at
        - case((runs.c.not_before > runs.c.created_at, runs.c.not_before), else_=runs.c.created_at)
    ).label("queued_ms"),
)


@dataclass
class ClaimedRun:
    id: str
    token: str
    workflow: str
    version: str
    kind: str
    definition: dict[str, Any]
    inputs: dict[str, Any]
    current_attempt: int
    claim_count: int
    cancel_requested: bool
    metrics: dict[str, Any]
    tasks: list[dict[str, Any]] = field(default_factory=list)
    fence: int = 0
    queued_ms: int | None = None


@dataclass
class HeartbeatResult:
    alive: dict[str, bool]  # run id → cancel requested
    finished: set[str]  # still ours, but no longer running (finished or released)
    lost: set[str]  # taken away: reaped, reset, or claimed by someone else
    deregister_requested: bool
    runner_known: bool
    db_now_ms: int


# A claim's token is looked up among running runs only: on PostgreSQL the token index holds
# just those (schema.py), so every lookup by token names the status too.
_RUNNING = runs.c.status == const("running")
_TASKS_OF_RUNS = (
    select(tasks)
    .where(tasks.c.run_id.in_(bindparam("ids", expanding=True)))
    .order_by(tasks.c.position, tasks.c.attempt)
)
# The same for the runs of one claim, which share its token: a statement whose SQL does not
# change with the number of runs (prepared once, see fast.py).
_CLAIM_RUN_IDS = select(runs.c.id).where(runs.c.claim_token == bindparam("token"), _RUNNING)
_TASKS_OF_CLAIM = (
    select(tasks)
    .where(tasks.c.run_id.in_(_CLAIM_RUN_IDS))
    .order_by(tasks.c.position, tasks.c.attempt)
)
# PostgreSQL: `= ANY((SELECT array_agg(id) …))` evaluates the ids once (an InitPlan) and probes
# the tasks index with them;
# as `IN (subquery)` the generic plan of the prepared statement may hash-join a scan of tasks
# (seen: 3-5 ms a claim with 20,000 runs, stale statistics after a burst of inserts).
_TASKS_OF_CLAIM_PG = (
    select(tasks)
    .where(
        tasks.c.run_id
        == any_(
            cast(
                select(func.array_agg(runs.c.id))
                .where(runs.c.claim_token == bindparam("token"), _RUNNING)
                .scalar_subquery(),
                ARRAY(String),
            )
        )
    )
    .order_by(tasks.c.position, tasks.c.attempt)
)


def _load_claimed(conn: Connection, rows: Sequence[Any]) -> list[ClaimedRun]:
    if not rows:
        return []
    ids = [r.id for r in rows]
    task_rows = [dict(t._mapping) for t in conn.execute(_TASKS_OF_RUNS, {"ids": ids})]
    return claimed_runs(rows, task_rows)


def tasks_of_claim_statement(prepared: PreparedCache, postgres: bool) -> Prepared:
    """The tasks of the runs a claim took (parameter `token`), in position order."""
    return prepared.get(
        ("tasks_of_claim", postgres), lambda: _TASKS_OF_CLAIM_PG if postgres else _TASKS_OF_CLAIM
    )


def claimed_runs(rows: Sequence[Any], task_rows: Iterable[dict[str, Any]]) -> list[ClaimedRun]:
    """Claimed runs from the claim's RETURNING rows and their tasks (in position order)."""
    by_run: dict[str, list[dict[str, Any]]] = {r.id: [] for r in rows}
    for t in task_rows:
        if t["run_id"] in by_run:
            by_run[t["run_id"]].append(t)
    claimed = [
        ClaimedRun(
            id=r.id,
            token=r.claim_token,
            workflow=r.workflow,
            version=r.version,
            kind=r.kind,
            definition=r.config_snapshot,
            inputs=r.inputs,
            current_attempt=r.current_attempt,
            claim_count=r.claim_count,
            cancel_requested=r.cancel_requested_at is not None,
            metrics=r.metrics or {},
            tasks=by_run[r.id],
            queued_ms=r.queued_ms,
        )
        for r in rows
    ]
    claimed.sort(key=lambda c: c.id)
    return claimed


_CLAIMED_EVENT_FIELDS = ["run_id", "type", "message", "data", "created_at"]


def _claimed_event(run_id: Any, claim_count: Any, build_object: Any) -> list[Any]:
    """The columns of a run.claimed event (`_CLAIMED_EVENT_FIELDS`) for a claimed row."""
    runner_id = bindparam("runner_id", type_=String)
    return [
        run_id,
        literal("run.claimed"),
        literal("claimed by ") + runner_id + literal(" (claim ") + cast(claim_count, String)
        + literal(")"),
        build_object(literal("runner_id"), runner_id, literal("claim_count"), claim_count),
        db_now_ms(),
    ]  # fmt: skip


def claimed_events_statement() -> Any:
    """SQLite: run.claimed for every run of one claim (parameters `token`, `runner_id`),
    written from the claimed rows themselves: the statement need not wait for the claim's
    result. (PostgreSQL's claim statement writes them itself: claim_statement, `record`.)"""
    source = (
        select(*_claimed_event(runs.c.id, runs.c.claim_count, func.json_object))
        .where(runs.c.claim_token == bindparam("token"), _RUNNING)
        .order_by(runs.c.id)
    )
    return insert(events).from_select(_CLAIMED_EVENT_FIELDS, source)


def lazy_commit_statement() -> Any:
    """PostgreSQL: this transaction's commit returns without waiting for its WAL flush (the
    WAL writer flushes it within ~3 x wal_writer_delay). Only for a transaction that claims and
    writes nothing else, where the flush was a fifth of the idle pickup: if the server crashes before
    the flush, the claim is lost, the run is queued again as it was, and the runner that
    started it finds its lease gone at the next heartbeat and stops (its writes are fenced) —
    the stage may start twice, as after any crash, and nothing is lost. A later durable commit
    flushes the WAL up to itself, so no completion outlives the claim it depends on."""
    return select(func.set_config("synchronous_commit", "off", True))


def claim_rows(conn: Connection, rows: Sequence[Any], runner_id: str) -> list[ClaimedRun]:
    """Record run.claimed for freshly claimed rows and load them with their tasks (the
    dispatcher's claim does both without waiting for the rows: its claim statement records
    the events on PostgreSQL, claimed_events_statement elsewhere; tasks_of_claim_statement)."""
    add_events(
        conn,
        [
            {
                "run_id": r.id,
                "type": "run.claimed",
                "message": f"claimed by {runner_id} (claim {r.claim_count})",
                "data": {"runner_id": runner_id, "claim_count": r.claim_count},
            }
            for r in rows
        ],
    )
    return _load_claimed(conn, rows)


def _claim_values(token: Any, runner_id: Any, now: Any) -> dict[str, Any]:
    return {
        "status": "running",
        "claim_token": token,
        "claimed_by": runner_id,
        "claimed_at": now,
        "heartbeat_at": now,
        "started_at": func.coalesce(runs.c.started_at, now),
        "claim_count": runs.c.claim_count + 1,
        "fence": 0,
    }


SUSPECT_CLAIMS = 2  # the index ix_runs_suspects (migration 0003) has this number in it


def _claimable(
    queues: list[str] | tuple[str, ...],
    workflows: list[str] | tuple[str, ...],
    now: Any,
    suspect: bool | None = None,
) -> list[Any]:
    conditions = [
        runs.c.status == const("queued"),
        # Each value its own parameter, not one expanding list: the statement's SQL then stays
        # the same from call to call (prepared once, see fast.py).
        runs.c.queue.in_([literal(q) for q in queues]),
        runs.c.workflow.in_([literal(w) for w in workflows]),
        or_(runs.c.not_before.is_(None), runs.c.not_before <= now),
    ]
    if suspect is True:
        conditions.append(runs.c.claim_count >= const(SUSPECT_CLAIMS))
    elif suspect is False:
        conditions.append(runs.c.claim_count < const(SUSPECT_CLAIMS))
    return conditions


def any_claimable(
    conn: Connection, queues: list[str] | tuple[str, ...], workflows: list[str] | tuple[str, ...]
) -> bool:
    """Whether a claim could find something now (a read; the claim itself re-checks)."""
    row = conn.execute(
        select(runs.c.id).where(*_claimable(queues, workflows, db_now_ms())).limit(1)
    ).first()
    return row is not None


def claim_statement(
    queues: list[str] | tuple[str, ...],
    workflows: list[str] | tuple[str, ...],
    now: Any,
    postgres: bool,
    suspect: bool | None = None,
    record: bool = False,
) -> Any:
    """The claim; parameters `token`, `runner_id` and `lim` are bound at execution.
    `suspect` True/False restricts it to rescued/fresh runs (None: any). With `record`, on
    PostgreSQL, the same statement writes the claimed runs' run.claimed events (a
    data-modifying CTE): one statement a claim less — the pickup's transaction had five —
    and no second lookup of the runs by token. Elsewhere `claimed_events_statement` does it."""
    pick = (
        select(runs.c.id)
        .where(
            *_claimable(queues, workflows, now, suspect),
            # A runner asked to deregister claims nothing more, even in the instant between
            # the heartbeat that brings it the intent and its dispatcher stopping.
            ~exists().where(
                runners.c.id == bindparam("runner_id"),
                runners.c.deregister_requested_at.is_not(None),
            ),
        )
        .order_by(runs.c.priority.desc(), runs.c.id)
        .limit(bindparam("lim"))
    )
    target: Any = pick.scalar_subquery()
    if postgres:
        # SKIP LOCKED: concurrent claimers pass over each other's rows instead of queueing.
        # In a materialized CTE: as a plain `IN (subquery)` PostgreSQL may run the subquery
        # once per candidate row, and with SKIP LOCKED each run can pick other rows, so one
        # claim took more than `limit` runs (seen: four runs for LIMIT 1).
        picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        target = select(picked.c.id)
        # No re-check of the status in the UPDATE: FOR UPDATE evaluates the pick's conditions
        # again on the newest version of a row changed since the statement's snapshot, and the
        # row stays locked until the UPDATE, so a picked run is queued when it is updated. A
        # re-check gave the planner a second way in: with stale statistics on a burst of new
        # runs (an estimate of 2 queued rows) it drove the UPDATE from the status index and
        # read every queued run to claim 16 (auto_explain: 2,216 rows, 1.19 ms; by primary key
        # 0.31 ms) — a claim that grew with the queue. SQLite never had it (the pick and the
        # update run under its one write lock).
    claim = (
        update(runs)
        .where(runs.c.id.in_(target))
        .values(**_claim_values(bindparam("token"), bindparam("runner_id"), now))
        .returning(*_CLAIM_RETURNING)
    )
    if not (postgres and record):
        return claim
    claimed = claim.cte("claimed")
    source = select(
        *_claimed_event(claimed.c.id, claimed.c.claim_count, func.json_build_object)
    ).order_by(claimed.c.id)
    recorded = insert(events).from_select(_CLAIMED_EVENT_FIELDS, source)
    return select(*claimed.c).add_cte(recorded.cte("recorded"))


def earlier_claim(conn: Connection, token: str) -> list[ClaimedRun]:
    """Runs an earlier attempt of this claim took, if its commit landed before an error."""
    rows = conn.execute(
        select(*_CLAIM_RETURNING).where(runs.c.claim_token == token, _RUNNING)
    ).all()
    return _load_claimed(conn, rows)


class ClaimVerbs(StoreBase):
    def claim_runs(
        self,
        runner_id: str,
        *,
        queues: list[str] | tuple[str, ...],
        workflows: list[str] | tuple[str, ...],
        limit: int,
        now_ms: int | None = None,
    ) -> list[ClaimedRun]:
        """Claim up to `limit` queued runs of the given queues and workflows, by priority then age."""
        if limit <= 0 or not queues or not workflows:
            return []
        token = new_id("clm")
        if now_ms is None:
            key = ("claim", tuple(queues), tuple(workflows))
            stmt = self.statements.get(
                key, lambda: claim_statement(queues, workflows, db_now_ms(), self.is_postgres)
            )
        else:
            stmt = claim_statement(queues, workflows, now_ms, self.is_postgres)
        params = {"token": token, "runner_id": runner_id, "lim": limit}

        def tx(conn: Connection, attempt: int) -> list[ClaimedRun]:
            if attempt > 1:
                # The previous attempt may have committed before failing: its runs carry our
                # token. Take them instead of claiming more (and leaving those to the reaper).
                earlier = earlier_claim(conn, token)
                if earlier:
                    return earlier
            return claim_rows(conn, conn.execute(stmt, params).all(), runner_id)

        return self.write_attempts(tx)

    def claim_run_by_id(
        self, runner_id: str, run_id: str, *, now_ms: int | None = None
    ) -> tuple[ClaimedRun | None, dict[str, Any] | None]:
        """Claim exactly this run if it is still queued and unclaimed.

        Returns (claimed, None), or (None, {status, claimed_by}) saying why not;
        (None, None) when there is no such run.
        """
        token = new_id("clm")
        now = now_expr(now_ms)
        stmt = (
            update(runs)
            .where(runs.c.id == run_id, runs.c.status == "queued")
            .values(**_claim_values(token, runner_id, now))
            .returning(*_CLAIM_RETURNING)
        )

        def tx(conn: Connection, attempt: int) -> tuple[ClaimedRun | None, dict[str, Any] | None]:
            if attempt > 1:
                earlier = earlier_claim(conn, token)
                if earlier:
                    return earlier[0], None
            rows = conn.execute(stmt).all()
            if rows:
                return claim_rows(conn, rows, runner_id)[0], None
            row = conn.execute(
                select(runs.c.status, runs.c.claimed_by).where(runs.c.id == run_id)
            ).first()
            if row is None:
                return None, None
            return None, {"status": row.status, "claimed_by": row.claimed_by}

        return self.write_attempts(tx)

    def heartbeat(
        self,
        runner_id: str,
        leases: dict[str, str],
        stats: dict[str, Any] | None = None,
    ) -> HeartbeatResult:
        """One round trip: refresh this runner and its runs, read cancel and deregister intents.

        `leases` maps run id → claim token of every run this runner believes it holds.
        """
        tokens = sorted(set(leases.values()))

        def tx(conn: Connection) -> HeartbeatResult:
            now = db_now_ms()
            values: dict[str, Any] = {"heartbeat_at": now}
            if stats is not None:
                values["stats"] = stats
            # A deregistration intent turns an active runner to draining in this same beat.
            values["status"] = case(
                (
                    (runners.c.status == "active") & runners.c.deregister_requested_at.is_not(None),
                    "draining",
                ),
                else_=runners.c.status,
            )
            me = conn.execute(
                update(runners)
                .where(runners.c.id == runner_id)
                .values(**values)
                .returning(runners.c.deregister_requested_at, runners.c.heartbeat_at)
            ).first()
            alive: dict[str, bool] = {}
            if tokens:
                held = [runs.c.claim_token.in_(tokens), runs.c.status == const("running")]
                if self.is_postgres:
                    # Lock the rows in id order first, the order the dispatcher's guard takes
                    # them in: updated in plan order, this beat and a concurrent flush of the
                    # same runs could each hold a row the other waits for (a deadlock, which
                    # PostgreSQL breaks only after deadlock_timeout, 1 s by default).
                    locked = select(runs.c.id).where(*held).order_by(runs.c.id).with_for_update()
                    cte = locked.cte("locked").prefix_with("MATERIALIZED")
                    held = [runs.c.id.in_(select(cte.c.id))]
                for row in conn.execute(
                    update(runs)
                    .where(*held)
                    .values(heartbeat_at=now)
                    .returning(runs.c.id, runs.c.claim_token, runs.c.cancel_requested_at)
                ):
                    if leases.get(row.id) == row.claim_token:
                        alive[row.id] = row.cancel_requested_at is not None
            finished: set[str] = set()
            lost: set[str] = set()
            missing = [run_id for run_id in leases if run_id not in alive]
            if missing:
                rows = {
                    r.id: r
                    for r in conn.execute(
                        select(runs.c.id, runs.c.claim_token, runs.c.status).where(
                            runs.c.id.in_(missing)
                        )
                    )
                }
                for run_id in missing:
                    r = rows.get(run_id)
                    if r is not None and r.claim_token == leases[run_id]:
                        finished.add(run_id)
                    else:  # reaped, reset, released, or claimed by another runner
                        lost.add(run_id)
            db_now = (
                me.heartbeat_at
                if me is not None
                else int(conn.execute(select(db_now_ms())).scalar_one())
            )
            return HeartbeatResult(
                alive=alive,
                finished=finished,
                lost=lost,
                deregister_requested=bool(me is not None and me.deregister_requested_at),
                runner_known=me is not None,
                db_now_ms=db_now,
            )

        return self.write(tx)

    def release_runs(self, runner_id: str, leases: dict[str, str], reason: str) -> list[str]:
        """Give runs back to the queue (shutdown, approval wait): not a failure, and the claim
        does not count towards the claim limit. Fenced by the claim token."""
        if not leases:
            return []

        def tx(conn: Connection) -> list[str]:
            released: list[str] = []
            for run_id, token in sorted(leases.items()):
                row = conn.execute(
                    update(runs)
                    .where(
                        runs.c.id == run_id,
                        runs.c.claim_token == token,
                        runs.c.status == "running",
                    )
                    .values(
                        status="queued",
                        claim_token=None,
                        claimed_by=None,
                        claimed_at=None,
                        heartbeat_at=None,
                        claim_count=case((runs.c.claim_count > 0, runs.c.claim_count - 1), else_=0),
                    )
                    .returning(runs.c.id)
                ).first()
                if row is None:
                    continue
                conn.execute(
                    update(tasks)
                    .where(tasks.c.run_id == run_id, tasks.c.status == "running")
                    .values(
                        status="created",
                        started_at=None,
                        attempt=case((tasks.c.attempt > 0, tasks.c.attempt - 1), else_=0),
                    )
                )
                released.append(run_id)
            add_events(
                conn,
                [
                    {
                        "run_id": run_id,
                        "type": "run.released",
                        "message": f"released by {runner_id}: {reason}",
                        "data": {"runner_id": runner_id, "reason": reason},
                    }
                    for run_id in released
                ],
            )
            return released

        return self.write(tx)

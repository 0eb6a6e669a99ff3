"""Stalled-run rescue (DESIGN §4, §5): put runs whose runner stopped heartbeating back in the
queue, or fail them once they have been claimed `max_claims` times.

Every rescue is one conditional UPDATE per run (`claim_token` and `status` unchanged since the
candidate was read, heartbeat still stale), so many reapers may run at once and a completion
that commits between the read and the write wins: the finished run stays finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, case, column, func, literal, select, table, text, update

from ..clock import db_now_ms
from ..db import RUNNER_SESSION_PREFIX, stuck_after_s
from ..schema import runners, runs, tasks
from .base import StoreBase, add_events, const, now_expr


def _rescue(
    conn: Connection,
    cand: Any,
    *,
    max_claims: int,
    why: str,
    stale_before: Any | None,
) -> dict[str, Any] | None:
    now = db_now_ms()
    exhausted = runs.c.claim_count >= max_claims
    message = (
        f"{why}; claimed {cand.claim_count} time(s), the limit is {max_claims}, so the run fails"
    )
    conditions = [
        runs.c.id == cand.id,
        runs.c.claim_token == cand.claim_token,
        runs.c.status == "running",
    ]
    if stale_before is not None:
        conditions.append(runs.c.heartbeat_at < stale_before)
    row = conn.execute(
        update(runs)
        .where(*conditions)
        .values(
            status=case((exhausted, "failed"), else_="queued"),
            claim_token=None,
            claimed_by=None,
            claimed_at=None,
            heartbeat_at=None,
            completed_at=case((exhausted, now), else_=None),
            error_message=case((exhausted, message), else_=runs.c.error_message),
        )
        .returning(runs.c.status, runs.c.claim_count)
    ).first()
    if row is None:
        return None
    if row.status == "queued":
        conn.execute(
            update(tasks)
            .where(tasks.c.run_id == cand.id, tasks.c.status == "running")
            .values(status="created")
        )
    else:
        conn.execute(
            update(tasks)
            .where(tasks.c.run_id == cand.id, tasks.c.status == "running")
            .values(status="failed", error=why, completed_at=now)
        )
        conn.execute(
            update(tasks)
            .where(tasks.c.run_id == cand.id, tasks.c.status.in_(("created", "waiting")))
            .values(status="skipped", completed_at=now)
        )
    data = {
        "claimed_by": cand.claimed_by,
        "claim_count": row.claim_count,
        "max_claims": max_claims,
        "reason": why,
    }
    follow = (
        {"type": "run.requeued", "message": f"back in the queue: {why}"}
        if row.status == "queued"
        else {"type": "run.failed", "message": message}
    )
    add_events(
        conn,
        [
            {"run_id": cand.id, "type": "run.stalled", "message": why, "data": data},
            {"run_id": cand.id, **follow, "data": data},
        ],
    )
    return {"run_id": cand.id, "status": row.status, "claimed_by": cand.claimed_by, "reason": why}


_activity = table(
    "pg_stat_activity",
    column("pid"),
    column("application_name"),
    column("xact_start"),
    column("state_change"),
    column("state"),
    column("wait_event"),
    column("query"),
)


class ReaperVerbs(StoreBase):
    def end_stuck_sessions(self, *, now_ms: int | None = None) -> list[dict[str, Any]]:
        """PostgreSQL: end the database sessions of stalled runners that have sat inside one
        transaction, without progress, for longer than a transaction of ours ever takes.

        A runner frozen (SIGSTOP, a paused VM) halfway through sending a pipeline leaves its
        session waiting for the rest, holding the row locks of the runs it was writing: the
        server's idle-in-transaction timeout does not cover a session that never got its Sync,
        and the rescue of those runs would wait on the locks for as long as the freeze lasts.
        Ending the session rolls its transaction back; the runner, if it wakes, reconnects and
        finds its claims revoked (its writes are fenced). Elsewhere a no-op: SQLite has no
        sessions to end (tests freeze runners outside write transactions; docs/many-hosts.md).
        Returns what was ended: pid, runner_id, seconds stuck, query."""
        if not self.is_postgres:
            return []
        stall = self.stall_after_ms
        stuck_s = stuck_after_s(stall / 1000)
        prefix = literal(RUNNER_SESSION_PREFIX)
        stale_runners = select(prefix + runs.c.claimed_by).where(
            runs.c.status == const("running"), runs.c.heartbeat_at < now_expr(now_ms) - stall
        )
        since = func.clock_timestamp() - _activity.c.state_change
        query = select(
            _activity.c.pid,
            func.substr(_activity.c.application_name, len(RUNNER_SESSION_PREFIX) + 1).label(
                "runner_id"
            ),
            func.extract("epoch", since).label("stuck_s"),
            func.left(_activity.c.query, 200).label("query"),
            func.pg_terminate_backend(_activity.c.pid).label("ended"),
        ).where(
            _activity.c.application_name.startswith(RUNNER_SESSION_PREFIX, autoescape=True),
            _activity.c.pid != func.pg_backend_pid(),
            _activity.c.xact_start.is_not(None),
            since > func.make_interval(0, 0, 0, 0, 0, 0, stuck_s),
            _activity.c.application_name.in_(stale_runners),
        )
        rows = self.read(lambda conn: conn.execute(query).all())
        return [
            {"pid": r.pid, "runner_id": r.runner_id, "stuck_s": float(r.stuck_s),
             "query": r.query, "ended": bool(r.ended)}
            for r in rows
        ]  # fmt: skip

    def reap_stalled(self, *, now_ms: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Rescue running runs whose heartbeat is older than stall_after (by the DB clock)."""
        stall = self.stall_after_ms
        max_claims = self.max_claims

        def any_stale(conn: Connection) -> bool:
            threshold = now_expr(now_ms) - stall
            row = conn.execute(
                select(runs.c.id)
                .where(runs.c.status == const("running"), runs.c.heartbeat_at < threshold)
                .limit(1)
            ).first()
            return row is not None

        # Almost always there is nothing to rescue: find that out with a read, and take the
        # write lock (SQLite, libSQL: the only one) only when there is.
        if not self.read(any_stale):
            return []

        def tx(conn: Connection) -> list[dict[str, Any]]:
            if self.is_postgres:
                # A stalled runner may be frozen holding its run's row lock; wait briefly, then
                # give up (55P03, retried) rather than hang the reaper behind it.
                conn.execute(text("SET LOCAL lock_timeout = '2s'"))
            threshold = now_expr(now_ms) - stall
            cands = conn.execute(
                select(
                    runs.c.id,
                    runs.c.claim_token,
                    runs.c.claimed_by,
                    runs.c.claim_count,
                    runs.c.heartbeat_at,
                    db_now_ms().label("db_now"),
                )
                .where(runs.c.status == const("running"), runs.c.heartbeat_at < threshold)
                .order_by(runs.c.heartbeat_at)
                .limit(limit)
            ).all()
            done = []
            for cand in cands:
                now = now_ms if now_ms is not None else cand.db_now
                age = (now - cand.heartbeat_at) / 1000
                why = (
                    f"runner {cand.claimed_by} stopped heartbeating "
                    f"({age:.0f}s ago, stall threshold {stall / 1000:g}s)"
                )
                result = _rescue(conn, cand, max_claims=max_claims, why=why, stale_before=threshold)
                if result is not None:
                    done.append(result)
            return done

        return self.write(tx)

    def rescue_from_dead_runners(
        self, hostname: str, is_dead: Callable[[str, int, int, dict[str, Any]], bool]
    ) -> list[dict[str, Any]]:
        """The same-host fast path: runs held by a runner on `hostname` whose process
        (pid and create time) is gone are rescued at once, without waiting for stall_after."""
        max_claims = self.max_claims

        def find(conn: Connection) -> list[Any]:
            return list(
                conn.execute(
                    select(
                        runners.c.id, runners.c.pid, runners.c.pid_started_at, runners.c.labels
                    ).where(runners.c.hostname == hostname, runners.c.status != "stopped")
                ).all()
            )

        dead = [
            r.id for r in self.read(find) if is_dead(r.id, r.pid, r.pid_started_at, r.labels or {})
        ]
        if not dead:
            return []

        def tx(conn: Connection) -> list[dict[str, Any]]:
            conn.execute(
                update(runners)
                .where(runners.c.id.in_(dead), runners.c.status != "stopped")
                .values(status="stopped", stopped_at=db_now_ms())
            )
            cands = conn.execute(
                select(runs.c.id, runs.c.claim_token, runs.c.claimed_by, runs.c.claim_count).where(
                    runs.c.status == "running", runs.c.claimed_by.in_(dead)
                )
            ).all()
            done = []
            for cand in cands:
                why = f"runner {cand.claimed_by} on {hostname} is gone (its process exited)"
                result = _rescue(conn, cand, max_claims=max_claims, why=why, stale_before=None)
                if result is not None:
                    done.append(result)
            return done

        return self.write(tx)

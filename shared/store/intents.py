"""Pieces the control verbs (reset, rerun, approvals, dispatch) share: locking a run for an
intent, the columns of a run that goes back to the queue, and of a task that is reset."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from ..errors import NotFound
from ..schema import runs, tasks


def lock_run(conn: Connection, run_id: str, *, lock: bool = True) -> Any:
    """Read the run for an intent that rewrites it and its tasks.

    PostgreSQL: FOR UPDATE takes the row lock a runner's fenced batch also takes first (its
    guarded UPDATE of the run), so the tasks read next cannot change under us. SQLite (which
    drops FOR UPDATE): write transactions are BEGIN IMMEDIATE, a single writer, which gives
    the same guarantee. `lock=False` for previews, which change nothing.
    """
    query = select(runs).where(runs.c.id == run_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound(f"no run {run_id}")
    return row


def run_tasks(conn: Connection, run_id: str) -> list[Any]:
    return list(
        conn.execute(
            select(tasks)
            .where(tasks.c.run_id == run_id)
            .order_by(tasks.c.position, tasks.c.attempt)
        )
    )


def back_to_queue(*, dispatch: bool = True) -> dict[str, Any]:
    """Run columns for a run that is given back to the runners: queued (or, not dispatched,
    `waiting` — held, not claimable), with no claim, so a new claim gets a new token and the
    old runner's fenced writes are all rejected. The claim budget starts again."""
    return {
        "status": "queued" if dispatch else "waiting",
        "claim_token": None,
        "claimed_by": None,
        "claimed_at": None,
        "heartbeat_at": None,
        "fence": 0,
        "claim_count": 0,
        "completed_at": None,
        "error_message": None,
        "output": None,
        "final_score": None,
        "current_stage": None,
        "cancel_requested_at": None,
        "cancel_reason": None,
    }


# A task that will run again: no result, no approval (a gate asks again for each execution).
# `attempt` is kept, so attempts (events, artifacts) stay distinguishable across executions.
RESET_TASK: dict[str, Any] = {
    "status": "created",
    "output": None,
    "error": None,
    "started_at": None,
    "completed_at": None,
    "approval_decision": None,
    "approval_by": None,
    "approval_comment": None,
    "decided_at": None,
}


def task_brief(t: Any) -> dict[str, Any]:
    return {"id": t.id, "step": t.step, "attempt": t.attempt, "status": t.status}


def loop_label(t: Any) -> str:
    """A loop row's name in messages: `evaluate#2`."""
    return f"{t.step}#{t.attempt}"

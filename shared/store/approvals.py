"""Approval gates (a graph step with `approval: {prompt}`).

The runner that reaches a gated step marks its task `waiting` and, once nothing else can run,
releases the run to status `waiting` (not claimable; see `release_for_approval` in
execution.py). A decision is an intent on the task (`approval_decision`): it makes the run
claimable again, and the runner that claims it next carries it out — approve: the step runs;
reject: the step fails ("rejected by …") and its dependents are skipped. A decision that
arrives while the run is still running (other branches busy) is picked up when that runner
releases the run: the release then sends it to the queue instead of to `waiting`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from ..clock import db_now_ms
from ..errors import Conflict, InvalidInput
from ..schema import APPROVAL_DECISIONS, runs, tasks
from .base import Actor, StoreBase, add_audit, add_events
from .detail import run_detail
from .intents import lock_run, run_tasks


class ApprovalVerbs(StoreBase):
    def decide_approval(
        self,
        run_id: str,
        step: str,
        decision: str,
        comment: str | None = None,
        actor: Actor | None = None,
    ) -> dict[str, Any]:
        """Approve or reject the gate of `step`; answers the run's detail."""
        if decision not in APPROVAL_DECISIONS:
            raise InvalidInput("decision must be approve or reject", field="decision")
        actor = actor or Actor()

        def tx(conn: Connection) -> dict[str, Any]:
            run = lock_run(conn, run_id)
            rows = [t for t in run_tasks(conn, run_id) if t.step == step]
            if not rows:
                raise InvalidInput(f"run {run_id} has no step {step!r}", field="step")
            task = rows[-1]
            if task.status != "waiting":
                raise Conflict(
                    f"step {step!r} is not waiting for approval (it is {task.status})",
                    field="step",
                    status=task.status,
                )
            if task.approval_decision is not None:
                raise Conflict(
                    f"step {step!r} was already {task.approval_decision}d by {task.approval_by}",
                    field="step",
                    decision=task.approval_decision,
                )
            conn.execute(
                update(tasks)
                .where(tasks.c.id == task.id)
                .values(
                    approval_decision=decision,
                    approval_by=actor.person,
                    approval_comment=comment,
                    decided_at=db_now_ms(),
                )
            )
            requeued = run.status == "waiting"
            if requeued:
                conn.execute(update(runs).where(runs.c.id == run_id).values(status="queued"))
            past = "approved" if decision == "approve" else "rejected"
            add_events(
                conn,
                [
                    {
                        "run_id": run_id,
                        "task_id": task.id,
                        "type": f"approval.{past}",
                        "stage": step,
                        "message": f"{step} {past} by {actor.person}"
                        + (f": {comment}" if comment else ""),
                        "data": {
                            "by": actor.person,
                            "decision": decision,
                            "comment": comment,
                            "requeued": requeued,
                        },
                    }
                ],
            )
            add_audit(
                conn, actor, f"run.{decision}", run_id, comment, {"step": step, "task_id": task.id}
            )
            return run_detail(conn, run_id, self.stall_after_ms)

        return self.write(tx)


def route_released(conn: Connection, run_id: str) -> str:
    """Where a run the runner released for approval goes: `waiting` while every waiting gate
    is undecided, else back to the queue (a decision arrived, or nothing waits any more).
    Called inside the runner's fenced batch, after its task writes."""
    gates = conn.execute(
        select(tasks.c.step, tasks.c.approval_decision).where(
            tasks.c.run_id == run_id, tasks.c.status == "waiting"
        )
    ).all()
    hold = bool(gates) and all(g.approval_decision is None for g in gates)
    status = "waiting" if hold else "queued"
    conn.execute(update(runs).where(runs.c.id == run_id).values(status=status))
    names = [g.step for g in gates]
    add_events(
        conn,
        [
            {
                "run_id": run_id,
                "type": "run.waiting" if hold else "run.requeued",
                "message": f"waiting for approval of {', '.join(names)}"
                if hold
                else "back in the queue: an approval decision arrived while it ran",
                "data": {"gates": names},
            }
        ],
    )
    return status

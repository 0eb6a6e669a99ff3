"""Reset: put a run back in the queue, taking it away from whoever holds it (DESIGN §4, §5).

Works in every state, including a running run whose runner hangs or died: the runs row is
updated first with no claim token, so the old runner's later fenced writes (events, tasks,
status, heartbeats, release) all match zero rows and are dropped; it sees the lease lost and
stops. Which tasks run again:

- graph, `to_step`: that step and every step downstream of it (whatever their state); earlier
  results are kept. Tasks left `running` elsewhere are reset too (no one runs them any more).
- graph, no `to_step`: every task that did not succeed ("resume where it stopped"); with
  `clear_results`, every task (start over).
- loop, `to_step` = `produce`, `evaluate`, `revise` or `stage#N` (attempt N; default: the
  latest attempt that has that stage): that row is reset and every later row is deleted, so
  the loop continues from that point. No `to_step`: rows that did not succeed are reset; with
  `clear_results`, every row is deleted and the loop starts again at attempt 1.

Reset tasks lose their output, error and approval decision. `clear_results` also deletes the
artifacts of the reset tasks (all of the run's artifacts, and its metrics, when there is no
`to_step`); without it artifacts stay as history, labelled with their attempt.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, select, update

from ..errors import Conflict, InvalidInput
from ..schema import TERMINAL_RUN_STATUSES, artifacts, runs, tasks
from ..workflows import workflow_from_definition
from ..workflows.model import LOOP_STAGES
from .base import Actor, StoreBase, add_audit, add_events
from .detail import run_detail
from .intents import RESET_TASK, back_to_queue, lock_run, loop_label, run_tasks, task_brief


class ResetVerbs(StoreBase):
    def reset_run(
        self,
        run_id: str,
        *,
        to_step: str | None = None,
        clear_results: bool = False,
        reason: str | None = None,
        actor: Actor | None = None,
    ) -> dict[str, Any]:
        """Reset a run (see the module docstring). Returns the run's detail plus `cleared`."""

        def tx(conn: Connection) -> dict[str, Any]:
            run = lock_run(conn, run_id)
            rows = run_tasks(conn, run_id)
            if run.kind == "loop":
                reset, dropped = _loop_scope(rows, to_step, clear_results)
            else:
                reset, dropped = _graph_scope(run, rows, to_step, clear_results)
            if run.status in TERMINAL_RUN_STATUSES and not reset and not dropped and rows:
                raise Conflict(
                    f"nothing to reset: every task of run {run_id} succeeded; pass to_step to "
                    "run a step again, or clear_results to start over",
                    status=run.status,
                )
            whole = clear_results and to_step is None
            values = back_to_queue()
            if whole:
                values.update(metrics={}, current_attempt=0)
            # The runs row first: from here on the old claim's writes are rejected.
            conn.execute(update(runs).where(runs.c.id == run_id).values(**values))
            if reset:
                conn.execute(
                    update(tasks).where(tasks.c.id.in_([t.id for t in reset])).values(**RESET_TASK)
                )
            if dropped:
                conn.execute(delete(tasks).where(tasks.c.id.in_([t.id for t in dropped])))
            removed: list[str] = []
            if clear_results:
                gone = artifacts.c.run_id == run_id
                if not whole:
                    gone = gone & artifacts.c.task_id.in_([t.id for t in reset + dropped])
                removed = list(conn.execute(select(artifacts.c.id).where(gone)).scalars())
                if removed:
                    conn.execute(delete(artifacts).where(gone))
            cleared = {
                "tasks": [{**task_brief(t), "action": "reset"} for t in reset]
                + [{**task_brief(t), "action": "deleted"} for t in dropped],
                "outputs": [_name(run, t) for t in reset + dropped if t.output is not None],
                "approvals": [_name(run, t) for t in reset if t.approval_decision is not None],
                "artifacts": removed,
                "claim": (
                    {"runner_id": run.claimed_by, "claimed_at": run.claimed_at}
                    if run.status == "running"
                    else None
                ),
                "cancel_request": run.cancel_requested_at is not None,
                "metrics": whole and bool(run.metrics),
            }
            who = (actor or Actor()).name
            what = f"from {to_step}" if to_step else ("everything" if whole else "unfinished work")
            add_events(
                conn,
                [
                    {
                        "run_id": run_id,
                        "type": "run.reset",
                        "message": f"reset ({what}) by {who}"
                        + (f" while {run.status} on {run.claimed_by}" if cleared["claim"] else "")
                        + (f": {reason}" if reason else ""),
                        "data": {
                            "by": who,
                            "reason": reason,
                            "to_step": to_step,
                            "clear_results": clear_results,
                            "previous_status": run.status,
                            "cleared": cleared,
                        },
                    }
                ],
            )
            add_audit(
                conn,
                actor,
                "run.reset",
                run_id,
                reason,
                {
                    "to_step": to_step,
                    "clear_results": clear_results,
                    "previous_status": run.status,
                    "claimed_by": run.claimed_by if cleared["claim"] else None,
                    "tasks": [_name(run, t) for t in reset + dropped],
                },
            )
            out = run_detail(conn, run_id, self.stall_after_ms)
            out["cleared"] = cleared
            return out

        return self.write(tx)


def _name(run: Any, t: Any) -> str:
    return loop_label(t) if run.kind == "loop" else str(t.step)


def _graph_scope(
    run: Any, rows: list[Any], to_step: str | None, clear_results: bool
) -> tuple[list[Any], list[Any]]:
    if to_step is None:
        return [t for t in rows if clear_results or t.status != "succeeded"], []
    wf = workflow_from_definition(run.config_snapshot)
    assert wf.steps is not None
    if to_step not in wf.steps:
        raise InvalidInput(
            f"run {run.id} has no step {to_step!r} (steps: {', '.join(wf.step_order())})",
            field="to_step",
        )
    steps = set(wf.downstream_of(to_step))
    return [t for t in rows if t.step in steps or t.status == "running"], []


def _loop_scope(
    rows: list[Any], to_step: str | None, clear_results: bool
) -> tuple[list[Any], list[Any]]:
    chain = sorted(rows, key=lambda t: t.position)
    if to_step is None:
        if clear_results:
            return [], chain
        return [t for t in chain if t.status != "succeeded"], []
    target = _loop_target(chain, to_step)
    if target is None:  # produce on a loop that has not produced yet: nothing to keep or drop
        return [], []
    index = chain.index(target)
    return [target], chain[index + 1 :]


def _loop_target(chain: list[Any], to_step: str) -> Any:
    stage, sep, number = to_step.partition("#")
    if stage not in LOOP_STAGES or (sep and not number.isdigit()):
        raise InvalidInput(
            f"a loop's to_step is produce, evaluate or revise, optionally with #attempt "
            f"(e.g. evaluate#2); got {to_step!r}",
            field="to_step",
        )
    attempt = int(number) if sep else None
    if stage == "produce":
        if attempt not in (None, 1):
            raise InvalidInput("produce runs on attempt 1 only", field="to_step")
        return next((t for t in chain if t.step == "produce"), None)
    found = [t for t in chain if t.step == stage and (attempt is None or t.attempt == attempt)]
    if not found:
        have = ", ".join(loop_label(t) for t in chain) or "none yet"
        raise InvalidInput(
            f"the loop has no {to_step} row to reset from (rows: {have})", field="to_step"
        )
    return found[-1]

"""Partial re-run of a finished run, its preview, and dispatching a held run (DESIGN §4, §7).

Rules: the run must be finished (succeeded, failed or cancelled) with no active task; only
failed or cancelled tasks may be chosen (by id or step; none chosen means all of them). The
chosen tasks and the skipped or cancelled tasks downstream of them go back to `created`; every
other task keeps its status and output, and the runner that claims the run next passes the
kept outputs on. The run goes back to the queue — or, with `dispatch=False`, to `waiting`
(held: not claimable) until `dispatch_run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, update

from ..clock import db_now_ms
from ..errors import Conflict, InvalidInput
from ..schema import TERMINAL_RUN_STATUSES, runs, tasks
from ..workflows import workflow_from_definition
from .base import Actor, StoreBase, add_audit, add_events
from .detail import run_detail
from .intents import RESET_TASK, back_to_queue, lock_run, loop_label, run_tasks, task_brief

RERUNNABLE = ("failed", "cancelled")


def _entry(run: Any, t: Any, **extra: Any) -> dict[str, Any]:
    name = loop_label(t) if run.kind == "loop" else t.step
    return {**task_brief(t), "name": name, **extra}


def plan_rerun(
    run: Any, rows: list[Any], task_ids: Sequence[str] = (), steps: Sequence[str] = ()
) -> dict[str, Any]:
    """Which tasks a re-run resets and which results it reuses; raises what rerun would."""
    if run.status not in TERMINAL_RUN_STATUSES:
        raise Conflict(
            f"run {run.id} is {run.status}: only a finished run can be re-run "
            "(cancel it first, or reset it)",
            status=run.status,
        )
    active = [t for t in rows if t.status in ("running", "waiting")]
    if active:
        raise Conflict(
            f"run {run.id} has active tasks: {', '.join(t.step for t in active)}",
            offending=[task_brief(t) for t in active],
        )
    by_id = {t.id: t for t in rows}
    chosen: dict[str, Any] = {}
    unknown_ids = [i for i in task_ids if i not in by_id]
    if unknown_ids:
        raise InvalidInput(
            f"run {run.id} has no task {', '.join(unknown_ids)}",
            field="task_ids",
            offending=unknown_ids,
        )
    for i in task_ids:
        chosen[i] = by_id[i]
    known_steps = {t.step for t in rows}
    unknown_steps = [s for s in steps if s not in known_steps]
    if unknown_steps:
        raise InvalidInput(
            f"run {run.id} has no step {', '.join(unknown_steps)} "
            f"(steps: {', '.join(sorted(known_steps)) or 'none'})",
            field="steps",
            offending=unknown_steps,
        )
    for step in steps:
        # A loop has a row per attempt: the step means its latest row.
        latest = [t for t in rows if t.step == step][-1]
        chosen[latest.id] = latest
    if not task_ids and not steps:
        chosen = {t.id: t for t in rows if t.status in RERUNNABLE}
        if not chosen:
            raise Conflict(
                f"run {run.id} has no failed or cancelled task to re-run; "
                "reset it (to_step) to run succeeded steps again",
                status=run.status,
            )
    bad = [t for t in chosen.values() if t.status not in RERUNNABLE]
    if bad:
        why = "; ".join(
            f"{_entry(run, t)['name']} is {t.status}"
            + (" (it re-runs with the failed task it depends on)" if t.status == "skipped" else "")
            for t in bad
        )
        raise Conflict(
            f"only failed or cancelled tasks can be re-run: {why}",
            field="task_ids" if task_ids else "steps",
            offending=[task_brief(t) for t in bad],
        )

    rerun = [_entry(run, t, why="chosen") for t in rows if t.id in chosen]
    followers: dict[str, str] = {}
    if run.kind == "steps":
        wf = workflow_from_definition(run.config_snapshot)
        assert wf.steps is not None
        by_step = {t.step: t for t in rows}
        resetting = {t.step for t in chosen.values()}
        for step in wf.step_order():  # topological: a follower's needs come first
            task = by_step.get(step)
            if task is None or step in resetting or task.status not in ("skipped", "cancelled"):
                continue
            after = [n for n in wf.steps[step].needs if n in resetting]
            if after:
                resetting.add(step)
                followers[task.id] = after[0]
        rerun += [
            _entry(run, t, why=f"{t.status} after {followers[t.id]}")
            for t in rows
            if t.id in followers
        ]
    reset_ids = set(chosen) | set(followers)
    reset_steps = {t.step for t in rows if t.id in reset_ids}
    reused, untouched = [], []
    for t in rows:
        if t.id in reset_ids:
            continue
        if t.status == "succeeded":
            needed_by = []
            if run.kind == "steps":
                needed_by = sorted(s for s in reset_steps if t.step in _needs(run, s))
            reused.append(_entry(run, t, needed_by=needed_by))
        else:
            untouched.append(_entry(run, t))
    return {
        "run_id": run.id,
        "status": run.status,
        "rerun": rerun,
        "reused": reused,
        "untouched": untouched,
    }


def _needs(run: Any, step: str) -> list[str]:
    stage = (run.config_snapshot.get("steps") or {}).get(step) or {}
    return list(stage.get("needs") or [])


class RerunVerbs(StoreBase):
    def rerun_plan(
        self, run_id: str, *, task_ids: Sequence[str] = (), steps: Sequence[str] = ()
    ) -> dict[str, Any]:
        def tx(conn: Connection) -> dict[str, Any]:
            run = lock_run(conn, run_id, lock=False)
            return plan_rerun(run, run_tasks(conn, run_id), task_ids, steps)

        return self.read(tx)

    def rerun_run(
        self,
        run_id: str,
        *,
        task_ids: Sequence[str] = (),
        steps: Sequence[str] = (),
        reason: str | None = None,
        actor: Actor | None = None,
        dispatch: bool = True,
    ) -> dict[str, Any]:
        """Re-run failed/cancelled tasks of a finished run; answers the run with `plan`."""
        actor = actor or Actor()

        def tx(conn: Connection) -> dict[str, Any]:
            run = lock_run(conn, run_id)
            plan = plan_rerun(run, run_tasks(conn, run_id), task_ids, steps)
            values = back_to_queue(dispatch=dispatch)
            values["rerun_count"] = runs.c.rerun_count + 1
            conn.execute(update(runs).where(runs.c.id == run_id).values(**values))
            ids = [e["id"] for e in plan["rerun"]]
            conn.execute(
                update(tasks)
                .where(tasks.c.id.in_(ids))
                .values(
                    **RESET_TASK,
                    rerun_count=tasks.c.rerun_count + 1,
                    last_rerun_by=actor.person,
                    last_rerun_reason=reason,
                    last_rerun_at=db_now_ms(),
                )
            )
            names = [e["name"] for e in plan["rerun"]]
            suffix = f": {reason}" if reason else ""
            events = [
                {
                    "run_id": run_id,
                    "type": "run.rerun_requested",
                    "message": f"re-run of {', '.join(names)} requested by {actor.person}{suffix}",
                    "data": {
                        "by": actor.person,
                        "reason": reason,
                        "task_ids": ids,
                        "steps": names,
                        "dispatch": dispatch,
                        "previous_status": run.status,
                    },
                }
            ]
            events += [
                {
                    "run_id": run_id,
                    "task_id": e["id"],
                    "type": "task.rerun_reset",
                    "stage": e["step"],
                    "attempt": e["attempt"],
                    "message": f"{e['name']} reset for a re-run ({e['status']}, {e['why']})",
                    "data": {"previous_status": e["status"], "why": e["why"]},
                }
                for e in plan["rerun"]
            ]
            if not dispatch:
                events.append(
                    {
                        "run_id": run_id,
                        "type": "run.held",
                        "message": "held: not claimable until dispatched",
                        "data": {"by": actor.person},
                    }
                )
            add_events(conn, events)
            add_audit(
                conn,
                actor,
                "run.rerun",
                run_id,
                reason,
                {"task_ids": ids, "steps": names, "dispatch": dispatch},
            )
            out = run_detail(conn, run_id, self.stall_after_ms)
            out["plan"] = plan
            return out

        return self.write(tx)

    def dispatch_run(
        self, run_id: str, reason: str | None = None, actor: Actor | None = None
    ) -> dict[str, Any]:
        """Release a held run (re-run with dispatch=False) to the queue."""

        def tx(conn: Connection) -> dict[str, Any]:
            run = lock_run(conn, run_id)
            gated = [t.step for t in run_tasks(conn, run_id) if t.status == "waiting"]
            if run.status != "waiting" or gated:
                why = (
                    f"it waits for approval of {', '.join(gated)}: approve or reject instead"
                    if gated
                    else f"it is {run.status}"
                )
                raise Conflict(
                    f"only a held run (re-run with dispatch: false) can be dispatched; {why}",
                    status=run.status,
                )
            conn.execute(update(runs).where(runs.c.id == run_id).values(status="queued"))
            who = (actor or Actor()).name
            add_events(
                conn,
                [
                    {
                        "run_id": run_id,
                        "type": "run.dispatched",
                        "message": f"dispatched by {who}" + (f": {reason}" if reason else ""),
                        "data": {"by": who, "reason": reason},
                    }
                ],
            )
            add_audit(conn, actor, "run.dispatch", run_id, reason)
            return run_detail(conn, run_id, self.stall_after_ms)

        return self.write(tx)

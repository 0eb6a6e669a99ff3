"""The detail view of one run (DESIGN §7): the run, its tasks (with the prompt of a gated step's
approval), lineage, the differences between its definition and its parent's, and its audit
trail. Shared by `get_run` and by the control
verbs, which answer with the new state."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from ..clock import db_now_ms, to_iso
from ..errors import NotFound
from ..schema import audit, runs, tasks
from ..workflows import definition_diff
from .serialize import plain_dict, run_dict, task_dict

DETAIL_AUDIT_ROWS = 200


def run_detail(conn: Connection, run_id: str, stall_after_ms: int) -> dict[str, Any]:
    row = conn.execute(select(runs, db_now_ms().label("db_now")).where(runs.c.id == run_id)).first()
    if row is None:
        raise NotFound(f"no run {run_id}")
    out = run_dict(row, row.db_now, stall_after_ms)
    prompts = approval_prompts(row.config_snapshot)
    out["tasks"] = [
        {**task_dict(t), "approval_prompt": prompts.get(t.step)}
        for t in conn.execute(
            select(tasks)
            .where(tasks.c.run_id == run_id)
            .order_by(tasks.c.position, tasks.c.attempt)
        )
    ]
    children = conn.execute(
        select(runs.c.id, runs.c.origin, runs.c.status, runs.c.created_at)
        .where(runs.c.parent_run_id == run_id)
        .order_by(runs.c.id)
        .limit(100)
    ).all()
    parent = None
    out["config_diff"] = None
    if row.parent_run_id:
        prow = conn.execute(
            select(
                runs.c.id, runs.c.origin, runs.c.status, runs.c.created_at, runs.c.config_snapshot
            ).where(runs.c.id == row.parent_run_id)
        ).first()
        if prow is None:
            parent = {"id": row.parent_run_id}
        else:
            parent = plain_dict(prow)
            parent.pop("config_snapshot")
            # What changed between the parent's definition and this run's (retry: the current
            # definition; restart: the parent's own snapshot, so normally nothing).
            out["config_diff"] = definition_diff(prow.config_snapshot, row.config_snapshot)
    out["lineage"] = {"parent": parent, "children": [plain_dict(c) for c in children]}
    out["claimed_at"] = to_iso(row.claimed_at)
    out["audit"] = [
        plain_dict(a)
        for a in conn.execute(
            select(audit)
            .where(audit.c.run_id == run_id)
            .order_by(audit.c.id.desc())
            .limit(DETAIL_AUDIT_ROWS)
        )
    ][::-1]
    return out


def approval_prompts(definition: Any) -> dict[str, str]:
    """Step → the prompt of its approval gate, from the definition the run was created with."""
    steps = definition.get("steps") if isinstance(definition, dict) else None
    out: dict[str, str] = {}
    for name, stage in (steps or {}).items():
        gate = stage.get("approval") if isinstance(stage, dict) else None
        if isinstance(gate, dict) and isinstance(gate.get("prompt"), str):
            out[name] = gate["prompt"]
    return out

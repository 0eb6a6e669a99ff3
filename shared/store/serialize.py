"""Rows → the public JSON shapes of DESIGN §7 (shared by the API, the CLI and the dashboard)."""

from __future__ import annotations

from typing import Any

from ..clock import to_iso

RUN_FIELDS = (
    "id", "workflow", "version", "kind", "status", "inputs", "queue", "priority", "not_before",
    "parent_run_id", "origin", "current_stage", "current_attempt", "max_attempts",
    "pass_threshold", "final_score", "output", "error_message", "claimed_by", "claim_count",
    "heartbeat_at", "cancel_requested_at", "cancel_reason", "requested_by", "rerun_count",
    "metrics", "created_at", "started_at", "completed_at",
)  # fmt: skip
_TIME_FIELDS = {
    "not_before", "heartbeat_at", "cancel_requested_at", "created_at", "started_at",
    "completed_at", "claimed_at", "last_rerun_at", "updated_at", "deregister_requested_at",
    "stopped_at", "at", "decided_at", "window_start",
}  # fmt: skip


def is_stalled(row: Any, now_ms: int, stall_after_ms: int) -> bool:
    return bool(
        row.status == "running"
        and row.heartbeat_at is not None
        and now_ms - row.heartbeat_at > stall_after_ms
    )


def run_dict(row: Any, now_ms: int, stall_after_ms: int) -> dict[str, Any]:
    mapping = row._mapping
    out: dict[str, Any] = {}
    for name in RUN_FIELDS:
        value = mapping.get(name)
        out[name] = to_iso(value) if name in _TIME_FIELDS else value
    out["stalled"] = is_stalled(row, now_ms, stall_after_ms)
    if row.heartbeat_at is not None and row.status == "running":
        out["heartbeat_age_s"] = round(max(0, now_ms - row.heartbeat_at) / 1000, 3)
    duration_end = row.completed_at if row.completed_at is not None else now_ms
    if row.started_at is not None:
        out["duration_s"] = round(max(0, duration_end - row.started_at) / 1000, 3)
    else:
        out["duration_s"] = None
    return out


def plain_dict(row: Any) -> dict[str, Any]:
    """Any row, with its epoch-ms time columns as ISO 8601 strings."""
    return {
        key: (to_iso(value) if key in _TIME_FIELDS else value)
        for key, value in row._mapping.items()
    }


def task_dict(row: Any) -> dict[str, Any]:
    return plain_dict(row)


def event_dict(row: Any) -> dict[str, Any]:
    return plain_dict(row)


def artifact_dict(row: Any) -> dict[str, Any]:
    out = plain_dict(row)
    out.pop("content", None)
    return out

"""Human-readable rendering of runs and events for the terminal."""

from __future__ import annotations

import json
from typing import Any


def short_time(iso: str | None) -> str:
    return iso[11:23] if iso else "-"


def event_line(ev: dict[str, Any]) -> str:
    where = ""
    if ev.get("stage"):
        where = ev["stage"] + (f" #{ev['attempt']}" if ev.get("attempt") else "")
    message = ev.get("message") or ""
    return f"{short_time(ev.get('created_at'))}  {ev['type']:<20} {where:<14} {message}".rstrip()


def run_summary(run: dict[str, Any]) -> str:
    parts = [f"{run['id']}  {run['workflow']}  {run['status']}"]
    if run.get("max_attempts"):
        parts.append(f"attempt {run.get('current_attempt')}/{run['max_attempts']}")
    if run.get("final_score") is not None:
        parts.append(f"score {run['final_score']:.3g}")
    if run.get("stalled"):
        parts.append(f"STALLED (no heartbeat for {run.get('heartbeat_age_s')}s)")
    if run.get("error_message") and run["status"] != "succeeded":
        parts.append(f"error: {run['error_message']}")
    return "  ".join(parts)


def run_table(runs: list[dict[str, Any]]) -> str:
    lines = [f"{'ID':<30} {'WORKFLOW':<14} {'STATUS':<10} {'STAGE':<12} {'SCORE':>6}  CREATED"]
    for r in runs:
        score = "" if r.get("final_score") is None else f"{r['final_score']:.3g}"
        lines.append(
            f"{r['id']:<30} {r['workflow'][:14]:<14} {r['status']:<10} "
            f"{(r.get('current_stage') or '-')[:12]:<12} {score:>6}  {r['created_at']}"
        )
    return "\n".join(lines)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str)

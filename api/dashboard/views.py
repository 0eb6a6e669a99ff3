"""Pure view helpers: what a page shows for a run, a task, a number. No I/O, no HTML."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ACTIVE = ("queued", "running", "waiting")
FINISHED = ("succeeded", "failed", "cancelled")

# Polling periods (ms) the pages use between refreshes (the adaptive policy).
POLL_RUNNING_RUN = 2_000
POLL_LIST_ACTIVE = 5_000
POLL_IDLE = 30_000


@dataclass(frozen=True)
class Badge:
    label: str
    tone: str  # ok | bad | run | warn | wait | muted: a CSS class; the label says it in words
    icon: str  # decorative (aria-hidden); never the only signal


def badge(run: dict[str, Any]) -> Badge:
    status = run["status"]
    score = run.get("final_score")
    loop = run.get("kind") == "loop"
    if status == "succeeded":
        return Badge(
            f"Passed {score:.2f}" if loop and score is not None else "Succeeded", "ok", "✓"
        )
    if status == "failed":
        return Badge(f"Failed {score:.2f}" if loop and score is not None else "Failed", "bad", "✗")
    if status == "cancelled":
        return Badge("Cancelled", "muted", "⊘")
    if status == "waiting":
        # A run waits at an approval gate or, a re-run prepared with dispatch=false, is held.
        # Lists carry no tasks, so they cannot tell the two apart.
        if "tasks" not in run:
            return Badge("Waiting", "wait", "‖")
        if any(t["status"] == "waiting" for t in run["tasks"] or []):
            return Badge("Waiting for approval", "wait", "‖")
        return Badge("Held", "wait", "‖")
    if status == "queued":
        return Badge("Queued", "wait", "…")
    if run.get("stalled"):
        return Badge("Stalled", "warn", "⚠")
    if run.get("cancel_requested_at"):
        return Badge("Cancelling", "warn", "⊘")
    if loop and run.get("max_attempts"):
        return Badge(f"Running {max(1, run.get('current_attempt') or 0)}/{run['max_attempts']}",
                     "run", "●")  # fmt: skip
    return Badge("Running", "run", "●")


TASK_TONES = {
    "succeeded": ("ok", "✓"),
    "failed": ("bad", "✗"),
    "running": ("run", "●"),
    "waiting": ("wait", "‖"),
    "created": ("muted", "○"),
    "cancelled": ("muted", "⊘"),
    "skipped": ("muted", "↷"),
}


def task_badge(task: dict[str, Any]) -> Badge:
    tone, icon = TASK_TONES.get(task["status"], ("muted", "○"))
    return Badge(task["status"].capitalize(), tone, icon)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s} s" if s else f"{m} min"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(h, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def fmt_ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 1:
        return "just now"
    return f"{fmt_duration(seconds) if seconds >= 10 else f'{int(seconds)} s'} ago"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def fmt_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) < 0.01:
        return f"{value:.6f}".rstrip("0")
    return f"{value:,.2f}"


def fmt_value(value: Any) -> str:
    """An input or output value as one line of text (strings as they are, the rest as JSON)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def inputs_summary(inputs: dict[str, Any] | None, limit: int = 80) -> str:
    text = ", ".join(f"{k}={fmt_value(v)}" for k, v in (inputs or {}).items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def latest_tasks(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step (the newest), in definition order."""
    by_step: dict[str, dict[str, Any]] = {}
    for t in tasks:
        if t["step"] not in by_step or t["attempt"] >= by_step[t["step"]]["attempt"]:
            by_step[t["step"]] = t
    return sorted(by_step.values(), key=lambda t: t.get("position", 0))


def graph_layers(tasks: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Steps grouped by depth (a step sits one layer after the deepest step it needs)."""
    steps = {t["step"]: t for t in latest_tasks(tasks)}
    depth: dict[str, int] = {}

    def level(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name in depth:
            return depth[name]
        needs = [n for n in steps[name].get("needs") or [] if n in steps and n not in seen]
        depth[name] = 1 + max((level(n, seen | {name}) for n in needs), default=-1)
        return depth[name]

    for name in steps:
        level(name)
    layers: list[list[dict[str, Any]]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name, task in steps.items():
        layers[depth[name]].append(task)
    return layers


def loop_attempts(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Loop runs: per attempt, its stage tasks and its score (from the evaluate stage)."""
    attempts: dict[int, dict[str, Any]] = {}
    for t in run.get("tasks") or []:
        a = attempts.setdefault(t["attempt"], {"attempt": t["attempt"], "tasks": [],
                                               "score": None, "feedback": None})  # fmt: skip
        a["tasks"].append(t)
        out = t.get("output")
        if t["step"] == "evaluate" and isinstance(out, dict):
            score = out.get("score")
            if isinstance(score, int | float) and not isinstance(score, bool):
                a["score"] = float(score)
            if isinstance(out.get("feedback"), str):
                a["feedback"] = out["feedback"]
    threshold = run.get("pass_threshold")
    result = []
    for n in sorted(attempts):
        a = attempts[n]
        a["passed"] = None if a["score"] is None or threshold is None else a["score"] >= threshold
        result.append(a)
    return result


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    points: list[dict[str, Any]]
    threshold_y: float | None
    threshold: float | None
    y_max: float
    ticks: list[dict[str, Any]]
    path: str
    summary: str


def score_chart(run: dict[str, Any], attempts: list[dict[str, Any]]) -> Chart | None:
    """Geometry of the per-attempt score chart (drawn as inline SVG), or None without scores."""
    scored = [a for a in attempts if a["score"] is not None]
    if not scored:
        return None
    threshold = run.get("pass_threshold")
    n = max(run.get("max_attempts") or 0, max(a["attempt"] for a in scored), 1)
    y_max = float(max([1.0, *(a["score"] for a in scored), *([threshold] if threshold else [])]))
    width, height, left, top, right, bottom = 320, 160, 36, 12, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * (i - 1) / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / y_max)

    points = [
        {"x": round(x(a["attempt"]), 1), "y": round(y(a["score"]), 1), "attempt": a["attempt"],
         "score": a["score"], "passed": a["passed"]}
        for a in scored
    ]  # fmt: skip
    path = " ".join(f"{'M' if i == 0 else 'L'}{p['x']},{p['y']}" for i, p in enumerate(points))
    ticks = [
        {"x": round(x(i), 1), "label": str(i)}
        for i in range(1, n + 1)
        if n <= 12 or i in (1, n) or i % max(1, n // 6) == 0
    ]
    summary = "Score by attempt: " + ", ".join(
        f"attempt {a['attempt']} {a['score']:.2f}" for a in scored
    )
    if threshold is not None:
        summary += f"; pass threshold {threshold:.2f}"
    return Chart(
        width, height, left, top, plot_w, plot_h, points,
        None if threshold is None else round(y(threshold), 1), threshold, y_max, ticks, path,
        summary,
    )  # fmt: skip


def progress_text(run: dict[str, Any]) -> str:
    """'attempt 2/4' for loops, 'steps 3/5 done' for graphs."""
    if run.get("kind") == "loop":
        cur = run.get("current_attempt") or 0
        return f"attempt {cur}/{run.get('max_attempts') or '?'}"
    tasks = latest_tasks(run.get("tasks") or [])
    done = sum(1 for t in tasks if t["status"] == "succeeded")
    return f"{done}/{len(tasks)} steps succeeded" if tasks else "not started"


def run_poll_ms(run: dict[str, Any]) -> int:
    return POLL_RUNNING_RUN if run["status"] in ACTIVE else POLL_IDLE


def list_poll_ms(stats: dict[str, Any]) -> int:
    counts = stats.get("counts") or {}
    return POLL_LIST_ACTIVE if any(counts.get(s) for s in ACTIVE) else POLL_IDLE


def timeline(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events in order, with each run of consecutive log lines of one stage folded into a group
    (static/dashboard.js folds appended lines the same way)."""
    items: list[dict[str, Any]] = []
    for e in events:
        last = items[-1] if items else None
        if e["type"] == "log":
            key = (e.get("stage"), e.get("attempt"))
            if last and last["kind"] == "logs" and last["key"] == key:
                last["events"].append(e)
            else:
                items.append({"kind": "logs", "key": key, "stage": e.get("stage"),
                              "attempt": e.get("attempt"), "events": [e]})  # fmt: skip
        else:
            items.append({"kind": "event", "event": e})
    return items


_AUDIT_HIDDEN = {"requested_by", "task_id", "task_ids"}  # shown elsewhere, or only ids


def audit_summary(row: dict[str, Any], limit: int = 160) -> str:
    """An audit row's details as one line: 'to step docs · tasks docs, publish · held'."""
    parts = []
    for key, value in (row.get("details") or {}).items():
        if key in _AUDIT_HIDDEN or value in (None, "", [], {}):
            continue
        if key == "dispatch":
            if value is False:
                parts.append("held")
            continue
        name = key.replace("_", " ")
        if value is True:
            parts.append(name)
        elif value is False:
            continue
        elif isinstance(value, list):
            parts.append(f"{name} {', '.join(fmt_value(v) for v in value)}")
        else:
            parts.append(f"{name} {fmt_value(value)}")
    text = " · ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""The oracle: reads the database after a scenario and counts what must never happen.

- lost: a run the scenario created that is gone, or left in a state nothing will ever move
  (queued with a claim token, running without a lease, terminal without a completion time).
- double_claimed: a run claimed while an earlier claim of it was still open, read from the
  run's own timeline: every `run.claimed` must be closed (run.stalled, run.released, or the
  run's terminal event) before the next one.
- duplicate_effects: a stage completion accepted twice (two succeeded `stage.finished` events
  for one task), or a run finished twice (two terminal events).
- stuck: a run that is not terminal when the scenario says all work is done.
- stale_writes (reported too): runner writes (stage.*, log, score, artifact) accepted while no
  claim of the run was open — what a zombie's write would look like.

Runs are ordered per run by event id: every writer of a run's events first updates (and, on
PostgreSQL, row-locks) the run's row in the same transaction, so a run's event ids follow the
order in which its transactions committed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select

from shared.schema import TERMINAL_RUN_STATUSES, events, runs
from shared.store import Store

OPENS = {"run.claimed"}
# run.reset: the control plane's reset fences the old claim too.
CLOSES = {
    "run.stalled", "run.released", "run.requeued", "run.reset",
    "run.succeeded", "run.failed", "run.cancelled",
}  # fmt: skip
TERMINAL_EVENTS = {"run.succeeded", "run.failed", "run.cancelled"}
RUNNER_WRITES = {"stage.started", "stage.finished", "log", "score", "artifact"}


@dataclass
class Verdict:
    scenario: str
    backend: str
    runs: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    double_claimed: list[str] = field(default_factory=list)
    duplicate_effects: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    stale_writes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.double_claimed or self.duplicate_effects or self.stuck
            or self.stale_writes
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "backend": self.backend,
            "runs": self.runs,
            "lost": len(self.lost),
            "double_claimed": len(self.double_claimed),
            "duplicate_effects": len(self.duplicate_effects),
            "stuck": len(self.stuck),
            "stale_writes": len(self.stale_writes),
            "statuses": self.statuses,
            **self.extra,
        }

    def line(self) -> str:
        s = self.summary()
        head = (
            f"{self.scenario} [{self.backend}] runs={s['runs']} lost={s['lost']} "
            f"double_claimed={s['double_claimed']} duplicate_effects={s['duplicate_effects']} "
            f"stuck={s['stuck']} stale_writes={s['stale_writes']}"
        )
        rest = {k: v for k, v in s.items() if k not in ("scenario", "backend", "runs", "lost",
                "double_claimed", "duplicate_effects", "stuck", "stale_writes")}  # fmt: skip
        return head + " " + json.dumps(rest, sort_keys=True, default=str)

    def details(self) -> str:
        parts = {k: v[:10] for k, v in asdict(self).items() if isinstance(v, list) and v}
        return json.dumps(parts, indent=1)


def check(
    store: Store,
    scenario: str,
    backend: str,
    expected: Iterable[str] | None = None,
    *,
    may_stay_queued: Iterable[str] = (),
) -> Verdict:
    """Judge every run in the database (and require the `expected` ids to exist)."""
    verdict = Verdict(scenario, backend)
    allowed_queued = set(may_stay_queued)

    def read(conn: Any) -> tuple[list[Any], list[Any]]:
        rows = conn.execute(
            select(
                runs.c.id, runs.c.status, runs.c.claim_token, runs.c.heartbeat_at,
                runs.c.completed_at,
            )
        ).all()  # fmt: skip
        evs = conn.execute(
            select(
                events.c.id, events.c.run_id, events.c.type, events.c.task_id, events.c.data
            ).order_by(events.c.run_id, events.c.id)
        ).all()
        return rows, evs

    rows, evs = store.read(read)
    by_id = {r.id: r for r in rows}
    verdict.runs = len(rows)
    statuses: dict[str, int] = defaultdict(int)
    for r in rows:
        statuses[r.status] += 1
    verdict.statuses = dict(sorted(statuses.items()))

    for run_id in expected or ():
        if run_id not in by_id:
            verdict.lost.append(f"{run_id}: missing")
    for r in rows:
        if r.status == "queued" and r.claim_token is not None:
            verdict.lost.append(f"{r.id}: queued with a claim token")
        elif r.status == "running" and (r.claim_token is None or r.heartbeat_at is None):
            verdict.lost.append(f"{r.id}: running without a lease")
        elif r.status in TERMINAL_RUN_STATUSES and r.completed_at is None:
            verdict.lost.append(f"{r.id}: {r.status} without completed_at")
        if r.status not in TERMINAL_RUN_STATUSES and r.id not in allowed_queued:
            verdict.stuck.append(f"{r.id}: {r.status}")

    timeline: dict[str, list[Any]] = defaultdict(list)
    for e in evs:
        timeline[e.run_id].append(e)
    for run_id, items in timeline.items():
        open_claim = False
        finished_tasks: dict[str, int] = defaultdict(int)
        terminal = 0
        for e in items:
            if e.type in OPENS:
                if open_claim:
                    verdict.double_claimed.append(f"{run_id}: claim {e.id} while one was open")
                open_claim = True
            elif e.type in CLOSES:
                open_claim = False
            elif e.type in RUNNER_WRITES and not open_claim:
                verdict.stale_writes.append(f"{run_id}: {e.type} {e.id} outside a claim")
            if e.type in TERMINAL_EVENTS:
                terminal += 1
            if e.type == "stage.finished" and e.task_id and _status(e.data) == "succeeded":
                finished_tasks[e.task_id] += 1
        if terminal > 1:
            verdict.duplicate_effects.append(f"{run_id}: {terminal} terminal events")
        for task_id, n in finished_tasks.items():
            if n > 1:
                verdict.duplicate_effects.append(f"{run_id}: task {task_id} succeeded {n} times")
    return verdict


def _status(data: Any) -> str | None:
    if isinstance(data, str):
        data = json.loads(data)
    return data.get("status") if isinstance(data, dict) else None

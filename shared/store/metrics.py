"""What a metrics scrape reads from the database (docs/observability.md).

The API may run as many short-lived processes, so it keeps no counters of its own for the
state of the system: queue depth, the oldest queued run's age, active runs, stalled runs and
runners are read here, at scrape time. Every query touches only active rows through an index
(`ix_runs_claimable`, `ix_runs_status_id`), never the history of finished runs, so a scrape
stays cheap however many runs the database keeps.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, case, func, or_, select

from ..clock import db_now_ms
from ..schema import runners, runs
from .base import StoreBase, const

ACTIVE = ("queued", "running", "waiting")


class MetricsVerbs(StoreBase):
    def metrics_snapshot(self) -> dict[str, Any]:
        """{queues: {queue: {depth, eligible, oldest_age_s}}, active: {(workflow, status): n},
        stalled, runners: {(status, health): n}, db_now_ms} — all by the database clock."""
        stall = self.stall_after_ms

        def tx(conn: Connection) -> dict[str, Any]:
            now = int(conn.execute(select(db_now_ms())).scalar_one())
            eligible = or_(runs.c.not_before.is_(None), runs.c.not_before <= now)
            # A run with a not_before waits from then on, not from its creation.
            since = case(
                (runs.c.not_before > runs.c.created_at, runs.c.not_before),
                else_=runs.c.created_at,
            )
            queues: dict[str, dict[str, Any]] = {}
            for queue, depth, ready, oldest in conn.execute(
                select(
                    runs.c.queue,
                    func.count(),
                    func.sum(case((eligible, 1), else_=0)),
                    func.min(case((eligible, since), else_=None)),
                )
                .where(runs.c.status == "queued")
                .group_by(runs.c.queue)
            ):
                queues[queue] = {
                    "depth": int(depth),
                    "eligible": int(ready or 0),
                    "oldest_age_s": 0.0 if oldest is None else max(0, now - oldest) / 1000,
                }
            active = {
                (workflow, status): int(n)
                for workflow, status, n in conn.execute(
                    select(runs.c.workflow, runs.c.status, func.count())
                    .where(runs.c.status.in_(ACTIVE))
                    .group_by(runs.c.workflow, runs.c.status)
                )
            }
            stalled = conn.execute(
                select(func.count()).where(
                    runs.c.status == const("running"), runs.c.heartbeat_at < now - stall
                )
            ).scalar_one()
            health = case((runners.c.heartbeat_at < now - stall, "stale"), else_="alive")
            fleet = {
                (status, h): int(n)
                for status, h, n in conn.execute(
                    select(runners.c.status, health, func.count())
                    .where(runners.c.status != "stopped")
                    .group_by(runners.c.status, health)
                )
            }
            return {
                "queues": queues,
                "active": active,
                "stalled": int(stalled),
                "runners": fleet,
                "db_now_ms": now,
            }

        return self.read(tx)

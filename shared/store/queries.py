"""Reads for the API, the CLI and the dashboard. Keyset pagination everywhere; no COUNT(*)
on the list/detail/events paths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, String, cast, func, or_, select

from ..clock import db_now_ms
from ..errors import InvalidInput, NotFound
from ..schema import RUN_STATUSES, artifacts, audit, events, runs
from .base import StoreBase
from .detail import run_detail
from .serialize import artifact_dict, event_dict, plain_dict, run_dict

MAX_PAGE = 500


@dataclass(frozen=True)
class RunFilter:
    statuses: tuple[str, ...] = ()
    workflow: str | None = None
    queue: str | None = None
    text: str | None = None
    created_after_ms: int | None = None
    created_before_ms: int | None = None
    parent_run_id: str | None = None
    stalled: bool | None = None


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    return limit


class QueryVerbs(StoreBase):
    def get_run(self, run_id: str, *, with_tasks: bool = True) -> dict[str, Any]:
        """A run; with_tasks adds its tasks, lineage, config diff and audit trail."""

        def tx(conn: Connection) -> dict[str, Any]:
            if with_tasks:
                return run_detail(conn, run_id, self.stall_after_ms)
            row = conn.execute(
                select(runs, db_now_ms().label("db_now")).where(runs.c.id == run_id)
            ).first()
            if row is None:
                raise NotFound(f"no run {run_id}")
            return run_dict(row, row.db_now, self.stall_after_ms)

        return self.read(tx)

    def list_runs(
        self, flt: RunFilter | None = None, *, cursor: str | None = None, limit: int = 50
    ) -> dict[str, Any]:
        """Newest first. `next_cursor` is the last id of the page (None on the last page)."""
        flt = flt or RunFilter()
        _check_limit(limit)
        for status in flt.statuses:
            if status not in RUN_STATUSES:
                raise InvalidInput(
                    f"unknown status {status!r} (one of {', '.join(RUN_STATUSES)})",
                    field="status",
                )
        query = select(runs, db_now_ms().label("db_now"))
        if flt.statuses:
            query = query.where(runs.c.status.in_(flt.statuses))
        if flt.workflow:
            query = query.where(runs.c.workflow == flt.workflow)
        if flt.queue:
            query = query.where(runs.c.queue == flt.queue)
        if flt.parent_run_id:
            query = query.where(runs.c.parent_run_id == flt.parent_run_id)
        if flt.created_after_ms is not None:
            query = query.where(runs.c.created_at >= flt.created_after_ms)
        if flt.created_before_ms is not None:
            query = query.where(runs.c.created_at < flt.created_before_ms)
        if flt.stalled:
            query = query.where(
                runs.c.status == "running",
                runs.c.heartbeat_at < db_now_ms() - self.stall_after_ms,
            )
        if flt.text:
            pattern = (
                "%" + flt.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            )
            query = query.where(
                or_(
                    runs.c.id.like(pattern, escape="\\"),
                    runs.c.workflow.like(pattern, escape="\\"),
                    runs.c.current_stage.like(pattern, escape="\\"),
                    runs.c.error_message.like(pattern, escape="\\"),
                    cast(runs.c.inputs, String).like(pattern, escape="\\"),
                )
            )
        if cursor:
            query = query.where(runs.c.id < cursor)
        query = query.order_by(runs.c.id.desc()).limit(limit + 1)

        def tx(conn: Connection) -> dict[str, Any]:
            rows = conn.execute(query).all()
            page = rows[:limit]
            return {
                "runs": [run_dict(r, r.db_now, self.stall_after_ms) for r in page],
                "next_cursor": page[-1].id if len(rows) > limit else None,
            }

        return self.read(tx)

    def list_events(self, run_id: str, *, after: int = 0, limit: int = 200) -> dict[str, Any]:
        """Events of a run with id > after, oldest first; `next_after` is the cursor to pass next."""
        _check_limit(limit)
        if after < 0:
            raise InvalidInput("after must be ≥ 0", field="after")

        def tx(conn: Connection) -> dict[str, Any]:
            rows = conn.execute(
                select(events)
                .where(events.c.run_id == run_id, events.c.id > after)
                .order_by(events.c.id)
                .limit(limit)
            ).all()
            status = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar()
            if status is None:
                raise NotFound(f"no run {run_id}")
            return {
                "events": [event_dict(r) for r in rows],
                "next_after": rows[-1].id if rows else after,
                "run_status": status,
            }

        return self.read(tx)

    def list_artifacts(self, run_id: str) -> dict[str, Any]:
        cols = [c for c in artifacts.c if c.name != "content"]

        def tx(conn: Connection) -> dict[str, Any]:
            if conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is None:
                raise NotFound(f"no run {run_id}")
            rows = conn.execute(
                select(*cols).where(artifacts.c.run_id == run_id).order_by(artifacts.c.id)
            ).all()
            return {"artifacts": [artifact_dict(r) for r in rows]}

        return self.read(tx)

    def artifact_bytes(self, run_id: str) -> int:
        """The total size of a run's stored artifacts (for the per-run cap)."""
        query = select(func.coalesce(func.sum(artifacts.c.size), 0)).where(
            artifacts.c.run_id == run_id
        )
        return int(self.read(lambda conn: conn.execute(query).scalar_one()))

    def get_artifact(self, run_id: str, artifact_id: str) -> tuple[dict[str, Any], bytes]:
        def tx(conn: Connection) -> tuple[dict[str, Any], bytes]:
            row = conn.execute(
                select(artifacts).where(artifacts.c.run_id == run_id, artifacts.c.id == artifact_id)
            ).first()
            if row is None:
                raise NotFound(f"no artifact {artifact_id} in run {run_id}")
            return artifact_dict(row), bytes(row.content)

        return self.read(tx)

    def list_audit(
        self, *, run_id: str | None = None, before: int | None = None, limit: int = 100
    ) -> dict[str, Any]:
        _check_limit(limit)
        query = select(audit)
        if run_id:
            query = query.where(audit.c.run_id == run_id)
        if before:
            query = query.where(audit.c.id < before)
        query = query.order_by(audit.c.id.desc()).limit(limit + 1)

        def tx(conn: Connection) -> dict[str, Any]:
            rows = conn.execute(query).all()
            page = rows[:limit]
            return {
                "audit": [plain_dict(r) for r in page],
                "next_before": page[-1].id if len(rows) > limit else None,
            }

        return self.read(tx)

    def stats(self, *, window_ms: int = 24 * 3600 * 1000) -> dict[str, Any]:
        """Counts by status, recent outcomes, durations, cost/tokens, stalled count."""

        def tx(conn: Connection) -> dict[str, Any]:
            now = conn.execute(select(db_now_ms())).scalar_one()
            counts = {s: 0 for s in RUN_STATUSES}
            for status, n in conn.execute(
                select(runs.c.status, func.count()).group_by(runs.c.status)
            ):
                counts[status] = n
            stalled = conn.execute(
                select(func.count()).where(
                    runs.c.status == "running",
                    runs.c.heartbeat_at < now - self.stall_after_ms,
                )
            ).scalar_one()
            since = now - window_ms
            recent = conn.execute(
                select(runs.c.status, runs.c.started_at, runs.c.completed_at, runs.c.metrics).where(
                    runs.c.created_at >= since
                )
            ).all()
            durations = sorted(
                (r.completed_at - r.started_at) / 1000
                for r in recent
                if r.completed_at is not None and r.started_at is not None
            )
            finished = {s: 0 for s in ("succeeded", "failed", "cancelled")}
            metrics: dict[str, float] = {}
            for r in recent:
                if r.status in finished:
                    finished[r.status] += 1
                for key, value in (r.metrics or {}).items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        metrics[key] = metrics.get(key, 0) + value
            oldest = conn.execute(
                select(func.min(runs.c.created_at)).where(runs.c.status == "queued")
            ).scalar()
            return {
                "counts": counts,
                "total": sum(counts.values()),
                "stalled": stalled,
                "window_hours": window_ms / 3_600_000,
                "last_window": {
                    **finished,
                    "created": len(recent),
                    "median_duration_s": _median(durations),
                    "p95_duration_s": _pct(durations, 95),
                    "metrics": metrics,
                },
                "oldest_queued_age_s": None if oldest is None else round((now - oldest) / 1000, 3),
            }

        return self.read(tx)


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    mid = len(values) // 2
    if len(values) % 2:
        return round(values[mid], 3)
    return round((values[mid - 1] + values[mid]) / 2, 3)


def _pct(values: list[float], p: int) -> float | None:
    if not values:
        return None
    k = min(len(values) - 1, max(0, -(-p * len(values) // 100) - 1))
    return round(values[k], 3)

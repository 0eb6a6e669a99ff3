"""The runner registry: registration, status, deregistration intents."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from ..clock import db_now_ms
from ..errors import Conflict, NotFound
from ..schema import runners, runs
from .base import Actor, StoreBase, add_audit
from .serialize import plain_dict


def runner_dict(row: Any, now_ms: int) -> dict[str, Any]:
    """A runner row with `heartbeat_age_s` and `health` (alive|stale|stopped) by the DB clock."""
    d = plain_dict(row)
    interval = float((row.stats or {}).get("heartbeat_interval", 10))
    age = max(0.0, (now_ms - row.heartbeat_at) / 1000)
    d["heartbeat_age_s"] = round(age, 3)
    if row.status == "stopped":
        d["health"] = "stopped"
    elif age > max(3 * interval, 5.0):
        d["health"] = "stale"
    else:
        d["health"] = "alive"
    return d


class RunnerVerbs(StoreBase):
    def register_runner(self, info: dict[str, Any]) -> None:
        """Insert this runner's row (id, hostname, pid, pid_started_at, version, queues, labels,
        workflows, concurrency, stats)."""

        def tx(conn: Connection, attempt: int) -> None:
            if attempt > 1:
                # An earlier attempt may have committed before its error (an ambiguous commit):
                # inserting again would fail on the primary key.
                row = conn.execute(select(runners.c.id).where(runners.c.id == info["id"])).first()
                if row is not None:
                    return
            now = db_now_ms()
            conn.execute(
                insert(runners).values(**info, started_at=now, heartbeat_at=now, status="active")
            )

        self.write_attempts(tx)

    def set_runner_status(self, runner_id: str, status: str) -> None:
        values: dict[str, Any] = {"status": status}
        if status == "stopped":
            values["stopped_at"] = db_now_ms()
        self.write(
            lambda conn: conn.execute(
                update(runners).where(runners.c.id == runner_id).values(**values)
            )
        )

    def list_runners(self, *, include_stopped: bool = True, limit: int = 200) -> dict[str, Any]:
        def tx(conn: Connection) -> dict[str, Any]:
            now = conn.execute(select(db_now_ms())).scalar_one()
            query = select(runners).order_by(runners.c.started_at.desc()).limit(limit)
            if not include_stopped:
                query = query.where(runners.c.status != "stopped")
            rows = conn.execute(query).all()
            running: dict[str, int] = dict(
                conn.execute(
                    select(runs.c.claimed_by, func.count())
                    .where(runs.c.status == "running")
                    .group_by(runs.c.claimed_by)
                ).all()
            )
            out = []
            for r in rows:
                d = runner_dict(r, now)
                d["running"] = running.get(r.id, 0)
                out.append(d)
            return {"runners": out}

        return self.read(tx)

    def request_deregister(
        self, runner_id: str, actor: Actor | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """Intent: the runner stops claiming at its next heartbeat, drains and exits (its
        status goes draining, then stopped). A runner that stopped heartbeating longer than
        stall_after ago is gone: it is marked stopped at once (the reaper rescues its runs)."""

        def tx(conn: Connection) -> dict[str, Any]:
            row = conn.execute(
                select(runners, db_now_ms().label("db_now")).where(runners.c.id == runner_id)
            ).first()
            if row is None:
                raise NotFound(f"no runner {runner_id}")
            if row.status == "stopped":
                raise Conflict(f"runner {runner_id} is already stopped", status=row.status)
            gone = row.db_now - row.heartbeat_at > self.stall_after_ms
            values: dict[str, Any] = {}
            if row.deregister_requested_at is None:
                values["deregister_requested_at"] = db_now_ms()
            if gone:
                values.update(status="stopped", stopped_at=db_now_ms())
            if values:
                conn.execute(update(runners).where(runners.c.id == runner_id).values(**values))
            add_audit(
                conn,
                actor,
                "runner.deregister",
                None,
                reason,
                details={"runner_id": runner_id, "hostname": row.hostname, "gone": gone},
            )
            fresh = conn.execute(select(runners).where(runners.c.id == runner_id)).one()
            return plain_dict(fresh)

        return self.write(tx)

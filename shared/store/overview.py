"""Reads the dashboard needs beyond the API's: one runner with its health, and which runs each
runner holds right now."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from ..clock import db_now_ms
from ..errors import NotFound
from ..schema import runners, runs
from .base import StoreBase
from .runners import runner_dict

MAX_HELD = 50


class OverviewVerbs(StoreBase):
    def get_runner(self, runner_id: str) -> dict[str, Any]:
        """A runner as `list_runners` shows it (health, heartbeat age), or NotFound."""

        def tx(conn: Connection) -> dict[str, Any]:
            row = conn.execute(
                select(runners, db_now_ms().label("db_now")).where(runners.c.id == runner_id)
            ).first()
            if row is None:
                raise NotFound(f"no runner {runner_id}")
            return runner_dict(row, row.db_now)

        return self.read(tx)

    def runs_held_by(self, runner_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The running runs each of `runner_ids` holds (newest first, at most MAX_HELD each)."""
        if not runner_ids:
            return {}

        def tx(conn: Connection) -> dict[str, list[dict[str, Any]]]:
            rows = conn.execute(
                select(runs.c.id, runs.c.workflow, runs.c.claimed_by, runs.c.current_stage)
                .where(runs.c.status == "running", runs.c.claimed_by.in_(runner_ids))
                .order_by(runs.c.id.desc())
            ).all()
            held: dict[str, list[dict[str, Any]]] = {rid: [] for rid in runner_ids}
            for r in rows:
                if len(held[r.claimed_by]) < MAX_HELD:
                    held[r.claimed_by].append(
                        {"id": r.id, "workflow": r.workflow, "current_stage": r.current_stage}
                    )
            return held

        return self.read(tx)

"""Retention: delete finished runs older than a cut-off, with their tasks, events and artifacts.

Deletion goes in batches of runs, one short write transaction each, so neither SQLite's single
writer nor PostgreSQL's row locks are held for long and runners keep working in between. The
cut-off is fixed once, from the database clock, before the first batch: runs that finish while
the prune goes on are not chased. The audit trail is kept (it has no foreign key to runs) and
gets one row per prune saying what was removed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from ..errors import InvalidInput
from ..schema import TERMINAL_RUN_STATUSES, artifacts, events, runs, tasks
from .base import Actor, StoreBase, add_audit, db_now

MAX_BATCH = 5000


@dataclass
class PruneReport:
    cutoff_ms: int = 0
    statuses: list[str] = field(default_factory=list)
    runs: int = 0
    tasks: int = 0
    events: int = 0
    artifacts: int = 0
    artifact_bytes: int = 0
    batches: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RetentionVerbs(StoreBase):
    def prune_runs(
        self,
        *,
        older_than_ms: int,
        statuses: tuple[str, ...] = (),
        batch_size: int = 200,
        dry_run: bool = False,
        actor: Actor | None = None,
        now_ms: int | None = None,
    ) -> PruneReport:
        """Delete finished runs completed more than `older_than_ms` ago (by the DB clock)."""
        chosen = tuple(dict.fromkeys(statuses or TERMINAL_RUN_STATUSES))
        wrong = [s for s in chosen if s not in TERMINAL_RUN_STATUSES]
        if wrong:
            raise InvalidInput(
                f"only finished runs can be pruned: {', '.join(wrong)} is not one of "
                f"{', '.join(TERMINAL_RUN_STATUSES)}",
                field="status",
            )
        if older_than_ms < 0:
            raise InvalidInput("the age must not be negative", field="older_than")
        if not 1 <= batch_size <= MAX_BATCH:
            raise InvalidInput(f"the batch size must be 1–{MAX_BATCH}", field="batch_size")
        now = now_ms if now_ms is not None else self.read(db_now)
        report = PruneReport(cutoff_ms=now - older_than_ms, statuses=list(chosen), dry_run=dry_run)
        # A run that completed before the cut-off was created before it: the created_at
        # index narrows the scan; completed_at and status are re-checked in the write.
        qualifies = (
            runs.c.status.in_(chosen),
            runs.c.completed_at < report.cutoff_ms,
            runs.c.created_at < report.cutoff_ms,
        )
        victims = select(runs.c.id).where(*qualifies)
        if dry_run:
            self.read(lambda conn: _count(conn, victims.subquery(), report))
            return report
        after = ""
        while True:
            # The candidates are read outside the write transaction: the write lock is held
            # only for the deletes of one batch, by primary key.
            page = victims.where(runs.c.id > after).order_by(runs.c.id).limit(batch_size)
            ids: list[str] = self.read(partial(_ids, page))
            if not ids:
                break
            after = ids[-1]
            done = self.write(partial(_delete_batch, candidates=ids, qualifies=qualifies))
            for name in ("runs", "tasks", "events", "artifacts", "artifact_bytes", "batches"):
                setattr(report, name, getattr(report, name) + getattr(done, name))
            if len(ids) < batch_size:
                break
        if report.runs:
            details = report.as_dict()
            self.write(lambda conn: add_audit(conn, actor, "runs.prune", None, None, details))
        return report


def _ids(query: Any, conn: Connection) -> list[str]:
    return [str(i) for i in conn.execute(query).scalars()]


def _delete_batch(
    conn: Connection, candidates: list[str], qualifies: tuple[Any, ...]
) -> PruneReport:
    """Delete one batch; returns what it removed (added up only once the write committed)."""
    # A candidate re-run or reset since it was read is no longer finished: it stays. On
    # PostgreSQL the rows are locked as they are chosen: a rerun or reset committing between
    # this read and the deletes below would otherwise have its queued run deleted (a DELETE
    # by id waits for the intent's row lock, then deletes the new version all the same);
    # FOR UPDATE waits here instead and re-checks the conditions on the committed version.
    # (SQLite's write transaction holds the whole database; SQLAlchemy renders no FOR UPDATE.)
    ids = list(
        conn.execute(
            select(runs.c.id)
            .where(runs.c.id.in_(candidates), *qualifies)
            .order_by(runs.c.id)
            .with_for_update()
        ).scalars()
    )
    counted = PruneReport()
    if not ids:
        return counted
    _count(conn, select(runs.c.id).where(runs.c.id.in_(ids)).subquery(), counted)
    # Children keep their own history; only their link to the pruned parent goes.
    conn.execute(update(runs).where(runs.c.parent_run_id.in_(ids)).values(parent_run_id=None))
    # Explicitly, after the lock above: on PostgreSQL no foreign key cascades to the events
    # (migration 0008), and an event written by a transaction that held one of these runs
    # has committed by now, so this statement sees it.
    for table in (artifacts, events, tasks):
        conn.execute(delete(table).where(table.c.run_id.in_(ids)))
    conn.execute(delete(runs).where(runs.c.id.in_(ids)))
    counted.batches = 1
    return counted


def _count(conn: Connection, ids: Any, report: PruneReport) -> None:
    """Fill `report` with what deleting the runs in the subquery `ids` would remove."""
    report.runs = int(conn.execute(select(func.count()).select_from(ids)).scalar_one())
    report.tasks = int(
        conn.execute(select(func.count()).where(tasks.c.run_id.in_(select(ids.c.id)))).scalar_one()
    )
    report.events = int(
        conn.execute(select(func.count()).where(events.c.run_id.in_(select(ids.c.id)))).scalar_one()
    )
    n, size = conn.execute(
        select(func.count(), func.coalesce(func.sum(artifacts.c.size), 0)).where(
            artifacts.c.run_id.in_(select(ids.c.id))
        )
    ).one()
    report.artifacts, report.artifact_bytes = int(n), int(size)

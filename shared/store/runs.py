"""Intents on runs, written by API handlers and the CLI: create, cancel, retry."""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy import exc as sa_exc

from ..clock import db_now_ms
from ..errors import Conflict, DatabaseUnavailable, InvalidInput, NotFound
from ..ids import new_id
from ..schema import ACTIVE_RUN_STATUSES, runs, tasks, workflows
from ..workflows import definition_version, validate_inputs, workflow_from_definition
from .base import Actor, StatementCache, StoreBase, add_audit, add_events, db_now
from .detail import run_detail
from .fast import PreparedCache
from .group import GroupCommit
from .serialize import RUN_FIELDS, run_dict

MAX_QUEUE_LEN = 100
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


@dataclass(frozen=True)
class _Create:
    """One create waiting for its group (see create_run)."""

    workflow: str
    inputs: Any
    queue: str | None
    priority: int | None
    not_before_ms: int | None
    origin: str
    actor: Actor | None


class RunVerbs(StoreBase):
    """Mixed into `shared.store.Store`."""

    creates: GroupCommit[_Create, dict[str, Any]]  # made by Store: its `run_group` is ours

    # -- create ---------------------------------------------------------------------------

    async def create_run_async(
        self,
        workflow: str,
        inputs: Any = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        not_before_ms: int | None = None,
        origin: str = "api",
        idempotency_key: str | None = None,
        actor: Actor | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """`create_run` for a caller on an event loop (the API): the common create waits for
        its group commit without taking a worker thread; one with an Idempotency-Key runs
        `create_run` in the loop's default executor."""
        self._check_create(inputs, queue, not_before_ms)
        if idempotency_key is None:
            item = _Create(workflow, inputs, queue, priority, not_before_ms, origin, actor)
            return await self.creates.submit_async(item), True
        return await asyncio.to_thread(
            functools.partial(
                self.create_run, workflow, inputs, queue=queue, priority=priority,
                not_before_ms=not_before_ms, origin=origin, idempotency_key=idempotency_key,
                actor=actor,
            )
        )  # fmt: skip

    def _check_create(self, inputs: Any, queue: str | None, not_before_ms: int | None) -> None:
        check_inputs_size(inputs, self.max_inputs_bytes)
        if queue is not None and not (0 < len(queue) <= MAX_QUEUE_LEN):
            raise InvalidInput(f"queue must be 1–{MAX_QUEUE_LEN} characters", field="queue")
        if not_before_ms is not None and not (0 <= not_before_ms <= MAX_TIME_MS):
            raise InvalidInput("not_before must be between 1970 and 9999", field="not_before")

    def create_run(
        self,
        workflow: str,
        inputs: Any = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        not_before_ms: int | None = None,
        origin: str = "api",
        parent_run_id: str | None = None,
        idempotency_key: str | None = None,
        actor: Actor | None = None,
        snapshot: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """A new queued run. Returns (run, created); created is False on an idempotent repeat."""
        self._check_create(inputs, queue, not_before_ms)

        if idempotency_key is None and parent_run_id is None and snapshot is None:
            # The common create: it may share a transaction with concurrent ones (group.py).
            item = _Create(workflow, inputs, queue, priority, not_before_ms, origin, actor)
            return self.creates.submit(item), True
        run_id = new_id("run")

        def tx(conn: Connection, attempt: int) -> tuple[dict[str, Any], bool]:
            if attempt > 1 and _exists(conn, run_id):
                # The previous attempt committed before its error (an ambiguous commit).
                return _fetch_run(conn, run_id, self.stall_after_ms), True
            if idempotency_key is not None:
                existing = self._by_idempotency_key(conn, idempotency_key)
                if existing is not None:
                    return self._replay(existing, workflow, inputs), False
            row = _insert_run(
                conn,
                run_id=run_id,
                workflow=workflow,
                inputs=inputs,
                queue=queue,
                priority=priority,
                not_before_ms=not_before_ms,
                origin=origin,
                parent_run_id=parent_run_id,
                idempotency_key=idempotency_key,
                actor=actor,
                snapshot=snapshot,
                notify=self.is_postgres,
                parsed=self.statements,
                prepared=self.prepared,
            )
            add_audit(
                conn, actor, "run.create", row.id, details={"workflow": workflow},
                prepared=self.prepared,
            )  # fmt: skip
            return run_dict(row, row.db_now, self.stall_after_ms), True

        try:
            run, created = self.write_attempts(tx)
        except sa_exc.IntegrityError:
            if idempotency_key is None:
                raise
            # Two requests with the same key raced; the other one won. Answer with its run.
            existing = self.read(lambda conn: self._by_idempotency_key(conn, idempotency_key))
            if existing is None:
                raise
            return self._replay(existing, workflow, inputs), False
        return run, created

    def create_group(self, items: list[_Create]) -> list[dict[str, Any] | BaseException]:
        """Write concurrent creates in one transaction (GroupCommit's `run_group`): one run or
        exception per item. An item the store refuses (unknown workflow, invalid inputs)
        fails alone; if the transaction itself fails, each item is written alone, so one
        item's error never becomes another's — except the database being unavailable, which
        every item hears at once."""
        try:
            return self._write_creates(items)
        except DatabaseUnavailable:
            raise
        except Exception:
            if len(items) == 1:
                raise
        outcomes: list[dict[str, Any] | BaseException] = []
        for item in items:
            try:
                outcomes += self._write_creates([item])
            except Exception as exc:  # noqa: BLE001 - this item's answer
                outcomes.append(exc)
        return outcomes

    def _write_creates(self, items: list[_Create]) -> list[dict[str, Any] | BaseException]:
        run_ids = [new_id("run") for _ in items]

        def tx(conn: Connection, attempt: int) -> list[dict[str, Any] | BaseException]:
            outcomes: list[dict[str, Any] | BaseException] = []
            queues: set[str] = set()
            for item, run_id in zip(items, run_ids, strict=True):
                if attempt > 1 and _exists(conn, run_id):
                    # The previous attempt committed before its error (an ambiguous commit).
                    outcomes.append(_fetch_run(conn, run_id, self.stall_after_ms))
                    continue
                try:
                    row = _insert_run(
                        conn, run_id=run_id, workflow=item.workflow, inputs=item.inputs,
                        queue=item.queue, priority=item.priority,
                        not_before_ms=item.not_before_ms, origin=item.origin, actor=item.actor,
                        parsed=self.statements, prepared=self.prepared,
                    )  # fmt: skip
                except InvalidInput as exc:  # raised before the item wrote anything
                    outcomes.append(exc)
                    continue
                add_audit(
                    conn, item.actor, "run.create", row.id,
                    details={"workflow": item.workflow}, prepared=self.prepared,
                )  # fmt: skip
                queues.add(row.queue)
                outcomes.append(run_dict(row, row.db_now, self.stall_after_ms))
            if self.is_postgres:
                for queue in sorted(queues):  # wakes LISTENing runners at commit (DESIGN §5)
                    self.prepared.get("notify_runs", lambda: _NOTIFY).rows(conn, {"queue": queue})
            return outcomes

        return self.write_attempts(tx)

    def create_runs(
        self,
        workflow: str,
        inputs: list[Any],
        *,
        queue: str | None = None,
        priority: int | None = None,
        origin: str = "api",
        actor: Actor | None = None,
    ) -> list[str]:
        """Many queued runs of one workflow in one transaction (bulk enqueue); their ids.

        Every input is validated first: one invalid entry rejects the whole batch, naming it.
        """
        if not inputs:
            return []
        for index, given in enumerate(inputs):
            check_inputs_size(given, self.max_inputs_bytes, f"runs[{index}].inputs")
        if queue is not None and not (0 < len(queue) <= MAX_QUEUE_LEN):
            raise InvalidInput(f"queue must be 1–{MAX_QUEUE_LEN} characters", field="queue")
        who = (actor or Actor()).name
        run_ids = [new_id("run") for _ in inputs]

        def tx(conn: Connection, attempt: int) -> list[str]:
            if attempt > 1 and _exists(conn, run_ids[0]):  # an ambiguous commit landed
                return run_ids
            row = conn.execute(_SELECT_DEFINITION, {"name": workflow}).first()
            if row is None:
                raise InvalidInput(f"unknown workflow {workflow!r}", field="workflow")
            wf = self.statements.get(
                ("workflow", workflow, row.version),
                lambda: workflow_from_definition(row.definition),
            )
            runs_rows, task_rows, event_rows = [], [], []
            run_queue = queue or wf.queue
            for index, given in enumerate(inputs):
                try:
                    clean = validate_inputs(wf, given)
                except InvalidInput as exc:
                    raise InvalidInput(
                        f"runs[{index}]: {exc.message}", field=f"runs[{index}].{exc.field}"
                    ) from None
                run_id = run_ids[index]
                runs_rows.append(
                    {
                        "id": run_id, "workflow": workflow, "version": row.version,
                        "kind": wf.kind, "config_snapshot": row.definition, "inputs": clean,
                        "status": "queued", "queue": run_queue,
                        "priority": wf.priority if priority is None else priority,
                        "not_before": None, "parent_run_id": None, "origin": origin,
                        "current_attempt": 0, "requested_by": who, "idempotency_key": None,
                        "metrics": {},
                        "max_attempts": wf.loop.max_attempts if wf.loop else None,
                        "pass_threshold": wf.loop.pass_threshold if wf.loop else None,
                    }
                )  # fmt: skip
                if wf.steps is not None:
                    task_rows += _task_rows(wf, run_id)
                event_rows.append(_queued_event(run_id, run_queue, origin, None, who))
            conn.execute(_INSERT_RUNS, runs_rows)
            if task_rows:
                conn.execute(_INSERT_TASKS, task_rows)
            add_events(conn, event_rows)
            ids = [r["id"] for r in runs_rows]
            add_audit(conn, actor, "run.create_batch", None,
                      details={"workflow": workflow, "count": len(ids), "first": ids[0],
                               "last": ids[-1]})  # fmt: skip
            if self.is_postgres:
                conn.execute(select(func.pg_notify("loopdeck_runs", run_queue)))
            return ids

        return self.write_attempts(tx)

    def _by_idempotency_key(self, conn: Connection, key: str) -> Any:
        return conn.execute(_SELECT_BY_KEY, {"key": key}).first()

    def _replay(self, row: Any, workflow: str, inputs: Any) -> dict[str, Any]:
        if row.workflow != workflow:
            raise Conflict(
                f"Idempotency-Key was already used for run {row.id} of workflow "
                f"{row.workflow!r}, not {workflow!r}",
                run_id=row.id,
            )
        submitted = inputs or {}
        if any(row.inputs.get(k) != v for k, v in submitted.items()):
            raise Conflict(
                f"Idempotency-Key was already used for run {row.id} with different inputs",
                run_id=row.id,
            )
        return self.read(lambda conn: run_dict(row, db_now(conn), self.stall_after_ms))

    # -- cancel ---------------------------------------------------------------------------

    def request_cancel(
        self, run_id: str, reason: str | None = None, actor: Actor | None = None
    ) -> dict[str, Any]:
        """Queued or waiting runs end cancelled at once; running ones get the intent, which
        their runner observes between stages or at its next heartbeat."""
        who = (actor or Actor()).name

        def tx(conn: Connection) -> dict[str, Any]:
            now = db_now_ms()
            done = conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status.in_(("queued", "waiting")))
                .values(
                    status="cancelled",
                    cancel_requested_at=now,
                    cancel_reason=reason,
                    completed_at=now,
                    claim_token=None,
                    error_message="cancelled before it ran to the end",
                )
                .returning(runs.c.id)
            ).first()
            if done is not None:
                conn.execute(
                    update(tasks)
                    .where(tasks.c.run_id == run_id, tasks.c.status.in_(("created", "waiting")))
                    .values(status="cancelled", completed_at=now)
                )
                add_events(
                    conn,
                    [
                        _cancel_event(run_id, "run.cancel_requested", who, reason),
                        _cancel_event(run_id, "run.cancelled", who, reason),
                    ],
                )
            else:
                asked = conn.execute(
                    update(runs)
                    .where(
                        runs.c.id == run_id,
                        runs.c.status == "running",
                        runs.c.cancel_requested_at.is_(None),
                    )
                    .values(cancel_requested_at=now, cancel_reason=reason)
                    .returning(runs.c.id)
                ).first()
                if asked is not None:
                    add_events(conn, [_cancel_event(run_id, "run.cancel_requested", who, reason)])
                else:
                    row = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).first()
                    if row is None:
                        raise NotFound(f"no run {run_id}")
                    if row.status != "running":  # running with the intent already set: no-op
                        raise Conflict(f"run {run_id} is already {row.status}", status=row.status)
            add_audit(conn, actor, "run.cancel", run_id, reason)
            return _fetch_run(conn, run_id, self.stall_after_ms)

        return self.write(tx)

    # -- retry and restart ----------------------------------------------------------------

    def retry_run(
        self, run_id: str, reason: str | None = None, actor: Actor | None = None
    ) -> dict[str, Any]:
        """A new run of the current definition with the same inputs (origin=retry)."""
        new_run_id = new_id("run")

        def tx(conn: Connection, attempt: int) -> dict[str, Any]:
            if attempt > 1 and _exists(conn, new_run_id):  # an ambiguous commit landed
                return _fetch_run(conn, new_run_id, self.stall_after_ms)
            old = _require_finished(conn, run_id, "retry")
            published = conn.execute(
                select(workflows.c.name).where(workflows.c.name == old.workflow)
            ).first()
            if published is None:
                raise Conflict(
                    f"workflow {old.workflow!r} is no longer published; "
                    "restart the run from its snapshot instead"
                )
            try:
                new_id_ = _insert_run(
                    conn,
                    run_id=new_run_id,
                    workflow=old.workflow,
                    inputs=old.inputs,
                    queue=old.queue,
                    priority=old.priority,
                    origin="retry",
                    parent_run_id=old.id,
                    actor=actor,
                    notify=self.is_postgres,
                    parsed=self.statements,
                    prepared=self.prepared,
                ).id
            except InvalidInput as exc:
                # The caller sent no inputs: the old ones no longer fit the current definition.
                raise Conflict(
                    f"the current definition of {old.workflow!r} does not accept the run's "
                    f"inputs ({exc.message}); restart the run from its snapshot instead",
                    field=exc.field,
                ) from None
            return self._lineage_event(conn, old.id, new_id_, "run.retried", reason, actor)

        return self.write_attempts(tx)

    def restart_run(
        self, run_id: str, reason: str | None = None, actor: Actor | None = None
    ) -> dict[str, Any]:
        """A new run from the old run's config snapshot and original inputs (origin=restart):
        it runs exactly what ran before, whatever has been published since."""
        new_run_id = new_id("run")

        def tx(conn: Connection, attempt: int) -> dict[str, Any]:
            if attempt > 1 and _exists(conn, new_run_id):  # an ambiguous commit landed
                return _fetch_run(conn, new_run_id, self.stall_after_ms)
            old = _require_finished(conn, run_id, "restart")
            new_id_ = _insert_run(
                conn,
                run_id=new_run_id,
                workflow=old.workflow,
                inputs=old.inputs,
                queue=old.queue,
                priority=old.priority,
                origin="restart",
                parent_run_id=old.id,
                actor=actor,
                snapshot=old.config_snapshot,
                notify=self.is_postgres,
                parsed=self.statements,
                prepared=self.prepared,
            ).id
            return self._lineage_event(conn, old.id, new_id_, "run.restarted", reason, actor)

        return self.write_attempts(tx)

    def _lineage_event(
        self,
        conn: Connection,
        old_id: str,
        new_id_: str,
        kind: str,
        reason: str | None,
        actor: Actor | None,
    ) -> dict[str, Any]:
        verb = kind.removeprefix("run.")  # retried / restarted
        who = (actor or Actor()).name
        add_events(
            conn,
            [
                {
                    "run_id": old_id,
                    "type": kind,
                    "message": f"{verb} as {new_id_} by {who}" + (f": {reason}" if reason else ""),
                    "data": {"new_run_id": new_id_, "by": who, "reason": reason},
                }
            ],
        )
        action = {"run.retried": "run.retry", "run.restarted": "run.restart"}[kind]
        add_audit(conn, actor, action, old_id, reason, {"new_run_id": new_id_})
        return run_detail(conn, new_id_, self.stall_after_ms)


def check_inputs_size(inputs: Any, limit: int, field: str = "inputs") -> None:
    """Inputs are stored with the run and copied into every retry: cap their size."""
    if inputs is None:
        return
    try:
        size = len(json.dumps(inputs, separators=(",", ":"), ensure_ascii=False).encode())
    except (TypeError, ValueError):
        return  # not JSON: validate_inputs rejects it, naming the field
    if size > limit:
        raise InvalidInput(
            f"{field} are {size:,} bytes of JSON, over the cap of {limit:,} "
            "(LOOPDECK_MAX_INPUTS_BYTES); pass large data as a file or URL",
            field=field,
            size=size,
            limit=limit,
        )


def _cancel_event(run_id: str, kind: str, who: str, reason: str | None) -> dict[str, Any]:
    text = "cancel requested" if kind == "run.cancel_requested" else "cancelled"
    return {
        "run_id": run_id,
        "type": kind,
        "message": f"{text} by {who}" + (f": {reason}" if reason else ""),
        "data": {"by": who, "reason": reason},
    }


def _require_finished(conn: Connection, run_id: str, action: str) -> Any:
    row = conn.execute(select(runs).where(runs.c.id == run_id)).first()
    if row is None:
        raise NotFound(f"no run {run_id}")
    if row.status in ACTIVE_RUN_STATUSES:
        raise Conflict(
            f"cannot {action} run {run_id} while it is {row.status}; cancel it or wait",
            status=row.status,
        )
    return row


def _fetch_run(conn: Connection, run_id: str, stall_after_ms: int) -> dict[str, Any]:
    now = db_now_ms().label("db_now")
    row = conn.execute(select(runs, now).where(runs.c.id == run_id)).first()
    if row is None:
        raise NotFound(f"no run {run_id}")
    return run_dict(row, row.db_now, stall_after_ms)


_SELECT_DEFINITION = select(workflows.c.definition, workflows.c.version).where(
    workflows.c.name == bindparam("name")
)
# Prebuilt with bound parameters: building `.values(**literals)` per call costs more than the
# INSERT itself.
# Returns what run_dict shows (not the stored snapshot, which the caller just gave).
_INSERT_RUN = (
    insert(runs)
    .values(created_at=db_now_ms())
    .returning(*(runs.c[name] for name in RUN_FIELDS), db_now_ms().label("db_now"))
)
_RUN_COLUMNS = (
    "id", "workflow", "version", "kind", "config_snapshot", "inputs", "status", "queue",
    "priority", "not_before", "parent_run_id", "origin", "current_attempt", "requested_by",
    "idempotency_key", "metrics", "max_attempts", "pass_threshold",
)  # fmt: skip
_NOTIFY = select(func.pg_notify("loopdeck_runs", bindparam("queue")))
_INSERT_TASKS = insert(tasks)
_TASK_COLUMNS = ("id", "run_id", "step", "position", "needs", "status", "attempt")
_INSERT_RUNS = insert(runs).values(created_at=db_now_ms())
_SELECT_BY_KEY = select(runs).where(runs.c.idempotency_key == bindparam("key"))


def _task_rows(wf: Any, run_id: str) -> list[dict[str, Any]]:
    return [
        {
            "id": new_id("tsk"),
            "run_id": run_id,
            "step": step,
            "position": position,
            "needs": list(wf.steps[step].needs),
            "status": "created",
            "attempt": 0,
        }
        for position, step in enumerate(wf.step_order())
    ]


def _queued_event(
    run_id: str, queue: str, origin: str, parent_run_id: str | None, by: str
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "type": "run.queued",
        "message": f"queued on {queue!r} ({origin})",
        "data": {"origin": origin, "queue": queue, "parent_run_id": parent_run_id, "by": by},
    }


def _exists(conn: Connection, run_id: str) -> bool:
    return conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is not None


def _insert_run(
    conn: Connection,
    *,
    run_id: str | None = None,
    workflow: str,
    inputs: Any,
    queue: str | None = None,
    priority: int | None = None,
    not_before_ms: int | None = None,
    origin: str,
    parent_run_id: str | None = None,
    idempotency_key: str | None = None,
    actor: Actor | None = None,
    snapshot: dict[str, Any] | None = None,
    notify: bool = False,
    parsed: StatementCache,
    prepared: PreparedCache,
) -> Any:
    """Insert a queued run with its tasks and run.queued event; returns the run's row
    (RUN_FIELDS and a `db_now` column). Its statements run prepared (fast.py)."""
    if snapshot is None:
        found = prepared.get("select_definition", lambda: _SELECT_DEFINITION).rows(
            conn, {"name": workflow}
        )
        if not found:
            raise InvalidInput(f"unknown workflow {workflow!r}", field="workflow")
        definition, version = found[0].definition, found[0].version
    else:
        definition, version = snapshot, definition_version(snapshot)
    # `version` is a hash of the definition's content, so a parsed definition can be reused.
    wf = parsed.get(("workflow", workflow, version), lambda: workflow_from_definition(definition))
    clean_inputs = validate_inputs(wf, inputs)
    run_id = run_id or new_id("run")
    values: dict[str, Any] = {
        "id": run_id,
        "workflow": workflow,
        "version": version,
        "kind": wf.kind,
        "config_snapshot": definition,
        "inputs": clean_inputs,
        "status": "queued",
        "queue": queue or wf.queue,
        "priority": wf.priority if priority is None else priority,
        "not_before": not_before_ms,
        "parent_run_id": parent_run_id,
        "origin": origin,
        "current_attempt": 0,
        "requested_by": (actor or Actor()).name,
        "idempotency_key": idempotency_key,
        "metrics": {},
        "max_attempts": None,
        "pass_threshold": None,
    }
    if wf.loop is not None:
        values["max_attempts"] = wf.loop.max_attempts
        values["pass_threshold"] = wf.loop.pass_threshold
    if parent_run_id is not None:
        exists = conn.execute(select(runs.c.id).where(runs.c.id == parent_run_id)).first()
        if exists is None:
            values["parent_run_id"] = None
    (row,) = prepared.get("insert_run", lambda: _INSERT_RUN, _RUN_COLUMNS).rows(conn, values)
    if wf.steps is not None:
        prepared.get("insert_tasks", lambda: _INSERT_TASKS, _TASK_COLUMNS).executemany(
            conn, _task_rows(wf, run_id)
        )
    add_events(
        conn,
        [
            _queued_event(
                run_id, values["queue"], origin, values["parent_run_id"], values["requested_by"]
            )
        ],
        prepared,
    )
    if notify:
        # Wakes LISTENing runners when this transaction commits (DESIGN §5).
        prepared.get("notify_runs", lambda: _NOTIFY).rows(conn, {"queue": values["queue"]})
    return row

"""What the runner holds for one claimed run: its lease, its unflushed writes, and the flags
that stop its execution (cancel requested, lease lost, shutdown).

Execution threads only append to the pending batch; the dispatcher thread alone takes batches,
applies them and advances the fence, so a run's writes land in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from shared.errors import LoopdeckError
from shared.store import NOW, ClaimedRun, JsonText, RunWrites, WriteOutcome

log = logging.getLogger(__name__)
MAX_MESSAGE = 8192  # characters of an event's message; the rest is cut, saying so
MAX_EVENT_DATA = 64 * 1024  # bytes of an event's data as JSON


class Outbox:
    """The set of runs with unflushed writes, and the condition the dispatcher sleeps on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        # By object, not run id: a run reset while it executes here may be claimed again by
        # this runner before the old execution stops, and the old claim's last writes must
        # not take the new one's place (whose writes would then never be flushed).
        self._dirty: dict[int, ActiveRun] = {}
        self._since: float | None = None  # when the oldest unflushed write was marked
        self.kicked = False

    def mark(self, run: ActiveRun) -> None:
        with self.cond:
            if not self._dirty:
                self._since = time.monotonic()
            self._dirty[id(run)] = run
            self.cond.notify()

    def kick(self) -> None:
        """Wake the dispatcher (a slot freed, a wake-up arrived, shutdown)."""
        with self.cond:
            self.kicked = True
            self.cond.notify()

    def drain(self) -> list[ActiveRun]:
        with self.cond:
            runs = list(self._dirty.values())
            self._dirty.clear()
            self._since = None
            return runs

    def pending(self) -> bool:
        with self.cond:
            return bool(self._dirty)

    def pending_since_unlocked(self) -> float | None:
        """When the oldest unflushed write was marked (None: nothing pending), for a caller
        that already holds `cond`."""
        return self._since if self._dirty else None


class Flag:
    """A `threading.Event` for the per-run flags, made on demand: most are only ever set and
    read, and a runner creates five per run (an Event costs a Condition and two locks, which
    profiled at an eighth of the dispatcher's work on short runs)."""

    __slots__ = ("_event", "_set")
    _make_lock = threading.Lock()

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True  # before reading _event: a concurrent wait() then sees one or other
        event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        with Flag._make_lock:
            if self._event is None:
                self._event = threading.Event()
        if self._set:
            self._event.set()
        return self._event.wait(timeout)


class StopExecution(Exception):
    """The run's execution must stop now: lease lost or runner shutting down."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ActiveRun:
    def __init__(
        self,
        claimed: ClaimedRun,
        outbox: Outbox,
        lease_valid: Callable[[], bool] | None = None,
    ) -> None:
        self.claimed = claimed
        self.id = claimed.id
        self.adopted_at = time.monotonic()  # when this runner took it on (the dispatcher's linger)
        self.token = claimed.token
        self.fence = claimed.fence
        self.metrics: dict[str, Any] = dict(claimed.metrics)
        self.cancel = Flag()
        self.lost = Flag()
        self.shutdown = Flag()
        self.finished = Flag()  # execution returned (its last writes are pending)
        self.flushed = Flag()  # … and they have been applied (or the lease is gone)
        self.stop_reason = ""
        if claimed.cancel_requested:
            self.cancel.set()
        self._outbox = outbox
        self._lease_valid = lease_valid or (lambda: True)
        self._lock = threading.Lock()
        self._batch = self._new_batch()
        self._queued = False  # in the outbox since the dispatcher last took the batch
        self._final = False
        self._processes: set[subprocess.Popen[bytes]] = set()
        self._artifact_bytes: int | None = None  # stored + accepted so far (per-run cap)

    # -- writes (any execution thread) ---------------------------------------------------

    def _new_batch(self) -> RunWrites:
        return RunWrites(self.id, self.token, 0)

    def set_run(self, **values: Any) -> None:
        with self._lock:
            self._batch.run.update(values)
            queued = self._enqueue()
        if queued:
            self._outbox.mark(self)

    def insert_task(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._batch.task_inserts.append({"run_id": self.id, **row})
            queued = self._enqueue()
        if queued:
            self._outbox.mark(self)

    def update_task(self, task_id: str, **values: Any) -> None:
        with self._lock:
            self._batch.task_updates.append((task_id, values))
            queued = self._enqueue()
        if queued:
            self._outbox.mark(self)

    def event(
        self,
        type_: str,
        message: str | None = None,
        *,
        stage: str | None = None,
        attempt: int | None = None,
        task_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        if message is not None and len(message) > MAX_MESSAGE:
            cut = len(message) - MAX_MESSAGE
            message = message[:MAX_MESSAGE] + f"… [{cut:,} more characters cut]"
            data = {**(data or {}), "cut_characters": cut}
        encoded = None if data is None else _capped(data)
        with self._lock:
            self._batch.events.append(
                {
                    "run_id": self.id,
                    "task_id": task_id,
                    "type": type_,
                    "stage": stage,
                    "attempt": attempt,
                    "message": message,
                    "data": encoded,
                }
            )
            queued = self._enqueue()
        if queued:
            self._outbox.mark(self)

    def artifact(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._batch.artifacts.append({"run_id": self.id, **row})
            queued = self._enqueue()
        if queued:
            self._outbox.mark(self)

    def reserve_artifact_bytes(self, size: int, cap: int, stored: Callable[[], int]) -> int | None:
        """Count `size` against the run's artifact cap. None if it fits; else the bytes the run
        already holds (then nothing is counted). `stored` reads what earlier claims stored."""
        with self._lock:
            if self._artifact_bytes is None:
                try:
                    self._artifact_bytes = stored()
                except LoopdeckError as exc:
                    # A database blip must not fail the stage: count from here on instead.
                    log.warning("run %s: cannot read its stored artifact bytes: %s", self.id, exc,
                                extra={"run_id": self.id, "action": "artifact_bytes_unknown"})  # fmt: skip
                    self._artifact_bytes = 0
            if self._artifact_bytes + size > cap:
                return self._artifact_bytes
            self._artifact_bytes += size
            return None

    def add_metric(self, name: str, value: float) -> None:
        with self._lock:
            current = self.metrics.get(name, 0)
            self.metrics[name] = current + value
            self._batch.run["metrics"] = dict(self.metrics)
            queued = self._enqueue()
        if queued:
            self._outbox.mark(self)

    def finish(self, status: str, **values: Any) -> None:
        """The run's terminal write: status, completion time and the closing event."""
        with self._lock:
            self._batch.run.update(status=status, completed_at=NOW, **values)
            self._final = True
            queued = self._enqueue()
        if queued:
            self._outbox.mark(self)

    def release_for_approval(self) -> None:
        """The run's last write: give the claim up while approval gates wait (the store sends
        the run to `waiting`, or back to the queue if a decision already arrived)."""
        with self._lock:
            self._batch.release_to = "waiting"
            self._final = True
            queued = self._enqueue()
        if queued:
            self._outbox.mark(self)

    def _enqueue(self) -> bool:
        """With `_lock` held, after a write: whether the run must be put in the outbox (its
        first write since the dispatcher took the batch). Further writes join the batch
        without waking the dispatcher again."""
        if self._queued:
            return False
        self._queued = True
        return True

    # -- dispatcher thread ---------------------------------------------------------------

    def take_batch(self) -> RunWrites | None:
        with self._lock:
            batch = self._batch
            if not (
                batch.run
                or batch.task_inserts
                or batch.task_updates
                or batch.events
                or batch.artifacts
                or batch.release_to
            ):
                return None
            self._batch = self._new_batch()
            self._queued = False
            batch.fence = self.fence
            batch.token = self.token
            return batch

    def restore(self, batch: RunWrites) -> None:
        """Put back a batch that could not be applied (database unavailable)."""
        with self._lock:
            later = self._batch
            batch.run.update(later.run)
            batch.task_inserts.extend(later.task_inserts)
            batch.task_updates.extend(later.task_updates)
            batch.events.extend(later.events)
            batch.artifacts.extend(later.artifacts)
            batch.release_to = batch.release_to or later.release_to
            self._batch = batch
            queued = self._enqueue()
        if queued:
            self._outbox.mark(self)

    def applied(self, outcome: WriteOutcome, batch: RunWrites) -> None:
        if outcome.applied:
            self.fence += 1
            if outcome.cancel_requested and not self.cancel.is_set():
                self.request_cancel()
            if outcome.released_to is not None:
                log.info(
                    "run %s: released at an approval gate (now %s)", self.id, outcome.released_to,
                    extra={"run_id": self.id, "action": "released_for_approval"},
                )  # fmt: skip
            if "status" in batch.run or batch.release_to:  # the terminal write landed
                self.flushed.set()
        else:
            self.mark_lost("the run's claim was taken away (reaped, reset or finished elsewhere)")

    # -- control -------------------------------------------------------------------------

    def has_final_write(self) -> bool:
        with self._lock:
            return self._final

    def request_cancel(self) -> None:
        # The stage loop (stages/command.py) owns the TERM → grace → KILL sequence.
        self.cancel.set()

    def mark_lost(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.stop_reason = reason
        self.lost.set()
        self.flushed.set()
        log.warning(
            "run %s: lease lost, stopping its work: %s",
            self.id,
            reason,
            extra={"run_id": self.id, "action": "lease_lost"},
        )
        self.signal_processes(signal.SIGKILL)

    def begin_shutdown(self, reason: str) -> None:
        self.stop_reason = reason
        self.shutdown.set()

    def check(self) -> None:
        """Raise StopExecution when the run's work must stop (not for cancel: that is a result)."""
        if not self.lost.is_set() and not self._lease_valid():
            # No heartbeat has succeeded for stall_after (the process was frozen, or the
            # database unreachable): the run may be someone else's now. Start nothing more.
            self.mark_lost("no successful heartbeat for longer than stall_after")
        if self.lost.is_set():
            raise StopExecution(self.stop_reason or "lease lost")
        if self.shutdown.is_set():
            raise StopExecution(self.stop_reason or "runner shutting down")

    def add_process(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.add(proc)
        if self.lost.is_set():
            self.signal_processes(signal.SIGKILL)

    def remove_process(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.discard(proc)

    def signal_processes(self, sig: int) -> None:
        with self._lock:
            procs = list(self._processes)
        for proc in procs:
            kill_group(proc, sig)


# One encoder for all event data: json.dumps with an argument builds a new one per call.
_ENCODER = json.JSONEncoder(default=str)


def _capped(data: dict[str, Any]) -> JsonText:
    """The event's data as JSON text (the dispatcher writes it as it is), or a note saying
    why it was cut."""
    try:
        text = _ENCODER.encode(data)
    except (TypeError, ValueError):
        return JsonText(json.dumps({"cut": "the event data is not JSON"}))
    size = len(text)
    if size <= MAX_EVENT_DATA:
        return JsonText(text)
    cut = {"cut": f"{size:,} bytes of event data, over {MAX_EVENT_DATA:,}", "cut_bytes": size}
    return JsonText(json.dumps(cut))


def kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal a stage's whole process group (the stage runs in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)

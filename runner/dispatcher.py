"""The dispatcher loop: flush the runs' pending writes and claim into free slots, in one
transaction per cycle (a single writer per runner; SQLite has one writer anyway)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from shared.errors import DatabaseUnavailable
from shared.store import ClaimedRun, ClaimRequest, RunWrites, Store
from shared.store.claims import SUSPECT_CLAIMS

from .active import ActiveRun, Outbox

log = logging.getLogger(__name__)
# How long a running execution's writes may wait for others before they are flushed; also
# how long a finished run's writes wait for the runs started with it (wait_for_work).
FLUSH_WINDOW = 0.005


class Dispatcher:
    def __init__(
        self,
        store: Store,
        runner_id: str,
        *,
        queues: tuple[str, ...],
        workflows: tuple[str, ...],
        concurrency: int,
        poll_interval: float,
        outbox: Outbox,
        start: Callable[[ActiveRun], None],
        metrics: Any = None,  # runner.metrics.RunnerMetrics
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.runner_id = runner_id
        self.queues = queues
        self.workflows = workflows
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.outbox = outbox
        self._start = start
        self._lock = threading.Lock()
        self.active: dict[str, ActiveRun] = {}  # by run id: its newest claim here
        # Older claims of runs claimed again here (reset while they ran) whose executions have
        # not returned yet: they hold a worker until they notice.
        self._superseded: list[ActiveRun] = []
        self.claiming = True
        self.wake = threading.Event()
        # Set while the dispatcher relies on wake-ups: its last claim did not fill its free
        # slots. While claims fill them it claims again as soon as a slot frees, and a wake-up
        # would only make it cycle early (on SQLite every commit of its own is a change too).
        self.listening = threading.Event()
        self._next_poll = 0.0
        self._more_likely = True
        self._retry_at = 0.0
        self._next_suspect_poll = 0.0
        # How long a finished run's writes wait for the runs adopted with it (_linger).
        self.linger = FLUSH_WINDOW
        self.last_claim_empty = False
        self.claimed_total = 0
        self.completed_total = 0
        # Set by the daemon to the heartbeat's check; executions consult it between stages.
        self.lease_valid: Callable[[], bool] = lambda: True

    # -- state shared with other loops ---------------------------------------------------

    def snapshot(self) -> list[ActiveRun]:
        with self._lock:
            return [*self.active.values(), *self._superseded]

    def busy(self) -> int:
        with self._lock:
            running = sum(1 for a in self.active.values() if not a.finished.is_set())
            return running + len(self._superseded)

    def holds_suspect(self) -> bool:
        """Whether a run claimed after a rescue is still executing here (one at a time, so a
        run that crashes its runner cannot take the same companions down twice)."""
        with self._lock:
            return any(
                a.claimed.claim_count > SUSPECT_CLAIMS and not a.finished.is_set()
                for a in self.active.values()
            )

    def adopt(self, claimed: ClaimedRun) -> ActiveRun:
        active = ActiveRun(claimed, self.outbox, lease_valid=self.lease_valid)
        with self._lock:
            earlier = self.active.get(active.id)
            self.active[active.id] = active
            if earlier is not None and not earlier.finished.is_set():
                self._superseded.append(earlier)
        if earlier is not None:
            # The run was reset while its execution here went on, and claimed again: the old
            # claim is gone for certain, whether or not a rejected write has said so yet.
            earlier.mark_lost("the run was claimed again (reset while it ran here)")
        self.claimed_total += 1
        return active

    # -- the loop ------------------------------------------------------------------------

    def claim_due(self, now: float) -> bool:
        return (
            self.claiming
            and now >= self._retry_at
            and self.concurrency - self.busy() > 0
            and (self.wake.is_set() or self._more_likely or now >= self._next_poll)
        )

    def run_once(self, now: float | None = None) -> bool:
        """One cycle. Returns True if it did anything."""
        now = time.monotonic() if now is None else now
        batches: list[tuple[ActiveRun, RunWrites]] = []
        for active in self.outbox.drain():
            batch = active.take_batch()
            # A claim superseded here (see adopt) can write no more, and the store takes one
            # batch per run in a cycle: its writes are dropped.
            if batch is not None and self.active.get(active.id) is active:
                batches.append((active, batch))
        claim = None
        if self.claim_due(now):
            self.wake.clear()
            free = self.concurrency - self.busy()
            # Suspects (runs rescued twice) are rare: look for one at most once per poll
            # interval rather than in every cycle, where a second claim statement would cost
            # each cycle a round trip. Fresh claims never take a suspect, so it waits ≤ 1 poll.
            suspects = 0
            if now >= self._next_suspect_poll and not self.holds_suspect():
                suspects = 1
                self._next_suspect_poll = now + self.poll_interval
            claim = ClaimRequest(
                self.runner_id, self.queues, self.workflows, free, suspects=suspects
            )
        if not batches and claim is None:
            self._forget_done()
            return False
        started = time.perf_counter()
        try:
            outcomes, claimed = self.store.apply_run_writes([b for _, b in batches], claim)
        except DatabaseUnavailable as exc:
            for active, batch in batches:
                active.restore(batch)
            self._retry_at = now + 1.0
            log.warning("dispatcher: %s; retrying in 1s", exc, extra={"action": "db_unavailable"})
            return False
        for (active, batch), outcome in zip(batches, outcomes, strict=True):
            if self.metrics is not None:
                if not outcome.applied and not active.lost.is_set():
                    self.metrics.lease_lost.inc()
                elif outcome.applied and not outcome.landed_earlier and "status" in batch.run:
                    self.metrics.on_finished(active.claimed.workflow, batch.run["status"])
            active.applied(outcome, batch)
        if claim is not None and self.metrics is not None:
            self.metrics.on_claim(time.perf_counter() - started, claimed)
        if claim is not None:
            self._more_likely = claim.filled
            if claim.filled:
                self.listening.clear()
            else:
                self.listening.set()
            self.last_claim_empty = not claimed
            self._next_poll = now + self.poll_interval * random.uniform(0.8, 1.2)
            for c in claimed:
                self._start(self.adopt(c))
        self._forget_done()
        if self.metrics is not None:
            self.metrics.busy.set(self.busy())
        return True

    def _forget_done(self) -> None:
        with self._lock:
            done = [
                run_id
                for run_id, a in self.active.items()
                if a.finished.is_set() and (a.flushed.is_set() or a.lost.is_set())
            ]
            for run_id in done:
                del self.active[run_id]
            if self._superseded:
                self._superseded = [a for a in self._superseded if not a.finished.is_set()]
        self.completed_total += len(done)

    def wait_for_work(self, timeout_cap: float = 1.0) -> None:
        """Sleep until a kick (an execution ended, a wake-up, shutdown), a claim poll is due,
        or writes have waited FLUSH_WINDOW.

        Writes of executions still running (a stage started, a log line) wait up to
        FLUSH_WINDOW for company instead of taking a transaction each: a short stage's start
        and end then land in one batch. An execution that ends kicks, so a finished run's
        writes — and its free slot — go out at once, unless runs this runner took on less
        than FLUSH_WINDOW ago are still executing: the cycle then lingers until they end or
        that window closes, so runs claimed together finish together — one transaction, and
        one claim into all their slots, instead of a cycle for whichever ended first and
        another for the rest. A run that takes longer than the window is not waited for.
        (A two-runner PostgreSQL drain: ~30 runs a transaction became ~60 of the 64 slots, and
        the drain went ~20 % faster; bench/RESULTS.md, twelfth run.)"""
        with self.outbox.cond:
            self._linger()
            deadline = time.monotonic() + timeout_cap
            if self.claiming and self.concurrency - self.busy() > 0:
                deadline = min(deadline, self._next_poll)
            while not self.outbox.kicked:
                since = self.outbox.pending_since_unlocked()
                end = deadline if since is None else min(deadline, since + FLUSH_WINDOW)
                timeout = end - time.monotonic()
                if timeout <= 0:
                    break
                self.outbox.cond.wait(timeout)
            self.outbox.kicked = False

    def _linger(self) -> None:
        """With `outbox.cond` held: wait while executions adopted within `linger` run on
        (each ending kicks the condition), at most until the newest one's window closes. No
        run is adopted meanwhile (this thread adopts them), so the wait is bounded."""
        while True:
            now = time.monotonic()
            with self._lock:
                young = [
                    a.adopted_at
                    for a in self.active.values()
                    if a.adopted_at > now - self.linger and not a.finished.is_set()
                ]
            if not young:
                return
            self.outbox.cond.wait(min(young) + self.linger - now)

    def flush_all(self, deadline: float) -> None:
        """Apply every pending write (used while shutting down)."""
        claiming, self.claiming = self.claiming, False
        try:
            while self.outbox.pending() and time.monotonic() < deadline:
                self.run_once()
        finally:
            self.claiming = claiming

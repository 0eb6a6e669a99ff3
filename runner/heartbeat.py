"""The heartbeat loop: one round trip refreshes the runner and its runs, and brings back cancel
requests, lost leases and a deregistration intent (DESIGN §5)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shared.errors import DatabaseUnavailable
from shared.store import Store

from .dispatcher import Dispatcher
from .host import StatsCollector

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        store: Store,
        runner_id: str,
        dispatcher: Dispatcher,
        *,
        interval: float,
        stall_after: float,
        on_deregister: Callable[[], None],
        extra_stats: Callable[[], dict[str, Any]],
    ) -> None:
        self.store = store
        self.runner_id = runner_id
        self.dispatcher = dispatcher
        self.interval = interval
        self.stall_after = stall_after
        self.on_deregister = on_deregister
        self.extra_stats = extra_stats
        self.stats = StatsCollector()
        self.last_ok = time.monotonic()
        self.failing = False

    def lease_valid(self, now: float | None = None) -> bool:
        """False once stall_after has passed since the last successful heartbeat: other
        runners may have rescued our runs by now (checked before every stage starts)."""
        now = time.monotonic() if now is None else now
        return now - self.last_ok <= self.stall_after

    def run_once(self, now: float | None = None) -> float:
        """Beat once; returns how long to wait before the next beat."""
        now = time.monotonic() if now is None else now
        # A lost claim is not refreshed (nor asked about): the run may be held here again
        # under a newer claim after a reset, and only that one counts.
        held = [a for a in self.dispatcher.snapshot() if not a.lost.is_set()]
        leases = {a.id: a.token for a in held}
        stats = {**self.stats.collect(), **self.extra_stats(), "heartbeat_interval": self.interval}
        try:
            result = self.store.heartbeat(self.runner_id, leases, stats)
        except DatabaseUnavailable as exc:
            self._self_fence(now, exc)
            return min(1.0, self.interval)
        if self.failing:
            log.info("heartbeat: database reachable again", extra={"action": "db_back"})
            self.failing = False
        self.last_ok = now
        by_id = {a.id: a for a in held}
        for run_id in result.lost:
            if by_id[run_id].flushed.is_set():
                continue  # its last write gave the claim up itself (an approval-gate release)
            if self.dispatcher.metrics is not None and not by_id[run_id].lost.is_set():
                self.dispatcher.metrics.lease_lost.inc()
            by_id[run_id].mark_lost("the heartbeat found the claim taken away (reaped or reset)")
        for run_id, cancel in result.alive.items():
            if cancel and not by_id[run_id].cancel.is_set():
                log.info("run %s: cancel requested", run_id, extra={"run_id": run_id})
                by_id[run_id].request_cancel()
        if result.deregister_requested:
            self.on_deregister()
        if not result.runner_known:
            log.error("heartbeat: this runner's row is gone from the registry")
        return self.interval

    def _self_fence(self, now: float, exc: Exception) -> None:
        """Without heartbeats past stall_after, other runners may rescue our runs: stop them."""
        if not self.failing:
            log.warning("heartbeat failed: %s", exc, extra={"action": "heartbeat_failed"})
            self.failing = True
        if now - self.last_ok > self.stall_after:
            for active in self.dispatcher.snapshot():
                active.mark_lost(
                    f"no heartbeat for {now - self.last_ok:.0f}s (> stall_after): "
                    "the run may be rescued elsewhere"
                )

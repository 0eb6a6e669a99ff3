"""The reaper loop: rescue stalled runs (any runner may run it; its writes are conditional and
idempotent), plus the same-host fast path for runners whose process is gone."""

from __future__ import annotations

import logging
from typing import Any

from shared.errors import DatabaseUnavailable
from shared.store import Store

from .host import process_is_gone

log = logging.getLogger(__name__)


class Reaper:
    def __init__(
        self,
        store: Store,
        *,
        hostname: str,
        host_key: str,
        self_id: str | None,
        metrics: Any = None,  # runner.metrics.RunnerMetrics
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.hostname = hostname
        self.host_key = host_key
        self.self_id = self_id

    def _is_dead(self, runner_id: str, pid: int, started_ms: int, labels: dict[str, Any]) -> bool:
        if runner_id == self.self_id or labels.get("host_key") != self.host_key:
            return False
        return process_is_gone(pid, started_ms)

    def run_once(self, now_ms: int | None = None) -> list[dict[str, Any]]:
        try:
            rescued = self.store.rescue_from_dead_runners(self.hostname, self._is_dead)
            for s in self.store.end_stuck_sessions(now_ms=now_ms):
                log.warning(
                    "ended database session %s of stalled runner %s: inside one transaction "
                    "for %.1fs, holding locks its runs' rescue needs (last statement: %s)",
                    s["pid"], s["runner_id"], s["stuck_s"], s["query"],
                    extra={"action": "end_session", "stalled_runner": s["runner_id"]},
                )  # fmt: skip
            rescued += self.store.reap_stalled(now_ms=now_ms)
        except DatabaseUnavailable as exc:
            log.warning("reaper: %s", exc, extra={"action": "db_unavailable"})
            return []
        if self.metrics is not None:
            self.metrics.on_rescued(rescued)
        for r in rescued:
            log.warning(
                "rescued run %s → %s: %s", r["run_id"], r["status"], r["reason"],
                extra={"run_id": r["run_id"], "action": "rescue"},
            )  # fmt: skip
        return rescued

"""The runner's own Prometheus metrics, served on `--metrics-port` (docs/observability.md).

These are the counters only a runner knows: what it claimed and finished, how long stages
took, how long claims take, what its reaper rescued. Each runner has its own registry (tests
run several runners in one process); nothing is served unless a port is given.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from shared.errors import ConfigError

log = logging.getLogger(__name__)

STAGE_BUCKETS = (0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)


class RunnerMetrics:
    def __init__(self, runner_id: str, concurrency: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.claimed = Counter("loopdeck_runner_runs_claimed", "runs this runner claimed",
                               ["workflow"], registry=r)  # fmt: skip
        self.finished = Counter(
            "loopdeck_runner_runs_finished",
            "runs this runner finished, by final status (terminal writes that landed)",
            ["workflow", "status"], registry=r,
        )  # fmt: skip
        self.stage_seconds = Histogram(
            "loopdeck_runner_stage_duration_seconds", "one try of a stage, by its outcome",
            ["workflow", "step", "status"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.claim_seconds = Histogram(
            "loopdeck_runner_claim_duration_seconds",
            "the claim transaction's round trip (flushed writes included), by whether it got runs",
            ["outcome"], buckets=CLAIM_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "loopdeck_runner_queue_wait_seconds",
            "from creation (or not_before) to the first claim, by the database clock",
            ["workflow"], buckets=WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.rescues = Counter(
            "loopdeck_runner_reaper_rescues", "stalled runs this runner's reaper rescued",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.lease_lost = Counter("loopdeck_runner_leases_lost",
                                  "runs taken away while this runner held them",
                                  registry=r)  # fmt: skip
        self.busy = Gauge("loopdeck_runner_busy_slots", "runs executing now", registry=r)
        self.slots = Gauge("loopdeck_runner_slots", "--concurrency", registry=r)
        self.slots.set(concurrency)
        info = Gauge("loopdeck_runner_info", "this runner", ["runner_id"], registry=r)
        info.labels(runner_id).set(1)
        # Each metric's child per label values, found with one dict lookup: `labels()` checks
        # and converts its arguments and takes a lock every time, and the runner records
        # four labelled values per run (~19 µs a run, 4 % of a drained run's CPU).
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:  # a race makes the same child twice: labels() returns one object
            child = self._children[key] = metric.labels(*values)
        return child

    def serve(self, port: int, host: str) -> Any:
        """Serve /metrics in a daemon thread; returns the server (shut down by the caller)."""
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                "pass another --metrics-port"
            ) from None
        log.info("metrics on http://%s:%d/metrics", host, server.server_port,
                 extra={"action": "metrics_listening"})  # fmt: skip
        return server

    def on_claim(self, seconds: float, claimed: Iterable[Any]) -> None:
        by_workflow: dict[str, int] = {}
        for c in claimed:
            by_workflow[c.workflow] = by_workflow.get(c.workflow, 0) + 1
            if c.claim_count == 1 and c.queued_ms is not None:
                self._child(self.queue_wait, c.workflow).observe(max(0, c.queued_ms) / 1000)
        for workflow, n in by_workflow.items():
            self._child(self.claimed, workflow).inc(n)
        self._child(self.claim_seconds, "claimed" if by_workflow else "empty").observe(seconds)

    def on_finished(self, workflow: str, status: str) -> None:
        self._child(self.finished, workflow, status).inc()

    def on_stage(self, workflow: str, step: str, status: str, seconds: float) -> None:
        self._child(self.stage_seconds, workflow, step, status).observe(seconds)

    def on_rescued(self, rescued: Iterable[dict[str, Any]]) -> None:
        for r in rescued:
            self.rescues.labels(r["status"]).inc()

"""GET /metrics on the API: Prometheus text (docs/observability.md).

The API is stateless and may run as many (short-lived) processes, so what it shows about the
system is read from the database at scrape time (`Store.metrics_snapshot`: queue depth, oldest
queued age, active runs, stalled runs, runners): every replica answers the same, and it is
right even when the scrape lands on a fresh serverless instance. What only this process knows —
its request latencies and the runs created through it — is in a registry of this app; sum it
over the replicas you scrape. Counters only runners know (claims, finished runs, stage
durations, rescues) are on each runner's own port (`loopdeck runner --metrics-port N`).

With API tokens configured the endpoint needs a viewer token, like every read of /api.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import VIEWER, access
from .context import Resources, resources
from .openapi import operation

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)


class DatabaseCollector(Collector):
    """Gauges read from the database when Prometheus scrapes."""

    def __init__(self, res: Resources) -> None:
        self.res = res

    def describe(self) -> Iterator[Metric]:
        # Without describe() the registry would call collect() — a query — when the app is
        # built: I/O at import in a serverless function.
        for name in (
            "loopdeck_database_up", "loopdeck_queue_depth", "loopdeck_queue_eligible",
            "loopdeck_queue_oldest_age_seconds", "loopdeck_runs_active", "loopdeck_runs_stalled",
            "loopdeck_runners",
        ):  # fmt: skip
            yield GaugeMetricFamily(name, "")

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("loopdeck_database_up", "1 if the scrape could read the database")
        try:
            snap = self.res.store.metrics_snapshot()
        except Exception as exc:  # noqa: BLE001 - unreachable, busy, or not migrated: say so
            log.warning("metrics: cannot read the database: %s", str(exc).splitlines()[0])
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("loopdeck_queue_depth", "queued runs", labels=["queue"])
        eligible = GaugeMetricFamily(
            "loopdeck_queue_eligible", "queued runs claimable now (not_before passed)",
            labels=["queue"],
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            "loopdeck_queue_oldest_age_seconds",
            "how long the oldest claimable run of the queue has waited (database clock)",
            labels=["queue"],
        )
        for queue, q in sorted(snap["queues"].items()):
            depth.add_metric([queue], q["depth"])
            eligible.add_metric([queue], q["eligible"])
            oldest.add_metric([queue], q["oldest_age_s"])
        yield from (depth, eligible, oldest)
        active = GaugeMetricFamily(
            "loopdeck_runs_active", "runs queued, running or waiting, by workflow and status",
            labels=["workflow", "status"],
        )  # fmt: skip
        for (workflow, status), n in sorted(snap["active"].items()):
            active.add_metric([workflow, status], n)
        yield active
        yield GaugeMetricFamily(
            "loopdeck_runs_stalled", "running runs with no heartbeat for LOOPDECK_STALL_AFTER",
            value=snap["stalled"],
        )  # fmt: skip
        fleet = GaugeMetricFamily(
            "loopdeck_runners", "registered runners that have not stopped, by status and health",
            labels=["status", "health"],
        )  # fmt: skip
        for (status, health), n in sorted(snap["runners"].items()):
            fleet.add_metric([status, health], n)
        yield fleet


class ApiMetrics:
    """One app's registry (never the process-global one: tests build many apps)."""

    def __init__(self, res: Resources) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "loopdeck_api_request_duration_seconds",
            "API request latency by route template (this process)",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.runs_created = Counter(
            "loopdeck_api_runs_created",
            "runs created through this API process (new, not idempotent replays)",
            ["workflow", "origin"],
            registry=self.registry,
        )
        self.registry.register(DatabaseCollector(res))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: time every HTTP request, labelled by the route's path template (never
    the raw path, which would make a series per run id)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )


@access(VIEWER)
@operation("Prometheus metrics", responses={200: None}, media_type="text/plain")
async def metrics_endpoint(request: Request) -> Response:
    body = await run_in_threadpool(resources(request).metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)

"""The runner daemon: registration, the loops, the supervisor and graceful shutdown.

Shutdown (SIGTERM, SIGINT, a deregistration intent): stop claiming → let running executions
finish within `shutdown_grace` → stop the rest (TERM/KILL their stage processes) → flush →
release what is unfinished back to the queue with a `run.released` event → exit 0.
If any loop dies, the supervisor does the same quickly and the process exits 1.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared import __version__
from shared.db import runner_session_name
from shared.errors import ConfigError, DatabaseUnavailable, LoopdeckError
from shared.ids import new_id
from shared.logcontext import log_context
from shared.migrate import check_schema
from shared.settings import DEFAULT_CONCURRENCY, Settings
from shared.store import Store
from shared.store.feed import ChangeFeed, open_change_feed
from shared.workflows import Workflow, load_files
from shared.workflows.loader import config_dirs

from .active import ActiveRun, Outbox
from .dispatcher import Dispatcher
from .execution import ExecOptions, Execution
from .heartbeat import Heartbeat
from .host import host_key, process_started_ms
from .metrics import RunnerMetrics
from .pool import WorkerPool
from .reaper import Reaper
from .stages.call import resolve

log = logging.getLogger(__name__)
# Containers made and not yet freed before the collector looks at the youngest ones (700 by
# default; see _freeze_startup_objects).
YOUNG_GENERATION_THRESHOLD = 10_000


@dataclass
class RunnerOptions:
    queues: tuple[str, ...] = ("default",)
    concurrency: int = DEFAULT_CONCURRENCY
    workflow_id: str | None = None
    once: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    reaper: bool = True
    metrics_port: int | None = None  # serve Prometheus metrics there (0: any free port)
    metrics_host: str = "127.0.0.1"


class Runner:
    def __init__(self, settings: Settings, options: RunnerOptions, store: Store | None = None):
        if options.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if not options.queues:
            raise ConfigError("at least one --queue is needed")
        self.settings = settings
        self.options = options
        self.id = new_id("rnr")
        self.store = store or Store.from_settings(
            settings, retry_seconds=10.0, session_name=runner_session_name(self.id)
        )
        self.hostname = socket.gethostname()
        self.host_key = host_key()
        self.workflows: dict[str, Workflow] = {}
        self.outbox = Outbox()
        self.exit_code = 0
        self._stop = threading.Event()
        self._stop_reason = ""
        self._fatal: tuple[str, BaseException] | None = None
        self._loops_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._target: ActiveRun | None = None
        self.metrics = RunnerMetrics(self.id, options.concurrency)
        self.metrics_server: Any = None
        self._exec_options = ExecOptions(
            kill_grace=settings.kill_grace,
            max_artifact_bytes=settings.max_artifact_bytes,
            max_run_artifact_bytes=settings.max_run_artifact_bytes,
            artifact_bytes_of=self.store.artifact_bytes,
            extra_paths=tuple(config_dirs(settings.config_files)) + (os.getcwd(),),
            metrics=self.metrics,
        )
        self.pool = WorkerPool(options.concurrency)
        self.dispatcher = Dispatcher(
            self.store,
            self.id,
            queues=options.queues,
            workflows=(),
            concurrency=options.concurrency,
            poll_interval=settings.poll_interval,
            outbox=self.outbox,
            start=self._start_execution,
            metrics=self.metrics,
        )
        self.heartbeat = Heartbeat(
            self.store,
            self.id,
            self.dispatcher,
            interval=settings.heartbeat_interval,
            stall_after=settings.stall_after,
            on_deregister=self._deregistered,
            extra_stats=lambda: {
                "running": self.dispatcher.busy(),
                "claimed_total": self.dispatcher.claimed_total,
                "completed_total": self.dispatcher.completed_total,
            },
        )
        self.dispatcher.lease_valid = self.heartbeat.lease_valid
        self.reaper = Reaper(self.store, hostname=self.hostname, host_key=self.host_key,
                             self_id=self.id, metrics=self.metrics)  # fmt: skip
        self.feed: ChangeFeed | None = None  # opened by start(), once the config is valid

    # -- start ---------------------------------------------------------------------------

    def load_workflows(self) -> dict[str, Workflow]:
        files = self.settings.config_files
        if not files:
            if self.options.workflow_id:
                return {}
            raise ConfigError("no workflow files: pass --config FILE (or set LOOPDECK_CONFIG)")
        workflows = load_files(list(files))
        # Fail at start, not at the first run, when a `call:` target cannot be imported.
        for wf in workflows.values():
            stages = list(wf.steps.values()) if wf.steps else [
                s for s in (wf.loop.produce, wf.loop.evaluate, wf.loop.revise) if s  # type: ignore[union-attr]
            ]  # fmt: skip
            for stage in stages:
                if stage.call:
                    try:
                        resolve(stage.call, self._exec_options.extra_paths)
                    except Exception as exc:  # noqa: BLE001 - reported as a config error
                        raise ConfigError(
                            f"workflow {wf.name!r}: cannot import {stage.call}: "
                            f"{type(exc).__name__}: {exc}"
                        ) from None
        return workflows

    def start(self) -> None:
        with log_context(runner_id=self.id):
            self._start()

    def _start(self) -> None:
        check_schema(self.store.engine)
        self.workflows = self.load_workflows()
        if self.workflows:
            self.store.publish_workflows(self.workflows, published_by=f"runner {self.id}")
        self.dispatcher.workflows = tuple(sorted(self.workflows))
        self.store.register_runner(
            {
                "id": self.id,
                "hostname": self.hostname,
                "pid": os.getpid(),
                "pid_started_at": process_started_ms(),
                "version": __version__,
                "queues": list(self.options.queues),
                "labels": {**self.options.labels, "host_key": self.host_key},
                "workflows": sorted(self.workflows),
                "concurrency": self.options.concurrency,
                "stats": {"heartbeat_interval": self.settings.heartbeat_interval},
            }
        )
        log.info(
            "runner %s started: queues=%s workflows=%s concurrency=%d",
            self.id, ",".join(self.options.queues), ",".join(sorted(self.workflows)) or "-",
            self.options.concurrency, extra={"action": "runner_started"},
        )  # fmt: skip
        if self.options.metrics_port is not None:
            self.metrics_server = self.metrics.serve(
                self.options.metrics_port, self.options.metrics_host
            )
        if self.options.workflow_id:
            self.dispatcher.claiming = False
            self._claim_target(self.options.workflow_id)
        _freeze_startup_objects()
        self._spawn("dispatcher", self._dispatch_loop)
        self._spawn("heartbeat", self._heartbeat_loop)
        if self.options.reaper and not self.options.workflow_id:
            self._spawn("reaper", self._reaper_loop)
        if not self.options.workflow_id:
            self.feed = open_change_feed(
                self.store.engine,
                self.settings.wakeup_interval,
                queues=self.options.queues,
                mode=self.settings.wakeup,
            )
            self._spawn("wakeup", self._wakeup_loop)

    def _claim_target(self, run_id: str) -> None:
        claimed, why = self.store.claim_run_by_id(self.id, run_id)
        if claimed is None:
            if why is None:
                raise LoopdeckError(f"no run {run_id}")
            holder = f", claimed by {why['claimed_by']}" if why.get("claimed_by") else ""
            raise LoopdeckError(f"run {run_id} was not claimed: it is {why['status']}{holder}")
        self._target = self.dispatcher.adopt(claimed)
        self._start_execution(self._target)

    def _start_execution(self, active: ActiveRun) -> None:
        execution = Execution(active, self._exec_options)

        def job() -> None:
            try:
                execution.run()
            finally:
                self.outbox.kick()

        # The pool's thread logs with this runner's fields (runner_id) too.
        context = contextvars.copy_context()
        self.pool.submit(lambda: context.run(job))

    # -- loops and supervisor ------------------------------------------------------------

    def _spawn(self, name: str, body: Callable[[], None]) -> None:
        def target() -> None:
            try:
                with log_context(runner_id=self.id):
                    body()
            except BaseException as exc:  # noqa: BLE001 - the supervisor reports it
                log.critical("loop %r died: %s", name, exc, exc_info=True,
                             extra={"action": "loop_died"})  # fmt: skip
                self._fatal = (name, exc)
                self._stop.set()

        thread = threading.Thread(target=target, name=f"loopdeck-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _dispatch_loop(self) -> None:
        with self.store.pinned_connection():  # a transaction every few ms: keep one connection
            while not self._loops_stop.is_set():
                self.dispatcher.wait_for_work()
                self.dispatcher.run_once()

    def _heartbeat_loop(self) -> None:
        while not self._loops_stop.is_set():
            delay = self.heartbeat.run_once()
            self._loops_stop.wait(delay)

    def _reaper_loop(self) -> None:
        interval = self.settings.reaper_interval
        self._loops_stop.wait(random.uniform(0, interval))
        while not self._loops_stop.is_set():
            self.reaper.run_once()
            self._loops_stop.wait(interval * random.uniform(0.9, 1.1))

    def _wakeup_loop(self) -> None:
        assert self.feed is not None
        while not self._loops_stop.is_set():
            if not self.dispatcher.listening.wait(0.25):
                continue
            if self.feed.wait(0.25):
                self.dispatcher.wake.set()
                self.outbox.kick()

    def _deregistered(self) -> None:
        self.dispatcher.claiming = False  # the store refuses our claims from now on anyway
        self.request_stop("deregistered through the API")

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            log.info("runner %s stopping: %s", self.id, reason, extra={"action": "stopping"})
            self._stop.set()

    def _done_with_work(self) -> bool:
        if self._target is not None:
            return self._target.finished.is_set() and (
                self._target.flushed.is_set() or self._target.lost.is_set()
            )
        if self.options.once:
            return (
                self.dispatcher.last_claim_empty
                and not self.dispatcher.snapshot()
                and not self.outbox.pending()
            )
        return False

    def serve(self, *, install_signals: bool = True) -> int:
        """Run until stopped; returns the process exit code."""
        with log_context(runner_id=self.id):
            return self._serve(install_signals)

    def _serve(self, install_signals: bool) -> int:
        if install_signals:
            self._install_signals()
        while not self._stop.wait(0.1):
            if self._done_with_work():
                self.request_stop("no more work (--once / --workflow-id)")
        if self._fatal is not None:
            name, exc = self._fatal
            self.shutdown(grace=min(2.0, self.settings.shutdown_grace))
            raise LoopdeckError(f"runner loop {name!r} died: {type(exc).__name__}: {exc}")
        self.shutdown(grace=self.settings.shutdown_grace)
        if self._target is not None:
            return 0 if self._target_status() == "succeeded" else 1
        return 0

    def _target_status(self) -> str | None:
        assert self._target is not None
        try:
            return str(self.store.get_run(self._target.id, with_tasks=False)["status"])
        except LoopdeckError:
            return None

    def _install_signals(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self._stop.is_set():
                self.settings = self.settings.with_overrides(shutdown_grace=0.0)
                return
            self.request_stop(f"received {signal.Signals(signum).name}")

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def shutdown(self, *, grace: float) -> None:
        self.dispatcher.claiming = False
        with contextlib.suppress(LoopdeckError):
            self.store.set_runner_status(self.id, "draining")
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.dispatcher.busy():
            time.sleep(0.05)
        unfinished = [a for a in self.dispatcher.snapshot() if not a.finished.is_set()]
        for active in unfinished:
            active.begin_shutdown("runner shutting down")
        stop_by = time.monotonic() + self.settings.kill_grace + 2
        while time.monotonic() < stop_by and any(not a.finished.is_set() for a in unfinished):
            time.sleep(0.05)
        self._loops_stop.set()
        self.outbox.kick()
        for thread in self._threads:
            thread.join(timeout=5)
        self.dispatcher.flush_all(time.monotonic() + 10)
        leases = {
            a.id: a.token
            for a in self.dispatcher.snapshot()
            if not a.flushed.is_set() and not a.lost.is_set()
        }
        try:
            released = self.store.release_runs(self.id, leases, "runner shutting down")
            if released:
                log.info("released %d unfinished run(s): %s", len(released), ", ".join(released),
                         extra={"action": "released"})  # fmt: skip
            self.store.set_runner_status(self.id, "stopped")
        except DatabaseUnavailable as exc:
            log.error("could not release runs at shutdown (%s); the reaper will rescue them", exc)
        if self.feed is not None:
            self.feed.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        self.pool.close()
        log.info("runner %s stopped", self.id, extra={"action": "runner_stopped"})


def _freeze_startup_objects() -> None:
    """Move what start-up built out of the cyclic garbage collector's sight (gc.freeze), and
    collect the young generation less often.

    Modules, SQLAlchemy's and pydantic's structures and the workflows live as long as the
    process, yet every full collection walked them all again — triggered by the churn of
    short-lived objects each run brings, about every 4,000 runs in a drain, each a pause of
    ~40 ms with the GIL held: ~10 µs of CPU per drained run. What remains is the young
    generation, collected whenever 700 more containers were made than freed: a cycle's runs
    hold that many for a moment, so it ran every few runs for ~3 µs a run, and found nearly
    nothing (the runs' objects are freed by reference counting). At 10,000 it does not run in
    a 16,000-run drain at all (python -m bench.cycle with gc.callbacks; bench/RESULTS.md,
    twelfth run). Objects made after start-up are collected as usual.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, older, oldest)

"""The database misbehaving: commits whose outcome is unknown, one busy SQLite file, and the
database going away for a while."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import exc as sa_exc

from api.app import create_app
from runner.daemon import Runner, RunnerOptions
from shared.errors import DatabaseUnavailable, LoopdeckError
from shared.settings import Settings
from shared.store import Store

from ..backends import Sqld, migrate, unavailable
from ..conftest import make_store
from ..helpers import ThreadedServer, free_port, wait_for
from .harness import (
    WORKFLOWS,
    Fleet,
    Timings,
    create_runs,
    effects,
    scaled,
    statuses,
    wait_registered,
    wait_terminal,
)

pytestmark = pytest.mark.reliability


# -- ambiguous commits --------------------------------------------------------------------


def _injected(when: str) -> sa_exc.OperationalError:
    return sa_exc.OperationalError(
        "COMMIT", {}, ConnectionResetError(f"injected: connection lost {when}"),
        connection_invalidated=True,
    )  # fmt: skip


class FaultyStore(Store):
    """Makes 1 in `every` write transactions raise after committing (the client cannot tell it
    landed) and another 1 in `every` raise before committing: the two faces of a lost COMMIT
    reply. Which ones is random (a random phase), how many is not: a scenario with few writes
    still gets its faults."""

    def __init__(self, engine: Any, *, every: int, **kw: Any) -> None:
        super().__init__(engine, **kw)
        self.every = every
        self.phase = random.randrange(every)
        self.writes = 0
        self.injected: Counter[str] = Counter()

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Any]:
        slot = -1
        if write:
            slot = (self.writes + self.phase) % self.every
            self.writes += 1
        with super()._transaction(write) as conn:
            yield conn
            if slot == 0:
                self.injected["raise_without_commit"] += 1
                raise _injected("before the commit")
        if slot == self.every // 2:
            self.injected["commit_then_raise"] += 1
            raise _injected("after the commit")


def _faulty(db_url: str, timings: Timings, every: int) -> FaultyStore:
    base = Store.from_settings(Settings(database_url=db_url), retry_seconds=10.0)
    return FaultyStore(
        base.engine, every=every, stall_after_ms=int(timings.stall_after * 1000),
        max_claims=timings.max_claims, retry_seconds=10.0,
    )  # fmt: skip


def _create_as_client(store: Store, key: str, retries: Counter[str]) -> str:
    """Create a run the way an API client does: a 503 (DatabaseUnavailable: the store spent
    its retry budget) is retried with the same idempotency key, so a create whose commit did
    land is answered with that run rather than a second one. sqld 0.24 now and then stops
    answering every stream for ~30 s (our request timeout) under this load, with or without
    injected faults; a client sees that as a 503 or two."""
    give_up = time.monotonic() + 150
    while True:
        try:
            return str(store.create_run("three", {"ms": 5}, idempotency_key=key)[0]["id"])
        except DatabaseUnavailable:
            if time.monotonic() > give_up:
                raise
            retries["client_retries_after_503"] += 1


@pytest.mark.all_backends
def test_ambiguous_commit(backend, bstore, db_url, timings, caplog, oracle):
    """1 % of writes commit-then-raise and 1 % raise-without-commit, in the runners and the API
    alike: nothing lost, claimed twice, duplicated or stuck; no exception escapes a loop."""
    every = 100  # 1 % of writes each way
    settings = Settings(
        database_url=db_url, config_files=(WORKFLOWS,), heartbeat_interval=timings.heartbeat,
        stall_after=timings.stall_after, poll_interval=timings.poll, kill_grace=1,
        shutdown_grace=5,
    )  # fmt: skip
    runners: list[tuple[Runner, threading.Thread, dict[str, Any]]] = []
    for _ in range(3):
        runner = Runner(
            settings, RunnerOptions(concurrency=4), store=_faulty(db_url, timings, every)
        )
        runner.start()
        result: dict[str, Any] = {}

        def serve(r: Runner = runner, out: dict[str, Any] = result) -> None:
            try:
                out["code"] = r.serve(install_signals=False)
            except LoopdeckError as exc:
                out["error"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        runners.append((runner, thread, result))
    api_store = _faulty(db_url, timings, every)
    created: list[str] = []
    client_retries: Counter[str] = Counter()
    try:
        for i in range(scaled(200)):
            created.append(_create_as_client(api_store, f"ambiguous-{i}", client_retries))
        wait_terminal(bstore, created, timeout=180)
        alive = all(t.is_alive() for _, t, _ in runners)
    finally:
        for runner, _, _ in runners:
            runner.request_stop("test over")
        for runner, thread, _ in runners:
            thread.join(30)
            runner.store.dispose()
        api_store.dispose()
    injected = Counter(api_store.injected)
    for runner, _, _ in runners:
        injected.update(runner.store.injected)  # type: ignore[attr-defined]
    everything = bstore.list_runs(limit=500)["runs"]
    oracle(bstore, created, **dict(injected), created=len(created), **dict(client_retries))
    assert alive and all(r.get("code") == 0 for _, _, r in runners), [r for _, _, r in runners]
    assert len(everything) == len(created), "a retried create made a second run"
    assert injected["commit_then_raise"] > 0 and injected["raise_without_commit"] > 0, injected
    assert set(statuses(bstore, created).values()) == {"succeeded"}
    assert "loop died" not in caplog.text


# -- one busy SQLite file -----------------------------------------------------------------


@pytest.mark.backends("sqlite")
def test_sqlite_contention(backend, bstore, db_url, fleet, timings, oracle):
    """50 API creates at once, in waves, while 4 runner processes work the same file: every
    create answers 201; no "database is locked" reaches an API client or a runner loop."""
    procs = fleet.start_many(4, 4)
    wait_registered(bstore, procs)
    app = create_app(Settings(database_url=db_url, stall_after=timings.stall_after, rate_limit=0))
    codes: Counter[int] = Counter()
    ids: list[str] = []
    slowest = 0.0
    with (
        ThreadedServer(app) as server,
        httpx.Client(
            base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=60)
        ) as http,
    ):

        def create(_: int) -> float:
            started = time.monotonic()
            r = http.post("/api/runs", json={"workflow": "one", "inputs": {"ms": 5}})
            codes[r.status_code] += 1
            if r.status_code == 201:
                ids.append(r.json()["id"])
            return time.monotonic() - started

        with ThreadPoolExecutor(50) as pool:
            for _ in range(scaled(4)):
                slowest = max(slowest, *pool.map(create, range(50)))
        wait_terminal(bstore, ids, timeout=120)
    logs = fleet.logs()
    oracle(bstore, ids, creates=sum(codes.values()), slowest_create_s=round(slowest, 2))
    assert codes == {201: 50 * scaled(4)}, codes
    assert "locked" not in logs and "database unavailable" not in logs, logs


# -- the database goes away ---------------------------------------------------------------

OUTAGE_S = float(os.environ.get("LOOPDECK_BATTERY_OUTAGE", "5"))


class PrivatePostgres:
    """A PostgreSQL instance of this test's own (initdb into a temp dir, pg_ctl on a free
    port), so stopping it hurts nobody else using the shared server."""

    def __init__(self) -> None:
        self.bindir = "/usr/lib/postgresql/15/bin"
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if candidates:
            self.bindir = str(candidates[-1].parent)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="loopdeck-pg-")
        self.data = os.path.join(self.dir, "data")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str, timeout: float = 60) -> None:
        cmd = list(args)
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)

    def init(self) -> PrivatePostgres:
        if not os.path.exists(os.path.join(self.bindir, "initdb")):
            unavailable(f"no initdb in {self.bindir} for a private PostgreSQL")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(f"{self.bindir}/initdb", "-D", self.data, "-U", "postgres",
                          "--auth=trust", "--no-sync", "-E", "UTF8")  # fmt: skip
        self.start()
        return self

    def start(self) -> None:
        opts = (f"-c port={self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c unix_socket_directories={self.dir} -c max_connections=60")  # fmt: skip
        self._as_postgres(f"{self.bindir}/pg_ctl", "-D", self.data, "-o", opts, "-w", "-t", "60",
                          "-l", os.path.join(self.dir, "log"), "start")  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        self._as_postgres(f"{self.bindir}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class Outage:
    """Takes the scenario's database away and brings it back, per backend."""

    def __init__(self, backend: str, tmp_path: Path, sqld_cache: Path) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.pg: PrivatePostgres | None = None
        self.sqld: Sqld | None = None
        self._lock: sqlite3.Connection | None = None
        if backend == "postgres":
            self.pg = PrivatePostgres().init()
            self.url = self.pg.url
        elif backend == "libsql":
            self.sqld = Sqld(tmp_path / "sqld-outage", sqld_cache).start()
            self.url = self.sqld.url
        else:
            self.url = f"sqlite:///{tmp_path / 'outage.db'}"
        migrate(self.url)

    def down(self) -> None:
        if self.pg is not None:
            self.pg.stop("immediate")
        elif self.sqld is not None:
            self.sqld.signal(signal.SIGKILL)
            assert self.sqld.proc is not None
            self.sqld.proc.wait(10)
        else:  # SQLite: another process holds the write lock
            path = self.url.removeprefix("sqlite:///")
            self._lock = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._lock.execute("BEGIN EXCLUSIVE")

    def up(self) -> None:
        if self.pg is not None:
            self.pg.start()
        elif self.sqld is not None:
            port = self.sqld.port
            self.sqld.stop()
            self.sqld = Sqld(self.tmp_path / "sqld-outage", self.sqld.cache_dir, port).start()
        elif self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
        if self.pg is not None:
            self.pg.destroy()
        if self.sqld is not None:
            self.sqld.stop()


@pytest.mark.all_backends
def test_database_down(backend, tmp_path, sqld_cache, request, oracle):
    """The database goes away (PostgreSQL: `pg_ctl stop -m immediate` of a private instance;
    libSQL: sqld killed; SQLite: a held exclusive lock) and comes back: runners neither exit
    nor hang, claiming resumes within 10 s, no completion is lost, no live run is rescued;
    meanwhile the API answers 503 with a JSON error within 5 s."""
    outage = Outage(backend, tmp_path, sqld_cache)
    # Stall threshold above the outage: runners keep their leases through it (see docs).
    timings = Timings(heartbeat=1.0, stall_after=OUTAGE_S + 8, poll=0.2)
    store = make_store(outage.url, stall_after_ms=int(timings.stall_after * 1000))
    fleet = Fleet(outage.url, tmp_path, timings)
    app = create_app(
        Settings(database_url=outage.url, stall_after=timings.stall_after, rate_limit=0)
    )
    try:
        from shared.workflows import load_files

        store.publish_workflows(load_files([WORKFLOWS]), "battery")
        procs = fleet.start_many(2, 4)
        wait_registered(store, procs)
        before = create_runs(store, "three", 8, {"ms": OUTAGE_S * 1000 / 4})
        wait_for(lambda: sum(s == "running" for s in statuses(store, before).values()) == 8,
                 30, 0.05, what="all runs in flight")  # fmt: skip
        answers: list[tuple[str, int, float, Any]] = []
        with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            outage.down()
            went_down = time.monotonic()
            for method, path, body in (("POST", "/api/runs", {"workflow": "one"}),
                                       ("GET", "/api/health", None),
                                       ("GET", "/api/runs", None)):  # fmt: skip
                started = time.monotonic()
                r = http.request(method, path, json=body)
                answers.append((path, r.status_code, time.monotonic() - started, r.json()))
            remaining = OUTAGE_S - (time.monotonic() - went_down)
            time.sleep(max(0.0, remaining))  # the outage lasts OUTAGE_S, whatever we did
            alive_during = [p.alive() for p in procs]
            outage.up()
            back = time.monotonic()
            wait_for(lambda: http.get("/api/health").status_code == 200, 30, 0.1,
                     what="the API to see the database again")  # fmt: skip
        after = create_runs(store, "one", 4, {"ms": 5})
        wait_for(lambda: all(s != "queued" for s in statuses(store, after).values()), 30, 0.05,
                 what="claiming to resume")  # fmt: skip
        resumed_s = round(time.monotonic() - back, 2)
        wait_terminal(store, before + after, timeout=90)
        executed = Counter((e["run"], e["step"]) for e in effects(fleet.effects)
                           if e["phase"] == "start")  # fmt: skip
        stalls = [e for r in before for e in store.list_events(r)["events"]
                  if e["type"] == "run.stalled"]  # fmt: skip
        slowest = max(a[2] for a in answers)
        oracle(store, before + after, outage_s=OUTAGE_S, resumed_s=resumed_s,
               api_answers=[(p, c) for p, c, _, _ in answers], slowest_answer_s=round(slowest, 2),
               reexecuted=sum(1 for n in executed.values() if n > 1))  # fmt: skip
        assert all(alive_during) and all(p.alive() for p in procs), fleet.logs()
        assert resumed_s < 10
        assert not stalls, stalls
        assert set(statuses(store, before).values()) == {"succeeded"}
        assert max(executed.values()) == 1, "a completion was lost and its stage ran again"
        for path, code, took, body in answers:
            assert took < 5, (path, took)
            if path == "/api/runs" and code != 200:  # a read SQLite may still serve
                assert code == 503 and body["error"]["code"] == "database_unavailable", body
        assert answers[0][1] == 503, answers  # a create needs the database
    finally:
        fleet.stop_all()
        store.dispose()
        app.state.resources.close()
        outage.close()

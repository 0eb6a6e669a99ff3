"""What the battery's scenarios share: real runner processes, bulk runs, waiting, effects.

Sizes are CI sizes times LOOPDECK_BATTERY_SCALE (default 1); bench/soak.py runs the same
scenarios bigger and longer.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import update

from shared.schema import TERMINAL_RUN_STATUSES, runs
from shared.store import Store

from ..helpers import Proc, base_env, wait_for

WORKFLOWS = str(Path(__file__).with_name("workflows.yaml"))
SCALE = float(os.environ.get("LOOPDECK_BATTERY_SCALE", "1") or 1)
HOLD_MS = 253_402_300_799_000  # a not_before far away: created, not yet claimable


@dataclass(frozen=True)
class Timings:
    """Liveness settings of a scenario's runners, scaled down from the defaults (10 s / 120 s)."""

    heartbeat: float = 0.5
    stall_after: float = 3.0
    poll: float = 0.2
    shutdown_grace: float = 5.0
    kill_grace: float = 2.0
    max_claims: int = 3

    @property
    def reaper_period(self) -> float:
        return self.stall_after / 4

    def env(self) -> dict[str, str]:
        return {
            "LOOPDECK_HEARTBEAT_INTERVAL": str(self.heartbeat),
            "LOOPDECK_STALL_AFTER": str(self.stall_after),
            "LOOPDECK_POLL_INTERVAL": str(self.poll),
            "LOOPDECK_SHUTDOWN_GRACE": str(self.shutdown_grace),
            "LOOPDECK_KILL_GRACE": str(self.kill_grace),
            "LOOPDECK_MAX_CLAIMS": str(self.max_claims),
        }


def timings_for(backend: str) -> Timings:
    # sqld (0.24) parks writers for up to 5 s when an autocheckpoint competes with waiting
    # writers; a stall threshold under that would rescue live runs. Production's 120 s is far
    # above it (docs/many-hosts.md).
    if backend == "libsql":
        return Timings(heartbeat=1.0, stall_after=12.0)
    return Timings()


def scaled(n: int, minimum: int = 1) -> int:
    return max(minimum, int(round(n * SCALE)))


class Fleet:
    """Runner processes of one scenario, each with its own log; stopped at the end."""

    def __init__(self, db_url: str, tmp_path: Path, timings: Timings, **env: str) -> None:
        self.tmp_path = tmp_path
        self.timings = timings
        self.effects = tmp_path / "effects.jsonl"
        self.env = base_env(db_url, **timings.env(), LOOPDECK_EFFECTS=str(self.effects))
        self.env.update(env)
        self.procs: list[Proc] = []
        self._n = 0

    def start(self, concurrency: int = 4, *args: str, env: dict[str, str] | None = None) -> Proc:
        self._n += 1
        proc = Proc(
            ["runner", "--config", WORKFLOWS, "--concurrency", str(concurrency), *args],
            {**self.env, **(env or {})},
            self.tmp_path / f"runner{self._n}.log",
        )
        self.procs.append(proc)
        return proc

    def start_many(self, n: int, concurrency: int = 4, *args: str) -> list[Proc]:
        return [self.start(concurrency, *args) for _ in range(n)]

    def alive(self) -> list[Proc]:
        return [p for p in self.procs if p.alive()]

    def stop_all(self, timeout: float = 30) -> dict[int, int | None]:
        for p in self.procs:
            p.send(signal.SIGCONT)
        for p in self.procs:
            p.send(signal.SIGTERM)
        return {p.pid: p.stop(timeout=timeout) for p in self.procs}

    def logs(self) -> str:
        return "\n".join(f"--- runner pid {p.pid}\n{p.output()[-3000:]}" for p in self.procs)


def wait_registered(store: Store, procs: Iterable[Proc], timeout: float = 60) -> dict[int, str]:
    """Runner id by pid, once every process has registered."""
    pids = {p.pid for p in procs}

    def ids() -> dict[int, str] | None:
        found = {
            r["pid"]: r["id"]
            for r in store.list_runners()["runners"]
            if r["pid"] in pids and r["status"] == "active"
        }
        return found if set(found) == pids else None

    return wait_for(ids, timeout, 0.1, what="runners to register")


def create_runs(
    store: Store, workflow: str, n: int, inputs: dict[str, Any] | None = None, *,
    hold: bool = False,
) -> list[str]:  # fmt: skip
    return [
        store.create_run(workflow, inputs or {}, not_before_ms=HOLD_MS if hold else None)[0]["id"]
        for _ in range(n)
    ]


def release_hold(store: Store) -> int:
    """Make every held run claimable in one statement: the start signal of a race."""

    def tx(conn: Any) -> int:
        result = conn.execute(
            update(runs).where(runs.c.not_before == HOLD_MS).values(not_before=None)
        )
        return int(result.rowcount)

    return store.write(tx)


def statuses(store: Store, ids: Iterable[str]) -> dict[str, str]:
    wanted = list(ids)

    def tx(conn: Any) -> dict[str, str]:
        from sqlalchemy import select

        out: dict[str, str] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            rows = conn.execute(select(runs.c.id, runs.c.status).where(runs.c.id.in_(chunk)))
            out.update((r.id, r.status) for r in rows)
        return out

    return store.read(tx)


def wait_terminal(store: Store, ids: Iterable[str], timeout: float, what: str = "") -> None:
    wanted = list(ids)
    timeout *= max(1.0, SCALE)

    def done() -> bool:
        return all(s in TERMINAL_RUN_STATUSES for s in statuses(store, wanted).values())

    wait_for(done, timeout, 0.2, what=what or f"{len(wanted)} runs to finish")


def effects(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def db_now_ms(store: Store) -> int:
    from shared.store.base import db_now

    return store.read(db_now)


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 2)


def _wait_server_idle(proc: Proc, db_url: str) -> None:
    """After SIGSTOP: wait until PostgreSQL has finished what the frozen runner sent before it
    stopped (a COMMIT in flight still lands). Until then a test reading which runs the frozen
    runner holds could miss a claim that commits a moment later. A session left waiting for
    the rest of a pipeline (active, ClientRead; or ClientWrite, its results unread) has done
    all it will: its transaction stays open, holding its locks, until a reaper ends it."""
    import psutil
    import psycopg

    ports = {c.laddr.port for c in psutil.Process(proc.pid).net_connections("tcp") if c.raddr}
    dsn = db_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        seen: list[tuple[Any, ...]] = []

        def idle() -> bool:
            seen[:] = conn.execute(
                "SELECT state, wait_event_type, wait_event, now() - xact_start, query"
                " FROM pg_stat_activity WHERE state = 'active' AND client_port = ANY(%s)"
                " AND coalesce(wait_event, '') NOT IN ('ClientRead', 'ClientWrite')",
                (list(ports),),
            ).fetchall()
            return not seen

        try:
            wait_for(idle, 10, 0.01, what="the frozen runner's statements to end")
        except AssertionError as e:
            raise AssertionError(f"{e}; still active: {seen!r}") from None


def _all_threads_stopped(pid: int) -> bool:
    """kill(SIGSTOP) returns before every thread has stopped: a thread then on a CPU runs on
    until the kernel interrupts it. Stopped means each thread's state is T."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        states.append(stat[stat.rindex(")") + 2])
    return bool(states) and all(s in "tT" for s in states)


def _stop(proc: Proc) -> None:
    proc.send(signal.SIGSTOP)
    wait_for(lambda: _all_threads_stopped(proc.pid), 5, 0.001, what="the runner to stop")


def freeze(proc: Proc, db_url: str, attempts: int = 50) -> None:
    """SIGSTOP a runner. On a SQLite file, only at a moment it holds no write lock: SQLite has no
    server to end a frozen writer's transaction, so a process frozen inside one stops every
    writer until it resumes (PostgreSQL ends it: idle_in_transaction_session_timeout; sqld
    takes the lock back after 5 s)."""
    if db_url.startswith("postgresql"):
        _stop(proc)
        _wait_server_idle(proc, db_url)
        return
    if not db_url.startswith("sqlite:///"):
        proc.send(signal.SIGSTOP)
        return
    import sqlite3

    path = db_url.removeprefix("sqlite:///")
    for _ in range(attempts):
        _stop(proc)
        probe = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            proc.send(signal.SIGCONT)
            time.sleep(0.02)  # let it finish its transaction, then try again
        finally:
            probe.close()
    raise AssertionError("could not freeze the runner outside a write transaction")

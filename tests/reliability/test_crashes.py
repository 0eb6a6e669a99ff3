"""Runners that die: kill -9 at random, and a run whose stage kills its runner every time."""

from __future__ import annotations

import random
import signal
import threading
import time
from typing import Any

import psutil
import pytest
from sqlalchemy import select

from shared.schema import events, runs

from .harness import (
    Fleet,
    create_runs,
    db_now_ms,
    elapsed,
    scaled,
    statuses,
    wait_registered,
    wait_terminal,
)

pytestmark = pytest.mark.reliability


class Supervisor:
    """Restarts runner processes that die, `delay` seconds later (what systemd would do)."""

    def __init__(self, fleet: Fleet, delay: tuple[float, float], concurrency: int = 4) -> None:
        self.fleet = fleet
        self.delay = delay
        self.concurrency = concurrency
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        handled: set[int] = set()
        while not self._stop.wait(0.05):
            for proc in list(self.fleet.procs):
                if proc.pid in handled or proc.alive():
                    continue
                handled.add(proc.pid)
                if self._stop.wait(random.uniform(*self.delay)):
                    return
                self.fleet.start(self.concurrency)
                self.restarts += 1


@pytest.mark.backends("sqlite", "postgres")  # libSQL: bench/soak.py --backend libsql
def test_poison_run(backend, bstore, fleet, oracle):
    """A stage that kills its runner every time fails after the claim limit; the runs that
    shared its runners all succeed."""
    normal = create_runs(bstore, "one", scaled(40), {"ms": 20})
    poison = bstore.create_run("poison", {})[0]["id"]
    normal += create_runs(bstore, "one", scaled(80), {"ms": 20})
    with Supervisor(fleet, (0.3, 0.8)) as sup:
        fleet.start_many(2, 4)
        wait_terminal(bstore, [*normal, poison], timeout=120, what="the poison and normal runs")
    final = statuses(bstore, normal)
    detail = bstore.get_run(poison)
    why = [e for e in bstore.list_events(poison)["events"] if e["type"] == "run.failed"]
    deaths = sum(1 for p in fleet.procs if p.proc.poll() == -signal.SIGKILL)
    oracle(bstore, [*normal, poison], runner_deaths=deaths, restarts=sup.restarts,
           poison_claims=detail["claim_count"])  # fmt: skip
    assert detail["status"] == "failed", detail
    assert "the limit is 3" in detail["error_message"], detail["error_message"]
    assert len(why) == 1 and "the limit is 3" in why[0]["message"]
    assert deaths == 3
    assert set(final.values()) == {"succeeded"}, {
        r: s for r, s in final.items() if s != "succeeded"
    }


def _started(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return time.time()


def _in_flight(store, runner_id: str) -> list[str]:
    def tx(conn: Any) -> list[str]:
        return list(
            conn.execute(
                select(runs.c.id).where(runs.c.status == "running", runs.c.claimed_by == runner_id)
            ).scalars()
        )

    return store.read(tx)


def _reclaimed_at(store, run_id: str, after_ms: int) -> int | None:
    def tx(conn: Any) -> int | None:
        return conn.execute(
            select(events.c.created_at)
            .where(events.c.run_id == run_id, events.c.type == "run.claimed",
                   events.c.created_at >= after_ms)
            .order_by(events.c.id)
            .limit(1)
        ).scalar()  # fmt: skip

    return store.read(tx)


# Not on libSQL in CI: the same rescue code, and sqld's own writer stalls make it slow there
# (run it with bench/soak.py --backend libsql).
@pytest.mark.backends("sqlite", "postgres")
def test_kill9_chaos(backend, bstore, fleet, timings, oracle):
    """Random SIGKILLs of runners with restarts 1–3 s later: every run ends terminal, and the
    runs a killed runner held are claimed again within stall_after + one reaper period."""
    n, kills = scaled(200), scaled(6, 2)
    ids = create_runs(bstore, "three", n, {"ms": 60})
    rng = random.Random()
    killed: list[tuple[int, list[str]]] = []
    with Supervisor(fleet, (1.0, 3.0)) as sup:
        started = time.monotonic()
        wait_registered(bstore, fleet.start_many(4, 4))
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 1.2))  # a random moment, not a wait for a condition
            # Victims: runners registered and serving for 2 s at least (killing every runner
            # before its reaper first runs would leave nobody to rescue anything).
            by_pid = {r["pid"]: r["id"] for r in bstore.list_runners()["runners"]
                      if r["status"] == "active"}  # fmt: skip
            now = time.time()
            victims = [
                (p, by_pid[p.pid]) for p in fleet.alive()
                if p.pid in by_pid and now - _started(p.pid) >= 2.0
            ]  # fmt: skip
            if not victims:
                continue
            proc, runner_id = rng.choice(victims)
            orphans = _in_flight(bstore, runner_id)
            proc.send(signal.SIGKILL)
            killed.append((db_now_ms(bstore), orphans))
        wait_terminal(bstore, ids, timeout=180)
        took = elapsed(started)
    # stall_after + one reaper period, plus a poll and 2 s of slack for a loaded 2-core CI box
    bound_ms = (timings.stall_after + timings.reaper_period + timings.poll + 2.0) * 1000
    latencies = []
    for kill_ms, orphans in killed:
        for run_id in orphans:
            at = _reclaimed_at(bstore, run_id, kill_ms)
            if at is not None:  # None: it had just finished when the kill came
                latencies.append(at - kill_ms)
    final = statuses(bstore, ids)
    verdict = oracle(
        bstore, ids, kills=len(killed), restarts=sup.restarts, seconds=took,
        orphans=sum(len(o) for _, o in killed), reclaimed=len(latencies),
        max_reclaim_s=round(max(latencies, default=0) / 1000, 2), bound_s=bound_ms / 1000,
    )  # fmt: skip
    assert len(killed) >= 2 and latencies, verdict.line()
    if backend != "libsql":  # sqld's own writer stalls (harness.timings_for) can exceed it
        assert max(latencies) <= bound_ms, sorted(latencies)[-5:]
    failed = [r for r, s in final.items() if s != "succeeded"]
    for run_id in failed:  # only a run whose runners were killed under it three times
        assert "the limit is 3" in (bstore.get_run(run_id)["error_message"] or ""), run_id

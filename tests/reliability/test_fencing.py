"""Leases and fences: a frozen runner comes back, the reaper races a completion, clocks lie,
and a long stage outlives the stall threshold without being rescued."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event

from shared.clock import parse_time
from shared.store import NOW, RunWrites

from ..conftest import make_store
from ..helpers import wait_for
from .harness import (
    Fleet,
    Timings,
    create_runs,
    db_now_ms,
    effects,
    elapsed,
    freeze,
    statuses,
    wait_registered,
    wait_terminal,
)

pytestmark = pytest.mark.reliability


def _claims(store, run_id: str) -> list[str]:
    return [
        e["data"]["runner_id"]
        for e in store.list_events(run_id, limit=500)["events"]
        if e["type"] == "run.claimed"
    ]


@pytest.mark.backends("sqlite", "postgres")
def test_stale_fencing(backend, bstore, db_url, fleet, oracle):
    """SIGSTOP a runner mid-stage past the stall threshold; another runner finishes its run;
    SIGCONT: nothing the stale claim writes is accepted (events, task rows, status)."""
    run_id = bstore.create_run("long_call", {"ms": 2500})[0]["id"]
    a = fleet.start(1)
    a_id = wait_registered(bstore, [a])[a.pid]
    wait_for(
        lambda: (r := bstore.get_run(run_id))["current_stage"] == "hold" and r["claimed_by"] == a_id,
        30, 0.05, what="runner A to start the stage",
    )  # fmt: skip
    freeze(a, db_url)
    b = fleet.start(1)
    b_id = wait_registered(bstore, [b])[b.pid]
    wait_terminal(bstore, [run_id], timeout=60, what="runner B to finish the run")
    a.send(signal.SIGCONT)
    wait_for(lambda: "lease lost" in a.output(), 30, 0.1, what="runner A to notice its lost lease")
    # After SIGCONT A's stage either runs to its end (its deadline passed while frozen) or sees
    # the lost lease first at its next check_cancel() — a race between its thread and A's
    # heartbeat. Either way A's execution then stops, and nothing it writes is accepted.
    wait_for(
        lambda: "execution stopped" in a.output(),
        30, 0.1, what="runner A to stop the run's execution after SIGCONT",
    )  # fmt: skip
    assert a.alive(), a.output()
    detail = bstore.get_run(run_id)
    by_a = [(e["step"], e["phase"]) for e in effects(fleet.effects) if e["pid"] == a.pid]
    oracle(bstore, [run_id], stale_runner_effects=len(by_a))
    # A finished (or abandoned) the stage it was frozen in, and started nothing after it.
    assert by_a in ([("hold", "start"), ("hold", "end")], [("hold", "start")]), by_a
    assert _claims(bstore, run_id) == [a_id, b_id]
    assert detail["status"] == "succeeded" and detail["claimed_by"] == b_id
    assert all(t["output"]["pid"] == b.pid for t in detail["tasks"]), detail["tasks"]
    finished = [e for e in bstore.list_events(run_id, limit=500)["events"]
                if e["type"] == "stage.finished"]  # fmt: skip
    assert [e["stage"] for e in finished] == ["hold", "after"]
    assert a.stop() == 0, a.output()


@pytest.mark.all_backends
def test_rescue_vs_completion(backend, bstore, db_url, oracle):
    """Completions commit between the reaper's read of stale runs and its conditional write:
    every finished run stays finished; a completion that loses the race is rejected whole."""
    n = 20
    create_runs(bstore, "one", n)
    claimed = bstore.claim_runs("rnr_old", queues=["default"], workflows=["one"], limit=n)
    assert len(claimed) == n
    completer = make_store(db_url)
    finishing = claimed[::2]
    outcome: dict[str, Any] = {}

    def complete() -> None:
        batches = [
            RunWrites(
                c.id,
                c.token,
                0,
                run={"status": "succeeded", "completed_at": NOW},
                events=[{"run_id": c.id, "type": "run.succeeded"}],
            )  # fmt: skip
            for c in finishing
        ]
        outcome["results"] = completer.apply_run_writes(batches)[0]

    fired = threading.Event()

    def between_read_and_write(conn, cursor, statement, params, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE RUNS") and not fired.is_set():
            fired.set()
            worker = threading.Thread(target=complete)
            worker.start()
            # PostgreSQL: the completion commits now, before our UPDATE. SQLite and libSQL:
            # it waits for our write lock, and its fenced write then finds the claim gone.
            worker.join(3)
            outcome["thread"] = worker

    sa_event.listen(bstore.engine, "before_cursor_execute", between_read_and_write)
    try:
        rescued = bstore.reap_stalled(now_ms=10**13)
    finally:
        sa_event.remove(bstore.engine, "before_cursor_execute", between_read_and_write)
    outcome["thread"].join(30)
    completer.dispose()
    applied = {o.run_id for o in outcome["results"] if o.applied}
    rescued_ids = {r["run_id"] for r in rescued}
    final = statuses(bstore, [c.id for c in claimed])
    oracle(bstore, may_stay_queued=rescued_ids, completions_applied=len(applied),
           rescued=len(rescued_ids))  # fmt: skip
    assert fired.is_set()
    assert not applied & rescued_ids
    assert all(final[r] == "succeeded" for r in applied)
    assert all(final[r] == "queued" for r in rescued_ids)
    assert applied | rescued_ids == {c.id for c in claimed}
    if backend == "postgres":  # the interleaving really happened: completions won
        assert applied == {c.id for c in finishing}


# -- clock skew ---------------------------------------------------------------------------

_SKEW_SITE = """
import os, time
_skew = float(os.environ.get("LOOPDECK_TEST_CLOCK_SKEW", "0"))
if _skew:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _skew
    time.time_ns = lambda: _time_ns() + int(_skew * 1e9)
"""


def skewed_env(tmp_path: Path, seconds: float) -> tuple[dict[str, str], str]:
    """Environment that runs a Python process with its wall clock `seconds` off.

    An injected clock (a sitecustomize shifting time.time), not libfaketime: under Debian's
    libfaketime 0.9.10 a shifted Python 3.11 fails `time.sleep` with EINVAL (its absolute
    clock_nanosleep deadlines get shifted too), so stages failed for reasons unrelated to skew.
    """
    site = tmp_path / "skew-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SKEW_SITE)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "LOOPDECK_TEST_CLOCK_SKEW": str(seconds)}, "injected"


@pytest.mark.backends("sqlite", "postgres")
def test_clock_skew(backend, bstore, db_url, fleet, timings, tmp_path, oracle):
    """Runners whose clocks are 5 minutes fast and 5 minutes slow reap: no live run is rescued,
    and the runs of a frozen runner are rescued in time — liveness is on the DB clock."""
    fast_env, how = skewed_env(tmp_path, +300)
    slow_env, _ = skewed_env(tmp_path, -300)
    # The skew must really apply, or this test would prove nothing.
    shifted = subprocess.run(
        [sys.executable, "-c", "import time; print(int(time.time()))"],
        env={**fleet.env, **fast_env}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert int(shifted.stdout) - time.time() > 250, (how, shifted.stdout, shifted.stderr)
    fast = fleet.start(2, env=fast_env)
    normal = fleet.start(2, "--no-reaper")
    slow = fleet.start(2, env=slow_env)
    ids = wait_registered(bstore, [fast, normal, slow])
    work = create_runs(bstore, "long_call", 6, {"ms": 1500})
    wait_for(
        lambda: any(r["claimed_by"] == ids[normal.pid] and r["status"] == "running"
                    for r in bstore.list_runs()["runs"]),
        30, 0.05, what="the normal runner to hold a run",
    )  # fmt: skip
    freeze(normal, db_url)
    stopped_ms = db_now_ms(bstore)
    frozen = [r["id"] for r in bstore.list_runs()["runs"]
              if r["status"] == "running" and r["claimed_by"] == ids[normal.pid]]  # fmt: skip
    started = time.monotonic()
    wait_terminal(bstore, work, timeout=90)
    took = elapsed(started)
    normal.send(signal.SIGCONT)
    stalls = [
        (r, e) for r in work for e in bstore.list_events(r, limit=500)["events"]
        if e["type"] == "run.stalled"
    ]  # fmt: skip
    rescue_s = [round((parse_time(e["created_at"]) - stopped_ms) / 1000, 2) for _, e in stalls]
    oracle(bstore, work, clock=how, frozen_runs=len(frozen), rescued=len(stalls), seconds=took,
           max_rescue_s=max(rescue_s, default=None))  # fmt: skip
    assert {e["data"]["claimed_by"] for _, e in stalls} == {ids[normal.pid]}, stalls
    assert {r for r, _ in stalls} == set(frozen)
    assert frozen and max(rescue_s) < timings.stall_after + 2 * timings.reaper_period + 2
    assert set(statuses(bstore, work).values()) == {"succeeded"}, [
        bstore.get_run(r)["error_message"] for r in work
    ]


@pytest.mark.backends("sqlite", "postgres")
def test_long_stage(backend, bstore, db_url, tmp_path, oracle):
    """A stage three times longer than the stall threshold, heartbeating, is never rescued —
    a `call:` stage in the runner and a `run:` command alike."""
    timings = Timings(heartbeat=0.25, stall_after=1.5)
    fleet = Fleet(db_url, tmp_path, timings)
    try:
        _long_stage(bstore, fleet, timings, oracle)
    finally:
        fleet.stop_all()


def _long_stage(bstore, fleet, timings, oracle) -> None:
    seconds = 3 * timings.stall_after
    fleet.start(2, "--no-reaper")
    reaper = fleet.start(1)  # another runner reaps all along
    call_run = bstore.create_run("long_call", {"ms": seconds * 1000})[0]["id"]
    command_run = bstore.create_run("long_command", {"seconds": seconds})[0]["id"]
    wait_terminal(bstore, [call_run, command_run], timeout=seconds + 60)
    types = [e["type"] for r in (call_run, command_run) for e in bstore.list_events(r)["events"]]
    oracle(bstore, [call_run, command_run], stage_s=seconds, stall_after_s=timings.stall_after)
    assert "run.stalled" not in types
    assert reaper.alive()
    for r in (call_run, command_run):
        detail = bstore.get_run(r)
        assert detail["status"] == "succeeded" and detail["claim_count"] == 1, detail

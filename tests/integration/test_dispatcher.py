"""The runner's dispatcher against a real store (every backend): the claims it holds and the
writes it flushes, driven cycle by cycle without execution threads."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import update

from runner.active import ActiveRun, Outbox
from runner.dispatcher import Dispatcher
from shared.schema import runs
from shared.store import ClaimRequest

from ..helpers import wait_for

pytestmark = pytest.mark.all_backends


def _dispatcher(store, started: list[ActiveRun], concurrency: int = 2) -> Dispatcher:
    return Dispatcher(
        store, "rnr_test", queues=("default",), workflows=("release",), concurrency=concurrency,
        poll_interval=0.05, outbox=Outbox(), start=started.append,
    )  # fmt: skip


def _logs(store, run_id: str) -> list[str]:
    events = store.list_events(run_id, limit=500)["events"]
    return [e["message"] for e in events if e["type"] == "log"]


def test_a_run_reset_while_it_executes_here_and_claimed_again_flushes_the_new_claims_writes(
    store,
):
    # Seen in the dashboard's reset test on a loaded machine: the old execution, still running
    # when the same runner claimed the run again, wrote once more before it noticed; its entry
    # in the set of runs with pending writes (then keyed by run id) replaced the new claim's,
    # whose writes — the step's start — never went out, and the run hung.
    run, _ = store.create_run("release", {})
    started: list[ActiveRun] = []
    dispatcher = _dispatcher(store, started)
    assert dispatcher.run_once()
    (old,) = started
    old.event("log", "before the reset")
    dispatcher.run_once(time.monotonic() + 1)

    store.reset_run(run["id"], reason="stuck")
    assert dispatcher.run_once(time.monotonic() + 2)  # nothing pending from the old one: a claim
    new = started[-1]
    assert new.id == run["id"] and new.token != old.token
    assert old.lost.is_set() and not new.lost.is_set()  # the new claim says the old one is gone
    assert dispatcher.busy() == 2  # the old execution has not returned yet

    new.event("log", "from the new claim")
    old.event("log", "from the old claim, which must not land")
    dispatcher.run_once(time.monotonic() + 3)
    assert _logs(store, run["id"]) == ["before the reset", "from the new claim"]

    old.finished.set()
    dispatcher.run_once(time.monotonic() + 4)
    assert dispatcher.snapshot() == [new] and dispatcher.busy() == 1
    new.event("log", "still flushed after the old one is forgotten")
    dispatcher.run_once(time.monotonic() + 5)
    assert _logs(store, run["id"])[-1] == "still flushed after the old one is forgotten"


def test_a_claim_records_one_run_claimed_event_for_each_run_it_took(store):
    # PostgreSQL's claim statements write these themselves (a data-modifying CTE), SQLite's
    # dispatcher with a statement of its own: either way once per run, suspects included.
    created = [store.create_run("release", {})[0]["id"] for _ in range(3)]
    with store.engine.begin() as conn:  # the first was rescued twice: a suspect
        conn.execute(update(runs).where(runs.c.id == created[0]).values(claim_count=2))

    def claim() -> list:
        request = ClaimRequest("rnr_test", ("default",), ("release",), 4, suspects=1)
        return store.apply_run_writes([], request)[1]

    claimed = claim()
    assert sorted(c.id for c in claimed) == sorted(created)
    assert sorted(c.claim_count for c in claimed) == [1, 1, 3]
    for c in claimed:
        events = store.list_events(c.id, limit=50)["events"]
        (event,) = [e for e in events if e["type"] == "run.claimed"]
        assert event["message"] == f"claimed by rnr_test (claim {c.claim_count})"
        assert event["data"] == {"runner_id": "rnr_test", "claim_count": c.claim_count}
    assert claim() == []  # nothing left: nothing recorded
    recorded = [
        e
        for run_id in created
        for e in store.list_events(run_id, limit=50)["events"]
        if e["type"] == "run.claimed"
    ]
    assert len(recorded) == 3


def _ended(active: ActiveRun) -> None:
    """What an execution does when it returns: its terminal write, then the kick."""
    active.event("run.succeeded", "done")
    active.finish("succeeded")
    active.finished.set()
    active._outbox.kick()


def _cycle(dispatcher: Dispatcher) -> threading.Thread:
    thread = threading.Thread(target=lambda: (dispatcher.wait_for_work(), dispatcher.run_once()))
    thread.start()
    return thread


def test_a_finished_run_waits_for_the_runs_claimed_with_it_then_both_flush_together(store):
    for _ in range(2):
        store.create_run("release", {})
    started: list[ActiveRun] = []
    dispatcher = _dispatcher(store, started, concurrency=3)  # one slot kept for a suspect
    dispatcher.linger = 60.0  # the window is FLUSH_WINDOW (5 ms); here it outlasts the test
    assert dispatcher.run_once()
    first, second = started
    _ended(first)
    cycle = _cycle(dispatcher)
    wait_for(lambda: len(dispatcher.outbox.cond._waiters) == 1, what="the cycle to linger")
    assert store.get_run(first.id)["status"] == "running"  # not flushed alone
    _ended(second)
    cycle.join(20)
    assert not cycle.is_alive()
    assert [store.get_run(a.id)["status"] for a in (first, second)] == ["succeeded"] * 2


def test_a_run_older_than_the_window_is_not_waited_for(store):
    for _ in range(2):
        store.create_run("release", {})
    started: list[ActiveRun] = []
    dispatcher = _dispatcher(store, started, concurrency=3)
    assert dispatcher.run_once()
    first, second = started
    second.adopted_at -= 3600  # an hour into its stage: a long run
    first.adopted_at -= 3600
    _ended(first)
    cycle = _cycle(dispatcher)
    cycle.join(20)
    assert not cycle.is_alive()  # it did not wait for the second run
    assert store.get_run(first.id)["status"] == "succeeded"
    assert store.get_run(second.id)["status"] == "running"

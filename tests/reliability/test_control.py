"""Intents racing execution: cancels at every moment of a run's life, and SIGTERM mid-work."""

from __future__ import annotations

import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from api.app import create_app
from shared.settings import Settings

from ..helpers import ThreadedServer, wait_for
from .harness import (
    create_runs,
    db_now_ms,
    effects,
    scaled,
    statuses,
    wait_registered,
    wait_terminal,
)

pytestmark = pytest.mark.reliability


@pytest.mark.all_backends
def test_cancel_race(backend, bstore, db_url, fleet, timings, oracle):
    """Cancel through the API at random moments from before the claim to after the end: one
    terminal state each; cancelled before the claim ⇒ no stage ran; after the end ⇒ 409."""
    n = scaled(40)
    runner = fleet.start(4)
    wait_registered(bstore, [runner])
    settings = Settings(database_url=db_url, stall_after=timings.stall_after, rate_limit=0)
    app = create_app(settings)
    answers: dict[str, tuple[int, dict[str, Any]]] = {}
    rng = random.Random()

    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:

        def one(i: int) -> None:
            body: dict[str, Any] = {"workflow": "three", "inputs": {"ms": 30}}
            scheduled = i % 4 == 0
            if scheduled:  # claimable only in 3 s: its cancel surely comes before any claim
                body["not_before"] = db_now_ms(bstore) + 3000
            created = http.post("/api/runs", json=body)
            assert created.status_code == 201, created.text
            run_id = created.json()["id"]
            # A random moment: at once (often before the claim), mid-run (a run takes about
            # 0.1–0.3 s), or after its end.
            time.sleep(rng.uniform(0, 1.5) if scheduled else rng.choice([0, rng.uniform(0, 0.8)]))
            r = http.post(f"/api/runs/{run_id}/cancel", json={"reason": f"race {i}"})
            answers[run_id] = (r.status_code, r.json())

        with ThreadPoolExecutor(8) as pool:
            for f in [pool.submit(one, i) for i in range(n)]:
                f.result(timeout=120)
        wait_terminal(bstore, list(answers), timeout=120)

    started = {e["run"] for e in effects(fleet.effects) if e["phase"] == "start"}
    kinds: dict[str, int] = {"cancelled_queued": 0, "asked_running": 0, "conflict": 0}
    final = statuses(bstore, answers)
    for run_id, (code, body) in answers.items():
        if code == 409:
            kinds["conflict"] += 1
            assert body["error"]["details"]["status"] == final[run_id] == "succeeded", body
        elif body["status"] == "cancelled":  # was still queued: nothing may have run
            kinds["cancelled_queued"] += 1
            assert code == 202 and final[run_id] == "cancelled"
            assert run_id not in started
            events = [e["type"] for e in bstore.list_events(run_id)["events"]]
            assert "run.claimed" not in events and "stage.started" not in events, events
        else:  # running with the intent: cancelled at a stage boundary, or it finished first
            kinds["asked_running"] += 1
            assert code == 202 and body["status"] == "running" and body["cancel_requested_at"]
            assert final[run_id] in ("cancelled", "succeeded")
    oracle(bstore, list(answers), **kinds)
    assert kinds["cancelled_queued"] and kinds["conflict"], kinds


@pytest.mark.all_backends
def test_sigterm_drain(backend, bstore, fleet, oracle):
    """SIGTERM: stages in flight that end within the grace period finish; longer ones are
    released (not failed, not counted as a claim); nothing is claimed after the signal; exit 0;
    another runner then finishes what was released."""
    short = create_runs(bstore, "long_call", 2, {"ms": 800})  # hold 0.8 s + after
    long = create_runs(bstore, "long_call", 2, {"ms": 60_000})
    later = create_runs(bstore, "one", 4, {"ms": 5})
    runner = fleet.start(4, env={"LOOPDECK_SHUTDOWN_GRACE": "3"})
    rid = wait_registered(bstore, [runner])[runner.pid]
    wait_for(lambda: sum(s == "running" for s in statuses(bstore, short + long).values()) == 4,
             30, 0.05, what="all four long_call runs in flight")  # fmt: skip
    signalled = time.monotonic()
    runner.send(signal.SIGTERM)
    code = runner.wait(timeout=30)
    took = round(time.monotonic() - signalled, 2)
    after_signal = statuses(bstore, short + long + later)
    claims_by_first = [
        (r, e) for r in short + long + later for e in bstore.list_events(r)["events"]
        if e["type"] == "run.claimed" and e["data"]["runner_id"] == rid
    ]  # fmt: skip
    assert code == 0, runner.output()
    assert all(after_signal[r] == "succeeded" for r in short), after_signal
    for r in long:
        detail = bstore.get_run(r)
        assert detail["status"] == "queued" and detail["claim_count"] == 0, detail
        assert {t["attempt"] for t in detail["tasks"]} == {0}, detail["tasks"]
        assert bstore.list_events(r)["events"][-1]["type"] == "run.released"
    assert {r for r, _ in claims_by_first} == set(short + long), "claimed after the signal"
    # A second runner picks up the released runs (shortened) and the rest.
    second = fleet.start(4)
    wait_registered(bstore, [second])
    wait_terminal(bstore, short + later, timeout=60)
    wait_for(lambda: all(bstore.get_run(r)["status"] == "running" for r in long), 30, 0.05,
             what="the released runs to be claimed again")  # fmt: skip
    oracle(bstore, short + long + later, may_stay_queued=long, drain_s=took,
           released=len(long))  # fmt: skip
    for r in long:
        detail = bstore.get_run(r)
        assert detail["claim_count"] == 1, detail

"""Claiming, fencing, heartbeats, release and the reaper, through the store verbs."""

import subprocess
import sys

import pytest

from shared.store import NOW, RunWrites
from shared.store.execution import _apply

pytestmark = pytest.mark.all_backends

RUNNER = "rnr_test"


def _register(store, runner_id=RUNNER, pid=1, started=0, host="h", key="k"):
    store.register_runner(
        {"id": runner_id, "hostname": host, "pid": pid, "pid_started_at": started,
         "version": "t", "queues": ["default"], "labels": {"host_key": key},
         "workflows": ["essay", "release"], "concurrency": 1, "stats": {}}
    )  # fmt: skip


def claim(store, limit=10, queues=("default",), workflows=("essay", "release", "sleepy")):
    return store.claim_runs(RUNNER, queues=list(queues), workflows=list(workflows), limit=limit)


def test_claim_order_priority_then_age_and_filters(store):
    low, _ = store.create_run("essay", {"topic": "a"}, priority=0)
    high, _ = store.create_run("essay", {"topic": "b"}, priority=5)
    other_q, _ = store.create_run("essay", {"topic": "c"}, queue="other")
    later, _ = store.create_run("essay", {"topic": "d"}, not_before_ms=10**13)
    unserved, _ = store.create_run("release", {})
    got = claim(store, limit=10, workflows=("essay",))
    assert [c.id for c in got] == sorted([low["id"], high["id"]])
    # The earlier claim took the higher priority first when only one fits:
    first = store.create_run("essay", {"topic": "e"}, priority=1)[0]
    second = store.create_run("essay", {"topic": "f"}, priority=9)[0]
    assert [c.id for c in claim(store, limit=1, workflows=("essay",))] == [second["id"]]
    assert [c.id for c in claim(store, limit=1, workflows=("essay",))] == [first["id"]]
    assert claim(store, workflows=("essay",)) == []
    statuses = {r: store.get_run(r)["status"] for r in (other_q["id"], later["id"], unserved["id"])}
    assert set(statuses.values()) == {"queued"}


def test_claim_sets_a_fresh_token_and_records_an_event(store):
    run, _ = store.create_run("release", {})
    (c,) = claim(store)
    assert c.token.startswith("clm_") and c.claim_count == 1
    assert [t["step"] for t in c.tasks][:1] == ["build"]
    detail = store.get_run(run["id"])
    assert detail["status"] == "running" and detail["claimed_by"] == RUNNER
    assert detail["heartbeat_at"] and detail["started_at"]
    assert store.list_events(run["id"])["events"][-1]["type"] == "run.claimed"


def test_claim_by_id_only_once(store):
    run, _ = store.create_run("essay", {"topic": "a"})
    got, why = store.claim_run_by_id("rnr_a", run["id"])
    assert got is not None and why is None
    again, why = store.claim_run_by_id("rnr_b", run["id"])
    assert again is None and why == {"status": "running", "claimed_by": "rnr_a"}
    assert store.claim_run_by_id("rnr_b", "run_nope") == (None, None)


def test_writes_are_fenced_by_the_claim_token(store):
    run, _ = store.create_run("essay", {"topic": "a"})
    (c,) = claim(store)
    ok, _ = store.apply_run_writes([RunWrites(c.id, c.token, 0, run={"current_stage": "x"},
                                              events=[{"run_id": c.id, "type": "log"}])])  # fmt: skip
    assert ok[0].applied
    wrong_token = RunWrites(c.id, "clm_other", 1, events=[{"run_id": c.id, "type": "log"}])
    stale_fence = RunWrites(c.id, c.token, 0, events=[{"run_id": c.id, "type": "log"}])
    outcomes = [store.apply_run_writes([batch])[0][0] for batch in (wrong_token, stale_fence)]
    assert [o.applied for o in outcomes] == [False, False]
    with pytest.raises(ValueError, match="one batch per run"):  # outcomes are the run's
        store.apply_run_writes([wrong_token, stale_fence])
    assert [e["type"] for e in store.list_events(run["id"])["events"]].count("log") == 1


def test_a_cycle_with_a_refused_batch_still_applies_the_others_and_only_them(store):
    # The dispatcher binds a cycle's writes before its transaction, betting that the guard
    # lets every batch through; when it refuses one, the rest must still land.
    for topic in ("a", "b", "c"):
        store.create_run("essay", {"topic": topic})
    ca, cb, cc = claim(store, limit=3)
    outcomes, _ = store.apply_run_writes(
        [
            RunWrites(ca.id, ca.token, 0, run={"current_stage": "x"},
                      events=[{"run_id": ca.id, "type": "log", "message": "a"}]),
            RunWrites(cb.id, "clm_other", 0, run={"current_stage": "y"},
                      events=[{"run_id": cb.id, "type": "log", "message": "b"}]),
            RunWrites(cc.id, cc.token, 0, run={"current_stage": "z"},
                      events=[{"run_id": cc.id, "type": "log", "message": "c"}]),
        ]
    )  # fmt: skip
    assert [o.applied for o in outcomes] == [True, False, True]
    stages = {r: store.get_run(r, with_tasks=False)["current_stage"] for r in (ca.id, cb.id, cc.id)}
    assert stages == {ca.id: "x", cb.id: None, cc.id: "z"}
    logs = {
        r: [e["message"] for e in store.list_events(r)["events"] if e["type"] == "log"]
        for r in (ca.id, cb.id, cc.id)
    }
    assert logs == {ca.id: ["a"], cb.id: [], cc.id: ["c"]}


def test_a_retried_batch_after_an_ambiguous_commit_is_not_applied_twice(store):
    store.create_run("essay", {"topic": "a"})
    (c,) = claim(store)
    batch = RunWrites(c.id, c.token, 0, run={"current_stage": "x"},
                      events=[{"run_id": c.id, "type": "stage.finished"}])  # fmt: skip
    store.write(
        lambda conn: _apply(conn, [batch], 1, store.prepared)
    )  # committed, but "lost" reply
    outcome = store.write(lambda conn: _apply(conn, [batch], 2, store.prepared))  # the retry
    assert outcome[0].applied and outcome[0].landed_earlier
    types = [e["type"] for e in store.list_events(c.id)["events"]]
    assert types.count("stage.finished") == 1


def test_heartbeat_classifies_alive_finished_and_lost(store):
    _register(store)
    a, _ = store.create_run("essay", {"topic": "a"})
    b, _ = store.create_run("essay", {"topic": "b"})
    c, _ = store.create_run("essay", {"topic": "c"})
    ca, cb, cc = claim(store)
    store.apply_run_writes([RunWrites(cb.id, cb.token, 0, run={"status": "succeeded",
                                                              "completed_at": NOW})])  # fmt: skip
    store.request_cancel(ca.id, "stop")
    result = store.heartbeat(RUNNER, {ca.id: ca.token, cb.id: cb.token, cc.id: "clm_stale"},
                             {"cpu_percent": 1.0})  # fmt: skip
    assert result.alive == {ca.id: True}
    assert result.finished == {cb.id} and result.lost == {cc.id}
    assert result.runner_known and not result.deregister_requested
    store.request_deregister(RUNNER)
    assert store.heartbeat(RUNNER, {}).deregister_requested


def test_release_returns_runs_without_counting_the_claim(store):
    run, _ = store.create_run("release", {})
    (c,) = claim(store)
    task = c.tasks[0]
    store.apply_run_writes([RunWrites(c.id, c.token, 0, task_updates=[
        (task["id"], {"status": "running", "attempt": 1, "started_at": NOW})])])  # fmt: skip
    assert store.release_runs(RUNNER, {c.id: c.token}, "shutting down") == [c.id]
    detail = store.get_run(run["id"])
    assert detail["status"] == "queued" and detail["claim_count"] == 0
    assert detail["claimed_by"] is None and detail["tasks"][0]["status"] == "created"
    assert detail["tasks"][0]["attempt"] == 0
    assert store.list_events(run["id"])["events"][-1]["type"] == "run.released"
    assert store.release_runs(RUNNER, {c.id: c.token}, "again") == []  # fenced


def test_reaper_requeues_then_fails_at_the_claim_limit(store):
    run, _ = store.create_run("essay", {"topic": "a"})
    far_future = 10**13
    for expected_claims in (1, 2):
        (c,) = claim(store)
        assert c.claim_count == expected_claims
        assert store.reap_stalled() == []  # heartbeat is fresh by the DB clock
        rescued = store.reap_stalled(now_ms=far_future)
        assert [(r["run_id"], r["status"]) for r in rescued] == [(run["id"], "queued")]
    (c,) = claim(store)
    rescued = store.reap_stalled(now_ms=far_future)
    assert rescued[0]["status"] == "failed"
    detail = store.get_run(run["id"])
    assert detail["status"] == "failed" and "limit is 3" in detail["error_message"]
    types = [e["type"] for e in store.list_events(run["id"])["events"]]
    assert types.count("run.stalled") == 3 and types.count("run.requeued") == 2
    assert types[-1] == "run.failed"
    assert store.reap_stalled(now_ms=far_future) == []  # idempotent


def test_reaper_leaves_a_run_that_finished_first(store):
    store.create_run("essay", {"topic": "a"})
    (c,) = claim(store)
    store.apply_run_writes([RunWrites(c.id, c.token, 0, run={"status": "succeeded",
                                                             "completed_at": NOW})])  # fmt: skip
    assert store.reap_stalled(now_ms=10**13) == []
    assert store.get_run(c.id)["status"] == "succeeded"


def test_dead_runner_fast_path_uses_pid_and_start_time(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _register(store, "rnr_dead", pid=dead.pid, started=1, host="h", key="k")
    store.create_run("essay", {"topic": "a"})
    store.claim_runs("rnr_dead", queues=["default"], workflows=["essay"], limit=1)

    from runner.host import process_is_gone

    def is_dead(runner_id, pid, started, labels):
        return labels.get("host_key") == "k" and process_is_gone(pid, started)

    assert store.rescue_from_dead_runners("other-host", is_dead) == []
    rescued = store.rescue_from_dead_runners("h", is_dead)
    assert [r["status"] for r in rescued] == ["queued"]
    assert store.list_runners()["runners"][0]["status"] == "stopped"


def test_process_identity_survives_pid_reuse():
    import os

    from runner.host import process_is_gone, process_started_ms

    me = process_started_ms()
    assert not process_is_gone(os.getpid(), me)
    assert process_is_gone(os.getpid(), me - 5000)  # same pid, another start: not us


def test_two_updates_of_one_task_in_a_batch_land_in_order(store):
    run, _ = store.create_run("release", {})
    (c,) = claim(store)
    first, second = c.tasks[0]["id"], c.tasks[1]["id"]
    batch = RunWrites(c.id, c.token, 0, task_updates=[
        (first, {"status": "succeeded", "completed_at": NOW, "output": {"x": 1}}),
        (second, {"status": "running", "attempt": 1, "started_at": NOW, "error": None}),
        (second, {"status": "succeeded", "completed_at": NOW, "output": {"y": 2}}),
    ])  # fmt: skip
    assert store.apply_run_writes([batch])[0][0].applied
    tasks = {t["id"]: t for t in store.get_run(run["id"])["tasks"]}
    assert tasks[second]["status"] == "succeeded" and tasks[second]["attempt"] == 1
    assert tasks[second]["output"] == {"y": 2} and tasks[second]["started_at"]


def test_a_claim_takes_at_most_one_rescued_run_and_none_while_one_is_held(store):
    from shared.store import ClaimRequest

    for i in range(4):
        store.create_run("essay", {"topic": f"s{i}"})
    for _ in range(2):  # rescued twice: suspects
        rescued = claim(store, limit=4)
        assert len(store.reap_stalled(now_ms=10**13)) == 4
    fresh = [store.create_run("essay", {"topic": f"f{i}"})[0]["id"] for i in range(4)]

    def take(suspects):
        req = ClaimRequest(RUNNER, ("default",), ("essay",), 3, suspects=suspects)
        return store.apply_run_writes([], req)[1]

    first = take(1)
    assert sum(c.claim_count == 3 for c in first) == 1 and len(first) == 3
    second = take(0)  # three suspects wait, but this runner holds one: fresh runs only
    assert [c.claim_count for c in second] == [1, 1] and {c.id for c in second} <= set(fresh)
    assert {c.id for c in rescued} >= {c.id for c in first if c.claim_count == 3}
    # Suspect and fresh rows alike come back decoded (they are decoded after the commit).
    for c in [*first, *second]:
        assert isinstance(c.inputs, dict) and isinstance(c.definition, dict)


def test_a_claim_never_takes_more_than_its_limit(store):
    # PostgreSQL ran `IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` once per candidate row and
    # claimed more than n runs; the pick is a materialized CTE now.
    for i in range(12):
        store.create_run("essay", {"topic": f"l{i}"})
    claim(store, limit=12)
    store.reap_stalled(now_ms=10**13)  # all twelve queued again, as suspects
    for limit in (1, 2, 5):
        got = store.claim_runs(RUNNER, queues=["default"], workflows=["essay"], limit=limit)
        assert len(got) == limit, (limit, len(got))


def test_a_claim_says_whether_more_runs_are_likely_waiting(store):
    # The dispatcher claims again at once only while claims come back full. A claim that may
    # take a suspect keeps one slot for it: with no suspect waiting it takes one run fewer
    # than its limit, and must still count as full (else a draining runner waits a poll
    # interval after every suspect check).
    from shared.store import ClaimRequest

    for i in range(6):
        store.create_run("essay", {"topic": f"m{i}"})

    def take(limit, suspects):
        req = ClaimRequest(RUNNER, ("default",), ("essay",), limit, suspects=suspects)
        return req, store.apply_run_writes([], req)[1]

    req, got = take(4, 1)
    assert len(got) == 3 and req.filled  # one slot kept for a suspect that was not there
    req, got = take(2, 0)
    assert len(got) == 2 and req.filled
    req, got = take(4, 0)
    assert len(got) == 1 and not req.filled  # the queue ran dry
    req, got = take(1, 1)
    assert got == [] and not req.filled


def test_the_three_ways_of_writing_a_cycles_run_changes_write_the_same(store):
    """A cycle's run changes go out as the guard's own SET (every run changes the same
    columns), one statement per column set (PostgreSQL: UNNEST; SQLite: executemany), or one
    update per run (a column set of one run): the rows must come out the same."""
    from sqlalchemy import text

    from shared.store import ClaimRequest

    store.create_runs("essay", [{"topic": str(i)} for i in range(16)])
    claim = ClaimRequest("rnr_a", ("default",), ("essay",), 16, suspects=0)
    _, held = store.apply_run_writes([], claim)
    assert len(held) == 16
    # Each distinct snapshot text is parsed once (fast.py; psycopg hands it over as text).
    if not store.is_libsql:
        assert all(c.definition is held[0].definition for c in held)
    outputs = [{"text": 'say "hi"\\n', "n": [1, 2.5, None]}, None, "just text"]

    def batch(c, i):
        return RunWrites(
            c.id, c.token, 0,
            run={"status": "succeeded", "output": outputs[i], "final_score": 0.1 * (i + 1),
                 "current_attempt": i, "error_message": f"e{i} \\ \"q\"", "completed_at": NOW},
        )  # fmt: skip

    def other(c):  # a batch changing other columns: the cycle's runs no longer share a set
        return RunWrites(c.id, c.token, 0, run={"current_stage": "x"})

    def apply(batches):
        outcomes, _ = store.apply_run_writes(batches)
        assert all(o.applied for o in outcomes)

    merged, unnested, one_by_one, others = held[0:3], held[3:6], held[6:9], held[9:13]
    alike = held[13:16]  # every run finishes the same way (a drain): nothing varies
    apply([batch(c, i) for i, c in enumerate(merged)])
    apply([batch(c, 0) for c in alike])
    apply([*(batch(c, i) for i, c in enumerate(unnested)), other(others[0])])
    for i, c in enumerate(one_by_one):
        apply([batch(c, i), other(others[i + 1])])
    keys = [k for k in store.prepared._items if isinstance(k, tuple)]
    kinds = {k[0] for k in keys}
    assert "run_update" in kinds
    if store.is_postgres:
        assert "run_update_unnest" in kinds
    if not store.is_libsql:
        assert any(k[0] == "guard" and k[2] for k in keys)
    if store.is_sqlite and not store.is_libsql:
        assert any(k[0] == "guard" and k[2] and not k[3] for k in keys)

    def stored(run_id):
        return store.read(
            lambda conn: conn.execute(
                text(
                    "SELECT status, CAST(output AS TEXT), final_score, current_attempt, error_message,"
                    " completed_at IS NOT NULL, fence, current_stage FROM runs WHERE id = :id"
                ),
                {"id": run_id},
            ).one()
        )

    for a, b, c in zip(merged, unnested, one_by_one, strict=True):
        assert stored(a.id) == stored(b.id) == stored(c.id)
    assert all(stored(c.id) == stored(merged[0].id) for c in alike)
    assert stored(merged[1].id)[1] == "null"  # None is JSON null, as SQLAlchemy writes it
    assert stored(merged[0].id)[6] == 1  # the fence moved once
    assert store.get_run(merged[0].id)["output"] == outputs[0]
    assert stored(others[0].id)[7] == "x"

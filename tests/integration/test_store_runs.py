"""Intents and reads through the store verbs, on a fresh SQLite file per test."""

import threading

import pytest

from shared.errors import Conflict, InvalidInput, NotFound
from shared.store import Actor, RunFilter

pytestmark = pytest.mark.all_backends


def test_create_run_records_tasks_event_and_audit(store):
    run, created = store.create_run("release", {"version": "2.0"}, actor=Actor("ana"))
    assert created and run["status"] == "queued" and run["origin"] == "api"
    assert run["inputs"] == {"version": "2.0", "break_docs": False}
    assert run["requested_by"] == "ana" and run["created_at"].endswith("Z")
    detail = store.get_run(run["id"])
    assert [t["step"] for t in detail["tasks"]] == ["build", "unit", "lint", "docs", "publish"]
    assert {t["status"] for t in detail["tasks"]} == {"created"}
    assert detail["lineage"] == {"parent": None, "children": []}
    events = store.list_events(run["id"])["events"]
    assert [e["type"] for e in events] == ["run.queued"]
    audit = store.list_audit(run_id=run["id"])["audit"]
    assert [(a["actor"], a["action"]) for a in audit] == [("ana", "run.create")]


def test_create_rejects_unknown_workflow_and_bad_inputs(store):
    with pytest.raises(InvalidInput) as err:
        store.create_run("nope", {})
    assert err.value.field == "workflow"
    with pytest.raises(InvalidInput) as err:
        store.create_run("essay", {"topic": 42})
    assert err.value.field == "inputs.topic"
    with pytest.raises(InvalidInput) as err:
        store.create_run("essay", {})
    assert err.value.field == "inputs.topic"
    assert store.list_runs()["runs"] == []


def test_idempotency_key_returns_the_same_run(store):
    first, created = store.create_run("essay", {"topic": "a"}, idempotency_key="k")
    again, created_again = store.create_run("essay", {"topic": "a"}, idempotency_key="k")
    assert created and not created_again and again["id"] == first["id"]
    with pytest.raises(Conflict, match="different inputs"):
        store.create_run("essay", {"topic": "b"}, idempotency_key="k")
    with pytest.raises(Conflict, match="workflow"):
        store.create_run("release", {}, idempotency_key="k")


@pytest.mark.all_backends
def test_idempotency_key_race_creates_one_run(store):
    ids, errors = [], []

    def create():
        try:
            ids.append(store.create_run("essay", {"topic": "a"}, idempotency_key="race")[0]["id"])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(ids)) == 1 and len(ids) == 8
    # Only runs with a key are in its index (PostgreSQL), and keyless runs never collide.
    keyless = [store.create_run("essay", {"topic": "b"})[0]["id"] for _ in range(2)]
    assert len(set(keyless)) == 2
    with pytest.raises(Conflict, match="different inputs"):
        store.create_run("essay", {"topic": "c"}, idempotency_key="race")


def test_list_filters_and_keyset_pagination(store):
    # Topics of letters Crockford base32 never uses (i, l, o, u), so no run id matches them.
    made = [store.create_run("essay", {"topic": f"lui{'o' * i}"})[0]["id"] for i in range(7)]
    made += [store.create_run("release", {}, queue="builds")[0]["id"] for _ in range(3)]
    seen, cursor = [], None
    while True:
        page = store.list_runs(cursor=cursor, limit=3)
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(made, reverse=True)
    assert len(store.list_runs(RunFilter(workflow="release"))["runs"]) == 3
    assert len(store.list_runs(RunFilter(queue="builds"))["runs"]) == 3
    found = store.list_runs(RunFilter(text='luiooo"'))["runs"]
    assert [r["inputs"]["topic"] for r in found] == ["luiooo"]
    assert len(store.list_runs(RunFilter(statuses=("queued",)))["runs"]) == 10
    assert store.list_runs(RunFilter(statuses=("failed",)))["runs"] == []
    with pytest.raises(InvalidInput, match="unknown status"):
        store.list_runs(RunFilter(statuses=("bogus",)))
    with pytest.raises(InvalidInput, match="limit"):
        store.list_runs(limit=0)


def test_events_cursor(store):
    run, _ = store.create_run("essay", {"topic": "a"})
    store.request_cancel(run["id"], "x")
    page = store.list_events(run["id"])
    assert [e["type"] for e in page["events"]] == ["run.queued", "run.cancel_requested",
                                                   "run.cancelled"]  # fmt: skip
    again = store.list_events(run["id"], after=page["next_after"])
    assert again["events"] == [] and again["next_after"] == page["next_after"]
    with pytest.raises(NotFound):
        store.list_events("run_nope")


def test_cancel_queued_running_and_terminal(store):
    queued, _ = store.create_run("essay", {"topic": "a"})
    done = store.request_cancel(queued["id"], "not needed", Actor("bo"))
    assert done["status"] == "cancelled" and done["cancel_reason"] == "not needed"
    assert {t["status"] for t in store.get_run(done["id"])["tasks"]} <= {"cancelled"}
    with pytest.raises(Conflict, match="already cancelled"):
        store.request_cancel(queued["id"])
    with pytest.raises(NotFound):
        store.request_cancel("run_nope")

    running, _ = store.create_run("release", {})
    store.claim_runs("rnr_x", queues=["default"], workflows=["release"], limit=1)
    asked = store.request_cancel(running["id"], "stop")
    assert asked["status"] == "running" and asked["cancel_requested_at"]
    store.request_cancel(running["id"], "again")  # idempotent while running
    types = [e["type"] for e in store.list_events(running["id"])["events"]]
    assert types.count("run.cancel_requested") == 1


def test_retry_makes_a_new_run_only_for_finished_runs(store):
    run, _ = store.create_run("essay", {"topic": "a", "words": 60})
    with pytest.raises(Conflict, match="while it is queued"):
        store.retry_run(run["id"])
    store.request_cancel(run["id"])
    new = store.retry_run(run["id"], "try again", Actor("cy"))
    assert new["origin"] == "retry" and new["parent_run_id"] == run["id"]
    assert new["inputs"] == store.get_run(run["id"])["inputs"] and new["status"] == "queued"
    old = store.get_run(run["id"])
    assert old["lineage"]["children"][0]["id"] == new["id"]
    assert store.get_run(new["id"])["lineage"]["parent"]["id"] == run["id"]
    assert store.list_events(run["id"])["events"][-1]["type"] == "run.retried"
    with pytest.raises(NotFound):
        store.retry_run("run_nope")


def test_stats(store):
    store.create_run("essay", {"topic": "a"})
    stats = store.stats()
    assert stats["counts"]["queued"] == 1 and stats["total"] == 1 and stats["stalled"] == 0


def test_bulk_create_is_one_all_or_nothing_transaction(store):
    ids = store.create_runs("release", [{}, {"version": "2"}, {"break_docs": True}])
    assert len(ids) == 3 and len(set(ids)) == 3
    runs = {r["id"]: r for r in store.list_runs(limit=10)["runs"]}
    assert set(runs) == set(ids) and {r["status"] for r in runs.values()} == {"queued"}
    assert runs[ids[1]]["inputs"]["version"] == "2"
    assert len(store.get_run(ids[0])["tasks"]) == 5
    assert [e["type"] for e in store.list_events(ids[2])["events"]] == ["run.queued"]
    with pytest.raises(InvalidInput) as err:
        store.create_runs("essay", [{"topic": "a"}, {"topic": 3}])
    assert err.value.field == "runs[1].inputs.topic"
    assert len(store.list_runs(limit=10)["runs"]) == 3
    assert store.create_runs("essay", []) == []

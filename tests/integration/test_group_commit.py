"""Group commit of concurrent creates (shared/store/group.py): the GroupCommit mechanics with
a controllable writer, then the store's creates on every backend — each caller gets its own
run or its own error, and nothing one caller sends spoils another's create."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from shared.errors import InvalidInput
from shared.store import Actor
from shared.store.group import GroupCommit
from shared.store.runs import _Create

from ..helpers import wait_for

# -- the mechanism ---------------------------------------------------------------------------


class Gate:
    """A run_group that records each group and holds the first one until released."""

    def __init__(self) -> None:
        self.groups: list[list[Any]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: list[Any]) -> list[Any]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.entered.set()
            assert self.release.wait(20), "the test never released the first group"
        return [ValueError(f"bad {i}") if str(i).startswith("bad") else f"ok {i}" for i in items]


def _submit_in_threads(gc: GroupCommit[Any, Any], items: list[Any]) -> dict[Any, Any]:
    answers: dict[Any, Any] = {}

    def one(item: Any) -> None:
        try:
            answers[item] = gc.submit(item)
        except Exception as exc:  # noqa: BLE001 - the answer under test
            answers[item] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in items]
    for t in threads:
        t.start()
    answers["_threads"] = threads
    return answers


def test_callers_arriving_during_a_write_share_the_next_group():
    gate = Gate()
    gc: GroupCommit[Any, Any] = GroupCommit(gate)
    first = _submit_in_threads(gc, ["a"])
    assert gate.entered.wait(10)
    rest = _submit_in_threads(gc, ["b", "bad c", "d"])
    wait_for(lambda: gc.waiting == 3, what="three callers queued behind the first group")
    gate.release.set()
    for t in first.pop("_threads") + rest.pop("_threads"):
        t.join(10)
    assert [sorted(g) for g in gate.groups] == [["a"], ["b", "bad c", "d"]]
    assert first == {"a": "ok a"}
    assert rest["b"] == "ok b" and rest["d"] == "ok d"
    assert isinstance(rest["bad c"], ValueError) and str(rest["bad c"]) == "bad bad c"


def test_groups_are_capped_and_every_caller_is_answered():
    gate = Gate()
    gc: GroupCommit[Any, Any] = GroupCommit(gate, max_group=4)
    first = _submit_in_threads(gc, [0])
    assert gate.entered.wait(10)
    rest = _submit_in_threads(gc, list(range(1, 11)))
    wait_for(lambda: gc.waiting == 10, what="ten callers queued")
    gate.release.set()
    for t in first.pop("_threads") + rest.pop("_threads"):
        t.join(10)
    assert {**first, **rest} == {i: f"ok {i}" for i in range(11)}
    assert max(len(g) for g in gate.groups) == 4
    assert sorted(i for g in gate.groups for i in g) == list(range(11))


def test_a_failing_group_function_answers_every_member_and_the_next_group_runs():
    calls: list[list[str]] = []

    def run_group(items: list[str]) -> list[str]:
        calls.append(items)
        if "boom" in items:
            raise RuntimeError("the group's transaction failed")
        return [x.upper() for x in items]

    gc: GroupCommit[str, str] = GroupCommit(run_group)
    with pytest.raises(RuntimeError, match="transaction failed"):
        gc.submit("boom")
    assert gc.submit("fine") == "FINE"


def test_coroutines_wait_without_threads_and_mix_with_thread_callers():
    gate = Gate()
    gc: GroupCommit[Any, Any] = GroupCommit(gate)

    async def main() -> list[Any]:
        blocker = asyncio.ensure_future(gc.submit_async("first"))
        await asyncio.to_thread(gate.entered.wait, 10)
        tasks = [asyncio.ensure_future(gc.submit_async(f"co{i}")) for i in range(5)]
        tasks.append(asyncio.ensure_future(gc.submit_async("bad co")))
        cancelled = asyncio.ensure_future(gc.submit_async("gone"))
        thread_answers = _submit_in_threads(gc, ["th"])
        await asyncio.to_thread(wait_for, lambda: gc.waiting == 8, 10)
        cancelled.cancel()
        gate.release.set()
        answers = await asyncio.gather(blocker, *tasks, return_exceptions=True)
        for t in thread_answers.pop("_threads"):
            t.join(10)
        assert cancelled.cancelled()
        return [*answers, thread_answers["th"]]

    answers = asyncio.run(main())
    assert answers[:6] == ["ok first", *(f"ok co{i}" for i in range(5))]
    assert isinstance(answers[6], ValueError)
    assert answers[7] == "ok th"
    # The cancelled caller's item was still written (like a request whose client hung up).
    assert "gone" in [i for g in gate.groups for i in g]


def test_an_idle_writer_thread_ends_and_the_next_coroutine_starts_another(monkeypatch):
    monkeypatch.setattr("shared.store.group.WRITER_IDLE_S", 0.05)
    gc: GroupCommit[str, str] = GroupCommit(lambda items: [i.upper() for i in items])
    assert asyncio.run(gc.submit_async("a")) == "A"
    wait_for(lambda: gc._writer is None, what="the idle writer thread to end")
    assert asyncio.run(gc.submit_async("b")) == "B"


# -- the store's creates ----------------------------------------------------------------------


def _item(workflow: str, inputs: Any, who: str = "ana") -> _Create:
    return _Create(workflow, inputs, None, None, None, "api", Actor(who))


@pytest.mark.all_backends
def test_a_group_writes_every_run_with_its_event_and_audit(store):
    outcomes = store.create_group(
        [_item("essay", {"topic": f"t{i}"}, who=f"user{i}") for i in range(5)]
    )
    assert [o["inputs"]["topic"] for o in outcomes] == [f"t{i}" for i in range(5)]
    assert len({o["id"] for o in outcomes}) == 5
    for i, run in enumerate(outcomes):
        assert run["status"] == "queued" and run["requested_by"] == f"user{i}"
        assert store.get_run(run["id"])["inputs"]["topic"] == f"t{i}"
        assert [e["type"] for e in store.list_events(run["id"])["events"]] == ["run.queued"]
        audit = store.list_audit(run_id=run["id"])["audit"]
        assert [(a["actor"], a["action"]) for a in audit] == [(f"user{i}", "run.create")]


@pytest.mark.all_backends
def test_an_invalid_create_fails_alone_in_its_group(store):
    outcomes = store.create_group(
        [_item("essay", {"topic": "a"}), _item("nope", {}), _item("essay", {"topic": 42}),
         _item("essay", {"topic": "b"})]
    )  # fmt: skip
    assert isinstance(outcomes[1], InvalidInput) and outcomes[1].field == "workflow"
    assert isinstance(outcomes[2], InvalidInput) and outcomes[2].field == "inputs.topic"
    made = [outcomes[0]["id"], outcomes[3]["id"]]
    assert sorted(r["id"] for r in store.list_runs()["runs"]) == sorted(made)


@pytest.mark.all_backends
def test_a_failed_group_transaction_writes_each_create_alone(store):
    """An item the database itself refuses (here: inputs that cannot be stored as JSON) rolls
    back the group's transaction; every other item is then written alone."""
    outcomes = store.create_group(
        [_item("essay", {"topic": "a"}), _item("essay", {"topic": "x", "extra": object()}),
         _item("essay", {"topic": "b"})]
    )  # fmt: skip
    assert isinstance(outcomes[1], Exception)
    assert outcomes[0]["inputs"]["topic"] == "a" and outcomes[2]["inputs"]["topic"] == "b"
    assert len(store.list_runs()["runs"]) == 2


@pytest.mark.all_backends
def test_concurrent_creates_from_threads_and_coroutines(store):
    """The API's path (create_run_async) and threads' (create_run) at once: every run is
    created once, each caller gets its own."""
    results: list[tuple[str, str]] = []
    lock = threading.Lock()

    def from_thread(i: int) -> None:
        run, created = store.create_run("essay", {"topic": f"th{i}"})
        assert created
        with lock:
            results.append((f"th{i}", run["id"]))

    async def coroutines() -> None:
        answers = await asyncio.gather(
            *(store.create_run_async("essay", {"topic": f"co{i}"}) for i in range(40))
        )
        for i, (run, created) in enumerate(answers):
            assert created
            results.append((f"co{i}", run["id"]))
        with pytest.raises(InvalidInput):
            await store.create_run_async("nope", {})

    threads = [threading.Thread(target=from_thread, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    asyncio.run(coroutines())
    for t in threads:
        t.join(30)
    assert len(results) == 50 and len({rid for _, rid in results}) == 50
    stored = {r["id"]: r["inputs"]["topic"] for r in store.list_runs(limit=100)["runs"]}
    assert stored == {rid: topic for topic, rid in results}

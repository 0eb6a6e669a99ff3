"""Runner logic without a database: what the graph scheduler does when the lease goes away
between two steps, and with approval decisions it finds on a claimed run."""

import threading

import runner.execution as execution
from runner.active import ActiveRun, Outbox
from runner.execution import ExecOptions, Execution
from runner.stages import StageResult
from shared.store import ClaimedRun
from shared.workflows import load_text

GRAPH = load_text("""
workflows:
  g:
    steps:
      a: {call: "m:f"}
      b: {call: "m:f", needs: [a]}
      gate: {call: "m:f", needs: [a], approval: {prompt: "go?"}}
      c: {call: "m:f", needs: [gate]}
""")["g"]


def _claimed(tasks):
    return ClaimedRun(
        id="run_x", token="clm_x", workflow="g", version="v1", kind="steps",
        definition=GRAPH.definition(),
        inputs={}, current_attempt=0, claim_count=1, cancel_requested=False, metrics={},
        tasks=[{"id": f"tsk_{s}", "step": s, "status": st, "attempt": 0, "output": None, **extra}
               for s, st, extra in tasks],
    )  # fmt: skip


def _run(active, monkeypatch, stage):
    monkeypatch.setattr(execution, "run_stage", stage)
    thread = threading.Thread(target=Execution(active, ExecOptions()).run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the execution did not stop"


def test_a_lease_lost_between_steps_stops_the_scheduler(monkeypatch):
    active = ActiveRun(_claimed([(s, "created", {}) for s in ("a", "b", "gate", "c")]), Outbox())
    calls = []
    record = active.update_task

    def update_task(task_id, **values):
        record(task_id, **values)
        if values.get("status") == "succeeded":  # the loss is noticed right after step a
            active.mark_lost("taken away")

    monkeypatch.setattr(active, "update_task", update_task)

    def stage(job):
        calls.append(job.step)
        return StageResult(True, output={})

    _run(active, monkeypatch, stage)
    assert calls == ["a"] and active.finished.is_set()
    assert "status" not in active.take_batch().run  # no terminal write was attempted


def test_decisions_found_on_claim_run_or_fail_the_gated_step(monkeypatch):
    approved = _claimed([("a", "succeeded", {}), ("b", "succeeded", {}),
                         ("gate", "waiting", {"approval_decision": "approve"}),
                         ("c", "created", {})])  # fmt: skip
    active = ActiveRun(approved, Outbox())
    ran = []
    _run(active, monkeypatch, lambda job: ran.append(job.step) or StageResult(True, output={}))
    assert ran == ["gate", "c"] and active.take_batch().run["status"] == "succeeded"

    rejected = _claimed([("a", "succeeded", {}), ("b", "succeeded", {}),
                         ("gate", "waiting", {"approval_decision": "reject",
                                              "approval_by": "ana", "approval_comment": "no"}),
                         ("c", "created", {})])  # fmt: skip
    active = ActiveRun(rejected, Outbox())
    ran = []
    _run(active, monkeypatch, lambda job: ran.append(job.step) or StageResult(True, output={}))
    batch = active.take_batch()
    assert ran == [] and batch.run["status"] == "failed"
    assert batch.run["error_message"] == "step 'gate' failed: rejected by ana: no"
    updates = dict(batch.task_updates)
    assert updates["tsk_c"]["status"] == "skipped"


def test_an_undecided_gate_releases_the_run_instead_of_finishing(monkeypatch):
    active = ActiveRun(_claimed([(s, "created", {}) for s in ("a", "b", "gate", "c")]), Outbox())
    ran = []
    _run(active, monkeypatch, lambda job: ran.append(job.step) or StageResult(True, output={}))
    batch = active.take_batch()
    assert sorted(ran) == ["a", "b"] and batch.release_to == "waiting"
    assert "status" not in batch.run
    assert [e["type"] for e in batch.events].count("approval.requested") == 1

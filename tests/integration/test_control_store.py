"""Control-plane verbs through the store (restart, reset, rerun, dispatch, approvals, rate
limit, deregistration), with an in-process runner where execution matters."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from shared.errors import Conflict, InvalidInput, NotFound
from shared.schema import metadata
from shared.store import NOW, Actor, RunWrites
from shared.workflows import load_text

from ..control_support import CONTROL_WORKFLOWS, event_types, settled, starts, statuses
from ..helpers import wait_for

RUNNER = "rnr_fake"


def _claim(store, workflows=("fanout", "gated", "scored", "held", "essay", "release")):
    (claimed,) = store.claim_runs(RUNNER, queues=["default"], workflows=list(workflows), limit=1)
    return claimed


@pytest.mark.all_backends
def test_the_migrations_build_exactly_the_schema_module(cstore):
    def for_this_dialect(obj, name, kind, reflected, compare_to):
        # Objects the schema declares for one dialect only (`ddl_if`) are compared there only.
        only = getattr(obj, "_ddl_if", None)
        return reflected or only is None or only.dialect == cstore.engine.dialect.name

    with cstore.engine.connect() as conn:
        opts = {"compare_type": True, "include_object": for_this_dialect}
        ctx = MigrationContext.configure(conn, opts=opts)
        assert compare_metadata(ctx, metadata) == []

    # Alembic compares neither of these: each column's collation, and which foreign keys exist.
    dialect = cstore.engine.dialect
    inspector = inspect(cstore.engine)
    for table in metadata.sorted_tables:
        built = {c["name"]: c for c in inspector.get_columns(table.name)}
        for column in table.columns:
            declared = getattr(column.type.dialect_impl(dialect), "collation", None)
            assert getattr(built[column.name]["type"], "collation", None) == declared, (
                f"{table.name}.{column.name}"
            )
        declared_keys = {
            fk.name
            for fk in table.foreign_key_constraints
            if getattr(fk, "_ddl_if", None) is None or fk._ddl_if.dialect == dialect.name
        }
        built_keys = [fk["name"] for fk in inspector.get_foreign_keys(table.name)]
        if dialect.name == "sqlite":  # SQLite keeps no names for foreign keys: count them
            assert len(built_keys) == len(declared_keys), table.name
        else:
            assert set(built_keys) == declared_keys, table.name


# -- restart and retry --------------------------------------------------------------------


def test_restart_runs_the_old_snapshot_and_retry_the_current_definition(cstore):
    run, _ = cstore.create_run("fanout", {"fail": "b"})
    with pytest.raises(Conflict, match="while it is queued"):
        cstore.restart_run(run["id"])
    cstore.request_cancel(run["id"])
    changed = CONTROL_WORKFLOWS.replace(
        'b: {call: "tests.control_steps:step", needs: [a]}',
        'b: {call: "tests.control_steps:step", needs: [a], retries: 2}',
    )
    cstore.publish_workflows(load_text(changed), "tests")

    restarted = cstore.restart_run(run["id"], "same as before", Actor("ana", client="1.2.3.4"))
    assert restarted["origin"] == "restart" and restarted["parent_run_id"] == run["id"]
    assert restarted["inputs"] == run["inputs"] and restarted["status"] == "queued"
    assert restarted["config_diff"] == []
    assert restarted["version"] == run["version"]

    retried = cstore.retry_run(run["id"], "with the fix", Actor("bo"))
    assert retried["origin"] == "retry" and retried["version"] != run["version"]
    assert retried["config_diff"] == [
        {"path": "steps.b.retries", "change": "changed", "before": 0, "after": 2}
    ]
    assert cstore.get_run(retried["id"])["config_diff"] == retried["config_diff"]
    assert event_types(cstore, run["id"])[-2:] == ["run.restarted", "run.retried"]
    audit = cstore.get_run(run["id"])["audit"]
    assert [(a["actor"], a["action"]) for a in audit] == [
        ("anonymous", "run.create"), ("anonymous", "run.cancel"), ("ana", "run.restart"),
        ("bo", "run.retry"),
    ]  # fmt: skip
    assert audit[2]["client"] == "1.2.3.4" and audit[2]["reason"] == "same as before"
    assert audit[2]["details"] == {"new_run_id": restarted["id"]}
    with pytest.raises(NotFound):
        cstore.restart_run("run_nope")


def test_retry_conflicts_when_the_current_definition_rejects_the_inputs(cstore):
    run, _ = cstore.create_run("fanout", {"fail": "b"})
    cstore.request_cancel(run["id"])
    cstore.publish_workflows(load_text(CONTROL_WORKFLOWS.replace("fail: {", "broken: {")), "t")
    with pytest.raises(Conflict, match="restart the run from its snapshot") as err:
        cstore.retry_run(run["id"])
    assert err.value.details["field"] == "inputs.fail"
    assert cstore.restart_run(run["id"])["status"] == "queued"


# -- reset ----------------------------------------------------------------------------------


def test_reset_takes_a_running_run_away_and_fences_the_old_claim(cstore):
    cstore.register_runner({"id": RUNNER, "hostname": "h", "pid": 1, "pid_started_at": 0,
                            "version": "t", "queues": ["default"], "labels": {},
                            "workflows": ["fanout"], "concurrency": 1, "stats": {}})  # fmt: skip
    run, _ = cstore.create_run("fanout", {})
    c = _claim(cstore)
    a = c.tasks[0]
    outcome, _ = cstore.apply_run_writes([RunWrites(c.id, c.token, 0, task_updates=[
        (a["id"], {"status": "running", "attempt": 1, "started_at": NOW})])])  # fmt: skip
    assert outcome[0].applied
    cstore.request_cancel(run["id"], "meant to stop")

    reset = cstore.reset_run(run["id"], reason="runner hangs", actor=Actor("root"))
    assert reset["status"] == "queued" and reset["claimed_by"] is None
    assert reset["claim_count"] == 0 and reset["cancel_requested_at"] is None
    assert reset["cleared"]["claim"]["runner_id"] == RUNNER
    assert reset["cleared"]["cancel_request"] is True
    assert [(t["step"], t["status"], t["action"]) for t in reset["cleared"]["tasks"]] == [
        ("a", "running", "reset"), ("b", "created", "reset"), ("c", "created", "reset"),
        ("d", "created", "reset"), ("e", "created", "reset"),
    ]  # fmt: skip
    assert set(statuses(reset).values()) == {"created"}
    events_before = cstore.list_events(run["id"])["next_after"]

    # Everything the old claim tries now is rejected: writes, heartbeat, release.
    stale = RunWrites(c.id, c.token, 1, run={"status": "succeeded", "completed_at": NOW},
                      task_updates=[(a["id"], {"status": "succeeded"})],
                      events=[{"run_id": c.id, "type": "log", "message": "zombie"}])  # fmt: skip
    outcome, _ = cstore.apply_run_writes([stale])
    assert not outcome[0].applied
    beat = cstore.heartbeat(RUNNER, {c.id: c.token})
    assert beat.lost == {c.id}
    assert cstore.release_runs(RUNNER, {c.id: c.token}, "shutting down") == []
    after = cstore.get_run(run["id"])
    assert after["status"] == "queued" and set(statuses(after).values()) == {"created"}
    assert cstore.list_events(run["id"], after=events_before)["events"] == []
    last = cstore.list_events(run["id"])["events"][-1]
    assert last["type"] == "run.reset" and "while running on rnr_fake" in last["message"]
    assert [a["action"] for a in after["audit"]][-1] == "run.reset"
    # A new claim gets a new token and works normally.
    again = _claim(cstore)
    assert again.token != c.token and again.claim_count == 1


def test_reset_validation(cstore):
    run, _ = cstore.create_run("fanout", {})
    with pytest.raises(InvalidInput) as err:
        cstore.reset_run(run["id"], to_step="nope", reason="x")
    assert err.value.field == "to_step"
    with pytest.raises(NotFound):
        cstore.reset_run("run_nope", reason="x")
    loop, _ = cstore.create_run("scored", {})
    for bad in ("build", "evaluate#x", "produce#2", "evaluate"):
        with pytest.raises(InvalidInput) as err:
            cstore.reset_run(loop["id"], to_step=bad, reason="x")
        assert err.value.field == "to_step"


def test_reset_to_a_step_reruns_it_and_downstream_keeping_earlier_results(
    cstore, in_process_runner
):
    in_process_runner()
    run, _ = cstore.create_run("fanout", {})
    done = settled(cstore, run["id"])
    assert done["status"] == "succeeded"
    with pytest.raises(Conflict, match="nothing to reset"):
        cstore.reset_run(run["id"], reason="again")
    arts = {a["step"]: a["id"] for a in cstore.list_artifacts(run["id"])["artifacts"]}

    reset = cstore.reset_run(run["id"], to_step="c", clear_results=True, reason="c was wrong")
    assert sorted(t["step"] for t in reset["cleared"]["tasks"]) == ["c", "d", "e"]
    assert sorted(reset["cleared"]["artifacts"]) == sorted([arts["c"], arts["d"], arts["e"]])
    assert reset["cleared"]["outputs"] == ["c", "d", "e"]
    assert statuses(reset) == {"a": "succeeded", "b": "succeeded", "c": "created",
                               "d": "created", "e": "created"}  # fmt: skip
    assert {t["step"]: t["output"] for t in reset["tasks"]}["c"] is None
    again = settled(cstore, run["id"])
    assert again["status"] == "succeeded"
    assert starts(cstore, run["id"]) == {"a": 1, "b": 1, "c": 2, "d": 2, "e": 2}
    kept = {a["step"] for a in cstore.list_artifacts(run["id"])["artifacts"]}
    assert kept == {"a", "b", "c", "d", "e"}

    everything = cstore.reset_run(run["id"], clear_results=True, reason="from scratch")
    assert len(everything["cleared"]["tasks"]) == 5
    settled(cstore, run["id"])
    assert starts(cstore, run["id"]) == {"a": 2, "b": 2, "c": 3, "d": 3, "e": 3}


def test_reset_a_loop_from_an_attempt_deletes_the_later_rows(cstore, in_process_runner):
    run, _ = cstore.create_run("scored", {"scores": [0.2, 0.5, 0.9]})
    in_process_runner()
    done = settled(cstore, run["id"])
    assert done["status"] == "succeeded" and done["current_attempt"] == 3
    reset = cstore.reset_run(run["id"], to_step="evaluate#2", reason="re-score attempt 2")
    assert [(t["step"], t["attempt"], t["action"]) for t in reset["cleared"]["tasks"]] == [
        ("evaluate", 2, "reset"), ("revise", 3, "deleted"), ("evaluate", 3, "deleted"),
    ]  # fmt: skip
    assert [(t["step"], t["attempt"]) for t in reset["tasks"]] == [
        ("produce", 1), ("evaluate", 1), ("revise", 2), ("evaluate", 2),
    ]  # fmt: skip
    again = settled(cstore, run["id"])
    assert again["status"] == "succeeded" and again["final_score"] == 0.9
    assert starts(cstore, run["id"]) == {"produce": 1, "revise": 3, "evaluate": 5}


# -- rerun ----------------------------------------------------------------------------------


def test_rerun_resets_the_failed_branch_only_and_the_runner_reuses_the_rest(
    cstore, in_process_runner, tmp_path
):
    fix = tmp_path / "fixed"
    run, _ = cstore.create_run("fanout", {"fail": "b", "fix_file": str(fix)})
    in_process_runner()
    failed = settled(cstore, run["id"])
    assert failed["status"] == "failed"
    assert statuses(failed) == {"a": "succeeded", "b": "failed", "c": "succeeded",
                                "d": "skipped", "e": "succeeded"}  # fmt: skip
    plan = cstore.rerun_plan(run["id"])
    assert [(e["step"], e["why"]) for e in plan["rerun"]] == [("b", "chosen"),
                                                               ("d", "skipped after b")]  # fmt: skip
    assert {e["step"]: e["needed_by"] for e in plan["reused"]} == {"a": ["b"], "c": ["d"],
                                                                   "e": []}  # fmt: skip
    assert plan["untouched"] == []
    outputs_before = {t["step"]: t["output"] for t in failed["tasks"]}

    fix.write_text("ok")
    rerun = cstore.rerun_run(
        run["id"], steps=["b"], reason="flaky network", actor=Actor("otto", on_behalf_of="ana")
    )
    assert rerun["status"] in ("queued", "running", "succeeded")  # the runner may be quick
    by_step = {t["step"]: t for t in rerun["tasks"]}
    assert by_step["b"]["rerun_count"] == 1 and by_step["b"]["last_rerun_by"] == "ana"
    assert by_step["d"]["last_rerun_reason"] == "flaky network" and by_step["d"]["last_rerun_at"]
    assert by_step["a"]["rerun_count"] == 0
    assert rerun["rerun_count"] == 1
    done = settled(cstore, run["id"])
    assert done["status"] == "succeeded"
    assert starts(cstore, run["id"]) == {"a": 1, "b": 2, "c": 1, "d": 1, "e": 1}
    after = {t["step"]: t["output"] for t in done["tasks"]}
    assert {s: after[s] for s in "ace"} == {s: outputs_before[s] for s in "ace"}
    types = event_types(cstore, run["id"])
    i = types.index("run.rerun_requested")
    assert types[i + 1 : i + 3] == ["task.rerun_reset", "task.rerun_reset"]
    audit = done["audit"][-1]
    assert (audit["actor"], audit["action"], audit["reason"]) == ("otto", "run.rerun",
                                                                  "flaky network")  # fmt: skip
    assert audit["details"]["requested_by"] == "ana" and audit["details"]["steps"] == ["b", "d"]


def test_rerun_rules_name_the_offending_tasks(cstore, in_process_runner):
    run, _ = cstore.create_run("fanout", {"fail": "b"})
    with pytest.raises(Conflict, match="only a finished run"):
        cstore.rerun_run(run["id"], reason="x")
    in_process_runner()
    failed = settled(cstore, run["id"])
    ids = {t["step"]: t["id"] for t in failed["tasks"]}
    with pytest.raises(Conflict) as err:
        cstore.rerun_run(run["id"], task_ids=[ids["a"], ids["d"]], reason="x")
    assert "a is succeeded" in err.value.message and "d is skipped" in err.value.message
    assert [o["step"] for o in err.value.details["offending"]] == ["a", "d"]
    with pytest.raises(InvalidInput) as bad:
        cstore.rerun_run(run["id"], task_ids=["tsk_nope"], reason="x")
    assert bad.value.field == "task_ids" and bad.value.details["offending"] == ["tsk_nope"]
    with pytest.raises(InvalidInput) as bad:
        cstore.rerun_run(run["id"], steps=["zz"], reason="x")
    assert bad.value.field == "steps"
    with pytest.raises(Conflict):
        cstore.rerun_plan(run["id"], steps=["c"])
    ok, _ = cstore.create_run("fanout", {})
    settled(cstore, ok["id"])
    with pytest.raises(Conflict, match="no failed or cancelled task"):
        cstore.rerun_run(ok["id"], reason="x")
    assert cstore.get_run(run["id"])["status"] == "failed"  # nothing changed by the refusals


def test_a_held_rerun_waits_until_dispatched(cstore, in_process_runner, tmp_path):
    fix = tmp_path / "fixed"
    run, _ = cstore.create_run("fanout", {"fail": "d", "fix_file": str(fix)})
    runner = in_process_runner()
    settled(cstore, run["id"])
    held = cstore.rerun_run(run["id"], reason="after the fix", dispatch=False)
    assert held["status"] == "waiting"
    assert statuses(held)["d"] == "created"
    fix.write_text("ok")
    # Not claimable: the runner keeps polling and leaves it alone.
    wait_for(lambda: runner.dispatcher.last_claim_empty, 10, what="an empty claim")
    assert cstore.get_run(run["id"])["status"] == "waiting"
    assert event_types(cstore, run["id"])[-1] == "run.held"
    done = cstore.dispatch_run(run["id"], "go", Actor("otto"))
    assert done["status"] in ("queued", "running", "succeeded")
    assert settled(cstore, run["id"])["status"] == "succeeded"
    with pytest.raises(Conflict, match="only a held run"):
        cstore.dispatch_run(run["id"])


def test_rerun_of_a_loop_resumes_at_the_failed_evaluation(cstore, in_process_runner, tmp_path):
    fix = tmp_path / "fixed"
    run, _ = cstore.create_run("scored", {"fail_eval": 2, "fix_file": str(fix)})
    in_process_runner()
    failed = settled(cstore, run["id"])
    assert (
        failed["status"] == "failed" and "evaluate failed on attempt 2" in failed["error_message"]
    )
    plan = cstore.rerun_plan(run["id"])
    assert [e["name"] for e in plan["rerun"]] == ["evaluate#2"]
    assert [e["name"] for e in plan["reused"]] == ["produce#1", "evaluate#1", "revise#2"]
    fix.write_text("ok")
    cstore.rerun_run(run["id"], steps=["evaluate"], reason="evaluator fixed")
    done = settled(cstore, run["id"])
    assert done["status"] == "succeeded" and done["final_score"] == 0.9
    assert starts(cstore, run["id"]) == {"produce": 1, "revise": 2, "evaluate": 4}


def test_rerunning_one_of_two_cancelled_branches_leaves_the_run_cancelled(
    cstore, in_process_runner
):
    run, _ = cstore.create_run("fanout", {})
    c = _claim(cstore)
    ids = {t["step"]: t["id"] for t in c.tasks}
    # A runner that was cancelled after step a: the rest never ran.
    cstore.apply_run_writes([RunWrites(c.id, c.token, 0, run={
        "status": "cancelled", "completed_at": NOW}, task_updates=[
        (ids["a"], {"status": "succeeded", "output": {"step": "a"}})] + [
        (ids[s], {"status": "cancelled"}) for s in "bcde"])])  # fmt: skip
    rerun = cstore.rerun_run(run["id"], steps=["b"], reason="only the b branch")
    assert [(e["step"], e["why"]) for e in rerun["plan"]["rerun"]] == [
        ("b", "chosen"), ("d", "cancelled after b")]  # fmt: skip
    assert [e["step"] for e in rerun["plan"]["untouched"]] == ["c", "e"]
    in_process_runner()
    done = settled(cstore, run["id"])
    assert done["status"] == "cancelled" and "c, e stayed cancelled" in done["error_message"]
    assert statuses(done) == {"a": "succeeded", "b": "succeeded", "c": "cancelled",
                              "d": "skipped", "e": "cancelled"}  # fmt: skip
    rest = cstore.rerun_run(run["id"], reason="the rest")
    assert sorted(e["step"] for e in rest["plan"]["rerun"]) == ["c", "d", "e"]
    assert settled(cstore, run["id"])["status"] == "succeeded"
    assert starts(cstore, run["id"]) == {"b": 1, "c": 1, "d": 1, "e": 1}


def test_updates_of_one_task_in_one_batch_land_in_order(cstore):
    cstore.create_run("fanout", {})
    c = _claim(cstore)
    a, b = c.tasks[0]["id"], c.tasks[1]["id"]
    running = {"status": "running", "attempt": 1, "started_at": NOW, "completed_at": None}
    done = {"status": "succeeded", "output": {"x": 1}, "completed_at": NOW}
    cstore.apply_run_writes([RunWrites(c.id, c.token, 0, task_updates=[
        (a, dict(done)), (b, dict(running)), (b, dict(done))])])  # fmt: skip
    tasks = {t["id"]: t for t in cstore.get_run(c.id)["tasks"]}
    assert [tasks[i]["status"] for i in (a, b)] == ["succeeded", "succeeded"]
    assert tasks[b]["attempt"] == 1 and tasks[b]["completed_at"] and tasks[b]["started_at"]


# -- approval gates -----------------------------------------------------------------------


def test_an_approval_gate_releases_the_run_and_approve_lets_the_step_run(cstore, in_process_runner):
    runner = in_process_runner()
    run, _ = cstore.create_run("gated", {})
    waiting = settled(cstore, run["id"], ("waiting",))
    assert statuses(waiting) == {"build": "succeeded", "lint": "succeeded",
                                 "publish": "waiting", "announce": "created"}  # fmt: skip
    assert waiting["claimed_by"] is None and waiting["claim_count"] == 0
    types = event_types(cstore, run["id"])
    assert "approval.requested" in types and types[-1] == "run.waiting"
    requested = [e for e in cstore.list_events(run["id"])["events"]
                 if e["type"] == "approval.requested"][0]  # fmt: skip
    assert requested["data"]["prompt"] == "Publish the build?"
    wait_for(lambda: not runner.dispatcher.snapshot(), 10, what="the runner to let go")
    # No runner until both decisions below are in: one could carry the first out in between.
    runner.request_stop("test: hold the decision")
    runner.thread.join(20)

    with pytest.raises(Conflict, match="not waiting for approval"):
        cstore.decide_approval(run["id"], "announce", "approve")
    with pytest.raises(InvalidInput) as err:
        cstore.decide_approval(run["id"], "nope", "approve")
    assert err.value.field == "step"
    approved = cstore.decide_approval(run["id"], "publish", "approve", "ship it", Actor("otto"))
    assert approved["status"] == "queued"
    with pytest.raises(Conflict, match="already approved by otto"):
        cstore.decide_approval(run["id"], "publish", "reject")
    in_process_runner()
    done = settled(cstore, run["id"])
    assert done["status"] == "succeeded"
    publish = {t["step"]: t for t in done["tasks"]}["publish"]
    assert (publish["approval_decision"], publish["approval_by"]) == ("approve", "otto")
    assert publish["approval_comment"] == "ship it" and publish["decided_at"]
    assert starts(cstore, run["id"]) == {"build": 1, "lint": 1, "publish": 1, "announce": 1}
    assert [a["action"] for a in done["audit"]] == ["run.create", "run.approve"]
    assert "approval.approved" in event_types(cstore, run["id"])


def test_reject_fails_the_step_and_skips_its_dependents(cstore, in_process_runner):
    in_process_runner()
    run, _ = cstore.create_run("gated", {})
    settled(cstore, run["id"], ("waiting",))
    cstore.decide_approval(run["id"], "publish", "reject", "not today", Actor("otto"))
    done = settled(cstore, run["id"])
    assert done["status"] == "failed"
    assert done["error_message"] == "step 'publish' failed: rejected by otto: not today"
    assert statuses(done) == {"build": "succeeded", "lint": "succeeded", "publish": "failed",
                              "announce": "skipped"}  # fmt: skip
    assert "publish" not in starts(cstore, run["id"])
    # A rerun of the rejected step asks again.
    cstore.rerun_run(run["id"], steps=["publish"], reason="try again")
    again = settled(cstore, run["id"], ("waiting",))
    assert {t["step"]: t["approval_decision"] for t in again["tasks"]}["publish"] is None


def test_a_decision_taken_while_other_branches_run_requeues_at_release(
    cstore, in_process_runner, tmp_path
):
    release = tmp_path / "release"
    in_process_runner()
    run, _ = cstore.create_run("gated_slow", {"release_file": str(release)})
    wait_for(lambda: statuses(cstore.get_run(run["id"]))["publish"] == "waiting", 20,
             what="the gate")  # fmt: skip
    assert cstore.get_run(run["id"])["status"] == "running"
    cstore.decide_approval(run["id"], "publish", "approve")
    assert cstore.get_run(run["id"])["status"] == "running"
    release.write_text("go")
    done = settled(cstore, run["id"])
    assert done["status"] == "succeeded"
    types = event_types(cstore, run["id"])
    assert "run.requeued" in types and "run.waiting" not in types


def test_cancelling_a_waiting_run_cancels_its_gates(cstore, in_process_runner):
    in_process_runner()
    run, _ = cstore.create_run("gated", {})
    settled(cstore, run["id"], ("waiting",))
    done = cstore.request_cancel(run["id"], "no")
    assert done["status"] == "cancelled"
    assert statuses(cstore.get_run(run["id"]))["publish"] == "cancelled"
    reset = cstore.reset_run(run["id"], to_step="publish", reason="ask again")
    assert reset["status"] == "queued"
    assert settled(cstore, run["id"], ("waiting",))["status"] == "waiting"


# -- rate limit, runners ------------------------------------------------------------------


def test_rate_limit_counts_per_key_in_fixed_windows(cstore):
    window = 3_600_000
    got = [cstore.hit_rate_limit("token:a", limit=3, window_ms=window) for _ in range(4)]
    assert [d.allowed for d in got] == [True, True, True, False]
    assert [d.remaining for d in got] == [2, 1, 0, 0]
    assert 1 <= got[-1].retry_after_s <= 3600
    assert cstore.hit_rate_limit("token:b", limit=3, window_ms=window).allowed


def test_deregistering_a_runner_that_stopped_heartbeating_stops_it_at_once(cstore):
    for rid in ("rnr_live", "rnr_gone"):
        cstore.register_runner({"id": rid, "hostname": "h", "pid": 1, "pid_started_at": 0,
                                "version": "t", "queues": ["default"], "labels": {},
                                "workflows": [], "concurrency": 1, "stats": {}})  # fmt: skip
    from sqlalchemy import update

    from shared.schema import runners

    cstore.write(lambda c: c.execute(update(runners).where(runners.c.id == "rnr_gone")
                                     .values(heartbeat_at=runners.c.heartbeat_at - 60_000)))  # fmt: skip
    cstore.create_run("fanout", {})
    live = cstore.request_deregister("rnr_live", Actor("root"), "scale down")
    assert cstore.claim_runs("rnr_live", queues=["default"], workflows=["fanout"], limit=1) == []
    assert live["status"] == "active" and live["deregister_requested_at"]
    assert cstore.heartbeat("rnr_live", {}).deregister_requested
    assert {r["id"]: r["status"] for r in cstore.list_runners()["runners"]}[
        "rnr_live"
    ] == "draining"
    assert (
        len(cstore.claim_runs("rnr_other", queues=["default"], workflows=["fanout"], limit=1)) == 1
    )
    gone = cstore.request_deregister("rnr_gone")
    assert gone["status"] == "stopped" and gone["stopped_at"]
    with pytest.raises(Conflict, match="already stopped"):
        cstore.request_deregister("rnr_gone")
    audit = [a for a in cstore.list_audit()["audit"] if a["action"] == "runner.deregister"]
    assert [(a["details"]["runner_id"], a["reason"]) for a in audit] == [
        ("rnr_gone", None), ("rnr_live", "scale down")]  # fmt: skip

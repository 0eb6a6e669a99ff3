"""Acceptance: the operator's tools against real `loopdeck api` and `loopdeck runner`
processes (docs/runbook.md). The centrepiece: a reset of a run whose runner is frozen with
SIGSTOP — once resumed, none of that runner's writes is accepted."""

from __future__ import annotations

import signal

import httpx
import psutil
import pytest
from sqlalchemy import select

from shared.schema import runs

from ..control_support import TOKENS, bearer, settled, starts, statuses
from ..helpers import Proc, cli, free_port, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def api_proc(env, procs, tmp_path):
    """A real `loopdeck api` process with tokens; yields an httpx client."""
    port = free_port()
    api_env = dict(env, LOOPDECK_API_TOKENS=TOKENS)
    procs.append(Proc(["api", "--port", str(port)], api_env, tmp_path / "api.log"))
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return httpx.get(url + "/api/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 30, interval=0.1, what="the API process")
    with httpx.Client(base_url=url, timeout=15) as client:
        yield client


def _runner(procs, env, control_file, tmp_path, name, *extra):
    proc = Proc(["runner", "--config", control_file, "--concurrency", "2", *extra], env,
                tmp_path / f"{name}.log")  # fmt: skip
    procs.append(proc)
    return proc


def _runner_id(store, proc):
    def find():
        for r in store.list_runners()["runners"]:
            if r["pid"] == proc.pid and r["status"] != "stopped":
                return r["id"]
        return None

    return wait_for(find, 30, what=f"runner pid {proc.pid} to register")


def _snapshot(store, run_id):
    run = store.get_run(run_id)
    events = store.list_events(run_id, limit=500)["events"]
    keep = ("status", "fence", "claimed_by", "claim_count", "heartbeat_at", "completed_at",
            "output", "error_message", "current_stage")  # fmt: skip
    with store.engine.connect() as conn:  # the fence and token are not in the public shape
        fence = conn.execute(select(runs.c.fence, runs.c.claim_token)
                             .where(runs.c.id == run_id)).one()  # fmt: skip
    return (
        {k: run.get(k) for k in keep} | {"fence": fence.fence, "token": fence.claim_token},
        [
            (t["id"], t["status"], t["attempt"], t["output"], t["completed_at"])
            for t in run["tasks"]
        ],
        [(e["id"], e["type"], e["message"]) for e in events],
        [a["id"] for a in store.list_artifacts(run_id)["artifacts"]],
    )


def test_reset_of_a_frozen_runner_rejects_every_write_it_makes_after_resuming(
    cstore, env, procs, tmp_path, control_file, api_proc
):
    release = tmp_path / "release"
    frozen = _runner(procs, env, control_file, tmp_path, "frozen")
    frozen_id = _runner_id(cstore, frozen)
    resp = api_proc.post("/api/runs", json={"workflow": "held",
                                            "inputs": {"release_file": str(release)}},
                         headers=bearer("operator"))  # fmt: skip
    assert resp.status_code == 201, resp.text
    run_id = resp.json()["id"]
    wait_for(lambda: any(e["type"] == "log" and "holding" in (e["message"] or "")
                         for e in cstore.list_events(run_id, limit=500)["events"]),
             30, what="the frozen runner to be working")  # fmt: skip

    frozen.send(signal.SIGSTOP)
    wait_for(lambda: psutil.Process(frozen.pid).status() == psutil.STATUS_STOPPED, 10,
             what="SIGSTOP to take effect")  # fmt: skip
    low = api_proc.post(f"/api/runs/{run_id}/reset", json={"reason": "runner hangs"},
                        headers=bearer("operator"))  # fmt: skip
    assert low.status_code == 403  # reset needs an admin token
    resp = api_proc.post(f"/api/runs/{run_id}/reset", json={"reason": "runner hangs"},
                         headers=bearer("admin"))  # fmt: skip
    assert resp.status_code == 200, resp.text
    reset = resp.json()
    assert reset["status"] == "queued" and reset["cleared"]["claim"]["runner_id"] == frozen_id
    assert statuses(reset) == {"first": "created", "second": "created"}
    reset_event = cstore.list_events(run_id, limit=500)["events"][-1]
    assert reset_event["type"] == "run.reset"

    # Another runner takes the run over and finishes it.
    rescuer = _runner(procs, env, control_file, tmp_path, "rescuer")
    rescuer_id = _runner_id(cstore, rescuer)
    wait_for(lambda: cstore.get_run(run_id)["claimed_by"] == rescuer_id, 30,
             what="the rescuer to claim the run")  # fmt: skip
    release.write_text("go")
    done = settled(cstore, run_id, timeout=60)
    assert done["status"] == "succeeded"
    assert {t["step"]: t["output"] for t in done["tasks"]}["first"]["pid"] == rescuer.pid
    after_reset = [e for e in cstore.list_events(run_id, limit=500)["events"]
                   if e["id"] > reset_event["id"]]  # fmt: skip
    assert after_reset[0]["type"] == "run.claimed"
    assert after_reset[0]["data"]["runner_id"] == rescuer_id
    before = _snapshot(cstore, run_id)

    # Thaw the frozen runner: it has writes pending (its stage logs every 50 ms, and now sees
    # the release file too). Every one of them must be rejected.
    frozen_row = {r["id"]: r for r in cstore.list_runners()["runners"]}[frozen_id]
    frozen.send(signal.SIGCONT)
    wait_for(lambda: "lease lost" in frozen.output(), 30, what="the thawed runner to notice")

    def idle_after_thaw():
        row = {r["id"]: r for r in cstore.list_runners()["runners"]}[frozen_id]
        return row["heartbeat_at"] > frozen_row["heartbeat_at"] and row["stats"]["running"] == 0

    wait_for(idle_after_thaw, 30, what="the thawed runner to let the run go")
    assert _snapshot(cstore, run_id) == before
    assert frozen.alive()  # it carries on as a healthy runner
    assert frozen.stop() == 0
    assert _snapshot(cstore, run_id) == before
    assert starts(cstore, run_id) == {"first": 2, "second": 1}


def test_deregistration_drains_the_runner_and_the_registry_shows_it(
    cstore, env, procs, tmp_path, control_file, api_proc
):
    release = tmp_path / "release"
    proc = _runner(procs, env, control_file, tmp_path, "runner")
    runner_id = _runner_id(cstore, proc)
    busy, _ = cstore.create_run("held", {"release_file": str(release)})
    settled(cstore, busy["id"], ("running",))

    resp = api_proc.delete(f"/api/runners/{runner_id}", params={"reason": "maintenance"},
                           headers=bearer("admin"))  # fmt: skip
    assert resp.status_code == 202, resp.text

    def status():
        return {r["id"]: r["status"] for r in cstore.list_runners()["runners"]}[runner_id]

    wait_for(lambda: status() == "draining", 20, what="the runner to drain")
    later, _ = cstore.create_run("fanout", {})  # a draining runner claims nothing new
    release.write_text("go")  # the running run finishes within the drain grace
    assert proc.wait(timeout=60) == 0, proc.output()
    assert status() == "stopped"
    assert settled(cstore, busy["id"])["status"] == "succeeded"
    assert cstore.get_run(later["id"])["status"] == "queued"
    assert "run.claimed" not in [e["type"] for e in cstore.list_events(later["id"])["events"]]
    runners = api_proc.get("/api/runners", headers=bearer("viewer")).json()["runners"]
    assert [(r["id"], r["health"]) for r in runners] == [(runner_id, "stopped")]
    assert "deregistered through the API" in proc.output()


def test_a_runner_died_reset_from_the_cli_and_another_runner_finishes(
    cstore, env, procs, tmp_path, control_file
):
    release = tmp_path / "release"
    first = _runner(procs, env, control_file, tmp_path, "first", "--no-reaper")
    first_id = _runner_id(cstore, first)
    run, _ = cstore.create_run("held", {"release_file": str(release)})
    settled(cstore, run["id"], ("running",))
    first.send(signal.SIGKILL)
    first.wait(10)
    shown = cli(["runs", "show", run["id"]], env)
    assert f"{run['id']}  held  running" in shown.stdout
    out = cli(["runs", "reset", run["id"], "--reason", "its runner died"], env)
    assert out.returncode == 0, out.stderr
    assert f"took the run away from {first_id}" in out.stderr
    release.write_text("go")
    _runner(procs, env, control_file, tmp_path, "second")
    assert settled(cstore, run["id"], timeout=60)["status"] == "succeeded"
    # The second runner's reaper notices the dead one on this host.
    wait_for(lambda: {r["id"]: r["status"] for r in cstore.list_runners()["runners"]}[first_id]
             == "stopped", 30, what="the dead runner to be marked stopped")  # fmt: skip


def test_a_branch_failed_rerun_it_over_http_and_approve_a_gate_with_the_cli(
    cstore, env, procs, tmp_path, control_file, api_proc
):
    fix = tmp_path / "fixed"
    _runner(procs, env, control_file, tmp_path, "runner")
    run = api_proc.post("/api/runs", json={"workflow": "fanout",
                                           "inputs": {"fail": "c", "fix_file": str(fix)}},
                        headers=bearer("operator")).json()  # fmt: skip
    failed = settled(cstore, run["id"], timeout=60)
    assert statuses(failed) == {"a": "succeeded", "b": "succeeded", "c": "failed",
                                "d": "skipped", "e": "skipped"}  # fmt: skip
    plan = api_proc.get(f"/api/runs/{run['id']}/rerun-plan", params={"steps": "c"},
                        headers=bearer("viewer")).json()  # fmt: skip
    assert [e["step"] for e in plan["rerun"]] == ["c", "d", "e"]
    fix.write_text("ok")
    resp = api_proc.post(f"/api/runs/{run['id']}/rerun",
                         json={"steps": ["c"], "reason": "disk full, cleaned",
                               "requested_by": "ana"}, headers=bearer("operator"))  # fmt: skip
    assert resp.status_code == 202, resp.text
    done = settled(cstore, run["id"], timeout=60)
    assert done["status"] == "succeeded"
    assert starts(cstore, run["id"]) == {"a": 1, "b": 1, "c": 2, "d": 1, "e": 1}

    gated, _ = cstore.create_run("gated", {})
    settled(cstore, gated["id"], ("waiting",), timeout=60)
    assert cstore.get_run(gated["id"])["claimed_by"] is None
    out = cli(["runs", "approve", gated["id"], "publish", "--comment", "ship it"], env)
    assert out.returncode == 0, out.stderr
    assert settled(cstore, gated["id"], timeout=60)["status"] == "succeeded"
    restarted = api_proc.post(f"/api/runs/{gated['id']}/restart", json={"reason": "again"},
                              headers=bearer("operator"))  # fmt: skip
    assert restarted.status_code == 201
    assert settled(cstore, restarted.json()["id"], ("waiting",), timeout=60)

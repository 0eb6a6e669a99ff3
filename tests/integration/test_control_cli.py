"""The control commands of the CLI (real `loopdeck` processes against the test database; runs
executed by an in-process runner): output, audit actor, one-line errors and exit codes."""

import json
import re

from ..control_support import settled, starts, statuses
from ..helpers import cli


def _ok(args, env):
    proc = cli(args, env)
    assert proc.returncode == 0, proc.stderr
    return proc


def _fails(args, env, code, text):
    proc = cli(args, env)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loopdeck:") and text in lines[0], proc.stderr
    return proc


def test_restart_reset_and_audit_from_the_cli(cstore, in_process_runner, env):
    in_process_runner()
    run, _ = cstore.create_run("fanout", {})
    settled(cstore, run["id"])
    new_id = _ok(["runs", "restart", run["id"], "--reason", "once more"], env).stdout.strip()
    assert cstore.get_run(new_id)["origin"] == "restart"
    settled(cstore, new_id)

    _fails(["runs", "reset", run["id"], "--reason", "x"], env, 1, "nothing to reset")
    _fails(["runs", "reset", run["id"], "--reason", "x", "--to-step", "zz"], env, 2, "no step")
    _fails(["runs", "reset", "run_nope", "--reason", "x"], env, 2, "no run run_nope")
    out = cli(["runs", "reset", run["id"]], env)
    assert out.returncode == 2 and "--reason" in out.stderr
    reset = _ok(["runs", "reset", run["id"], "--to-step", "b", "--reason", "b again", "--json"],
                env)  # fmt: skip
    assert [t["step"] for t in json.loads(reset.stdout)["cleared"]["tasks"]] == ["b", "d"]
    settled(cstore, run["id"])
    assert starts(cstore, run["id"])["b"] == 2

    audit = _ok(["runs", "audit", run["id"]], env).stdout.splitlines()
    actions = [re.search(r" (run\.\w+) ", line).group(1) for line in audit]
    assert actions == ["run.create", "run.restart", "run.reset"]
    assert "(cli)" in audit[1] and audit[2].endswith("b again")
    rows = json.loads(_ok(["runs", "audit", "--json", "--limit", "2"], env).stdout)["audit"]
    assert len(rows) == 2 and rows[0]["client"] == "cli"


def test_rerun_plan_hold_dispatch_from_the_cli(cstore, in_process_runner, env, tmp_path):
    fix = tmp_path / "fixed"
    in_process_runner()
    run, _ = cstore.create_run("fanout", {"fail": "b", "fix_file": str(fix)})
    settled(cstore, run["id"])
    plan = _ok(["runs", "rerun", run["id"], "--plan"], env).stdout
    assert "will run again:" in plan and "d                skipped    skipped after b" in plan
    assert "a                succeeded  needed by b" in plan
    _fails(["runs", "rerun", run["id"]], env, 2, "--reason is required")
    _fails(["runs", "rerun", run["id"], "--step", "a", "--reason", "x"], env, 1,
           "only failed or cancelled tasks can be re-run: a is succeeded")  # fmt: skip
    _fails(["runs", "dispatch", run["id"]], env, 1, "only a held run")
    fix.write_text("ok")
    held = _ok(["runs", "rerun", run["id"], "--step", "b", "--reason", "fixed", "--no-dispatch"],
               env)  # fmt: skip
    assert "re-running b, d (held" in held.stderr
    assert held.stdout.splitlines()[0].endswith("fanout  waiting")
    assert cstore.get_run(run["id"])["status"] == "waiting"
    _ok(["runs", "dispatch", run["id"], "--reason", "go"], env)
    done = settled(cstore, run["id"])
    assert done["status"] == "succeeded"
    assert {t["step"]: t["rerun_count"] for t in done["tasks"]} == {"a": 0, "b": 1, "c": 0,
                                                                    "d": 1, "e": 0}  # fmt: skip
    assert "(cli)" in {t["step"]: t for t in done["tasks"]}["b"]["last_rerun_by"]


def test_approve_reject_and_show_from_the_cli(cstore, in_process_runner, env):
    in_process_runner()
    yes, _ = cstore.create_run("gated", {})
    no, _ = cstore.create_run("gated", {})
    for run in (yes, no):
        settled(cstore, run["id"], ("waiting",))
    shown = _ok(["runs", "show", yes["id"]], env).stdout
    assert "publish" in shown and "waiting for approval" in shown
    _fails(["runs", "approve", yes["id"], "announce"], env, 1, "not waiting for approval")
    _fails(["runs", "approve", yes["id"], "zz"], env, 2, "no step 'zz'")
    _ok(["runs", "approve", yes["id"], "publish", "--comment", "ship"], env)
    _ok(["runs", "reject", no["id"], "publish", "--comment", "not yet"], env)
    assert settled(cstore, yes["id"])["status"] == "succeeded"
    rejected = settled(cstore, no["id"])
    assert statuses(rejected)["announce"] == "skipped"
    assert rejected["error_message"].endswith("not yet")


def test_runners_list_and_deregister_from_the_cli(cstore, in_process_runner, env):
    runner = in_process_runner()
    listing = _ok(["runners", "list"], env).stdout
    assert runner.id in listing and "active" in listing
    _ok(["runners", "deregister", runner.id, "--reason", "maintenance"], env)
    runner.thread.join(20)
    assert runner.result.get("code") == 0
    rows = json.loads(_ok(["runners", "list", "--json"], env).stdout)["runners"]
    assert rows[0]["status"] == "stopped"
    _fails(["runners", "deregister", runner.id], env, 1, "already stopped")
    _fails(["runners", "deregister", "rnr_nope"], env, 2, "no runner rnr_nope")
    assert cli(["runners", "list", "--active"], env).stdout.count("\n") == 1  # the header only


def test_the_api_refuses_a_public_address_without_tokens(env):
    _fails(["api", "--host", "0.0.0.0", "--port", "1"], env, 2,
           "refusing to listen on 0.0.0.0 without API tokens")  # fmt: skip
    _fails(["up", "--host", "0.0.0.0", "--port", "1"], env, 2, "without API tokens")
    _fails(["api", "--port", "1"], dict(env, LOOPDECK_API_TOKENS="a:short:admin"), 2,
           "at least 8 characters")  # fmt: skip

"""Real runner processes: cancel kills the stage's process tree, kill -9 gets rescued,
--workflow-id runs exactly once, SIGTERM drains and releases, retry of a failed run."""

import signal

import psutil

from shared.workflows import load_files

from ..helpers import EXAMPLES, Proc, wait_for

TERMINAL = ("succeeded", "failed", "cancelled")


def stage_processes(run_id):
    """Processes whose environment says they execute a stage of `run_id`."""
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("LOOPDECK_RUN_ID") == run_id and p.status() != "zombie":
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def runner(env, tmp_path, name, *args):
    return Proc(["runner", "--config", EXAMPLES, *args], env, tmp_path / f"{name}.log")


def wait_status(store, run_id, statuses, timeout=30):
    return wait_for(lambda: (r := store.get_run(run_id))["status"] in statuses and r, timeout,
                    what=f"run {run_id} to reach {statuses}")  # fmt: skip


def test_cancel_kills_the_running_stage_process_tree(store, env, procs, tmp_path):
    procs.append(runner(env, tmp_path, "r1"))
    run, _ = store.create_run("sleepy", {"seconds": 120})
    wait_for(lambda: len(stage_processes(run["id"])) >= 2, 30, what="the stage processes")
    pids = stage_processes(run["id"])
    store.request_cancel(run["id"], "too slow")
    done = wait_status(store, run["id"], TERMINAL)
    assert done["status"] == "cancelled"
    _gone, alive = psutil.wait_procs(pids, timeout=10)
    assert not alive, f"stage processes outlived the cancel: {alive}"
    assert done["tasks"][0]["status"] == "cancelled"


def test_kill_9_mid_stage_kills_the_stage_and_another_runner_finishes(store, env, procs,
                                                                     tmp_path):  # fmt: skip
    victim = runner(env, tmp_path, "victim", "--queue", "solo")
    procs.append(victim)
    run, _ = store.create_run("sleepy", {"seconds": 3}, queue="solo")
    wait_for(lambda: len(stage_processes(run["id"])) >= 2, 30, what="the stage to start")
    pids = stage_processes(run["id"])
    victim.send(signal.SIGKILL)
    victim.wait(10)
    _gone, alive = psutil.wait_procs(pids, timeout=5)
    assert not alive, "a stage process outlived its runner"
    # A runner on another queue reaps (same host: the dead pid is noticed at once) …
    procs.append(runner(env, tmp_path, "reaper", "--queue", "elsewhere"))
    wait_status(store, run["id"], ("queued",), timeout=30)
    # … and a runner serving the queue finishes the run.
    procs.append(runner(env, tmp_path, "rescuer", "--queue", "solo"))
    done = wait_status(store, run["id"], TERMINAL, timeout=60)
    assert done["status"] == "succeeded" and done["claim_count"] == 2
    types = [e["type"] for e in store.list_events(run["id"], limit=500)["events"]]
    assert types.count("run.claimed") == 2 and "run.stalled" in types and "run.requeued" in types


def test_two_runners_with_the_same_workflow_id_execute_it_once(store, env, procs, tmp_path):
    run, _ = store.create_run("sleepy", {"seconds": 2})
    a = Proc(["runner", "--workflow-id", run["id"]], env, tmp_path / "a.log")
    b = Proc(["runner", "--workflow-id", run["id"]], env, tmp_path / "b.log")
    procs += [a, b]
    codes = sorted([a.wait(60), b.wait(60)])
    assert codes == [0, 1], (a.output(), b.output())
    loser = a if a.proc.returncode == 1 else b
    assert f"run {run['id']} was not claimed: it is running, claimed by rnr_" in loser.output()
    events = store.list_events(run["id"], limit=500)["events"]
    assert [e["type"] for e in events].count("stage.started") == 1
    assert store.get_run(run["id"])["status"] == "succeeded"


def test_sigterm_lets_short_stages_finish_and_releases_the_rest(store, env, procs, tmp_path):
    env = {**env, "LOOPDECK_SHUTDOWN_GRACE": "3"}
    r = runner(env, tmp_path, "drain", "--concurrency", "2")
    procs.append(r)
    short, _ = store.create_run("sleepy", {"seconds": 1})
    long, _ = store.create_run("sleepy", {"seconds": 120})
    wait_for(lambda: store.get_run(short["id"])["status"] == "running"
             and store.get_run(long["id"])["status"] == "running", 30, what="both running")  # fmt: skip
    wait_for(lambda: stage_processes(long["id"]), 30, what="the long stage's process")
    long_pids = stage_processes(long["id"])
    r.send(signal.SIGTERM)
    assert r.wait(30) == 0, r.output()
    assert store.get_run(short["id"])["status"] == "succeeded"
    released = store.get_run(long["id"])
    assert released["status"] == "queued" and released["claim_count"] == 0
    assert released["tasks"][0]["status"] == "created"
    assert store.list_events(long["id"])["events"][-1]["type"] == "run.released"
    _gone, alive = psutil.wait_procs(long_pids, timeout=10)
    assert not alive
    assert store.list_runners()["runners"][0]["status"] == "stopped"


def test_retry_of_a_failed_run_runs_again(store, env, procs, tmp_path):
    store.publish_workflows(load_files([EXAMPLES]), "tests")
    procs.append(runner(env, tmp_path, "r"))
    failed, _ = store.create_run("release", {"break_docs": True})
    assert wait_status(store, failed["id"], TERMINAL, 60)["status"] == "failed"
    again = store.retry_run(failed["id"], "flake?")
    done = wait_status(store, again["id"], TERMINAL, 60)
    assert done["status"] == "failed" and done["parent_run_id"] == failed["id"]
    assert done["origin"] == "retry"


def test_a_rescued_loop_resumes_where_it_stopped(publish_test_workflows, env, procs, tmp_path,
                                                 test_workflows_file):  # fmt: skip
    store = publish_test_workflows
    victim = Proc(["runner", "--config", test_workflows_file, "--queue", "loops"], env,
                  tmp_path / "victim.log")  # fmt: skip
    procs.append(victim)
    run, _ = store.create_run("slow_loop", {"seconds": 60}, queue="loops")
    wait_for(lambda: any(e["message"] == "evaluating slowly"
                         for e in store.list_events(run["id"], limit=500)["events"]), 30,
             what="attempt 2's evaluation")  # fmt: skip
    victim.send(signal.SIGKILL)
    victim.wait(10)
    procs.append(Proc(["runner", "--config", test_workflows_file, "--queue", "loops"],
                      {**env}, tmp_path / "rescuer.log"))  # fmt: skip
    # The rescuer's reaper notices the dead pid; the second claim resumes the loop.

    def starts():
        events = store.list_events(run["id"], limit=500)["events"]
        return [(e["stage"], e["attempt"]) for e in events if e["type"] == "stage.started"]

    wait_for(lambda: starts().count(("evaluate", 2)) == 2, 30, what="the resumed evaluation")
    seen = starts()
    assert seen.count(("produce", 1)) == 1 and seen.count(("evaluate", 1)) == 1
    assert seen.count(("revise", 2)) == 1, "finished stages are not run again"
    assert store.get_run(run["id"])["claim_count"] == 2
    store.request_cancel(run["id"], "test over")
    assert wait_status(store, run["id"], TERMINAL, 30)["status"] == "cancelled"

"""Loop and graph semantics, retries, cancel, artifacts and the supervisor, with an in-process
runner on a real SQLite file."""

import gc
import threading

import pytest

from runner.daemon import YOUNG_GENERATION_THRESHOLD, Runner, RunnerOptions
from shared.errors import ConfigError, LoopdeckError
from shared.settings import Settings

from ..helpers import EXAMPLES, wait_for

pytestmark = pytest.mark.all_backends

TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture
def start_runner(db_url, store, test_workflows_file):
    started = []

    def start(files=None, **options):
        settings = Settings(
            database_url=db_url, config_files=tuple(files or (test_workflows_file, EXAMPLES)),
            heartbeat_interval=0.2, stall_after=2, poll_interval=0.05, kill_grace=1,
            shutdown_grace=2,
        )  # fmt: skip
        runner = Runner(settings, RunnerOptions(**options))
        runner.start()
        result = {}

        def serve():
            try:
                result["code"] = runner.serve(install_signals=False)
            except LoopdeckError as exc:
                result["error"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        started.append((runner, thread))
        runner.result = result
        runner.thread = thread
        return runner

    yield start
    for runner, thread in started:
        runner.request_stop("test over")
        thread.join(20)
        runner.store.dispose()


def test_a_started_runner_has_its_start_up_objects_out_of_the_collectors_sight(start_runner):
    # gc.freeze after start-up (runner/daemon.py): a full collection walked every module,
    # SQLAlchemy and pydantic structure again, ~40 ms with the GIL held, every few thousand
    # runs of a drain; and the young generation collected less often. Both last for the
    # process: this test puts them back.
    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        start_runner()
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def finished(store, run_id, timeout=30):
    return wait_for(
        lambda: (r := store.get_run(run_id))["status"] in TERMINAL and r, timeout,
        what=f"run {run_id} to finish",
    )  # fmt: skip


def event_types(store, run_id):
    return [e["type"] for e in store.list_events(run_id, limit=500)["events"]]


def test_loop_revises_until_the_score_passes(store, start_runner):
    start_runner()
    run, _ = store.create_run("loop", {"scores": [0.2, 0.5, 0.9]})
    done = finished(store, run["id"])
    assert done["status"] == "succeeded" and done["final_score"] == 0.9
    assert done["current_attempt"] == 3 and done["output"]["draft"] == 3
    assert [(t["step"], t["attempt"]) for t in done["tasks"]] == [
        ("produce", 1), ("evaluate", 1), ("revise", 2), ("evaluate", 2), ("revise", 3),
        ("evaluate", 3),
    ]  # fmt: skip
    assert done["metrics"] == {"tokens": 20}
    scores = [e for e in store.list_events(run["id"])["events"] if e["type"] == "score"]
    assert [(e["attempt"], e["data"]["score"], e["data"]["passed"]) for e in scores] == [
        (1, 0.2, False), (2, 0.5, False), (3, 0.9, True),
    ]  # fmt: skip
    assert [a["attempt"] for a in store.list_artifacts(run["id"])["artifacts"]] == [1]


def test_loop_fails_after_max_attempts_below_threshold(store, start_runner):
    start_runner()
    run, _ = store.create_run("loop", {"scores": [0.1, 0.2, 0.3]})
    done = finished(store, run["id"])
    assert done["status"] == "failed" and done["final_score"] == 0.3
    assert done["error_message"] == "score 0.3 below threshold 0.8 after 3 attempt(s)"


def test_log_data_json_cannot_hold_is_written_as_text_and_the_runner_goes_on(
    store, start_runner, tmp_path
):
    flows = tmp_path / "odd.yaml"
    flows.write_text(
        'workflows:\n  odd:\n    steps:\n      only: {call: "tests.workflows:log_odd_data"}\n'
    )
    start_runner(files=[flows])
    run, _ = store.create_run("odd", {})
    assert finished(store, run["id"])["status"] == "succeeded"
    [log] = [e for e in store.list_events(run["id"])["events"] if e["type"] == "log"]
    assert log["data"] == {"when": "2026-11-23", "tags": "{'only'}"}


def test_graph_runs_in_dependency_order_with_outputs(store, start_runner):
    start_runner()
    run, _ = store.create_run("graph", {})
    done = finished(store, run["id"])
    assert done["status"] == "succeeded"
    by_step = {t["step"]: t for t in done["tasks"]}
    assert by_step["d"]["output"]["saw"] == ["a", "b", "c"]
    assert by_step["b"]["output"]["saw"] == ["a"]
    assert set(done["output"]) == {"d", "e"}


def test_a_failed_step_skips_its_dependents_and_independent_branches_finish(store, start_runner):
    start_runner()
    run, _ = store.create_run("graph", {"fail": "b"})
    done = finished(store, run["id"])
    status = {t["step"]: t["status"] for t in done["tasks"]}
    assert status == {"a": "succeeded", "b": "failed", "c": "succeeded", "d": "skipped",
                      "e": "succeeded"}  # fmt: skip
    assert done["status"] == "failed"
    assert done["error_message"] == "step 'b' failed: RuntimeError: b was told to fail"
    traceback_logs = [
        e
        for e in store.list_events(run["id"])["events"]
        if e["type"] == "log" and (e["data"] or {}).get("stream") == "traceback"
    ]
    assert traceback_logs and "b was told to fail" in traceback_logs[0]["message"]


def test_run_stages_retry_and_collect_logs_outputs_and_files(store, start_runner):
    start_runner()
    run, _ = store.create_run("release", {"version": "9.9"})
    done = finished(store, run["id"])
    assert done["status"] == "succeeded", done["error_message"]
    unit = next(t for t in done["tasks"] if t["step"] == "unit")
    assert unit["attempt"] == 2 and unit["output"] == {"passed": 12}
    assert done["output"] == {"publish": {"published": "9.9"}}
    events = store.list_events(run["id"], limit=500)["events"]
    retried = [e for e in events if e["type"] == "stage.finished" and e["stage"] == "unit"]
    assert [e["data"]["will_retry"] for e in retried] == [True, False]
    logs = [e["message"] for e in events if e["type"] == "log" and e["stage"] == "unit"]
    assert "test_flaky ... FAILED (a timing-dependent test)" in logs
    files = {a["filename"]: a for a in store.list_artifacts(run["id"])["artifacts"]}
    assert files["build-info.json"]["media_type"] == "application/json"
    meta, content = store.get_artifact(run["id"], files["index.md"]["id"])
    assert content.startswith(b"# Release 9.9") and meta["media_type"] == "text/markdown"


def test_cancel_stops_a_call_stage_cooperatively_and_skips_the_rest(store, start_runner):
    start_runner()
    run, _ = store.create_run("slow_call", {"seconds": 60})
    wait_for(lambda: store.get_run(run["id"])["current_stage"] == "first", what="first stage")
    store.request_cancel(run["id"], "enough")
    done = finished(store, run["id"], timeout=10)
    assert done["status"] == "cancelled"
    assert {t["step"]: t["status"] for t in done["tasks"]} == {"first": "cancelled",
                                                               "second": "cancelled"}  # fmt: skip
    assert event_types(store, run["id"])[-1] == "run.cancelled"


def test_cancelled_before_claim_never_runs(publish_test_workflows, store, start_runner):
    run, _ = store.create_run("graph", {})
    store.request_cancel(run["id"])
    start_runner()
    other, _ = store.create_run("noop", {})
    finished(store, other["id"])
    assert "stage.started" not in event_types(store, run["id"])
    assert store.get_run(run["id"])["status"] == "cancelled"


def test_an_oversized_artifact_fails_the_stage_with_a_clear_error(store, start_runner, tmp_path):
    wf = tmp_path / "big.yaml"
    wf.write_text(
        "workflows:\n  big:\n    steps:\n"
        '      write: {run: "head -c 5000 /dev/zero > $LOOPDECK_OUTPUT_DIR/blob.bin"}\n'
    )
    runner = start_runner([str(wf)])
    runner._exec_options.max_artifact_bytes = 1000
    run, _ = store.create_run("big", {})
    done = finished(store, run["id"])
    assert done["status"] == "failed"
    assert "artifact 'blob.bin' is 5,000 bytes, over the cap of 1,000" in done["error_message"]


def test_a_stage_timeout_kills_the_command(store, start_runner, tmp_path):
    wf = tmp_path / "t.yaml"
    wf.write_text("workflows:\n  t:\n    steps:\n      s: {run: 'sleep 30', timeout: 0.5}\n")
    start_runner([str(wf)])
    run, _ = store.create_run("t", {})
    done = finished(store, run["id"], timeout=15)
    assert done["status"] == "failed" and "timed out after 0.5s" in done["error_message"]


def test_unimportable_call_targets_stop_the_runner_at_start(db_url, tmp_path):
    wf = tmp_path / "bad.yaml"
    wf.write_text("workflows:\n  b:\n    steps:\n      s: {call: 'no_such_module:fn'}\n")
    runner = Runner(Settings(database_url=db_url, config_files=(str(wf),)), RunnerOptions())
    with pytest.raises(ConfigError, match="cannot import no_such_module:fn"):
        runner.start()
    runner.store.dispose()


def test_a_dying_loop_takes_the_daemon_down_loudly(store, start_runner):
    runner = start_runner()

    def boom(*_a, **_k):
        raise RuntimeError("disk on fire")

    runner.heartbeat.run_once = boom
    runner.thread.join(15)
    assert not runner.thread.is_alive()
    assert "runner loop 'heartbeat' died: RuntimeError: disk on fire" in str(runner.result["error"])
    assert store.list_runners()["runners"][0]["status"] == "stopped"


def test_once_exits_when_nothing_is_left(publish_test_workflows, store, start_runner):
    ids = [store.create_run("noop", {})[0]["id"] for _ in range(5)]
    runner = start_runner(once=True)
    runner.thread.join(20)
    assert runner.result["code"] == 0
    assert {store.get_run(i)["status"] for i in ids} == {"succeeded"}


def test_a_call_stage_past_its_timeout_fails(store, start_runner):
    start_runner()
    run, _ = store.create_run("timeout_call", {})
    done = finished(store, run["id"], timeout=15)
    assert done["status"] == "failed"
    assert done["error_message"] == "step 'only' failed: the stage timed out after 0.3s"


def test_the_registry_shows_psutil_stats_from_heartbeats(store, start_runner):
    runner = start_runner()
    row = wait_for(lambda: next((r for r in store.list_runners()["runners"]
                                 if r["id"] == runner.id and "rss_mb" in r["stats"]), None),
                   10, what="a heartbeat with stats")  # fmt: skip
    assert row["stats"]["rss_mb"] > 10 and "cpu_percent" in row["stats"]
    assert row["stats"]["heartbeat_interval"] == 0.2 and row["health"] == "alive"
    assert row["workflows"] and row["pid"] > 0 and row["status"] == "active"

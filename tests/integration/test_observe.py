"""Observability and limits with real parts: /metrics on the API (database gauges, request
latency by route, guarded like /api), the runner's metrics port, JSON log lines carrying the
run's fields, the inputs / artifact / output-line caps, and `prune`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from runner.daemon import Runner, RunnerOptions
from shared.errors import InvalidInput
from shared.settings import DEFAULT_CONCURRENCY, Settings
from shared.store import RunWrites
from shared.store.base import db_now
from shared.workflows import load_text

from ..control_support import SECRETS, TOKENS, bearer, settled
from ..helpers import Proc, ThreadedServer, base_env, http, wait_for

WORKFLOWS = """
workflows:
  artifacts:
    inputs:
      count: {type: integer, default: 3}
      size: {type: integer, default: 400}
      strict: {type: boolean, default: false}
    steps:
      write: {call: "tests.workflows:write_artifacts"}
  chatty:
    steps:
      speak: {call: "tests.workflows:log_through_logging"}
      shout: {run: "python -c \\"print('x' * 20000); print('{}')\\"", needs: [speak]}
  quick:
    queue: fast
    steps:
      only: {call: "tests.workflows:noop"}
"""


@pytest.fixture
def flows(tmp_path: Path, store) -> str:
    path = tmp_path / "observe.yaml"
    path.write_text(WORKFLOWS)
    store.publish_workflows(load_text(WORKFLOWS), "tests")
    return str(path)


@pytest.fixture
def start_runner(db_url: str, flows: str) -> Iterator[Any]:
    started: list[tuple[Runner, threading.Thread]] = []

    def start(**settings: Any) -> Runner:
        base = dict(database_url=db_url, config_files=(flows,), heartbeat_interval=0.2,
                    stall_after=2, poll_interval=0.05, kill_grace=1, shutdown_grace=2)  # fmt: skip
        runner = Runner(Settings(**{**base, **settings}),
                        RunnerOptions(queues=("default", "fast"), metrics_port=0))  # fmt: skip
        runner.start()
        thread = threading.Thread(target=runner.serve, kwargs={"install_signals": False},
                                  daemon=True)  # fmt: skip
        thread.start()
        started.append((runner, thread))
        return runner

    yield start
    for runner, thread in started:
        runner.request_stop("test over")
        thread.join(20)
        runner.store.dispose()


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus text, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, rest = series.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric == name and got == want:
            return float(value)
    return None


# -- /metrics on the API -----------------------------------------------------------------------


def test_api_metrics_read_the_database_at_scrape_time(db_url, store, flows):
    settings = Settings(database_url=db_url, api_tokens=TOKENS, stall_after=3,
                        heartbeat_interval=1)  # fmt: skip
    store.create_run("quick")
    store.create_run("quick")
    store.create_run("essay", {"topic": "later"}, not_before_ms=4_102_444_800_000)  # 2100
    held = store.claim_runs("rnr_test", queues=["default"], workflows=["essay"], limit=1)
    assert held == []  # the essay waits for its not_before
    with ThreadedServer(create_app(settings)) as server, http(server.url) as client:
        assert client.get("/metrics").status_code == 401
        viewer = bearer("viewer")
        run_id = client.post("/api/runs", json={"workflow": "quick"},
                             headers=bearer("operator")).json()["id"]  # fmt: skip
        assert client.get(f"/api/runs/{run_id}", headers=viewer).status_code == 200
        text = client.get("/metrics", headers=viewer).text
    assert _sample(text, "loopdeck_database_up") == 1
    assert _sample(text, "loopdeck_queue_depth", queue="fast") == 3
    assert _sample(text, "loopdeck_queue_eligible", queue="fast") == 3
    assert _sample(text, "loopdeck_queue_depth", queue="default") == 1
    assert _sample(text, "loopdeck_queue_eligible", queue="default") == 0
    assert _sample(text, "loopdeck_queue_oldest_age_seconds", queue="default") == 0
    assert _sample(text, "loopdeck_queue_oldest_age_seconds", queue="fast") >= 0
    assert _sample(text, "loopdeck_runs_active", workflow="quick", status="queued") == 3
    assert _sample(text, "loopdeck_runs_stalled") == 0
    assert _sample(text, "loopdeck_api_runs_created_total", workflow="quick", origin="api") == 1
    # Latency by route template: one series for every run id.
    count = "loopdeck_api_request_duration_seconds_count"
    assert _sample(text, count, method="GET", route="/api/runs/{run_id}", status="200") == 1
    assert _sample(text, count, method="POST", route="/api/runs", status="201") == 1
    assert run_id not in text


def test_api_metrics_say_when_the_database_cannot_be_read(tmp_path):
    # A database without the schema (never upgraded): a scrape answers, with up = 0.
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}"))
    with ThreadedServer(app) as server, http(server.url) as client:
        text = client.get("/metrics").text
    assert _sample(text, "loopdeck_database_up") == 0


def test_stalled_runs_and_runners_are_counted(db_url, store, flows):
    run, _ = store.create_run("quick")
    store.register_runner({"id": "rnr_x", "hostname": "h", "pid": 1, "pid_started_at": 0,
                           "version": "t", "queues": ["fast"], "labels": {},
                           "workflows": ["quick"], "concurrency": 1, "stats": {}})  # fmt: skip
    [claimed] = store.claim_runs("rnr_x", queues=["fast"], workflows=["quick"], limit=1)
    store.apply_run_writes([RunWrites(run["id"], claimed.token, 0, run={"heartbeat_at": 1})])
    snap = store.metrics_snapshot()
    assert snap["stalled"] == 1
    assert snap["active"] == {("quick", "running"): 1}
    assert snap["runners"] == {("active", "alive"): 1}


# -- the runner's metrics port ----------------------------------------------------------------


def test_runner_metrics_port(store, start_runner):
    runner = start_runner()
    port = runner.metrics_server.server_port
    ok, _ = store.create_run("quick")
    refused, _ = store.create_run("artifacts", {"count": 1, "size": 10, "strict": True})
    settled(store, ok["id"])
    settled(store, refused["id"])
    text = wait_for(
        lambda: (t := httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        and _sample(t, "loopdeck_runner_runs_finished_total", workflow="artifacts",
                    status="succeeded") and t,
        10, what="the finished counter",
    )  # fmt: skip
    assert _sample(text, "loopdeck_runner_runs_claimed_total", workflow="quick") == 1
    assert _sample(text, "loopdeck_runner_runs_finished_total", workflow="quick",
                   status="succeeded") == 1  # fmt: skip
    assert _sample(text, "loopdeck_runner_stage_duration_seconds_count", workflow="quick",
                   step="only", status="succeeded") == 1  # fmt: skip
    assert _sample(text, "loopdeck_runner_queue_wait_seconds_count", workflow="quick") == 1
    assert _sample(text, "loopdeck_runner_claim_duration_seconds_count", outcome="claimed") >= 1
    assert _sample(text, "loopdeck_runner_slots") == DEFAULT_CONCURRENCY
    assert _sample(text, "loopdeck_runner_info", runner_id=runner.id) == 1


# -- logs --------------------------------------------------------------------------------------


def test_json_log_lines_carry_the_runs_fields(db_url, store, flows, tmp_path):
    run, _ = store.create_run("chatty")
    env = base_env(db_url)
    proc = Proc(["runner", "--config", flows, "--once", "--log-format", "json",
                 "--queue", "default"], env, tmp_path / "runner.log")  # fmt: skip
    assert proc.wait(60) == 0, proc.output()
    output = proc.output()
    proc.stop()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    hello = [entry for entry in lines if entry["message"] == "hello from speak"]
    assert hello, output
    entry = hello[0]
    assert entry["run_id"] == run["id"] and entry["step"] == "speak" and entry["attempt"] == 1
    assert entry["runner_id"].startswith("rnr_") and entry["logger"] == "tests.stage"
    started = [e for e in lines if e.get("action") == "runner_started"]
    assert started and started[0]["runner_id"] == entry["runner_id"]
    assert all("runner_id" in e for e in lines if e["logger"].startswith("runner")), lines


# -- limits ------------------------------------------------------------------------------------


def test_output_lines_over_the_cap_are_cut_saying_so(store, start_runner):
    start_runner()
    run, _ = store.create_run("chatty")
    assert settled(store, run["id"])["status"] == "succeeded"
    logs = [e for e in store.list_events(run["id"], limit=500)["events"] if e["type"] == "log"]
    long = [e for e in logs if e["message"].startswith("xxxx")]
    assert len(long) == 1
    assert long[0]["message"].endswith("more bytes cut]")
    assert len(long[0]["message"]) < 8300
    assert long[0]["data"]["cut_bytes"] == 20000 - (8192 - 64)


def test_artifacts_over_the_run_cap_are_refused_with_an_event(store, start_runner):
    start_runner(max_run_artifact_bytes=1000)
    run, _ = store.create_run("artifacts", {"count": 4, "size": 400})
    done = settled(store, run["id"])
    assert done["status"] == "succeeded"
    assert done["tasks"][0]["output"] == {"refused": [2, 3]}
    assert len(store.list_artifacts(run["id"])["artifacts"]) == 2
    rejected = [e for e in store.list_events(run["id"], limit=500)["events"]
                if e["type"] == "artifact.rejected"]  # fmt: skip
    assert [e["data"]["filename"] for e in rejected] == ["part-2.bin", "part-3.bin"]
    assert "LOOPDECK_MAX_RUN_ARTIFACT_BYTES" in rejected[0]["message"]
    # A re-run counts what earlier claims stored: nothing more fits.
    strict, _ = store.create_run("artifacts", {"count": 1, "size": 2000, "strict": True})
    failed = settled(store, strict["id"])
    assert failed["status"] == "failed"
    assert "LOOPDECK_MAX_ARTIFACT_BYTES" not in failed["error_message"]
    assert "LOOPDECK_MAX_RUN_ARTIFACT_BYTES" in failed["error_message"]


def test_inputs_over_the_cap_are_refused(db_url, store):
    small = type(store)(store.engine, max_inputs_bytes=100)
    with pytest.raises(InvalidInput) as exc:
        small.create_run("essay", {"topic": "x" * 200})
    assert exc.value.field == "inputs" and "LOOPDECK_MAX_INPUTS_BYTES" in exc.value.message
    with pytest.raises(InvalidInput) as exc:
        small.create_runs("essay", [{"topic": "a"}, {"topic": "y" * 200}])
    assert exc.value.field == "runs[1].inputs"
    settings = Settings(database_url=db_url, max_inputs_bytes=100)
    with ThreadedServer(create_app(settings)) as server, http(server.url) as client:
        resp = client.post("/api/runs", json={"workflow": "essay", "inputs": {"topic": "z" * 200}})
    assert resp.status_code == 422
    assert resp.json()["error"]["details"]["field"] == "inputs"


def test_event_data_and_messages_are_capped():
    from runner.active import MAX_EVENT_DATA, MAX_MESSAGE, ActiveRun, Outbox
    from shared.store import ClaimedRun

    claimed = ClaimedRun("run_x", "tok", "w", "v", "steps", {}, {}, 0, 1, False, {})
    active = ActiveRun(claimed, Outbox())
    active.event("log", "m" * (MAX_MESSAGE + 10), data={"big": "d" * (MAX_EVENT_DATA + 1)})
    event = active.take_batch().events[0]
    assert event["message"].endswith("[10 more characters cut]")
    data = json.loads(event["data"])  # encoded once, in the execution's thread
    assert data["cut_bytes"] > MAX_EVENT_DATA and "cut" in data


@pytest.mark.all_backends
def test_event_data_encoded_by_the_runner_reads_back_as_written_by_any_other_writer(store):
    from shared.store import JsonText

    run, _ = store.create_run("essay", {"topic": "t"})
    claimed = store.claim_runs("r1", queues=["default"], workflows=["essay"], limit=1)[0]
    data = {"status": "succeeded", "n": 1.5, "list": [1, None, "ü"], "nested": {"a": True}}
    store.apply_run_writes([RunWrites(run["id"], claimed.token, 0, events=[
        {"run_id": run["id"], "type": "log", "data": JsonText(json.dumps(data))},
        {"run_id": run["id"], "type": "log", "data": {"as": "object"}},
        {"run_id": run["id"], "type": "log", "data": None},
    ])])  # fmt: skip
    logged = [e["data"] for e in store.list_events(run["id"])["events"] if e["type"] == "log"]
    assert logged == [data, {"as": "object"}, None]


# -- retention ---------------------------------------------------------------------------------


def _finish(store, run_id: str, status: str, completed_ms: int) -> None:
    claimed, why = store.claim_run_by_id("rnr_p", run_id)
    assert claimed is not None, why
    store.apply_run_writes([RunWrites(run_id, claimed.token, 0, run={"status": status,
                            "completed_at": completed_ms},
                            events=[{"run_id": run_id, "type": "log", "message": "m"}],
                            artifacts=[{"id": f"art_{run_id}", "run_id": run_id,
                                        "kind": "file", "filename": "f", "media_type": "text/plain",
                                        "content": b"abc", "size": 3, "sha256": "0" * 64}])])  # fmt: skip


def test_prune_deletes_old_finished_runs_with_their_rows(store, flows):
    now = store.read(db_now)
    day = 86_400_000
    old_ok, _ = store.create_run("quick")
    old_failed, _ = store.create_run("quick")
    recent, _ = store.create_run("quick")
    active, _ = store.create_run("quick")
    child = store.create_run("quick", parent_run_id=old_ok["id"], origin="retry")[0]
    _finish(store, old_ok["id"], "succeeded", now - 40 * day)
    _finish(store, old_failed["id"], "failed", now - 40 * day)
    _finish(store, recent["id"], "succeeded", now - day)
    # Creation times are now, so prune with now_ms 41 days ahead sees them as old enough.
    later = now + 41 * day
    dry = store.prune_runs(older_than_ms=30 * day, dry_run=True, now_ms=later)
    assert (dry.runs, dry.dry_run) == (3, True)
    only_failed = store.prune_runs(older_than_ms=30 * day, statuses=("failed",), now_ms=later,
                                   batch_size=1)  # fmt: skip
    assert (only_failed.runs, only_failed.artifacts, only_failed.artifact_bytes) == (1, 1, 3)
    assert only_failed.events >= 3 and only_failed.tasks == 1
    report = store.prune_runs(older_than_ms=30 * day, now_ms=later, batch_size=1)
    assert report.runs == 2 and report.batches == 2  # old_ok and recent (41 - 1 > 30 days)
    remaining = {r["id"] for r in store.list_runs(limit=50)["runs"]}
    assert remaining == {active["id"], child["id"]}
    assert store.get_run(child["id"])["parent_run_id"] is None
    assert store.list_events(active["id"])["events"]
    audit = store.list_audit(limit=500)["audit"]
    assert any(a["run_id"] == old_ok["id"] for a in audit)  # the trail outlives the run
    prunes = [a for a in audit if a["action"] == "runs.prune"]
    assert [p["details"]["runs"] for p in prunes] == [2, 1]
    with pytest.raises(InvalidInput):
        store.prune_runs(older_than_ms=day, statuses=("running",))


def test_prune_command(env, store, flows):
    from ..helpers import cli

    run, _ = store.create_run("quick")
    _finish(store, run["id"], "cancelled", 0)
    bad = cli(["prune", "--older-than", "soon"], env)
    assert bad.returncode == 2 and "--older-than 'soon'" in bad.stderr
    dry = cli(["prune", "--older-than", "30d", "--dry-run"], env)
    assert dry.returncode == 0 and dry.stdout.startswith("would delete 0 run(s)"), dry.stdout
    done = cli(["prune", "--older-than", "0s", "--status", "cancelled", "--json"], env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["runs"] == 1
    assert store.list_runs()["runs"] == []


def test_cron_secret_falls_back_to_vercels_name():
    assert Settings.from_env({"CRON_SECRET": "v"}).cron_secret == "v"
    assert Settings.from_env({"CRON_SECRET": "v", "LOOPDECK_CRON_SECRET": "l"}).cron_secret == "l"
    assert SECRETS  # the token fixtures stay importable from here


def test_a_busy_metrics_port_is_a_clear_error():
    import socket

    from runner.metrics import RunnerMetrics
    from shared.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            RunnerMetrics("rnr_x", 1).serve(port, "127.0.0.1")

"""The README's story: `loopdeck up`, then curl and the CLI, as a new user would."""

import os
import signal

import psutil

from ..helpers import cli, wait_for


def test_up_serves_the_api_and_runs_the_essay_until_it_passes(up, client):
    assert f"Loopdeck is up: http://127.0.0.1:{up.port}" in up.proc.output()
    assert os.path.exists(up.cwd / "loopdeck.db")
    names = {w["name"] for w in client.get("/api/workflows").json()["workflows"]}
    assert {"essay", "release", "sleepy"} <= names
    created = client.post(
        "/api/runs", content='{"workflow":"essay","inputs":{"topic":"tides","pace":0.05}}'
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]

    events, after = [], 0

    def finished():
        nonlocal after
        page = client.get(f"/api/runs/{run_id}/events", params={"after": after}).json()
        events.extend(page["events"])
        after = page["next_after"]
        return page["run_status"] in ("succeeded", "failed")

    wait_for(finished, 60, interval=0.1, what="the essay run to finish")
    run = client.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["current_attempt"] > 1
    assert run["final_score"] >= run["pass_threshold"]
    types = [e["type"] for e in events]
    assert types[:2] == ["run.queued", "run.claimed"] and types[-1] == "run.succeeded"
    scores = [e["data"]["score"] for e in events if e["type"] == "score"]
    assert scores == sorted(scores) and scores[-1] >= 0.8 and scores[0] < 0.8
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), "the cursor never repeats or reorders events"


def test_cli_follow_shows_the_timeline_and_exits_with_the_result(up):
    ok = cli(["run", "essay", "-i", "topic=tides", "-i", "pace=0", "--follow"], up.cli_env())
    assert ok.returncode == 0, ok.stderr
    assert "run.claimed" in ok.stdout and "score" in ok.stdout and "run.succeeded" in ok.stdout
    assert "succeeded" in ok.stdout.strip().splitlines()[-1]
    bad = cli(["run", "release", "-i", "break_docs=true", "--follow"], up.cli_env())
    assert bad.returncode == 1
    assert "step 'docs' failed" in bad.stdout.strip().splitlines()[-1]


def test_sigterm_stops_up_and_its_children(up):
    children = psutil.Process(up.proc.pid).children(recursive=True)
    assert len(children) >= 2
    up.proc.send(signal.SIGTERM)
    assert up.proc.wait(60) == 0, up.proc.output()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def test_a_second_up_on_the_same_port_refuses_in_one_line(up, tmp_path):
    result = cli(["up", "--port", str(up.port), "--db", str(tmp_path / "other.db")], up.env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"loopdeck: cannot listen on 127.0.0.1:{up.port}: Address already in use; pass --port"
    )

"""Four real runner processes race for 500 queued runs: every run is claimed exactly once."""

from shared.store import Store

from ..helpers import Proc, wait_for


def test_four_runner_processes_claim_each_run_exactly_once(
    publish_test_workflows: Store, env, procs, tmp_path, test_workflows_file
):
    store = publish_test_workflows
    ids = {store.create_run("noop", {})[0]["id"] for _ in range(500)}
    for i in range(4):
        procs.append(Proc(["runner", "--config", test_workflows_file, "--once",
                           "--concurrency", "4"], env, tmp_path / f"runner{i}.log"))  # fmt: skip
    for p in procs:
        assert p.wait(timeout=120) == 0, p.output()

    def all_done():
        page = store.list_runs(limit=500)["runs"]
        return len(page) == 500 and all(r["status"] == "succeeded" for r in page)

    wait_for(all_done, 30, what="all runs to succeed")
    claimed_by: dict[str, list[str]] = {}
    for run_id in ids:
        events = store.list_events(run_id)["events"]
        claims = [e["data"]["runner_id"] for e in events if e["type"] == "run.claimed"]
        assert len(claims) == 1, (run_id, claims)
        starts = [e for e in events if e["type"] == "stage.started"]
        assert len(starts) == 1, run_id
        claimed_by.setdefault(claims[0], []).append(run_id)
    assert sum(len(v) for v in claimed_by.values()) == 500
    assert len(claimed_by) >= 2, "expected the work to be shared between processes"

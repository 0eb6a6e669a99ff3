"""The HTTP API over a real (threaded uvicorn) server on a fresh SQLite file."""

import pytest

from api.app import create_app
from shared.settings import Settings
from shared.store import NOW, RunWrites

from ..helpers import ThreadedServer, http


@pytest.fixture
def api(db_url, store):
    settings = Settings(database_url=db_url, stall_after=3, heartbeat_interval=1,
                        cron_secret="s3cret", max_body_bytes=10_000)  # fmt: skip
    with ThreadedServer(create_app(settings)) as server, http(server.url) as client:
        yield client


def _error(resp, status, code, field=None):
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["code"] == code
    if field is not None:
        assert body["details"]["field"] == field, body
    return body


def test_health_and_workflows(api):
    health = api.get("/api/health").json()
    assert health["status"] == "ok" and health["schema"]["current"] == health["schema"]["head"]
    names = {w["name"]: w for w in api.get("/api/workflows").json()["workflows"]}
    assert names["essay"]["input_schema"]["required"] == ["topic"]
    assert api.get("/api/workflows/essay").json()["kind"] == "loop"
    _error(api.get("/api/workflows/nope"), 404, "not_found")


def test_create_accepts_curl_style_bodies_and_idempotency(api):
    # curl -d sends application/x-www-form-urlencoded; the body is still JSON.
    resp = api.post("/api/runs", content='{"workflow":"essay","inputs":{"topic":"tides"}}',
                    headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert resp.status_code == 201, resp.text
    run = resp.json()
    assert resp.headers["location"] == f"/api/runs/{run['id']}"
    assert run["status"] == "queued" and run["stalled"] is False
    body = {"workflow": "essay", "inputs": {"topic": "x"}}
    first = api.post("/api/runs", json=body, headers={"Idempotency-Key": "abc"})
    again = api.post("/api/runs", json=body, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = api.post("/api/runs", json={**body, "inputs": {"topic": "y"}},
                     headers={"Idempotency-Key": "abc"})  # fmt: skip
    _error(other, 409, "conflict")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"workflow": "essay"', "body"),
        ("[1, 2]", "body"),
        ("", "body"),
        ('{"workflow": "nope"}', "workflow"),
        ('{"workflow": "essay", "inputs": {"topic": 5}}', "inputs.topic"),
        ('{"workflow": "essay", "inputs": {}}', "inputs.topic"),
        ('{"workflow": "essay", "inputs": {"topic": "a", "colour": 1}}', "inputs.colour"),
        ('{"workflow": "essay", "inputs": {"topic": "a"}, "extra": 1}', "extra"),
        ('{"workflow": "essay", "inputs": {"topic": "a"}, "priority": "high"}', "priority"),
        ('{"workflow": "essay", "inputs": {"topic": "a"}, "priority": 5000}', "priority"),
        ('{"workflow": "essay", "inputs": {"topic": "a"}, "not_before": "soon"}', "not_before"),
        ('{"workflow": "essay", "inputs": "topic"}', "inputs"),
        ('{"workflow": 7}', "workflow"),
    ],
)
def test_invalid_create_bodies_get_422_naming_the_field(api, body, field):
    _error(api.post("/api/runs", content=body), 422, "invalid_input", field)


def test_body_cap_and_bad_headers(api):
    big = '{"workflow": "essay", "inputs": {"topic": "' + "x" * 20_000 + '"}}'
    _error(api.post("/api/runs", content=big), 413, "payload_too_large")
    _error(api.post("/api/runs", json={"workflow": "essay", "inputs": {"topic": "a"}},
                    headers={"Idempotency-Key": "x" * 300}), 422, "invalid_input",
           "Idempotency-Key")  # fmt: skip
    assert (
        api.get("/api/health", headers={"X-Request-ID": "abc-1"}).headers["x-request-id"] == "abc-1"
    )


def test_list_detail_events_and_query_validation(api, store):
    ids = [api.post("/api/runs", json={"workflow": "essay", "inputs": {"topic": f"lui{'o' * i}"}}).json()["id"]
           for i in range(5)]  # fmt: skip
    page = api.get("/api/runs", params={"limit": 2}).json()
    assert [r["id"] for r in page["runs"]] == ids[::-1][:2] and page["next_cursor"]
    rest = api.get("/api/runs", params={"limit": 10, "cursor": page["next_cursor"]}).json()
    assert [r["id"] for r in rest["runs"]] == ids[::-1][2:] and rest["next_cursor"] is None
    assert len(api.get("/api/runs", params={"status": "queued,failed"}).json()["runs"]) == 5
    found = api.get("/api/runs", params={"q": 'luiooo"'}).json()["runs"]
    assert [r["id"] for r in found] == [ids[3]]
    _error(api.get("/api/runs", params={"status": "nope"}), 422, "invalid_input", "status")
    _error(api.get("/api/runs", params={"limit": "x"}), 422, "invalid_input", "limit")
    _error(api.get("/api/runs", params={"limit": 0}), 422, "invalid_input", "limit")
    _error(api.get("/api/runs", params={"created_after": "then"}), 422, "invalid_input",
           "created_after")  # fmt: skip
    detail = api.get(f"/api/runs/{ids[0]}").json()
    assert detail["tasks"] == [] and detail["lineage"]["children"] == []
    events = api.get(f"/api/runs/{ids[0]}/events").json()
    assert events["events"][0]["type"] == "run.queued" and events["next_after"] >= 1
    after = api.get(f"/api/runs/{ids[0]}/events", params={"after": events["next_after"]}).json()
    assert after["events"] == []
    _error(api.get(f"/api/runs/{ids[0]}/events", params={"after": "-1"}), 422, "invalid_input")
    _error(api.get("/api/runs/run_nope"), 404, "not_found")
    _error(api.get("/api/runs/run_nope/events"), 404, "not_found")
    _error(api.get("/api/runs/run_nope/artifacts"), 404, "not_found")


def test_cancel_retry_and_conflicts(api):
    run = api.post("/api/runs", json={"workflow": "essay", "inputs": {"topic": "a"}}).json()
    _error(api.post(f"/api/runs/{run['id']}/retry"), 409, "conflict")
    resp = api.post(f"/api/runs/{run['id']}/cancel", json={"reason": "typo"})
    assert resp.status_code == 202 and resp.json()["status"] == "cancelled"
    _error(api.post(f"/api/runs/{run['id']}/cancel"), 409, "conflict")
    _error(api.post(f"/api/runs/{run['id']}/cancel", json={"reason": 5}), 422, "invalid_input",
           "reason")  # fmt: skip
    retried = api.post(f"/api/runs/{run['id']}/retry", json={"reason": "again"})
    assert retried.status_code == 201
    new = retried.json()
    assert new["origin"] == "retry" and new["parent_run_id"] == run["id"]
    _error(api.post("/api/runs/run_nope/cancel"), 404, "not_found")
    _error(api.post("/api/runs/run_nope/retry"), 404, "not_found")


def test_artifacts_are_served_with_their_type_and_sandboxed(api, store):
    run = api.post("/api/runs", json={"workflow": "release", "inputs": {}}).json()
    (claimed,) = store.claim_runs("rnr_t", queues=["default"], workflows=["release"], limit=1)
    row = {"id": "art_1", "task_id": None, "step": "build", "attempt": 1, "kind": "file",
           "filename": "page.html", "media_type": "text/html", "content": b"<script>x</script>",
           "size": 18, "sha256": "0" * 64}  # fmt: skip
    store.apply_run_writes([RunWrites(claimed.id, claimed.token, 0, artifacts=[
        {"run_id": claimed.id, **row}], run={"status": "succeeded", "completed_at": NOW})])  # fmt: skip
    listing = api.get(f"/api/runs/{run['id']}/artifacts").json()["artifacts"]
    assert [a["filename"] for a in listing] == ["page.html"] and "content" not in listing[0]
    resp = api.get(f"/api/runs/{run['id']}/artifacts/art_1")
    assert resp.content == b"<script>x</script>"
    assert resp.headers["content-security-policy"] == "sandbox"
    assert resp.headers["x-content-type-options"] == "nosniff"
    _error(api.get(f"/api/runs/{run['id']}/artifacts/art_nope"), 404, "not_found")


def test_runners_stats_and_deregistration(api, store):
    store.register_runner({"id": "rnr_1", "hostname": "h", "pid": 1, "pid_started_at": 0,
                           "version": "t", "queues": ["default"], "labels": {},
                           "workflows": ["essay"], "concurrency": 2, "stats": {}})  # fmt: skip
    runners = api.get("/api/runners").json()["runners"]
    assert runners[0]["id"] == "rnr_1" and runners[0]["health"] == "alive"
    resp = api.delete("/api/runners/rnr_1")
    assert resp.status_code == 202 and resp.json()["deregister_requested_at"]
    _error(api.delete("/api/runners/rnr_nope"), 404, "not_found")
    stats = api.get("/api/stats").json()
    assert set(stats["counts"]) == {"queued", "running", "waiting", "succeeded", "failed",
                                    "cancelled"}  # fmt: skip


def test_cron_reap_needs_the_shared_secret(api, store):
    _error(api.post("/api/cron/reap"), 401, "unauthorized")
    _error(api.post("/api/cron/reap", headers={"Authorization": "Bearer wrong"}), 401,
           "unauthorized")  # fmt: skip
    ok = api.get("/api/cron/reap", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json() == {"rescued": [], "count": 0}


def test_unknown_routes_and_methods_answer_json(api):
    _error(api.get("/api/nothing"), 404, "not_found")
    _error(api.put("/api/runs"), 405, "method_not_allowed")

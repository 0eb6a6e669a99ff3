"""The control plane over HTTP (a real threaded uvicorn server): restart, reset, rerun and its
plan, approvals, dispatch, audit, API tokens route by route, and the rate limit."""

import re

import pytest
from starlette.routing import Route

from api.app import create_app
from api.auth import ADMIN, CRON, PUBLIC, ROLES, VIEWER, route_table, secure_routes
from shared.settings import Settings

from ..control_support import SECRETS, TOKENS, bearer, settled, statuses


def _error(resp, status, code, field=None):
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["code"] == code, body
    if field is not None:
        assert body["details"]["field"] == field, body
    return body


def _finished_run(capi, cstore, in_process_runner, workflow="fanout", inputs=None):
    in_process_runner()
    run = capi.post("/api/runs", json={"workflow": workflow, "inputs": inputs or {}}).json()
    return settled(cstore, run["id"])


# -- API tokens, route by route -------------------------------------------------------------

APP_ROUTES = create_app(
    Settings(database_url="sqlite:////nonexistent/never-opened.db", api_tokens=TOKENS)
).routes
ROUTE_TABLE = route_table(APP_ROUTES)


def test_every_api_route_has_an_access_policy():
    api_paths = {r.path for r in APP_ROUTES if getattr(r, "path", "").startswith("/api")}
    # /metrics lives outside /api (Prometheus' convention) under the same guard.
    assert api_paths | {"/metrics"} == {path for _, path, _ in ROUTE_TABLE}
    assert ("GET", "/metrics", VIEWER) in ROUTE_TABLE
    table = {(m, p): a for m, p, a in ROUTE_TABLE}
    assert table[("GET", "/api/health")] == PUBLIC
    assert table[("POST", "/api/cron/reap")] == CRON
    assert table[("POST", "/api/runs/{run_id}/reset")] == ADMIN
    assert table[("DELETE", "/api/runners/{runner_id}")] == ADMIN
    assert table[("POST", "/api/runs/{run_id}/rerun")] == "operator"


def test_a_route_without_a_declaration_gets_a_safe_default():
    async def handler(request):  # pragma: no cover - never called
        raise AssertionError

    routes = secure_routes([Route("/api/x", handler, methods=["GET"]),
                            Route("/api/y", handler, methods=["POST"]),
                            Route("/page", handler, methods=["GET"])])  # fmt: skip
    assert route_table(routes) == [("GET", "/api/x", VIEWER), ("POST", "/api/y", ADMIN)]
    assert routes[2].endpoint is handler  # pages outside /api are not wrapped


def _concrete(path):
    return re.sub(r"\{[^}]+\}", "nope", path)


def _call(client, method, path, headers=None, cookies=None):
    body = None if method in ("GET", "DELETE") else "{}"
    if cookies:
        client.cookies.update(cookies)
    try:
        return client.request(method, _concrete(path), content=body, headers=headers or {})
    finally:
        client.cookies.clear()


@pytest.mark.parametrize(("method", "path", "level"), ROUTE_TABLE,
                         ids=[f"{m} {p}" for m, p, _ in ROUTE_TABLE])  # fmt: skip
def test_auth_route_by_route(tapi, method, path, level):
    if level == PUBLIC:
        assert _call(tapi, method, path).status_code not in (401, 403)
        return
    if level == CRON:
        _error(_call(tapi, method, path), 401, "unauthorized")
        _error(_call(tapi, method, path, bearer("admin")), 401, "unauthorized")
        ok = _call(tapi, method, path, {"Authorization": "Bearer cron-s3cret"})
        assert ok.status_code == 200, ok.text
        return
    missing = _error(_call(tapi, method, path), 401, "unauthorized")
    assert "API token" in missing["message"]
    assert _call(tapi, method, path).headers["www-authenticate"].startswith("Bearer")
    _error(_call(tapi, method, path, {"Authorization": "Bearer wrong-secret"}), 401,
           "unauthorized")  # fmt: skip
    _error(_call(tapi, method, path, {"Authorization": f"Basic {SECRETS['admin']}"}), 401,
           "unauthorized")  # fmt: skip
    needed = ROLES.index(level)
    for role in ROLES:
        resp = _call(tapi, method, path, bearer(role))
        if ROLES.index(role) < needed:
            body = _error(resp, 403, "forbidden")
            assert body["details"] == {"role": role, "required_role": level}
        else:
            assert resp.status_code not in (401, 403), (role, resp.text)
    # The browser cookie counts for reads only, never for a change.
    by_cookie = _call(tapi, method, path, cookies={"loopdeck_token": SECRETS["admin"]})
    if method == "GET":
        assert by_cookie.status_code not in (401, 403)
    else:
        _error(by_cookie, 401, "unauthorized")


def test_health_says_whether_tokens_are_needed(capi, tapi):
    assert capi.get("/api/health").json()["auth"] == "none"
    assert tapi.get("/api/health").json()["auth"] == "token"


def test_without_tokens_every_route_is_open(capi):
    for method, path, level in ROUTE_TABLE:
        if level != CRON:
            assert _call(capi, method, path).status_code not in (401, 403), (method, path)


def test_malformed_tokens_refuse_to_build_the_app(db_url):
    from shared.errors import ConfigError

    for raw, message in [
        ("ana:short:viewer", "at least 8"),
        ("ana:long-enough-secret:boss", "not one of viewer, operator, admin"),
        ("ana-long-enough-secret-viewer", "name:secret:role"),
        ("a:long-enough-secret:viewer,a:other-long-secret:admin", "used twice"),
    ]:
        with pytest.raises(ConfigError, match=message):
            create_app(Settings(database_url=db_url, api_tokens=raw))


def test_the_audit_actor_is_the_token_name(tapi, cstore):
    resp = tapi.post("/api/runs", json={"workflow": "fanout", "requested_by": "ana@desk"},
                     headers={**bearer("operator"), "X-Request-ID": "req-42"})  # fmt: skip
    assert resp.status_code == 201, resp.text
    run = resp.json()
    cancel = tapi.post(f"/api/runs/{run['id']}/cancel", json={"reason": "typo"},
                       headers=bearer("operator"))  # fmt: skip
    assert cancel.status_code == 202
    audit = tapi.get("/api/audit", params={"run_id": run["id"]}, headers=bearer("viewer"))
    rows = audit.json()["audit"]
    assert [(r["actor"], r["action"]) for r in rows] == [("otto", "run.cancel"),
                                                         ("otto", "run.create")]  # fmt: skip
    create = rows[1]
    assert create["request_id"] == "req-42" and create["client"] == "127.0.0.1"
    assert create["details"]["requested_by"] == "ana@desk"
    detail = tapi.get(f"/api/runs/{run['id']}", headers=bearer("viewer")).json()
    assert [a["action"] for a in detail["audit"]] == ["run.create", "run.cancel"]
    assert detail["requested_by"] == "otto"


# -- rate limit ---------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_per_token(api_factory):
    api = api_factory(api_tokens=TOKENS, rate_limit=2, rate_limit_window=3600)
    body = {"workflow": "fanout"}
    first = api.post("/api/runs", json=body, headers=bearer("operator"))
    assert first.status_code == 201 and first.headers["x-ratelimit-remaining"] == "1"
    assert api.post("/api/runs", json=body, headers=bearer("operator")).status_code == 201
    limited = api.post("/api/runs", json=body, headers=bearer("operator"))
    err = _error(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 3600
    assert err["details"]["limit"] == 2
    assert api.get("/api/runs", headers=bearer("operator")).status_code == 200  # reads: free
    assert api.post("/api/runs", json=body, headers=bearer("admin")).status_code == 201


def test_rate_limit_without_tokens_counts_per_client_address(api_factory):
    api = api_factory(rate_limit=1, rate_limit_window=3600)
    assert api.post("/api/runs", json={"workflow": "fanout"}).status_code == 201
    _error(api.post("/api/runs", json={"workflow": "fanout"}), 429, "rate_limited")


# -- restart ------------------------------------------------------------------------------


def test_restart(capi, cstore, in_process_runner):
    done = _finished_run(capi, cstore, in_process_runner, inputs={"fail": "e"})
    resp = capi.post(f"/api/runs/{done['id']}/restart", json={"reason": "again"})
    assert resp.status_code == 201, resp.text
    new = resp.json()
    assert resp.headers["location"] == f"/api/runs/{new['id']}"
    assert new["origin"] == "restart" and new["parent_run_id"] == done["id"]
    assert new["config_diff"] == [] and new["inputs"] == done["inputs"]
    assert new["lineage"]["parent"]["id"] == done["id"]
    later = capi.post(
        "/api/runs", json={"workflow": "fanout", "not_before": "2999-01-01T00:00:00Z"}
    )
    body = _error(capi.post(f"/api/runs/{later.json()['id']}/restart"), 409, "conflict")
    assert body["details"]["status"] == "queued"
    _error(capi.post("/api/runs/run_nope/restart"), 404, "not_found")
    _error(capi.post(f"/api/runs/{done['id']}/restart", json={"why": 1}), 422, "invalid_input",
           "why")  # fmt: skip


# -- reset --------------------------------------------------------------------------------


def test_reset(capi, cstore, in_process_runner):
    done = _finished_run(capi, cstore, in_process_runner)
    url = f"/api/runs/{done['id']}/reset"
    _error(capi.post(url, json={}), 422, "invalid_input", "reason")
    _error(capi.post(url, json={"reason": "x", "to_step": "zz"}), 422, "invalid_input", "to_step")
    _error(capi.post(url, json={"reason": "x", "clear_results": "maybe"}), 422, "invalid_input",
           "clear_results")  # fmt: skip
    _error(capi.post(url, json={"reason": "x"}), 409, "conflict")
    _error(capi.post("/api/runs/run_nope/reset", json={"reason": "x"}), 404, "not_found")
    resp = capi.post(url, json={"reason": "d again", "to_step": "d"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [t["step"] for t in body["cleared"]["tasks"]] == ["d"]
    assert body["status"] in ("queued", "running", "succeeded")
    assert settled(cstore, done["id"])["status"] == "succeeded"
    audit = capi.get(f"/api/runs/{done['id']}").json()["audit"]
    assert (audit[-1]["action"], audit[-1]["reason"]) == ("run.reset", "d again")


# -- rerun and its plan ---------------------------------------------------------------------


def test_rerun_plan_and_rerun(capi, cstore, in_process_runner):
    failed = _finished_run(capi, cstore, in_process_runner, inputs={"fail": "c"})
    assert failed["status"] == "failed"
    ids = {t["step"]: t["id"] for t in failed["tasks"]}
    plan_url = f"/api/runs/{failed['id']}/rerun-plan"
    plan = capi.get(plan_url, params={"steps": "c"}).json()
    assert [(e["step"], e["why"]) for e in plan["rerun"]] == [
        ("c", "chosen"), ("d", "skipped after c"), ("e", "skipped after c")]  # fmt: skip
    assert [e["step"] for e in plan["reused"]] == ["a", "b"]
    assert capi.get(plan_url, params={"task_ids": ids["c"]}).json() == plan
    assert capi.get(plan_url).json() == plan  # default: every failed/cancelled task
    _error(capi.get(plan_url, params={"steps": "a,zz"}), 422, "invalid_input", "steps")
    conflict = _error(capi.get(plan_url, params={"steps": "a"}), 409, "conflict")
    assert conflict["details"]["offending"][0]["step"] == "a"
    _error(capi.get("/api/runs/run_nope/rerun-plan"), 404, "not_found")

    url = f"/api/runs/{failed['id']}/rerun"
    _error(capi.post(url, json={"steps": ["c"]}), 422, "invalid_input", "reason")
    _error(capi.post(url, json={"reason": "x", "task_ids": "c"}), 422, "invalid_input",
           "task_ids")  # fmt: skip
    _error(capi.post(url, json={"reason": "x", "task_ids": ["tsk_nope"]}), 422, "invalid_input",
           "task_ids")  # fmt: skip
    body = _error(capi.post(url, json={"reason": "x", "task_ids": [ids["b"], ids["d"]]}), 409,
                  "conflict")  # fmt: skip
    assert "b is succeeded" in body["message"] and "d is skipped" in body["message"]
    assert body["details"]["field"] == "task_ids"
    resp = capi.post(url, json={"reason": "fixed", "requested_by": "ana", "task_ids": [ids["c"]],
                                "dispatch": False})  # fmt: skip
    assert resp.status_code == 202, resp.text
    held = resp.json()
    assert held["status"] == "waiting" and held["rerun_count"] == 1
    assert {t["step"]: t["last_rerun_by"] for t in held["tasks"]}["d"] == "ana"
    _error(capi.post(url, json={"reason": "again"}), 409, "conflict")  # held is not finished
    resp = capi.post(f"/api/runs/{failed['id']}/dispatch", json={"reason": "go"})
    assert resp.status_code == 202, resp.text
    done = settled(cstore, failed["id"])
    assert done["status"] == "failed"  # `fail: c` still holds: c fails again
    assert statuses(done)["c"] == "failed"
    _error(capi.post(f"/api/runs/{failed['id']}/dispatch"), 409, "conflict")
    _error(capi.post("/api/runs/run_nope/rerun", json={"reason": "x"}), 404, "not_found")
    types = [e["type"] for e in capi.get(f"/api/runs/{failed['id']}/events",
                                         params={"limit": 500}).json()["events"]]  # fmt: skip
    assert types.count("task.rerun_reset") == 3 and "run.dispatched" in types


# -- approvals ----------------------------------------------------------------------------


def test_approve_and_reject_over_http(capi, cstore, in_process_runner):
    in_process_runner()
    first = capi.post("/api/runs", json={"workflow": "gated"}).json()
    second = capi.post("/api/runs", json={"workflow": "gated"}).json()
    for run in (first, second):
        settled(cstore, run["id"], ("waiting",))
    waiting = capi.get("/api/runs", params={"status": "waiting"}).json()["runs"]
    assert {r["id"] for r in waiting} == {first["id"], second["id"]}
    url = f"/api/runs/{first['id']}/approve"
    _error(capi.post(url, json={"step": "publish", "decision": "maybe"}), 422, "invalid_input",
           "decision")  # fmt: skip
    _error(capi.post(url, json={"decision": "approve"}), 422, "invalid_input", "step")
    _error(capi.post(url, json={"step": "zz", "decision": "approve"}), 422, "invalid_input",
           "step")  # fmt: skip
    _error(capi.post(url, json={"step": "build", "decision": "approve"}), 409, "conflict", "step")
    _error(capi.post("/api/runs/run_nope/approve", json={"step": "a", "decision": "approve"}),
           404, "not_found")  # fmt: skip
    resp = capi.post(url, json={"step": "publish", "decision": "approve", "comment": "lgtm"})
    assert resp.status_code == 202, resp.text
    rejected = capi.post(f"/api/runs/{second['id']}/approve",
                         json={"step": "publish", "decision": "reject", "comment": "no"})  # fmt: skip
    assert rejected.status_code == 202
    assert settled(cstore, first["id"])["status"] == "succeeded"
    assert settled(cstore, second["id"])["status"] == "failed"
    events = capi.get(f"/api/runs/{second['id']}/events").json()["events"]
    assert "approval.rejected" in [e["type"] for e in events]
    audit = capi.get("/api/audit", params={"run_id": second["id"]}).json()["audit"]
    assert (audit[0]["action"], audit[0]["reason"]) == ("run.reject", "no")


def test_deregister_over_http_records_the_reason(capi, cstore):
    cstore.register_runner({"id": "rnr_1", "hostname": "h", "pid": 1, "pid_started_at": 0,
                            "version": "t", "queues": ["default"], "labels": {},
                            "workflows": [], "concurrency": 1, "stats": {}})  # fmt: skip
    resp = capi.delete("/api/runners/rnr_1", params={"reason": "host retired"})
    assert resp.status_code == 202 and resp.json()["deregister_requested_at"]
    row = capi.get("/api/audit").json()["audit"][0]
    assert (row["action"], row["reason"]) == ("runner.deregister", "host retired")
    _error(capi.delete("/api/runners/rnr_1", params={"reason": "x" * 3000}), 422,
           "invalid_input", "reason")  # fmt: skip

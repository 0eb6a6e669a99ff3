"""The OpenAPI document is generated from the route table (every /api route, including one
added later), and the regressions schemathesis found stay fixed."""

import pytest
from starlette.routing import Route

from api.app import create_app
from api.auth import CRON, PUBLIC, route_table, secure_routes
from api.openapi import build_document
from shared.settings import Settings

from ..control_support import TOKENS, bearer
from ..helpers import ThreadedServer, http

NEVER_OPENED = "sqlite:////nonexistent/never-opened.db"


def _document(tokens=TOKENS):
    app = create_app(Settings(database_url=NEVER_OPENED, api_tokens=tokens))
    return app, build_document(app.routes, tokens=bool(tokens))


def test_every_route_is_in_the_document_with_its_security():
    app, doc = _document()
    assert doc["openapi"] == "3.1.0"
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    table = route_table(app.routes)
    assert documented == {(m, p) for m, p, _ in table}
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    for method, path, level in table:
        op = doc["paths"][path][method.lower()]
        security = op["security"]
        if level == PUBLIC:
            assert security == []
        elif level == CRON:
            assert security == [{"cronSecret": []}]
        else:
            assert security == [{"apiToken": []}] and "401" in op["responses"], (method, path)
        assert op["responses"]["400"]["content"] == {"text/plain": {"schema": {"type": "string"}}}
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")) and status != "400":  # 400: the HTTP server's
                error = {"$ref": "#/components/schemas/Error"}
                schema = response["content"]["application/json"]["schema"]
                assert schema == error or error in schema["anyOf"], (method, path, status)


def test_without_tokens_no_operation_claims_to_need_one():
    _app, doc = _document(tokens="")
    assert "apiToken" not in doc["components"]["securitySchemes"]
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert op["security"] in ([], [{"cronSecret": []}]), path


def test_a_route_added_without_a_description_is_still_documented():
    async def later(request):  # pragma: no cover - never called
        raise AssertionError

    routes = secure_routes([Route("/api/later/{thing}", later, methods=["GET", "POST"])])
    doc = build_document(routes, tokens=True)
    ops = doc["paths"]["/api/later/{thing}"]
    assert set(ops) == {"get", "post"}
    assert ops["get"]["parameters"][0] == {"name": "thing", "in": "path", "required": True,
                                           "schema": {"type": "string"}}  # fmt: skip
    assert {"200", "401", "403", "404", "503"} <= set(ops["get"]["responses"])
    assert {"409", "422", "429"} <= set(ops["post"]["responses"])


def test_bodies_and_responses_come_from_the_models():
    _app, doc = _document()
    create = doc["paths"]["/api/runs"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateRun"
    }
    schemas = doc["components"]["schemas"]
    assert schemas["CreateRun"]["additionalProperties"] is False
    assert schemas["CreateRun"]["required"] == ["workflow"]
    run = schemas["Run"]
    assert {"id", "status", "stalled", "created_at"} <= set(run["required"])
    assert run["properties"]["status"]["enum"][0] == "queued"
    assert "tasks" in schemas["RunDetail"]["properties"]
    assert create["responses"]["201"]["links"]["get_run"] == {
        "operationId": "get_run", "parameters": {"run_id": "$response.body#/id"}
    }  # fmt: skip


@pytest.fixture
def tapi(db_url, store):
    settings = Settings(database_url=db_url, api_tokens=TOKENS, rate_limit=0)
    with ThreadedServer(create_app(settings)) as server, http(server.url) as client:
        yield client


def test_the_document_is_served_without_a_token(tapi):
    doc = tapi.get("/api/openapi.json").json()
    assert "/api/runs/{run_id}" in doc["paths"]


def _error(resp, status, field=None):
    assert resp.status_code == status, resp.text
    if field:
        assert resp.json()["error"]["details"]["field"] == field, resp.text


def test_regressions_found_by_schemathesis(tapi):
    admin = bearer("admin")
    run = tapi.post("/api/runs", json={"workflow": "essay", "inputs": {"topic": "t"}},
                    headers=admin).json()  # fmt: skip
    rid = run["id"]
    # Lax coercion accepted JSON of the wrong type.
    body = {"workflow": "essay", "inputs": {"topic": "t"}, "not_before": False}
    _error(tapi.post("/api/runs", json=body, headers=admin), 422, "not_before")
    _error(tapi.post(f"/api/runs/{rid}/reset", json={"reason": "r", "clear_results": 0},
                     headers=admin), 422, "clear_results")  # fmt: skip
    # A JSON null body was taken for no body.
    _error(tapi.post(f"/api/runs/{rid}/cancel", content="null", headers=admin), 422, "body")
    # A time past what a 64-bit column holds was a 500.
    _error(tapi.get("/api/runs?created_before=37316849833734024724480", headers=admin), 422,
           "created_before")  # fmt: skip
    # Empty values of typed parameters were taken for absent ones.
    _error(tapi.get("/api/runs?created_after=", headers=admin), 422, "created_after")
    _error(tapi.get("/api/runners?include_stopped=", headers=admin), 422, "include_stopped")
    _error(tapi.get("/api/runners?include_stopped=yes", headers=admin), 422, "include_stopped")
    _error(tapi.get(f"/api/runs/{rid}/events?after=", headers=admin), 422, "after")
    # Last-Event-ID hid an invalid `after`, and an empty one was ignored.
    stream = f"/api/runs/{rid}/events/stream"
    _error(tapi.get(f"{stream}?after=4611686018427387905", headers={**admin,
           "Last-Event-ID": "0"}), 422, "after")  # fmt: skip
    _error(tapi.get(stream, headers={**admin, "Last-Event-ID": ""}), 422, "Last-Event-ID")
    # 405's Allow named only the first route of a path served by two.
    resp = tapi.request("OPTIONS", "/api/runs", headers=admin)
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, HEAD, POST"

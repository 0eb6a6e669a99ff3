"""The dashboard's server side over a real (threaded uvicorn) server: pages, live regions,
fragments, error pages, actions offered by route, and the SSE events stream."""

import json
import threading

import httpx
import pytest
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.app import create_app
from runner.daemon import Runner, RunnerOptions
from shared.settings import Settings

from ..helpers import EXAMPLES, ThreadedServer, http, wait_for

XSS = '<script>alert(1)</script><img src=x onerror="alert(2)">'
HTML = {"Accept": "text/html"}
LIVE = {"X-Loopdeck-Live": "1"}


def _settings(db_url, **kw):
    return Settings(database_url=db_url, stall_after=3, heartbeat_interval=1, **kw)


@pytest.fixture
def dash(db_url, store):
    app = create_app(_settings(db_url, tracking_url="https://track.example/r/{run_id}"))
    with ThreadedServer(app) as server, http(server.url) as client:
        client.app = app
        yield client


@pytest.fixture
def finished(db_url, store):
    """An essay that passes on attempt 3 and a release whose docs step fails, run by an
    in-process runner."""
    settings = Settings(database_url=db_url, config_files=(EXAMPLES,), heartbeat_interval=0.2,
                        stall_after=2, poll_interval=0.05, shutdown_grace=2)  # fmt: skip
    runner = Runner(settings, RunnerOptions())
    runner.start()
    thread = threading.Thread(target=runner.serve, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        essay, _ = store.create_run("essay", {"topic": XSS, "pace": 0})
        release, _ = store.create_run("release", {"break_docs": True})
        for r in (essay, release):
            wait_for(lambda r=r: store.get_run(r["id"])["status"] in ("succeeded", "failed"), 30,
                     what="the example runs to finish")  # fmt: skip
    finally:
        runner.request_stop("test over")
        thread.join(20)
        runner.store.dispose()
    arts = {a["filename"] + str(a["attempt"]): a for a in store.list_artifacts(essay["id"])["artifacts"]}  # fmt: skip
    return {"essay": store.get_run(essay["id"]), "release": store.get_run(release["id"]),
            "arts": arts}  # fmt: skip


def _page(resp, status=200):
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("text/html")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp
    return resp.text


def test_pages_render_runs_and_escape_user_content(dash, finished):
    essay, release = finished["essay"], finished["release"]
    runs = _page(dash.get("/"))
    assert "Passed 1.00" in runs and "Failed" in runs and "Start run" in runs
    assert 'data-workflow="essay"' in runs and 'id="in-essay-topic"' in runs  # the start form
    loop = _page(dash.get(f"/runs/{essay['id']}"))
    assert "Score by attempt" in loop and loop.count("<circle") == 3
    assert 'id="attempt-3"' in loop and "draft.md" in loop and "evaluation.json" in loop
    assert "https://track.example/r/" + essay["id"] in loop
    graph = _page(dash.get(f"/runs/{release['id']}"))
    assert "broken cross-reference" in graph and "3/5 steps succeeded" in graph
    for step in ("build", "unit", "lint", "docs", "publish"):
        assert f'<span class="node-name">{step}</span>' in graph
    for text in (runs, loop, graph):
        assert XSS not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in loop
    assert _page(dash.get("/runners")).count('class="dot dot-stopped"') == 1
    workflows = _page(dash.get("/workflows"))
    assert "examples.essay:produce" in workflows and "/?start=release" in workflows


def test_artifact_page_fragment_and_diff(dash, finished):
    essay, arts = finished["essay"], finished["arts"]
    first, last = arts["draft.md1"], arts["draft.md3"]
    url = f"/runs/{essay['id']}/artifacts/{first['id']}"
    view = _page(dash.get(url))
    assert "<h1>On &lt;script&gt;alert(1)&lt;/script&gt;" in view and "<!doctype html>" in view
    frag = _page(dash.get(url, headers={"X-Loopdeck-Fragment": "1"}))
    assert frag.lstrip().startswith('<div class="artifact-view"') and "<html" not in frag
    diff = _page(dash.get(url, params={"against": last["id"]}))
    assert 'class="d-add"' in diff and "removed" in diff
    assert diff.index("--- draft.md (attempt 1)") < diff.index("+++ draft.md (attempt 3)")
    assert (
        diff.index(">attempt 1</a>") < diff.index(">attempt 2</a>") < diff.index(">attempt 3</a>")
    )
    evaluation = _page(dash.get(f"/runs/{essay['id']}/artifacts/{arts['evaluation.json1']['id']}"))
    assert '<pre class="numbered json">' in evaluation and "&#34;score&#34;: 0.15" in evaluation
    missing = _page(dash.get(f"/runs/{essay['id']}/artifacts/art_nope"), 404)
    assert "no artifact art_nope" in missing


def test_runs_list_filters_pagination_and_live_regions(dash, store):
    # Topics no run id can contain (the text filter also matches ids, case-insensitively).
    ids = [store.create_run("essay", {"topic": f"topic-{i}"}, queue="parked")[0]["id"]
           for i in range(27)]  # fmt: skip
    # Newest first by id: ids made in the same millisecond need not sort in creation order.
    newest = sorted(ids, reverse=True)
    page = _page(dash.get("/", params={"queue": "parked"}))
    assert page.count('<tr id="row-') == 25 and newest[0] in page and newest[25] not in page
    assert "Older runs" in page and f"cursor={newest[24]}" in page and "queue=parked" in page
    older = _page(dash.get("/", params={"queue": "parked", "cursor": newest[24]}))
    assert older.count('<tr id="row-') == 2 and "Newest" in older
    assert _page(dash.get("/", params={"q": "topic-13"})).count('<tr id="row-') == 1
    assert _page(dash.get("/", params={"status": "failed", "range": "1h"})).count("<tr id") == 0
    bad = _page(dash.get("/", params={"status": "bogus"}))
    assert "unknown status &#39;bogus&#39;" in bad
    live = dash.get("/", params={"queue": "parked"}, headers=LIVE).json()
    assert live["state"]["poll_ms"] == 5000  # something is queued
    assert 'id="r-cards"' in live["html"] and 'id="r-list"' in live["html"]
    assert "<html" not in live["html"] and "start-dialog" not in live["html"]
    run_live = dash.get(f"/runs/{ids[0]}", headers=LIVE).json()
    assert run_live["state"] == {"poll_ms": 2000, "status": "queued"}
    assert 'id="r-header"' in run_live["html"] and "timeline-list" not in run_live["html"]
    for run_id in ids:
        store.request_cancel(run_id)
    assert dash.get("/", headers=LIVE).json()["state"]["poll_ms"] == 30000
    assert dash.get(f"/runs/{ids[0]}", headers=LIVE).json()["state"]["poll_ms"] == 30000


def test_error_pages(dash):
    missing = _page(dash.get("/runs/run_nope"), 404)
    assert "no run run_nope" in missing
    assert dash.get("/runs/run_nope", headers=LIVE).json()["error"]["message"] == "no run run_nope"
    assert "There is no page at /nowhere" in _page(dash.get("/nowhere", headers=HTML), 404)
    assert dash.get("/nowhere").json()["error"]["code"] == "not_found"  # API clients: JSON
    assert dash.get("/api/nowhere", headers=HTML).json()["error"]["code"] == "not_found"
    static = dash.get("/static/dashboard.js")
    assert static.status_code == 200 and "javascript" in static.headers["content-type"]


def test_actions_are_offered_when_their_route_is_served(dash, store):
    run, _ = store.create_run("essay", {"topic": "a"}, queue="parked")
    page = _page(dash.get(f"/runs/{run['id']}"))
    assert 'data-action="cancel"' in page and 'data-action="retry"' in page
    # Issue 4's routes are served, so their actions are offered too.
    assert 'data-action="restart"' in page and 'data-action="reset"' in page
    cancel = page.split('data-action="cancel"', 1)[1].split(">", 1)[0]
    assert "disabled" not in cancel
    retry = page.split('data-action="retry"', 1)[1].split(">", 1)[0]
    assert "disabled" in retry and "only a finished run can be retried" in retry

    async def restart(request):
        return JSONResponse({}, status_code=201)

    dash.app.router.routes.append(Route("/api/runs/{run_id}/restart", restart, methods=["POST"]))
    page = _page(dash.get(f"/runs/{run['id']}"))
    config = page.split('data-action="restart" data-config="', 1)[1].split('"', 1)[0]
    config = json.loads(config.replace("&#34;", '"').replace("&#39;", "'").replace("&amp;", "&"))
    assert config["url"] == f"/api/runs/{run['id']}/restart" and config["then"] == "open"


def _messages(client, path, **headers):
    """(event, data, id) triples as the server sends them."""
    event, data, ident = "message", [], None
    with client.stream("GET", path, headers=headers, timeout=20) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line == "":
                if data:
                    yield (event, "\n".join(data), ident)
                event, data, ident = "message", [], None
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                ident = line[3:].strip()


def _sse(client, path, **headers):
    return list(_messages(client, path, **headers))


def test_event_stream_replays_resumes_and_ends(dash, finished):
    run_id = finished["essay"]["id"]
    everything = _sse(dash, f"/api/runs/{run_id}/events/stream")
    assert everything[-1][0] == "end" and json.loads(everything[-1][1]) == {"status": "succeeded"}
    events = [json.loads(d) for e, d, _ in everything if e == "event"]
    api = dash.get(f"/api/runs/{run_id}/events", params={"limit": 500}).json()["events"]
    assert events == api
    assert [int(i) for e, _, i in everything if e == "event"] == [e["id"] for e in api]
    middle = api[len(api) // 2]["id"]
    resumed = _sse(dash, f"/api/runs/{run_id}/events/stream", **{"Last-Event-ID": str(middle)})
    assert [json.loads(d)["id"] for e, d, _ in resumed if e == "event"] == [
        e["id"] for e in api if e["id"] > middle
    ]
    after = _sse(dash, f"/api/runs/{run_id}/events/stream?after={api[-1]['id']}")
    assert [e for e, _, _ in after] == ["end"]
    assert dash.get("/api/runs/run_nope/events/stream").json()["error"]["code"] == "not_found"
    bad = dash.get(f"/api/runs/{run_id}/events/stream", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 422


def test_event_stream_pushes_new_events_as_they_happen(dash, store):
    run, _ = store.create_run("essay", {"topic": "a"}, queue="parked")
    got = []

    def consume():
        with httpx.Client(base_url=str(dash.base_url)) as client:
            for message in _messages(client, f"/api/runs/{run['id']}/events/stream"):
                got.append(message)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    wait_for(lambda: got, 10, what="the stream to send the first event")
    store.request_cancel(run["id"], "stop")
    reader.join(15)
    assert not reader.is_alive(), "the stream did not end when the run did"
    types = [json.loads(d)["type"] for e, d, _ in got if e == "event"]
    assert types == ["run.queued", "run.cancel_requested", "run.cancelled"]
    assert got[-1][0] == "end"


def test_lineage_links_parent_and_children(dash, store):
    run, _ = store.create_run("essay", {"topic": "a"}, queue="parked")
    store.request_cancel(run["id"])
    child = store.retry_run(run["id"], "again")
    parent_page = _page(dash.get(f"/runs/{run['id']}"))
    assert f'Retry: <a href="/runs/{child["id"]}">' in parent_page
    child_page = _page(dash.get(f"/runs/{child['id']}"))
    assert f'Parent: <a href="/runs/{run["id"]}">' in child_page and "by retry" in child_page

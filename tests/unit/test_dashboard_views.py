"""Pure dashboard logic: badges, formatting, graph layers, loop attempts and the score chart,
timeline folding, artifact rendering and diffs, the generated start form, actions."""

import pytest

from api.dashboard import actions, artifacts, forms, views
from api.dashboard.templating import metric_label, metric_value, utc_text
from shared.errors import ConfigError
from shared.settings import Settings

ROUTES = {("POST", "/api/runs/{run_id}/cancel"), ("POST", "/api/runs/{run_id}/retry"),
          ("DELETE", "/api/runners/{runner_id}")}  # fmt: skip


def run(**kw):
    base = {"id": "run_1", "workflow": "essay", "kind": "loop", "status": "running",
            "final_score": None, "current_attempt": 2, "max_attempts": 3, "stalled": False,
            "cancel_requested_at": None, "pass_threshold": 0.8, "tasks": []}  # fmt: skip
    return {**base, **kw}


@pytest.mark.parametrize(
    ("fields", "label", "tone"),
    [
        ({"status": "succeeded", "final_score": 0.912}, "Passed 0.91", "ok"),
        ({"status": "failed", "final_score": 0.65}, "Failed 0.65", "bad"),
        ({"status": "failed", "kind": "steps"}, "Failed", "bad"),
        ({}, "Running 2/3", "run"),
        ({"kind": "steps"}, "Running", "run"),
        ({"stalled": True}, "Stalled", "warn"),
        ({"cancel_requested_at": "2026-01-01T00:00:00.000Z"}, "Cancelling", "warn"),
        ({"status": "queued"}, "Queued", "wait"),
        ({"status": "waiting", "tasks": [{"status": "waiting"}]}, "Waiting for approval", "wait"),
        ({"status": "waiting"}, "Held", "wait"),  # a re-run prepared with dispatch=false
        ({"status": "cancelled"}, "Cancelled", "muted"),
    ],
)
def test_badges_say_the_status_in_words(fields, label, tone):
    badge = views.badge(run(**fields))
    assert (badge.label, badge.tone) == (label, tone)


def test_formatting():
    assert [views.fmt_duration(s) for s in (None, 0.61, 12.4, 75, 3600, 7260, 200_000)] == [
        "–", "0.6 s", "12 s", "1 min 15 s", "1 h", "2 h 1 min", "2 d 7 h"]  # fmt: skip
    assert views.fmt_ago(12.2) == "12 s ago" and views.fmt_ago(0.2) == "just now"
    assert views.fmt_bytes(900) == "900 B" and views.fmt_bytes(2048) == "2.0 KB"
    assert views.inputs_summary({"topic": "x" * 100}, limit=20) == "topic=" + "x" * 13 + "…"
    assert views.inputs_summary({"n": 3, "ok": True}) == "n=3, ok=true"
    assert (
        metric_label("cost_usd") == "Cost (USD)" and metric_value("cost_usd", 0.0005) == "$0.0005"
    )
    assert metric_label("tokens") == "Tokens" and metric_value("tokens", 12345) == "12,345"
    assert utc_text("2026-11-22T08:31:57.123Z") == "2026-11-22 08:31:57 UTC"


def _task(step, status="succeeded", needs=(), attempt=1, position=0, output=None):
    return {"id": f"t_{step}_{attempt}", "step": step, "status": status, "needs": list(needs),
            "attempt": attempt, "position": position, "output": output}  # fmt: skip


def test_graph_layers_follow_needs():
    tasks = [_task("build"), _task("unit", needs=["build"], position=1),
             _task("lint", needs=["build"], position=2),
             _task("publish", needs=["unit", "lint"], position=3)]  # fmt: skip
    layers = views.graph_layers(tasks)
    assert [[t["step"] for t in layer] for layer in layers] == [
        ["build"], ["unit", "lint"], ["publish"]]  # fmt: skip
    assert views.progress_text({"kind": "steps", "tasks": tasks}) == "4/4 steps succeeded"


def test_loop_attempts_and_score_chart():
    tasks = [
        _task("produce", attempt=1),
        _task("evaluate", attempt=1, output={"score": 0.2, "feedback": "more"}),
        _task("revise", attempt=2),
        _task("evaluate", attempt=2, output={"score": 0.9, "feedback": "good"}),
    ]
    r = run(tasks=tasks, max_attempts=4)
    attempts = views.loop_attempts(r)
    assert [(a["attempt"], a["score"], a["passed"]) for a in attempts] == [
        (1, 0.2, False), (2, 0.9, True)]  # fmt: skip
    chart = views.score_chart(r, attempts)
    assert [p["attempt"] for p in chart.points] == [1, 2]
    assert chart.points[0]["y"] > chart.threshold_y > chart.points[1]["y"]  # SVG y grows down
    assert [t["label"] for t in chart.ticks] == ["1", "2", "3", "4"]
    assert chart.path.startswith("M") and "L" in chart.path
    assert "attempt 2 0.90" in chart.summary and "threshold 0.80" in chart.summary
    assert views.score_chart(r, [{**attempts[0], "score": None}]) is None


def test_timeline_folds_consecutive_log_lines_of_a_stage():
    def ev(i, type_, stage=None, attempt=None):
        return {"id": i, "type": type_, "stage": stage, "attempt": attempt, "message": str(i)}

    items = views.timeline([
        ev(1, "run.claimed"), ev(2, "log", "a", 1), ev(3, "log", "a", 1), ev(4, "log", "b", 1),
        ev(5, "stage.finished", "a", 1), ev(6, "log", "a", 1),
    ])  # fmt: skip
    assert [(i["kind"], len(i.get("events", [0]))) for i in items] == [
        ("event", 1), ("logs", 2), ("logs", 1), ("event", 1), ("logs", 1)]  # fmt: skip


def test_markdown_never_passes_raw_html_or_script_links():
    md = b"# Title <b>x</b>\n\n<script>alert(1)</script>\n\n[a](javascript:alert(1)) [b](https://ok.example)"
    out = artifacts.render({"filename": "draft.md", "media_type": "text/markdown"}, md)
    html = str(out.html)
    assert out.kind == "markdown" and "<h1>Title &lt;b&gt;x&lt;/b&gt;</h1>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'href="javascript:' not in html and 'href="https://ok.example"' in html


def test_json_text_and_binary_rendering():
    meta = {"filename": "e.json", "media_type": "application/json"}
    out = artifacts.render(meta, b'{"score": 0.5, "tags": ["a"]}')
    assert out.kind == "json" and out.lines[:2] == ["{", '  "score": 0.5,']
    broken = artifacts.render(meta, b"{nope")
    assert broken.lines == ["{nope"] and "not valid JSON" in broken.note
    text = artifacts.render({"filename": "out.log", "media_type": "text/plain"}, b"a\nb\n")
    assert text.kind == "text" and text.lines == ["a", "b"]
    unknown = {"filename": "data", "media_type": "application/octet-stream"}
    assert artifacts.render(unknown, b"plain words").kind == "text"
    assert artifacts.render(unknown, b"\x00\x01\x02").kind == "binary"
    big = artifacts.render({"filename": "big.txt", "media_type": "text/plain"},
                           b"x" * (artifacts.MAX_INLINE_BYTES + 1))  # fmt: skip
    assert not big.lines and "too large" in big.note


def test_diff_between_versions():
    old = {"filename": "e.json", "media_type": "application/json", "attempt": 1}
    new = {**old, "attempt": 2}
    d = artifacts.diff(
        old, b'{"score": 0.2, "missing": ["a"]}', new, b'{"score": 0.9, "missing": []}'
    )
    kinds = [k for k, _ in d.lines]
    assert kinds[:2] == ["file", "file"] and "hunk" in kinds
    assert d.added >= 1 and d.removed >= 1
    assert ("add", '+  "score": 0.9,') in d.lines
    same = artifacts.diff(old, b"{}", new, b"{}")
    assert same.lines == [] and "identical" in same.note
    listing = [{"id": "1", "filename": "e.json"}, {"id": "2", "filename": "e.json"},
               {"id": "3", "filename": "x.md"}]  # fmt: skip
    assert [a["id"] for a in artifacts.versions(listing, listing[0])] == ["2"]
    assert [g["filename"] for g in artifacts.grouped(listing)] == ["e.json", "x.md"]


def test_start_form_follows_the_input_schema():
    wf = {"name": "w", "input_schema": {
        "type": "object", "required": ["topic"],
        "properties": {
            "topic": {"type": "string", "minLength": 1, "maxLength": 200, "description": "About"},
            "words": {"type": "integer", "default": 120, "minimum": 40, "maximum": 2000},
            "pace": {"type": "number", "default": 0.4, "minimum": 0},
            "loud": {"type": "boolean", "default": True},
            "mode": {"type": "string", "enum": ["a", "b"], "default": "b"},
            "scores": {"type": "array", "default": [0.2, 0.5]},
        }}}  # fmt: skip
    fields = {f["name"]: f for f in forms.start_form(wf)["fields"]}
    assert fields["topic"]["required"] and fields["topic"]["attrs"] == {
        "minlength": 1,
        "maxlength": 200,
    }
    assert fields["words"]["widget"] == "number" and fields["words"]["value"] == "120"
    assert fields["words"]["attrs"] == {"step": "1", "min": "40", "max": "2000"}
    assert fields["words"]["constraints"] == "40 to 2,000"
    assert fields["pace"]["attrs"]["step"] == "any"
    assert fields["loud"]["widget"] == "checkbox" and fields["loud"]["checked"]
    assert fields["mode"]["widget"] == "select"
    assert [o["selected"] for o in fields["mode"]["options"]] == [False, True]
    assert fields["scores"]["widget"] == "json" and fields["scores"]["value"] == "[0.2, 0.5]"
    assert fields["topic"]["path"] == "inputs.topic"


def test_actions_depend_on_state_and_on_served_routes():
    queued = {k["key"]: k for k in actions.run_actions(run(status="queued"), ROUTES)}
    assert set(queued) == {"cancel", "retry"}
    assert (
        queued["cancel"]["disabled"] is None
        and "cancelled at once" in queued["cancel"]["config"]["effect"]
    )
    assert queued["retry"]["disabled"] == "only a finished run can be retried"
    done = {k["key"]: k for k in actions.run_actions(run(status="failed"), ROUTES)}
    assert done["cancel"]["disabled"] == "the run is already failed"
    assert done["retry"]["disabled"] is None and done["retry"]["config"]["then"] == "open"
    assert done["retry"]["config"]["url"] == "/api/runs/run_1/retry"
    asked = {k["key"]: k for k in actions.run_actions(run(cancel_requested_at="t"), ROUTES)}
    assert asked["cancel"]["disabled"] == "cancellation was already requested"

    control = ROUTES | {("POST", f"/api/runs/{{run_id}}/{n}") for n in
                        ("restart", "reset", "rerun", "approve")}  # fmt: skip
    tasks = [_task("build"), _task("docs", "failed"), _task("deploy", "waiting")]
    offered = actions.run_actions(run(status="failed", kind="steps", tasks=tasks), control)
    keys = [a["key"] for a in offered]
    assert keys == ["approve", "reject", "cancel", "retry", "restart", "rerun", "reset"]
    rerun = next(a for a in offered if a["key"] == "rerun")["config"]
    assert rerun["preview"] == "/api/runs/run_1/rerun-plan"
    assert [o["value"] for o in rerun["fields"][0]["options"]] == ["t_docs_1"]
    assert {f["name"]: f["required"] for f in rerun["fields"]}["reason"]  # a reason is required
    approve = offered[0]["config"]
    assert {f["name"]: f["value"] for f in approve["fields"] if f["kind"] == "hidden"} == {
        "step": "deploy", "decision": "approve"}  # fmt: skip

    runner = {"id": "rnr_1", "hostname": "h", "pid": 7, "status": "active",
              "deregister_requested_at": None}  # fmt: skip
    (dereg,) = actions.runner_actions(runner, ROUTES)
    assert dereg["config"]["method"] == "DELETE" and dereg["config"]["url"] == "/api/runners/rnr_1"
    assert actions.runner_actions({**runner, "status": "stopped"}, ROUTES)[0]["disabled"]
    assert actions.runner_actions(runner, set()) == []


def test_actions_follow_the_role_of_the_signed_in_token():
    from api.auth import Principal

    levels = {("POST", "/api/runs/{run_id}/cancel"): "operator",
              ("POST", "/api/runs/{run_id}/reset"): "admin",
              ("DELETE", "/api/runners/{runner_id}"): "admin"}  # fmt: skip
    r = run(status="running", kind="steps", tasks=[_task("build", "running")])

    def offered(who):
        return {a["key"]: a["disabled"] for a in actions.run_actions(r, levels, who)}

    assert offered(None) == {"cancel": None, "reset": None}  # no tokens: everything
    assert offered(Principal("root", "admin")) == {"cancel": None, "reset": None}
    assert offered(Principal("otto", "operator")) == {
        "cancel": None, "reset": "needs the admin role (otto is operator)"}  # fmt: skip
    viewer = offered(Principal("ana", "viewer"))
    assert viewer["cancel"] == "needs the operator role (ana is viewer)" and viewer["reset"]
    runner = {"id": "rnr_1", "hostname": "h", "pid": 7, "status": "active"}
    (dereg,) = actions.runner_actions(runner, levels, Principal("otto", "operator"))
    assert dereg["disabled"] == "needs the admin role (otto is operator)"
    assert actions.refusal(levels, "POST", "/api/runs/{run_id}/cancel", None) is None
    # A plain set of routes (no declarations): the guard's defaults (GET viewer, else admin).
    assert actions.refusal(ROUTES, "POST", "/api/runs/{run_id}/cancel",
                           Principal("otto", "operator"))  # fmt: skip


def test_control_actions_name_what_will_happen():
    control = ROUTES | {("POST", f"/api/runs/{{run_id}}/{n}") for n in
                        ("restart", "reset", "rerun", "approve", "dispatch")}  # fmt: skip
    graph = [_task("build"), _task("unit", needs=["build"], position=1),
             _task("docs", "failed", needs=["build"], position=2),
             _task("publish", "skipped", needs=["unit", "docs"], position=3)]  # fmt: skip
    failed = {a["key"]: a for a in actions.run_actions(run(status="failed", kind="steps",
                                                           tasks=graph), control)}  # fmt: skip
    assert "dispatch" not in failed  # only a held run can be dispatched
    reset = failed["reset"]["config"]["fields"][0]["options"]
    assert [o["label"] for o in reset] == [
        "unfinished work (runs again: docs, publish)", "from build (runs again: build, unit, "
        "docs, publish)", "from unit (runs again: unit, publish)",
        "from docs (runs again: docs, publish)", "from publish (runs again: publish)"]  # fmt: skip
    rerun = {f["name"]: f for f in failed["rerun"]["config"]["fields"]}
    assert rerun["dispatch"]["kind"] == "checkbox" and rerun["dispatch"]["value"] is True

    held = [{**t, "status": "created"} if t["step"] in ("docs", "publish") else t for t in graph]
    waiting = {a["key"]: a for a in actions.run_actions(run(status="waiting", kind="steps",
                                                            tasks=held), control)}  # fmt: skip
    assert "docs, publish" in waiting["dispatch"]["config"]["effect"]
    assert waiting["dispatch"]["config"]["url"] == "/api/runs/run_1/dispatch"
    assert waiting["rerun"]["disabled"] == "the run has not finished"

    gate = {**_task("publish", "waiting", needs=["build"], position=1),
            "approval_prompt": "Ship <it>?"}  # fmt: skip
    after = _task("announce", "created", needs=["publish"], position=2)
    offered = {
        a["key"]: a
        for a in actions.run_actions(
            run(status="waiting", kind="steps", tasks=[_task("build"), gate, after]), control
        )
    }
    assert "dispatch" not in offered  # it waits at a gate, it is not held
    assert offered["approve"]["config"]["effect"] == (
        "The gate asks: “Ship <it>?” Step 'publish' runs (announce after it)."
    )
    assert "announce is skipped" in offered["reject"]["config"]["effect"]
    decided = {**gate, "approval_decision": "approve", "approval_by": "otto"}
    again = actions.run_actions(
        run(status="running", kind="steps", tasks=[_task("build"), decided, after]), control
    )
    assert [a["disabled"] for a in again if a["key"] in ("approve", "reject")] == [
        "already approved by otto; a runner carries it out next"
    ] * 2

    loop = [_task("produce", attempt=1, position=0), _task("evaluate", attempt=1, position=1),
            _task("revise", attempt=2, position=2), _task("evaluate", "failed", attempt=2,
                                                          position=3)]  # fmt: skip
    looped = {a["key"]: a for a in actions.run_actions(run(status="failed", tasks=loop), control)}
    values = [o["value"] for o in looped["reset"]["config"]["fields"][0]["options"]]
    assert values == ["", "produce", "evaluate#1", "revise#2", "evaluate#2"]
    assert [o["label"] for o in looped["rerun"]["config"]["fields"][0]["options"]] == [
        "evaluate #2 (failed)"]  # fmt: skip
    queued = {a["key"]: a for a in actions.run_actions(run(status="queued"), control)}
    assert queued["reset"]["disabled"] == "the run has not started: nothing to reset"


def test_waiting_badge_in_lists_and_audit_summaries():
    listed = {k: v for k, v in run(status="waiting").items() if k != "tasks"}
    assert views.badge(listed).label == "Waiting"
    assert views.audit_summary({"details": {"to_step": "docs", "clear_results": True,
                                            "previous_status": "failed", "claimed_by": None,
                                            "tasks": ["docs", "publish"]}}) == (
        "to step docs · clear results · previous status failed · tasks docs, publish")  # fmt: skip
    assert views.audit_summary({"details": {"task_ids": ["t1"], "steps": ["docs"],
                                            "dispatch": False, "requested_by": "ana"}}) == (
        "steps docs · held")  # fmt: skip
    assert views.audit_summary({"details": None}) == ""


def test_tracking_url_must_be_http():
    assert Settings(tracking_url="https://mlflow.example/#/runs/{run_id}").tracking_url
    with pytest.raises(ConfigError, match="LOOPDECK_TRACKING_URL"):
        Settings.from_env({"LOOPDECK_TRACKING_URL": "javascript:alert(1)"})

"""The dashboard in a real browser (Debian's Chromium via playwright) against real processes:
`loopdeck up` for most tests, `loopdeck api` plus a runner without a reaper for the stalled-run
test (`up`'s own reaper would rescue a stalled run within a fraction of the stall threshold).

Every page a test opens must finish without console errors (see browser.py)."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator

import httpx
import pytest

from ..helpers import Proc
from .browser import Stack, browser, page_factory, start_api_stack, start_up_stack

__all__ = ["browser", "page_factory"]  # fixtures used by the tests below

pytestmark = pytest.mark.browser

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


def expect(locator):  # noqa: ANN001, ANN201 - imported lazily: playwright may be absent
    from playwright.sync_api import expect as _expect

    return _expect(locator)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_up_stack(tmp_path_factory.mktemp("up"))
    yield stack
    stack.stop()


def test_start_a_run_from_the_form_and_watch_it_live(up, page_factory):
    page, console = page_factory()
    console.expect_http(422)  # the API's validation errors, shown next to the fields
    streams = []
    page.on("request", lambda r: streams.append(r.url) if "/events/stream" in r.url else None)
    page.goto(up.url + "/")
    page.get_by_role("button", name="Start run").click()
    dialog = page.locator("#start-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Workflow").select_option("essay")
    submit = dialog.get_by_role("button", name="Start run")

    submit.click()
    topic, topic_err = page.locator("#in-essay-topic"), page.locator("#in-essay-topic-err")
    expect(topic_err).to_contain_text("'topic' is required")
    expect(topic).to_have_attribute("aria-invalid", "true")
    expect(topic).to_be_focused()

    topic.fill("tides")
    page.locator("#in-essay-words").fill("10")
    submit.click()
    expect(page.locator("#in-essay-words-err")).to_contain_text("must be ≥ 40")
    expect(topic_err).to_be_hidden()

    page.locator("#in-essay-words").fill("120")
    page.locator("#in-essay-pace").fill("0.5")
    submit.click()
    page.wait_for_url(re.compile(r"/runs/run_\w+$"))
    run_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__marker = 42")  # survives only if the page never reloads

    timeline = page.locator("#timeline-list")
    expect(timeline).to_contain_text("score", timeout=20_000)
    seen_early = timeline.locator("li.ev").count()
    expect(timeline).to_contain_text("run.succeeded", timeout=30_000)
    assert timeline.locator("li.ev").count() > seen_early
    expect(page.locator("#run-status")).to_contain_text("Passed 1.00")
    expect(page.locator("#r-progress .attempt")).to_have_count(3)
    expect(page.locator("svg.chart circle")).to_have_count(3)
    assert page.evaluate("window.__marker") == 42, "the page reloaded"
    assert streams, "the timeline did not use the event stream"
    assert up.run(run_id)["inputs"] == {"topic": "tides", "words": 120, "pace": 0.5}

    # Artifacts open inline: Markdown rendered, JSON pretty with line numbers, diffs.
    first = page.locator("#r-artifacts details", has_text="draft.md · attempt 1")
    first.locator("summary").click()
    expect(first.locator(".markdown h1")).to_have_text("On tides")
    first.get_by_role("link", name="diff with attempt 3").click()
    expect(first.locator(".diff .d-add").first).to_be_visible()
    expect(first.locator(".diff-summary")).to_contain_text("added")
    evaluation = page.locator("#r-artifacts details", has_text="evaluation.json · attempt 1")
    evaluation.locator("summary").click()
    expect(evaluation.locator("pre.numbered")).to_contain_text('"score": 0.15')


def test_the_timeline_falls_back_to_polling_without_a_stream(up, page_factory):
    page, console = page_factory()
    console.expect_http(404)
    page.route("**/events/stream*", lambda route: route.fulfill(status=404, body="{}"))
    run = up.start_run("essay", {"topic": "polls", "pace": 0.5})
    page.goto(f"{up.url}/runs/{run['id']}")
    expect(page.locator("#tl-mode")).to_have_text("live (polling)")
    page.evaluate("window.__marker = 7")
    expect(page.locator("#timeline-list")).to_contain_text("run.succeeded", timeout=30_000)
    expect(page.locator("#run-status")).to_contain_text("Passed")
    assert page.evaluate("window.__marker") == 7


def test_lists_update_and_a_running_run_can_be_cancelled(up, page_factory):
    page, _ = page_factory()
    sleepy = up.start_run("sleepy", {"seconds": 120})
    up.wait_status(sleepy["id"], ("running",))
    page.goto(up.url + "/")
    expect(page.locator(f"#row-{sleepy['id']}")).to_contain_text("Running")
    page.evaluate("window.__marker = 1")
    parked = up.start_run("essay", {"topic": "later"}, queue="parked")
    expect(page.locator(f"#row-{parked['id']}")).to_contain_text("Queued", timeout=15_000)
    assert page.evaluate("window.__marker") == 1

    page.locator(f"#row-{sleepy['id']} a").click()
    page.wait_for_url(f"**/runs/{sleepy['id']}")
    expect(page.locator("#timeline-list")).to_contain_text("still working")
    page.locator('button[data-action="cancel"]').click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("terminates a running command")
    dialog.get_by_label("Reason").fill("changed my mind")
    dialog.get_by_role("button", name="Cancel run").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#run-status")).to_contain_text("Cancelled", timeout=20_000)
    expect(page.locator('button[data-action="cancel"]')).to_be_disabled()
    expect(page.locator('button[data-action="retry"]')).to_be_enabled()
    expect(page.locator("#timeline-list")).to_contain_text("run.cancelled")
    assert up.run(sleepy["id"])["cancel_reason"] == "changed my mind"
    with up.client() as c:
        c.post(f"/api/runs/{parked['id']}/cancel")


def test_a_refused_action_shows_the_api_error(up, page_factory):
    page, console = page_factory()
    console.expect_http(409)
    run = up.start_run("essay", {"topic": "x"}, queue="parked")
    page.clock.install()  # frozen timers: the page keeps showing the run as queued
    page.goto(f"{up.url}/runs/{run['id']}")
    with up.client() as c:
        assert c.post(f"/api/runs/{run['id']}/cancel").status_code == 202
    page.locator('button[data-action="cancel"]').click()
    dialog = page.locator("#confirm")
    expect(dialog).to_contain_text("no runner will pick it up")
    dialog.get_by_role("button", name="Cancel run").click()
    expect(page.locator("#confirm-error")).to_contain_text(f"run {run['id']} is already cancelled")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Keep as is").click()
    expect(dialog).to_be_hidden()


def test_a_stalled_run_and_a_stale_runner(tmp_path, page_factory):
    stack = start_api_stack(tmp_path)
    runner = Proc(["runner", "--no-reaper", "--concurrency", "1"], stack.env,
                  tmp_path / "runner.log", cwd=str(tmp_path))  # fmt: skip
    try:
        run = stack.start_run("essay", {"topic": "x", "pace": 30})
        stack.wait_status(run["id"], ("running",))
        with stack.client() as c:
            (info,) = c.get("/api/runners").json()["runners"]
        runner.send(signal.SIGSTOP)

        page, _ = page_factory()
        page.goto(f"{stack.url}/runs/{run['id']}")
        warning = page.locator("#stalled-warning")
        expect(warning).to_be_visible(timeout=20_000)
        expect(warning).to_contain_text("no heartbeat for")
        expect(warning).to_contain_text(info["id"])
        expect(warning).to_contain_text(f"pid {runner.pid}")
        expect(page.locator("#run-status")).to_contain_text("Stalled")

        page.goto(f"{stack.url}/runners")
        row = page.locator(f"#runner-{info['id']}")
        expect(row.locator(".health-text")).to_have_text("stale", timeout=20_000)
        row.get_by_role("button", name="Deregister").click()
        dialog = page.locator("#confirm")
        expect(dialog).to_contain_text(f"Deregister runner {info['id']}?")
        dialog.get_by_label("Reason").fill("host retired")  # DELETE: sent in the query
        dialog.get_by_role("button", name="Deregister").click()
        # A runner already past the stall threshold is marked stopped at once (it cannot drain).
        expect(row.locator(".health-text")).to_have_text("stopped")
        expect(row.get_by_role("button", name="Deregister")).to_be_disabled()
        with stack.client() as c:
            (row,) = [a for a in c.get("/api/audit").json()["audit"]
                      if a["action"] == "runner.deregister"]  # fmt: skip
        assert row["reason"] == "host retired"
    finally:
        runner.send(signal.SIGKILL)
        runner.stop()
        stack.stop()


def test_user_content_is_escaped_everywhere(up, page_factory):
    page, _ = page_factory()
    essay = up.start_run("essay", {"topic": XSS, "pace": 0})
    release = up.start_run("release", {"version": XSS})
    for run in (essay, release):
        up.wait_status(run["id"], ("succeeded", "failed"))
    arts = {a["filename"]: a for r in (essay, release) for a in up.artifacts(r["id"])}
    pages = [
        "/",
        "/?q=" + httpx.QueryParams({"q": XSS})["q"],
        f"/runs/{essay['id']}",
        f"/runs/{release['id']}",
        f"/runs/{essay['id']}/artifacts/{arts['draft.md']['id']}",
        f"/runs/{release['id']}/artifacts/{arts['build-info.json']['id']}",
        f"/runs/{release['id']}/artifacts/{arts['index.md']['id']}",
        "/workflows",
        "/runners",
    ]
    for path in pages:
        resp = page.goto(up.url + path)
        assert "script-src 'self'" in resp.headers["content-security-policy"]
        if path.startswith(f"/runs/{essay['id']}") and "artifacts" not in path:
            for d in page.locator("#r-artifacts details").all():
                d.locator("summary").click()
            expect(page.locator("#r-artifacts .markdown h1").first).to_contain_text("<script>")
            expect(page.locator("#inputs")).to_contain_text(XSS)
            expect(page.locator("#timeline-list")).to_contain_text("<script>window.__xss=1")
        if path.startswith(f"/runs/{release['id']}") and "artifacts" not in path:
            for d in page.locator("#r-artifacts details").all():
                d.locator("summary").click()
            expect(page.locator("#r-artifacts pre.numbered").first).to_contain_text("<script>")
        assert page.evaluate("window.__xss") is None, path
        assert page.locator("img[src='x']").count() == 0, path
        assert page.locator("script").count() == 1, path
    page.goto(up.url + "/")
    expect(page.locator(f"#row-{essay['id']}")).to_contain_text("<script>")


def test_narrow_screen_and_dark_theme(up, page_factory):
    loop = up.start_run("essay", {"topic": "a rather long topic for a narrow screen", "pace": 0})
    graph = up.start_run("release", {"break_docs": True})
    for run in (loop, graph):
        up.wait_status(run["id"], ("succeeded", "failed"))
    art = up.artifacts(loop["id"])[0]
    page, _ = page_factory(viewport={"width": 375, "height": 740}, color_scheme="dark")
    for path in ("/", f"/runs/{loop['id']}", f"/runs/{graph['id']}", "/runners", "/workflows",
                 f"/runs/{loop['id']}/artifacts/{art['id']}"):  # fmt: skip
        page.goto(up.url + path)
        page.wait_for_function("window.loopdeck && window.loopdeck.ready")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} is {overflow}px wider than a 375px screen"
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert sum(int(v) for v in re.findall(r"\d+", background)[:3]) < 150, background
    page.goto(up.url + "/")
    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("document.activeElement.className") == "skip"
    page.get_by_role("button", name="Start run").click()
    box = page.locator("#start-dialog").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 375, box

"""The dashboard joined with the control plane, over a real (threaded uvicorn) server: with API
tokens every page and live region needs one (sign-in page, cookie, roles on the buttons);
the run page shows gates with their prompt, held re-runs, the config diff and the audit log."""

import logging
import re

import pytest
from starlette.routing import Route

from api.app import create_app
from api.auth import PUBLIC
from api.dashboard.session import PUBLIC_PAGES, safe_next
from shared.settings import Settings
from shared.workflows import load_text

from ..control_support import CONTROL_WORKFLOWS, SECRETS, TOKENS, bearer, settled

HTML = {"Accept": "text/html,application/xhtml+xml"}
LIVE = {"X-Loopdeck-Live": "1", "Accept": "application/json"}
FRAGMENT = {"X-Loopdeck-Fragment": "1"}

APP = create_app(Settings(database_url="sqlite:////nonexistent/never-opened.db",
                          api_tokens=TOKENS))  # fmt: skip
OUTSIDE_API = [r for r in APP.routes if isinstance(r, Route) and not r.path.startswith("/api")
               and r.path not in PUBLIC_PAGES]  # fmt: skip
PAGES = [r for r in OUTSIDE_API if getattr(r.endpoint, "loopdeck_page_guard", False)]


def _signed_in(client, role):
    client.cookies.set("loopdeck_token", SECRETS[role])
    return client


def _buttons(html):
    """data-action → disabled reason (None when enabled), in page order."""
    out = {}
    for attrs in re.findall(r"<button ([^>]*data-action=[^>]*)>", html):
        key = re.search(r'data-action="([^"]+)"', attrs).group(1)
        reason = re.search(r'title="Unavailable: ([^"]*)"', attrs)
        out[key] = reason.group(1).replace("&#39;", "'") if reason else None
    return out


def test_every_page_is_guarded():
    # Outside /api only the sign-in pages and static files are public: the dashboard's pages
    # have the page guard; anything else there (e.g. a metrics endpoint) the API's guard.
    for route in OUTSIDE_API:
        page_guard = getattr(route.endpoint, "loopdeck_page_guard", False)
        assert page_guard or getattr(route.endpoint, "loopdeck_access", PUBLIC) != PUBLIC, route
    assert {r.path for r in PAGES} == {
        "/",
        "/runs/{run_id}",
        "/runs/{run_id}/artifacts/{artifact_id}",
        "/runners",
        "/workflows",
    }
    assert all(getattr(r.endpoint, "loopdeck_page_guard", False) for r in PAGES)


def test_pages_and_live_regions_need_a_token(tapi, cstore):
    run, _ = cstore.create_run("fanout", {}, queue="parked")
    paths = [re.sub(r"\{run_id\}", run["id"], r.path).replace("{artifact_id}", "art_nope")
             for r in PAGES]  # fmt: skip
    for path in paths:
        away = tapi.get(path, params={"q": "x"} if path == "/" else None, headers=HTML)
        assert away.status_code == 303, (path, away.text)
        where = away.headers["location"]
        assert where.startswith("/signin?next=") and "why" not in where, where
        assert safe_next(re.sub(r"%2F", "/", where.split("next=")[1].split("&")[0]))
        for headers in (LIVE, FRAGMENT, {}):
            refused = tapi.get(path, headers=headers)
            assert refused.status_code == 401, (path, headers)
            assert refused.json()["error"]["details"]["signin"].startswith("/signin?next=")
        tapi.cookies.set("loopdeck_token", "not-a-valid-token")
        stale = tapi.get(path, headers=HTML)
        assert stale.status_code == 303 and "why=expired" in stale.headers["location"]
        tapi.cookies.clear()
        for role in ("viewer", "admin"):
            seen = _signed_in(tapi, role).get(path, headers=HTML)
            assert seen.status_code in (200, 404) and "text/html" in seen.headers["content-type"]
            assert f'data-role="{role}"' in seen.text
            tapi.cookies.clear()
        # The script's live requests carry the token as a header.
        assert tapi.get(path, headers={**LIVE, **bearer("viewer")}).status_code in (200, 404)
    assert tapi.get("/static/dashboard.js").status_code == 200  # no data in static files
    assert tapi.get("/signin").status_code == 200


def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_clears_it(tapi, caplog):
    caplog.set_level(logging.DEBUG)
    form = tapi.get("/signin", params={"next": "/runners", "why": "tab"}, headers=HTML).text
    assert 'method="post" action="/signin"' in form and 'type="password"' in form
    assert 'value="/runners"' in form and "This tab does not hold your token" in form

    ok = tapi.post("/signin", data={"token": SECRETS["operator"], "next": "/runners"})
    assert ok.status_code == 303 and ok.headers["location"] == "/runners"
    cookie = ok.headers["set-cookie"]
    assert cookie.startswith(f"loopdeck_token={SECRETS['operator']};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie and "Max-Age" not in cookie  # http; a session cookie
    assert tapi.get("/runners", headers=HTML).status_code == 200  # the client kept the cookie
    # The cookie reads; it never authorizes a change (the script sends the Bearer header).
    run = tapi.post("/api/runs", json={"workflow": "fanout"}, headers=bearer("operator")).json()
    assert tapi.post(f"/api/runs/{run['id']}/cancel").status_code == 401

    out = tapi.post("/signout")
    assert out.status_code == 303 and "why=signed_out" in out.headers["location"]
    assert (
        'loopdeck_token=""' in out.headers["set-cookie"]
        and "Max-Age=0" in out.headers["set-cookie"]
    )
    assert tapi.get("/runners", headers=HTML).status_code == 303

    https = tapi.post("/signin", json={"token": SECRETS["viewer"]},
                      headers={"X-Forwarded-Proto": "https"})  # fmt: skip
    assert https.json() == {"name": "ana", "role": "viewer", "next": "/"}
    assert "Secure" in https.headers["set-cookie"]
    tapi.cookies.clear()

    bad = tapi.post("/signin", data={"token": "wrong-but-long", "next": "/"})
    assert bad.status_code == 401 and "That token is not valid." in bad.text
    assert "set-cookie" not in bad.headers
    assert tapi.post("/signin", json={"token": "wrong-but-long"}).json()["error"]["code"] == (
        "unauthorized"
    )
    assert tapi.post("/signin", json={"token": " "}).status_code == 422
    for evil in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        assert (
            tapi.post("/signin", json={"token": SECRETS["admin"]}, headers=evil).status_code == 403
        )
        assert tapi.post("/signout", headers=evil).status_code == 403
    same = {"Sec-Fetch-Site": "same-origin", "Origin": str(tapi.base_url).rstrip("/")}
    assert tapi.post("/signin", json={"token": SECRETS["admin"]}, headers=same).status_code == 200
    for target in ("//evil.example/x", "https://evil.example", "/\\evil", "/signin?next=/x"):
        resp = tapi.post("/signin", data={"token": SECRETS["admin"], "next": target})
        assert resp.headers["location"] == "/", target
    # No secret in any of the server's log lines (the test client's own debug logs, which
    # print response headers, are not the server's).
    server_lines = [r.getMessage() for r in caplog.records
                    if r.name.split(".")[0] in ("api", "shared", "uvicorn")]  # fmt: skip
    assert any("sign-in refused" in line for line in server_lines)
    for secret in SECRETS.values():
        assert not [line for line in server_lines if secret in line]


def test_sign_in_attempts_are_rate_limited(api_factory):
    api = api_factory(api_tokens=TOKENS, rate_limit=3)
    codes = [api.post("/signin", json={"token": f"guess-number-{i}"}).status_code
             for i in range(4)]  # fmt: skip
    assert codes == [401, 401, 401, 429]


def test_without_tokens_nothing_asks_for_one(capi):
    assert 'data-auth="none"' in capi.get("/", headers=HTML).text
    assert "needs no token" in capi.get("/signin").text
    assert capi.post("/signin", data={"next": "/runners"}).headers["location"] == "/runners"


def test_buttons_follow_the_role(tapi, cstore, in_process_runner):
    in_process_runner()
    run = tapi.post("/api/runs", json={"workflow": "fanout", "inputs": {"fail": "c"}},
                    headers=bearer("operator")).json()  # fmt: skip
    settled(cstore, run["id"])
    path = f"/runs/{run['id']}"

    viewer = _signed_in(tapi, "viewer").get(path, headers=HTML).text
    assert 'Signed in as <strong id="who-name">ana</strong>' in viewer
    buttons = _buttons(viewer)
    assert set(buttons) >= {"cancel", "retry", "restart", "rerun", "reset"}
    assert all(buttons.values()), buttons  # every action disabled, with the reason
    assert buttons["retry"] == "needs the operator role (ana is viewer)"
    runs = tapi.get("/", headers=HTML).text
    assert 'id="start-open" aria-haspopup="dialog" disabled' in runs
    tapi.cookies.clear()

    operator = _buttons(_signed_in(tapi, "operator").get(path, headers=HTML).text)
    assert operator["rerun"] is None and operator["restart"] is None
    assert operator["reset"] == "needs the admin role (otto is operator)"
    assert operator["cancel"] == "the run is already failed"  # state, not role
    tapi.cookies.clear()
    # The live regions (the script: Bearer header) follow the same rules.
    live = tapi.get(path, headers={**LIVE, **bearer("admin")}).json()["html"]
    assert _buttons(live)["reset"] is None


def test_run_page_shows_gates_held_reruns_config_diff_and_audit(capi, cstore, in_process_runner):
    in_process_runner()
    gated = capi.post("/api/runs", json={"workflow": "gated"}).json()
    settled(cstore, gated["id"], ("waiting",))
    page = capi.get(f"/runs/{gated['id']}", headers=HTML).text
    assert "Waiting for approval: publish" in page and "Publish the build?" in page
    assert "Waiting for approval</span>" in page  # the badge
    buttons = _buttons(page)
    assert buttons["approve"] is None and buttons["reject"] is None and "dispatch" not in buttons
    assert "approval.requested" in page and "run.waiting" in page
    capi.post(f"/api/runs/{gated['id']}/approve",
              json={"step": "publish", "decision": "approve", "comment": "ship <it>"})  # fmt: skip
    settled(cstore, gated["id"])
    done = capi.get(f"/runs/{gated['id']}", headers=HTML).text
    assert "approved by anonymous: ship &lt;it&gt;" in done and "approval.approved" in done
    assert (
        '<span class="ev-type">run.approve</span> <span class="audit-reason">“ship &lt;it&gt;”'
        in done
    )

    failed = capi.post("/api/runs", json={"workflow": "fanout", "inputs": {"fail": "c"}}).json()
    settled(cstore, failed["id"])
    held = capi.post(f"/api/runs/{failed['id']}/rerun",
                     json={"reason": "disk full", "dispatch": False}).json()  # fmt: skip
    assert held["status"] == "waiting"
    page = capi.get(f"/runs/{failed['id']}", headers=HTML).text
    assert "Held</span>" in page and 'id="held-notice"' in page
    assert _buttons(page)["dispatch"] is None
    assert "run.rerun_requested" in page and "task.rerun_reset" in page and "run.held" in page
    assert "“disk full”" in page and "held" in page

    # Retry after the definition changed: the child shows what differs; a restart: nothing.
    cstore.publish_workflows(load_text(CONTROL_WORKFLOWS.replace(
        'e: {call: "tests.control_steps:step", needs: [c]}',
        'e: {call: "tests.control_steps:step", needs: [c], retries: 2}')), "tests")  # fmt: skip
    capi.post(f"/api/runs/{failed['id']}/cancel")
    retried = capi.post(f"/api/runs/{failed['id']}/retry", json={"reason": "new def"}).json()
    page = capi.get(f"/runs/{retried['id']}", headers=HTML).text
    assert "Definition compared with the parent" in page
    assert re.search(r"<code>steps\.e\.retries</code></td><td[^>]*>changed</td>"
                     r"<td[^>]*><code>0</code></td><td[^>]*><code>2</code>", page)  # fmt: skip
    restarted = capi.post(f"/api/runs/{failed['id']}/restart").json()
    page = capi.get(f"/runs/{restarted['id']}", headers=HTML).text
    assert 'id="config-same"' in page and "a restart runs the parent" in page


@pytest.mark.parametrize("secret", ["semi;colon-secret", 'quote"and space secret'])
def test_secrets_with_cookie_special_characters_round_trip(api_factory, secret):
    api = api_factory(api_tokens=f"odd:{secret}:viewer")
    ok = api.post("/signin", json={"token": secret})
    assert ok.status_code == 200, ok.text
    assert api.get("/", headers=HTML).status_code == 200  # the cookie came back intact

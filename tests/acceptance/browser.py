"""Browser-test plumbing: the distribution's Chromium driven by Python playwright, against real
`loopdeck` processes. Never `playwright install`: the browser comes from apt (scripts/
ensure-chromium). Without Chromium the browser tests skip locally and fail in CI."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..helpers import EXAMPLES, Proc, base_env, free_port, wait_for

CHROMIUM = os.environ.get("LOOPDECK_CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
]
TERMINAL = ("succeeded", "failed", "cancelled")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        _unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing (pip install -e '.[test]')")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Stack:
    """A running API (and maybe runners) on a fresh SQLite file."""

    url: str
    db_url: str
    env: dict[str, str]
    cwd: Path
    procs: list[Proc] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # e.g. a Bearer token for the API

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, headers=self.headers)

    def start_run(self, workflow: str, inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
        with self.client() as c:
            resp = c.post("/api/runs", json={"workflow": workflow, "inputs": inputs, **extra})
            assert resp.status_code == 201, resp.text
            return resp.json()

    def run(self, run_id: str) -> dict[str, Any]:
        with self.client() as c:
            return c.get(f"/api/runs/{run_id}").json()

    def wait_status(self, run_id: str, statuses: tuple[str, ...], timeout: float = 30) -> dict:
        return wait_for(
            lambda: (r := self.run(run_id))["status"] in statuses and r, timeout,
            what=f"run {run_id} to be {'/'.join(statuses)}",
        )  # fmt: skip

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        with self.client() as c:
            return c.get(f"/api/runs/{run_id}/artifacts").json()["artifacts"]

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop(timeout=20)


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/api/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_up_stack(
    tmp: Path, *args: str, headers: dict[str, str] | None = None, **env_extra: str
) -> Stack:
    """`loopdeck up [ARGS]` (API + dashboard, a runner, the reaper) in `tmp` on a free port;
    `headers` go with the test's own API requests (a Bearer token when tokens are set)."""
    port = free_port()
    db_url = f"sqlite:///{tmp / 'loopdeck.db'}"
    env = base_env(db_url, **env_extra)
    stack = Stack(f"http://127.0.0.1:{port}", db_url, env, tmp, headers=dict(headers or {}))
    stack.procs.append(Proc(["up", "--port", str(port), *args], env, tmp / "up.log",
                            cwd=str(tmp)))  # fmt: skip
    try:
        wait_for(lambda: healthy(stack.url), 30, 0.1, what="loopdeck up to answer")
        with stack.client() as c:
            wait_for(lambda: c.get("/api/runners").json()["runners"], 20, 0.1,
                     what="the embedded runner to register")  # fmt: skip
    except AssertionError:
        stack.stop()
        raise AssertionError(stack.procs[0].output()[-3000:]) from None
    return stack


def start_api_stack(tmp: Path, **env_extra: str) -> Stack:
    """`loopdeck api` alone (no runner, so no reaper): runners are added by the test."""
    port = free_port()
    db_url = f"sqlite:///{tmp / 'loopdeck.db'}"
    env = base_env(db_url, LOOPDECK_CONFIG=EXAMPLES, **env_extra)
    stack = Stack(f"http://127.0.0.1:{port}", db_url, env, tmp)
    from ..helpers import cli

    for args in (["db", "upgrade"], ["workflows", "publish", EXAMPLES]):
        done = cli(args, env, cwd=str(tmp))
        assert done.returncode == 0, done.stderr
    stack.procs.append(Proc(["api", "--port", str(port)], env, tmp / "api.log", cwd=str(tmp)))
    wait_for(lambda: healthy(stack.url), 30, 0.1, what="loopdeck api to answer")
    return stack


# Chrome reports every HTTP error a fetch() gets as a console error; tests that provoke one on
# purpose (a 422 from the start form, a 409 from a refused action) list the status they expect.
_HTTP_ERROR = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


class ConsoleWatch:
    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.expected: set[int] = set()
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _console(self, msg: Any) -> None:
        if msg.type not in ("error", "warning"):
            return
        m = _HTTP_ERROR.search(msg.text)
        if m and int(m.group(1)) in self.expected:
            return
        self.errors.append(f"{msg.type}: {msg.text} ({msg.location.get('url', '')})")

    def expect_http(self, *statuses: int) -> None:
        self.expected.update(statuses)

    def check(self) -> None:
        assert not self.errors, "console errors:\n" + "\n".join(self.errors)


@pytest.fixture
def page_factory(browser: Any) -> Iterator[Any]:
    """new_page(**context options) → (page, ConsoleWatch); every page must end with no console
    errors."""
    opened: list[tuple[Any, ConsoleWatch]] = []

    def new_page(**options: Any) -> tuple[Any, ConsoleWatch]:
        options.setdefault("viewport", {"width": 1280, "height": 900})
        context = browser.new_context(**options)
        context.set_default_timeout(15_000)
        page = context.new_page()
        watch = ConsoleWatch(page)
        opened.append((page, watch))
        return page, watch

    yield new_page
    try:
        for _, watch in opened:
            watch.check()
    finally:
        for page, _ in opened:
            page.context.close()

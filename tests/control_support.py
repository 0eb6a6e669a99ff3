"""Fixtures of the control-plane tests (restart, reset, rerun, approvals, auth): their
workflows, an in-process runner, and API servers with and without tokens. Loaded from
tests/conftest.py as a pytest plugin."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.errors import LoopdeckError
from shared.settings import Settings
from shared.store import Store
from shared.workflows import load_text

from .helpers import ThreadedServer, http, wait_for

CONTROL_WORKFLOWS = """
workflows:
  fanout:
    inputs:
      fail: {type: string, default: ""}
      fix_file: {type: string, default: ""}
    steps:
      a: {call: "tests.control_steps:step"}
      b: {call: "tests.control_steps:step", needs: [a]}
      c: {call: "tests.control_steps:step", needs: [a]}
      d: {call: "tests.control_steps:step", needs: [b, c]}
      e: {call: "tests.control_steps:step", needs: [c]}
  gated:
    inputs:
      fail: {type: string, default: ""}
    steps:
      build: {call: "tests.control_steps:step"}
      lint: {call: "tests.control_steps:step", needs: [build]}
      publish: {call: "tests.control_steps:step", needs: [build],
                approval: {prompt: "Publish the build?"}}
      announce: {call: "tests.control_steps:step", needs: [publish]}
  gated_slow:
    inputs:
      release_file: {type: string, required: true}
    steps:
      build: {call: "tests.control_steps:step"}
      lint: {call: "tests.control_steps:hold", needs: [build]}
      publish: {call: "tests.control_steps:step", needs: [build], approval: {prompt: "Ship?"}}
  held:
    inputs:
      release_file: {type: string, required: true}
    steps:
      first: {call: "tests.control_steps:hold", timeout: 300}
      second: {call: "tests.control_steps:step", needs: [first]}
  scored:
    inputs:
      scores: {type: array, default: [0.2, 0.5, 0.9]}
      fail_eval: {type: integer, default: 0}
      fix_file: {type: string, default: ""}
    loop:
      max_attempts: 3
      pass_threshold: 0.8
      produce: {call: "tests.control_steps:produce"}
      evaluate: {call: "tests.control_steps:evaluate"}
"""
TERMINAL = ("succeeded", "failed", "cancelled")
TOKENS = "ana:viewer-secret-1:viewer,otto:operator-secret-1:operator,root:admin-secret-1:admin"
SECRETS = {"viewer": "viewer-secret-1", "operator": "operator-secret-1", "admin": "admin-secret-1"}


@pytest.fixture
def control_file(tmp_path: Path) -> str:
    path = tmp_path / "control-workflows.yaml"
    path.write_text(CONTROL_WORKFLOWS)
    return str(path)


@pytest.fixture
def cstore(store: Store) -> Store:
    """The test store with the control workflows published as well."""
    store.publish_workflows(load_text(CONTROL_WORKFLOWS), "tests")
    return store


@pytest.fixture
def in_process_runner(
    db_url: str, cstore: Store, control_file: str
) -> Iterator[Callable[..., Any]]:
    """start() → a Runner serving the control workflows in a thread of this process."""
    from runner.daemon import Runner, RunnerOptions

    started: list[tuple[Any, threading.Thread]] = []

    def start(**options: Any) -> Any:
        settings = Settings(
            database_url=db_url, config_files=(control_file,), heartbeat_interval=0.2,
            stall_after=2, poll_interval=0.05, kill_grace=1, shutdown_grace=2,
        )  # fmt: skip
        runner = Runner(settings, RunnerOptions(**options))
        runner.start()
        result: dict[str, Any] = {}

        def serve() -> None:
            try:
                result["code"] = runner.serve(install_signals=False)
            except LoopdeckError as exc:
                result["error"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        started.append((runner, thread))
        runner.result = result
        runner.thread = thread
        return runner

    yield start
    for runner, thread in started:
        runner.request_stop("test over")
        thread.join(20)
        runner.store.dispose()


def settled(store: Store, run_id: str, statuses: tuple[str, ...] = TERMINAL,
            timeout: float = 30) -> dict[str, Any]:  # fmt: skip
    """Wait until the run is in one of `statuses`; return its detail."""
    return wait_for(
        lambda: (r := store.get_run(run_id))["status"] in statuses and r, timeout,
        what=f"run {run_id} to be {'/'.join(statuses)}",
    )  # fmt: skip


def statuses(run: dict[str, Any]) -> dict[str, str]:
    return {t["step"]: t["status"] for t in run["tasks"]}


def event_types(store: Store, run_id: str) -> list[str]:
    return [e["type"] for e in store.list_events(run_id, limit=500)["events"]]


def starts(store: Store, run_id: str) -> dict[str, int]:
    """How many times each stage was started."""
    counts: dict[str, int] = {}
    for e in store.list_events(run_id, limit=500)["events"]:
        if e["type"] == "stage.started":
            counts[e["stage"]] = counts.get(e["stage"], 0) + 1
    return counts


@pytest.fixture
def api_factory(db_url: str, cstore: Store) -> Iterator[Callable[..., Any]]:
    """api(**settings) → an httpx client of a real (threaded uvicorn) API server."""
    from contextlib import ExitStack

    from api.app import create_app

    with ExitStack() as stack:

        def make(**overrides: Any) -> Any:
            settings = Settings(
                database_url=db_url, stall_after=3, heartbeat_interval=1, cron_secret="cron-s3cret",
                **overrides,
            )  # fmt: skip
            server = stack.enter_context(ThreadedServer(create_app(settings)))
            return stack.enter_context(http(server.url))

        yield make


@pytest.fixture
def capi(api_factory: Callable[..., Any]) -> Any:
    """An API without tokens (open, as on loopback)."""
    return api_factory()


@pytest.fixture
def tapi(api_factory: Callable[..., Any]) -> Any:
    """An API with viewer, operator and admin tokens."""
    return api_factory(api_tokens=TOKENS)


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[role]}"}

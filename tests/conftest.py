"""Shared fixtures: a fresh database per test, stores, real runner processes and servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import Settings
from shared.store import Store
from shared.workflows import load_files, load_text

from .helpers import EXAMPLES, Proc, base_env

# Fixtures for a fresh database per test on every backend and the `all_backends` marker
# (issue 3), and the control-plane tests' fixtures (issue 4).
pytest_plugins = ["tests.backends", "tests.control_support"]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'loopdeck.db'}"


@pytest.fixture
def db_url(fresh_db: str) -> str:
    """The database URL of a fresh, upgraded database: SQLite, or every backend in tests
    marked `all_backends` (tests/backends.py)."""
    return fresh_db


def make_store(url: str, **kw: object) -> Store:
    settings = Settings(database_url=url)
    return Store(
        Store.from_settings(settings).engine,
        stall_after_ms=int(kw.pop("stall_after_ms", 3000)),  # type: ignore[call-overload]
        max_claims=int(kw.pop("max_claims", 3)),  # type: ignore[call-overload]
        retry_seconds=float(kw.pop("retry_seconds", 5.0)),  # type: ignore[arg-type]
    )


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = make_store(db_url)
    s.publish_workflows(load_files([EXAMPLES]), "tests")
    yield s
    s.dispose()


TEST_WORKFLOWS = """
workflows:
  noop:
    steps:
      only: {call: "tests.workflows:noop"}
  graph:
    inputs:
      fail: {type: string, default: ""}
    steps:
      a: {call: "tests.workflows:record"}
      b: {call: "tests.workflows:record", needs: [a]}
      c: {call: "tests.workflows:record", needs: [a]}
      d: {call: "tests.workflows:record", needs: [b, c]}
      e: {call: "tests.workflows:record", needs: [c]}
  loop:
    inputs:
      scores: {type: array, default: [0.2, 0.5, 0.9]}
    loop:
      max_attempts: 3
      pass_threshold: 0.8
      produce: {call: "tests.workflows:produce"}
      evaluate: {call: "tests.workflows:evaluate"}
      revise: {call: "tests.workflows:revise"}
  slow_loop:
    inputs:
      seconds: {type: number, default: 30}
    loop:
      max_attempts: 3
      pass_threshold: 0.8
      produce: {call: "tests.workflows:produce"}
      evaluate: {call: "tests.workflows:evaluate_slowly_on_2"}
      revise: {call: "tests.workflows:revise"}
  timeout_call:
    steps:
      only: {call: "tests.workflows:wait", timeout: 0.3}
  slow_call:
    inputs:
      seconds: {type: number, default: 30}
    steps:
      first: {call: "tests.workflows:wait", timeout: 120}
      second: {call: "tests.workflows:noop", needs: [first]}
"""


@pytest.fixture
def test_workflows_file(tmp_path: Path) -> str:
    path = tmp_path / "test-workflows.yaml"
    path.write_text(TEST_WORKFLOWS)
    return str(path)


@pytest.fixture
def publish_test_workflows(store: Store) -> Store:
    store.publish_workflows(load_text(TEST_WORKFLOWS), "tests")
    return store


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    """Collects started processes and stops every one of them after the test."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop(timeout=20)


@pytest.fixture
def env(db_url: str) -> dict[str, str]:
    return base_env(db_url)

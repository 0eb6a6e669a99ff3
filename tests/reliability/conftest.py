"""Fixtures of the reliability battery: the oracle, and a summary of its figures at the end."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.store import Store

from ..conftest import make_store
from .harness import Fleet, Timings, timings_for
from .oracle import Verdict, check

_RESULTS: list[Verdict] = []


@pytest.fixture
def timings(backend: str) -> Timings:
    return timings_for(backend)


@pytest.fixture
def bstore(db_url: str, timings: Timings) -> Iterator[Store]:
    """A store on the scenario's database, with the battery's stall threshold, the battery's
    workflows published."""
    from shared.workflows import load_files

    from .harness import WORKFLOWS

    store = make_store(db_url, stall_after_ms=int(timings.stall_after * 1000))
    store.publish_workflows(load_files([WORKFLOWS]), "battery")
    yield store
    store.dispose()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def fleet(
    db_url: str, tmp_path: Path, timings: Timings, request: pytest.FixtureRequest
) -> Iterator[Fleet]:
    """The scenario's runners; when the scenario fails, their logs go into its report."""
    f = Fleet(db_url, tmp_path, timings)
    yield f
    f.stop_all()
    call = getattr(request.node, "rep_call", None)
    if call is not None and call.failed:
        call.sections.append(("runner logs", f.logs()))


@pytest.fixture
def oracle(backend: str, request: pytest.FixtureRequest) -> Callable[..., Verdict]:
    """`oracle(store, expected_ids, **extra)`: judge the database, record the figures, and fail
    the test on any lost, double-claimed, duplicated, stuck or stale-written run."""
    scenario = request.node.originalname.removeprefix("test_")

    def judge(store: Store, expected: Any = None, *, may_stay_queued: Any = (), **extra: Any
              ) -> Verdict:  # fmt: skip
        verdict = check(store, scenario, backend, expected, may_stay_queued=may_stay_queued)
        verdict.extra.update(extra)
        _RESULTS.append(verdict)
        out = os.environ.get("LOOPDECK_ORACLE_OUT")
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps(verdict.summary(), default=str) + "\n")
        print(verdict.line())
        assert verdict.ok, f"{verdict.line()}\n{verdict.details()}"
        return verdict

    return judge


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RESULTS:
        return
    terminalreporter.section("reliability oracle")
    for verdict in _RESULTS:
        terminalreporter.write_line(verdict.line())

"""A thread's pinned connection (Database.pinned_connection, the runner's dispatcher) and the
transaction retry's first attempt, which runs outside tenacity: on every backend, with real
connections and, on PostgreSQL, a server-side kill of the pinned connection."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text

from shared.errors import DatabaseUnavailable
from shared.schema import runs
from shared.store import Store

pytestmark = pytest.mark.all_backends


def _dbapi(conn: Any) -> Any:
    return conn.connection.driver_connection


def test_a_pinned_thread_reuses_one_connection_and_sees_other_commits(store):
    seen: list[Any] = []
    with store.pinned_connection():
        for _ in range(3):
            store.write(lambda conn: seen.append(_dbapi(conn)))
        store.read(lambda conn: seen.append(_dbapi(conn)))
        # Another thread (the pool) commits a run: the pinned connection's next transaction
        # sees it (no snapshot is held between transactions).
        made: list[str] = []

        def create() -> None:
            made.append(store.create_run("essay", {"topic": "x"})[0]["id"])

        other = threading.Thread(target=create)
        other.start()
        other.join(30)
        found = store.read(lambda conn: conn.execute(select(runs.c.id)).scalars().all())
    assert len({id(c) for c in seen}) == 1
    assert found == made


def test_a_failed_transaction_on_the_pinned_connection_rolls_back_and_it_goes_on(store):
    class Undo(Exception):
        pass

    def fails(conn):
        conn.execute(runs.delete())  # must not land
        raise Undo

    run, _ = store.create_run("essay", {"topic": "kept"})
    with store.pinned_connection():
        with pytest.raises(Undo):
            store.write(fails)
        ids = store.read(lambda conn: conn.execute(select(runs.c.id)).scalars().all())
        again, _ = store.create_run("essay", {"topic": "after"})
    assert ids == [run["id"]]
    assert store.get_run(again["id"])["status"] == "queued"


def _kill_the_pinned_backend_then_write(store: Store) -> None:
    """Kill the pinned connection's server process; the next write must land on a new one."""
    with store.pinned_connection():
        pid = store.read(lambda conn: conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        with store.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        run, _ = store.create_run("essay", {"topic": "after the kill"})
        new_pid = store.read(
            lambda conn: conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        )
    assert new_pid != pid
    assert store.get_run(run["id"])["inputs"]["topic"] == "after the kill"


@pytest.mark.backends("postgres")
def test_a_pinned_connection_the_server_killed_is_replaced_by_the_retry(store):
    _kill_the_pinned_backend_then_write(store)


@pytest.mark.backends("postgres")
def test_a_killed_pinned_connection_is_replaced_even_when_the_driver_misses_the_disconnect(
    store, monkeypatch
):
    # psycopg reports a backend killed while a statement is being sent as "sending query
    # failed", without a SQLSTATE, and SQLAlchemy invalidates a connection only when its
    # dialect says the error was a disconnect. With that check answering no, the pinned
    # connection must still be given up, or every retry would fail on it until the budget.
    monkeypatch.setattr(store.engine.dialect, "is_disconnect", lambda *a, **kw: False)
    _kill_the_pinned_backend_then_write(store)


def test_an_error_that_leaves_the_connection_sound_keeps_the_pinned_one(store):
    run, _ = store.create_run("essay", {"topic": "x"}, idempotency_key="k")
    seen: list[Any] = []
    with store.pinned_connection():
        store.read(lambda conn: seen.append(_dbapi(conn)))
        with pytest.raises(sa_exc.IntegrityError):
            store.write(lambda conn: conn.execute(runs.insert().values(id=run["id"])))
        if not store.is_libsql:  # over HTTP, an error does not say what it was
            with pytest.raises(sa_exc.DBAPIError, match="no_such_table"):
                store.read(lambda conn: conn.execute(text("SELECT * FROM no_such_table")))
        store.read(lambda conn: seen.append(_dbapi(conn)))
    assert seen[0] is seen[1]


class FlakyStore(Store):
    """Write transactions fail with a lost connection while `failures` lasts."""

    def __init__(self, engine: Any, failures: int, **kw: Any) -> None:
        super().__init__(engine, **kw)
        self.failures = failures
        self.tries = 0

    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Any]:
        if write:
            self.tries += 1
            if self.failures:
                self.failures -= 1
                raise sa_exc.OperationalError(
                    "BEGIN", {}, ConnectionResetError("injected: connection lost"),
                    connection_invalidated=True,
                )  # fmt: skip
        with super()._transaction(write) as conn:
            yield conn


def test_a_transient_first_failure_is_retried_with_the_next_attempt_number(store, caplog):
    flaky = FlakyStore(store.engine, failures=2, retry_seconds=5.0)
    attempts: list[int] = []
    assert flaky.write_attempts(lambda conn, n: attempts.append(n) or "done") == "done"
    assert attempts == [3] and flaky.tries == 3
    logged = [r.getMessage() for r in caplog.records if "busy or unreachable" in r.getMessage()]
    assert [m.split("(attempt ")[1][0] for m in logged] == ["1", "2"]


def test_a_database_that_stays_down_is_unavailable_within_the_budget(store):
    flaky = FlakyStore(store.engine, failures=10_000, retry_seconds=0.4)
    with pytest.raises(DatabaseUnavailable, match="connection lost"):
        flaky.write(lambda conn: None)
    # The budget (0.4 s) allows the first try and a few backed-off retries, not hundreds.
    assert 2 <= flaky.tries <= 6
    # A budget smaller than the first backoff: one try, then the answer.
    flaky = FlakyStore(store.engine, failures=10_000, retry_seconds=0.01)
    with pytest.raises(DatabaseUnavailable):
        flaky.write(lambda conn: None)
    assert flaky.tries == 1


@pytest.mark.backends("sqlite", "postgres")
def test_the_pinned_connection_is_made_by_the_first_transaction_and_returned_at_the_end(store):
    """Entering pinned_connection connects nothing (a dispatcher starting while the database
    is unreachable gets the first transaction's retries, not a dead loop); the connection is
    checked out by the first transaction and back in the pool at the end."""
    pool = store.engine.pool
    before = pool.checkedout()
    with store.pinned_connection():
        assert pool.checkedout() == before
        store.read(lambda conn: conn.execute(select(runs.c.id)).all())
        store.read(lambda conn: conn.execute(select(runs.c.id)).all())
        assert pool.checkedout() == before + 1
    assert pool.checkedout() == before

"""What only remote libSQL has: our transport (kept-alive connection, timeout, fresh streams)
and its errors, against a real sqld per test."""

import signal
import time

import pytest
from sqlalchemy import text

import shared.dialects.libsql as libsql
from shared.errors import DatabaseUnavailable
from shared.settings import Settings
from shared.store import Store

from ..backends import Sqld, migrate
from ..helpers import wait_for


@pytest.fixture
def backend() -> str:
    return "libsql"


def test_the_engine_is_sqlite_sql_over_http(store):
    assert store.is_sqlite and store.is_libsql and not store.is_postgres
    assert store.engine.dialect.server_version_info >= (3, 35)
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_a_transaction_keeps_its_stream_even_when_streams_are_renewed(store, monkeypatch):
    # Renew the stream before every request made outside a transaction; a transaction's
    # statements must still share one stream, or BEGIN IMMEDIATE would lock nothing.
    monkeypatch.setattr(libsql, "STREAM_IDLE_SECONDS", 0.0)
    run, _ = store.create_run("essay", {"topic": "a"})
    (claimed,) = store.claim_runs("rnr_x", queues=["default"], workflows=["essay"], limit=1)
    assert claimed.id == run["id"]
    assert store.get_run(run["id"])["status"] == "running"


def test_one_http_connection_serves_many_statements(store):
    with store.engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        for _ in range(5):
            conn.execute(text("SELECT 1"))
        first = dbapi._session._http
        conn.execute(text("SELECT 2"))
        assert first is not None and dbapi._session._http is first


def test_a_stopped_server_is_database_unavailable_and_recovery_is_automatic(tmp_path, sqld_cache):
    server = Sqld(tmp_path / "sqld", sqld_cache).start()
    migrate(server.url)
    store = Store(
        Store.from_settings(Settings(database_url=server.url + "?timeout=1")).engine,
        retry_seconds=1.0,
    )
    try:
        store.list_runs()  # a pooled, kept-alive connection now exists
        server.signal(signal.SIGSTOP)  # alive but silent: only our timeout ends a request
        started = time.monotonic()
        try:
            with pytest.raises(DatabaseUnavailable):
                store.list_runs()
            assert time.monotonic() - started < 6
        finally:
            server.signal(signal.SIGCONT)
        wait_for(lambda: store.list_runs() is not None, 15, what="the server to answer again")
    finally:
        store.dispose()
        server.stop()


def test_refused_connections_are_transient(tmp_path, sqld_cache):
    server = Sqld(tmp_path / "gone", sqld_cache)
    url = server.url  # nothing listens there
    store = Store(Store.from_settings(Settings(database_url=url)).engine, retry_seconds=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="database unavailable"):
            store.list_runs()
        assert time.monotonic() - started < 5
    finally:
        store.dispose()

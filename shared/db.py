"""Engines and transactions: the database boundary.

Every store verb runs inside `Database.read` or `Database.write`. Those are the only places that
open transactions, and the only places that retry: transient driver errors (SQLite busy, a
dropped PostgreSQL connection, a serialization failure) are retried here with tenacity, for at
most `retry_seconds`, then surface as `DatabaseUnavailable`. IntegrityError is never retried.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from .checkpoint import SAFETY_NET_PAGES, WalCheckpointer
from .dialects import register as _register_dialects
from .errors import ConfigError, DatabaseUnavailable
from .settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
_register_dialects()

SQLITE_BUSY_TIMEOUT_MS = 10_000


def normalize_url(url: str) -> str:
    """Accept the URL spellings users paste and pick Loopdeck's driver for each.

    PostgreSQL → psycopg 3. libSQL: `libsql://HOST?authToken=…` (Turso's spelling; HTTPS, or
    plain HTTP with `tls=0`), `https://HOST` and `http://HOST:PORT` (a local sqld) → our
    `sqlite+libsql` dialect; `libsql:///PATH` and `file:PATH` are local files, i.e. SQLite.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        if url.startswith("file:"):
            return "sqlite:///" + url[len("file:") :]
        return url
    if scheme in ("postgres", "postgresql"):
        return "postgresql+psycopg://" + rest
    if scheme in ("libsql", "turso", "http", "https", "wss", "ws"):
        host, _, query = rest.partition("?")
        host = host.rstrip("/")
        if not host or host.startswith("/"):  # libsql:///path/to/file.db
            return "sqlite:///" + rest.split("?", 1)[0]
        params = [p for p in query.split("&") if p]
        secure = scheme in ("libsql", "turso", "https", "wss")
        kept = []
        for p in params:
            key, _, value = p.partition("=")
            if key == "tls":
                secure = value not in ("0", "false", "no")
            elif key != "secure":
                kept.append(p)
            else:
                secure = value.lower() not in ("0", "false", "no")
        kept.append(f"secure={'true' if secure else 'false'}")
        return f"sqlite+libsql://{host}/?" + "&".join(kept)
    return url


def dialect_of(url: str) -> str:
    return make_url(normalize_url(url)).get_backend_name()


RUNNER_SESSION_PREFIX = "loopdeck runner "


def runner_session_name(runner_id: str) -> str:
    """The PostgreSQL `application_name` of a runner's sessions: a reaper that finds the runner
    stalled can find, and end, a session of it stuck inside a transaction."""
    return RUNNER_SESSION_PREFIX + runner_id


def stuck_after_s(stall_after: float) -> float:
    """How long a session may sit inside one transaction without progress before the server
    (idle in transaction) or a reaper (stalled runner, mid-pipeline) ends it. Our transactions
    take milliseconds and never wait on anything outside the database."""
    return max(1.0, min(10.0, stall_after / 2))


def make_engine(
    url: str,
    settings: Settings | None = None,
    *,
    wait_seconds: float = 10.0,
    session_name: str = "loopdeck",
    background_checkpoint: bool = False,
) -> Engine:
    """An engine for `url`. `wait_seconds` caps how long one statement waits for a busy
    SQLite file (its busy handler) before the error goes up to the retry loop; `session_name`
    is PostgreSQL's application_name for its sessions; `background_checkpoint`: on a SQLite
    file, this process checkpoints the WAL in a thread of its own (checkpoint.py), so its
    connections leave it to that thread up to a safety net."""
    settings = settings or Settings()
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise ConfigError(f"LOOPDECK_DATABASE_URL {url!r} is not a database URL") from None
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite" and parsed.get_driver_name() == "libsql":
            return _libsql_engine(url, settings)
        if backend == "sqlite":
            return _sqlite_engine(
                url, parsed.database, settings, wait_seconds, background_checkpoint
            )
        if backend == "postgresql":
            return _postgres_engine(url, settings, session_name)
    except ImportError as exc:
        extra = "postgres" if backend == "postgresql" else "libsql"
        raise ConfigError(
            f"the driver for {parsed.drivername} is not installed ({exc}): "
            f"pip install 'loopdeck[{extra}]'"
        ) from None
    except sa_exc.ArgumentError as exc:
        raise ConfigError(f"LOOPDECK_DATABASE_URL: {exc}") from None
    raise ConfigError(
        f"unsupported database URL scheme {parsed.drivername!r}: "
        "use sqlite:///path.db, postgresql://… or libsql://…"
    )


def _begin_immediate_for_writes(engine: Engine) -> None:
    """SQLite and libSQL: writes start with BEGIN IMMEDIATE, taking the single write lock up
    front. A DEFERRED transaction that upgrades to a write fails with SQLITE_BUSY at once
    instead of waiting, and may have read a snapshot another writer has since changed."""

    raw = engine.dialect.driver == "pysqlite"

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get("loopdeck_write") else "BEGIN"
        if not raw:
            conn.exec_driver_sql(sql)
            return
        # Straight to sqlite3: every transaction starts here, and exec_driver_sql's execution
        # context cost more than the statement (an error still goes through SQLAlchemy).
        dbapi_conn: Any = conn.connection.driver_connection
        try:
            dbapi_conn.execute(sql)
        except sqlite3.Error as exc:
            conn._handle_dbapi_exception(exc, sql, (), None, None)  # noqa: SLF001
            raise


def _sqlite_engine(
    url: str,
    path: str | None,
    settings: Settings,
    wait_seconds: float,
    background_checkpoint: bool = False,
) -> Engine:
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        # Every pooled connection would see its own empty database.
        raise ConfigError("an in-memory SQLite database cannot be shared: give a file path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"the directory of the SQLite database does not exist: {directory}")
    busy_ms = int(min(SQLITE_BUSY_TIMEOUT_MS, wait_seconds * 1000))
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": busy_ms / 1000},
        poolclass=NullPool if settings.db_pool == "null" else None,
    )
    synchronous = settings.sqlite_synchronous

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Autocommit at the driver level: we issue BEGIN ourselves (SQLAlchemy's documented
        # recipe), because pysqlite's implicit BEGIN is DEFERRED.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        if background_checkpoint:
            cur.execute(f"PRAGMA wal_autocheckpoint={SAFETY_NET_PAGES}")
        cur.close()

    _begin_immediate_for_writes(engine)
    return engine


def _libsql_engine(url: str, settings: Settings) -> Engine:
    # The server owns journal mode, durability and foreign keys (sqld: WAL, NORMAL, ON), and
    # queues BEGIN IMMEDIATE behind the current writer for up to 5 s on its own.
    engine = create_engine(url, poolclass=NullPool if settings.db_pool == "null" else None)
    _begin_immediate_for_writes(engine)
    return engine


def _postgres_engine(url: str, settings: Settings, session_name: str) -> Engine:
    # A process frozen inside a transaction (SIGSTOP, a VM pause, a debugger) keeps its row
    # locks while its connection stays up, and the reaper would wait on them for as long:
    # the server ends such a session instead. Our transactions never idle between statements.
    # (Frozen halfway through sending a pipeline, the session is not idle but waiting for the
    # rest: no server timeout covers that; the reaper ends it, see end_stuck_sessions.)
    idle_ms = int(stuck_after_s(settings.stall_after) * 1000)
    kwargs: dict[str, Any] = {
        "connect_args": {
            "connect_timeout": 3,
            "application_name": session_name,
            "options": f"-c idle_in_transaction_session_timeout={idle_ms}",
        },
    }
    if settings.db_pool == "null":
        kwargs["poolclass"] = NullPool
    else:
        kwargs.update(pool_size=5, max_overflow=10, pool_timeout=5, pool_recycle=1800)
    engine = create_engine(url, **kwargs)
    _ping_after_idle(engine)
    return engine


PING_AFTER_IDLE_S = 5.0


def _ping_after_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling for connections that sat in the pool a while.

    `pool_pre_ping` would ping on every checkout: one extra round trip per transaction, which
    on a runner's dispatcher (a transaction every few milliseconds) was one round trip in ten.
    A connection used moments ago is almost surely alive, and if it is not, the statement
    fails with a disconnect, SQLAlchemy invalidates the pool and the verb's retry runs the
    transaction again on a fresh connection. Only a connection idle for longer (an API process
    between requests, a server restarted meanwhile) is pinged before use.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
            dbapi_conn.rollback()  # the ping may have opened a transaction
        except Exception as exc:
            # The pool discards this connection and checks out another (up to three times).
            raise sa_exc.DisconnectionError(f"stale pooled connection: {exc}") from exc


def is_transient(exc: BaseException) -> bool:
    """True for errors that a retry of the whole transaction may cure."""
    if isinstance(exc, sa_exc.IntegrityError):
        return False
    if isinstance(exc, sa_exc.TimeoutError):  # pool exhausted
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        if orig is not None and type(orig).__module__.startswith("turso_serverless"):
            from .dialects.libsql import is_transient_libsql

            return is_transient_libsql(orig)
        if isinstance(orig, sqlite3.OperationalError):
            text = str(orig).lower()
            return "locked" in text or "busy" in text
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate:
            # 40001 serialization failure, 40P01 deadlock, 08 connection, 57P0x shutdown,
            # 53 insufficient resources, 55P03 lock not available.
            return sqlstate in ("40001", "40P01", "55P03") or sqlstate[:2] in ("08", "53", "57")
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return isinstance(exc, _TransientLocal)


def _may_have_lost_connection(exc: sa_exc.DBAPIError) -> bool:
    """True unless the error says the connection is fine (a constraint, a busy SQLite file, a
    serialization failure, a deadlock, a lock timeout): a pinned connection that got it is
    replaced. psycopg reports a backend killed while a statement was being sent as "sending
    query failed" without a SQLSTATE, which its dialect may not take for a disconnect."""
    if exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.IntegrityError) or isinstance(exc.orig, sqlite3.Error):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate:
        return sqlstate[:2] in ("08", "57")
    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)


class _TransientLocal(Exception):
    """The in-process SQLite writer lock was not obtained in time."""


# Backoff between attempts of a transaction: 50 ms doubling to 1 s, plus up to 100 ms jitter.
_FIRST_RETRY_WAIT = 0.05
_RETRY_JITTER = 0.1
_RETRY_WAIT = wait_exponential(multiplier=_FIRST_RETRY_WAIT, max=1.0) + wait_random(
    0, _RETRY_JITTER
)


def _log_retry(attempt: int, exc: BaseException | None) -> None:
    log.warning(
        "database busy or unreachable (attempt %d): %s",
        attempt,
        str(exc).splitlines()[0] if exc else "?",
        extra={"action": "db_retry"},
    )


class _Pin:
    """A thread's pinned connection (Database.pinned_connection), made on first use."""

    conn: Connection | None = None


class Database:
    """An engine plus the two transaction shapes every verb uses."""

    def __init__(self, engine: Engine, *, retry_seconds: float = 10.0) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.retry_seconds = retry_seconds
        # SQLite has one writer. Serialising writers of this process here keeps them off the
        # busy handler, whose sleeps (up to 100 ms each) would otherwise set the tail latency.
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._pinned = threading.local()  # .pin: this thread's _Pin, if any
        self.checkpointer: WalCheckpointer | None = None  # see Store.from_settings

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def is_libsql(self) -> bool:
        """A remote libSQL server (SQLite's SQL and locking, reached over HTTP)."""
        return self.engine.dialect.driver == "libsql"

    def dispose(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None
        self.engine.dispose()

    @contextmanager
    def pinned_connection(self) -> Iterator[None]:
        """The calling thread's transactions reuse one connection while this lasts, instead of
        checking one out of the pool and returning it each time.

        For a runner's dispatcher, which runs a transaction every few milliseconds and whose
        pickup latency the checkout and return showed up in (about a tenth of an idle
        runner's claim). A connection the server dropped meanwhile fails its next statement
        with a disconnect: SQLAlchemy invalidates it and reconnects on the next use, and the
        verb's retry runs the transaction again — as with a pooled connection that went stale
        (see _ping_after_idle)."""
        pin = _Pin()  # connected by the first transaction, inside its retries
        self._pinned.pin = pin
        try:
            yield
        finally:
            self._pinned.pin = None
            if pin.conn is not None:
                pin.conn.close()

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Connection]:
        lock = self._write_lock if write else None
        wait = min(SQLITE_BUSY_TIMEOUT_MS / 1000, self.retry_seconds)
        if lock is not None and not lock.acquire(timeout=wait):
            raise _TransientLocal("timed out waiting for this process's SQLite writer lock")
        try:
            pin: _Pin | None = getattr(self._pinned, "pin", None)
            if pin is not None:
                if pin.conn is None:
                    pin.conn = self.engine.connect()
                conn = pin.conn.execution_options(loopdeck_write=write)
                try:
                    with conn.begin():
                        yield conn
                except sa_exc.DBAPIError as exc:
                    if _may_have_lost_connection(exc):
                        # Whether or not the driver recognised the disconnect (SQLAlchemy
                        # invalidates only what it does), the retry starts on a new one.
                        pin.conn.invalidate()
                        pin.conn.close()
                        pin.conn = None
                    raise
                return
            with self.engine.connect() as conn:
                if write:
                    conn = conn.execution_options(loopdeck_write=True)
                with conn.begin():
                    yield conn
        finally:
            if lock is not None:
                lock.release()

    def _retrying(self, budget: float, attempts_before: int) -> Retrying:
        return Retrying(
            # Never start a wait that would end past the budget: a caller (an API handler
            # promising 503 within seconds) gets its answer within retry_seconds plus one try.
            stop=stop_before_delay(budget),
            wait=_RETRY_WAIT,
            retry=retry_if_exception(is_transient),
            before_sleep=lambda state: _log_retry(
                state.attempt_number + attempts_before,
                state.outcome.exception() if state.outcome else None,
            ),
            reraise=True,
        )

    def _run(self, fn: Callable[[Connection, int], T], write: bool) -> T:
        started = time.monotonic()
        try:
            # The first attempt runs outside tenacity: nearly every transaction needs no retry,
            # and building and driving a Retrying cost about as much as a short transaction
            # (a tenth of an idle runner's claim). The retries keep the same policy and budget.
            try:
                with self._transaction(write) as conn:
                    return fn(conn, 1)
            except (sa_exc.DBAPIError, sa_exc.TimeoutError, _TransientLocal) as exc:
                if not is_transient(exc):
                    raise
                first = exc
            wait = _FIRST_RETRY_WAIT + random.uniform(0, _RETRY_JITTER)  # _RETRY_WAIT's first
            budget = self.retry_seconds - (time.monotonic() - started) - wait
            if budget <= 0:
                raise first
            _log_retry(1, first)
            time.sleep(wait)
            for attempt in self._retrying(budget, attempts_before=1):
                with attempt, self._transaction(write) as conn:
                    return fn(conn, attempt.retry_state.attempt_number + 1)
        except (sa_exc.DBAPIError, sa_exc.TimeoutError, _TransientLocal) as exc:
            if is_transient(exc):
                raise DatabaseUnavailable(
                    f"database unavailable: {str(exc).splitlines()[0]}"
                ) from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def read(self, fn: Callable[[Connection], T]) -> T:
        return self._run(lambda conn, _n: fn(conn), write=False)

    def write(self, fn: Callable[[Connection], T]) -> T:
        return self._run(lambda conn, _n: fn(conn), write=True)

    def write_attempts(self, fn: Callable[[Connection, int], T]) -> T:
        """Like `write`, telling `fn` which attempt this is (1 = first).

        A write whose commit may have landed before the error (an ambiguous commit) uses the
        attempt number to look for its own earlier effect before doing it again.
        """
        return self._run(fn, write=True)

"""Change feeds: how an idle runner learns, cheaply, that there may be something to claim.

SQLite: `PRAGMA data_version` on a dedicated connection changes whenever another connection
commits; reading it touches only the shared-memory WAL index, so it costs almost nothing and
does not grow with the table. Between reads the feed sleeps on an inotify watch of the
database's directory (Linux; elsewhere it reads every `LOOPDECK_WAKEUP_INTERVAL`): an idle
runner is not woken at all until someone writes. The full claim query runs only when the
version changes (or on the slow `poll_interval` fallback).

PostgreSQL: `LISTEN loopdeck_runs` on a dedicated autocommit connection; the create-run
transaction sends `pg_notify('loopdeck_runs', queue)`, delivered when it commits. The
dispatcher's `poll_interval` polling stays on regardless: a notification sent while the
listener was reconnecting is lost, and NOTIFY does not cross transaction-pooling proxies
(PgBouncer in transaction mode), where LISTEN silently hears nothing.

Remote libSQL has no change signal; the runner polls.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine

log = logging.getLogger(__name__)
CHANNEL = "loopdeck_runs"


class ChangeFeed:
    """`wait(timeout)` returns True as soon as the database may have changed."""

    def wait(self, timeout: float) -> bool:
        time.sleep(timeout)
        return False

    def close(self) -> None:
        pass


class SqliteDataVersionFeed(ChangeFeed):
    """`PRAGMA data_version` on a connection of its own. Between reads it sleeps on an inotify
    watch of the database's directory (Linux), which wakes it when another process writes the
    database or its WAL: an idle runner then costs no wake-ups at all, and a new run is seen
    within about a millisecond. A WAL write comes just before the commit it belongs to becomes
    visible, so after a write the version is re-read every millisecond for a while. Without
    inotify (other systems, or its limits reached) it reads the version every `interval`."""

    SETTLE = 0.025  # after a write: re-read the version this long at most, 1 ms apart

    def __init__(self, path: str, interval: float = 0.010) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._interval = interval
        self._version = self._read()
        self._closed = threading.Event()
        self._watch = DirectoryWatch.open(path)

    def _read(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        settle_until = 0.0
        while not self._closed.is_set():
            try:
                version = self._read()
            except sqlite3.Error:
                version = self._version
            if version != self._version:
                self._version = version
                return True
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return False
            if self._watch is None:
                time.sleep(min(self._interval, remaining))
            elif now < settle_until:
                time.sleep(min(0.001, remaining))
            elif self._watch.wait(remaining):
                settle_until = time.monotonic() + self.SETTLE
        return False

    def close(self) -> None:
        self._closed.set()
        self._conn.close()
        if self._watch is not None:
            self._watch.close()


class DirectoryWatch:
    """Linux inotify on the directory of a database file: `wait(timeout)` returns True when
    that file or one beside it named after it (`-wal`, `-journal`) was written or created."""

    _MASK = 0x2 | 0x80 | 0x100  # IN_MODIFY | IN_MOVED_TO | IN_CREATE
    _HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then name

    def __init__(self, fd: int, name: bytes) -> None:
        self._fd = fd
        self._name = name

    @classmethod
    def open(cls, path: str) -> DirectoryWatch | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            directory = os.path.dirname(os.path.abspath(path))
            if libc.inotify_add_watch(fd, os.fsencode(directory), cls._MASK) < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, f"inotify_add_watch {directory}")
        except (OSError, AttributeError) as exc:
            log.info("no inotify watch for %s (%s): polling its data_version", path, exc)
            return None
        return cls(fd, os.fsencode(os.path.basename(path)))

    def wait(self, timeout: float) -> bool:
        if not select.select([self._fd], [], [], timeout)[0]:
            return False
        return self._ours(self._drain())

    def _drain(self) -> bytes:
        data = b""
        while True:
            try:
                chunk = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk

    def _ours(self, data: bytes) -> bool:
        at = 0
        while at + self._HEADER.size <= len(data):
            _wd, mask, _cookie, size = self._HEADER.unpack_from(data, at)
            start = at + self._HEADER.size
            name = data[start : start + size].rstrip(b"\0")
            at = start + size
            if mask & 0x4000 or name.startswith(self._name):  # IN_Q_OVERFLOW, or our files
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class PostgresListenFeed(ChangeFeed):
    """LISTEN on a connection of its own (autocommit: a LISTEN inside an open transaction
    would hear nothing until that transaction ends), reconnecting after failures."""

    def __init__(
        self, dsn: str, queues: Iterable[str] | None = None, reconnect_delay: float = 1.0
    ) -> None:
        self._dsn = dsn
        self._queues = None if queues is None else frozenset(queues)
        self._reconnect_delay = reconnect_delay
        self._conn: Any = None
        self._retry_at = 0.0
        self._failing = False
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def _connect(self) -> bool:
        """Open and LISTEN. True on success: notifications may have been missed meanwhile."""
        import psycopg

        try:
            conn = psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=3,
                application_name="loopdeck-listen",
            )  # fmt: skip
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            if not self._failing:
                log.warning("LISTEN %s: cannot connect (%s); polling meanwhile", CHANNEL,
                            str(exc).splitlines()[0] if str(exc) else exc)  # fmt: skip
            self._failing = True
            self._retry_at = time.monotonic() + self._reconnect_delay
            return False
        if self._failing:
            log.info("LISTEN %s: connected again", CHANNEL)
        self._failing = False
        self._conn = conn
        return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                conn.close()

    def wait(self, timeout: float) -> bool:
        import psycopg

        with self._lock:
            if self._closed.is_set():
                return False
            if self._conn is None:
                if time.monotonic() < self._retry_at:
                    self._closed.wait(min(timeout, self._retry_at - time.monotonic()))
                    return False
                return self._connect()
            try:
                for note in self._conn.notifies(timeout=timeout, stop_after=1):
                    if self._queues is None or note.payload in self._queues:
                        return True
                return False
            except psycopg.Error as exc:
                log.warning("LISTEN %s: connection lost (%s); reconnecting", CHANNEL,
                            str(exc).splitlines()[0] if str(exc) else exc)  # fmt: skip
                self._failing = True
                self._drop()
                self._retry_at = time.monotonic() + self._reconnect_delay
                return True  # a claim poll now costs little and may find what we missed

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._drop()


def open_change_feed(
    engine: Engine,
    interval: float = 0.010,
    *,
    queues: Iterable[str] | None = None,
    mode: str = "auto",
) -> ChangeFeed:
    """The cheapest change signal `engine` offers; `mode="poll"` turns signals off."""
    if mode == "poll":
        return ChangeFeed()
    if engine.dialect.driver == "pysqlite" and engine.url.database:
        return SqliteDataVersionFeed(engine.url.database, interval)
    if engine.dialect.name == "postgresql":
        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresListenFeed(dsn, queues)
    return ChangeFeed()

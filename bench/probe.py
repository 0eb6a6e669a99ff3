"""The no-op stage and its probe: the first call in each process sends `start <t>` to the
driver; in latency mode every call sends `probe <i> <t>` (time.monotonic, CLOCK_MONOTONIC,
shared by all processes on one host) — the same method as ../shared/bench-peers."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
_started = False
CTRL_PORT = int(os.environ.get("BENCH_CTRL_PORT", "0") or 0)
PROBE_PORT = int(os.environ.get("BENCH_PROBE_PORT", "0") or 0)


def _send(port: int, message: str) -> None:
    if port:
        with contextlib.suppress(OSError):
            _sock.sendto(message.encode(), ("127.0.0.1", port))


def noop(ctx: Any) -> None:
    global _started
    t = time.monotonic()
    if not _started:
        _started = True
        _send(CTRL_PORT, f"start {t!r} {os.getpid()}")
    if PROBE_PORT:
        _send(PROBE_PORT, f"probe {ctx.inputs.get('i', 0)} {t!r}")

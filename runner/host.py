"""Facts about this process and host, via psutil: identity for the dead-pid fast path, and the
stats a runner reports in its heartbeat."""

from __future__ import annotations

import os
import socket

import psutil


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def host_key() -> str:
    """Same value ⇔ same kernel boot and same pid namespace, i.e. pids mean the same process."""
    boot = _read("/proc/sys/kernel/random/boot_id") or socket.gethostname()
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return f"{boot}/{pidns}"


def process_started_ms(pid: int | None = None) -> int:
    return int(round(psutil.Process(pid or os.getpid()).create_time() * 1000))


def process_is_gone(pid: int, started_ms: int) -> bool:
    """True only when we are sure: no such pid, a zombie, or a different process (pid reuse)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return abs(int(round(proc.create_time() * 1000)) - started_ms) > 10
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


class StatsCollector:
    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # prime: the next call measures since now

    def collect(self) -> dict[str, float]:
        with self._proc.oneshot():
            cpu = self._proc.cpu_percent(None)
            rss = self._proc.memory_info().rss
            threads = self._proc.num_threads()
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = 0.0
        return {
            "cpu_percent": round(cpu, 1),
            "rss_mb": round(rss / 1024 / 1024, 1),
            "threads": threads,
            "load1": round(load1, 2),
        }

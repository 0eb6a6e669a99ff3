"""A fixed pool of daemon worker threads for executions.

Daemon threads, not concurrent.futures: a `call:` stage stuck in user code must not keep the
process alive after shutdown has released its run.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, size: int, name: str = "exec") -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"loopdeck-{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for t in self._threads:
            t.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # an execution reports its own errors; this is a last resort
                log.exception("execution crashed its worker thread")

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

"""A pool of daemon worker threads for executions, started as they are needed.

Daemon threads, not concurrent.futures: a `call:` stage stuck in user code must not keep the
process alive after shutdown has released its run.

Threads start on demand, up to `size`, and then stay: a runner with many slots
(`--concurrency`, 64 by default) that never fills them costs no more threads than it used, so
an idle runner's memory does not grow with its slot count. A job goes to an idle thread when
there is one (the same bookkeeping as the standard library's ThreadPoolExecutor: a semaphore
counts the threads that finished a job and went back for another).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, size: int, name: str = "exec") -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    @property
    def started(self) -> int:
        """Threads started so far (at most `size`)."""
        return len(self._threads)

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)
        if self._idle.acquire(blocking=False):
            return  # a thread that finished its last job takes this one
        with self._lock:
            if self._closed or len(self._threads) >= self.size:
                return  # every thread is busy: the first to finish takes it
            thread = threading.Thread(
                target=self._work, name=f"loopdeck-{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # an execution reports its own errors; this is a last resort
                log.exception("execution crashed its worker thread")
            del job  # not kept alive while this thread waits for the next
            self._idle.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            count = len(self._threads)
        for _ in range(count):
            self._jobs.put(None)

"""The runner's worker pool: threads start on demand up to its size and are reused."""

from __future__ import annotations

import threading

import pytest

from runner.pool import WorkerPool

WAIT = 10.0


def _blocking_jobs(pool: WorkerPool, count: int, gate: threading.Event) -> list[threading.Event]:
    """Submit `count` jobs that each signal their start, then wait for `gate`."""
    started = [threading.Event() for _ in range(count)]

    def job(mine: threading.Event) -> None:
        mine.set()
        assert gate.wait(WAIT)

    for event in started:
        pool.submit(lambda e=event: job(e))
    return started


def _wait_all(events: list[threading.Event]) -> None:
    for event in events:
        assert event.wait(WAIT)


def test_no_thread_starts_before_a_job_and_busy_threads_never_exceed_the_size() -> None:
    pool = WorkerPool(4)
    assert pool.started == 0
    gate = threading.Event()
    first = _blocking_jobs(pool, 4, gate)
    _wait_all(first)
    assert pool.started == 4
    # Two more than the size: they wait for a thread rather than starting a fifth.
    later = _blocking_jobs(pool, 2, gate)
    assert pool.started == 4
    assert not any(e.is_set() for e in later)
    gate.set()
    _wait_all(later)
    pool.close()


def test_threads_are_reused_once_they_are_idle() -> None:
    pool = WorkerPool(8)
    done = threading.Semaphore(0)
    idle = pool._idle  # noqa: SLF001 - released when a thread goes back for another job
    for _ in range(50):
        pool.submit(done.release)
        assert done.acquire(timeout=WAIT)
        # Wait until the thread is back, then leave it counted as idle.
        assert idle.acquire(timeout=WAIT)
        idle.release()
    assert pool.started == 1
    pool.close()


def test_a_job_that_raises_leaves_its_thread_serving(caplog: pytest.LogCaptureFixture) -> None:
    pool = WorkerPool(1)
    ran = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    pool.submit(boom)
    pool.submit(ran.set)
    assert ran.wait(WAIT)
    assert pool.started == 1
    assert "execution crashed its worker thread" in caplog.text
    pool.close()


def test_close_ends_every_started_thread() -> None:
    pool = WorkerPool(3)
    gate = threading.Event()
    _wait_all(_blocking_jobs(pool, 3, gate))
    threads = list(pool._threads)  # noqa: SLF001 - the threads themselves are the subject
    gate.set()
    pool.close()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    pool.submit(lambda: None)  # after close: queued, no new thread
    assert pool.started == 3


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        WorkerPool(0)

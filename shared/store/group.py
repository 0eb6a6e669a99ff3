"""Group commit: concurrent callers' small writes share one transaction.

An API process answers many `POST /api/runs` at once. Run alone, every create pays a
transaction of its own — pool checkout, BEGIN, COMMIT (an fsync on PostgreSQL) — for a
handful of small INSERTs, and on SQLite the creates queue behind one write lock anyway. Here
the first caller to find no transaction under way becomes the leader: it takes every request
queued so far (its own included) and writes them in one transaction; the callers that arrived
meanwhile wait and are answered when it commits, and the next of them leads the following
group. A caller alone pays about what it did before: its group has one member. Coroutines
(`submit_async`, the API's handlers) never lead: a writer thread does it for them, and they
wait without holding a thread.

Each member gets its own answer: `run_group` returns one result or exception per item, in
order. Whether one bad item may spoil the others' transaction is the `run_group` function's
business (runs.py re-runs each item alone when the group's transaction fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

WRITER_IDLE_S = 30.0
T = TypeVar("T")
R = TypeVar("R")


class _Slot:
    __slots__ = ("item", "outcome", "done", "future")

    def __init__(self, item: Any, future: asyncio.Future[Any] | None = None) -> None:
        self.item = item
        self.outcome: Any = None
        self.done = False
        self.future = future  # an event loop's caller (submit_async) awaits this


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        run_group: Callable[[list[T]], Sequence[R | BaseException]],
        max_group: int = 64,
    ) -> None:
        self._run_group = run_group
        self._max = max_group
        self._cv = threading.Condition()
        self._queue: list[_Slot] = []
        self._leading = False
        self._writer: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """Items queued for a group not yet taken."""
        with self._cv:
            return len(self._queue)

    def submit(self, item: T) -> R:
        """Write `item` in the next group; its result, or its exception raised here. The
        calling thread may lead a group (write other callers' items)."""
        slot = _Slot(item)
        with self._cv:
            self._queue.append(slot)
        while True:
            with self._cv:
                while self._leading and not slot.done:
                    self._cv.wait()
                if slot.done:
                    break
                group = self._take()
            # Our slot may not be in this group (more than max_group waited): then the loop
            # comes round again once the older callers are answered.
            self._lead(group)
        if isinstance(slot.outcome, BaseException):
            raise slot.outcome
        return slot.outcome  # type: ignore[no-any-return]

    async def submit_async(self, item: T) -> R:
        """`submit` for a coroutine: it waits for its group without holding a thread; the
        group is written by the writer thread (or by a thread calling `submit`), and the
        answers reach the event loop in one hand-off per group."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._cv:
            self._queue.append(_Slot(item, future))
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_forever, name="loopdeck-group-commit", daemon=True
                )
                self._writer.start()
            self._cv.notify_all()
        result: R = await future
        return result

    # -- leading a group -----------------------------------------------------------------

    def _take(self) -> list[_Slot]:
        """With the condition held: become the leader and take the next group."""
        self._leading = True
        group, self._queue = self._queue[: self._max], self._queue[self._max :]
        return group

    def _lead(self, group: list[_Slot]) -> None:
        outcomes = self._write(group)
        loops: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        with self._cv:
            for member, outcome in zip(group, outcomes, strict=True):
                member.outcome, member.done = outcome, True
                if member.future is not None:
                    loops.setdefault(member.future.get_loop(), []).append((member.future, outcome))
            self._leading = False
            self._cv.notify_all()
        for loop, answers in loops.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, answers)

    def _write(self, group: list[_Slot]) -> Sequence[Any]:
        try:
            outcomes = self._run_group([member.item for member in group])
        except BaseException as exc:  # noqa: BLE001 - every member hears it
            return [exc] * len(group)
        if len(outcomes) != len(group):
            error = RuntimeError(f"{len(outcomes)} outcomes for a group of {len(group)}")
            return [error] * len(group)
        return outcomes

    def _write_forever(self) -> None:
        """The writer thread: leads a group whenever coroutines' items wait and no thread
        leads one already (`_write` catches everything). After WRITER_IDLE_S with nothing to
        do it ends; the next `submit_async` starts another (a disposed store leaves none)."""
        while True:
            with self._cv:
                while self._leading or not any(s.future is not None for s in self._queue):
                    woken = self._cv.wait(WRITER_IDLE_S)
                    if not woken and not self._leading and not self._queue:
                        self._writer = None
                        return
                group = self._take()
            self._lead(group)


def _resolve(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in answers:
        if future.done():  # the caller went away (a cancelled request)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

"""Fields that every log line of a unit of work carries (run id, step, attempt, runner id).

`log_context(run_id=…)` binds fields for the code it wraps, in this thread (a context
variable); `ContextFilter`, installed on the entry point's handler (shared/cli/logs.py), copies
them onto each record that does not set them itself, so the JSON formatter writes them on every
line, the runner's and the stage code's alike. A new thread starts with an empty context: the
runner hands its context on with `contextvars.copy_context()` when it starts a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_fields: ContextVar[dict[str, Any] | None] = ContextVar("loopdeck_log_fields", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    token = _fields.set({**(_fields.get() or {}), **fields})
    try:
        yield
    finally:
        _fields.reset(token)


def current() -> dict[str, Any]:
    return dict(_fields.get() or {})


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_fields.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True

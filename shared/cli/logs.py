"""Logging for entry points (only they configure handlers): readable lines by default, JSON
lines with `--log-format json` for daemons under a log collector. Both carry the fields bound
with `shared.logcontext.log_context` (run_id, step, attempt, runner_id): JSON as keys, plain
text as a short `[run … step#attempt]` tag."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from ..logcontext import ContextFilter

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class PlainFormatter(logging.Formatter):
    """`12:01:02 INFO    runner.execution: message  [run_… build#2]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        run_id = getattr(record, "run_id", None)
        if run_id and run_id not in record.getMessage():
            step = getattr(record, "step", None)
            where = f" {step}#{getattr(record, 'attempt', '?')}" if step else ""
            line += f"  [{run_id}{where}]"
        return line


def configure(level: str = "info", fmt: str = "plain") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("alembic", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

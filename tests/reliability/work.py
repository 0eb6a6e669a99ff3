"""`call:` stages of the reliability battery.

Every execution appends one line to $LOOPDECK_EFFECTS (if set) when it starts and one when it
ends, with the run, step, attempt and pid: the record of what really ran, outside the database,
to hold against what the database accepted. Lines are short and the file is opened with
O_APPEND, so concurrent writers never interleave within a line.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any


def _effect(ctx: Any, phase: str) -> None:
    path = os.environ.get("LOOPDECK_EFFECTS")
    if not path:
        return
    line = json.dumps({"run": ctx.run_id, "step": ctx.step, "attempt": ctx.attempt,
                       "pid": os.getpid(), "phase": phase, "t": time.time()})  # fmt: skip
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def step(ctx: Any) -> dict[str, Any]:
    """Work for inputs['ms'] milliseconds (cooperatively: cancel stops it)."""
    _effect(ctx, "start")
    deadline = time.monotonic() + float(ctx.inputs.get("ms", 10)) / 1000
    while True:
        ctx.check_cancel()
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(0.01, left))
    _effect(ctx, "end")
    return {"pid": os.getpid(), "step": ctx.step}


def poison(ctx: Any) -> dict[str, Any]:
    """Kill the runner that executes this stage, every time."""
    _effect(ctx, "start")
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")

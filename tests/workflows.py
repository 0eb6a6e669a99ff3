"""`call:` targets used by the tests' workflows."""

from __future__ import annotations

import time
from typing import Any


def noop(ctx: Any) -> dict[str, Any]:
    return {"ok": True}


def record(ctx: Any) -> dict[str, Any]:
    if ctx.inputs.get("fail") == ctx.step:
        raise RuntimeError(f"{ctx.step} was told to fail")
    ctx.log(f"{ctx.step} saw {sorted(ctx.outputs)}")
    return {"step": ctx.step, "saw": sorted(ctx.outputs)}


def produce(ctx: Any) -> dict[str, Any]:
    ctx.artifact("draft.txt", f"draft {ctx.attempt}")
    ctx.metric("tokens", 10)
    return {"draft": ctx.attempt}


def evaluate(ctx: Any) -> dict[str, Any]:
    scores = ctx.inputs["scores"]
    score = scores[min(ctx.attempt, len(scores)) - 1]
    return {"score": score, "feedback": f"feedback {ctx.attempt}"}


def revise(ctx: Any) -> dict[str, Any]:
    assert ctx.feedback == f"feedback {ctx.attempt - 1}", ctx.feedback
    ctx.metric("tokens", 5)
    return {"draft": ctx.attempt, "revised_from": ctx.output}


def wait(ctx: Any) -> dict[str, Any]:
    deadline = time.monotonic() + float(ctx.inputs.get("seconds", 30))
    while time.monotonic() < deadline:
        ctx.check_cancel()
        time.sleep(0.02)
    return {"waited": True}


def evaluate_slowly_on_2(ctx: Any) -> dict[str, Any]:
    """Scores 0.5 on attempt 1; on attempt 2 waits (to be killed), then scores 0.9."""
    if ctx.attempt == 2:
        ctx.log("evaluating slowly")
        wait(ctx)
    return {"score": 0.5 if ctx.attempt == 1 else 0.9, "feedback": f"feedback {ctx.attempt}"}


def write_artifacts(ctx: Any) -> dict[str, Any]:
    """Writes `count` artifacts of `size` bytes; says which were refused (the run's cap)."""
    from shared.errors import ArtifactTooLarge

    refused = []
    for n in range(int(ctx.inputs.get("count", 3))):
        try:
            ctx.artifact(f"part-{n}.bin", b"x" * int(ctx.inputs.get("size", 400)))
        except ArtifactTooLarge:
            refused.append(n)
            if ctx.inputs.get("strict"):
                raise
    return {"refused": refused}


def log_through_logging(ctx: Any) -> dict[str, Any]:
    """Stage code that logs with the logging module: its lines carry the run's fields."""
    import logging

    logging.getLogger("tests.stage").warning("hello from %s", ctx.step)
    return {"ok": True}


def log_odd_data(ctx: Any) -> dict[str, Any]:
    """Logs data JSON cannot hold as it is (written as its str(), like the API would show)."""
    import datetime

    ctx.log("odd data", when=datetime.date(2026, 11, 23), tags={"only"})
    return {"ok": True}

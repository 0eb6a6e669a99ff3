"""`call:` targets of the control-plane tests' workflows (tests/control_support.py)."""

from __future__ import annotations

import os
import time
from typing import Any


def step(ctx: Any) -> dict[str, Any]:
    """Fails when inputs.fail names this step, unless inputs.fix_file exists (the "fix")."""
    fix = ctx.inputs.get("fix_file") or ""
    if ctx.inputs.get("fail") == ctx.step and not (fix and os.path.exists(fix)):
        raise RuntimeError(f"{ctx.step} was told to fail")
    ctx.artifact(f"{ctx.step}.txt", f"{ctx.step} attempt {ctx.attempt}")
    return {"step": ctx.step, "saw": sorted(ctx.outputs)}


def hold(ctx: Any) -> dict[str, Any]:
    """Waits until inputs.release_file exists, logging every 50 ms (so a paused runner has
    writes pending the moment it resumes)."""
    path = ctx.inputs["release_file"]
    n = 0
    while not os.path.exists(path):
        ctx.check_cancel()
        n += 1
        if n % 5 == 0:
            ctx.log(f"{ctx.step} holding ({n})")
        time.sleep(0.01)
    ctx.log(f"{ctx.step} released")
    return {"step": ctx.step, "pid": os.getpid()}


def produce(ctx: Any) -> dict[str, Any]:
    ctx.artifact("draft.txt", f"draft {ctx.attempt}")
    return {"draft": ctx.attempt}


def evaluate(ctx: Any) -> dict[str, Any]:
    """Scores come from inputs.scores; inputs.fail_eval names an attempt whose evaluation
    fails unless inputs.fix_file exists."""
    fix = ctx.inputs.get("fix_file") or ""
    if ctx.inputs.get("fail_eval") == ctx.attempt and not (fix and os.path.exists(fix)):
        raise RuntimeError(f"evaluator broke on attempt {ctx.attempt}")
    scores = ctx.inputs["scores"]
    return {"score": scores[min(ctx.attempt, len(scores)) - 1], "feedback": f"fb {ctx.attempt}"}


def fails_first(ctx: Any) -> dict[str, Any]:
    """Fails on the step's first execution and succeeds when it runs again: a graph task's
    attempt keeps counting across re-runs and resets (docs/control-plane.md)."""
    if ctx.attempt <= 1:
        raise RuntimeError(f"{ctx.step}: broken cross-reference (fails on its first execution)")
    return step(ctx)

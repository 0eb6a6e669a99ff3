"""`call: module:function` stages: the function gets a `StageContext` and returns the output."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from shared.errors import ArtifactTooLarge

from .base import StageJob, StageResult, artifact_row, check_output

log = logging.getLogger(__name__)
_import_lock = threading.Lock()
_cache: dict[str, Callable[..., Any]] = {}


class StageCancelled(Exception):
    """Raised by `ctx.check_cancel()` when the run was cancelled (or lost) mid-stage."""


class StageTimeout(StageCancelled):
    """Raised by `ctx.check_cancel()` once the stage's timeout has passed."""


def resolve(target: str, extra_paths: tuple[str, ...] = ()) -> Callable[..., Any]:
    """Import `module:attr.path`; the config files' directories are importable."""
    with _import_lock:
        if target in _cache:
            return _cache[target]
        for path in extra_paths:
            if path not in sys.path:
                sys.path.insert(0, path)
        module_name, _, attr_path = target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{target} is not callable")
        fn: Callable[..., Any] = obj
        _cache[target] = fn
        return fn


class StageContext:
    """What a `call:` stage function receives.

    Attributes: run_id, workflow, step, attempt, inputs, outputs (earlier stages' outputs by
    name), and for loops output (the latest produced output), feedback, score and history.
    """

    def __init__(self, job: StageJob, deadline: float | None) -> None:
        self._job = job
        self._deadline = deadline
        self.run_id = job.active.id
        self.workflow = job.workflow
        self.step = job.step
        self.attempt = job.attempt
        self.inputs = job.inputs
        self.outputs = job.outputs
        self.output = job.output
        self.feedback = job.feedback
        self.score = job.score
        self.history = job.history

    def log(self, message: str, **data: Any) -> None:
        """Append a `log` event to the run's timeline."""
        self._job.active.event(
            "log",
            str(message),
            stage=self.step,
            attempt=self.attempt,
            task_id=self._job.task_id,
            data=data or None,
        )

    def artifact(
        self,
        filename: str,
        content: str | bytes | dict[str, Any] | list[Any],
        media_type: str | None = None,
        kind: str = "output",
    ) -> None:
        """Store an artifact. Raises ArtifactTooLarge over LOOPDECK_MAX_ARTIFACT_BYTES."""
        if isinstance(content, dict | list):
            body = json.dumps(content, indent=2).encode()
            media_type = media_type or "application/json"
        elif isinstance(content, str):
            body = content.encode()
        else:
            body = bytes(content)
        if kind not in ("output", "evaluation", "log", "file"):
            raise ValueError(f"artifact kind {kind!r} is not one of output, evaluation, log, file")
        row = artifact_row(self._job, filename, body, media_type, kind)
        self._job.active.artifact(row)
        self._job.active.event(
            "artifact",
            f"{filename} ({len(body):,} bytes)",
            stage=self.step,
            attempt=self.attempt,
            task_id=self._job.task_id,
            data={"artifact_id": row["id"], "filename": filename, "size": len(body)},
        )

    def metric(self, name: str, value: float) -> None:
        """Add `value` to the run's metric `name` (tokens, cost_usd, …)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}")
        self._job.active.add_metric(str(name), value)

    @property
    def cancelled(self) -> bool:
        active = self._job.active
        return active.cancel.is_set() or active.lost.is_set() or active.shutdown.is_set()

    def check_cancel(self) -> None:
        """Raise StageCancelled if the run was cancelled, StageTimeout past the timeout."""
        if self.cancelled:
            raise StageCancelled("the run was cancelled")
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise StageTimeout(f"the stage timed out after {self._job.stage.timeout:g}s")


def run_call(job: StageJob) -> StageResult:
    assert job.stage.call is not None
    try:
        fn = resolve(job.stage.call, job.extra_paths)
    except Exception as exc:  # noqa: BLE001 - any import problem fails the stage, clearly
        return StageResult(
            False, error=f"cannot load {job.stage.call}: {type(exc).__name__}: {exc}"
        )
    started = time.monotonic()
    deadline = started + job.stage.timeout if job.stage.timeout else None
    ctx = StageContext(job, deadline)
    try:
        value = fn(ctx)
    except StageTimeout as exc:
        return StageResult(False, error=str(exc), timed_out=True)
    except StageCancelled:
        return StageResult(False, error="cancelled", cancelled=True)
    except ArtifactTooLarge as exc:
        return StageResult(False, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - user code: any exception fails the stage
        tb = traceback.format_exc(limit=20)
        job.active.event(
            "log", tb, stage=job.step, attempt=job.attempt, task_id=job.task_id,
            data={"stream": "traceback"},
        )  # fmt: skip
        return StageResult(False, error=f"{type(exc).__name__}: {exc}")
    if deadline is not None and time.monotonic() > deadline:
        return StageResult(
            False, error=f"the stage timed out after {job.stage.timeout:g}s", timed_out=True
        )
    problem = check_output(value)
    if problem:
        return StageResult(False, error=problem)
    return StageResult(True, output=value)

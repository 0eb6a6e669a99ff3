"""What a stage executor receives and returns."""

from __future__ import annotations

import hashlib
import json
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.errors import ArtifactTooLarge
from shared.ids import new_id
from shared.workflows.model import Stage

from ..active import ActiveRun

MAX_OUTPUT_BYTES = 256 * 1024
_TEXT_TYPES = {".md": "text/markdown", ".markdown": "text/markdown", ".log": "text/plain"}


@dataclass
class StageJob:
    active: ActiveRun
    workflow: str
    step: str
    stage: Stage
    task_id: str
    attempt: int  # loop attempt for loop stages, try number for graph steps
    inputs: dict[str, Any]
    outputs: dict[str, Any]  # outputs of earlier steps/stages by name
    kill_grace: float
    max_artifact_bytes: int
    output: Any = None  # loops: the latest produced output
    feedback: str | None = None  # loops: the latest evaluation's feedback
    score: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    extra_paths: tuple[str, ...] = ()
    max_run_artifact_bytes: int = 100 * 1024 * 1024
    artifact_bytes_of: Callable[[str], int] | None = None


@dataclass
class StageResult:
    ok: bool
    output: Any = None
    error: str | None = None
    cancelled: bool = False
    timed_out: bool = False


def guess_media_type(filename: str) -> str:
    lower = filename.lower()
    for suffix, media in _TEXT_TYPES.items():
        if lower.endswith(suffix):
            return media
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def reject_artifact(job: StageJob, filename: str, size: int, why: str) -> ArtifactTooLarge:
    """Say in the timeline that an artifact was not stored (never a silent loss)."""
    job.active.event(
        "artifact.rejected", why, stage=job.step, attempt=job.attempt, task_id=job.task_id,
        data={"filename": filename, "size": size},
    )  # fmt: skip
    return ArtifactTooLarge(why, filename=filename, size=size)


def artifact_row(
    job: StageJob, filename: str, content: bytes, media_type: str | None, kind: str
) -> dict[str, Any]:
    size = len(content)
    if size > job.max_artifact_bytes:
        raise reject_artifact(
            job, filename, size,
            f"artifact {filename!r} is {size:,} bytes, over the cap of "
            f"{job.max_artifact_bytes:,} (LOOPDECK_MAX_ARTIFACT_BYTES)",
        )  # fmt: skip
    run_id = job.active.id
    lookup = job.artifact_bytes_of
    stored = job.active.reserve_artifact_bytes(
        size, job.max_run_artifact_bytes, (lambda: lookup(run_id)) if lookup else (lambda: 0)
    )
    if stored is not None:
        raise reject_artifact(
            job, filename, size,
            f"artifact {filename!r} ({size:,} bytes) would take the run's artifacts to "
            f"{stored + size:,} bytes, over the cap of {job.max_run_artifact_bytes:,} "
            "(LOOPDECK_MAX_RUN_ARTIFACT_BYTES)",
        )  # fmt: skip
    return {
        "id": new_id("art"),
        "task_id": job.task_id,
        "step": job.step,
        "attempt": job.attempt,
        "kind": kind,
        "filename": filename,
        "media_type": media_type or guess_media_type(filename),
        "content": content,
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


def check_output(value: Any) -> str | None:
    """None if `value` can be stored as a stage output, else why not."""
    if value is None:
        return None
    try:
        encoded = json.dumps(value)
    except (TypeError, ValueError) as exc:
        return f"the stage returned a value that is not JSON: {exc}"
    if len(encoded) > MAX_OUTPUT_BYTES:
        return (
            f"the stage output is {len(encoded):,} bytes of JSON, over {MAX_OUTPUT_BYTES:,}; "
            "store large results as artifacts"
        )
    return None

"""Stage executors: `call:` (a Python function) and `run:` (a command)."""

from .base import StageJob, StageResult
from .call import run_call
from .command import run_command


def run_stage(job: StageJob) -> StageResult:
    """Execute one try of a stage."""
    if job.stage.call is not None:
        return run_call(job)
    return run_command(job)


__all__ = ["StageJob", "StageResult", "run_stage"]

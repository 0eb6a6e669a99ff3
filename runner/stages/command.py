"""`run:` stages: a command in its own session, through the shim (runner/shim.py).

Inputs and context arrive as environment variables and as JSON on stdin; every stdout/stderr
line becomes a `log` event; a JSON last line of stdout becomes the stage output; files written
to $LOOPDECK_OUTPUT_DIR become artifacts. Cancel, timeout and shutdown signal the whole process
group: TERM, then KILL after the grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from typing import IO, Any

from shared.errors import ArtifactTooLarge

from ..active import MAX_MESSAGE, kill_group
from .base import StageJob, StageResult, artifact_row, check_output

# A longer output line is cut (and its log event says so), under the event message cap.
MAX_LINE_BYTES = MAX_MESSAGE - 64
SHIM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shim.py")
_SECRETS = ("LOOPDECK_API_TOKENS", "LOOPDECK_CRON_SECRET", "LOOPDECK_DATABASE_URL")
_POLL = 0.05


def _env(job: StageJob, output_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SECRETS}
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    paths = [p for p in job.extra_paths if p]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(job.stage.env)
    env.update(
        {
            "LOOPDECK_RUN_ID": job.active.id,
            "LOOPDECK_WORKFLOW": job.workflow,
            "LOOPDECK_STEP": job.step,
            "LOOPDECK_ATTEMPT": str(job.attempt),
            "LOOPDECK_INPUTS": json.dumps(job.inputs),
            "LOOPDECK_FEEDBACK": job.feedback or "",
            "LOOPDECK_OUTPUT_DIR": output_dir,
            "LOOPDECK_SHIM_PARENT": str(os.getpid()),
        }
    )
    return env


def _stdin_payload(job: StageJob) -> bytes:
    return json.dumps(
        {
            "run_id": job.active.id,
            "workflow": job.workflow,
            "step": job.step,
            "attempt": job.attempt,
            "inputs": job.inputs,
            "outputs": job.outputs,
            "output": job.output,
            "feedback": job.feedback,
            "score": job.score,
        }
    ).encode()


def _feed(pipe: IO[bytes] | None, payload: bytes) -> None:
    if pipe is None:
        return
    try:
        pipe.write(payload)
        pipe.close()
    except (BrokenPipeError, OSError):
        pass  # the command does not read stdin


def _pump(pipe: IO[bytes], stream: str, job: StageJob, tail: deque[str]) -> None:
    # readline with a limit: a stage that prints megabytes without a newline costs the runner
    # MAX_LINE_BYTES of memory, not megabytes.
    for raw in iter(lambda: pipe.readline(MAX_LINE_BYTES), b""):
        cut = 0
        if not raw.endswith(b"\n") and len(raw) >= MAX_LINE_BYTES:
            for rest in iter(lambda: pipe.readline(MAX_LINE_BYTES), b""):
                cut += len(rest)
                if rest.endswith(b"\n"):
                    cut -= 1
                    break
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            continue
        data: dict[str, Any] = {"stream": stream}
        if cut:
            line += f"… [{cut:,} more bytes cut]"
            data["cut_bytes"] = cut
        tail.append(line)  # a cut last line is not valid JSON: the stage has no output
        job.active.event(
            "log", line, stage=job.step, attempt=job.attempt, task_id=job.task_id, data=data,
        )  # fmt: skip
    pipe.close()


def _collect_files(job: StageJob, output_dir: str) -> str | None:
    """Files in the output dir become artifacts; returns an error for an oversized one."""
    for root, _dirs, files in os.walk(output_dir):
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, output_dir)
            try:
                if os.path.getsize(path) > job.max_artifact_bytes:
                    raise ArtifactTooLarge(
                        f"artifact {rel!r} is {os.path.getsize(path):,} bytes, over the cap of "
                        f"{job.max_artifact_bytes:,} (LOOPDECK_MAX_ARTIFACT_BYTES)"
                    )
                with open(path, "rb") as fh:
                    row = artifact_row(job, rel, fh.read(), None, "file")
            except ArtifactTooLarge as exc:
                return str(exc)
            job.active.artifact(row)
            job.active.event(
                "artifact", f"{rel} ({row['size']:,} bytes)", stage=job.step,
                attempt=job.attempt, task_id=job.task_id,
                data={"artifact_id": row["id"], "filename": rel, "size": row["size"]},
            )  # fmt: skip
    return None


def run_command(job: StageJob) -> StageResult:
    command = job.stage.run
    assert command is not None
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    output_dir = tempfile.mkdtemp(prefix=f"loopdeck-{job.active.id}-{job.step}-")
    try:
        return _run(job, argv, output_dir)
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)


def _run(job: StageJob, argv: list[str], output_dir: str) -> StageResult:
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", SHIM, "--", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(job, output_dir),
            start_new_session=True,
        )
    except OSError as exc:
        return StageResult(False, error=f"cannot start the stage: {exc}")
    job.active.add_process(proc)
    stdout_tail: deque[str] = deque(maxlen=1)
    stderr_tail: deque[str] = deque(maxlen=5)
    threads = [
        threading.Thread(target=_feed, args=(proc.stdin, _stdin_payload(job)), daemon=True),
        threading.Thread(target=_pump, args=(proc.stdout, "stdout", job, stdout_tail), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, "stderr", job, stderr_tail), daemon=True),
    ]
    for t in threads:
        t.start()
    started = time.monotonic()
    timeout = job.stage.timeout
    term_sent_at: float | None = None
    why: str | None = None
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if why is None:
                if job.active.lost.is_set() or job.active.shutdown.is_set():
                    why = "stopped"
                elif job.active.cancel.is_set():
                    why = "cancelled"
                elif timeout is not None and now - started > timeout:
                    why = "timeout"
                if why is not None:
                    kill_group(proc, signal.SIGTERM)
                    term_sent_at = now
            elif term_sent_at is not None and now - term_sent_at > job.kill_grace:
                kill_group(proc, signal.SIGKILL)
                term_sent_at = None
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_POLL)
    finally:
        # Nothing the stage started may outlive it (background children included).
        kill_group(proc, signal.SIGKILL)
        job.active.remove_process(proc)
        for t in threads:
            t.join(timeout=5)
    code = proc.returncode
    if why is None and code != 0:  # it died just as a flag was raised
        if job.active.lost.is_set() or job.active.shutdown.is_set():
            why = "stopped"
        elif job.active.cancel.is_set():
            why = "cancelled"
    if why == "cancelled":
        return StageResult(False, error="cancelled", cancelled=True)
    if why == "stopped":
        return StageResult(False, error=job.active.stop_reason or "stopped")
    if why == "timeout":
        return StageResult(False, error=f"timed out after {timeout:g}s", timed_out=True)
    problem = _collect_files(job, output_dir)
    if problem:
        return StageResult(False, error=problem)
    if code != 0:
        detail = " | ".join(stderr_tail)
        reason = f"killed by signal {code - 128}" if code > 128 else f"exited with status {code}"
        return StageResult(False, error=reason + (f": {detail}" if detail else ""))
    output = _parse_last_line(stdout_tail[0] if stdout_tail else None)
    problem = check_output(output)
    if problem:
        return StageResult(False, error=problem)
    return StageResult(True, output=output)


def _parse_last_line(line: str | None) -> Any:
    if line is None:
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None

"""Executing one claimed run: graph (`steps:`) and loop (`loop:`) semantics (DESIGN §4, §6).

The execution writes only through its ActiveRun (batched, fenced by the dispatcher). It picks
up where an earlier claim stopped: succeeded tasks keep their outputs and are not run again.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.ids import new_id
from shared.logcontext import log_context
from shared.store import NOW
from shared.store.base import StatementCache
from shared.workflows import Workflow, workflow_from_definition
from shared.workflows.model import Stage

from .active import ActiveRun, StopExecution
from .stages import StageJob, StageResult, run_stage

log = logging.getLogger(__name__)
MAX_BACKOFF = 300.0


@dataclass
class ExecOptions:
    kill_grace: float = 10.0
    max_artifact_bytes: int = 10 * 1024 * 1024
    max_run_artifact_bytes: int = 100 * 1024 * 1024
    # The run's stored artifact bytes (earlier claims'), read once when it writes its first.
    artifact_bytes_of: Callable[[str], int] | None = None
    extra_paths: tuple[str, ...] = ()
    metrics: Any = None  # runner.metrics.RunnerMetrics
    # Parsed definitions by (workflow, version): the version is a hash of the content.
    definitions: StatementCache = field(default_factory=StatementCache)


@dataclass
class TaskState:
    id: str
    step: str
    status: str
    attempt: int
    output: Any = None
    error: str | None = None
    approved: bool = False  # an approval gate let this execution of the step through

    @classmethod
    def of(cls, row: dict[str, Any]) -> TaskState:
        return cls(row["id"], row["step"], row["status"], row["attempt"], row["output"])


class Execution:
    def __init__(self, active: ActiveRun, options: ExecOptions) -> None:
        self.active = active
        self.options = options
        claimed = active.claimed
        self.wf: Workflow = options.definitions.get(
            (claimed.workflow, claimed.version),
            lambda: workflow_from_definition(claimed.definition),
        )
        self.inputs = active.claimed.inputs

    def run(self) -> None:
        with log_context(run_id=self.active.id, workflow=self.wf.name):
            self._run()

    def _run(self) -> None:
        active = self.active
        try:
            if self.wf.loop is not None:
                self._run_loop()
            else:
                self._run_graph()
        except StopExecution as stop:
            log.info(
                "run %s: execution stopped: %s", active.id, stop.reason,
                extra={"run_id": active.id, "action": "execution_stopped"},
            )  # fmt: skip
        except Exception as exc:  # a bug in the runner itself: fail the run, loudly
            log.exception("run %s: runner error", active.id, extra={"run_id": active.id})
            if not active.lost.is_set() and not active.shutdown.is_set():
                message = f"runner error: {type(exc).__name__}: {exc}"
                active.event("run.failed", message)
                active.finish("failed", error_message=message)
        finally:
            active.finished.set()

    # -- one stage, with retries ---------------------------------------------------------

    def _attempt_stage(
        self,
        task: TaskState,
        stage: Stage,
        *,
        attempt: int,
        outputs: dict[str, Any],
        loop_state: dict[str, Any] | None = None,
        retries_by_attempt: bool = True,
    ) -> StageResult:
        """Run a stage, retrying failures `stage.retries` times with exponential backoff.

        Graph steps count every try in `attempt`; loop stages keep the loop attempt and count
        tries in the events only (`retries_by_attempt=False`).
        """
        active = self.active
        tries = stage.retries + 1
        result = StageResult(False, error="not run")
        for try_no in range(1, tries + 1):
            active.check()
            if active.cancel.is_set():
                return StageResult(False, error="cancelled", cancelled=True)
            if retries_by_attempt:
                attempt = task.attempt + 1
            task.attempt = attempt
            task.status = "running"
            active.set_run(current_stage=task.step, current_attempt=attempt)
            active.update_task(
                task.id, status="running", attempt=attempt, started_at=NOW, error=None,
                completed_at=None,
            )  # fmt: skip
            active.event(
                "stage.started", f"{task.step} started (attempt {attempt}, try {try_no}/{tries})",
                stage=task.step, attempt=attempt, task_id=task.id,
                data={"try": try_no, "tries": tries, "kind": stage.kind},
            )  # fmt: skip
            job = StageJob(
                active=active,
                workflow=self.wf.name,
                step=task.step,
                stage=stage,
                task_id=task.id,
                attempt=attempt,
                inputs=self.inputs,
                outputs=outputs,
                kill_grace=self.options.kill_grace,
                max_artifact_bytes=self.options.max_artifact_bytes,
                max_run_artifact_bytes=self.options.max_run_artifact_bytes,
                artifact_bytes_of=self.options.artifact_bytes_of,
                extra_paths=self.options.extra_paths,
                **(loop_state or {}),
            )
            started = time.monotonic()
            with log_context(step=task.step, attempt=attempt):
                result = run_stage(job)
            active.check()  # a lost lease or shutdown: record nothing more
            duration = round(time.monotonic() - started, 3)
            status = "succeeded" if result.ok else ("cancelled" if result.cancelled else "failed")
            if self.options.metrics is not None:
                self.options.metrics.on_stage(self.wf.name, task.step, status, duration)
            will_retry = status == "failed" and try_no < tries and not active.cancel.is_set()
            active.event(
                "stage.finished",
                f"{task.step} {status}" + (f": {result.error}" if result.error else "")
                + (" (will retry)" if will_retry else ""),
                stage=task.step, attempt=attempt, task_id=task.id,
                data={"status": status, "duration_s": duration, "error": result.error,
                      "will_retry": will_retry, "try": try_no},
            )  # fmt: skip
            if result.ok or result.cancelled or not will_retry:
                task.status, task.output, task.error = status, result.output, result.error
                active.update_task(
                    task.id, status=status, output=result.output, error=result.error,
                    completed_at=NOW,
                )  # fmt: skip
                return result
            delay = min(MAX_BACKOFF, stage.backoff * (2 ** (try_no - 1)))
            if delay > 0 and active.cancel.wait(delay):
                continue  # cancelled while backing off: the loop head returns cancelled
        return result

    # -- graphs --------------------------------------------------------------------------

    def _run_graph(self) -> None:
        active, wf = self.active, self.wf
        assert wf.steps is not None
        tasks = {t["step"]: TaskState.of(t) for t in active.claimed.tasks}
        order = [s for s in wf.ordered_steps if s in tasks]
        self._apply_decisions(tasks)
        done: queue.SimpleQueue[tuple[str, StageResult]] = queue.SimpleQueue()
        running: set[str] = set()

        def outputs() -> dict[str, Any]:
            return {s: t.output for s, t in tasks.items() if t.status == "succeeded"}

        steps = wf.steps

        def work(step: str, snapshot: dict[str, Any]) -> None:
            try:
                result = self._attempt_stage(tasks[step], steps[step], attempt=0, outputs=snapshot)
            except StopExecution as stop:
                result = StageResult(False, error=stop.reason)
            except Exception as exc:  # noqa: BLE001 - reported through the queue
                log.exception("run %s: step %s crashed the runner thread", active.id, step)
                result = StageResult(False, error=f"runner error: {exc}")
            done.put((step, result))

        while True:
            # A lost lease or shutdown stops the scheduling too: `work` turns StopExecution
            # into a failed result, so without this a step would be scheduled again and again.
            active.check()
            if not active.cancel.is_set():
                self._skip_blocked(order, tasks)
            ready = [] if active.cancel.is_set() else [
                s for s in order
                if tasks[s].status == "created" and s not in running
                and all(tasks[n].status == "succeeded" for n in wf.steps[s].needs)
            ]  # fmt: skip
            for step in [s for s in ready if wf.steps[s].approval and not tasks[s].approved]:
                ready.remove(step)
                self._gate(tasks[step], wf.steps[step])
            if not running and not ready:
                break
            if not running and len(ready) == 1:
                work(ready[0], outputs())  # the common case: no thread hand-off
            else:
                snapshot = outputs()
                for step in ready:
                    running.add(step)
                    # Each branch thread logs with this thread's fields (run_id, runner_id).
                    context = contextvars.copy_context()
                    threading.Thread(
                        target=context.run, args=(work, step, snapshot), daemon=True,
                        name=f"{active.id}:{step}",
                    ).start()  # fmt: skip
            while True:
                try:
                    step, _result = done.get(block=bool(running), timeout=0.2)
                except queue.Empty:
                    if not running:
                        break
                    continue
                running.discard(step)
                break
        active.check()
        gates = [s for s in order if tasks[s].status == "waiting"]
        if gates and not active.cancel.is_set():
            log.info(
                "run %s: waiting for approval of %s; releasing it", active.id, ", ".join(gates),
                extra={"run_id": active.id, "action": "approval_wait"},
            )  # fmt: skip
            active.release_for_approval()
            return
        self._finish_graph(order, tasks)

    # -- approval gates ------------------------------------------------------------------

    def _apply_decisions(self, tasks: dict[str, TaskState]) -> None:
        """Carry out the decisions taken on waiting gates since the run was released."""
        for row in self.active.claimed.tasks:
            task = tasks[row["step"]]
            decision = row.get("approval_decision")
            if task.status != "waiting" or decision is None:
                continue
            if decision == "approve":
                task.status, task.approved = "created", True  # runs when its turn comes
                continue
            comment = row.get("approval_comment")
            why = f"rejected by {row.get('approval_by')}" + (f": {comment}" if comment else "")
            task.status, task.error = "failed", why
            self.active.update_task(task.id, status="failed", error=why, completed_at=NOW)
            self.active.event(
                "stage.finished", f"{task.step} failed: {why}", stage=task.step,
                task_id=task.id, data={"status": "failed", "error": why, "rejected": True},
            )  # fmt: skip

    def _gate(self, task: TaskState, stage: Stage) -> None:
        assert stage.approval is not None
        task.status = "waiting"
        self.active.update_task(task.id, status="waiting")
        self.active.event(
            "approval.requested", f"{task.step} waits for approval: {stage.approval.prompt}",
            stage=task.step, task_id=task.id, data={"prompt": stage.approval.prompt},
        )  # fmt: skip

    def _skip_blocked(self, order: list[str], tasks: dict[str, TaskState]) -> None:
        assert self.wf.steps is not None
        for step in order:
            task = tasks[step]
            if task.status != "created":
                continue
            blockers = [
                n for n in self.wf.steps[step].needs
                if tasks[n].status in ("failed", "skipped", "cancelled")
            ]  # fmt: skip
            if blockers:
                task.status = "skipped"
                why = f"skipped: {', '.join(blockers)} did not succeed"
                self.active.update_task(task.id, status="skipped", error=why, completed_at=NOW)
                self.active.event(
                    "stage.finished", f"{step} {why}", stage=step, task_id=task.id,
                    data={"status": "skipped", "blocked_by": blockers},
                )  # fmt: skip

    def _finish_graph(self, order: list[str], tasks: dict[str, TaskState]) -> None:
        active, wf = self.active, self.wf
        assert wf.steps is not None
        failed = [s for s in order if tasks[s].status == "failed"]
        if active.cancel.is_set() and not failed:
            for step in order:
                if tasks[step].status in ("created", "waiting"):
                    tasks[step].status = "cancelled"
                    active.update_task(tasks[step].id, status="cancelled", completed_at=NOW)
            active.event("run.cancelled", "run cancelled")
            active.finish("cancelled", error_message="cancelled")
            return
        needed = wf.needed_steps
        sinks = {s: tasks[s].output for s in order if s not in needed}
        if failed:
            first = tasks[failed[0]]
            message = f"step {first.step!r} failed: {first.error}"
            if len(failed) > 1:
                message += f" (and {len(failed) - 1} more failed step(s))"
            active.event("run.failed", message, data={"failed_steps": failed})
            active.finish("failed", error_message=message, output=sinks)
            return
        # Cancelled tasks a partial re-run left alone: the run cannot count as succeeded.
        left = [s for s in order if tasks[s].status == "cancelled"]
        if left:
            message = f"step(s) {', '.join(left)} stayed cancelled (not re-run)"
            active.event("run.cancelled", message, data={"cancelled_steps": left})
            active.finish("cancelled", error_message=message, output=sinks)
            return
        active.event("run.succeeded", "all steps succeeded")
        active.finish("succeeded", output=sinks, error_message=None, current_stage=None)

    # -- loops ---------------------------------------------------------------------------

    def _run_loop(self) -> None:
        active, loop = self.active, self.wf.loop
        assert loop is not None
        rows: dict[tuple[str, int], TaskState] = {}
        for t in active.claimed.tasks:
            rows[(t["step"], t["attempt"])] = TaskState(
                t["id"], t["step"], t["status"], t["attempt"], t["output"]
            )
        history: list[dict[str, Any]] = []
        output: Any = None
        feedback: str | None = None
        score: float | None = None
        attempt = 1
        phase = "produce"
        # Resume: replay what earlier claims finished.
        while True:
            gen_step = "produce" if attempt == 1 else "revise"
            gen = rows.get((gen_step, attempt))
            if gen is None or gen.status != "succeeded":
                phase = "produce"
                break
            output = gen.output
            ev = rows.get(("evaluate", attempt))
            if ev is None or ev.status != "succeeded":
                phase = "evaluate"
                break
            score, feedback = _score_of(ev.output)
            history.append({"attempt": attempt, "output": output, "score": score,
                            "feedback": feedback})  # fmt: skip
            if score is not None and score >= loop.pass_threshold:
                self._finish_loop(True, attempt, score, output)
                return
            if attempt >= loop.max_attempts:
                self._finish_loop(False, attempt, score, output)
                return
            attempt += 1

        while True:
            if active.cancel.is_set():
                self._cancel_loop(rows)
                return
            if phase == "produce":
                gen_step = "produce" if attempt == 1 else "revise"
                task = self._loop_task(rows, gen_step, attempt)
                result = self._attempt_stage(
                    task, loop.stage(gen_step), attempt=attempt,
                    outputs={"produce": output, "evaluate": {"score": score, "feedback": feedback}},
                    loop_state={"output": output, "feedback": feedback, "score": score,
                                "history": list(history)},
                    retries_by_attempt=False,
                )  # fmt: skip
                if result.cancelled:
                    self._cancel_loop(rows)
                    return
                if not result.ok:
                    self._fail_loop(f"{gen_step} failed on attempt {attempt}: {result.error}",
                                    attempt, score, output)  # fmt: skip
                    return
                output = result.output
                phase = "evaluate"
            task = self._loop_task(rows, "evaluate", attempt)
            result = self._attempt_stage(
                task, loop.evaluate, attempt=attempt,
                outputs={"produce": output},
                loop_state={"output": output, "feedback": feedback, "score": score,
                            "history": list(history)},
                retries_by_attempt=False,
            )  # fmt: skip
            if result.cancelled:
                self._cancel_loop(rows)
                return
            if not result.ok:
                self._fail_loop(f"evaluate failed on attempt {attempt}: {result.error}",
                                attempt, score, output)  # fmt: skip
                return
            score, feedback = _score_of(result.output)
            if score is None:
                self._fail_loop(
                    "evaluate must return an object with a numeric `score`, got "
                    f"{_short(result.output)}", attempt, None, output,
                )  # fmt: skip
                return
            passed = score >= loop.pass_threshold
            history.append({"attempt": attempt, "output": output, "score": score,
                            "feedback": feedback})  # fmt: skip
            active.event(
                "score", f"attempt {attempt}: score {score:.3g} "
                + ("≥" if passed else "<") + f" threshold {loop.pass_threshold:g}",
                stage="evaluate", attempt=attempt, task_id=task.id,
                data={"score": score, "feedback": feedback, "threshold": loop.pass_threshold,
                      "passed": passed},
            )  # fmt: skip
            active.set_run(final_score=score)
            if passed or attempt >= loop.max_attempts:
                self._finish_loop(passed, attempt, score, output)
                return
            attempt += 1
            phase = "produce"

    def _loop_task(
        self, rows: dict[tuple[str, int], TaskState], step: str, attempt: int
    ) -> TaskState:
        existing = rows.get((step, attempt))
        if existing is not None:
            return existing
        # Within an attempt the generating stage (produce or revise) comes before evaluate.
        position = 1 if step == "evaluate" else 0
        task = TaskState(new_id("tsk"), step, "created", attempt)
        self.active.insert_task(
            {"id": task.id, "step": step, "position": attempt * 10 + position, "needs": [],
             "status": "created", "attempt": attempt}
        )  # fmt: skip
        rows[(step, attempt)] = task
        return task

    def _finish_loop(self, passed: bool, attempt: int, score: float | None, output: Any) -> None:
        loop = self.wf.loop
        assert loop is not None
        if passed:
            message = f"passed on attempt {attempt} with score {score:.3g}"
            self.active.event("run.succeeded", message,
                              data={"attempt": attempt, "score": score})  # fmt: skip
            self.active.finish(
                "succeeded", final_score=score, output=output, current_attempt=attempt,
                error_message=None,
            )  # fmt: skip
            return
        shown = "none" if score is None else f"{score:.3g}"
        self._fail_loop(
            f"score {shown} below threshold {loop.pass_threshold:g} after {attempt} attempt(s)",
            attempt, score, output,
        )  # fmt: skip

    def _fail_loop(self, message: str, attempt: int, score: float | None, output: Any) -> None:
        self.active.event("run.failed", message, data={"attempt": attempt, "score": score})
        self.active.finish(
            "failed", final_score=score, output=output, current_attempt=attempt,
            error_message=message,
        )  # fmt: skip

    def _cancel_loop(self, rows: dict[tuple[str, int], TaskState]) -> None:
        for task in rows.values():
            if task.status in ("created", "waiting"):
                task.status = "cancelled"
                self.active.update_task(task.id, status="cancelled", completed_at=NOW)
        self.active.event("run.cancelled", "run cancelled")
        self.active.finish("cancelled", error_message="cancelled")


def _score_of(value: Any) -> tuple[float | None, str | None]:
    if isinstance(value, dict):
        score = value.get("score")
        if isinstance(score, int | float) and not isinstance(score, bool):
            feedback = value.get("feedback")
            return float(score), None if feedback is None else str(feedback)
    return None, None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."

"""The buttons that change something, as data: each one becomes a button whose confirmation
dialog names what will happen, sends one request to the JSON API and shows the API's error if
it refuses (static/dashboard.js, `Actions`).

An action is offered only when the app serves its endpoint, so the control-plane operations
(restart, reset, re-run, dispatch, approve) appear by themselves once their routes exist; adding
another one is one more entry here. With API tokens, an action the signed-in token's role may
not use is disabled with the reason (the access level comes from the route's own `@access`
declaration, api/auth.py), and the API still answers 403 if it is sent anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.routing import BaseRoute, Route

from ..auth import PUBLIC, Principal, default_access, role_allows
from .views import ACTIVE, FINISHED, latest_tasks

# (method, path) → access level, as `served` answers; a plain set (tests) means the defaults.
Routes = Mapping[tuple[str, str], str] | Collection[tuple[str, str]]


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: str = "textarea"  # text | textarea | select | checkbox | checkboxes | hidden
    required: bool = False
    hint: str = ""
    options: list[dict[str, Any]] = field(default_factory=list)  # [{value, label, checked}]
    value: Any = None

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "kind": self.kind,
                "required": self.required, "hint": self.hint, "options": self.options,
                "value": self.value}  # fmt: skip


@dataclass(frozen=True)
class Action:
    key: str
    label: str
    method: str
    route: str  # the route's path as registered, e.g. /api/runs/{run_id}/cancel
    title: str
    effect: str
    confirm: str
    fields: tuple[Field, ...] = ()
    danger: bool = False
    then: str = "refresh"  # refresh | open (the new run the API answers with)
    preview: str | None = None  # a GET route answering what would happen
    disabled: str | None = None  # why it cannot be used now (None: it can)
    params: dict[str, str] = field(default_factory=dict)

    def url(self, route: str | None = None) -> str:
        path = route or self.route
        for name, value in self.params.items():
            path = path.replace("{" + name + "}", value)
        return path

    def render(self) -> dict[str, Any]:
        """What the template needs: label, disabled reason, and the JSON config for the JS."""
        return {
            "key": self.key,
            "label": self.label,
            "danger": self.danger,
            "disabled": self.disabled,
            "config": {
                "method": self.method, "url": self.url(), "title": self.title,
                "effect": self.effect, "confirm": self.confirm, "danger": self.danger,
                "fields": [f.config() for f in self.fields], "then": self.then,
                "preview": self.url(self.preview) if self.preview else None,
            },
        }  # fmt: skip


def served(routes: list[BaseRoute]) -> dict[tuple[str, str], str]:
    """(method, path) → access level of every route the app serves: each /api route's
    `@access` declaration (or the default the guard gives it); other routes are public."""
    out: dict[tuple[str, str], str] = {}
    for r in routes:
        if isinstance(r, Route):
            methods = sorted(r.methods or ())
            level = getattr(r.endpoint, "loopdeck_access", None)
            if level is None:
                level = default_access(methods) if r.path.startswith("/api/") else PUBLIC
            for method in methods:
                out[(method, r.path)] = level
    return out


def refusal(routes: Routes, method: str, path: str, who: Principal | None) -> str | None:
    """Why `who` may not send this request (None: it may, or no tokens are configured)."""
    if who is None:
        return None
    level = routes[(method, path)] if isinstance(routes, Mapping) else default_access([method])
    if role_allows(who.role, level):
        return None
    return f"needs the {level} role ({who.name} is {who.role})"


def _offer(action: Action, routes: Routes, who: Principal | None) -> dict[str, Any] | None:
    if (action.method, action.route) not in routes:
        return None
    refused = refusal(routes, action.method, action.route, who)
    return (replace(action, disabled=refused) if refused else action).render()


def _reason(required: bool = False, hint: str = "Recorded in the audit log.") -> Field:
    return Field("reason", "Reason", "textarea", required=required, hint=hint)


def _names(tasks: list[dict[str, Any]]) -> str:
    return ", ".join(t["step"] for t in tasks) or "none"


def _label(run: dict[str, Any], t: dict[str, Any]) -> str:
    """A task as people name it: the step, and for a loop the attempt (evaluate #2)."""
    return f"{t['step']} #{t['attempt']}" if run.get("kind") == "loop" else str(t["step"])


def _cancel(run: dict[str, Any]) -> Action:
    if run["status"] in ("queued", "waiting"):
        effect = (f"Run {run['id']} has not started its work: it ends as cancelled at once "
                  "and no runner will pick it up.")  # fmt: skip
    else:
        effect = (f"The runner holding run {run['id']} stops it at the next stage boundary "
                  "and terminates a running command; stages already finished keep their "
                  "results. The run ends as cancelled.")  # fmt: skip
    disabled = None
    if run["status"] not in ACTIVE:
        disabled = f"the run is already {run['status']}"
    elif run.get("cancel_requested_at"):
        disabled = "cancellation was already requested"
    return Action("cancel", "Cancel", "POST", "/api/runs/{run_id}/cancel", "Cancel this run?",
                  effect, "Cancel run", (_reason(),), danger=True, disabled=disabled)  # fmt: skip


def _retry(run: dict[str, Any]) -> Action:
    return Action(
        "retry", "Retry", "POST", "/api/runs/{run_id}/retry", "Retry as a new run?",
        f"A new run of '{run['workflow']}' is queued with the same inputs and the workflow's "
        f"current published definition. Run {run['id']} stays as it is and becomes its parent.",
        "Start new run", (_reason(),), then="open",
        disabled=None if run["status"] in FINISHED else "only a finished run can be retried",
    )  # fmt: skip


def _restart(run: dict[str, Any]) -> Action:
    return Action(
        "restart", "Restart", "POST", "/api/runs/{run_id}/restart", "Restart from the snapshot?",
        f"A new run is queued from the definition run {run['id']} was created with (its "
        "config snapshot) and its original inputs, even if the workflow changed since. Run "
        f"{run['id']} stays as it is and becomes its parent.",
        "Restart as new run", (_reason(),), then="open",
        disabled=None if run["status"] in FINISHED else "only a finished run can be restarted",
    )  # fmt: skip


def downstream(tasks: list[dict[str, Any]], step: str) -> list[dict[str, Any]]:
    """`step` and every step that needs it, directly or not (graph runs), in step order."""
    latest = latest_tasks(tasks)
    chosen = {step}
    grew = True
    while grew:
        grew = False
        for t in latest:
            if t["step"] not in chosen and chosen & set(t.get("needs") or []):
                chosen.add(t["step"])
                grew = True
    return [t for t in latest if t["step"] in chosen]


def _reset_options(run: dict[str, Any]) -> list[dict[str, Any]]:
    tasks = run.get("tasks") or []
    unfinished = [t for t in tasks if t["status"] != "succeeded"]
    whole = f"unfinished work (runs again: {', '.join(_label(run, t) for t in unfinished)})"
    if not unfinished:
        whole = "unfinished work (none: every step succeeded)"
    options = [{"value": "", "label": whole, "checked": True}]
    if run.get("kind") == "loop":
        ordered = sorted(tasks, key=lambda t: t.get("position", 0))
        for i, t in enumerate(ordered):
            later = len(ordered) - i - 1
            value = "produce" if t["step"] == "produce" else f"{t['step']}#{t['attempt']}"
            note = f"; {later} later stage{'s' if later != 1 else ''} deleted" if later else ""
            options.append({"value": value,
                            "label": f"{_label(run, t)} (the loop goes on from there{note})"})  # fmt: skip
    else:
        for t in latest_tasks(tasks):
            again = downstream(tasks, t["step"])
            options.append({"value": t["step"],
                            "label": f"from {t['step']} (runs again: {_names(again)})"})  # fmt: skip
    return options


def _reset(run: dict[str, Any]) -> Action:
    tasks = run.get("tasks") or []
    holder = ""
    if run["status"] == "running" and run.get("claimed_by"):
        holder = (f" Runner {run['claimed_by']} loses its claim at once: its later writes are "
                  "rejected and it stops the run's work.")  # fmt: skip
    started = any(t["status"] != "created" for t in tasks)
    return Action(
        "reset", "Reset…", "POST", "/api/runs/{run_id}/reset", "Reset this run?",
        f"Run {run['id']} goes back to the queue and the steps named below run again on "
        f"whichever runner claims it; earlier results are kept.{holder}",
        "Reset run",
        (Field("to_step", "Reset", "select", options=_reset_options(run)),
         Field("clear_results", "Also delete results", "checkbox",
               hint="Deletes the artifacts of the steps that run again. With “unfinished "
                    "work”: every step runs again and all the run's artifacts and metrics are "
                    "deleted (start over)."),
         _reason(required=True, hint="Required: recorded in the event and the audit log.")),
        danger=True,
        disabled="the run has not started: nothing to reset"
        if run["status"] == "queued" and not started
        else None,
    )  # fmt: skip


def _rerun(run: dict[str, Any]) -> Action:
    failed = [t for t in run.get("tasks") or [] if t["status"] in ("failed", "cancelled")]
    options = [{"value": t["id"], "label": f"{_label(run, t)} ({t['status']})", "checked": True}
               for t in failed]  # fmt: skip
    disabled = None
    if run["status"] not in FINISHED:
        disabled = "the run has not finished"
    elif not failed:
        disabled = "no failed or cancelled task to re-run"
    return Action(
        "rerun", "Re-run failed…", "POST", "/api/runs/{run_id}/rerun", "Re-run failed tasks?",
        f"Only the chosen tasks of run {run['id']}, and the steps skipped because of them, run "
        "again; every other step keeps its result and is not executed again. The run goes back "
        "to the queue.",
        "Re-run",
        (Field("task_ids", "Tasks to run again", "checkboxes", required=True, options=options),
         Field("dispatch", "Queue it at once", "checkbox", value=True,
               hint="Untick to hold the run (status waiting) until someone dispatches it."),
         _reason(required=True, hint="Required: recorded on the tasks and in the audit log.")),
        preview="/api/runs/{run_id}/rerun-plan", disabled=disabled,
    )  # fmt: skip


def is_held(run: dict[str, Any]) -> bool:
    """A re-run prepared with dispatch=false: waiting, and no gate waits for a decision."""
    return run["status"] == "waiting" and not any(
        t["status"] == "waiting" for t in run.get("tasks") or []
    )


def _dispatch(run: dict[str, Any]) -> list[Action]:
    if not is_held(run):
        return []
    again = [t for t in run.get("tasks") or [] if t["status"] == "created"]
    return [Action(
        "dispatch", "Dispatch", "POST", "/api/runs/{run_id}/dispatch", "Dispatch the held run?",
        f"Run {run['id']} goes back to the queue and the next runner runs: "
        f"{', '.join(_label(run, t) for t in again) or 'nothing'}. The other steps keep their "
        "results.",
        "Dispatch", (_reason(),),
    )]  # fmt: skip


def _decisions(run: dict[str, Any]) -> list[Action]:
    out = []
    tasks = run.get("tasks") or []
    for t in tasks:
        if t["status"] != "waiting":
            continue
        step = t["step"]
        prompt = t.get("approval_prompt")
        asked = f"The gate asks: “{prompt}” " if prompt else ""
        after = [d["step"] for d in downstream(tasks, step) if d["step"] != step]
        then = f" ({', '.join(after)} after it)" if after else ""
        skipped = (
            f" and {', '.join(after)} {'is' if len(after) == 1 else 'are'} skipped" if after else ""
        )
        disabled = None
        if t.get("approval_decision"):
            disabled = (f"already {t['approval_decision']}d by {t.get('approval_by') or '?'}; "
                        "a runner carries it out next")  # fmt: skip
        for decision, label, effect in (
            ("approve", "Approve", f"{asked}Step '{step}' runs{then}."),
            ("reject", "Reject", f"{asked}Step '{step}' fails (rejected){skipped}."),
        ):
            out.append(Action(
                decision, f"{label} '{step}'", "POST", "/api/runs/{run_id}/approve",
                f"{label} step '{step}'?", effect, label,
                (Field("step", "Step", "hidden", value=step),
                 Field("decision", "Decision", "hidden", value=decision),
                 Field("comment", "Comment", "textarea", hint="Recorded with the decision and "
                       "in the audit log.")),
                danger=decision == "reject", disabled=disabled,
            ))  # fmt: skip
    return out


RUN_ACTIONS: tuple[Callable[[dict[str, Any]], Action | list[Action]], ...] = (
    _decisions, _dispatch, _cancel, _retry, _restart, _rerun, _reset,
)  # fmt: skip


def run_actions(
    run: dict[str, Any], routes: Routes, who: Principal | None = None
) -> list[dict[str, Any]]:
    out = []
    for make in RUN_ACTIONS:
        made = make(run)
        for action in made if isinstance(made, list) else [made]:
            offered = _offer(replace(action, params={"run_id": run["id"]}), routes, who)
            if offered is not None:
                out.append(offered)
    return out


def runner_actions(
    runner: dict[str, Any], routes: Routes, who: Principal | None = None
) -> list[dict[str, Any]]:
    disabled = None
    if runner["status"] == "stopped":
        disabled = "the runner has stopped"
    elif runner.get("deregister_requested_at"):
        disabled = "deregistration was already requested; it is draining"
    action = Action(
        "deregister", "Deregister", "DELETE", "/api/runners/{runner_id}",
        f"Deregister runner {runner['id']}?",
        f"Runner {runner['id']} on {runner['hostname']} (pid {runner['pid']}) sees the request "
        "at its next heartbeat: it stops claiming, lets its running stages finish (or hands "
        "them back to the queue), and exits.",
        "Deregister", (_reason(),), danger=True, disabled=disabled,
        params={"runner_id": runner["id"]},
    )  # fmt: skip
    offered = _offer(action, routes, who)
    return [offered] if offered else []

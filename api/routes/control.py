"""/api/runs/{id}/restart, reset, rerun, rerun-plan, approve, dispatch: the operator's intents
(docs/control-plane.md). Each handler validates, calls one store verb (one transaction, with
its audit row) and answers with the run's new state."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.errors import InvalidInput

from ..auth import ADMIN, OPERATOR, VIEWER, access
from ..context import actor, call, parse_body, resources
from ..models import RerunPlan, ResetResult, RunDetail
from ..openapi import Param, operation
from ..schemas import ApproveBody, Reason, RerunBody, ResetBody

MAX_SELECTION = 1000


@access(OPERATOR)
@operation(
    "A new run from the run's config snapshot and original inputs",
    body=Reason, body_required=False, responses={201: RunDetail},
)  # fmt: skip
async def restart_run(request: Request) -> Response:
    body = await parse_body(request, Reason, required=False)
    run = await call(
        request, resources(request).store.restart_run, request.path_params["run_id"],
        body.reason, actor(request, body.requested_by),
    )  # fmt: skip
    return JSONResponse(run, status_code=201, headers={"Location": f"/api/runs/{run['id']}"})


@access(ADMIN)
@operation("Reset a run (stuck ones too): fences the old claim", body=ResetBody,
           responses={200: ResetResult})  # fmt: skip
async def reset_run(request: Request) -> Response:
    body = await parse_body(request, ResetBody)
    run = await call(
        request, resources(request).store.reset_run, request.path_params["run_id"],
        to_step=body.to_step, clear_results=body.clear_results, reason=body.reason,
        actor=actor(request, body.requested_by),
    )  # fmt: skip
    return JSONResponse(run)


@access(OPERATOR)
@operation("Re-run failed or cancelled tasks of a finished run", body=RerunBody,
           responses={202: RunDetail})  # fmt: skip
async def rerun_run(request: Request) -> Response:
    body = await parse_body(request, RerunBody)
    run = await call(
        request, resources(request).store.rerun_run, request.path_params["run_id"],
        task_ids=body.task_ids, steps=body.steps, reason=body.reason,
        actor=actor(request, body.requested_by), dispatch=body.dispatch,
    )  # fmt: skip
    return JSONResponse(run, status_code=202)


def _selection(request: Request, name: str) -> list[str]:
    values = [v.strip() for raw in request.query_params.getlist(name) for v in raw.split(",")]
    values = [v for v in values if v]
    if len(values) > MAX_SELECTION or any(len(v) > 200 for v in values):
        raise InvalidInput(f"{name}: at most {MAX_SELECTION} names of ≤ 200 characters", field=name)
    return list(dict.fromkeys(values))


_NAMES = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 200},
          "maxItems": MAX_SELECTION}  # fmt: skip


@access(VIEWER)
@operation(
    "What a re-run would reset and reuse",
    responses={200: RerunPlan},
    params=[Param("task_ids", _NAMES), Param("steps", _NAMES)],
    also={409: "the run is not finished, or has nothing to re-run"},
)
async def rerun_plan(request: Request) -> Response:
    plan = await call(
        request, resources(request).store.rerun_plan, request.path_params["run_id"],
        task_ids=_selection(request, "task_ids"), steps=_selection(request, "steps"),
    )  # fmt: skip
    return JSONResponse(plan)


@access(OPERATOR)
@operation("Approve or reject a step waiting at an approval gate", body=ApproveBody,
           responses={202: RunDetail})  # fmt: skip
async def approve_step(request: Request) -> Response:
    body = await parse_body(request, ApproveBody)
    run = await call(
        request, resources(request).store.decide_approval, request.path_params["run_id"],
        body.step, body.decision, body.comment, actor(request, body.requested_by),
    )  # fmt: skip
    return JSONResponse(run, status_code=202)


@access(OPERATOR)
@operation("Release a held re-run to the queue", body=Reason, body_required=False,
           responses={202: RunDetail})  # fmt: skip
async def dispatch_run(request: Request) -> Response:
    body = await parse_body(request, Reason, required=False)
    run = await call(
        request, resources(request).store.dispatch_run, request.path_params["run_id"],
        body.reason, actor(request, body.requested_by),
    )  # fmt: skip
    return JSONResponse(run, status_code=202)


routes = [
    Route("/api/runs/{run_id}/restart", restart_run, methods=["POST"]),
    Route("/api/runs/{run_id}/reset", reset_run, methods=["POST"]),
    Route("/api/runs/{run_id}/rerun", rerun_run, methods=["POST"]),
    Route("/api/runs/{run_id}/rerun-plan", rerun_plan, methods=["GET"]),
    Route("/api/runs/{run_id}/approve", approve_step, methods=["POST"]),
    Route("/api/runs/{run_id}/dispatch", dispatch_run, methods=["POST"]),
]

"""/api/health, /api/workflows, /api/runners, /api/stats, /api/audit, /api/cron/reap."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared import __version__
from shared.errors import InvalidInput, LoopdeckError
from shared.migrate import current_revision, head_revision

from ..auth import ADMIN, CRON, PUBLIC, VIEWER, access
from ..context import actor, call, query_int, resources
from ..errors import error_response
from ..models import (
    AuditPage,
    Health,
    ReapResult,
    Runner,
    RunnerList,
    Stats,
    Workflow,
    WorkflowList,
)
from ..openapi import Param, bool_param, limit_param, operation


@access(PUBLIC)
@operation("Database reachable, schema version, build version",
           responses={200: Health, 503: Health})  # fmt: skip
async def health(request: Request) -> Response:
    store = resources(request).store
    try:
        current = await call(request, current_revision, store.engine)
    except Exception as exc:  # noqa: BLE001 - health reports any database failure as 503
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return error_response(503, "database_unavailable", f"database unreachable: {message}")
    head = head_revision()
    ok = current == head
    body = {
        "status": "ok" if ok else "schema_outdated",
        "database": {"dialect": store.dialect, "reachable": True},
        "schema": {"current": current, "head": head},
        "version": __version__,
        # So a client (the dashboard) knows whether to ask for a token: "token" or "none".
        "auth": "token" if resources(request).tokens else "none",
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@access(VIEWER)
@operation("Published workflow definitions with their input schemas",
           responses={200: WorkflowList})  # fmt: skip
async def list_workflows(request: Request) -> Response:
    return JSONResponse(await call(request, resources(request).store.list_workflows))


@access(VIEWER)
@operation("One published workflow", responses={200: Workflow})
async def get_workflow(request: Request) -> Response:
    wf = await call(request, resources(request).store.get_workflow, request.path_params["name"])
    return JSONResponse(wf)


@access(VIEWER)
@operation("The runner registry with health", responses={200: RunnerList},
           params=[bool_param("include_stopped", "default true")])  # fmt: skip
async def list_runners(request: Request) -> Response:
    raw = request.query_params.get("include_stopped", "true")
    if raw not in ("true", "false"):
        raise InvalidInput("include_stopped must be true or false", field="include_stopped")
    include = raw == "true"
    return JSONResponse(
        await call(request, resources(request).store.list_runners, include_stopped=include)
    )


@access(ADMIN)
@operation("Ask a runner to drain and exit", responses={202: Runner},
           params=[Param("reason", {"type": "string", "maxLength": 2000})])  # fmt: skip
async def deregister_runner(request: Request) -> Response:
    reason = request.query_params.get("reason") or None
    if reason is not None and len(reason) > 2000:
        raise InvalidInput("reason must be at most 2000 characters", field="reason")
    runner = await call(
        request, resources(request).store.request_deregister, request.path_params["runner_id"],
        actor(request), reason,
    )  # fmt: skip
    return JSONResponse(runner, status_code=202)


@access(VIEWER)
@operation("Counts by status, durations, cost/tokens, stalled count", responses={200: Stats})
async def stats(request: Request) -> Response:
    return JSONResponse(await call(request, resources(request).store.stats))


@access(VIEWER)
@operation(
    "The audit log, newest first",
    responses={200: AuditPage},
    params=[Param("run_id", {"type": "string"}),
            Param("before", {"type": "integer", "minimum": 0, "maximum": 2**62},
                  "next_before of the previous page"), limit_param(100)],
)  # fmt: skip
async def audit(request: Request) -> Response:
    limit = query_int(request, "limit", 100, 1, 500)
    before = query_int(request, "before", 0, 0, 2**62) or None
    page = await call(
        request, resources(request).store.list_audit,
        run_id=request.query_params.get("run_id") or None, before=before, limit=limit,
    )  # fmt: skip
    return JSONResponse(page)


@access(CRON)
@operation("Rescue stalled runs (for a serverless cron)", responses={200: ReapResult})
async def cron_reap(request: Request) -> Response:
    """The stalled-run job for serverless cron (Bearer LOOPDECK_CRON_SECRET)."""
    secret = resources(request).settings.cron_secret
    if not secret:
        return error_response(
            403, "forbidden", "the cron endpoint is disabled: set LOOPDECK_CRON_SECRET"
        )
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(given.encode(), secret.encode()):
        return error_response(
            401, "unauthorized", "a valid Bearer LOOPDECK_CRON_SECRET is required",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    try:
        rescued = await call(request, resources(request).store.reap_stalled)
    except LoopdeckError:
        raise
    return JSONResponse({"rescued": rescued, "count": len(rescued)})


routes = [
    Route("/api/health", health, methods=["GET"]),
    Route("/api/workflows", list_workflows, methods=["GET"]),
    Route("/api/workflows/{name}", get_workflow, methods=["GET"]),
    Route("/api/runners", list_runners, methods=["GET"]),
    Route("/api/runners/{runner_id}", deregister_runner, methods=["DELETE"]),
    Route("/api/stats", stats, methods=["GET"]),
    Route("/api/audit", audit, methods=["GET"]),
    Route("/api/cron/reap", cron_reap, methods=["GET", "POST"]),
]

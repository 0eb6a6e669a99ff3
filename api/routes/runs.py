"""/api/runs: create, list, detail, events, artifacts, cancel, retry."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.clock import parse_time
from shared.errors import InvalidInput
from shared.schema import RUN_STATUSES
from shared.store import RunFilter

from ..auth import OPERATOR, VIEWER, access
from ..context import actor, call, parse_body, query_int, resources
from ..models import ArtifactList, EventPage, Run, RunDetail, RunPage
from ..openapi import Param, bool_param, limit_param, operation
from ..schemas import CreateRun, Reason

MAX_IDEMPOTENCY_KEY = 255
MIN_TIME_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def _time_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = parse_time(raw)
    except (ValueError, OverflowError):
        raise InvalidInput(f"{name} must be an ISO 8601 time", field=name) from None
    # Beyond what a 64-bit column holds the database would fail (a 500), not answer.
    if not MIN_TIME_MS <= value <= MAX_TIME_MS:
        raise InvalidInput(f"{name} must be between years 1 and 9999", field=name)
    return value


@access(OPERATOR)
@operation(
    "Create a queued run",
    body=CreateRun,
    responses={201: Run, 200: Run},
    params=[Param("Idempotency-Key", {"type": "string", "minLength": 1,
                                      "maxLength": MAX_IDEMPOTENCY_KEY, "pattern": "^[ -~]+$"},
                  "a repeat with the same key answers 200 with the same run", where="header")],
)  # fmt: skip
async def create_run(request: Request) -> Response:
    body = await parse_body(request, CreateRun)
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
        raise InvalidInput(
            f"Idempotency-Key must be 1–{MAX_IDEMPOTENCY_KEY} printable characters",
            field="Idempotency-Key",
        )
    store = resources(request).store
    run, created = await store.create_run_async(
        body.workflow,
        body.inputs,
        queue=body.queue,
        priority=body.priority,
        not_before_ms=body.not_before_ms(),
        origin="api",
        idempotency_key=key,
        actor=actor(request, body.requested_by),
    )
    headers = {"Location": f"/api/runs/{run['id']}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    else:
        resources(request).metrics.runs_created.labels(run["workflow"], "api").inc()
    return JSONResponse(run, status_code=201 if created else 200, headers=headers)


# ISO 8601, or epoch milliseconds (shared.clock.parse_time).
_TIME = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}]}


@access(VIEWER)
@operation(
    "List runs, newest first (keyset pagination)",
    responses={200: RunPage},
    params=[
        Param("status", {"type": "array", "items": {"type": "string", "enum": list(RUN_STATUSES)}},
              "one or more statuses (comma-separated or repeated)"),
        Param("workflow", {"type": "string"}), Param("queue", {"type": "string"}),
        Param("q", {"type": "string"}, "text in the id, workflow, stage, error or inputs"),
        Param("created_after", _TIME), Param("created_before", _TIME),
        Param("parent_run_id", {"type": "string"}),
        bool_param("stalled", "only running runs without a recent heartbeat"),
        Param("cursor", {"type": "string"}, "next_cursor of the previous page"),
        limit_param(50),
    ],
)  # fmt: skip
async def list_runs(request: Request) -> Response:
    q = request.query_params
    statuses = tuple(s for raw in q.getlist("status") for s in raw.split(",") if s)
    stalled = q.get("stalled")
    if stalled not in (None, "true", "false"):
        raise InvalidInput("stalled must be true or false", field="stalled")
    flt = RunFilter(
        statuses=statuses,
        workflow=q.get("workflow") or None,
        queue=q.get("queue") or None,
        text=q.get("q") or q.get("text") or None,
        created_after_ms=_time_param(request, "created_after"),
        created_before_ms=_time_param(request, "created_before"),
        parent_run_id=q.get("parent_run_id") or None,
        stalled=stalled == "true" or None,
    )
    limit = query_int(request, "limit", 50, 1, 500)
    page = await call(
        request, resources(request).store.list_runs, flt, cursor=q.get("cursor") or None,
        limit=limit,
    )  # fmt: skip
    return JSONResponse(page)


@access(VIEWER)
@operation("A run with its tasks, lineage and audit trail", responses={200: RunDetail})
async def get_run(request: Request) -> Response:
    run = await call(request, resources(request).store.get_run, request.path_params["run_id"])
    return JSONResponse(run)


@access(VIEWER)
@operation(
    "The run's timeline after a cursor",
    responses={200: EventPage},
    params=[Param("after", {"type": "integer", "minimum": 0, "maximum": 2**62, "default": 0},
                  "an event id: only later events"), limit_param(200)],
)  # fmt: skip
async def list_events(request: Request) -> Response:
    after = query_int(request, "after", 0, 0, 2**62)
    limit = query_int(request, "limit", 200, 1, 500)
    page = await call(
        request, resources(request).store.list_events, request.path_params["run_id"],
        after=after, limit=limit,
    )  # fmt: skip
    return JSONResponse(page)


@access(VIEWER)
@operation("The run's artifacts (without content)", responses={200: ArtifactList})
async def list_artifacts(request: Request) -> Response:
    page = await call(
        request, resources(request).store.list_artifacts, request.path_params["run_id"]
    )
    return JSONResponse(page)


@access(VIEWER)
@operation("An artifact's content, with its media type", responses={200: None},
           media_type="*/*")  # fmt: skip
async def get_artifact(request: Request) -> Response:
    meta, content = await call(
        request, resources(request).store.get_artifact, request.path_params["run_id"],
        request.path_params["artifact_id"],
    )  # fmt: skip
    filename = meta["filename"].replace('"', "")
    return Response(
        content,
        media_type=meta["media_type"],
        headers={
            "Content-Disposition": f'inline; filename="{filename}"',
            # Artifact content is untrusted: never let it run script on this origin.
            "Content-Security-Policy": "sandbox",
            "X-Content-Type-Options": "nosniff",
        },
    )


@access(OPERATOR)
@operation("Ask to cancel a run", body=Reason, body_required=False, responses={202: Run})
async def cancel_run(request: Request) -> Response:
    body = await parse_body(request, Reason, required=False)
    run = await call(
        request, resources(request).store.request_cancel, request.path_params["run_id"],
        body.reason, actor(request, body.requested_by),
    )  # fmt: skip
    return JSONResponse(run, status_code=202)


@access(OPERATOR)
@operation(
    "A new run of the current definition with the same inputs",
    body=Reason, body_required=False, responses={201: RunDetail},
)  # fmt: skip
async def retry_run(request: Request) -> Response:
    body = await parse_body(request, Reason, required=False)
    run = await call(
        request, resources(request).store.retry_run, request.path_params["run_id"],
        body.reason, actor(request, body.requested_by),
    )  # fmt: skip
    return JSONResponse(run, status_code=201, headers={"Location": f"/api/runs/{run['id']}"})


routes = [
    Route("/api/runs", create_run, methods=["POST"]),
    Route("/api/runs", list_runs, methods=["GET"]),
    Route("/api/runs/{run_id}", get_run, methods=["GET"]),
    Route("/api/runs/{run_id}/events", list_events, methods=["GET"]),
    Route("/api/runs/{run_id}/artifacts", list_artifacts, methods=["GET"]),
    Route("/api/runs/{run_id}/artifacts/{artifact_id}", get_artifact, methods=["GET"]),
    Route("/api/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/api/runs/{run_id}/retry", retry_run, methods=["POST"]),
]

"""The OpenAPI 3.1 document at /api/openapi.json, generated from the app's route table.

Nothing here lists routes by hand: `build_document` walks the routes the app serves. Each
handler may describe itself with `@operation(...)` (its request body model, query and header
parameters, and its success responses as models from api/models.py); path parameters come from
the route's path, security from its `@access` level, and the error responses from what the
shared machinery answers (api/auth.py, api/errors.py, api/middleware.py). A route added without
`@operation` still appears, with a generic JSON response, so the document never silently
misses an endpoint (tests/integration/test_openapi.py checks both).

When the app has API tokens, operations declare the bearer scheme; without tokens they declare
none (the API is open then, on loopback only) — so the document says what the server does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from shared import __version__

from . import models
from .auth import CRON, PUBLIC, SAFE_METHODS, access
from .context import resources

E = TypeVar("E", bound=Callable[..., Any])
_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]+)?\}")


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str = ""
    where: Literal["query", "header"] = "query"
    required: bool = False


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: dict[int, type[BaseModel] | None]
    body: type[BaseModel] | None = None
    body_required: bool = True
    params: tuple[Param, ...] = ()
    media_type: str = "application/json"  # of the success responses
    also: dict[int, str] = field(default_factory=dict)  # more statuses this handler answers
    schema: dict[str, Any] | None = None  # of a success response that is not a model


def operation(
    summary: str,
    *,
    responses: dict[int, type[BaseModel] | None],
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    params: Sequence[Param] = (),
    media_type: str = "application/json",
    also: dict[int, str] | None = None,
    schema: dict[str, Any] | None = None,
) -> Callable[[E], E]:
    """Describe a handler for the OpenAPI document."""
    op = Operation(summary, responses, body, body_required, tuple(params), media_type,
                   also or {}, schema)  # fmt: skip

    def mark(endpoint: E) -> E:
        endpoint.loopdeck_operation = op  # type: ignore[attr-defined]
        return endpoint

    return mark


# -- common parameters ----------------------------------------------------------------------


def limit_param(default: int, maximum: int = 500) -> Param:
    return Param("limit", {"type": "integer", "minimum": 1, "maximum": maximum,
                           "default": default}, "page size")  # fmt: skip


def bool_param(name: str, description: str) -> Param:
    return Param(name, {"type": "string", "enum": ["true", "false"]}, description)


# -- the document -----------------------------------------------------------------------------

_ERRORS = {
    401: "no valid token (Authorization: Bearer …)",
    403: "the token's role is below this operation's",
    404: "no such object",
    409: "the object's state does not allow this",
    413: "the request body is over LOOPDECK_MAX_BODY_BYTES",
    422: "invalid input; `details.field` names it",
    429: "over LOOPDECK_RATE_LIMIT; see Retry-After",
    503: "the database is unreachable or busy; retry shortly",
}


def _operation_of(route: Route) -> tuple[Operation | None, str | None, str]:
    endpoint = route.endpoint
    level = getattr(endpoint, "loopdeck_access", None)
    inner = getattr(endpoint, "__wrapped__", endpoint)
    return getattr(inner, "loopdeck_operation", None), level, getattr(inner, "__name__", "op")


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def build_document(routes: Sequence[BaseRoute], *, tokens: bool) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    bodies: set[type[BaseModel]] = set()
    shapes: set[type[BaseModel]] = {models.Error}
    run_shapes = (models.Run, models.RunDetail, models.ResetResult)
    by_run: list[str] = []  # operationIds that take {run_id}: targets of the links below
    produce_runs: list[dict[str, Any]] = []  # responses that carry a run id

    for route in routes:
        if not isinstance(route, Route):
            continue
        path = route.path
        if not (path.startswith("/api/") or path == "/metrics"):
            continue
        op, level, name = _operation_of(route)
        methods = sorted((route.methods or {"GET"}) - {"HEAD"})
        path_params = _PATH_PARAM.findall(path)
        for method in methods:
            op_id = name if len(methods) == 1 else f"{name}_{method.lower()}"
            spec: dict[str, Any] = {"operationId": op_id}
            params: list[dict[str, Any]] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in path_params
            ]
            responses: dict[str, Any] = {}
            if op is None:
                spec["summary"] = name.replace("_", " ")
                responses["200"] = {"description": "OK", "content": _json({})}
            else:
                spec["summary"] = op.summary
                for p in op.params:
                    entry = {"name": p.name, "in": p.where, "required": p.required,
                             "schema": p.schema}  # fmt: skip
                    if p.description:
                        entry["description"] = p.description
                    if p.schema.get("type") == "array":
                        entry.update(style="form", explode=False)
                    params.append(entry)
                if op.body is not None:
                    bodies.add(op.body)
                    spec["requestBody"] = {"required": op.body_required,
                                           "content": _json(_ref(op.body))}  # fmt: skip
                for status, model in op.responses.items():
                    desc = {200: "OK", 201: "Created", 202: "Accepted"}.get(status, "answer")
                    if model is None:
                        plain = op.media_type != "application/json"
                        schema: dict[str, Any] = op.schema or {
                            "type": "string" if plain else "object"
                        }
                        content = {op.media_type: {"schema": schema}}
                    else:
                        shapes.add(model)
                        content = {op.media_type: {"schema": _ref(model)}}
                    if status == 503 and model is not None:
                        # Health answers 503 with its own shape, or the error shape.
                        content = _json({"anyOf": [_ref(model), _ref(models.Error)]})
                    responses[str(status)] = {"description": desc, "content": content}
                    if model in run_shapes and status < 300:
                        produce_runs.append(responses[str(status)])
            if params:
                spec["parameters"] = params
            # Not the SSE stream: on a live run it stays open for up to a minute.
            if "run_id" in path_params and (op is None or op.media_type != "text/event-stream"):
                by_run.append(op_id)
            errors = {503}
            if level == CRON:
                errors |= {401, 403}
                spec["security"] = [{"cronSecret": []}]
            elif level not in (PUBLIC, None) and tokens:
                errors |= {401, 403}
                spec["security"] = [{"apiToken": []}]
            else:
                spec["security"] = []
            if path_params:
                errors.add(404)
            if op is not None and (op.body is not None or op.params):
                errors.add(422)
            if op is not None and op.body is not None:
                errors.add(413)
            if method not in SAFE_METHODS:
                errors |= {409, 422}
                if level not in (PUBLIC, CRON):
                    errors.add(429)
            if op is not None:
                errors |= set(op.also)
            for status in sorted(errors):
                if str(status) in responses:
                    continue
                text = (op.also.get(status) if op else None) or _ERRORS.get(status, "error")
                responses[str(status)] = {"description": text,
                                          "content": _json(_ref(models.Error))}  # fmt: skip
            # The HTTP server itself (uvicorn) answers a malformed or oversized request line
            # or header block with a plain-text 400 before any handler runs.
            responses.setdefault("400", {
                "description": "the HTTP server rejected the request (malformed, or a request "
                "line or headers too long)",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            })  # fmt: skip
            spec["responses"] = dict(sorted(responses.items()))
            paths.setdefault(path, {})[method.lower()] = spec

    for response in produce_runs:
        response["links"] = {
            target: {"operationId": target, "parameters": {"run_id": "$response.body#/id"}}
            for target in by_run
        }

    wanted: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (m, "validation") for m in sorted(bodies, key=lambda m: m.__name__)
    ]
    wanted += [(m, "serialization") for m in sorted(shapes, key=lambda m: m.__name__)]
    _, defs = models_json_schema(wanted, ref_template="#/components/schemas/{model}")
    schemes: dict[str, Any] = {
        "cronSecret": {"type": "http", "scheme": "bearer",
                       "description": "LOOPDECK_CRON_SECRET (or CRON_SECRET)"},
    }  # fmt: skip
    if tokens:
        schemes["apiToken"] = {
            "type": "http", "scheme": "bearer",
            "description": "an API token from LOOPDECK_API_TOKENS (roles viewer < operator "
            "< admin); browsers may send it as the `loopdeck_token` cookie on GET",
        }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Loopdeck API",
            "version": __version__,
            "description": "Start, watch and steer Loopdeck runs. Errors are always "
            '`{"error": {"code", "message", "details"}}`.',
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": defs.get("$defs", {}), "securitySchemes": schemes},
    }


@access(PUBLIC)
@operation("This document", responses={200: None})
async def openapi_json(request: Request) -> Response:
    res = resources(request)
    document = res.cache.get("openapi")
    if document is None:
        document = res.cache["openapi"] = build_document(
            request.app.routes, tokens=bool(res.tokens)
        )
    return JSONResponse(document)

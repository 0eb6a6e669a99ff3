"""JSON errors: `{"error": {"code", "message", "details"}}` for every failure, never a bare 500."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.errors import DatabaseUnavailable, LoopdeckError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": details or {}}},
        status_code=status,
        headers=headers,
    )


def validation_error(exc: ValidationError, prefix: str = "") -> JSONResponse:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "body"
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        problems.append({"field": field, "message": message})
    first = problems[0]
    return error_response(
        422,
        "invalid_input",
        f"{first['field']}: {first['message']}",
        {"field": first["field"], "problems": problems},
    )


async def loopdeck_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LoopdeckError)
    headers = {"Retry-After": "2"} if isinstance(exc, DatabaseUnavailable) else None
    if exc.http_status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return error_response(exc.http_status, exc.code, exc.message, exc.details, headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and _wants_page(request):
        from .dashboard.templating import error_page

        return error_page(request, 404, "Not found", f"There is no page at {request.url.path}.")
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        # Starlette's Allow names the methods of the first route that matched the path only;
        # a path served by several routes (GET and POST /api/runs) allows all of theirs.
        allowed = _allowed_methods(request)
        if allowed:
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
    return error_response(exc.status_code, code, message, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for route in getattr(request.app, "routes", ()):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path) and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def _wants_page(request: Request) -> bool:
    """A browser asking for a page outside the JSON API gets an HTML error page."""
    path = request.url.path
    return not (path == "/api" or path.startswith("/api/")) and "text/html" in request.headers.get(
        "accept", ""
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal", "internal error; see the API's log")


def handlers() -> dict[Any, Any]:
    return {
        LoopdeckError: loopdeck_error,
        HTTPException: http_error,
        Exception: internal_error,
    }

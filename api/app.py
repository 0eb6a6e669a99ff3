"""The ASGI application."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.settings import Settings
from shared.store import Store

from . import dashboard
from .auth import VIEWER, guard, parse_tokens, secure_routes
from .context import InvalidBody, Resources
from .errors import handlers, validation_error
from .metrics import ApiMetrics, RequestMetrics, metrics_endpoint
from .middleware import RequestLimits
from .openapi import openapi_json
from .routes import control, runs, stream, system


async def _invalid_body(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidBody)
    return validation_error(exc.error, exc.prefix)


def create_app(settings: Settings | None = None, *, store: Store | None = None) -> Starlette:
    """Build the app. Settings come from the environment unless given; the store is made in
    the lifespan, or on first use when the platform runs no lifespan (serverless)."""
    settings = settings or Settings.from_env()
    # A malformed LOOPDECK_API_TOKENS is a ConfigError here, at start, not on a request.
    res = Resources(settings, store, tokens=parse_tokens(settings.api_tokens))
    res.metrics = ApiMetrics(res)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        res.store  # noqa: B018 - open the pool at start-up where a lifespan exists
        try:
            yield
        finally:
            res.close()

    exception_handlers = handlers()
    exception_handlers[InvalidBody] = _invalid_body
    app = Starlette(
        # Every /api route is wrapped with its access policy and the rate limit (api/auth.py);
        # dashboard pages guard themselves (api/dashboard/session.py); static files are public.
        routes=[
            *secure_routes(
                [
                    *system.routes,
                    *runs.routes,
                    *control.routes,
                    *stream.routes,
                    Route("/api/openapi.json", openapi_json, methods=["GET"]),
                    *dashboard.routes,
                ]
            ),  # fmt: skip
            # Outside /api, so not wrapped by secure_routes: the same guard, a viewer's token.
            Route("/metrics", guard(metrics_endpoint, VIEWER), methods=["GET"]),
        ],
        middleware=[
            Middleware(RequestMetrics, metrics=res.metrics),
            Middleware(RequestLimits, max_body_bytes=settings.max_body_bytes),
        ],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    app.state.resources = res
    return app

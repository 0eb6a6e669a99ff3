"""API tokens, roles, the access policy of every /api route, and the rate limit.

`LOOPDECK_API_TOKENS="name:secret:role,…"` with roles viewer < operator < admin. With tokens
configured, every /api route but /api/health needs `Authorization: Bearer <secret>`: 401
without a valid one, 403 when the token's role is below the route's. Without tokens the API is
open, and the CLI only lets it listen on loopback (`--insecure` overrides).

Each handler declares its access with `@access(...)`; `secure_routes` wraps every /api route
when the app is built, so a route added without a declaration is still guarded (GET/HEAD:
viewer; anything else: admin). Routes outside /api are not wrapped here: the dashboard guards
its pages itself with the same helpers (api/dashboard/session.py: viewer for every page and
live region, a sign-in page that sets the cookie below). Credentials are read by
`credentials()`: the Bearer header on every method, and on GET/HEAD only the
`loopdeck_token` cookie — for a browser page (EventSource cannot set headers); never for a
mutating request, so a cookie cannot be used for cross-site request forgery.

The rate limit counts mutating requests per token (per client address without tokens) in
fixed windows in the database (LOOPDECK_RATE_LIMIT, default 120 per 60 s); over it: 429 with
Retry-After.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from shared.errors import ConfigError

from .context import call, resources
from .errors import error_response

log = logging.getLogger(__name__)

ROLES = ("viewer", "operator", "admin")
PUBLIC = "public"  # no token (health)
CRON = "cron"  # LOOPDECK_CRON_SECRET, checked by the handler itself
VIEWER, OPERATOR, ADMIN = ROLES
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE = "loopdeck_token"
MIN_SECRET = 8
_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,100}$")

Endpoint = Callable[[Request], Awaitable[Response]]
E = TypeVar("E", bound=Endpoint)


def access(level: str) -> Callable[[E], E]:
    """Declare who may call a handler: PUBLIC, CRON, VIEWER, OPERATOR or ADMIN."""
    if level not in (PUBLIC, CRON, *ROLES):
        raise ValueError(f"unknown access level {level!r}")

    def mark(endpoint: E) -> E:
        endpoint.loopdeck_access = level  # type: ignore[attr-defined]
        return endpoint

    return mark


def default_access(methods: Sequence[str]) -> str:
    return VIEWER if set(methods) <= SAFE_METHODS else ADMIN


# -- tokens --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    name: str
    role: str
    digest: bytes  # sha256 of the secret: compared in constant time, equal lengths


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_tokens(raw: str) -> tuple[Token, ...]:
    """`name:secret:role,…` → tokens. The secret may contain `:` (name and role may not)."""
    tokens: list[Token] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for n, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            continue
        name, _, rest = entry.partition(":")
        secret, _, role = rest.rpartition(":")
        where = f"LOOPDECK_API_TOKENS entry {n} ({name or '?'})"
        if not _NAME.match(name) or not secret:
            raise ConfigError(f"{where}: expected name:secret:role")
        if role not in ROLES:
            raise ConfigError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if len(secret) < MIN_SECRET:
            raise ConfigError(f"{where}: the secret must be at least {MIN_SECRET} characters")
        digest = _digest(secret)
        if name in names or digest in digests:
            raise ConfigError(f"{where}: the name or secret is used twice")
        names.add(name)
        digests.add(digest)
        tokens.append(Token(name, role, digest))
    return tuple(tokens)


def credentials(request: Request) -> str | None:
    """The secret the request presents, if any."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None
    if request.method in SAFE_METHODS:
        return request.cookies.get(COOKIE) or None
    return None


def check_secret(given: str | None, tokens: Sequence[Token]) -> Principal | None:
    """The token whose secret is `given`, if any."""
    if not given:
        return None
    digest = _digest(given)
    found: Token | None = None
    for token in tokens:  # every token is compared: the time does not say which one matched
        if hmac.compare_digest(digest, token.digest):
            found = token
    return Principal(found.name, found.role) if found else None


def authenticate(request: Request, tokens: Sequence[Token]) -> Principal | None:
    return check_secret(credentials(request), tokens)


def role_allows(role: str, level: str) -> bool:
    """Whether a token of `role` may use a route declared with `level`."""
    if level == PUBLIC:
        return True
    if level not in ROLES:  # CRON: never a role's business
        return False
    return ROLES.index(role) >= ROLES.index(level)


def set_token_cookie(response: Response, request: Request, secret: str) -> None:
    """The browser's sign-in cookie: HttpOnly (no script reads it), SameSite=Strict (never sent
    by a request another site starts), Secure over https, for the whole site, until the browser
    session ends. `credentials` accepts it on GET/HEAD only."""
    response.set_cookie(
        COOKIE, secret, path="/", httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip


def clear_token_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def principal(request: Request) -> Principal | None:
    """Who the guard let in (None when no tokens are configured)."""
    return getattr(request.state, "principal", None)


# -- the guard -----------------------------------------------------------------------------


def guard(endpoint: Endpoint, level: str) -> Endpoint:
    """Wrap a handler with authentication, authorization and (mutations) the rate limit."""

    async def guarded(request: Request) -> Response:
        if level in (PUBLIC, CRON):
            return await endpoint(request)
        res = resources(request)
        who: Principal | None = None
        if res.tokens:
            who = authenticate(request, res.tokens)
            if who is None:
                log.info(
                    "401 %s %s from %s", request.method, request.url.path, _client(request),
                    extra={"action": "auth_failed"},
                )  # fmt: skip
                return error_response(
                    401, "unauthorized", "a valid API token is required (Authorization: Bearer …)",
                    headers={"WWW-Authenticate": 'Bearer realm="loopdeck"'},
                )  # fmt: skip
            if not role_allows(who.role, level):
                return error_response(
                    403, "forbidden",
                    f"token {who.name!r} has role {who.role}; this needs {level}",
                    {"role": who.role, "required_role": level},
                )  # fmt: skip
            request.state.principal = who
            request.state.actor = who.name
        limit = res.settings.rate_limit
        decision = None
        if request.method not in SAFE_METHODS and limit > 0:
            key = f"token:{who.name}" if who else f"addr:{_client(request)}"
            decision = await call(
                request, res.store.hit_rate_limit, key, limit=limit,
                window_ms=int(res.settings.rate_limit_window * 1000),
            )  # fmt: skip
            if not decision.allowed:
                return error_response(
                    429, "rate_limited",
                    f"more than {limit} changes in {res.settings.rate_limit_window:g}s "
                    f"(LOOPDECK_RATE_LIMIT); retry in {decision.retry_after_s}s",
                    {"limit": limit, "window_s": res.settings.rate_limit_window,
                     "retry_after_s": decision.retry_after_s},
                    headers={"Retry-After": str(decision.retry_after_s)},
                )  # fmt: skip
        response = await endpoint(request)
        if decision is not None:
            response.headers["X-RateLimit-Limit"] = str(decision.limit)
            response.headers["X-RateLimit-Remaining"] = str(decision.remaining)
        return response

    guarded.loopdeck_access = level  # type: ignore[attr-defined]
    guarded.__wrapped__ = endpoint  # type: ignore[attr-defined]
    guarded.__name__ = getattr(endpoint, "__name__", "endpoint")
    return guarded


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def secure_routes(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """Every /api route wrapped by `guard` with its declared (or default) access."""
    out: list[BaseRoute] = []
    for route in routes:
        path = getattr(route, "path", "")
        if not (path == "/api" or path.startswith("/api/")):
            out.append(route)
            continue
        if not isinstance(route, Route) or not _is_function(route.endpoint):
            raise TypeError(f"{path}: /api routes must be plain Route(path, async def handler)")
        methods = sorted(route.methods or {"GET"})
        level = getattr(route.endpoint, "loopdeck_access", None) or default_access(methods)
        out.append(Route(path, guard(route.endpoint, level), methods=methods, name=route.name))
    return out


def _is_function(endpoint: Any) -> bool:
    return inspect.isfunction(endpoint) or inspect.ismethod(endpoint)


def route_table(routes: Sequence[BaseRoute]) -> list[tuple[str, str, str]]:
    """(method, path, access) of every guarded route: the auth tests walk this."""
    table = []
    for route in routes:
        level = getattr(getattr(route, "endpoint", None), "loopdeck_access", None)
        if level is None or not isinstance(route, Route):
            continue
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                table.append((method, route.path, level))
    return table

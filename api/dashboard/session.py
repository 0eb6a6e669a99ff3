"""Signing in to the dashboard when API tokens are configured (LOOPDECK_API_TOKENS).

Every page and live region needs a token of at least `viewer` (`secure_pages` wraps each page
route with `signed_in`; only /signin, /signout and /static are public). A browser presents it
in the `loopdeck_token` cookie that /signin sets — HttpOnly, SameSite=Strict, Secure over
https — and the page's script sends it as `Authorization: Bearer` from the tab's
sessionStorage, where the sign-in script also keeps it: the API accepts the cookie for reads
only (api/auth.py), so a change always needs the header, and a forged cross-site request
carries no credential. Without tokens nothing changes (the server then only listens on
loopback).

A browser asking for a page without a valid token is sent to /signin (303, with `next`: the
path it asked for, never a token); the script's live requests get a 401 JSON error and the
script goes to /signin itself. Tokens travel in POST bodies, headers and the cookie only, never
in a URL, and are never logged.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from ..auth import (
    Principal,
    authenticate,
    check_secret,
    clear_token_cookie,
    credentials,
    set_token_cookie,
)
from ..context import call, resources
from ..errors import error_response
from .templating import page, wants_fragment, wants_live

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
SIGNIN = "/signin"
SIGNOUT = "/signout"
PUBLIC_PAGES = frozenset({SIGNIN, SIGNOUT})
NO_STORE = {"Cache-Control": "no-store"}
NOTICES = {
    "expired": "Your token was not accepted (it may have been changed or removed). Sign in again.",
    "tab": "This tab does not hold your token, and changes need it: the sign-in cookie only "
    "lets pages load. Sign in again to act from this tab.",
    "signed_out": "You are signed out.",
}


def safe_next(raw: str | None) -> str:
    """A local path to go back to after signing in; anything else (other sites included) is /."""
    if not raw or len(raw) > 2000 or not raw.startswith("/") or raw.startswith("//"):
        return "/"
    if "\\" in raw or any(ord(c) < 0x20 or c == "\x7f" for c in raw):
        return "/"
    if urlsplit(raw).path in PUBLIC_PAGES:
        return "/"
    return raw


def signin_url(next_path: str, why: str | None = None) -> str:
    query = {"next": safe_next(next_path)}
    if why:
        query["why"] = why
    return f"{SIGNIN}?{urlencode(query)}"


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _refuse(request: Request) -> Response:
    """No valid token: a browser goes to the sign-in page, the page's script gets a 401."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = signin_url(here, "expired" if credentials(request) is not None else None)
    if wants_live(request) or wants_fragment(request) or not _wants_html(request):
        return error_response(
            401, "unauthorized", "sign in: this page needs a valid API token",
            {"signin": target},
            headers={"WWW-Authenticate": 'Bearer realm="loopdeck"', **NO_STORE},
        )  # fmt: skip
    return RedirectResponse(target, status_code=303, headers=NO_STORE)


def signed_in(handler: Handler) -> Handler:
    """With tokens configured, the page needs a valid one (any role: viewer is the lowest)."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        tokens = resources(request).tokens
        if tokens:
            who = authenticate(request, tokens)
            if who is None:
                return _refuse(request)
            request.state.principal = who
        return await handler(request)

    wrapper.loopdeck_page_guard = True  # type: ignore[attr-defined]
    return wrapper


def secure_pages(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """Every dashboard route but the sign-in pages and static files wrapped by `signed_in`."""
    out: list[BaseRoute] = []
    for route in routes:
        if isinstance(route, Mount) and route.path == "/static":
            out.append(route)
        elif not isinstance(route, Route):
            raise TypeError(f"{route!r}: dashboard routes must be Route(path, handler)")
        elif route.path in PUBLIC_PAGES:
            out.append(route)
        else:
            methods = sorted(route.methods or {"GET"})
            out.append(Route(route.path, signed_in(route.endpoint), methods=methods,
                             name=route.name))  # fmt: skip
    return out


# -- the sign-in and sign-out pages --------------------------------------------------------


def _same_origin(request: Request) -> bool:
    """Sign-in and sign-out are only taken from this site's own pages (no login CSRF)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:  # not a browser, or an old one: nothing to forge with
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"


async def _read_form(request: Request) -> tuple[dict[str, Any], bool]:
    """The posted fields, and whether the client speaks JSON (the script) or HTML (a form)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if ctype == "application/json":
        try:
            data = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError):
            data = None
        return (data if isinstance(data, dict) else {}), True
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    wants_json = "application/json" in request.headers.get("accept", "")
    return {k: v[0] for k, v in fields.items()}, wants_json


def _signin_page(
    request: Request, next_path: str, *, error: str = "", why: str = "", status: int = 200
) -> Response:
    ctx = {
        "page": "signin",
        "next": next_path,
        "error": error,
        "notice": NOTICES.get(why, ""),
        "state": {},
    }
    return page(request, "signin.html", ctx, status=status)


async def signin_page(request: Request) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    return _signin_page(request, next_path, why=request.query_params.get("why", ""))


async def signin(request: Request) -> Response:
    res = resources(request)
    data, wants_json = await _read_form(request)
    next_path = safe_next(data.get("next") if isinstance(data.get("next"), str) else None)

    def refused(status: int, code: str, message: str, **headers: str) -> Response:
        if wants_json:
            return error_response(status, code, message, headers={**NO_STORE, **headers})
        response = _signin_page(request, next_path, error=message, status=status)
        response.headers.update(headers)
        return response

    if not _same_origin(request):
        return refused(403, "forbidden", "sign-in is only accepted from this site's own page")
    if not res.tokens:
        if wants_json:
            return JSONResponse({"auth": "none", "next": next_path}, headers=NO_STORE)
        return RedirectResponse(next_path, status_code=303, headers=NO_STORE)
    limit = res.settings.rate_limit
    if limit > 0:
        client = request.client.host if request.client else "unknown"
        decision = await call(
            request, res.store.hit_rate_limit, f"signin:{client}", limit=limit,
            window_ms=int(res.settings.rate_limit_window * 1000),
        )  # fmt: skip
        if not decision.allowed:
            return refused(
                429, "rate_limited",
                f"too many sign-in attempts; try again in {decision.retry_after_s}s",
                **{"Retry-After": str(decision.retry_after_s)},
            )  # fmt: skip
    secret = data.get("token")
    secret = secret.strip() if isinstance(secret, str) else ""
    who: Principal | None = check_secret(secret, res.tokens)
    if who is None:
        log.info(
            "sign-in refused from %s", request.client.host if request.client else "unknown",
            extra={"action": "signin_failed"},
        )  # fmt: skip
        message = "Enter your API token." if not secret else "That token is not valid."
        return refused(401 if secret else 422, "unauthorized" if secret else "invalid_input",
                       message)  # fmt: skip
    log.info("signed in: %s (%s)", who.name, who.role, extra={"action": "signin"})
    response: Response
    if wants_json:
        response = JSONResponse(
            {"name": who.name, "role": who.role, "next": next_path}, headers=NO_STORE
        )
    else:
        response = RedirectResponse(next_path, status_code=303, headers=NO_STORE)
    set_token_cookie(response, request, secret)
    return response


async def signout(request: Request) -> Response:
    if not _same_origin(request):
        return error_response(403, "forbidden", "sign-out is only accepted from this site")
    response = RedirectResponse(signin_url("/", "signed_out"), status_code=303, headers=NO_STORE)
    clear_token_cookie(response, request)
    return response


routes = [
    Route(SIGNIN, signin_page, methods=["GET"]),
    Route(SIGNIN, signin, methods=["POST"]),
    Route(SIGNOUT, signout, methods=["POST"]),
]

"""Jinja2 set-up and the page responses: full pages, live regions (JSON) and fragments.

Autoescape is on for every template; the only HTML that is marked safe comes from
markdown-it with raw HTML disabled (artifacts.py). Pages carry a strict Content-Security-Policy:
no inline script or style, nothing from other origins.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from shared import __version__
from shared.clock import parse_time

from ..auth import principal
from ..context import resources
from . import views

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
LIVE_HEADER = "x-loopdeck-live"
FRAGMENT_HEADER = "x-loopdeck-fragment"

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Vary": "X-Loopdeck-Live, X-Loopdeck-Fragment",
}


def _asset_versions() -> dict[str, str]:
    """Content hashes of the static files, so a new release never runs with a cached old script."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
        for p in STATIC_DIR.iterdir()
        if p.is_file()
    }


def utc_text(iso: str | None, seconds: bool = True) -> str:
    """'2026-11-22 09:01:48 UTC' from an ISO 8601 UTC time (what shows before the script runs)."""
    if not iso:
        return "–"
    try:
        dt = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return iso
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def metric_label(key: str) -> str:
    unit = ""
    if key.endswith("_usd"):
        key, unit = key[: -len("_usd")], " (USD)"
    return key.replace("_", " ").strip().capitalize() + unit


def metric_value(key: str, value: Any) -> str:
    if key.endswith("_usd") and isinstance(value, int | float):
        return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"
    return views.fmt_number(value)


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def span_s(start: str | None, end: str | None) -> float | None:
    """Seconds between two ISO times (None while `start` is unknown; open-ended spans: None)."""
    if not start or not end:
        return None
    return max(0.0, (parse_time(end) - parse_time(start)) / 1000)


def keyof(text: str) -> str:
    """A stable, id-safe key for arbitrary text (artifact file names)."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(HERE / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    versions = _asset_versions()
    env.globals.update(
        static=lambda name: f"/static/{name}?v={versions.get(name, __version__)}",
        version=__version__,
        badge=views.badge,
        task_badge=views.task_badge,
        fmt_duration=views.fmt_duration,
        fmt_ago=views.fmt_ago,
        fmt_bytes=views.fmt_bytes,
        fmt_number=views.fmt_number,
        fmt_value=views.fmt_value,
        inputs_summary=views.inputs_summary,
        audit_summary=views.audit_summary,
        metric_label=metric_label,
        metric_value=metric_value,
        utc=utc_text,
        pretty=pretty,
        span_s=span_s,
        keyof=keyof,
    )
    # Macros are globals (not per-template imports) so live regions rendered block by block
    # can call them too.
    env.globals["m"] = env.get_template("_macros.html").module
    return env


ENV = _environment()


def _context(request: Request, ctx: dict[str, Any]) -> dict[str, Any]:
    return {
        "request": request,
        "path": request.url.path,
        "page": "",
        "state": {},
        # Who signed in (None without tokens) and whether tokens are configured at all.
        "who": principal(request),
        "auth_on": bool(resources(request).tokens),
        **ctx,
    }


def wants_live(request: Request) -> bool:
    return request.headers.get(LIVE_HEADER) == "1"


def wants_fragment(request: Request) -> bool:
    return request.headers.get(FRAGMENT_HEADER) == "1"


def page(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> Response:
    """A full page; or, for the page's own script asking for fresh data, its live regions."""
    template = ENV.get_template(name)
    context = _context(request, ctx)
    if wants_live(request):
        blocks = [b for b in template.blocks if b.startswith("live_")]
        jctx = template.new_context(context)
        html = "".join("".join(template.blocks[b](jctx)) for b in blocks)
        return JSONResponse({"html": html, "state": ctx.get("state", {})}, headers=PAGE_HEADERS)
    return HTMLResponse(template.render(context), status_code=status, headers=PAGE_HEADERS)


def fragment(request: Request, name: str, block: str, ctx: dict[str, Any]) -> Response:
    template = ENV.get_template(name)
    html = "".join(template.blocks[block](template.new_context(_context(request, ctx))))
    return HTMLResponse(html, headers=PAGE_HEADERS)


def error_page(request: Request, status: int, title: str, message: str) -> Response:
    if wants_live(request) or wants_fragment(request):
        return JSONResponse(
            {"error": {"code": "page_error", "message": message, "details": {}}},
            status_code=status, headers=PAGE_HEADERS,
        )  # fmt: skip
    html = ENV.get_template("error.html").render(
        _context(request, {"title": title, "message": message, "status": status, "page": "error"})
    )
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)

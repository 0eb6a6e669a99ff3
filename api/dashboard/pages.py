"""Dashboard pages: Runs (/), a run (/runs/{id}) and its artifacts, Runners, Workflows.

Each handler reads through store verbs, renders a template and keeps nothing between requests,
like the JSON API next to it. The page's script asks the same URL for its live regions
(`X-Loopdeck-Live: 1`) to refresh them without reloading.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from shared.clock import host_now_ms, parse_time
from shared.errors import DatabaseUnavailable, InvalidInput, LoopdeckError, NotFound
from shared.schema import RUN_STATUSES
from shared.store import RunFilter

from ..auth import principal
from ..context import call, resources
from . import actions, artifacts, forms, views
from .templating import error_page, fragment, page, wants_fragment, wants_live

PAGE_SIZE = 25
TIMELINE_PAGE = 500
RANGES = {"1h": 3_600_000, "24h": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000}
RANGE_LABELS = {"": "any time", "1h": "last hour", "24h": "last 24 hours",
                "7d": "last 7 days", "30d": "last 30 days"}  # fmt: skip

Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler) -> Handler:
    """Store errors become HTML error pages (the JSON API keeps its JSON errors)."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except NotFound as exc:
            return error_page(request, 404, "Not found", exc.message)
        except DatabaseUnavailable as exc:
            return error_page(request, 503, "Database unavailable", exc.message)
        except LoopdeckError as exc:
            return error_page(request, exc.http_status, "Something went wrong", exc.message)

    return wrapper


def _served(request: Request) -> dict[tuple[str, str], str]:
    return actions.served(request.app.routes)


def _filters(request: Request) -> tuple[RunFilter, dict[str, str]]:
    q = request.query_params
    form = {k: (q.get(k) or "").strip() for k in ("status", "workflow", "queue", "q", "range")}
    status = form["status"]
    if status and status != "stalled" and status not in RUN_STATUSES:
        raise InvalidInput(f"unknown status {status!r}", field="status")
    if form["range"] and form["range"] not in RANGES:
        raise InvalidInput(f"unknown time range {form['range']!r}", field="range")
    after = host_now_ms() - RANGES[form["range"]] if form["range"] else None
    flt = RunFilter(
        statuses=(status,) if status and status != "stalled" else (),
        workflow=form["workflow"] or None,
        queue=form["queue"] or None,
        text=form["q"] or None,
        created_after_ms=after,
        stalled=True if status == "stalled" else None,
    )
    return flt, form


def _age_s(iso: str | None, now_ms: int) -> float | None:
    return None if not iso else max(0.0, (now_ms - parse_time(iso)) / 1000)


def _query(form: dict[str, str], **extra: str) -> str:
    return urlencode({k: v for k, v in {**form, **extra}.items() if v})


@guarded
async def runs_page(request: Request) -> Response:
    store = resources(request).store
    try:
        flt, form = _filters(request)
        filter_error = None
    except InvalidInput as exc:
        flt, filter_error = RunFilter(), exc.message
        form = dict.fromkeys(("status", "workflow", "queue", "q", "range"), "")
    cursor = request.query_params.get("cursor") or None
    stats = await call(request, store.stats)
    listing = await call(request, store.list_runs, flt, cursor=cursor, limit=PAGE_SIZE)
    now = host_now_ms()
    rows = [{**r, "age_s": _age_s(r["created_at"], now)} for r in listing["runs"]]
    served = _served(request)
    ctx: dict[str, Any] = {
        "page": "runs",
        "stats": stats,
        "runs": rows,
        "form": form,
        "filter_error": filter_error,
        "statuses": ("stalled", *RUN_STATUSES),
        "ranges": RANGE_LABELS,
        "cursor": cursor,
        "older_query": _query(form, cursor=listing["next_cursor"] or "")
        if listing["next_cursor"]
        else None,  # fmt: skip
        "first_query": _query(form),
        "state": {"poll_ms": views.list_poll_ms(stats)},
        "start_refused": actions.refusal(served, "POST", "/api/runs", principal(request))
        if ("POST", "/api/runs") in served
        else "this server does not accept new runs",
    }
    if not wants_live(request):
        workflows = (await call(request, store.list_workflows))["workflows"]
        ctx["workflows"] = workflows
        ctx["start_forms"] = [forms.start_form(w) for w in workflows]
        ctx["start"] = request.query_params.get("start", "")
    return page(request, "runs.html", ctx)


@guarded
async def run_page(request: Request) -> Response:
    settings = resources(request).settings
    store = resources(request).store
    run_id = request.path_params["run_id"]
    run = await call(request, store.get_run, run_id)
    listing = (await call(request, store.list_artifacts, run_id))["artifacts"]
    holder = None
    if run["status"] == "running" and run.get("claimed_by"):
        try:
            holder = await call(request, store.get_runner, run["claimed_by"])
        except NotFound:
            holder = None
    attempts = views.loop_attempts(run) if run["kind"] == "loop" else []
    tracking = settings.tracking_url.replace("{run_id}", run["id"]) or None
    ctx: dict[str, Any] = {
        "page": "run",
        "run": run,
        "badge": views.badge(run),
        "progress": views.progress_text(run),
        "holder": holder,
        "stall_after": settings.stall_after,
        "attempts": attempts,
        "layers": views.graph_layers(run["tasks"]) if run["kind"] == "steps" else [],
        "chart": views.score_chart(run, attempts) if attempts else None,
        "artifact_groups": artifacts.grouped(listing),
        "actions": actions.run_actions(run, _served(request), principal(request)),
        "gates": [t for t in views.latest_tasks(run["tasks"]) if t["status"] == "waiting"]
        if run["kind"] == "steps"
        else [],
        "held": actions.is_held(run),
        "tracking_url": tracking,
        "state": {"poll_ms": views.run_poll_ms(run), "status": run["status"]},
    }
    if not wants_live(request):
        events = await call(request, store.list_events, run_id, after=0, limit=TIMELINE_PAGE)
        ctx["timeline"] = views.timeline(events["events"])
        ctx["events_after"] = events["next_after"]
        ctx["stream"] = ("GET", "/api/runs/{run_id}/events/stream") in _served(request)
    return page(request, "run.html", ctx)


@guarded
async def artifact_page(request: Request) -> Response:
    store = resources(request).store
    run_id = request.path_params["run_id"]
    meta, content = await call(request, store.get_artifact, run_id,
                               request.path_params["artifact_id"])  # fmt: skip
    listing = (await call(request, store.list_artifacts, run_id))["artifacts"]
    others = artifacts.versions(listing, meta)
    against_id = request.query_params.get("against")
    diff = against = None
    if against_id:
        against, other = await call(request, store.get_artifact, run_id, against_id)
        older = artifacts.order(against) < artifacts.order(meta)
        old, new = (against, meta) if older else (meta, against)
        old_c, new_c = (other, content) if old is against else (content, other)
        diff = artifacts.diff(old, old_c, new, new_c)
    ctx = {
        "page": "artifact",
        "run_id": run_id,
        "meta": meta,
        "rendered": None if diff else artifacts.render(meta, content),
        "versions": sorted([meta, *others], key=artifacts.order),
        "others": others,
        "against": against,
        "diff": diff,
        "raw_url": f"/api/runs/{run_id}/artifacts/{meta['id']}",
        "state": {},
    }
    if wants_fragment(request):
        return fragment(request, "artifact.html", "content", ctx)
    return page(request, "artifact.html", ctx)


@guarded
async def runners_page(request: Request) -> Response:
    store = resources(request).store
    runners = (await call(request, store.list_runners))["runners"]
    held = await call(request, store.runs_held_by,
                      [r["id"] for r in runners if r["status"] != "stopped"])  # fmt: skip
    served = _served(request)
    rows = [
        {
            **r,
            "held": held.get(r["id"], []),
            "actions": actions.runner_actions(r, served, principal(request)),
        }
        for r in runners
    ]
    live = any(r["status"] != "stopped" for r in runners)
    ctx = {
        "page": "runners",
        "runners": rows,
        "state": {"poll_ms": views.POLL_LIST_ACTIVE if live else views.POLL_IDLE},
    }
    return page(request, "runners.html", ctx)


@guarded
async def workflows_page(request: Request) -> Response:
    workflows = (await call(request, resources(request).store.list_workflows))["workflows"]
    ctx = {
        "page": "workflows",
        "workflows": [forms.describe(w) for w in workflows],
        "state": {},
    }
    return page(request, "workflows.html", ctx)

"""GET /api/runs/{id}/events/stream: the events timeline as Server-Sent Events.

The same events as `…/events?after=ID`, pushed as they are written. Each SSE message carries one
event as JSON with `id:` set to the event id, so a reconnecting client (its `Last-Event-ID`
header, or `?after=`) resumes where it stopped. The stream ends by itself with an `end` message
once the run is finished and every event was sent, and after LOOPDECK_SSE_SECONDS (55) anyway: a
serverless platform cuts long responses anyway, and a client that reconnects with its cursor
loses nothing. The handler keeps no state between requests; it polls the store, which is cheap
(an index range scan on events(run_id, id)).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.errors import InvalidInput, LoopdeckError

from ..auth import VIEWER, access
from ..context import call, query_int, resources
from ..openapi import Param, operation

POLL_SECONDS = 0.5
PING_SECONDS = 5  # lets a client tell a buffering proxy (no bytes at all) from a quiet run
PAGE = 500
FINISHED = ("succeeded", "failed", "cancelled")


def _cursor(request: Request) -> int:
    after = query_int(request, "after", 0, 0, 2**62)  # validated even when the header wins
    last = request.headers.get("last-event-id")
    if last is None:
        return after
    last = last.strip()
    if not (last.isdigit() and last.isascii() and len(last) <= 18):
        raise InvalidInput("Last-Event-ID must be an event id", field="Last-Event-ID")
    return int(last)


def _message(event: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(
        json.dumps(event, ensure_ascii=False, separators=(",", ":")),
        id=str(event["id"]),
        event="event",
    )


@access(VIEWER)
@operation(
    "The run's timeline as Server-Sent Events (ends when the run is finished, or after 55 s)",
    responses={200: None},
    media_type="text/event-stream",
    # One schema per message: `event` carries an event as JSON, `end` the run's final status.
    schema={"type": "object", "required": ["data"], "properties": {
        "event": {"enum": ["event", "end", "error"]}, "data": {"type": "string"},
        "id": {"type": "string", "pattern": "^[0-9]+$"}}},
    params=[Param("after", {"type": "integer", "minimum": 0, "maximum": 2**62}),
            Param("Last-Event-ID", {"type": "string", "pattern": "^[0-9]+$"},
                  "resume after this event id", where="header")],
)  # fmt: skip
async def stream_events(request: Request) -> Response:
    run_id = request.path_params["run_id"]
    store = resources(request).store
    after = _cursor(request)
    # The first page is read before the response starts, so an unknown run is a plain JSON 404.
    first = await call(request, store.list_events, run_id, after=after, limit=PAGE)

    async def messages() -> AsyncIterator[ServerSentEvent]:
        page = first
        cursor = after
        deadline = time.monotonic() + resources(request).settings.sse_seconds
        yield ServerSentEvent(comment="loopdeck events", retry=2000)
        while True:
            for event in page["events"]:
                yield _message(event)
            cursor = page["next_after"]
            full = len(page["events"]) == PAGE
            if not full and page["run_status"] in FINISHED:
                yield ServerSentEvent(json.dumps({"status": page["run_status"]}), event="end")
                return
            if time.monotonic() >= deadline:
                return
            if not full:
                await anyio.sleep(POLL_SECONDS)
            try:
                page = await call(request, store.list_events, run_id, after=cursor, limit=PAGE)
            except LoopdeckError as exc:
                # The client falls back to polling, which reports errors on its own.
                yield ServerSentEvent(json.dumps({"message": exc.message}), event="error")
                return

    return EventSourceResponse(
        messages(),
        ping=PING_SECONDS,
        headers={"Cache-Control": "no-store"},
    )


routes = [Route("/api/runs/{run_id}/events/stream", stream_events, methods=["GET"])]

"""ASGI middleware: request ids and the request-body cap (413 with a JSON error)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import BodyTooLarge
from .errors import error_response

_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestLimits:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _RID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        length = headers.get(b"content-length")
        limit = self.max_body
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                too_big = False
            if too_big:
                response = error_response(
                    413, "payload_too_large",
                    f"the request body is larger than {limit:,} bytes (LOOPDECK_MAX_BODY_BYTES)",
                    {"limit": limit},
                )  # fmt: skip
                await response(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(
                        f"the request body is larger than {limit:,} bytes "
                        "(LOOPDECK_MAX_BODY_BYTES)",
                        limit=limit,
                    )
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw: list[Any] = list(message.get("headers", []))
                raw.append((b"x-request-id", rid.encode()))
                message["headers"] = raw
            await send(message)

        await self.app(scope, limited_receive, send_with_id)

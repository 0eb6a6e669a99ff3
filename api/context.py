"""Per-app resources and per-request helpers. The store is created in the lifespan, or lazily
on first use when a serverless platform runs the app without one; nothing about runs is kept in
process memory."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from shared.errors import InvalidInput, LoopdeckError
from shared.settings import Settings
from shared.store import Actor, Store

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

API_RETRY_SECONDS = 3.0  # under the 5 s within which a client must hear 503, not silence


class Resources:
    def __init__(
        self, settings: Settings, store: Store | None = None, tokens: tuple[Any, ...] = ()
    ) -> None:
        self.settings = settings
        self.tokens = tokens  # api.auth.Token, parsed once when the app is built
        self._store = store
        self._lock = threading.Lock()
        self.metrics: Any = None  # api.metrics.ApiMetrics, set by create_app
        self.cache: dict[str, Any] = {}  # derived from the app alone (the OpenAPI document)

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    # A SQLite file's WAL checkpoints run beside the requests, not inside
                    # whichever create's commit crossed the threshold (checkpoint.py).
                    self._store = Store.from_settings(
                        self.settings, retry_seconds=API_RETRY_SECONDS, background_checkpoint=True
                    )
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.dispose()
            self._store = None


class BodyTooLarge(LoopdeckError):
    """The request body is larger than LOOPDECK_MAX_BODY_BYTES."""

    code = "payload_too_large"
    http_status = 413


class InvalidBody(ValueError):
    def __init__(self, error: ValidationError, prefix: str = "") -> None:
        super().__init__(str(error))
        self.error = error
        self.prefix = prefix


def resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


async def call(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a (blocking) store verb off the event loop."""
    return await run_in_threadpool(fn, *args, **kwargs)


_ABSENT = object()


async def read_json(request: Request) -> Any:
    """The parsed body, or `_ABSENT` when there is none (JSON `null` is a body, not absence)."""
    body = await request.body()
    if not body.strip():
        return _ABSENT
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}", field="body") from None


async def parse_body(request: Request, model: type[M], *, required: bool = True) -> M:
    data = await read_json(request)
    if data is _ABSENT:
        if required:
            raise InvalidInput("a JSON request body is required", field="body")
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object", field="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidBody(exc) from None


def actor(request: Request, requested_by: str | None = None) -> Actor:
    """Who asks, for the audit log: the API token's name when tokens are configured (a
    `requested_by` in the body is kept as the person it acts for), else `requested_by`."""
    client = request.client.host if request.client else None
    token_name = getattr(request.state, "actor", None)
    if token_name:
        return Actor(
            name=token_name, client=client, request_id=request_id(request),
            on_behalf_of=requested_by,
        )  # fmt: skip
    return Actor(name=requested_by or "anonymous", client=client, request_id=request_id(request))


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = uuid.uuid4().hex
        request.state.request_id = rid
    return str(rid)


def query_int(request: Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be an integer", field=name) from None
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{name} must be between {minimum} and {maximum}", field=name)
    return value

"""Time as Loopdeck stores it: integer milliseconds since the Unix epoch, UTC.

Liveness timestamps (claimed_at, heartbeat_at, cancel_requested_at, …) are written with
`db_now_ms()`, which compiles to the database server's clock on every dialect, because the
clocks of the hosts that run API functions and runners differ.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class db_now_ms(FunctionElement[int]):  # noqa: N801 - reads like a SQL function
    """The database clock in epoch milliseconds."""

    type = BigInteger()
    inherit_cache = True


@compiles(db_now_ms)
def _now_default(element: Any, compiler: Any, **kw: Any) -> str:
    # SQLite/libSQL: julianday('now') has sub-millisecond precision; 3.40 lacks unixepoch('subsec').
    return "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"


@compiles(db_now_ms, "postgresql")
def _now_pg(element: Any, compiler: Any, **kw: Any) -> str:
    # clock_timestamp(), not now(): now() is frozen at transaction start.
    return "CAST(floor(extract(epoch from clock_timestamp()) * 1000) AS BIGINT)"


SQLITE_NOW_SQL = "(CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER))"
POSTGRES_NOW_SQL = "(CAST(floor(extract(epoch from clock_timestamp()) * 1000) AS BIGINT))"


def to_iso(ms: int | None) -> str | None:
    """Epoch milliseconds → ISO 8601 UTC with millisecond precision, e.g. 2026-11-22T08:31:57.123Z."""
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_time(value: str) -> int:
    """An ISO 8601 timestamp (naive means UTC) or epoch milliseconds → epoch milliseconds."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def host_now_ms() -> int:
    """The host clock; for display and ids only, never for liveness."""
    return int(datetime.now(UTC).timestamp() * 1000)

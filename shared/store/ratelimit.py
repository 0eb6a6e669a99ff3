"""The API's rate limit: fixed-window counters in the database.

In the database, not in process memory, because the API may run as many short-lived
functions. One upsert per counted request; windows are aligned to the database clock, so every
API process agrees on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..schema import rate_limits
from .base import StoreBase, db_now

# Counters of windows older than this are swept away (by the first request of a new window).
SWEEP_AFTER_MS = 3600 * 1000


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int  # seconds until the window ends (what 429's Retry-After says)


class RateLimitVerbs(StoreBase):
    def hit_rate_limit(self, key: str, *, limit: int, window_ms: int) -> RateDecision:
        """Count one request for `key` in the current window and say whether it is allowed."""

        def tx(conn: Connection) -> RateDecision:
            now = db_now(conn)
            start = now - now % window_ms
            # ON CONFLICT … DO UPDATE … RETURNING is the same SQL on both engines (SQLite ≥ 3.35,
            # libSQL included); SQLAlchemy spells it through each dialect's own insert().
            make = pg_insert if self.is_postgres else sqlite_insert
            stmt: Any = make(rate_limits).values(key=key, window_start=start, count=1)
            stmt = stmt.on_conflict_do_update(
                index_elements=[rate_limits.c.key, rate_limits.c.window_start],
                set_={"count": rate_limits.c.count + 1},
            ).returning(rate_limits.c.count)
            count = int(conn.execute(stmt).scalar_one())
            if count == 1:
                conn.execute(
                    delete(rate_limits).where(
                        rate_limits.c.key == key, rate_limits.c.window_start < start
                    )
                )
                conn.execute(
                    delete(rate_limits).where(rate_limits.c.window_start < start - SWEEP_AFTER_MS)
                )
            retry_after = max(1, -(-(start + window_ms - now) // 1000))
            return RateDecision(count <= limit, limit, max(0, limit - count), retry_after)

        return self.write(tx)

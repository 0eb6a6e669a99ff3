"""Settings, read once from the environment (and overridden by command-line flags).

| variable | default | meaning |
|---|---|---|
| LOOPDECK_DATABASE_URL | sqlite:///./loopdeck.db | where the shared schema lives |
| LOOPDECK_CONFIG | – | workflow file(s) a runner serves, `:`-separated |
| LOOPDECK_HEARTBEAT_INTERVAL | 10 | seconds between runner heartbeats |
| LOOPDECK_STALL_AFTER | 120 | seconds without heartbeat before a run is stalled |
| LOOPDECK_POLL_INTERVAL | 1 | seconds between full claim polls when idle |
| LOOPDECK_MAX_CLAIMS | 3 | claims of one run before the reaper fails it instead of requeueing |
| LOOPDECK_SHUTDOWN_GRACE | 30 | seconds SIGTERM waits for running stages before releasing them |
| LOOPDECK_KILL_GRACE | 10 | seconds between TERM and KILL of a cancelled stage's processes |
| LOOPDECK_MAX_ARTIFACT_BYTES | 10485760 | cap on one artifact |
| LOOPDECK_MAX_RUN_ARTIFACT_BYTES | 104857600 | cap on all artifacts of one run |
| LOOPDECK_MAX_INPUTS_BYTES | 65536 | cap on a run's inputs (as JSON) |
| LOOPDECK_MAX_BODY_BYTES | 1048576 | cap on an API request body |
| LOOPDECK_SQLITE_SYNCHRONOUS | NORMAL | SQLite durability: NORMAL or FULL (see docs/guarantees.md) |
| LOOPDECK_DB_POOL | default | `null` opens a connection per use (serverless API functions) |
| LOOPDECK_WAKEUP | auto | `auto`: idle runners wake on LISTEN/NOTIFY (PostgreSQL) or a data_version change (SQLite); `poll`: poll only |
| LOOPDECK_API_TOKENS | – | `name:secret:role,…` (roles viewer, operator, admin) |
| LOOPDECK_CRON_SECRET | – | bearer secret of /api/cron/reap (falls back to CRON_SECRET, Vercel's name) |
| LOOPDECK_RATE_LIMIT | 120/60 | mutating API requests per token (or client address) per window: `N/SECONDS`, `N` (per 60 s), or `0` (off) |
| LOOPDECK_SSE_SECONDS | 55 | longest an events stream stays open (under the host's response limit) |
| LOOPDECK_TRACKING_URL | – | external tracking UI linked from the run page; `{run_id}` is replaced |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///./loopdeck.db"
DEFAULT_RATE_LIMIT = (120, 60.0)  # mutating requests per window (seconds), per token
# Runs a runner executes at once (`--concurrency`). Its dispatcher flushes the finished runs
# and claims into the free slots in one transaction, so this also bounds a transaction's batch,
# and each transaction has a cost of its own besides its runs (six statements and a commit on
# PostgreSQL): at 64 that cost is shared by up to four times the runs it was at 16
# (bench/RESULTS.md, eleventh run: CPU per drained run on PostgreSQL a quarter lower, client
# and server; at 128 no lower). A slot's thread starts the first time it is needed
# (runner/pool.py); `docs/architecture.md` says what a high default costs and why it is 64.
DEFAULT_CONCURRENCY = 64


def _seconds(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _rate(env: Mapping[str, str], name: str) -> tuple[int, float]:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return DEFAULT_RATE_LIMIT
    if raw in ("0", "off"):
        return 0, DEFAULT_RATE_LIMIT[1]
    count, sep, window = raw.partition("/")
    try:
        limit, seconds = int(count), float(window.removesuffix("s")) if sep else 60.0
    except ValueError:
        raise ConfigError(f"{name}={raw!r} must be N/SECONDS (e.g. 120/60), N, or off") from None
    if limit < 0 or seconds < 1:
        raise ConfigError(f"{name}={raw!r}: N must be ≥ 0 and the window at least 1 second")
    return limit, seconds


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    config_files: tuple[str, ...] = ()
    heartbeat_interval: float = 10.0
    stall_after: float = 120.0
    poll_interval: float = 1.0
    max_claims: int = 3
    shutdown_grace: float = 30.0
    kill_grace: float = 10.0
    max_artifact_bytes: int = 10 * 1024 * 1024
    max_body_bytes: int = 1024 * 1024
    max_run_artifact_bytes: int = 100 * 1024 * 1024
    max_inputs_bytes: int = 64 * 1024
    sqlite_synchronous: str = "NORMAL"
    db_pool: str = "default"
    wakeup: str = "auto"
    # How often an idle SQLite runner reads `PRAGMA data_version` (the in-file change signal).
    wakeup_interval: float = 0.010
    api_tokens: str = ""
    cron_secret: str = ""
    rate_limit: int = DEFAULT_RATE_LIMIT[0]  # 0: off
    rate_limit_window: float = DEFAULT_RATE_LIMIT[1]
    tracking_url: str = ""
    sse_seconds: float = 55.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        sync = env.get("LOOPDECK_SQLITE_SYNCHRONOUS", "NORMAL").upper()
        if sync not in ("NORMAL", "FULL"):
            raise ConfigError(f"LOOPDECK_SQLITE_SYNCHRONOUS={sync!r} must be NORMAL or FULL")
        pool = env.get("LOOPDECK_DB_POOL", "default").lower()
        if pool not in ("default", "null"):
            raise ConfigError(f"LOOPDECK_DB_POOL={pool!r} must be 'default' or 'null'")
        wakeup = env.get("LOOPDECK_WAKEUP", "auto").lower()
        if wakeup not in ("auto", "poll"):
            raise ConfigError(f"LOOPDECK_WAKEUP={wakeup!r} must be 'auto' or 'poll'")
        config = env.get("LOOPDECK_CONFIG", "")
        rate_limit, rate_window = _rate(env, "LOOPDECK_RATE_LIMIT")
        settings = cls(
            database_url=env.get("LOOPDECK_DATABASE_URL") or DEFAULT_DATABASE_URL,
            config_files=tuple(p for p in config.split(os.pathsep) if p),
            heartbeat_interval=_seconds(env, "LOOPDECK_HEARTBEAT_INTERVAL", 10.0, 0.05),
            stall_after=_seconds(env, "LOOPDECK_STALL_AFTER", 120.0, 0.1),
            poll_interval=_seconds(env, "LOOPDECK_POLL_INTERVAL", 1.0, 0.001),
            max_claims=_int(env, "LOOPDECK_MAX_CLAIMS", 3, 1),
            shutdown_grace=_seconds(env, "LOOPDECK_SHUTDOWN_GRACE", 30.0),
            kill_grace=_seconds(env, "LOOPDECK_KILL_GRACE", 10.0),
            max_artifact_bytes=_int(env, "LOOPDECK_MAX_ARTIFACT_BYTES", 10 * 1024 * 1024, 1),
            max_body_bytes=_int(env, "LOOPDECK_MAX_BODY_BYTES", 1024 * 1024, 1),
            max_run_artifact_bytes=_int(
                env, "LOOPDECK_MAX_RUN_ARTIFACT_BYTES", 100 * 1024 * 1024, 1
            ),
            max_inputs_bytes=_int(env, "LOOPDECK_MAX_INPUTS_BYTES", 64 * 1024, 2),
            sqlite_synchronous=sync,
            db_pool=pool,
            wakeup=wakeup,
            wakeup_interval=_seconds(env, "LOOPDECK_WAKEUP_INTERVAL", 0.010, 0.001),
            api_tokens=env.get("LOOPDECK_API_TOKENS", ""),
            # Vercel's cron sends `Authorization: Bearer $CRON_SECRET`: its name is accepted too.
            cron_secret=env.get("LOOPDECK_CRON_SECRET") or env.get("CRON_SECRET") or "",
            rate_limit=rate_limit,
            rate_limit_window=rate_window,
            tracking_url=env.get("LOOPDECK_TRACKING_URL", "").strip(),
            sse_seconds=_seconds(env, "LOOPDECK_SSE_SECONDS", 55.0, 0.1),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.tracking_url and not self.tracking_url.startswith(("http://", "https://")):
            raise ConfigError(f"LOOPDECK_TRACKING_URL={self.tracking_url!r} must be an http(s) URL")
        if self.heartbeat_interval * 2 > self.stall_after:
            raise ConfigError(
                f"LOOPDECK_STALL_AFTER ({self.stall_after:g}s) must be at least twice "
                f"LOOPDECK_HEARTBEAT_INTERVAL ({self.heartbeat_interval:g}s), or live runs "
                "would be rescued between two heartbeats"
            )

    def with_overrides(self, **changes: Any) -> Settings:
        clean = {k: v for k, v in changes.items() if v is not None}
        updated = replace(self, **clean)
        updated.validate()
        return updated

    @property
    def stall_after_ms(self) -> int:
        return int(self.stall_after * 1000)

    @property
    def reaper_interval(self) -> float:
        """Several times per stall_after, at most every 30 s (DESIGN §5)."""
        return max(0.05, min(30.0, self.stall_after / 4))

"""The store: every query Loopdeck runs, behind named verbs (STYLE §1).

`Store` is one object for every dialect; a verb branches on `self.is_postgres` only where the
engines behave differently, and says why.
"""

from __future__ import annotations

from sqlalchemy import Engine

from ..checkpoint import WalCheckpointer
from ..db import make_engine
from ..settings import Settings
from .approvals import ApprovalVerbs
from .base import Actor, JsonText, StatementCache
from .claims import ClaimedRun, ClaimVerbs, HeartbeatResult
from .execution import NOW, ClaimRequest, ExecutionVerbs, RunWrites, WriteOutcome
from .fast import PreparedCache
from .group import GroupCommit
from .metrics import MetricsVerbs
from .overview import OverviewVerbs
from .queries import QueryVerbs, RunFilter
from .ratelimit import RateDecision, RateLimitVerbs
from .reaper import ReaperVerbs
from .rerun import RerunVerbs
from .reset import ResetVerbs
from .retention import PruneReport, RetentionVerbs
from .runners import RunnerVerbs
from .runs import RunVerbs
from .workflows import WorkflowVerbs


class Store(
    RunVerbs,
    ResetVerbs,
    RerunVerbs,
    ApprovalVerbs,
    RateLimitVerbs,
    QueryVerbs,
    ClaimVerbs,
    ExecutionVerbs,
    ReaperVerbs,
    RunnerVerbs,
    WorkflowVerbs,
    OverviewVerbs,
    MetricsVerbs,
    RetentionVerbs,
):
    def __init__(
        self,
        engine: Engine,
        *,
        stall_after_ms: int = 120_000,
        max_claims: int = 3,
        retry_seconds: float = 10.0,
        max_inputs_bytes: int = 64 * 1024,
    ) -> None:
        super().__init__(engine, retry_seconds=retry_seconds)
        self.statements = StatementCache()
        self.prepared = PreparedCache(engine.dialect)
        self.creates = GroupCommit(self.create_group)
        self.stall_after_ms = stall_after_ms
        self.max_claims = max_claims
        self.max_inputs_bytes = max_inputs_bytes

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        retry_seconds: float = 10.0,
        session_name: str = "loopdeck",
        background_checkpoint: bool = False,
    ) -> Store:
        """`background_checkpoint`: on SQLite, WAL checkpoints run in a thread of this process
        instead of inside its commits (for the API: shared/checkpoint.py); stopped by
        `dispose`."""
        engine = make_engine(
            settings.database_url,
            settings,
            wait_seconds=retry_seconds,
            session_name=session_name,
            background_checkpoint=background_checkpoint,
        )
        store = cls(
            engine,
            stall_after_ms=settings.stall_after_ms,
            max_claims=settings.max_claims,
            retry_seconds=retry_seconds,
            max_inputs_bytes=settings.max_inputs_bytes,
        )
        if background_checkpoint and store.is_sqlite and not store.is_libsql:
            store.checkpointer = WalCheckpointer(engine)
            store.checkpointer.start()
        return store


__all__ = [
    "NOW",
    "Actor",
    "JsonText",
    "ClaimRequest",
    "ClaimedRun",
    "HeartbeatResult",
    "PruneReport",
    "RateDecision",
    "RunFilter",
    "RunWrites",
    "Store",
    "WriteOutcome",
]

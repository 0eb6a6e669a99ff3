"""The one schema (DESIGN §3), as SQLAlchemy Core tables.

Timestamps are integer epoch milliseconds (UTC) written from the database clock
(`shared.clock.db_now_ms`), so they compare the same way on every dialect.
Alembic revisions in `shared/migrations/versions/` create and evolve these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# PostgreSQL `json`, not `jsonb`: jsonb reorders object keys (shortest first), and order is
# meaning here — a definition's steps and inputs are listed in the order they were written,
# and graphs run independent steps in that order. Nothing queries inside these documents.
Json = JSON()
# On SQLite only an INTEGER PRIMARY KEY aliases the rowid (and autoincrements).
EventId = BigInteger().with_variant(Integer(), "sqlite")


def Key(length: int) -> String:  # noqa: N802 - used like the type it returns
    """A string that is compared byte by byte: ids, tokens, statuses, queue and workflow
    names — the keys of the indexes every claim, completion and event goes through.

    PostgreSQL compares text in the database's collation, and only one named "C" (or
    "POSIX") is byte order at memcmp's cost; C.UTF-8, en_US.UTF-8 and the like go through
    the C library's strcoll for every comparison — about a tenth of a drained run's server
    CPU (migration 0008). Byte order is also SQLite's (BINARY), so both backends order ids alike.
    """
    return String(length).with_variant(String(length, collation="C"), "postgresql")


RUN_STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")
ACTIVE_RUN_STATUSES = ("queued", "running", "waiting")
TERMINAL_RUN_STATUSES = ("succeeded", "failed", "cancelled")
TASK_STATUSES = ("created", "running", "waiting", "succeeded", "failed", "cancelled", "skipped")
ORIGINS = ("api", "cli", "retry", "restart")
RUNNER_STATUSES = ("active", "draining", "stopped")
APPROVAL_DECISIONS = ("approve", "reject")
ARTIFACT_KINDS = ("output", "evaluation", "log", "file")


def _in(column: str, values: tuple[str, ...]) -> str:
    # An OR chain, not `IN (…)`: SQLite builds a temporary b-tree for an IN list each time
    # it checks a row (migration 0006 rewrote the constraints 0001 stored on SQLite).
    return " OR ".join(f"{column} = {v!r}" for v in values)


workflows = Table(
    "workflows",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("definition", Json, nullable=False),
    Column("version", String(64), nullable=False),
    Column("published_by", String(200)),
    Column("updated_at", BigInteger, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Key(40), primary_key=True),
    Column("workflow", Key(200), nullable=False),
    Column("version", String(64), nullable=False),
    Column("kind", String(8), nullable=False),
    # The same text for every run of one workflow version: a reader on the hot path (the
    # claim) decodes each distinct text once and shares the result, which nobody may change.
    Column("config_snapshot", Json, nullable=False, info={"decode_once": True}),
    Column("inputs", Json, nullable=False),
    Column("status", Key(16), nullable=False),
    Column("queue", Key(100), nullable=False, server_default="default"),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("not_before", BigInteger),
    Column("parent_run_id", Key(40), ForeignKey("runs.id", ondelete="SET NULL")),
    Column("origin", String(16), nullable=False, server_default="api"),
    Column("current_stage", String(200)),
    Column("current_attempt", Integer, nullable=False, server_default="0"),
    Column("max_attempts", Integer),
    Column("pass_threshold", Float),
    Column("final_score", Float),
    Column("output", Json),
    Column("error_message", Text),
    Column("claim_token", Key(40)),
    Column("claimed_by", String(40)),
    Column("claimed_at", BigInteger),
    Column("claim_count", Integer, nullable=False, server_default="0"),
    # Bumped by every fenced runner write; lets a retried write after an ambiguous commit
    # recognise that it already landed (see shared/store/execution.py).
    Column("fence", Integer, nullable=False, server_default="0"),
    Column("heartbeat_at", BigInteger),
    Column("cancel_requested_at", BigInteger),
    Column("cancel_reason", Text),
    Column("requested_by", String(200)),
    # Unique: see ix_runs_idempotency_key below.
    Column("idempotency_key", String(255)),
    Column("rerun_count", Integer, nullable=False, server_default="0"),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("completed_at", BigInteger),
    # `{}` for nearly every run that is claimed: decoded once per distinct text on the claim
    # path, like config_snapshot (the runner copies it before adding to it).
    Column("metrics", Json, nullable=False, info={"decode_once": True}),
    CheckConstraint(_in("status", RUN_STATUSES), name="status"),
    CheckConstraint(_in("origin", ORIGINS), name="origin"),
    CheckConstraint(_in("kind", ("loop", "steps")), name="kind"),
    # Room for a run's next row version on its own page (migration 0005).
    postgresql_with={"fillfactor": 80},
)
# The claim path reads only queued rows, in claim order: keep that index small.
Index(
    "ix_runs_claimable",
    runs.c.queue,
    runs.c.priority.desc(),
    runs.c.id,
    sqlite_where=text("status = 'queued'"),
    postgresql_where=text("status = 'queued'"),
)
# Runs rescued twice, waiting in the queue: a runner holds at most one of them at a time.
Index(
    "ix_runs_suspects",
    runs.c.queue,
    runs.c.priority.desc(),
    runs.c.id,
    sqlite_where=text("status = 'queued' AND claim_count >= 2"),
    postgresql_where=text("status = 'queued' AND claim_count >= 2"),
)
# No index on heartbeat_at: the search for stalled runs reads running runs through
# ix_runs_status_id, and a heartbeat that changes no indexed column is a HOT update (0009).
# Lookups by a claim's token (its runs, heartbeats) are of running runs and say so. A finished
# run keeps its token: on PostgreSQL only running runs are indexed, so a run's completion adds
# no entry; SQLite touches this index only when the token changes (migration 0007).
Index(
    "ix_runs_claim_token",
    runs.c.claim_token,
    sqlite_where=text("claim_token IS NOT NULL"),
    postgresql_where=text("status = 'running'"),
)
Index("ix_runs_status_id", runs.c.status, runs.c.id)
Index("ix_runs_workflow_id", runs.c.workflow, runs.c.id)
Index("ix_runs_queue_id", runs.c.queue, runs.c.id)
# Partial, like the idempotency key's: almost no run has a parent (migration 0007).
Index(
    "ix_runs_parent_run_id_id",
    runs.c.parent_run_id,
    runs.c.id,
    sqlite_where=text("parent_run_id IS NOT NULL"),
    postgresql_where=text("parent_run_id IS NOT NULL"),
)
Index("ix_runs_created_at", runs.c.created_at)
# Unique among the runs that have one. PostgreSQL: a partial index, since every new version
# of a run's row added a NULL to a full one; SQLite: the table's UNIQUE constraint, which an
# update that leaves the key alone never touches there (migration 0007).
Index(
    "ix_runs_idempotency_key",
    runs.c.idempotency_key,
    unique=True,
    postgresql_where=text("idempotency_key IS NOT NULL"),
).ddl_if(dialect="postgresql")
runs.append_constraint(
    UniqueConstraint("idempotency_key", name="uq_runs_idempotency_key").ddl_if(dialect="sqlite")
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Key(40), primary_key=True),
    Column("run_id", Key(40), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("step", String(200), nullable=False),
    Column("position", Integer, nullable=False, server_default="0"),
    # The same text for every run of one workflow version: decoded once per distinct text on
    # the claim path (see runs.config_snapshot); nobody changes a claimed task's needs.
    Column("needs", Json, nullable=False, info={"decode_once": True}),
    Column("status", String(16), nullable=False),
    # Graph steps: how many times the step has been started (retries included).
    # Loop stages: the loop attempt this row belongs to (one row per stage and attempt).
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("output", Json),
    Column("error", Text),
    Column("started_at", BigInteger),
    Column("completed_at", BigInteger),
    Column("rerun_count", Integer, nullable=False, server_default="0"),
    Column("last_rerun_by", String(200)),
    Column("last_rerun_reason", Text),
    Column("last_rerun_at", BigInteger),
    # Approval gates: the decision on a `waiting` task is an intent written by the API; the
    # runner that next claims the run carries it out (runs the step, or fails it).
    Column("approval_decision", String(16)),
    Column("approval_by", String(200)),
    Column("approval_comment", Text),
    Column("decided_at", BigInteger),
    CheckConstraint(_in("status", TASK_STATUSES), name="status"),
    # Room for a task's next row version on its own page: a HOT update (migration 0007).
    postgresql_with={"fillfactor": 80},
)
Index("ix_tasks_run_id_position", tasks.c.run_id, tasks.c.position)

events = Table(
    "events",
    metadata,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("run_id", Key(40), nullable=False),
    Column("task_id", String(40)),
    Column("type", String(64), nullable=False),
    Column("stage", String(200)),
    Column("attempt", Integer),
    Column("message", Text),
    Column("data", Json),
    Column("created_at", BigInteger, nullable=False),
    # SQLite only. On PostgreSQL the key's check (a trigger that looks the run up and locks it
    # against deletion, for each of the four or more events a run writes) was a seventh of a
    # drain's server time (migration 0008). Nothing needs it there: every writer of events
    # first writes or locks the run's row in the same transaction (a runner's guarded update,
    # an intent's FOR UPDATE, the insert of the run), and the only deletion of runs — the
    # prune — locks them FOR UPDATE, then deletes their events itself.
    ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE").ddl_if(dialect="sqlite"),
)
Index("ix_events_run_id_id", events.c.run_id, events.c.id)

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("run_id", Key(40), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", String(40)),
    Column("step", String(200)),
    Column("attempt", Integer),
    Column("kind", String(16), nullable=False),
    Column("filename", String(500), nullable=False),
    Column("media_type", String(200), nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    CheckConstraint(_in("kind", ARTIFACT_KINDS), name="kind"),
)
Index("ix_artifacts_run_id_id", artifacts.c.run_id, artifacts.c.id)

runners = Table(
    "runners",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    # psutil create_time in ms: with the pid it identifies the process even after pid reuse.
    Column("pid_started_at", BigInteger, nullable=False),
    Column("version", String(40), nullable=False),
    Column("queues", Json, nullable=False),
    Column("labels", Json, nullable=False),
    Column("workflows", Json, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("heartbeat_at", BigInteger, nullable=False),
    Column("stats", Json, nullable=False),
    Column("status", String(16), nullable=False),
    Column("deregister_requested_at", BigInteger),
    Column("stopped_at", BigInteger),
    CheckConstraint(_in("status", RUNNER_STATUSES), name="status"),
)
Index("ix_runners_hostname", runners.c.hostname)

audit = Table(
    "audit",
    metadata,
    Column("id", EventId, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    # No foreign key: the audit trail outlives pruned runs.
    Column("run_id", String(40)),
    Column("reason", Text),
    Column("details", Json),
    Column("request_id", String(64)),
    Column("client", String(200)),
)
Index("ix_audit_run_id_id", audit.c.run_id, audit.c.id)

# Fixed-window request counters for the API's rate limit: in the database, because the API may
# run as many short-lived processes that share nothing else.
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("window_start", BigInteger, primary_key=True),
    Column("count", Integer, nullable=False),
)
Index("ix_rate_limits_window_start", rate_limits.c.window_start)

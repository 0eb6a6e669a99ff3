"""Response shapes (DESIGN §7), as pydantic models: the OpenAPI document's response schemas
are generated from them (api/openapi.py), and the schemathesis run checks every response
against them. Handlers answer with the store's dicts; these models describe those dicts.

Every key the store always writes is required (no default); keys present only sometimes have
a default. Extra keys are allowed, so a new field is not a breaking change for clients.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RunStatus = Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
TaskStatus = Literal["created", "running", "waiting", "succeeded", "failed", "cancelled", "skipped"]
Time = str  # ISO 8601 UTC with milliseconds, e.g. 2026-11-22T08:31:57.123Z


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(_Shape):
    code: str = Field(description="machine-readable: invalid_input, not_found, conflict, …")
    message: str
    details: dict[str, Any] = Field(description="e.g. `field` naming the invalid input")


class Error(_Shape):
    """Every failure: 4xx and 5xx alike."""

    error: ErrorBody


class Run(_Shape):
    id: str
    workflow: str
    version: str
    kind: Literal["loop", "steps"]
    status: RunStatus
    inputs: dict[str, Any]
    queue: str
    priority: int
    not_before: Time | None
    parent_run_id: str | None
    origin: Literal["api", "cli", "retry", "restart"]
    current_stage: str | None
    current_attempt: int
    max_attempts: int | None
    pass_threshold: float | None
    final_score: float | None
    output: Any
    error_message: str | None
    claimed_by: str | None
    claim_count: int
    heartbeat_at: Time | None
    cancel_requested_at: Time | None
    cancel_reason: str | None
    requested_by: str | None
    rerun_count: int
    metrics: dict[str, Any]
    created_at: Time
    started_at: Time | None
    completed_at: Time | None
    stalled: bool = Field(description="running, and no heartbeat for LOOPDECK_STALL_AFTER")
    duration_s: float | None
    heartbeat_age_s: float | None = Field(default=None, description="running runs only")


class Task(_Shape):
    id: str
    run_id: str
    step: str
    position: int
    needs: list[str]
    status: TaskStatus
    attempt: int
    output: Any
    error: str | None
    started_at: Time | None
    completed_at: Time | None
    rerun_count: int
    last_rerun_by: str | None
    last_rerun_reason: str | None
    last_rerun_at: Time | None
    approval_decision: Literal["approve", "reject"] | None
    approval_by: str | None
    approval_comment: str | None
    decided_at: Time | None
    approval_prompt: str | None = None  # in run detail, for a step behind an approval gate


class RunLink(_Shape):
    id: str
    origin: str | None = None
    status: RunStatus | None = None
    created_at: Time | None = None


class Lineage(_Shape):
    parent: RunLink | None
    children: list[RunLink]


class AuditEntry(_Shape):
    id: int
    at: Time
    actor: str
    action: str
    run_id: str | None
    reason: str | None
    details: dict[str, Any] | None
    request_id: str | None
    client: str | None


class RunDetail(Run):
    tasks: list[Task]
    lineage: Lineage
    config_diff: Any = Field(description="what changed against the parent run's definition")
    claimed_at: Time | None
    audit: list[AuditEntry]


class ResetResult(RunDetail):
    cleared: dict[str, Any] = Field(description="what the reset cleared, and whose claim")


class RunPage(_Shape):
    runs: list[Run]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class Event(_Shape):
    id: int
    run_id: str
    task_id: str | None
    type: str = Field(description="run.queued, stage.started, log, score, …")
    stage: str | None
    attempt: int | None
    message: str | None
    data: Any
    created_at: Time


class EventPage(_Shape):
    events: list[Event]
    next_after: int = Field(description="pass as `after` for the next page")
    run_status: RunStatus


class Artifact(_Shape):
    id: str
    run_id: str
    task_id: str | None
    step: str | None
    attempt: int | None
    kind: Literal["output", "evaluation", "log", "file"]
    filename: str
    media_type: str
    size: int
    sha256: str
    created_at: Time


class ArtifactList(_Shape):
    artifacts: list[Artifact]


class Workflow(_Shape):
    name: str
    version: str
    kind: Literal["loop", "steps"]
    description: str | None
    queue: str
    definition: dict[str, Any]
    input_schema: dict[str, Any] = Field(description="the inputs as a JSON Schema object")
    published_by: str | None
    updated_at: Time


class WorkflowList(_Shape):
    workflows: list[Workflow]


class Runner(_Shape):
    id: str
    hostname: str
    pid: int
    pid_started_at: int
    version: str
    queues: list[str]
    labels: dict[str, Any]
    workflows: list[str]
    concurrency: int
    started_at: Time
    heartbeat_at: Time
    stats: dict[str, Any]
    status: Literal["active", "draining", "stopped"]
    deregister_requested_at: Time | None
    stopped_at: Time | None
    heartbeat_age_s: float | None = None
    health: Literal["alive", "stale", "stopped"] | None = None
    running: int | None = Field(default=None, description="runs it holds now")


class RunnerList(_Shape):
    runners: list[Runner]


class HealthDatabase(_Shape):
    dialect: str
    reachable: bool


class HealthSchema(_Shape):
    current: str | None
    head: str


class Health(_Shape):
    status: Literal["ok", "schema_outdated"]
    database: HealthDatabase
    schema_: HealthSchema = Field(alias="schema")
    version: str
    auth: Literal["token", "none"] = Field(description="whether the API needs a token")


class StatsWindow(_Shape):
    succeeded: int
    failed: int
    cancelled: int
    created: int
    median_duration_s: float | None
    p95_duration_s: float | None
    metrics: dict[str, float]


class Stats(_Shape):
    counts: dict[str, int]
    total: int
    stalled: int
    window_hours: float
    last_window: StatsWindow
    oldest_queued_age_s: float | None


class AuditPage(_Shape):
    audit: list[AuditEntry]
    next_before: int | None = Field(description="pass as `before` for the next page")


class RerunPlan(_Shape):
    run_id: str
    status: RunStatus
    rerun: list[dict[str, Any]]
    reused: list[dict[str, Any]]
    untouched: list[dict[str, Any]]


class Rescue(_Shape):
    run_id: str
    status: Literal["queued", "failed"]
    claimed_by: str | None
    reason: str


class ReapResult(_Shape):
    rescued: list[Rescue]
    count: int

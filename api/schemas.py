"""Request bodies. Unknown fields are rejected (422 naming the field), and so are values of
the wrong JSON type (strict mode: `false` is not an integer, `0` not a boolean, `"5"` not a
number), so what the OpenAPI document says a body may hold is exactly what is accepted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.clock import parse_time


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateRun(_Body):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"workflow": "essay", "inputs": {"topic": "tides"}}]},
    )

    workflow: str = Field(min_length=1, max_length=200)
    inputs: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(default=None, min_length=1, max_length=100)
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    not_before: str | int | None = Field(
        default=None,
        description="ISO 8601 time (or epoch milliseconds) before which no runner claims it",
    )
    requested_by: str | None = Field(default=None, max_length=200)

    @field_validator("not_before", mode="wrap")
    @classmethod
    def _time(cls, value: Any, handler: Any) -> str | int | None:
        # One error naming the field, not one per member of the union.
        if isinstance(value, bool) or not isinstance(value, str | int | None):
            raise ValueError("must be an ISO 8601 time or epoch milliseconds")
        checked: str | int | None = handler(value)
        if isinstance(checked, str):
            try:
                parse_time(checked)
            except (ValueError, OverflowError):
                raise ValueError("not an ISO 8601 time") from None
        return checked

    def not_before_ms(self) -> int | None:
        if self.not_before is None:
            return None
        return self.not_before if isinstance(self.not_before, int) else parse_time(self.not_before)


class Reason(_Body):
    reason: str | None = Field(default=None, max_length=2000)
    requested_by: str | None = Field(default=None, max_length=200)


class ResetBody(_Body):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"reason": "stage hangs"}]}
    )

    to_step: str | None = Field(
        default=None,
        min_length=1,
        max_length=210,
        description="graph: a step; loop: produce, evaluate, revise or stage#attempt",
    )
    clear_results: bool = False
    reason: str = Field(min_length=1, max_length=2000)
    requested_by: str | None = Field(default=None, max_length=200)


class RerunBody(_Body):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"reason": "flaky network"}]}
    )

    task_ids: list[str] = Field(default_factory=list, max_length=1000)
    steps: list[str] = Field(default_factory=list, max_length=1000)
    reason: str = Field(min_length=1, max_length=2000)
    requested_by: str | None = Field(default=None, max_length=200)
    dispatch: bool = Field(
        default=True,
        description="false: reset the tasks but hold the run (status waiting, not claimable) "
        "until POST /api/runs/{id}/dispatch",
    )

    @field_validator("task_ids", "steps")
    @classmethod
    def _names(cls, values: list[str]) -> list[str]:
        for value in values:
            if not 0 < len(value) <= 200:
                raise ValueError("each entry must be 1–200 characters")
        return list(dict.fromkeys(values))


class ApproveBody(_Body):
    step: str = Field(min_length=1, max_length=200)
    decision: Literal["approve", "reject"]
    comment: str | None = Field(default=None, max_length=2000)
    requested_by: str | None = Field(default=None, max_length=200)

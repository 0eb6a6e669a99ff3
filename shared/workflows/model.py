"""The workflow-definition model. Unknown keys are rejected everywhere (`extra="forbid"`)."""

from __future__ import annotations

import hashlib
import json
import re
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
CALL_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
InputType = Literal["string", "integer", "number", "boolean", "object", "array"]
LOOP_STAGES = ("produce", "evaluate", "revise")


def _at(field: str, message: str) -> ValueError:
    """A validation error for a nested field; the loader reports `field` as its location."""
    return ValueError(f"@{field}@ {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    return isinstance(value, list)


class InputSpec(_Strict):
    type: InputType = "string"
    required: bool = False
    default: Any = None
    description: str | None = None
    enum: list[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _default_matches(self) -> InputSpec:
        if self.default is not None and not _type_ok(self.type, self.default):
            raise ValueError(f"default {self.default!r} is not of type {self.type}")
        if self.required and self.default is not None:
            raise ValueError("an input with a default cannot also be required")
        return self


class Approval(_Strict):
    prompt: str = Field(min_length=1)


class Stage(_Strict):
    run: str | list[str] | None = None
    call: str | None = None
    description: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    retries: int = Field(default=0, ge=0, le=100)
    backoff: float = Field(default=1.0, ge=0, le=3600)
    env: dict[str, str] = Field(default_factory=dict)
    needs: list[str] = Field(default_factory=list)
    approval: Approval | None = None

    @field_validator("run")
    @classmethod
    def _run_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is not None and (not value or (isinstance(value, list) and not value[0])):
            raise ValueError("an empty command")
        return value

    @field_validator("call")
    @classmethod
    def _call_shape(cls, value: str | None) -> str | None:
        if value is not None and not CALL_RE.match(value):
            raise ValueError(f"{value!r} is not of the form module:function")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Stage:
        if (self.run is None) == (self.call is None):
            raise ValueError("a stage needs exactly one of `run:` or `call:`")
        return self

    @property
    def kind(self) -> str:
        return "run" if self.run is not None else "call"


class Loop(_Strict):
    max_attempts: int = Field(default=3, ge=1, le=1000)
    pass_threshold: float = 0.8
    produce: Stage
    evaluate: Stage
    revise: Stage | None = None

    @model_validator(mode="after")
    def _no_needs(self) -> Loop:
        for name in LOOP_STAGES:
            stage = getattr(self, name)
            if stage is not None and stage.needs:
                raise _at(f"{name}.needs", "loop stages cannot have `needs` (loop order is fixed)")
            if stage is not None and stage.approval is not None:
                raise _at(f"{name}.approval", "approval gates are for graph steps, not loop stages")
        return self

    def stage(self, name: str) -> Stage:
        if name == "revise":
            return self.revise or self.produce
        stage: Stage = getattr(self, name)
        return stage


class Workflow(_Strict):
    name: str
    description: str | None = None
    queue: str = Field(default="default", min_length=1, max_length=100)
    priority: int = Field(default=0, ge=-1000, le=1000)
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    loop: Loop | None = None
    steps: dict[str, Stage] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Workflow:
        if not NAME_RE.match(self.name):
            raise _at("name", f"workflow name {self.name!r} must match {NAME_RE.pattern}")
        if (self.loop is None) == (self.steps is None):
            raise ValueError("a workflow needs exactly one of `loop:` or `steps:`")
        for key in self.inputs:
            if not NAME_RE.match(key):
                raise _at(f"inputs.{key}", f"input name {key!r} must match {NAME_RE.pattern}")
        if self.steps is not None:
            if not self.steps:
                raise _at("steps", "`steps:` is empty")
            for step, stage in self.steps.items():
                if not NAME_RE.match(step):
                    raise _at(f"steps.{step}", f"step name {step!r} must match {NAME_RE.pattern}")
                for need in stage.needs:
                    if need not in self.steps:
                        raise _at(
                            f"steps.{step}.needs",
                            f"step {step!r} needs {need!r}, which is not a step",
                        )
                    if need == step:
                        raise _at(f"steps.{step}.needs", f"step {step!r} needs itself")
            self.step_order()  # raises on a cycle
        return self

    @property
    def kind(self) -> str:
        return "loop" if self.loop is not None else "steps"

    def step_order(self) -> list[str]:
        """Steps in a topological order (definition order among independent steps)."""
        assert self.steps is not None
        remaining = {name: set(stage.needs) for name, stage in self.steps.items()}
        order: list[str] = []
        while remaining:
            ready = [name for name, needs in remaining.items() if not needs]
            if not ready:
                first = sorted(remaining)[0]
                raise _at(
                    f"steps.{first}.needs", f"`needs` form a cycle among steps {sorted(remaining)}"
                )
            for name in ready:
                order.append(name)
                del remaining[name]
            for needs in remaining.values():
                needs.difference_update(ready)
        return order

    @cached_property
    def ordered_steps(self) -> tuple[str, ...]:
        """`step_order()`, worked out once per workflow (executions ask for it every run)."""
        return tuple(self.step_order())

    @cached_property
    def needed_steps(self) -> frozenset[str]:
        """Steps some other step needs (the rest are the graph's sinks)."""
        assert self.steps is not None
        return frozenset(n for s in self.steps.values() for n in s.needs)

    def downstream_of(self, step: str) -> list[str]:
        """`step` and every step that needs it, directly or not, in step order."""
        assert self.steps is not None
        found = {step}
        for name in self.ordered_steps:
            if set(self.steps[name].needs) & found:
                found.add(name)
        return [name for name in self.ordered_steps if name in found]

    def definition(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def definition_version(definition: dict[str, Any]) -> str:
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def workflow_from_definition(definition: dict[str, Any]) -> Workflow:
    return Workflow.model_validate(definition)

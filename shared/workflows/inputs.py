"""Validate a run's inputs against its workflow's input schema."""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidInput
from .model import InputSpec, Workflow, _type_ok

_JSON_TYPES = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "object": "object",
    "array": "array",
}


def validate_inputs(workflow: Workflow, inputs: Any) -> dict[str, Any]:
    """The inputs with defaults filled in, or InvalidInput naming the offending field."""
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, dict):
        raise InvalidInput("inputs must be a JSON object", field="inputs")
    unknown = sorted(set(inputs) - set(workflow.inputs))
    if unknown:
        known = ", ".join(sorted(workflow.inputs)) or "none"
        raise InvalidInput(
            f"unknown input {unknown[0]!r} for workflow {workflow.name!r} (known: {known})",
            field=f"inputs.{unknown[0]}",
        )
    result: dict[str, Any] = {}
    for name, spec in workflow.inputs.items():
        field = f"inputs.{name}"
        if name not in inputs or inputs[name] is None:
            if spec.required:
                raise InvalidInput(f"input {name!r} is required", field=field)
            if spec.default is not None:
                result[name] = spec.default
            continue
        value = inputs[name]
        if spec.type == "number" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not _type_ok(spec.type, value):
            raise InvalidInput(
                f"input {name!r} must be of type {spec.type}, got {type(value).__name__}",
                field=field,
            )
        _check_bounds(name, spec, value)
        result[name] = value
    return result


def _check_bounds(name: str, spec: InputSpec, value: Any) -> None:
    field = f"inputs.{name}"
    if spec.enum is not None and value not in spec.enum:
        raise InvalidInput(f"input {name!r} must be one of {spec.enum}", field=field)
    if spec.type in ("integer", "number"):
        if spec.minimum is not None and value < spec.minimum:
            raise InvalidInput(f"input {name!r} must be ≥ {spec.minimum:g}", field=field)
        if spec.maximum is not None and value > spec.maximum:
            raise InvalidInput(f"input {name!r} must be ≤ {spec.maximum:g}", field=field)
    if spec.type in ("string", "array"):
        if spec.min_length is not None and len(value) < spec.min_length:
            raise InvalidInput(
                f"input {name!r} must have at least {spec.min_length} character(s)/item(s)",
                field=field,
            )
        if spec.max_length is not None and len(value) > spec.max_length:
            raise InvalidInput(
                f"input {name!r} must have at most {spec.max_length} character(s)/item(s)",
                field=field,
            )


def coerce_cli_value(workflow: Workflow, name: str, raw: str) -> Any:
    """`-i key=value` from the command line → a value of the input's declared type."""
    spec = workflow.inputs.get(name)
    if spec is None:
        known = ", ".join(sorted(workflow.inputs)) or "none"
        raise InvalidInput(f"unknown input {name!r} (known: {known})", field=f"inputs.{name}")
    try:
        if spec.type == "integer":
            return int(raw)
        if spec.type == "number":
            return float(raw)
        if spec.type == "boolean":
            lowered = raw.lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise ValueError(raw)
        if spec.type in ("object", "array"):
            return json.loads(raw)
    except ValueError:
        raise InvalidInput(
            f"input {name!r}: {raw!r} is not a valid {spec.type}", field=f"inputs.{name}"
        ) from None
    return raw


def input_json_schema(workflow: Workflow) -> dict[str, Any]:
    """The inputs as a JSON Schema object, for forms and API clients."""
    properties: dict[str, Any] = {}
    for name, spec in workflow.inputs.items():
        prop: dict[str, Any] = {"type": _JSON_TYPES[spec.type]}
        if spec.description:
            prop["description"] = spec.description
        if spec.default is not None:
            prop["default"] = spec.default
        if spec.enum is not None:
            prop["enum"] = spec.enum
        if spec.minimum is not None:
            prop["minimum"] = spec.minimum
        if spec.maximum is not None:
            prop["maximum"] = spec.maximum
        if spec.min_length is not None:
            prop["minLength" if spec.type == "string" else "minItems"] = spec.min_length
        if spec.max_length is not None:
            prop["maxLength" if spec.type == "string" else "maxItems"] = spec.max_length
        properties[name] = prop
    return {
        "type": "object",
        "properties": properties,
        "required": [n for n, s in workflow.inputs.items() if s.required],
        "additionalProperties": False,
    }

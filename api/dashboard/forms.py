"""Workflow definitions as the pages show them: the "Start run" form generated from a workflow's
input JSON Schema, and a readable summary of its steps or loop."""

from __future__ import annotations

import json
from typing import Any

from .views import fmt_number


def _bounds(prop: dict[str, Any]) -> str:
    parts = []
    lo, hi = prop.get("minimum"), prop.get("maximum")
    if lo is not None and hi is not None:
        parts.append(f"{fmt_number(lo)} to {fmt_number(hi)}")
    elif lo is not None:
        parts.append(f"at least {fmt_number(lo)}")
    elif hi is not None:
        parts.append(f"at most {fmt_number(hi)}")
    lo = prop.get("minLength", prop.get("minItems"))
    hi = prop.get("maxLength", prop.get("maxItems"))
    unit = "characters" if prop.get("type") == "string" else "items"
    if lo is not None and hi is not None:
        parts.append(f"{lo} to {hi} {unit}")
    elif lo is not None:
        parts.append(f"at least {lo} {unit}")
    elif hi is not None:
        parts.append(f"at most {hi} {unit}")
    if prop.get("enum"):
        parts.append("one of " + ", ".join(json.dumps(v, ensure_ascii=False) for v in prop["enum"]))
    return "; ".join(parts)


def _field(workflow: str, name: str, prop: dict[str, Any], required: bool) -> dict[str, Any]:
    kind = prop.get("type", "string")
    default = prop.get("default")
    attrs: dict[str, Any] = {}
    if prop.get("enum"):
        widget = "select"
    elif kind == "boolean":
        widget = "checkbox"
    elif kind in ("integer", "number"):
        widget = "number"
        attrs["step"] = "1" if kind == "integer" else "any"
        if prop.get("minimum") is not None:
            attrs["min"] = fmt_number(prop["minimum"]).replace(",", "")
        if prop.get("maximum") is not None:
            attrs["max"] = fmt_number(prop["maximum"]).replace(",", "")
    elif kind in ("object", "array"):
        widget = "json"
    else:
        widget = "text"
        if prop.get("minLength") is not None:
            attrs["minlength"] = prop["minLength"]
        if prop.get("maxLength") is not None:
            attrs["maxlength"] = prop["maxLength"]
    if widget == "json":
        value = "" if default is None else json.dumps(default, ensure_ascii=False)
    elif widget == "checkbox" or default is None:
        value = ""
    else:
        value = str(default)
    return {
        "name": name,
        "id": f"in-{workflow}-{name}",
        "path": f"inputs.{name}",
        "type": kind,
        "widget": widget,
        "required": required,
        "value": value,
        "checked": bool(default) if widget == "checkbox" else False,
        "options": [
            {"value": json.dumps(v), "label": str(v), "selected": v == default}
            for v in prop.get("enum") or []
        ],  # fmt: skip
        "description": prop.get("description") or "",
        "constraints": _bounds(prop),
        "default_text": "" if default is None else json.dumps(default, ensure_ascii=False),
        "attrs": attrs,
    }


def start_form(workflow: dict[str, Any]) -> dict[str, Any]:
    schema = workflow.get("input_schema") or {}
    required = set(schema.get("required") or [])
    return {
        "name": workflow["name"],
        "description": workflow.get("description") or "",
        "queue": workflow.get("queue") or "default",
        "fields": [
            _field(workflow["name"], name, prop, name in required)
            for name, prop in (schema.get("properties") or {}).items()
        ],
    }


def _stage(name: str, stage: dict[str, Any]) -> dict[str, Any]:
    run = stage.get("run")
    if isinstance(run, list):
        run = " ".join(run)
    return {
        "name": name,
        "kind": "run" if run is not None else "call",
        "target": run if run is not None else stage.get("call"),
        "needs": stage.get("needs") or [],
        "retries": stage.get("retries") or 0,
        "timeout": stage.get("timeout"),
        "description": stage.get("description") or "",
        "approval": (stage.get("approval") or {}).get("prompt"),
    }


def describe(workflow: dict[str, Any]) -> dict[str, Any]:
    definition = workflow.get("definition") or {}
    loop = definition.get("loop")
    out = {
        **workflow,
        "form": start_form(workflow),
        "steps": [_stage(n, s) for n, s in (definition.get("steps") or {}).items()],
        "loop": None,
    }
    if loop:
        out["loop"] = {
            "max_attempts": loop.get("max_attempts"),
            "pass_threshold": loop.get("pass_threshold"),
            "stages": [
                _stage(n, loop[n]) for n in ("produce", "evaluate", "revise") if loop.get(n)
            ],
        }
    return out

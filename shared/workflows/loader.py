"""Load workflow files (YAML). Every problem names the file, the workflow and the field."""

from __future__ import annotations

import os
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import WorkflowFileError
from .model import Workflow

_PYDANTIC_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-"))


def _translate(err: dict[str, Any]) -> tuple[str, str]:
    """(field path, message) for one pydantic error."""
    field = _field_path(tuple(err["loc"]))
    message = _PYDANTIC_MESSAGES.get(err["type"])
    if message:
        return field, message
    text = str(err["msg"]).removeprefix("Value error, ")
    if text.startswith("@"):  # shared.workflows.model._at: a nested field of this object
        inner, _, text = text[1:].partition("@ ")
        field = f"{field}.{inner}" if field else inner
    return field, text


def load_text(text: str, source: str = "<string>") -> dict[str, Workflow]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise WorkflowFileError(f"{where}not valid YAML: {problem}", file=source) from None
    if not isinstance(document, dict):
        raise WorkflowFileError("expected a mapping with a `workflows:` key", file=source)
    unknown = set(document) - {"workflows"}
    if unknown:
        raise WorkflowFileError(
            f"unknown top-level key(s) {sorted(map(str, unknown))}; only `workflows:` is allowed",
            file=source,
        )
    specs = document.get("workflows")
    if not isinstance(specs, dict) or not specs:
        raise WorkflowFileError("`workflows:` must be a non-empty mapping", file=source)
    result: dict[str, Workflow] = {}
    for name, spec in specs.items():
        if not isinstance(spec, dict):
            raise WorkflowFileError("must be a mapping", file=source, workflow=str(name))
        if "name" in spec:
            raise WorkflowFileError(
                "unknown key (the name is the key under `workflows:`)",
                file=source,
                workflow=str(name),
                field="name",
            )
        try:
            result[str(name)] = Workflow.model_validate({**spec, "name": str(name)})
        except ValidationError as exc:
            errors = exc.errors()
            first = errors[0]
            more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
            field, message = _translate(dict(first))
            raise WorkflowFileError(
                message + more, file=source, workflow=str(name), field=field or None
            ) from None
    return result


def load_files(paths: list[str] | tuple[str, ...]) -> dict[str, Workflow]:
    """Load and merge several files; the same workflow name in two files is an error."""
    merged: dict[str, Workflow] = {}
    origin: dict[str, str] = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise WorkflowFileError(f"cannot read: {exc.strerror}", file=path) from None
        for name, workflow in load_text(text, source=path).items():
            if name in merged:
                raise WorkflowFileError(f"also defined in {origin[name]}", file=path, workflow=name)
            merged[name] = workflow
            origin[name] = path
    return merged


def config_dirs(paths: list[str] | tuple[str, ...]) -> list[str]:
    """Directories of the given files: `call:` modules are imported relative to them."""
    seen: list[str] = []
    for path in paths:
        directory = os.path.dirname(os.path.abspath(path))
        if directory not in seen:
            seen.append(directory)
    return seen

"""Workflow definitions: the model, the YAML loader and input validation (DESIGN §6)."""

from .diff import definition_diff
from .inputs import coerce_cli_value, input_json_schema, validate_inputs
from .loader import load_files, load_text
from .model import Loop, Stage, Workflow, definition_version, workflow_from_definition

__all__ = [
    "Loop",
    "Stage",
    "Workflow",
    "coerce_cli_value",
    "definition_diff",
    "definition_version",
    "input_json_schema",
    "load_files",
    "load_text",
    "validate_inputs",
    "workflow_from_definition",
]

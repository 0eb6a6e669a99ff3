"""Every error Loopdeck raises on purpose derives from `LoopdeckError`.

The API maps them to HTTP statuses, the CLI to one line on stderr and an exit code.
Driver errors are translated at the database boundary (shared.db) into `DatabaseUnavailable`.
"""

from __future__ import annotations

from typing import Any


class LoopdeckError(Exception):
    """Something went wrong in Loopdeck."""

    code = "error"
    http_status = 500

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details
        super().__init__(self.message)


class InvalidInput(LoopdeckError):
    """The request is not valid."""

    code = "invalid_input"
    http_status = 422

    def __init__(self, message: str, field: str | None = None, **details: Any) -> None:
        if field is not None:
            details["field"] = field
        super().__init__(message, **details)
        self.field = field


class NotFound(LoopdeckError):
    """No such object."""

    code = "not_found"
    http_status = 404


class Conflict(LoopdeckError):
    """The object is not in a state that allows this."""

    code = "conflict"
    http_status = 409


class WorkflowFileError(LoopdeckError):
    """A workflow file is invalid."""

    code = "invalid_workflow_file"
    http_status = 422

    def __init__(
        self, message: str, *, file: str, workflow: str | None = None, field: str | None = None
    ) -> None:
        where = file
        if workflow:
            where += f": workflow {workflow!r}"
        if field:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}", file=file, workflow=workflow, field=field)
        self.file, self.workflow, self.field = file, workflow, field


class DatabaseUnavailable(LoopdeckError):
    """The database cannot be reached or is too busy; try again shortly."""

    code = "database_unavailable"
    http_status = 503


class LeaseLost(LoopdeckError):
    """This runner no longer holds the run: it was reaped, reset or taken over."""

    code = "lease_lost"
    http_status = 409


class ArtifactTooLarge(LoopdeckError):
    """An artifact is larger than the configured cap."""

    code = "artifact_too_large"
    http_status = 413


class ConfigError(LoopdeckError):
    """A setting has an invalid value."""

    code = "config_error"
    http_status = 500

"""SQLAlchemy dialects of our own, registered by name when `shared.db` is imported."""

from __future__ import annotations

from sqlalchemy.dialects import registry


def register() -> None:
    registry.register("sqlite.libsql", "shared.dialects.libsql", "LibsqlDialect")

"""Schema migrations (Alembic), run programmatically: `loopdeck db upgrade`, and `loopdeck up`
on start. API processes and runners check the revision and refuse to start on an old schema."""

from __future__ import annotations

import os
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from .errors import ConfigError

_HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


def _config(connection: Any = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", _HERE)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Bring the schema to `revision`; safe when several processes do it at once."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn = conn.execution_options(loopdeck_write=True)
        with conn.begin():
            if engine.dialect.name == "postgresql":
                # Serialise concurrent upgrades (many runners starting at once).
                conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
            command.upgrade(_config(conn), revision)
        if engine.dialect.name == "sqlite":
            # A migration may rewrite table definitions in place (0006): this connection
            # parsed them before, so it is not handed back to the pool.
            conn.invalidate()
    return current_revision(engine) or ""


def check_schema(engine: Engine) -> str:
    """The current revision, or a ConfigError telling the operator to upgrade."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        raise ConfigError(
            f"database schema is at revision {current or 'none (empty database)'}, "
            f"this Loopdeck needs {head}: run `loopdeck db upgrade`"
        )
    return current

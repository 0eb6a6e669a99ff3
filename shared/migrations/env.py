"""Alembic environment. Loopdeck runs migrations programmatically (shared/migrate.py), handing
the connection in through `config.attributes["connection"]`."""

from __future__ import annotations

from alembic import context

from shared.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `loopdeck db upgrade` (shared.migrate.upgrade)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

"""Published workflow definitions: runners publish what they can run; the API reads them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, select, update

from ..clock import db_now_ms, to_iso
from ..errors import NotFound
from ..schema import workflows
from ..workflows import Workflow, definition_version, input_json_schema, workflow_from_definition
from .base import StoreBase


def _public(row: Any) -> dict[str, Any]:
    wf = workflow_from_definition(row.definition)
    return {
        "name": row.name,
        "version": row.version,
        "kind": wf.kind,
        "description": wf.description,
        "queue": wf.queue,
        "definition": row.definition,
        "input_schema": input_json_schema(wf),
        "published_by": row.published_by,
        "updated_at": to_iso(row.updated_at),
    }


class WorkflowVerbs(StoreBase):
    def publish_workflows(
        self, defs: dict[str, Workflow], published_by: str
    ) -> list[dict[str, Any]]:
        """Insert or replace definitions; returns [{name, version, changed}]."""

        def tx(conn: Connection) -> list[dict[str, Any]]:
            result = []
            for name, wf in sorted(defs.items()):
                definition = wf.definition()
                version = definition_version(definition)
                current = conn.execute(
                    select(workflows.c.version).where(workflows.c.name == name)
                ).first()
                if current is None:
                    conn.execute(
                        insert(workflows).values(
                            name=name,
                            definition=definition,
                            version=version,
                            published_by=published_by,
                            updated_at=db_now_ms(),
                        )
                    )
                elif current.version != version:
                    conn.execute(
                        update(workflows)
                        .where(workflows.c.name == name)
                        .values(
                            definition=definition,
                            version=version,
                            published_by=published_by,
                            updated_at=db_now_ms(),
                        )
                    )
                result.append(
                    {
                        "name": name,
                        "version": version,
                        "changed": current is None or current.version != version,
                    }
                )
            return result

        return self.write(tx)

    def list_workflows(self) -> dict[str, Any]:
        def tx(conn: Connection) -> dict[str, Any]:
            rows = conn.execute(select(workflows).order_by(workflows.c.name)).all()
            return {"workflows": [_public(r) for r in rows]}

        return self.read(tx)

    def get_workflow(self, name: str) -> dict[str, Any]:
        def tx(conn: Connection) -> dict[str, Any]:
            row = conn.execute(select(workflows).where(workflows.c.name == name)).first()
            if row is None:
                raise NotFound(f"no published workflow {name!r}")
            return _public(row)

        return self.read(tx)

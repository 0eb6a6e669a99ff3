"""Migrations that change stored definitions in place: the data stays, the rules stay."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from shared.migrate import _config, upgrade
from shared.settings import Settings
from shared.store import Store
from shared.workflows import load_text

pytestmark = pytest.mark.all_backends

WORKFLOW = """
workflows:
  one:
    steps:
      only: {call: "tests.workflows:noop"}
"""
CHECKED = ("runs", "tasks", "artifacts", "runners")


def _definitions(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as con:
        rows = con.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name IN (?, ?, ?, ?)",
            CHECKED,
        ).fetchall()
    return dict(rows)


def _opcodes(path: Path, sql: str) -> list[str]:
    with sqlite3.connect(path) as con:
        return [row[1] for row in con.execute("EXPLAIN " + sql)]


def _set_status(store: Store, table: str, row_id: str, status: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE {table} SET status = :s WHERE id = :id"),
                     {"s": status, "id": row_id})  # fmt: skip


def test_status_checks_refuse_unknown_values_and_accept_every_known_one(store):
    store.publish_workflows(load_text(WORKFLOW, "t.yaml"), "tests")
    run, _ = store.create_run("one", {})
    task_id = store.get_run(run["id"])["tasks"][0]["id"]
    with pytest.raises(IntegrityError, match="(?i)check"):
        _set_status(store, "runs", run["id"], "finished")
    with pytest.raises(IntegrityError, match="(?i)check"):
        _set_status(store, "tasks", task_id, "done")
    for status in ("running", "waiting", "succeeded", "failed", "cancelled", "queued"):
        _set_status(store, "runs", run["id"], status)
    for status in ("running", "waiting", "succeeded", "failed", "cancelled", "skipped"):
        _set_status(store, "tasks", task_id, status)
    assert store.get_run(run["id"])["status"] == "queued"


def test_sqlite_checks_are_rewritten_in_place_keeping_the_rows_and_back_again(tmp_path):
    path = tmp_path / "m.db"
    store = Store.from_settings(Settings(database_url=f"sqlite:///{path}"))
    try:
        upgrade(store.engine, "0005_runs_fillfactor")
        before = _definitions(path)
        assert all(" IN ('" in sql for sql in before.values())
        update = "UPDATE tasks SET status = 'running' WHERE id = 'x'"
        # The cost this migration removes: a temporary b-tree for the IN list, per row.
        assert "OpenEphemeral" in _opcodes(path, update)
        store.publish_workflows(load_text(WORKFLOW, "t.yaml"), "tests")
        runs = [store.create_run("one", {})[0]["id"] for _ in range(3)]

        upgrade(store.engine)
        after = _definitions(path)
        assert all(" IN ('" not in sql for sql in after.values())
        assert (
            "CHECK (status = 'queued' OR status = 'running' OR status = 'waiting'" in after["runs"]
        )
        assert "OpenEphemeral" not in _opcodes(path, update)
        assert [store.get_run(r)["status"] for r in runs] == ["queued"] * 3
        with sqlite3.connect(path) as con:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        with pytest.raises(IntegrityError, match="CHECK constraint failed: ck_runs_status"):
            _set_status(store, "runs", runs[0], "finished")

        with store.engine.connect() as conn:
            conn = conn.execution_options(loopdeck_write=True)
            with conn.begin():
                command.downgrade(_config(conn), "0005_runs_fillfactor")
            conn.invalidate()
        assert _definitions(path) == before
        with pytest.raises(IntegrityError, match="CHECK constraint failed: ck_runs_status"):
            _set_status(store, "runs", runs[0], "finished")
        assert len(store.list_runs()["runs"]) == 3
    finally:
        store.dispose()


def _migrate(store: Store, revision: str, *, down: bool = False) -> None:
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            conn = conn.execution_options(loopdeck_write=True)
        with conn.begin():
            (command.downgrade if down else command.upgrade)(_config(conn), revision)
        conn.invalidate()


def _give_key(store: Store, run_id: str, key: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE runs SET idempotency_key = :k WHERE id = :id"),
                     {"k": key, "id": run_id})  # fmt: skip


def test_the_sparse_run_indexes_keep_keys_unique_and_children_found_across_the_upgrade(store):
    store.publish_workflows(load_text(WORKFLOW, "t.yaml"), "tests")
    _migrate(store, "0006_sqlite_check_or_chains", down=True)
    keyed, _ = store.create_run("one", {}, idempotency_key="k1")
    plain = [store.create_run("one", {})[0]["id"] for _ in range(3)]
    store.request_cancel(plain[0])
    child = store.retry_run(plain[0])

    _migrate(store, "head")
    again, created = store.create_run("one", {}, idempotency_key="k1")
    assert again["id"] == keyed["id"] and not created
    with pytest.raises(IntegrityError):
        _give_key(store, plain[1], "k1")
    assert [c["id"] for c in store.get_run(plain[0])["lineage"]["children"]] == [child["id"]]
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as conn:
            defs = dict(conn.execute(text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'runs'"
                " AND indexname IN ('ix_runs_idempotency_key', 'ix_runs_parent_run_id_id',"
                " 'ix_runs_claim_token')"
            )).all())  # fmt: skip
        assert defs["ix_runs_idempotency_key"].endswith("WHERE (idempotency_key IS NOT NULL)")
        assert defs["ix_runs_parent_run_id_id"].endswith("WHERE (parent_run_id IS NOT NULL)")
        assert defs["ix_runs_claim_token"].endswith("WHERE ((status)::text = 'running'::text)")
        with store.engine.connect() as conn:
            options = conn.execute(text("SELECT reloptions FROM pg_class WHERE relname = 'tasks'"))
            assert options.scalar() == ["fillfactor=80"]

    _migrate(store, "0006_sqlite_check_or_chains", down=True)
    with pytest.raises(IntegrityError):
        _give_key(store, plain[1], "k1")
    assert [c["id"] for c in store.get_run(plain[0])["lineage"]["children"]] == [child["id"]]
    _migrate(store, "head")

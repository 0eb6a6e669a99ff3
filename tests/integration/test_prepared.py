"""Prepared statements (shared/store/fast.py) against SQLAlchemy's own execution: the same rows,
the same JSON in and out, the same wrapped errors — on every backend (libSQL takes the
fallback through Connection.execute)."""

import pytest
from sqlalchemy import bindparam, exc, insert, select

from shared.clock import db_now_ms
from shared.schema import events, runs
from shared.store.fast import Prepared, commit_in_pipeline, pipeline

pytestmark = pytest.mark.all_backends

_EVENT = insert(events).values(created_at=db_now_ms())
_COLUMNS = ("run_id", "task_id", "type", "stage", "attempt", "message", "data")
_BY_RUN = (
    select(events.c.type, events.c.data, events.c.attempt)
    .where(events.c.run_id == bindparam("run_id"), events.c.type.like("x.%"))
    .order_by(events.c.id)
)


def test_prepared_rows_and_json_match_sqlalchemy(store):
    run, _ = store.create_run("essay", {"topic": "p"})
    write = Prepared(_EVENT, store.engine.dialect, _COLUMNS)
    read = Prepared(_BY_RUN, store.engine.dialect)
    rows = [
        {"run_id": run["id"], "task_id": None, "type": "x.one", "stage": None, "attempt": 2,
         "message": "m", "data": {"b": [1, 2], "a": "é"}},
        {"run_id": run["id"], "task_id": None, "type": "x.two", "stage": "s", "attempt": None,
         "message": None, "data": None},
    ]  # fmt: skip
    store.write(lambda conn: write.executemany(conn, rows))
    ours = store.read(lambda conn: [tuple(r) for r in read.rows(conn, {"run_id": run["id"]})])
    theirs = store.read(
        lambda conn: [tuple(r) for r in conn.execute(_BY_RUN, {"run_id": run["id"]})]
    )
    assert ours == theirs
    assert ours[0] == ("x.one", {"b": [1, 2], "a": "é"}, 2)
    assert [r.type for r in store.read(lambda c: read.rows(c, {"run_id": run["id"]}))] == [
        "x.one", "x.two"
    ]  # fmt: skip


def test_prepared_errors_are_sqlalchemys_and_roll_back(store):
    run, _ = store.create_run("essay", {"topic": "q"})
    write = Prepared(_EVENT, store.engine.dialect, _COLUMNS)
    good = {"run_id": run["id"], "task_id": None, "type": "x.one", "stage": None,
            "attempt": None, "message": None, "data": None}  # fmt: skip

    def tx(conn):
        with pipeline(conn):
            write.execute(conn, good)
            write.execute(conn, {**good, "run_id": None})  # NOT NULL
            commit_in_pipeline(conn)

    with pytest.raises(exc.IntegrityError):
        store.write(tx)
    # Nothing of the failed transaction landed, and the connection still works.
    read = Prepared(_BY_RUN, store.engine.dialect)
    assert store.read(lambda conn: read.rows(conn, {"run_id": run["id"]})) == []
    store.write(lambda conn: write.execute(conn, good))
    assert len(store.read(lambda conn: read.rows(conn, {"run_id": run["id"]}))) == 1


def test_a_missing_parameter_is_named(store):
    read = Prepared(_BY_RUN, store.engine.dialect)
    if not read.fast:  # libSQL: through SQLAlchemy, which names it itself
        assert store.is_libsql
        with pytest.raises(exc.StatementError, match="run_id"):
            store.read(lambda conn: read.rows(conn, {}))
        return
    with pytest.raises(KeyError, match="run_id"):
        store.read(lambda conn: read.rows(conn, {}))


def test_expanding_parameters_are_refused(store):
    stmt = select(runs.c.id).where(runs.c.id.in_(bindparam("ids", expanding=True)))
    if not Prepared(select(runs.c.id), store.engine.dialect).fast:
        assert store.is_libsql  # through SQLAlchemy, which expands the list itself
        return
    with pytest.raises(ValueError, match="expanding"):
        Prepared(stmt, store.engine.dialect)

"""The dispatcher's hot statements, executed at the driver level.

A runner's dispatcher writes every run several times (claim, completion, events) through a
handful of statements whose shape never changes. Going through `Connection.execute` costs each
of them SQLAlchemy's per-call machinery — cache-key lookup, execution context, parameter
construction, result wrapping — which profiled at about half of the dispatcher's Python time
(bench/RESULTS.md). A `Prepared` statement is still written in SQLAlchemy Core and compiled by
the engine's own dialect, once: its SQL text, parameter order and the types' bind and result
processors (JSON in and out) are kept, and each call runs it on the connection's DBAPI cursor,
inside the same transaction. Errors go through SQLAlchemy's own handling, so callers see the
same wrapped exceptions (and a dropped connection is invalidated) as with `Connection.execute`.

Only the drivers it was checked against take this path (sqlite3, psycopg); any other driver
(libSQL's) runs the same statement through `Connection.execute`. Statements with expanding
parameters (`IN :list`) cannot be prepared: their SQL changes with the list's length.
"""

from __future__ import annotations

import collections
import functools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from sqlalchemy import ARRAY, JSON, Connection
from sqlalchemy.engine import Dialect

_MISSING = object()
_FAST_DRIVERS = {("sqlite", "pysqlite"), ("postgresql", "psycopg")}


class Prepared:
    """One Core statement compiled for one dialect (see the module docstring)."""

    def __init__(self, stmt: Any, dialect: Dialect, columns: Sequence[str] | None = None) -> None:
        """`columns`: for an INSERT, the columns its parameter sets give (all of them, always)."""
        self.stmt = stmt
        self.fast = (dialect.name, dialect.driver) in _FAST_DRIVERS
        if not self.fast:
            return
        compiled = stmt.compile(dialect=dialect, column_keys=list(columns) if columns else None)
        if compiled.escaped_bind_names:
            raise ValueError(f"parameter names that need escaping: {compiled.escaped_bind_names}")
        if any(bp.expanding for bp in compiled.binds.values()):
            raise ValueError("a statement with expanding parameters cannot be prepared")
        self.sql: str = compiled.string
        self._positional: tuple[str, ...] | None = (
            tuple(compiled.positiontup) if compiled.positional else None
        )
        # The values written into the statement itself (`status == "running"` binds 'running'),
        # run through their bind processors once; the caller's are processed per call.
        self._defaults: dict[str, Any] = {}
        self._bind: dict[str, Callable[[Any], Any]] = {}
        postgres = dialect.name == "postgresql"
        for bp, name in compiled.bind_names.items():
            proc = bp.type.dialect_impl(dialect).bind_processor(dialect)
            if postgres and _plain_array(bp.type, dialect):
                proc = _array_literal
            if bp.required:
                if proc is not None:
                    self._bind[name] = proc
                continue
            value = bp.effective_value
            self._defaults[name] = value if proc is None else proc(value)
        self._required = frozenset(set(compiled.bind_names.values()) - self._defaults.keys())
        # Positional drivers (sqlite3): per placeholder, its name, the bind processor of a
        # caller's value, and the statement's own value (or _MISSING: the caller must give it).
        # None is the commonest value written (an output not there yet, a stage's null
        # output) and its processed form is the same every time ('null' for a JSON column):
        # made once here, not per row.
        self._none: dict[str, Any] = {name: _none_of(proc) for name, proc in self._bind.items()}
        self._plan: tuple[tuple[str, Callable[[Any], Any] | None, Any, Any], ...] = tuple(
            (name, self._bind.get(name), self._defaults.get(name, _MISSING), self._none.get(name))
            for name in self._positional or ()
        )
        returned = _result_columns(stmt)
        self._returned = returned
        self._dialect = dialect
        # psycopg decodes a `json` column itself, every value, every time; this statement's
        # cursors hand the text over instead and `decode` parses it — once per distinct text
        # for a decode_once column (a claimed run's definition snapshot).
        self._json_text = postgres and any(isinstance(c.type, JSON) for c in returned)
        self._fields: tuple[str, ...] = tuple(c.key for c in returned)
        # The result processors, made at the first fetch: some dialects pick one by the
        # column's type code in the cursor's description (PostgreSQL's numerics).
        self._result: list[tuple[int, Callable[[Any], Any], Any]] | None = None
        self._row: Any = _row_class(self._fields) if returned else None

    # -- parameters ------------------------------------------------------------------------

    def _params(self, given: Mapping[str, Any]) -> Any:
        if self._positional is not None:
            # Straight into the placeholders' order (this runs once per row written).
            out = []
            for name, proc, default, none in self._plan:
                if name in given:
                    value = given[name]
                    if value is None and none is not _MISSING:
                        out.append(none)
                    else:
                        out.append(value if proc is None else proc(value))
                elif default is not _MISSING:
                    out.append(default)
                else:
                    self._missing(given.keys())
            return tuple(out)
        values = dict(self._defaults)
        bind = self._bind
        none = self._none
        for name, value in given.items():
            proc = bind.get(name)
            if proc is None:
                values[name] = value
            elif value is None and none[name] is not _MISSING:
                values[name] = none[name]
            else:
                values[name] = proc(value)
        if not self._required <= values.keys():
            self._missing(values.keys())
        return values

    def _missing(self, given: Iterable[str]) -> NoReturn:
        missing = sorted(self._required - set(given))
        raise KeyError(f"missing parameters {missing} for {self.sql[:60]!r}…")

    # -- execution -------------------------------------------------------------------------

    def rows(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Execute and return every result row (attribute access by column key)."""
        return self.start(conn, params)()

    def start(
        self, conn: Connection, params: Mapping[str, Any] | None = None, *, decode: bool = True
    ) -> Callable[[], list[Any]]:
        """Execute; returns the function that fetches the rows. Inside `pipeline()` on
        psycopg the statement is only queued: fetching waits for its result (a sync).
        With `decode=False` the rows come as the driver returns them, for `decode` later
        (after the commit, say: outside a writer's lock)."""
        if not self.fast:
            rows = list(conn.execute(self.stmt, dict(params or {})).all())
            return lambda: rows
        args = self._params(params or {})
        cursor = self._run(conn, lambda c, p: c.execute(self.sql, p), args)
        if conn.dialect.driver != "psycopg":
            rows = self._fetch(conn, cursor, args, decode)
            return lambda: rows
        return lambda: self._fetch(conn, cursor, args, decode)

    def _fetch(self, conn: Connection, cursor: Any, args: Any, decode: bool = True) -> list[Any]:
        try:
            raw = cursor.fetchall() if self._row is not None else []
            if self._result is None and self._row is not None:
                self._result = self._processors(cursor.description)
        except conn.dialect.loaded_dbapi.Error as exc:
            _reraise(conn, exc, self.sql, args, cursor)
        finally:
            cursor.close()
        return self.decode(raw) if decode else raw

    def decode(self, raw: list[Any]) -> list[Any]:
        """Rows fetched with `decode=False` as `rows` returns them (result processors run,
        attribute access by column key)."""
        if not self.fast or self._row is None:
            return raw
        make = self._row._make
        if not self._result:
            return [make(r) for r in raw]
        out = []
        for r in raw:
            values = list(r)
            for i, proc, none in self._result:
                value = values[i]
                if value is None and none is not _MISSING:
                    values[i] = none
                else:
                    values[i] = proc(value)
            out.append(make(values))
        return out

    def _processors(self, description: Any) -> list[tuple[int, Callable[[Any], Any], Any]]:
        """Per column with a result processor: its index, the processor, and what it makes of
        NULL (the commonest value of an optional column, the same every time)."""
        dialect = self._dialect
        out = []
        for i, column in enumerate(self._returned):
            type_code = description[i][1] if description else None
            proc = column.type.dialect_impl(dialect).result_processor(dialect, type_code)
            if self._json_text and isinstance(column.type, JSON):
                proc = _json_loads(dialect)
            if proc is None:
                continue
            if _info(column).get("decode_once"):
                proc = functools.lru_cache(maxsize=64)(proc)
            out.append((i, proc, _none_of(proc)))
        return out

    def execute(self, conn: Connection, params: Mapping[str, Any] | None = None) -> None:
        """Execute once, discarding any result."""
        if not self.fast:
            conn.execute(self.stmt, dict(params or {}))
            return
        self._done(
            conn, self._run(conn, lambda c, p: c.execute(self.sql, p), self._params(params or {}))
        )

    def executemany(self, conn: Connection, many: Iterable[Mapping[str, Any]]) -> None:
        """Execute once per parameter set (the driver's executemany)."""
        self.execute_bound(conn, self.bind_many(many))

    def bind_many(self, many: Iterable[Mapping[str, Any]]) -> list[Any]:
        """Parameter sets as the driver takes them — work that needs no connection, so a
        writer can do it before it takes the database's write lock (`execute_bound`)."""
        if not self.fast:
            return [dict(p) for p in many]
        return [self._params(p) for p in many]

    def bind(self, params: Mapping[str, Any]) -> list[Any]:
        """One parameter set, for `execute_bound` (a single execution)."""
        return [dict(params) if not self.fast else self._params(params)]

    def execute_bound(self, conn: Connection, bound: list[Any]) -> None:
        """Execute once per parameter set made by `bind_many` or `bind` (none: nothing)."""
        if not bound:
            return
        if not self.fast:
            conn.execute(self.stmt, bound if len(bound) > 1 else bound[0])
        elif len(bound) == 1:
            self._done(conn, self._run(conn, lambda c, p: c.execute(self.sql, p), bound[0]))
        else:
            self._done(conn, self._run(conn, lambda c, p: c.executemany(self.sql, p), bound))

    @staticmethod
    def _done(conn: Connection, cursor: Any) -> None:
        # In psycopg's pipeline mode the result is still to come: closing the cursor now
        # would discard it unseen (an error in it is raised at the sync either way).
        if conn.dialect.driver != "psycopg":
            cursor.close()

    def _run(self, conn: Connection, call: Callable[[Any, Any], Any], params: Any) -> Any:
        dbapi_conn = conn.connection.driver_connection
        cursor = dbapi_conn.cursor()  # type: ignore[union-attr]
        if self._json_text:
            cursor.adapters.register_loader("json", _text_loader())
        try:
            call(cursor, params)
        except Exception as exc:
            cursor.close()
            if isinstance(exc, conn.dialect.loaded_dbapi.Error):
                _reraise(conn, exc, self.sql, params, cursor)
            raise
        return cursor


def _plain_array(type_: Any, dialect: Dialect) -> bool:
    """An ARRAY whose items go to the driver as they are (strings, integers)."""
    return isinstance(type_, ARRAY) and (
        type_.item_type.dialect_impl(dialect).bind_processor(dialect) is None
    )


def _array_literal(values: Any) -> Any:
    """A list of strings, integers, finite floats and NULLs as PostgreSQL's array literal
    (`{"a","b",NULL}`), which the statement's cast (`::VARCHAR[]`) parses on the server. psycopg dumps a list
    item by item in Python, escaping each with a regular expression: for the arrays of a
    cycle's events (seven, one item per event) that was a tenth of the dispatcher's time.
    Anything else (infinities, booleans, nested lists) is left to psycopg."""
    if values is None:
        return None
    if values and all(type(v) is str for v in values):
        # The common array (run ids, tokens, statuses): strings with nothing to escape.
        blob = "".join(values)
        if '"' not in blob and "\\" not in blob:
            return '{"' + '","'.join(values) + '"}'
    items = []
    for v in values:
        if v is None:
            items.append("NULL")
        elif isinstance(v, str):
            if '"' in v or "\\" in v:
                v = v.replace("\\", "\\\\").replace('"', '\\"')
            items.append('"' + v + '"')
        elif type(v) is int:  # not bool
            items.append(str(v))
        elif type(v) is float and math.isfinite(v):
            items.append(repr(v))  # the shortest text that reads back as the same double
        else:
            return list(values)
    return "{" + ",".join(items) + "}"


@functools.cache
def _text_loader() -> Any:
    from psycopg.types.string import TextLoader

    return TextLoader


def _json_loads(dialect: Dialect) -> Callable[[Any], Any]:
    loads = getattr(dialect, "_json_deserializer", None) or json.loads
    return lambda text: None if text is None else loads(text)


def _none_of(proc: Callable[[Any], Any]) -> Any:
    """What a bind processor makes of None, or _MISSING when it will not say (then it is
    called per value, as usual)."""
    try:
        return proc(None)
    except Exception:  # noqa: BLE001 - a processor that rejects None keeps doing so per call
        return _MISSING


@contextmanager
def pipeline(conn: Connection) -> Iterator[None]:
    """On psycopg, the statements run inside are sent without waiting for each one's result:
    one round trip for all of them (fetching a result forces the wait). Elsewhere a no-op.
    Only prepared statements may run inside (SQLAlchemy's execution reads each result)."""
    if conn.dialect.driver != "psycopg":
        yield
        return
    dbapi_conn: Any = conn.connection.driver_connection
    try:
        with dbapi_conn.pipeline():
            yield
    except conn.dialect.loaded_dbapi.Error as exc:
        _reraise(conn, exc, "(pipeline)")


def commit_in_pipeline(conn: Connection) -> None:
    """Inside `pipeline()` on psycopg: queue COMMIT behind the statements already sent, so
    they and the commit take one round trip; SQLAlchemy's own commit at the end of the
    transaction then finds nothing to do. Elsewhere a no-op (the transaction commits as
    usual). An error is SQLAlchemy's, as from a commit: the caller's retry sees it the same."""
    if conn.dialect.driver != "psycopg":
        return
    dbapi_conn: Any = conn.connection.driver_connection
    try:
        dbapi_conn.commit()
    except conn.dialect.loaded_dbapi.Error as exc:
        _reraise(conn, exc, "COMMIT")


def _reraise(
    conn: Connection, exc: Exception, sql: str, params: Any = None, cursor: Any = None
) -> NoReturn:
    """SQLAlchemy's own error path for a driver error: it raises the wrapped DBAPIError
    subclass (which the retry policy classifies) and invalidates the connection when the
    error means it was lost."""
    conn._handle_dbapi_exception(exc, sql, params, cursor, None)  # noqa: SLF001
    raise exc  # not reached: the call above always raises


def _row_class(fields: Sequence[str]) -> Any:
    """A named tuple that, like SQLAlchemy's Row, also offers `_mapping`."""
    base: Any = collections.namedtuple("Row", list(fields), rename=True)  # type: ignore[misc]
    return type("Row", (base,), {"__slots__": (), "_mapping": property(base._asdict)})


def _info(column: Any) -> dict[str, Any]:
    """A result column's `info`, or its table column's when it comes through a CTE."""
    info = getattr(column, "info", None)
    if info:
        return dict(info)
    for base in getattr(column, "base_columns", ()):
        if getattr(base, "info", None):
            return dict(base.info)
    return {}


def _result_columns(stmt: Any) -> Sequence[Any]:
    if getattr(stmt, "is_select", False):
        return list(stmt.selected_columns)
    if getattr(stmt, "_returning", None):
        return list(stmt.exported_columns)
    return []


class PreparedCache:
    """Prepared statements by key, for one engine's dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._items: dict[Any, Prepared] = {}

    def get(
        self, key: Any, build: Callable[[], Any], columns: Sequence[str] | None = None
    ) -> Prepared:
        prepared = self._items.get(key)
        if prepared is None:
            if len(self._items) >= 512:
                self._items.clear()
            prepared = self._items[key] = Prepared(build(), self._dialect, columns)
        return prepared

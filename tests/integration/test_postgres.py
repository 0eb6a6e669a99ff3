"""What only PostgreSQL has: LISTEN/NOTIFY wake-up, SKIP LOCKED claims under concurrency, and
the no-pool mode for serverless API processes. On the real server, a fresh database per test."""

import contextlib
import threading
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.pool import NullPool

from shared.settings import Settings
from shared.store import Store
from shared.store.base import db_now_ms
from shared.store.claims import claim_statement
from shared.store.feed import PostgresListenFeed, open_change_feed

from ..helpers import wait_for


@pytest.fixture
def backend() -> str:
    return "postgres"


def _dsn(store: Store) -> str:
    return store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def test_a_created_run_wakes_a_listening_feed_at_once(store):
    feed = open_change_feed(store.engine, queues=["default"])
    creator = threading.Timer(0.2, lambda: store.create_run("essay", {"topic": "b"}))
    try:
        assert isinstance(feed, PostgresListenFeed)
        feed.wait(0.5)  # connects (and reports a possible miss)
        assert feed.wait(0.05) is False
        store.create_run("essay", {"topic": "a"}, queue="other")
        assert feed.wait(0.3) is False, "a run on a queue we do not serve must not wake us"
        started = time.monotonic()
        creator.start()
        assert feed.wait(10) is True
        assert time.monotonic() - started < 2
    finally:
        if creator.is_alive():  # its connection must be back in the pool before the engine goes
            creator.join(10)
        feed.close()


def test_the_feed_reconnects_after_its_connection_is_killed(store):
    feed = PostgresListenFeed(_dsn(store), reconnect_delay=0.05)
    try:
        feed.wait(0.5)
        with psycopg.connect(_dsn(store), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'loopdeck-listen' AND datname = current_database()"
            ).fetchall()
        assert killed == [(True,)]
        # The loss is reported as a possible change, then the feed listens again.
        wait_for(lambda: feed.wait(0.2), 10, what="the feed to notice the lost connection")

        def woken() -> bool:
            store.create_run("essay", {"topic": "again"})
            return feed.wait(1.0)

        wait_for(woken, 15, what="a notification after reconnecting")
    finally:
        feed.close()


def test_poll_mode_turns_the_listener_off(store):
    feed = open_change_feed(store.engine, mode="poll")
    assert not isinstance(feed, PostgresListenFeed)
    feed.close()


def test_null_pool_leaves_no_connection_open(db_url):
    store = Store.from_settings(Settings(database_url=db_url, db_pool="null"))
    try:
        assert isinstance(store.engine.pool, NullPool)
        store.list_runs()
        store.stats()
        with psycopg.connect(_dsn(store), autocommit=True) as admin:
            open_conns = admin.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'loopdeck'"
            ).fetchone()
        assert open_conns == (0,)
    finally:
        store.dispose()


def test_concurrent_claimers_skip_locked_rows_and_never_share_one(store):
    for i in range(60):
        store.create_run("essay", {"topic": f"x{i}"})
    got: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            while True:
                claimed = store.claim_runs(name, queues=["default"], workflows=["essay"], limit=3)
                if not claimed:
                    return
                got.setdefault(name, []).extend(c.id for c in claimed)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"rnr_{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    ids = [i for v in got.values() for i in v]
    assert len(ids) == 60 and len(set(ids)) == 60


def test_a_runner_frozen_in_a_transaction_does_not_hold_up_the_reaper(store, db_url):
    # The frozen runner: a Loopdeck connection that locked the run's row and went silent.
    from sqlalchemy import text

    from shared.db import make_engine

    run, _ = store.create_run("essay", {"topic": "frozen"})
    store.claim_runs("rnr_frozen", queues=["default"], workflows=["essay"], limit=1)
    frozen = make_engine(db_url, Settings(database_url=db_url, stall_after=2))
    conn = frozen.connect()
    conn.begin()
    conn.execute(
        text("UPDATE runs SET heartbeat_at = heartbeat_at WHERE id = :id"), {"id": run["id"]}
    )
    result: dict = {}
    reaper = threading.Thread(target=lambda: result.update(r=store.reap_stalled(now_ms=10**13)))
    started = time.monotonic()
    try:
        reaper.start()
        reaper.join(15)
        assert not reaper.is_alive(), "the reaper hung behind the frozen transaction"
        assert [r["run_id"] for r in result["r"]] == [run["id"]]
        assert time.monotonic() - started < 10
    finally:
        with psycopg.connect(_dsn(store), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                "current_database() AND state LIKE 'idle in transaction%'"
            )
        reaper.join(15)
        with contextlib.suppress(Exception):
            conn.invalidate()  # its session was ended by the server: drop, do not reuse
        with contextlib.suppress(Exception):
            conn.close()
        frozen.dispose()


def _frozen_mid_pipeline(store: Store, runner_id: str, run_id: str) -> psycopg.Connection:
    """A runner's session frozen halfway through a pipeline: BEGIN and an UPDATE of the run's
    row sent and executed, the Sync never sent. The server shows it active, reading from the
    client, with the row locked, and no timeout of its own ends it."""
    from shared.db import runner_session_name

    conn = psycopg.connect(_dsn(store), application_name=runner_session_name(runner_id))
    pg = conn.pgconn
    pg.enter_pipeline_mode()
    pg.send_query_params(b"BEGIN", None)
    pg.send_query_params(
        b"UPDATE runs SET heartbeat_at = heartbeat_at WHERE id = $1", [run_id.encode()]
    )
    while pg.flush():
        pass
    return conn


def _session(store: Store, runner_id: str) -> tuple | None:
    from shared.db import runner_session_name

    with psycopg.connect(_dsn(store), autocommit=True) as admin:
        return admin.execute(
            "SELECT state, wait_event, xact_start IS NOT NULL FROM pg_stat_activity"
            " WHERE application_name = %s",
            (runner_session_name(runner_id),),
        ).fetchone()


def test_the_reaper_ends_a_stalled_runner_session_stuck_mid_pipeline(store):
    stalled, _ = store.create_run("essay", {"topic": "stalled"})
    live, _ = store.create_run("essay", {"topic": "live"})
    store.claim_runs("rnr_stalled", queues=["default"], workflows=["essay"], limit=1)
    store.claim_runs("rnr_live", queues=["default"], workflows=["essay"], limit=1)
    # Only rnr_stalled's heartbeat is stale at `far`: rnr_live's is later still. Its session is
    # stuck just as long; it is not ended (its runner is not stalled).
    far = 10**13
    with psycopg.connect(_dsn(store), autocommit=True) as admin:
        admin.execute("UPDATE runs SET heartbeat_at = %s WHERE id = %s", (far, live["id"]))
    frozen = _frozen_mid_pipeline(store, "rnr_stalled", stalled["id"])
    busy = _frozen_mid_pipeline(store, "rnr_live", live["id"])
    try:
        wait_for(
            lambda: _session(store, "rnr_stalled") == ("active", "ClientRead", True),
            10, 0.02, what="the frozen session to wait for the rest of its pipeline",
        )  # fmt: skip
        ended = wait_for(lambda: store.end_stuck_sessions(now_ms=far), 10, 0.1,
                         what="the stuck session of the stalled runner to be ended")  # fmt: skip
        assert [(e["runner_id"], e["ended"]) for e in ended] == [("rnr_stalled", True)]
        assert ended[0]["stuck_s"] >= 1.0 and "UPDATE runs" in ended[0]["query"]
        wait_for(lambda: _session(store, "rnr_stalled") is None, 10, 0.02,
                 what="the ended session to be gone")  # fmt: skip
        # Its lock is gone with it: the rescue goes through at once.
        rescued = store.reap_stalled(now_ms=far)
        assert [r["run_id"] for r in rescued] == [stalled["id"]]
        assert store.get_run(stalled["id"])["status"] == "queued"
        assert _session(store, "rnr_live") == ("active", "ClientRead", True)
        assert store.end_stuck_sessions(now_ms=far) == []
    finally:
        for c in (frozen, busy):
            with contextlib.suppress(Exception):
                c.close()


def _deadlocks(store: Store) -> int:
    with psycopg.connect(_dsn(store)) as conn:
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_heartbeats_and_flushes_of_the_same_runs_take_their_row_locks_in_one_order(store):
    """The heartbeat thread and the dispatcher write the same runs rows from two connections;
    taking the locks in different orders deadlocked them (PostgreSQL breaks a deadlock only
    after deadlock_timeout, and the retry hid it but for that second)."""
    from shared.store import RunWrites

    for _ in range(24):
        store.create_run("essay", {"topic": "t"})
    claimed = store.claim_runs("r1", queues=["default"], workflows=["essay"], limit=24)
    assert len(claimed) == 24
    leases = {c.id: c.token for c in claimed}
    fences = {c.id: 0 for c in claimed}
    before = _deadlocks(store)
    errors: list[BaseException] = []

    def beat() -> None:
        try:
            for _ in range(150):
                assert not store.heartbeat("r1", leases).lost
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def flush(seed: int) -> None:
        import random

        order = list(leases)
        rng = random.Random(seed)
        try:
            for _ in range(150):
                rng.shuffle(order)  # the outbox's order is the order the runs wrote in
                batches = [
                    RunWrites(i, leases[i], fences[i], events=[{"run_id": i, "type": "log"}])
                    for i in order
                ]
                outcomes, _ = store.apply_run_writes(batches)
                assert all(o.applied for o in outcomes)
                for o in outcomes:
                    fences[o.run_id] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=beat), threading.Thread(target=flush, args=(7,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert _deadlocks(store) == before


def _wal_syncs_of(store: Store, work) -> int:
    """WAL flushes (fdatasync) the cluster made while `work` ran on its own sessions of
    `store`'s database: their stats reach pg_stat_wal for sure once the sessions have ended."""
    dsn = _dsn(store)
    with psycopg.connect(dsn, autocommit=True) as admin:
        before = admin.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()[0]
        own = Store.from_settings(Settings(database_url=dsn, db_pool="null"), session_name="wal")
        try:
            work(own)
        finally:
            own.dispose()
        wait_for(
            lambda: not admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'wal'"
            ).fetchone(),
            10, 0.02, what="the sessions to end",
        )  # fmt: skip
        return int(admin.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()[0]) - before


def test_a_claim_alone_commits_without_waiting_for_its_wal_flush_and_a_completion_waits(store):
    from shared.store import ClaimRequest, RunWrites

    n = 40
    store.create_runs("essay", [{"topic": str(i)} for i in range(n)])

    held = []

    def claims(s: Store) -> None:
        for _ in range(n):
            _, got = s.apply_run_writes([], ClaimRequest("rnr_a", ("default",), ("essay",), 1))
            held.extend(got)

    lazy = _wal_syncs_of(store, claims)
    assert len(held) == n

    def completions(s: Store) -> None:
        for c in held:
            batch = RunWrites(c.id, c.token, 0, run={"status": "succeeded"})
            outcomes, _ = s.apply_run_writes([batch])
            assert outcomes[0].applied

    durable = _wal_syncs_of(store, completions)
    # Each completion waits for its own flush; the claims leave theirs to the WAL writer
    # (a few flushes a second, whatever else runs on the server).
    assert durable >= n, durable
    assert lazy < n / 2, lazy
    assert {r["status"] for r in store.list_runs(limit=n)["runs"]} == {"succeeded"}


def test_array_parameters_go_as_one_literal_and_read_back_unchanged(store):
    from sqlalchemy import ARRAY, Float, Integer, String, bindparam, func, select

    from shared.store.fast import Prepared

    texts = ["plain", 'a "quoted", {braced}', "back\\slash\\", "", "NULL", "é ü ☃", None, " s "]
    cases = [
        (String, texts),
        # Strings only, nothing to escape: one join (fast.py); and the same with one to escape.
        (String, ["run_01", "b c", "NULL", "", "{x}", "a,b", "é"]),
        (String, [""]),
        (String, []),
        (String, ["run_01", 'y"z']),
        (String, ["run_01", "back\\"]),
        (Integer, [0, -7, 2**31 - 1, None]),
        (Float, [0.1, 1e300, -2.5, 5e-324, None]),
        (Float, [float("inf"), 1.0]),  # left to psycopg's own dumper
    ]
    for item_type, values in cases:
        statement = Prepared(
            select(func.unnest(bindparam("xs", type_=ARRAY(item_type)))), store.engine.dialect
        )
        bound = statement.bind({"xs": values})[0]["xs"]
        finite = all(v is None or not isinstance(v, float) or v < float("inf") for v in values)
        assert isinstance(bound, str if finite else list), (item_type, bound)
        got = store.read(lambda c, s=statement, xs=values: [r[0] for r in s.rows(c, {"xs": xs})])
        assert got == values, (item_type, got)


def test_a_claim_goes_by_primary_key_even_when_statistics_say_the_queue_is_empty(store):
    # Statistics taken on an empty table, then a burst of runs: the planner believes almost
    # nothing is queued. The claim's UPDATE must still find its picked runs by primary key,
    # never by reading every queued run through a status index (a claim that grows with the
    # queue; seen with a status re-check in the UPDATE, removed since).
    with store.engine.begin() as conn:
        conn.execute(text("ANALYZE runs"))
    store.create_runs("essay", [{"topic": f"t{i}"} for i in range(2000)])
    statement = claim_statement(("default",), ("essay",), db_now_ms(), True, suspect=False)
    with store.engine.begin() as conn:
        compiled = statement.compile(dialect=conn.dialect)
        params = {**compiled.params, "token": "clm_x", "runner_id": "rnr_x", "lim": 16}
        (plan,) = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + str(compiled), params).one()
    update = plan[0]["Plan"]
    assert update["Node Type"] == "ModifyTable"

    def scans(node):  # the scans that find the rows to update (not the pick's, in its CTE)
        if "Scan" in node["Node Type"]:
            yield node
        for child in node.get("Plans", []):
            if not str(child.get("Subplan Name", "")).startswith("CTE"):
                yield from scans(child)

    target = [n for n in scans(update) if n.get("Relation Name") == "runs"]
    assert [(n["Node Type"], n.get("Index Name")) for n in target] == [("Index Scan", "pk_runs")]


def _db_now(store: Store) -> int:
    return int(store.read(lambda conn: conn.execute(select(db_now_ms())).scalar_one()))


def _finished_long_ago(store: Store) -> tuple[str, int]:
    """A run finished an hour before `later` (the prune's clock), and `later`."""
    run, _ = store.create_run("essay", {"topic": "t"})
    later = _db_now(store) + 86_400_000
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE runs SET status = 'succeeded', completed_at = :t WHERE id = :id"),
            {"t": later - 3_600_000, "id": run["id"]},
        )
    return run["id"], later


def _prune_behind(store: Store, holder: psycopg.Connection, later: int) -> Any:
    """Start a prune while `holder` holds a run's row lock; once the prune waits for it (seen
    in pg_stat_activity, no sleep), commit `holder`. The prune's report."""
    reports = []
    prune = threading.Thread(
        target=lambda: reports.append(store.prune_runs(older_than_ms=60_000, now_ms=later))
    )
    prune.start()
    with psycopg.connect(_dsn(store), autocommit=True) as admin:
        wait_for(
            lambda: (
                admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                ).fetchone()[0]
                == 1
            ),
            what="the prune to wait for the row lock",
        )
    holder.commit()
    prune.join(20)
    assert not prune.is_alive()
    return reports[0]


def test_a_prune_racing_a_rerun_of_the_same_run_leaves_the_requeued_run_alone(store):
    # A rerun commits while the prune's write transaction is between choosing its runs and
    # deleting them: the prune must see the run queued again and keep it, not delete it by id.
    run_id, later = _finished_long_ago(store)
    with psycopg.connect(_dsn(store)) as rerun:  # holds the run's row until it commits
        rerun.execute(
            "UPDATE runs SET status = 'queued', completed_at = NULL WHERE id = %s", (run_id,)
        )
        report = _prune_behind(store, rerun, later)
    assert report.runs == 0
    kept = store.get_run(run_id)
    assert kept["status"] == "queued"
    assert [e["type"] for e in store.list_events(run_id, limit=10)["events"]] == ["run.queued"]


def test_events_written_while_a_prune_waits_for_their_run_go_with_it(store):
    # PostgreSQL keeps no foreign key from events to runs (migration 0008): an event writer
    # locks its run first, and the prune deletes a run's events only once it holds the run.
    # A writer holding the run's row while it adds an event (as an intent does) must not
    # leave that event behind a prune that was waiting for it.
    run_id, later = _finished_long_ago(store)
    with psycopg.connect(_dsn(store)) as writer:
        writer.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (run_id,))
        writer.execute(
            "INSERT INTO events (run_id, type, message, created_at) VALUES (%s, 'log', 'late', 0)",
            (run_id,),
        )
        report = _prune_behind(store, writer, later)
    assert report.runs == 1
    with store.engine.connect() as conn:
        left = conn.execute(
            text("SELECT count(*) FROM events WHERE run_id = :id"), {"id": run_id}
        ).scalar_one()
    assert left == 0


def _run_updates(store: Store) -> tuple[int, int]:
    """(updates, HOT updates) of runs so far. The store's connections are closed first: a
    backend hands its counts to the statistics when it exits."""
    store.engine.dispose()
    with psycopg.connect(_dsn(store), autocommit=True) as admin:
        row = admin.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'runs'"
        ).fetchone()
    return int(row[0]), int(row[1])


def test_a_heartbeat_of_running_runs_is_a_hot_update(store):
    # No index has heartbeat_at (migration 0009): a heartbeat changes no indexed column, so
    # with the room fillfactor 80 keeps on each page it adds no entry to any index.
    for _ in range(8):
        store.create_run("essay", {"topic": "t"})
    claimed = store.claim_runs("r1", queues=["default"], workflows=["essay"], limit=8)
    leases = {c.id: c.token for c in claimed}
    before = _run_updates(store)
    for _ in range(3):
        assert store.heartbeat("r1", leases).lost == set()
    wait_for(lambda: _run_updates(store)[0] >= before[0] + 24, what="the heartbeats' statistics")
    updates, hot = _run_updates(store)
    # HOT needs room on the row's page as well: nearly all, not always all (22 of 24 seen).
    # With heartbeat_at indexed, none.
    assert updates - before[0] == 24 and hot - before[1] >= 18

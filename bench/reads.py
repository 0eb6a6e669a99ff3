"""Read paths at scale: list / detail / events p50–p99 with 1,000,000 runs and 10,000,000 events.

    python -m bench.reads seed --db /tmp/loopdeck-reads.db            # ~1M runs, ~10M events
    python -m bench.reads measure --db /tmp/loopdeck-reads.db --reps 3
    python -m bench.reads seed --db … --runs 10000 --events-per-run 10   # a small trial

`seed` builds the schema with the project's migrations, then bulk-loads rows shaped like the
ones runners write (one task per run; queued → claimed → stage → logs → finished events; one
run with 100,000 events, paged through by `measure`). Rows go in id order, one large
transaction per 50,000 runs, so the file is what a long-lived installation looks like.

`measure` starts `loopdeck api` (one uvicorn worker) on that file and sends requests one after
another over one keep-alive connection (the dashboard's pattern), 500 per query shape, and
reports client-side p50/p95/p99 per shape to bench/out/results.jsonl (measure `reads`):

  list_first        GET /api/runs?limit=50                       (newest page)
  list_deep         GET /api/runs?limit=50&cursor=<random id>    (keyset page anywhere)
  list_status       GET /api/runs?status=failed&limit=50&cursor=<random id>
  list_workflow     GET /api/runs?workflow=<w>&limit=50&cursor=<random id>
  detail            GET /api/runs/<random id>                    (tasks, lineage, audit)
  events            GET /api/runs/<random id>/events?after=0
  events_big_page   GET /api/runs/<run with 100k events>/events?after=<random>&limit=200
  stats             GET /api/stats  (dashboard summary cards; counts by status — not a
                    list/detail/events path, reported so its cost is visible)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from shared.ids import new_id

from .run import OUT, ROOT, WORKFLOWS, _free_port, _pct, _wait_http, log

WORKFLOW_NAMES = ("essay", "review", "summarise", "triage", "translate")
BIG_RUN_EVENTS = 100_000


def seed(db: Path, n_runs: int, events_per_run: int) -> None:
    from sqlalchemy import create_engine

    from shared.migrate import upgrade
    from shared.store import Store
    from shared.workflows import load_files

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    from shared.settings import Settings

    store = Store.from_settings(Settings(database_url=url))
    store.publish_workflows(load_files([WORKFLOWS]), "bench")
    store.dispose()

    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    rng = random.Random(7)
    start_ms = int(time.time() * 1000) - 90 * 24 * 3600 * 1000  # 90 days of history
    step_ms = max(1, (90 * 24 * 3600 * 1000) // max(1, n_runs))
    snapshot = json.dumps({"name": "essay", "kind": "loop", "loop": {"max_attempts": 3,
        "pass_threshold": 0.8, "stages": [{"name": "draft", "call": "bench.noop:run"},
        {"name": "judge", "call": "bench.noop:run"}]}})  # fmt: skip
    event_id = 0
    t0 = time.monotonic()
    batch = 50_000
    for lo in range(0, n_runs, batch):
        run_rows, task_rows, event_rows = [], [], []
        for i in range(lo, min(n_runs, lo + batch)):
            created = start_ms + i * step_ms
            rid = new_id("run", created)
            roll = rng.random()
            status = "succeeded" if roll < 0.9 else "failed" if roll < 0.98 else "cancelled"
            if i >= n_runs - 20:
                status = "queued"
            wf = WORKFLOW_NAMES[i % len(WORKFLOW_NAMES)]
            done = None if status == "queued" else created + 4000
            score = round(rng.random(), 2)
            run_rows.append((rid, wf, "v1", "loop", snapshot, json.dumps({"topic": f"t{i}"}),
                             status, "default", 0, "api", "judge", 2, 3, 0.8, score,
                             None if status != "failed" else "score below threshold",
                             1, 1, created, None if done is None else created + 5, done,
                             json.dumps({"tokens": 1200, "cost_usd": 0.004})))  # fmt: skip
            task_rows.append((new_id("tsk", created), rid, "judge", 0, "[]",
                              "created" if status == "queued" else status, 1, created + 10, done))  # fmt: skip
            kinds = ["run.queued", "run.claimed", "stage.started"]
            kinds += ["log"] * max(0, events_per_run - 5) + ["stage.finished", "run.finished"]
            for k, kind in enumerate(kinds[:events_per_run]):
                event_id += 1
                event_rows.append((event_id, rid, kind, "draft" if k >= 2 else None, 1,
                                   f"{kind} line {k} of run {i}", created + k))  # fmt: skip
        conn.executemany(
            "INSERT INTO runs (id, workflow, version, kind, config_snapshot, inputs, status,"
            " queue, priority, origin, current_stage, current_attempt, max_attempts,"
            " pass_threshold, final_score, error_message, claim_count, fence, created_at,"
            " started_at, completed_at, metrics) VALUES"
            " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            run_rows,
        )
        conn.executemany(
            "INSERT INTO tasks (id, run_id, step, position, needs, status, attempt, started_at,"
            " completed_at) VALUES (?,?,?,?,?,?,?,?,?)",
            task_rows,
        )
        conn.executemany(
            "INSERT INTO events (id, run_id, type, stage, attempt, message, created_at)"
            " VALUES (?,?,?,?,?,?,?)",
            event_rows,
        )
        conn.commit()
        log(f"seeded {min(n_runs, lo + batch):,} runs, {event_id:,} events "
            f"({time.monotonic() - t0:.0f} s)")  # fmt: skip
    # One long-lived run with a very long timeline.
    big = new_id("run", start_ms + n_runs * step_ms)
    conn.execute(
        "INSERT INTO runs (id, workflow, version, kind, config_snapshot, inputs, status,"
        " created_at, metrics) VALUES (?, 'essay', 'v1', 'loop', ?, '{}', 'succeeded', ?, '{}')",
        (big, snapshot, start_ms),
    )
    rows = []
    for k in range(BIG_RUN_EVENTS):
        event_id += 1
        rows.append((event_id, big, "log", "draft", 1, f"log line {k}", start_ms + k))
    conn.executemany(
        "INSERT INTO events (id, run_id, type, stage, attempt, message, created_at)"
        " VALUES (?,?,?,?,?,?,?)",
        rows,
    )
    conn.commit()
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = db.stat().st_size / 1024**3
    log(f"seeded {n_runs + 1:,} runs, {event_id:,} events, {size:.2f} GiB in "
        f"{time.monotonic() - t0:.0f} s")  # fmt: skip


def _samples(db: Path, count: int) -> dict[str, list[str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    (n,) = conn.execute("SELECT max(rowid) FROM runs").fetchone()
    rng = random.Random()
    ids: list[str] = []
    while len(ids) < count:
        row = conn.execute("SELECT id FROM runs WHERE rowid = ?", (rng.randint(1, n),)).fetchone()
        if row:
            ids.append(row[0])
    (big,) = conn.execute("SELECT run_id FROM events ORDER BY id DESC LIMIT 1").fetchone()
    lo, hi = conn.execute("SELECT min(id), max(id) FROM events WHERE run_id = ?", (big,)).fetchone()
    conn.close()
    afters = [str(rng.randint(lo, hi - 200)) for _ in range(count)]
    return {"ids": ids, "big": [big], "afters": afters}


def measure(db: Path, reps: int, count: int, tag: str) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPDECK_")}
    env.update(LOOPDECK_DATABASE_URL=f"sqlite:///{db}", LOOPDECK_RATE_LIMIT="0",
               PYTHONPATH=str(ROOT))  # fmt: skip
    out = open(Path("/tmp") / "loopdeck-reads-api.log", "w")  # noqa: SIM115
    api = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "api", "--port", str(port), "--log-level",
         "warning"], env=env, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/health", api)
        s = _samples(db, count)
        ids, big, afters = s["ids"], s["big"][0], s["afters"]
        rng = random.Random()
        shapes = {
            "list_first": lambda i: "/api/runs?limit=50",
            "list_deep": lambda i: f"/api/runs?limit=50&cursor={ids[i]}",
            "list_status": lambda i: f"/api/runs?status=failed&limit=50&cursor={ids[i]}",
            "list_workflow": lambda i: (
                f"/api/runs?workflow={rng.choice(WORKFLOW_NAMES)}&limit=50&cursor={ids[i]}"
            ),
            "detail": lambda i: f"/api/runs/{ids[i]}",
            "events": lambda i: f"/api/runs/{ids[i]}/events?after=0",
            "events_big_page": lambda i: f"/api/runs/{big}/events?after={afters[i]}&limit=200",
            "stats": lambda i: "/api/stats",
        }
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for rep in range(1, reps + 1):
            row: dict[str, object] = {}
            for name, path_of in shapes.items():
                n = min(count, 100) if name == "stats" else count
                lat: list[float] = []
                for i in range(n):
                    t0 = time.perf_counter()
                    client.request("GET", path_of(i))
                    resp = client.getresponse()
                    resp.read()
                    lat.append((time.perf_counter() - t0) * 1000)
                    if resp.status != 200:
                        raise RuntimeError(f"{name}: HTTP {resp.status} for {path_of(i)}")
                lat.sort()
                row[name] = {"p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95),
                             "p99_ms": _pct(lat, 99), "n": n}  # fmt: skip
            _emit(tag, rep, db, row)
        client.close()
    finally:
        api.terminate()
        api.wait(30)
        out.close()


def _emit(tag: str, rep: int, db: Path, row: dict[str, object]) -> None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    runs = conn.execute("SELECT max(rowid) FROM runs").fetchone()[0]
    events = conn.execute("SELECT max(id) FROM events").fetchone()[0]
    conn.close()
    record = {"measure": "reads", "backend": "sqlite", "sync": "normal", "rep": rep, "tag": tag,
              "at": int(time.time()), "runs": runs, "events": events, **row}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "results.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    log(f"reads rep {rep}: " + ", ".join(
        f"{k} {v['p50_ms']}/{v['p99_ms']}" for k, v in row.items() if isinstance(v, dict)))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reads", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--db", type=Path, required=True)
    s.add_argument("--runs", type=int, default=1_000_000)
    s.add_argument("--events-per-run", type=int, default=10)
    m = sub.add_parser("measure")
    m.add_argument("--db", type=Path, required=True)
    m.add_argument("--reps", type=int, default=3)
    m.add_argument("--count", type=int, default=500)
    m.add_argument("--tag", default="reads")
    args = p.parse_args(argv)
    if args.cmd == "seed":
        seed(args.db, args.runs, args.events_per_run)
    else:
        measure(args.db, args.reps, args.count, args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The dispatcher's cycle without threads: what the claim/flush path costs per run.

    python -m bench.cycle --n 10000 --limit 8
    python -m bench.cycle --n 4000 --database-url postgresql://postgres@127.0.0.1/loopdeck_bench

One thread does what a runner's dispatcher and its executions do, in turn: `apply_run_writes`
(flush the finished runs' writes and claim up to `--limit` more, one transaction), then each
claimed run's real `Execution` of the one-stage no-op `call:` workflow, synchronously. No
worker threads, no wake-ups, no GIL hand-offs: the difference from `bench.run drain1` at the
same concurrency is what the runner's threads cost. Prints runs/s and the time per run spent
in the transaction (`apply`) and in the executions (`exec`), and the CPU time per run of this
process and, on PostgreSQL, of its server backend (from /proc): the wall times drift with
this machine's speed, the split between client and server less so.

A PostgreSQL URL must name a database used only for benchmarks: its `public` schema is
dropped and recreated. With `ALTER DATABASE … SET log_min_duration_statement = 0` the server
log then shows each statement's server time (how bench/RESULTS.md splits a cycle).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from runner.active import ActiveRun, Outbox
from runner.execution import ExecOptions, Execution
from shared.migrate import upgrade
from shared.settings import Settings
from shared.store import ClaimRequest, RunWrites, Store
from shared.workflows import load_files

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = str(ROOT / "bench" / "workflows.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="runs to drain")
    parser.add_argument("--limit", type=int, default=8, help="runs per claim (concurrency)")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/cycle.db"
    store = Store.from_settings(Settings(database_url=url))
    if store.is_postgres:
        with store.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    upgrade(store.engine)
    store.publish_workflows(load_files([WORKFLOWS]), "bench")
    for start in range(0, args.n, 1000):
        store.create_runs("noop", [{"i": i} for i in range(start, min(args.n, start + 1000))])

    outbox = Outbox()
    options = ExecOptions(extra_paths=(str(ROOT),))
    pending: list[tuple[ActiveRun, RunWrites]] = []
    done = 0
    apply_s = exec_s = 0.0
    started = time.perf_counter()
    with store.pinned_connection():
        backend = (
            store.read(lambda conn: conn.execute(text("SELECT pg_backend_pid()")).scalar())
            if store.is_postgres
            else None
        )
        client_cpu, server_cpu = _own_cpu(), _cpu_of(backend)
        while True:
            t0 = time.perf_counter()
            claim = ClaimRequest("cycle", ("default",), ("noop",), args.limit, suspects=0)
            outcomes, claimed = store.apply_run_writes([b for _, b in pending], claim)
            t1 = time.perf_counter()
            apply_s += t1 - t0
            for (active, batch), outcome in zip(pending, outcomes, strict=True):
                active.applied(outcome, batch)
                done += 1
            pending = []
            if not claimed and done >= args.n:
                break
            for c in claimed:
                run = ActiveRun(c, outbox)
                Execution(run, options).run()
                writes = run.take_batch()
                assert writes is not None
                pending.append((run, writes))
            outbox.drain()
            exec_s += time.perf_counter() - t1
    seconds = time.perf_counter() - started
    client_cpu, server_cpu = _own_cpu() - client_cpu, _cpu_of(backend) - server_cpu
    store.dispose()
    n = args.n
    server = f", server {server_cpu / n * 1e6:.0f} us" if backend else ""
    print(
        f"{n} runs in {seconds:.2f} s: {n / seconds:,.0f} runs/s; per run: apply "
        f"{apply_s / n * 1e6:.0f} us, exec {exec_s / n * 1e6:.0f} us (limit {args.limit}); "
        f"CPU per run: client {client_cpu / n * 1e6:.0f} us{server}"
    )


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pid: int | None) -> float:
    """User + system CPU seconds of a local process (the PostgreSQL backend), 0 without one."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()

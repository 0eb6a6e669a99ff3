"""Loopdeck's benchmark driver.

    python -m bench.run                       # every measure, 3 reps, SQLite (synchronous=NORMAL)
    python -m bench.run drain1 drain2 --n 20000 --reps 3 --sync full
    python -m bench.run latency --database-url postgresql://postgres@127.0.0.1/loopdeck_bench

Measures (the method of ../shared/bench-peers, adapted to Loopdeck):
  enqueue      N runs created one at a time through the store verb (one transaction each)
  enqueue_batch  the same, 1,000 runs per call of the bulk verb (create_runs)
  enqueue_api  POST /api/runs against `loopdeck api` (one uvicorn worker), keep-alive load
               from a separate process (bench/httpload.py), 8 connections for 10 s
  drain1/2     N pre-enqueued one-stage no-op `call:` runs, 1 or 2 runner processes; span =
               first stage start (UDP from the stage) → no unfinished run visible in the table.
               PostgreSQL, as the peers' harness: ANALYZE and CHECKPOINT after the enqueue, the
               runners held (a lock on `runs`) until all have started; SQLite: the runs wait
               in another queue and one UPDATE moves them all
  latency      one idle runner; one run at a time (50–250 ms gaps); create commit returned →
               stage start, 200 samples, nearest-rank percentiles
  idle         an idle runner's CPU (% of one core) and RSS over 20 s

Every result is appended as a JSON line to bench/out/results.jsonl; `python -m bench.report`
turns that file into bench/RESULTS.md. A PostgreSQL URL must name a database used only for
benchmarks: its `public` schema is dropped and recreated before every measure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
WORKFLOWS = str(ROOT / "bench" / "workflows.yaml")
MEASURES = ("enqueue", "enqueue_batch", "enqueue_api", "drain1", "drain2", "latency", "idle")
ACTIVE = "('queued', 'running', 'waiting')"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="loopdeck-bench-"))
        self.backend = "postgres" if (args.database_url or "").startswith("postgres") else "sqlite"

    # -- database ------------------------------------------------------------------------

    def fresh_db(self, name: str) -> str:
        from shared.migrate import upgrade
        from shared.store import Store
        from shared.workflows import load_files

        if self.backend == "sqlite":
            path = self.tmp / f"{name}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            url = f"sqlite:///{path}"
        else:
            url = self.args.database_url
            eng = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
            with eng.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
            eng.dispose()
        store = Store.from_settings(self.settings(url))
        upgrade(store.engine)
        store.publish_workflows(load_files([WORKFLOWS]), "bench")
        store.dispose()
        return url

    def settings(self, url: str) -> Any:
        from shared.settings import Settings

        return Settings(database_url=url, sqlite_synchronous=self.args.sync.upper())

    def store(self, url: str) -> Any:
        from shared.store import Store

        return Store.from_settings(self.settings(url))

    def env(self, url: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPDECK_")}
        # The rate limit (default 120 changes a minute per client) would cap the API measure.
        env.update(LOOPDECK_DATABASE_URL=url, LOOPDECK_SQLITE_SYNCHRONOUS=self.args.sync.upper(),
                   LOOPDECK_RATE_LIMIT="0", PYTHONPATH=str(ROOT))  # fmt: skip
        env.update(extra)
        return env

    def runner(self, url: str, log_name: str, *flags: str, **env: str) -> subprocess.Popen[bytes]:
        out = open(self.tmp / f"{log_name}.log", "w")  # noqa: SIM115 - lives with the process
        return subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "runner", "--config", WORKFLOWS,
             "--log-level", "warning", *flags],
            env=self.env(url, **env), cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip

    @staticmethod
    def stop(*procs: subprocess.Popen[bytes]) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    def emit(self, measure: str, rep: int, **values: Any) -> dict[str, Any]:
        row = {"measure": measure, "backend": self.backend, "sync": self.args.sync.lower(),
               "rep": rep, "tag": self.args.tag, "at": int(time.time()), **values}  # fmt: skip
        OUT.mkdir(parents=True, exist_ok=True)
        with open(OUT / "results.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        log(f"{measure} rep {rep}: {values}")
        return row

    # -- measures ------------------------------------------------------------------------

    def enqueue(self, rep: int) -> None:
        url = self.fresh_db(f"enqueue{rep}")
        store = self.store(url)
        n = self.args.n
        t0 = time.perf_counter()
        for i in range(n):
            store.create_run("noop", {"i": i})
        seconds = time.perf_counter() - t0
        store.dispose()
        self.emit("enqueue", rep, n=n, seconds=round(seconds, 4), runs_per_s=round(n / seconds, 1))

    def enqueue_batch(self, rep: int) -> None:
        url = self.fresh_db(f"enqueue_batch{rep}")
        store = self.store(url)
        n, size = self.args.n, 1000
        t0 = time.perf_counter()
        for start in range(0, n, size):
            store.create_runs("noop", [{"i": i} for i in range(start, min(n, start + size))])
        seconds = time.perf_counter() - t0
        store.dispose()
        self.emit("enqueue_batch", rep, n=n, batch=size, seconds=round(seconds, 4),
                  runs_per_s=round(n / seconds, 1))  # fmt: skip

    def enqueue_api(self, rep: int) -> None:
        url = self.fresh_db(f"api{rep}")
        port = _free_port()
        out = open(self.tmp / "api.log", "w")  # noqa: SIM115
        api = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "api", "--port", str(port), "--log-level",
             "warning"], env=self.env(url), cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_http(f"http://127.0.0.1:{port}/api/health", api)
            body = json.dumps({"workflow": "noop", "inputs": {"i": 1}})
            result = subprocess.run(
                [sys.executable, "-m", "bench.httpload", "127.0.0.1", str(port), "/api/runs",
                 body, str(self.args.connections), str(self.args.seconds)],
                cwd=str(ROOT), capture_output=True, text=True, timeout=120, check=True,
            )  # fmt: skip
        finally:
            self.stop(api)
            out.close()
        self.emit(
            "enqueue_api", rep, connections=self.args.connections, **json.loads(result.stdout)
        )

    def drain(self, rep: int, procs: int) -> None:
        url = self.fresh_db(f"drain{procs}-{rep}")
        n = self.args.n
        postgres = self.backend == "postgres"
        store = self.store(url)
        t0 = time.perf_counter()
        # PostgreSQL: the runs go straight into the runners' queue, and a table lock holds the
        # runners' first claims until the start (the peers' harness holds its workers on a
        # file). Moving every run from a holding queue, as SQLite still does, gave each run
        # one more row version — and one more entry in each of its indexes — that no real
        # queue has and the peers do not write (bench/RESULTS.md, twelfth run).
        queue = "bench" if postgres else "hold"
        for start in range(0, n, 1000):
            store.create_runs("noop", [{"i": i} for i in range(start, min(n, start + 1000))],
                              queue=queue)  # fmt: skip
        pre = time.perf_counter() - t0
        store.dispose()
        eng = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        hold = None
        if postgres:  # as the peers' harness does before starting its workers
            with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE"))
                conn.execute(text("CHECKPOINT"))
            hold = eng.connect()
            # EXCLUSIVE: reads go on (the runners' start-up, this watcher), writes to runs wait.
            hold.execute(text("LOCK TABLE runs IN EXCLUSIVE MODE"))
        ctrl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ctrl.bind(("127.0.0.1", 0))
        ctrl.settimeout(0.05)
        flags = ["--queue", "bench"]
        if self.args.concurrency:
            flags += ["--concurrency", str(self.args.concurrency)]
        runners = [self.runner(url, f"drain-{i}", *flags,
                               BENCH_CTRL_PORT=str(ctrl.getsockname()[1])) for i in range(procs)]  # fmt: skip
        try:
            _wait_registered(eng, procs, runners)
            # The starting gun: every run becomes claimable at once.
            if hold is not None:
                hold.commit()  # the runners' claims, waiting on the lock, go ahead
            else:
                with eng.begin() as conn:
                    conn.execute(text("UPDATE runs SET queue = 'bench' WHERE queue = 'hold'"))
            first: float | None = None
            starts = 0
            deadline = time.monotonic() + self.args.timeout
            end = None
            with eng.connect() as conn:
                while time.monotonic() < deadline:
                    try:
                        data, _ = ctrl.recvfrom(256)
                        parts = data.decode().split()
                        if parts[0] == "start":
                            starts += 1
                            first = (
                                float(parts[1]) if first is None else min(first, float(parts[1]))
                            )
                        continue
                    except TimeoutError:
                        pass
                    dead = [i for i, r in enumerate(runners) if r.poll() is not None]
                    if dead:
                        raise RuntimeError(f"runner drain-{dead[0]} exited during the drain "
                                           f"(its log: {self.tmp / f'drain-{dead[0]}.log'})")  # fmt: skip
                    # An index probe, not a COUNT over the table: the watcher shares the
                    # machine with the runners it measures.
                    left = conn.execute(text(
                        f"SELECT 1 FROM runs WHERE status IN {ACTIVE} LIMIT 1")).first()  # fmt: skip
                    conn.commit()
                    if left is None:
                        end = time.monotonic()
                        break
            if end is None or first is None:
                raise RuntimeError(f"drain did not finish within {self.args.timeout}s")
            with eng.connect() as conn:
                ok = conn.execute(
                    text("SELECT count(*) FROM runs WHERE status = 'succeeded'")
                ).scalar()
        finally:
            if hold is not None:
                hold.close()
            self.stop(*runners)
            eng.dispose()
            ctrl.close()
        seconds = end - first
        self.emit(f"drain{procs}", rep, n=n, procs=procs, succeeded=ok, starts=starts,
                  concurrency=self.args.concurrency or "default", seconds=round(seconds, 4),
                  runs_per_s=round(n / seconds, 1), pre_enqueue_s=round(pre, 3))  # fmt: skip

    def latency(self, rep: int) -> None:
        url = self.fresh_db(f"latency{rep}")
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        probe.settimeout(10)
        ctrl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ctrl.bind(("127.0.0.1", 0))
        runner = self.runner(url, "latency", BENCH_PROBE_PORT=str(probe.getsockname()[1]),
                             BENCH_CTRL_PORT=str(ctrl.getsockname()[1]))  # fmt: skip
        store = self.store(url)
        eng = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        lat, enq, lost = [], [], 0
        try:
            _wait_registered(eng, 1, [runner])
            store.create_run("noop", {"i": -1})  # warm-up: imports, first claim
            _recv_probe(probe, -1)
            for i in range(self.args.count):
                time.sleep(random.uniform(0.05, 0.25))
                t0 = time.monotonic()
                store.create_run("noop", {"i": i})
                t1 = time.monotonic()
                ts = _recv_probe(probe, i)
                if ts is None:
                    lost += 1
                    continue
                enq.append((t1 - t0) * 1000)
                lat.append((ts - t1) * 1000)
        finally:
            self.stop(runner)
            store.dispose()
            eng.dispose()
            probe.close()
            ctrl.close()
        lat.sort()
        self.emit("latency", rep, samples=len(lat), lost=lost, p50_ms=_pct(lat, 50),
                  p95_ms=_pct(lat, 95), p99_ms=_pct(lat, 99), max_ms=round(lat[-1], 3),
                  mean_ms=round(statistics.fmean(lat), 3),
                  enqueue_call_p50_ms=round(statistics.median(enq), 3))  # fmt: skip

    def idle(self, rep: int) -> None:
        url = self.fresh_db(f"idle{rep}")
        runner = self.runner(url, "idle")
        eng = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            _wait_registered(eng, 1, [runner])
            proc = psutil.Process(runner.pid)
            time.sleep(3)  # let start-up settle before measuring (not a timing assertion)
            c0, w0 = proc.cpu_times(), time.monotonic()
            time.sleep(self.args.idle_seconds)
            c1, w1 = proc.cpu_times(), time.monotonic()
            rss = proc.memory_info().rss
        finally:
            self.stop(runner)
            eng.dispose()
        cpu = (c1.user + c1.system - c0.user - c0.system) / (w1 - w0) * 100
        self.emit("idle", rep, seconds=self.args.idle_seconds, cpu_percent=round(cpu, 3),
                  rss_mb=round(rss / 1024 / 1024, 1))  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the API exited")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the API did not start")


def _wait_registered(eng: Any, count: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a runner exited during start-up; see its log in the temp dir")
        with eng.connect() as conn:
            n = conn.execute(text("SELECT count(*) FROM runners WHERE status = 'active'")).scalar()
        if n >= count:
            return
        time.sleep(0.05)
    raise RuntimeError("runners did not register")


def _recv_probe(sock: socket.socket, i: int) -> float | None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            data, _ = sock.recvfrom(256)
        except TimeoutError:
            return None
        parts = data.decode().split()
        if parts[0] == "probe" and int(parts[1]) == i:
            return float(parts[2])
    return None


def _pct(values: list[float], p: int) -> float:
    k = min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))
    return round(values[k], 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("measures", nargs="*", metavar="MEASURE", help=f"any of {', '.join(MEASURES)}")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--n", type=int, default=2000, help="runs per enqueue/drain measure")
    p.add_argument("--count", type=int, default=200, help="latency samples")
    p.add_argument("--concurrency", type=int, default=0, help="runner --concurrency (0: default)")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="enqueue_api duration")
    p.add_argument("--idle-seconds", type=float, default=20.0)
    p.add_argument("--sync", default="normal", choices=["normal", "full"])
    p.add_argument("--database-url", help="PostgreSQL URL of a benchmark-only database")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    unknown = [m for m in args.measures if m not in MEASURES]
    if unknown:
        p.error(f"unknown measure(s) {unknown}; choose from {', '.join(MEASURES)}")
    bench = Bench(args)
    try:
        for rep in range(1, args.reps + 1):
            for measure in args.measures or MEASURES:
                if measure.startswith("drain"):
                    bench.drain(rep, int(measure[-1]))
                else:
                    getattr(bench, measure)(rep)
    except BaseException:
        print(f"bench: logs of this run kept in {bench.tmp}", file=sys.stderr)
        raise
    shutil.rmtree(bench.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

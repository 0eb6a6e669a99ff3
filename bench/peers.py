"""Run the peer job queues of ../shared/bench-peers side by side with Loopdeck.

    python -m bench.peers setup                  # throw-away venvs in /tmp/bench-peers (as its README)
    python -m bench.peers run --reps 3 [--peers huey pgqueuer …] [--only-loopdeck] [--tag T]
    python -m bench.peers interleave --rounds 3 [--tag T]   # the targeted measures, alternating
    python -m bench.peers report [--tag T]       # bench/out/compare.md: one table of ratios

`run` measures every peer, then Loopdeck: on a machine whose speed drifts over minutes the
ratios then partly measure the drift. `interleave` alternates the two within each round —
huey and Loopdeck's SQLite drains, pgqueuer's and Loopdeck's PostgreSQL drain with 2
processes, oban-py's and Loopdeck's PostgreSQL pickup — so each pair ran under the same
conditions; `report` with the same tag takes the medians over the rounds.

The peers' code is never copied into this repository: their driver runs from
../shared/bench-peers (read-only) and writes its JSON lines to bench/out/peers-raw.jsonl;
Loopdeck's figures come from bench.run with the same method (same N, same no-op handler shape,
same timing points) and go to bench/out/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = Path(os.environ.get("BENCH_PEERS_DIR", ROOT.parent / "shared" / "bench-peers"))
VENV = Path("/tmp/bench-peers/venv")
VENV312 = Path("/tmp/bench-peers/venv312")
OUT = ROOT / "bench" / "out"
PEER_RESULTS = OUT / "peers-raw.jsonl"
PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://root:bench@127.0.0.1:5432/bench")
LOOPDECK_PG = os.environ.get(
    "BENCH_LOOPDECK_PG", "postgresql://postgres@127.0.0.1:5432/loopdeck_bench"
)
DEFAULT_PEERS = ("huey", "pgqueuer", "procrastinate", "chancy", "oban", "raw_sqlite",
                 "raw_sqlite_normal", "raw_pg", "raw_pg_b10")  # fmt: skip


def sh(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def setup() -> None:
    """The harness README's setup, minus apt (PostgreSQL runs already)."""
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=0"]
    sh([*psql, "-c", "DO $$BEGIN CREATE ROLE root LOGIN SUPERUSER PASSWORD 'bench'; "
        "EXCEPTION WHEN duplicate_object THEN ALTER ROLE root PASSWORD 'bench'; END$$"])  # fmt: skip
    for db, owner in (("bench", "root"), ("loopdeck_bench", "postgres")):
        exists = subprocess.run([*psql, "-tAc", f"SELECT 1 FROM pg_database WHERE datname='{db}'"],
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
        if exists != "1":
            sh([*psql, "-c", f"CREATE DATABASE {db} OWNER {owner}"])
    if not (VENV / "bin" / "python").exists():
        sh(["python3.11" if _has("python3.11") else sys.executable, "-m", "venv", str(VENV)])
    sh([str(VENV / "bin" / "pip"), "install", "-q", "pgqueuer", "asyncpg", "procrastinate[psycopg]",
        "psycopg[binary]", "huey", "chancy"])  # fmt: skip
    if not (VENV312 / "bin" / "python").exists():
        env = dict(os.environ, PYENV_VERSION="3.12.1")
        sh(["python", "-m", "venv", str(VENV312)], env=env)
    sh([str(VENV312 / "bin" / "pip"), "install", "-q", "oban", "psycopg[binary]"])


def _has(cmd: str) -> bool:
    from shutil import which

    return which(cmd) is not None


def run_peers(peers: list[str], reps: int, n: int, count: int, tag: str) -> None:
    env = dict(os.environ, BENCH_RESULTS=str(PEER_RESULTS), BENCH_PG_DSN=PG_DSN,
               BENCH_PY=str(VENV / "bin" / "python"), BENCH_PY312=str(VENV312 / "bin" / "python"))  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    driver = [str(VENV / "bin" / "python"), str(PEERS_DIR / "driver.py")]
    for rep in range(1, reps + 1):
        for peer in peers:
            t = ["--tag", f"{tag}rep{rep}"]
            # The same matrix as the harness's run_all.sh.
            if peer not in ("raw_pg_b10", "raw_sqlite_b10"):
                _try([*driver, peer, "enqueue", "--batch", "1", "--n", str(n), *t], env)
            if peer not in ("huey", "raw_pg_b10", "raw_sqlite_b10", "raw_sqlite_normal"):
                _try([*driver, peer, "enqueue", "--batch", "1000", "--n", str(n), *t], env)
            for procs in (1, 2):
                _try([*driver, peer, "drain", "--procs", str(procs), "--n", str(n), *t], env)
            if peer in ("huey", "pgqueuer", "procrastinate", "chancy", "oban", "raw_pg",
                        "raw_sqlite"):  # fmt: skip
                _try([*driver, peer, "latency", "--count", str(count), *t], env)


def run_loopdeck(reps: int, n: int, count: int, tag: str) -> None:
    base = [sys.executable, "-m", "bench.run", "--reps", str(reps), "--n", str(n),
            "--count", str(count)]  # fmt: skip
    for sync in ("normal", "full"):
        sh([*base, "enqueue", "enqueue_batch", "drain1", "drain2", "latency", "--sync", sync,
            "--tag", f"{tag}sqlite-{sync}"], cwd=str(ROOT))  # fmt: skip
    sh([*base, "enqueue", "enqueue_batch", "drain1", "drain2", "latency", "--database-url",
        LOOPDECK_PG, "--tag", f"{tag}pg"], cwd=str(ROOT))  # fmt: skip


def interleave(rounds: int, n: int, count: int, tag: str) -> None:
    env = dict(os.environ, BENCH_RESULTS=str(PEER_RESULTS), BENCH_PG_DSN=PG_DSN,
               BENCH_PY=str(VENV / "bin" / "python"), BENCH_PY312=str(VENV312 / "bin" / "python"))  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    driver = [str(VENV / "bin" / "python"), str(PEERS_DIR / "driver.py")]
    ours = [sys.executable, "-m", "bench.run", "--reps", "1", "--n", str(n), "--count", str(count)]
    for r in range(1, rounds + 1):
        t = ["--tag", f"{tag}rep{r}"]
        for procs in (1, 2):
            _try([*driver, "huey", "drain", "--procs", str(procs), "--n", str(n), *t], env)
        sh([*ours, "drain1", "drain2", "--tag", f"{tag}sqlite-normal-r{r}"], cwd=str(ROOT))
        _try([*driver, "pgqueuer", "drain", "--procs", "2", "--n", str(n), *t], env)
        sh([*ours, "drain2", "--database-url", LOOPDECK_PG, "--tag", f"{tag}pg-r{r}"],
           cwd=str(ROOT))  # fmt: skip
        _try([*driver, "oban", "latency", "--count", str(count), *t], env)
        sh([*ours, "latency", "--database-url", LOOPDECK_PG, "--tag", f"{tag}pg-r{r}"],
           cwd=str(ROOT))  # fmt: skip


def _try(cmd: list[str], env: dict[str, str]) -> None:
    print("+", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    result = subprocess.run(cmd, env=env, cwd=str(PEERS_DIR), capture_output=True, text=True,
                            timeout=1800)  # fmt: skip
    if result.returncode != 0:
        print(f"!! failed: {' '.join(cmd[2:])}\n{result.stderr[-1500:]}", file=sys.stderr)


def _rows(path: Path, tag: str | None) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if tag is None or str(r.get("tag", "")).startswith(tag)]


def _median(rows: list[dict], field: str) -> float | None:
    values = [r[field] for r in rows if r.get(field) is not None and r.get("ok", True)]
    return statistics.median(values) if values else None


def report(tag: str | None) -> str:
    peers = _rows(PEER_RESULTS, tag)
    ours = _rows(OUT / "results.jsonl", tag)

    def peer(p: str, measure: str, field: str, **key: object) -> float | None:
        sel = [r for r in peers if r["peer"] == p and r["measure"] == measure
               and all(r.get(k) == v for k, v in key.items())]  # fmt: skip
        return _median(sel, field)

    def loop(measure: str, field: str, backend: str, sync: str | None = None) -> float | None:
        sel = [r for r in ours if r["measure"] == measure and r["backend"] == backend
               and (sync is None or r.get("sync") == sync)]  # fmt: skip
        return _median(sel, field)

    lines = ["| measure | Loopdeck | peer | ratio | target | met |", "|---|---|---|---|---|---|"]

    def row(name: str, ours_v: float | None, peer_name: str, peer_v: float | None, target: float,
            higher_better: bool = True) -> None:  # fmt: skip
        if ours_v is None or peer_v is None:
            lines.append(f"| {name} | {_f(ours_v)} | {peer_name} {_f(peer_v)} | – | {target} | – |")
            return
        ratio = ours_v / peer_v
        met = ratio >= target if higher_better else ours_v <= target
        lines.append(f"| {name} | {_f(ours_v)} | {peer_name} {_f(peer_v)} | {ratio:.2f}× | "
                     f"{'≥' if higher_better else '≤'} {target} | {'yes' if met else 'no'} |")  # fmt: skip

    row(
        "SQLite drain, 1 runner (runs/s)",
        loop("drain1", "runs_per_s", "sqlite", "normal"),
        "huey",
        peer("huey", "drain", "jobs_per_s", procs=1, conc="default"),
        1.2,
    )
    row(
        "SQLite drain, 2 runners (runs/s)",
        loop("drain2", "runs_per_s", "sqlite", "normal"),
        "huey",
        peer("huey", "drain", "jobs_per_s", procs=2, conc="default"),
        1.2,
    )
    row(
        "PostgreSQL drain, 2 runners (runs/s)",
        loop("drain2", "runs_per_s", "postgres"),
        "pgqueuer",
        peer("pgqueuer", "drain", "jobs_per_s", procs=2, conc="default"),
        1.0,
    )
    for backend, p50, p99 in (("postgres", 2.5, 6.0), ("sqlite", 20.0, 50.0)):
        for field, target in (("p50_ms", p50), ("p99_ms", p99)):
            ref = "oban" if backend == "postgres" else "huey"
            row(
                f"{backend} pickup latency {field[:-3]} (ms)",
                loop("latency", field, backend),
                ref,
                peer(ref, "latency", field),
                target,
                higher_better=False,
            )
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return "–" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.3g}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup")
    r = sub.add_parser("run")
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--n", type=int, default=20000)
    r.add_argument("--count", type=int, default=200)
    r.add_argument("--peers", nargs="*", default=list(DEFAULT_PEERS))
    r.add_argument("--only-loopdeck", action="store_true")
    r.add_argument("--only-peers", action="store_true")
    r.add_argument("--tag", default="cmp-")
    il = sub.add_parser("interleave")
    il.add_argument("--rounds", type=int, default=3)
    il.add_argument("--n", type=int, default=20000)
    il.add_argument("--count", type=int, default=200)
    il.add_argument("--tag", default="il-")
    rp = sub.add_parser("report")
    rp.add_argument("--tag", default=None)
    args = p.parse_args(argv)
    if args.cmd == "setup":
        setup()
    elif args.cmd == "run":
        if not args.only_loopdeck:
            run_peers(args.peers, args.reps, args.n, args.count, args.tag)
        if not args.only_peers:
            run_loopdeck(args.reps, args.n, args.count, args.tag)
    elif args.cmd == "interleave":
        interleave(args.rounds, args.n, args.count, args.tag)
    else:
        table = report(args.tag)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "compare.md").write_text(table + "\n")
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

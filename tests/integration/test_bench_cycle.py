"""The benchmark's single-thread cycle (bench/cycle.py) drains what it enqueued."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_cycle_benchmark_drains_every_run_it_created(tmp_path):
    url = f"sqlite:///{tmp_path / 'cycle.db'}"
    out = subprocess.run(
        [sys.executable, "-m", "bench.cycle", "--n", "40", "--limit", "8", "--database-url", url],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("40 runs in "), out.stdout
    import sqlite3

    with sqlite3.connect(tmp_path / "cycle.db") as conn:
        counts = dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    assert counts == {"succeeded": 40}

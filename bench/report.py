"""Turn bench/out/results.jsonl into the tables of bench/RESULTS.md (medians of the reps).

python -m bench.report [--tag TAG] [--input FILE]      # prints Markdown tables
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "results.jsonl"

COLUMNS = {
    "enqueue": ("runs_per_s",),
    "enqueue_batch": ("runs_per_s",),
    "enqueue_api": ("req_per_s", "p50_ms", "p99_ms"),
    "drain1": ("runs_per_s",),
    "drain2": ("runs_per_s",),
    "latency": ("p50_ms", "p95_ms", "p99_ms", "max_ms"),
    "idle": ("cpu_percent", "rss_mb"),
}


def _cell(values: list[float]) -> str:
    med = statistics.median(values)
    reps = "/".join(f"{v:,.4g}" if v < 100 else f"{v:,.0f}" for v in values)
    shown = f"{med:,.4g}" if med < 100 else f"{med:,.0f}"
    return f"**{shown}** ({reps})" if len(values) > 1 else shown


def tables(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        key = (r["measure"], r["backend"], r.get("sync", ""), str(r.get("concurrency", "")))
        groups[key].append(r)
    out = []
    for measure, cols in COLUMNS.items():
        keys = sorted(k for k in groups if k[0] == measure)
        if not keys:
            continue
        out.append(f"### {measure}\n")
        out.append("| backend | sync | conc | " + " | ".join(cols) + " | reps |")
        out.append("|---|---|---|" + "---|" * len(cols) + "---|")
        for key in keys:
            rs = groups[key]
            cells = [_cell([float(r[c]) for r in rs if r.get(c) is not None]) for c in cols]
            out.append(f"| {key[1]} | {key[2]} | {key[3] or '-'} | " + " | ".join(cells)
                       + f" | {len(rs)} |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report")
    p.add_argument("--input", default=str(OUT))
    p.add_argument("--tag", action="append", help="only rows with this tag (repeatable)")
    args = p.parse_args(argv)
    rows = [json.loads(line) for line in Path(args.input).read_text().splitlines() if line]
    if args.tag:
        rows = [r for r in rows if r.get("tag") in args.tag]
    print(tables(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`loopdeck prune`: delete finished runs older than an age (docs/runbook.md#retention)."""

from __future__ import annotations

import argparse
import getpass
import re
import socket
from collections.abc import Callable
from typing import Any

from ..errors import InvalidInput
from ..schema import TERMINAL_RUN_STATUSES
from . import output

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_age(text: str) -> int:
    """`30d`, `12h`, `90m`, `3600s`, `2w` → milliseconds."""
    match = _AGE.match(text.lower())
    if not match:
        raise InvalidInput(
            f"--older-than {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 30d",
            field="older_than",
        )
    return int(float(match.group(1)) * _UNITS[match.group(2)] * 1000)


def cmd_prune(args: argparse.Namespace) -> int:
    from ..clock import to_iso
    from ..store import Actor, Store
    from . import settings_from

    age_ms = parse_age(args.older_than)
    statuses = tuple(s for raw in args.status or () for s in raw.split(",") if s)
    store = Store.from_settings(settings_from(args), retry_seconds=10.0)
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "unknown"
    actor = Actor(name=f"{user}@{socket.gethostname()} (cli)", client="cli")
    report = store.prune_runs(
        older_than_ms=age_ms, statuses=statuses, batch_size=args.batch_size,
        dry_run=args.dry_run, actor=actor,
    )  # fmt: skip
    if args.json:
        print(output.dump(report.as_dict()))
        return 0
    verb = "would delete" if report.dry_run else "deleted"
    print(
        f"{verb} {report.runs} run(s) ({', '.join(report.statuses)}) completed before "
        f"{to_iso(report.cutoff_ms)}: {report.tasks} task(s), {report.events} event(s), "
        f"{report.artifacts} artifact(s) ({report.artifact_bytes:,} bytes)"
        + ("" if report.dry_run else f" in {report.batches} batch(es); the audit log is kept")
    )
    return 0


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "prune", help="delete finished runs older than an age",
        description="Delete finished runs (and their tasks, events and artifacts) completed "
        "longer ago than --older-than, in batches of short transactions. Audit rows stay.",
    )  # fmt: skip
    p.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 90m")
    p.add_argument("--status", action="append", metavar="S",
                   help=f"only these statuses ({', '.join(TERMINAL_RUN_STATUSES)}; "
                   "repeatable or comma-separated; default all three)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=200, metavar="N",
                   help="runs per transaction (default 200)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(handler=cmd_prune)

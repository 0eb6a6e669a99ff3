"""`loopdeck run` and `loopdeck runs …`: create, follow, list, show, cancel, retry."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from ..errors import InvalidInput
from ..schema import TERMINAL_RUN_STATUSES
from ..store import Actor, RunFilter, Store
from ..workflows import coerce_cli_value, workflow_from_definition
from . import output


def _actor() -> Actor:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = "unknown"
    return Actor(name=f"{user}@{socket.gethostname()} (cli)", client="cli")


def _store(args: argparse.Namespace) -> Store:
    from . import settings_from

    return Store.from_settings(settings_from(args), retry_seconds=5.0)


def _parse_inputs(store: Store, workflow: str, pairs: list[str], raw_json: str | None) -> Any:
    inputs: dict[str, Any] = {}
    if raw_json:
        try:
            loaded = json.loads(raw_json)
        except ValueError as exc:
            raise InvalidInput(f"--inputs is not valid JSON: {exc}", field="inputs") from None
        if not isinstance(loaded, dict):
            raise InvalidInput("--inputs must be a JSON object", field="inputs")
        inputs.update(loaded)
    if pairs:
        definition = store.get_workflow(workflow)["definition"]
        wf = workflow_from_definition(definition)
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise InvalidInput(f"-i expects key=value, got {pair!r}", field="inputs")
            inputs[key] = coerce_cli_value(wf, key, value)
    return inputs


def follow(store: Store, run_id: str, *, out: Callable[[str], None] = print,
           interval: float = 0.3) -> dict[str, Any]:  # fmt: skip
    """Print the run's timeline as it grows; return the run once it is terminal."""
    after = 0
    waiting_note = time.monotonic() + 5
    while True:
        page = store.list_events(run_id, after=after, limit=500)
        for ev in page["events"]:
            out(output.event_line(ev))
        after = page["next_after"]
        if page["run_status"] in TERMINAL_RUN_STATUSES and not page["events"]:
            return store.get_run(run_id, with_tasks=False)
        if page["run_status"] == "queued" and time.monotonic() > waiting_note:
            out("… still queued: is a runner serving this workflow's queue? (`loopdeck runner`)")
            waiting_note = time.monotonic() + 30
        if not page["events"]:
            time.sleep(interval)


def cmd_run(args: argparse.Namespace) -> int:
    store = _store(args)
    inputs = _parse_inputs(store, args.workflow, args.input or [], args.inputs)
    run, created = store.create_run(
        args.workflow, inputs, queue=args.queue, priority=args.priority, origin="cli",
        idempotency_key=args.idempotency_key, actor=_actor(),
    )  # fmt: skip
    print(f"{'created' if created else 'existing'} run {run['id']} ({run['workflow']})",
          file=sys.stderr)  # fmt: skip
    if not args.follow:
        print(run["id"])
        return 0
    try:
        final = follow(store, run["id"])
    except KeyboardInterrupt:
        print(f"\nstopped following; the run goes on: loopdeck runs show {run['id']}",
              file=sys.stderr)  # fmt: skip
        return 130
    print(output.run_summary(final))
    return 0 if final["status"] == "succeeded" else 1


def cmd_list(args: argparse.Namespace) -> int:
    flt = RunFilter(
        statuses=tuple(args.status or ()), workflow=args.workflow, queue=args.queue,
        text=args.text, stalled=args.stalled or None,
    )  # fmt: skip
    page = _store(args).list_runs(flt, cursor=args.cursor, limit=args.limit)
    if args.json:
        print(output.dump(page))
    else:
        print(output.run_table(page["runs"]))
        if page["next_cursor"]:
            print(f"(more: --cursor {page['next_cursor']})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    run = store.get_run(args.run_id)
    if args.json:
        print(output.dump(run))
        return 0
    print(output.run_summary(run))
    for t in run["tasks"]:
        err = f"  {t['error']}" if t.get("error") else ""
        if t["status"] == "waiting" and not t.get("approval_decision"):
            err = "  (waiting for approval: loopdeck runs approve|reject RUN STEP)"
        print(f"  {t['step']:<14} #{t['attempt']:<3} {t['status']:<10}{err}")
    for change in run.get("config_diff") or []:
        print(f"  config {change['change']}: {change['path']}: "
              f"{change['before']!r} → {change['after']!r}")  # fmt: skip
    if args.events:
        for ev in store.list_events(args.run_id, limit=500)["events"]:
            print(output.event_line(ev))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    run = _store(args).request_cancel(args.run_id, args.reason, _actor())
    print(output.run_summary(run))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    run = _store(args).retry_run(args.run_id, args.reason, _actor())
    print(run["id"])
    return 0


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("run", help="start a run of a workflow (and --follow its timeline)",
                       description="Create a queued run. With --follow, print its timeline "
                       "until it ends and exit 0 if it succeeded, 1 otherwise.")  # fmt: skip
    p.add_argument("workflow")
    p.add_argument("-i", "--input", action="append", metavar="KEY=VALUE",
                   help="an input, converted to its declared type (repeatable)")  # fmt: skip
    p.add_argument("--inputs", metavar="JSON", help="all inputs as one JSON object")
    p.add_argument("--queue")
    p.add_argument("--priority", type=int)
    p.add_argument("--idempotency-key", metavar="KEY")
    p.add_argument("-f", "--follow", action="store_true", help="follow the timeline")
    common(p)
    p.set_defaults(handler=cmd_run)

    runs = sub.add_parser(
        "runs", help="list, show, cancel, retry, restart, reset, rerun, approve runs; audit"
    )
    rsub = runs.add_subparsers(dest="runs_command", metavar="ACTION")
    rsub.required = True
    p = rsub.add_parser("list", help="newest runs first")
    p.add_argument("--status", action="append",
                   choices=["queued", "running", "waiting", "succeeded", "failed", "cancelled"])  # fmt: skip
    p.add_argument("--workflow")
    p.add_argument("--queue")
    p.add_argument("--text", help="search id, workflow, stage, error and inputs")
    p.add_argument("--stalled", action="store_true", help="only stalled runs")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor")
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(handler=cmd_list)
    p = rsub.add_parser("show", help="one run with its tasks (and --events)")
    p.add_argument("run_id")
    p.add_argument("--events", action="store_true")
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(handler=cmd_show)
    p = rsub.add_parser("cancel", help="cancel a run (running runs stop at the next stage "
                        "boundary; their running command is terminated)")  # fmt: skip
    p.add_argument("run_id")
    p.add_argument("--reason")
    common(p)
    p.set_defaults(handler=cmd_cancel)
    p = rsub.add_parser("retry", help="a new run with the same inputs and the current definition")
    p.add_argument("run_id")
    p.add_argument("--reason")
    common(p)
    p.set_defaults(handler=cmd_retry)

    from . import control

    control.register_runs(rsub, common)

"""`loopdeck runs restart|reset|rerun|approve|reject|dispatch|audit` and
`loopdeck runners list|deregister`: the operator's commands (docs/runbook.md).

Like the rest of the CLI they talk to the database directly (no API token involved); the audit
actor is user@host.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..errors import InvalidInput
from . import output
from .runs import _actor, _store


def _print_run(run: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(output.dump(run))
        return
    print(output.run_summary(run))
    for t in run.get("tasks", []):
        extra = ""
        if t["status"] == "waiting":
            extra = "  (waiting for approval)" if not t.get("approval_decision") else (
                f"  ({t['approval_decision']}d by {t.get('approval_by')})"
            )  # fmt: skip
        elif t.get("error"):
            extra = f"  {t['error']}"
        print(f"  {t['step']:<14} #{t['attempt']:<3} {t['status']:<10}{extra}")


def cmd_restart(args: argparse.Namespace) -> int:
    run = _store(args).restart_run(args.run_id, args.reason, _actor())
    diff = run.get("config_diff") or []
    print(f"restarted {args.run_id} as {run['id']} from its config snapshot "
          f"({len(diff)} difference(s) from the parent)", file=sys.stderr)  # fmt: skip
    print(run["id"])
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    run = _store(args).reset_run(
        args.run_id, to_step=args.to_step, clear_results=args.clear_results, reason=args.reason,
        actor=_actor(),
    )  # fmt: skip
    if args.json:
        print(output.dump(run))
        return 0
    cleared = run["cleared"]
    if cleared["claim"]:
        print(f"took the run away from {cleared['claim']['runner_id']}", file=sys.stderr)
    names = [f"{t['step']}#{t['attempt']}" if run["kind"] == "loop" else t["step"]
             for t in cleared["tasks"]]  # fmt: skip
    print(f"reset {len(names)} task(s): {', '.join(names) or 'none'}; "
          f"{len(cleared['artifacts'])} artifact(s) deleted", file=sys.stderr)  # fmt: skip
    _print_run(run, False)
    return 0


def _print_plan(plan: dict[str, Any]) -> None:
    print(f"run {plan['run_id']} ({plan['status']})")
    print("will run again:")
    for e in plan["rerun"]:
        print(f"  {e['name']:<16} {e['status']:<10} {e['why']}")
    print("outputs reused:")
    for e in plan["reused"] or [{"name": "(none)", "status": "", "needed_by": []}]:
        used = f"needed by {', '.join(e['needed_by'])}" if e.get("needed_by") else ""
        print(f"  {e['name']:<16} {e['status']:<10} {used}".rstrip())
    if plan["untouched"]:
        print("left as they are:")
        for e in plan["untouched"]:
            print(f"  {e['name']:<16} {e['status']}")


def cmd_rerun(args: argparse.Namespace) -> int:
    store = _store(args)
    task_ids, steps = args.task or [], args.step or []
    if args.plan:
        plan = store.rerun_plan(args.run_id, task_ids=task_ids, steps=steps)
        if args.json:
            print(output.dump(plan))
        else:
            _print_plan(plan)
        return 0
    if not args.reason:
        raise InvalidInput("--reason is required (it goes to the audit log)", field="reason")
    run = store.rerun_run(
        args.run_id, task_ids=task_ids, steps=steps, reason=args.reason, actor=_actor(),
        dispatch=not args.no_dispatch,
    )  # fmt: skip
    if args.json:
        print(output.dump(run))
        return 0
    names = [e["name"] for e in run["plan"]["rerun"]]
    held = " (held: `loopdeck runs dispatch` releases it)" if args.no_dispatch else ""
    print(f"re-running {', '.join(names)}{held}", file=sys.stderr)
    _print_run(run, False)
    return 0


def _decide(decision: str) -> Callable[[argparse.Namespace], int]:
    def cmd(args: argparse.Namespace) -> int:
        run = _store(args).decide_approval(args.run_id, args.step, decision, args.comment, _actor())
        _print_run(run, args.json)
        return 0

    return cmd


def cmd_dispatch(args: argparse.Namespace) -> int:
    _print_run(_store(args).dispatch_run(args.run_id, args.reason, _actor()), args.json)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    page = _store(args).list_audit(run_id=args.run_id, limit=args.limit)
    if args.json:
        print(output.dump(page))
        return 0
    for row in reversed(page["audit"]):
        where = row["run_id"] or (row.get("details") or {}).get("runner_id") or "-"
        why = f"  {row['reason']}" if row.get("reason") else ""
        print(f"{row['at']}  {row['actor']:<24} {row['action']:<18} {where}{why}")
    return 0


def cmd_runners_list(args: argparse.Namespace) -> int:
    page = _store(args).list_runners(include_stopped=not args.active)
    if args.json:
        print(output.dump(page))
        return 0
    print(f"{'ID':<30} {'HOST':<16} {'STATUS':<9} {'HEALTH':<8} {'RUNNING':>7}  "
          f"{'HEARTBEAT':<12} QUEUES")  # fmt: skip
    for r in page["runners"]:
        print(f"{r['id']:<30} {r['hostname'][:16]:<16} {r['status']:<9} {r['health']:<8} "
              f"{r['running']:>7}  {str(r['heartbeat_age_s']) + 's ago':<12} "
              f"{','.join(r['queues'])}")  # fmt: skip
    return 0


def cmd_runners_deregister(args: argparse.Namespace) -> int:
    runner = _store(args).request_deregister(args.runner_id, _actor(), args.reason)
    if runner["status"] == "stopped":
        print(f"runner {args.runner_id} had stopped heartbeating: marked stopped")
    else:
        print(f"runner {args.runner_id} will drain and exit at its next heartbeat")
    return 0


def register_runs(rsub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The control commands under `loopdeck runs`."""

    def add(name: str, help_: str, handler: Callable[[argparse.Namespace], int],
            json_flag: bool = True) -> argparse.ArgumentParser:  # fmt: skip
        p: argparse.ArgumentParser = rsub.add_parser(name, help=help_, description=help_)
        p.add_argument("run_id")
        if json_flag:
            p.add_argument("--json", action="store_true")
        p.set_defaults(handler=handler)
        return p

    p = add("restart", "a new run from this run's config snapshot and inputs", cmd_restart, False)
    p.add_argument("--reason")
    common(p)
    p = add("reset", "take a (stuck) run back and queue it again; see docs/runbook.md", cmd_reset)
    p.add_argument("--to-step", metavar="STEP",
                   help="run this step and everything after it again (loops: produce, "
                   "evaluate, revise or stage#attempt)")  # fmt: skip
    p.add_argument("--clear-results", action="store_true",
                   help="also delete the reset tasks' artifacts (no --to-step: start over)")  # fmt: skip
    p.add_argument("--reason", required=True)
    common(p)
    p = add("rerun", "re-run failed or cancelled tasks of a finished run", cmd_rerun)
    p.add_argument("--task", action="append", metavar="TASK_ID")
    p.add_argument("--step", action="append", metavar="STEP")
    p.add_argument("--reason")
    p.add_argument("--no-dispatch", action="store_true",
                   help="reset the tasks but hold the run until `loopdeck runs dispatch`")  # fmt: skip
    p.add_argument("--plan", action="store_true", help="only show what would run again")
    common(p)
    for decision, verb in (("approve", "approve"), ("reject", "reject")):
        p = add(verb, f"{verb} a step waiting at its approval gate", _decide(decision))
        p.add_argument("step")
        p.add_argument("--comment")
        common(p)
    p = add("dispatch", "release a held run (rerun --no-dispatch) to the queue", cmd_dispatch)
    p.add_argument("--reason")
    common(p)
    p = rsub.add_parser("audit", help="the audit log (of one run, or of everything)")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(handler=cmd_audit)


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """`loopdeck runners …`."""
    runners = sub.add_parser("runners", help="list runners or deregister one")
    rsub = runners.add_subparsers(dest="runners_command", metavar="ACTION")
    rsub.required = True
    p = rsub.add_parser("list", help="the runner registry with health")
    p.add_argument("--active", action="store_true", help="hide stopped runners")
    p.add_argument("--json", action="store_true")
    common(p)
    p.set_defaults(handler=cmd_runners_list)
    p = rsub.add_parser("deregister", help="ask a runner to drain and exit")
    p.add_argument("runner_id")
    p.add_argument("--reason")
    common(p)
    p.set_defaults(handler=cmd_runners_deregister)

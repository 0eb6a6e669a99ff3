"""`loopdeck`: the command line, and the one composition root that starts both the API and
runners. It imports `api` and `runner` lazily, inside the commands that need them.

Exit codes: 0 ok, 1 failure (a run failed, the database is unreachable, a daemon died),
2 usage (a bad flag, input, workflow file or id). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__
from ..errors import (
    ConfigError,
    InvalidInput,
    LoopdeckError,
    NotFound,
    WorkflowFileError,
)
from ..settings import Settings

USAGE_ERRORS = (InvalidInput, WorkflowFileError, ConfigError, NotFound)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("database and timing (flags override LOOPDECK_* variables)")
    g.add_argument("--database-url", metavar="URL",
                   help="LOOPDECK_DATABASE_URL (default sqlite:///./loopdeck.db)")  # fmt: skip
    g.add_argument("--heartbeat-interval", type=float, metavar="S",
                   help="LOOPDECK_HEARTBEAT_INTERVAL, seconds (default 10)")  # fmt: skip
    g.add_argument("--stall-after", type=float, metavar="S",
                   help="LOOPDECK_STALL_AFTER, seconds (default 120)")  # fmt: skip
    g.add_argument("--poll-interval", type=float, metavar="S",
                   help="LOOPDECK_POLL_INTERVAL, seconds (default 1)")  # fmt: skip
    g.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])  # fmt: skip
    g.add_argument("--log-format", default="plain", choices=["plain", "json"])


def build_parser() -> Parser:
    parser = Parser(
        prog="loopdeck",
        description="Run long, multi-stage workflows on machines you control; "
        "watch and steer them from a stateless HTTP API.",
        epilog="Quick start: `loopdeck up`, then open the printed URL. "
        "Docs: docs/ in the repository.",
    )
    parser.add_argument("--version", action="version", version=f"loopdeck {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    from . import admin, control, retention, runs, serve

    serve.register(sub, _common)
    runs.register(sub, _common)
    control.register(sub, _common)
    admin.register(sub, _common)
    retention.register(sub, _common)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    base = Settings.from_env()
    config = getattr(args, "config", None)
    return base.with_overrides(
        database_url=getattr(args, "database_url", None),
        heartbeat_interval=getattr(args, "heartbeat_interval", None),
        stall_after=getattr(args, "stall_after", None),
        poll_interval=getattr(args, "poll_interval", None),
        config_files=tuple(os.path.abspath(c) for c in config) if config else None,
    )


def fail(message: str, code: int = 1) -> int:
    print(f"loopdeck: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from . import logs

    logs.configure(getattr(args, "log_level", "info"), getattr(args, "log_format", "plain"))
    try:
        code: int = args.handler(args)
        return code
    except USAGE_ERRORS as exc:
        return fail(exc.message, 2)
    except LoopdeckError as exc:
        return fail(exc.message, 1)
    except KeyboardInterrupt:
        return 130

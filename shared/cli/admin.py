"""`loopdeck db upgrade` and `loopdeck workflows publish|list`."""

from __future__ import annotations

import argparse
import getpass
import socket
from collections.abc import Callable
from typing import Any


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from ..db import make_engine
    from ..migrate import upgrade
    from . import settings_from

    settings = settings_from(args)
    engine = make_engine(settings.database_url, settings)
    revision = upgrade(engine)
    print(f"schema at revision {revision}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    import os

    from ..store import Store
    from ..workflows import load_files
    from . import settings_from

    files = [os.path.abspath(f) for f in args.files]
    workflows = load_files(files)
    store = Store.from_settings(settings_from(args), retry_seconds=5.0)
    who = f"{getpass.getuser()}@{socket.gethostname()} (cli)"
    for row in store.publish_workflows(workflows, published_by=who):
        state = "published" if row["changed"] else "unchanged"
        print(f"{row['name']:<20} {row['version']}  {state}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ..store import Store
    from . import settings_from

    store = Store.from_settings(settings_from(args), retry_seconds=5.0)
    for wf in store.list_workflows()["workflows"]:
        print(f"{wf['name']:<20} {wf['kind']:<6} {wf['version']}  {wf['description'] or ''}")
    return 0


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    db = sub.add_parser("db", help="database schema")
    dsub = db.add_subparsers(dest="db_command", metavar="ACTION")
    dsub.required = True
    p = dsub.add_parser("upgrade", help="create or upgrade the schema (Alembic)")
    common(p)
    p.set_defaults(handler=cmd_db_upgrade)

    wf = sub.add_parser("workflows", help="publish or list workflow definitions")
    wsub = wf.add_subparsers(dest="workflows_command", metavar="ACTION")
    wsub.required = True
    p = wsub.add_parser("publish", help="validate workflow files and publish their definitions")
    p.add_argument("files", nargs="+", metavar="FILE")
    common(p)
    p.set_defaults(handler=cmd_publish)
    p = wsub.add_parser("list", help="published definitions")
    common(p)
    p.set_defaults(handler=cmd_list)

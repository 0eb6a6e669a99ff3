"""The app as a serverless function builds it (deploy/vercel/api/index.py, deploy/lambda/).

Importing a function module must do no I/O: `create_app` only reads the environment, and the
store (engine, pool) comes up on the first request that needs it (api/context.py), because a
platform may run the app without a lifespan. Functions default to `LOOPDECK_DB_POOL=null` — a
connection per use, for a pooler in front of PostgreSQL (PgBouncer, Supabase's, Neon's) —
since a pool kept in a frozen function instance holds connections nobody uses.
"""

from __future__ import annotations

import logging
import os

from starlette.applications import Starlette

from shared.db import dialect_of
from shared.settings import Settings

from .app import create_app

log = logging.getLogger(__name__)


def serverless_app() -> Starlette:
    env = dict(os.environ)
    env["LOOPDECK_DB_POOL"] = env.get("LOOPDECK_DB_POOL") or "null"
    settings = Settings.from_env(env)
    if dialect_of(settings.database_url) == "sqlite":
        # Each function instance would have its own file: runs created on one are missing
        # on the next, and runners never see them. Fine for `vercel dev`, never deployed.
        log.warning(
            "LOOPDECK_DATABASE_URL is a SQLite file: serverless instances do not share it; "
            "use PostgreSQL or libSQL/Turso (docs/deploy.md)"
        )
    return create_app(settings)

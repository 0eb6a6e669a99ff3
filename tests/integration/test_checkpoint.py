"""SQLite WAL checkpoints in a thread of the API process (shared/checkpoint.py), on a real file."""

from __future__ import annotations

import os
import threading

from sqlalchemy import text

from shared.checkpoint import SAFETY_NET_PAGES
from shared.settings import Settings
from shared.store import Store
from shared.workflows import load_files

from ..helpers import EXAMPLES, wait_for


def _autocheckpoint(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("PRAGMA wal_autocheckpoint")).scalar_one())


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "loopdeck-wal-checkpoint"]


def test_a_store_with_background_checkpoints_copies_the_log_without_a_commit_doing_it(fresh_db):
    path = fresh_db.removeprefix("sqlite:///")
    store = Store.from_settings(Settings(database_url=fresh_db), background_checkpoint=True)
    try:
        assert store.checkpointer is not None and _checkpoint_threads()
        # Commits leave checkpoints to the thread until the log is this long.
        assert _autocheckpoint(store) == SAFETY_NET_PAGES
        store.publish_workflows(load_files([EXAMPLES]), "tests")
        before = os.path.getsize(path)
        # Far below the commits' own threshold: only the thread copies the log into the
        # database file, which grows as it does.
        for i in range(400):
            store.create_run("essay", {"topic": f"{i} " + "x" * 190})
        grown = wait_for(
            lambda: os.path.getsize(path) > before + 256 * 1024,
            timeout=20,
            what="the database file to take the log's pages",
        )
        assert grown
    finally:
        store.dispose()
    assert store.checkpointer is None
    wait_for(lambda: not _checkpoint_threads(), timeout=10, what="the thread to stop")


def test_a_store_without_them_keeps_sqlites_own(fresh_db):
    store = Store.from_settings(Settings(database_url=fresh_db))
    try:
        assert store.checkpointer is None
        assert _autocheckpoint(store) == 1000
    finally:
        store.dispose()

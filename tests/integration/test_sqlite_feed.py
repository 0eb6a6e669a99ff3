"""The SQLite change feed an idle runner sleeps on: real database files, a real second process
writing them, the machine's inotify."""

import sqlite3
import subprocess
import sys

import pytest

from shared.store.feed import DirectoryWatch, SqliteDataVersionFeed

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")

WRITE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("INSERT INTO t VALUES (1)")
conn.commit()
"""


@pytest.fixture
def db(tmp_path):
    path = str(tmp_path / "feed.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    yield path
    conn.close()


def _write_from_another_process(path: str) -> None:
    subprocess.run([sys.executable, "-c", WRITE, path], check=True, timeout=30)


def test_a_commit_in_another_process_wakes_the_feed(db):
    feed = SqliteDataVersionFeed(db)
    try:
        assert feed._watch is not None, "this machine has inotify: the feed must use it"
        assert feed.wait(0.05) is False
        _write_from_another_process(db)
        assert feed.wait(30) is True
        assert feed.wait(0.05) is False  # seen once
    finally:
        feed.close()


def test_an_idle_feed_sleeps_instead_of_polling(db, monkeypatch):
    feed = SqliteDataVersionFeed(db, interval=0.010)
    reads = []
    real_read = feed._read
    monkeypatch.setattr(feed, "_read", lambda: reads.append(1) or real_read())
    try:
        assert feed.wait(0.5) is False
        # Polling every 10 ms would have read the version about fifty times.
        assert len(reads) <= 2, len(reads)
    finally:
        feed.close()


def test_without_inotify_the_feed_polls_the_version(db, monkeypatch):
    monkeypatch.setattr(DirectoryWatch, "open", classmethod(lambda cls, path: None))
    feed = SqliteDataVersionFeed(db, interval=0.005)
    try:
        assert feed._watch is None
        _write_from_another_process(db)
        assert feed.wait(30) is True
    finally:
        feed.close()


def test_writes_to_other_files_beside_the_database_are_not_ours(db, tmp_path):
    watch = DirectoryWatch.open(db)
    assert watch is not None
    try:
        (tmp_path / "unrelated.log").write_text("x")
        assert watch.wait(0.2) is False
        _write_from_another_process(db)
        assert watch.wait(30) is True
    finally:
        watch.close()

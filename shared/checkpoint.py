"""SQLite WAL checkpoints in a thread of their own, for a process that answers requests.

In WAL mode SQLite copies the log back into the database file (a checkpoint) from inside
whichever commit finds the log past `wal_autocheckpoint` pages (1,000 by default): that commit,
and every request queued behind the one writer, waits for the copy and its fsync. Under a
stream of creates through the API that was the whole p99 (bench/RESULTS.md, eleventh run:
19.1 / 18.4 ms with checkpoints in the commits, 7.6 / 7.3 ms with none). A process that starts a
`WalCheckpointer` checkpoints every `BUSY_INTERVAL` while the log grows and every
`IDLE_INTERVAL` otherwise, in PASSIVE mode (it never waits for a writer or reader, and copies
what it can), and raises its connections' own threshold to `SAFETY_NET_PAGES`: should this
thread fall behind or stop, commits still checkpoint, only later. sqlite3 releases the GIL
while the copy runs. Other processes on the same file keep the default threshold.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

log = logging.getLogger(__name__)

BUSY_INTERVAL = 0.05
IDLE_INTERVAL = 1.0
SAFETY_NET_PAGES = 10_000  # ~40 MB of log at 4 KiB pages


class WalCheckpointer:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="loopdeck-wal-checkpoint", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    def checkpoint(self) -> tuple[int, int]:
        """One PASSIVE checkpoint: (frames in the log, how many of them are in the database
        file now); (-1, -1) when another checkpoint was running."""
        raw = self._engine.raw_connection()
        try:
            # Straight on the driver's connection, which is in autocommit (db.py): a
            # checkpoint cannot run inside a transaction of its own connection.
            row = raw.driver_connection.execute(  # type: ignore[union-attr]
                "PRAGMA wal_checkpoint(PASSIVE)"
            ).fetchone()
        finally:
            raw.close()
        _busy, in_log, copied = row
        return int(in_log), int(copied)

    def _loop(self) -> None:
        last_log = -1
        delay = IDLE_INTERVAL
        while not self._stop.wait(delay):
            try:
                in_log, copied = self.checkpoint()
            except Exception as exc:  # noqa: BLE001 - retried; commits checkpoint meanwhile
                log.warning("WAL checkpoint failed: %s", exc, extra={"action": "wal_checkpoint"})
                delay = IDLE_INTERVAL
                continue
            # The log grew (or restarted) since the last look: writes are coming in.
            delay = BUSY_INTERVAL if in_log != last_log else IDLE_INTERVAL
            last_log = in_log

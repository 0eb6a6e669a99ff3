"""Time-sortable identifiers: `<prefix>_` + 26 Crockford base32 characters (ULID layout).

The first 10 characters encode the creation time in milliseconds, so ids sort by creation
time and serve as keyset-pagination cursors. The host clock is fine here: ids order rows for
display; they never decide liveness. Within one process ids are monotonic (ULID's monotonic
mode): an id made in the same millisecond as the previous one, or after the clock stepped
back, is that one plus one, so a process's ids sort in the order it made them.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last = 0
_RANDOM_BITS = 80


_pool = b""
_at = 0


def _random80() -> int:
    """80 random bits from the OS, read 4 KiB at a time: one getrandom call per id was a
    visible cost (and a GIL hand-off) on the runner's claim path."""
    global _pool, _at
    with _lock:
        if _at + 10 > len(_pool):
            _pool, _at = os.urandom(4096), 0
        start, _at = _at, _at + 10
    return int.from_bytes(_pool[start : start + 10], "big")


def _forget_pool() -> None:
    # A forked child must not hand out its parent's remaining random bytes as well.
    global _pool, _at
    _pool, _at = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def _next_value(ms: int) -> int:
    global _last
    value = (ms << _RANDOM_BITS) | _random80()
    with _lock:
        if value <= _last and (_last >> _RANDOM_BITS) >= ms:
            value = _last + 1
        _last = value
    return value


def new_id(prefix: str, now_ms: int | None = None) -> str:
    if now_ms is None:
        value = _next_value(int(time.time() * 1000))
    else:  # an explicit time (tests, back-dating) is taken as given
        value = (now_ms << _RANDOM_BITS) | _random80()
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def id_time_ms(identifier: str) -> int:
    """The creation time encoded in an id made by `new_id`."""
    body = identifier.split("_", 1)[1][:10]
    value = 0
    for ch in body:
        value = value * 32 + _ALPHABET.index(ch)
    return value

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


def _next_value(ms: int) -> int:
    global _last
    value = (ms << _RANDOM_BITS) | int.from_bytes(os.urandom(10), "big")
    with _lock:
        if value <= _last and (_last >> _RANDOM_BITS) >= ms:
            value = _last + 1
        _last = value
    return value


def new_id(prefix: str, now_ms: int | None = None) -> str:
    if now_ms is None:
        value = _next_value(int(time.time() * 1000))
    else:  # an explicit time (tests, back-dating) is taken as given
        value = (now_ms << _RANDOM_BITS) | int.from_bytes(os.urandom(10), "big")
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

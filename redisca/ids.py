"""Time-ordered ids, unique across threads and processes (redisca 1.x's generators).

redisca 1.x built ids from the clock and a per-process counter, so two
processes (or a forked worker and its parent) could hand out the same id.
Here every id carries a random per-process token, renewed after ``fork()``.

Bit layout of an id (``intid()`` returns it as an int)::

    | milliseconds since the Unix epoch | process token | counter |
    |        bits 56 and up (48 used)    |   32 bits     | 24 bits |

- The counter restarts at 0 each millisecond; 2**24 ids per millisecond per
  process. When it runs out, the id borrows the next millisecond.
- If the clock goes backwards, ids keep the last millisecond used, so the ids
  of one process always increase.
- Ids of different processes are ordered by millisecond; within one
  millisecond their order is arbitrary (by token).

``hexid()`` is the same number as 26 lowercase hex digits, zero padded, so
sorting hexids as strings sorts them by time (until the year 10889).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from typing import NamedTuple

TOKEN_BITS = 32
COUNTER_BITS = 24
TIME_SHIFT = TOKEN_BITS + COUNTER_BITS
HEX_WIDTH = 26
_COUNTER_MAX = (1 << COUNTER_BITS) - 1
_TOKEN_MASK = (1 << TOKEN_BITS) - 1


class IdParts(NamedTuple):
    ms: int
    token: int
    counter: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


#: ``hexid``'s format, built once: a 10,000-user insert makes 10,000 ids.
_HEX_FORMAT = f"%0{HEX_WIDTH}x"


class _Generator:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.token = secrets.randbits(TOKEN_BITS)
        self.last_ms = 0
        self.counter = 0

    def next(self) -> int:
        with self.lock:
            now = _now_ms()
            if now > self.last_ms:
                self.last_ms, self.counter = now, 0
            elif self.counter < _COUNTER_MAX:
                self.counter += 1  # same millisecond, or the clock went backwards
            else:
                self.last_ms, self.counter = self.last_ms + 1, 0
            return (self.last_ms << TIME_SHIFT) | (self.token << COUNTER_BITS) | self.counter

    def after_fork_in_child(self) -> None:
        # The parent may have held the lock while forking, and the child must
        # not reuse the parent's token, or both would hand out the same ids.
        self.lock = threading.Lock()
        old = self.token
        while self.token == old:
            self.token = secrets.randbits(TOKEN_BITS)


_generator = _Generator()
os.register_at_fork(after_in_child=_generator.after_fork_in_child)


def intid() -> int:
    """A new id as an int (see the module docstring for its layout)."""
    return _generator.next()


def hexid() -> str:
    """A new id as 26 lowercase hex digits; string order is time order."""
    return _HEX_FORMAT % _generator.next()


def split_id(value: int | str) -> IdParts:
    """The parts of an id made by :func:`intid` or :func:`hexid` (e.g. its time)."""
    number = int(value, 16) if isinstance(value, str) else value
    return IdParts(
        ms=number >> TIME_SHIFT,
        token=(number >> COUNTER_BITS) & _TOKEN_MASK,
        counter=number & _COUNTER_MAX,
    )


__all__ = ["IdParts", "hexid", "intid", "split_id"]

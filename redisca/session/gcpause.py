"""Pausing the cyclic garbage collector while a session builds many objects at once.

Loading or committing thousands of entities creates a few container objects
each (the instance, its state, its snapshot), all of them long-lived. CPython's
collector counts allocations, not garbage, so such a burst sets off full
collections that walk every object in the process and free nothing: at
100,000 loaded users they took a third of the load's time. Bulk operations
pause it (as Mercurial's ``util.nogc`` does); the objects are collected, or
rather promoted, by the first collection after the pause.

Pauses nest and may overlap across threads: the collector is enabled again
when the last pause ends, and only if it was enabled when the first began (an
application that disabled it keeps it disabled).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from contextlib import AbstractContextManager

#: Below this many objects an operation runs with the collector as it is.
BULK = 1000

_lock = threading.Lock()
_pauses = 0
_reenable = False


class _Pause:
    """The collector off from ``__enter__`` to ``__exit__`` (a class: cheaper than a
    generator-based context manager, and bulk operations are the hot paths)."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _pauses, _reenable
        with _lock:
            if _pauses == 0:
                _reenable = gc.isenabled()
                gc.disable()
            _pauses += 1

    def __exit__(self, *exc: object) -> None:
        global _pauses, _reenable
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _reenable:
                _reenable = False
                gc.enable()


_PAUSE = _Pause()
_AS_IS = contextlib.nullcontext()


def paused(size: int) -> AbstractContextManager[None]:
    """Pause the collector for an operation on ``size`` objects, if that is many.

    Below :data:`BULK` this is a shared do-nothing context manager: a lookup of one
    entity pays no more than a method call for it.
    """
    return _AS_IS if size < BULK else _PAUSE


__all__ = ["BULK", "paused"]

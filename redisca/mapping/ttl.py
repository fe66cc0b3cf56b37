"""Times to live: ``registry.mapped(ttl=...)`` and ``session.expire(obj, ttl)``.

A time to live is kept as whole milliseconds, the unit of the instants in ``H#exp``
(see :attr:`redisca.mapping.keys.KeyLayout.expiry`), so that a TTL the user gives in
seconds or as a :class:`~datetime.timedelta` is checked once, here, before anything
reaches Redis.
"""

from __future__ import annotations

import math
from datetime import timedelta

from ..errors import MappingError, ValidationError

#: The longest time to live accepted: about 285,000 years in ms still fits a double
#: exactly, but a TTL past the year 9999 cannot be shown as an ``expires_at`` datetime.
MAX_TTL_MS = 250_000 * 365 * 86_400_000 // 100


def ttl_ms(ttl: object, owner: str, *, mapping: bool = False) -> int:
    """``ttl`` (seconds as an int or float, or a timedelta) in whole milliseconds, at
    least 1. Anything else, zero, negative, NaN or absurdly long is refused with a
    message naming ``owner``: a :class:`~redisca.MappingError` at mapping time, else a
    :class:`~redisca.ValidationError` (a ``ValueError``)."""
    error = MappingError if mapping else ValidationError
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise error(
            f"{owner}: a time to live is seconds (int or float) or a timedelta, "
            f"not {type(ttl).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise error(f"{owner}: a time to live must be positive, not {ttl!r}")
    ms = max(1, round(seconds * 1000))
    if ms > MAX_TTL_MS:
        raise error(f"{owner}: a time to live of {ttl!r} is too long")
    return ms


__all__ = ["MAX_TTL_MS", "ttl_ms"]

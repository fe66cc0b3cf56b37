"""Process-wide defaults (redisca 1.x's ``conf``): set ``redisca.conf.db = Redis(...)``.

This module is itself the ``conf`` object, so ``redisca.conf.db`` needs no
other holder. A :class:`~redisca.Session` made without a client asks
:func:`default_client`: ``conf.db`` if the application set one, else a client
for ``$REDIS_URL``, else one for ``redis://localhost:6379/0``. The URL client
is made once per URL and shared, so sessions made in a loop share one pool.
"""

from __future__ import annotations

import os
import threading

from redis import Redis

DEFAULT_URL = "redis://localhost:6379/0"


#: The default client of sessions, ``Key`` and ``Hash`` made without one.
db: Redis | None = None

_url_clients: dict[str, Redis] = {}
_lock = threading.Lock()


def default_client() -> Redis:
    """The client used where no bind was given (see the module docstring)."""
    if db is not None:
        return db
    url = os.environ.get("REDIS_URL") or DEFAULT_URL
    with _lock:
        client = _url_clients.get(url)
        if client is None:
            client = _url_clients[url] = Redis.from_url(url)
        return client


__all__ = ["DEFAULT_URL", "db", "default_client"]

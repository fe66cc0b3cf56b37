"""Process-wide defaults (redisca 1.x's ``conf``): set ``redisca.conf.db = Redis(...)``.

This module is itself the ``conf`` object, so ``redisca.conf.db`` needs no
other holder. A :class:`~redisca.Session` made without a client asks
:func:`default_client`: ``conf.db`` if the application set one (a ``redis.Redis`` or a
``redis.cluster.RedisCluster``), else a client for ``$REDIS_URL``, else one for
``redis://localhost:6379/0``. With ``$REDISCA_CLUSTER`` true, that URL names one node of
a Redis Cluster and the client is a ``RedisCluster``. The URL client is made once per
URL and shared, so sessions made in a loop share one pool.

:func:`make_client` is the one place a client is made from a URL and the cluster flag:
the command line and the Flask extension use it too.
"""

from __future__ import annotations

import os
import threading
from typing import Any, TypeAlias

from redis import Redis
from redis.cluster import RedisCluster
from redis.connection import parse_url
from redis.exceptions import RedisClusterException, RedisError

from .errors import OperationalError, ValidationError

DEFAULT_URL = "redis://localhost:6379/0"
#: The environment variable (and Flask config key) that says the URL names a cluster node.
CLUSTER_ENV = "REDISCA_CLUSTER"

_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"", "0", "false", "no"})

#: What redisca takes wherever it takes a client: one server, or a Redis Cluster
#: (whose commands redisca routes by hash slot itself).
Client: TypeAlias = Redis | RedisCluster

#: The default client of sessions, ``Key`` and ``Hash`` made without one: a
#: ``redis.Redis``, or a ``redis.cluster.RedisCluster`` (routed by hash slot).
db: Client | None = None

_url_clients: dict[tuple[str, bool], Client] = {}
_lock = threading.Lock()


def cluster_flag(value: object, name: str = CLUSTER_ENV) -> bool:
    """Read an on/off setting such as ``$REDISCA_CLUSTER``.

    ``1``/``true``/``yes`` (any case) are on; ``0``/``false``/``no``, an empty string
    and ``None`` (unset) are off; ``True``/``False`` and the ints 1 and 0 (a Flask config,
    perhaps loaded from JSON) as themselves. Anything else is refused with
    :class:`~redisca.ValidationError` naming the setting: a typo must not quietly
    connect as a plain client to a cluster node (or the other way round).
    """
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValidationError(
        f"{name}={value!r}: expected 1, true or yes (a Redis Cluster) or 0, false, no or "
        "empty (one server)",
        field=name,
        value=value,
    )


def make_client(url: str | None, *, cluster: bool = False, **options: Any) -> Client:
    """A new client for ``url``: ``redis.Redis.from_url``, or with ``cluster``
    ``redis.cluster.RedisCluster.from_url`` (``url`` names any node; the client finds
    the others). ``options`` go to ``from_url``; with ``url=None`` they alone make the
    client (``Redis(**options)``, ``RedisCluster(**options)``). A cluster has only
    database 0: another (in the URL or a ``db`` option) is a
    :class:`~redisca.ValidationError`.

    A cluster client connects here, to learn the slot map: an unreachable node or a
    server that is no cluster node raises :class:`~redisca.OperationalError` now
    (redis-py's error in ``.orig``), not at first use. A plain client connects at its
    first command, as redis-py's do.
    """
    if not cluster:
        return Redis.from_url(url, **options) if url is not None else Redis(**options)
    _only_db_0(url, options)
    try:
        made = RedisCluster.from_url(url, **options) if url is not None else RedisCluster(**options)
    except (RedisClusterException, RedisError) as exc:  # the first is no RedisError
        # Not the URL itself: it may hold a password.
        raise OperationalError(f"cannot make a Redis Cluster client: {exc}", exc) from exc
    return made


def _only_db_0(url: str | None, options: dict[str, Any]) -> None:
    """A cluster has database 0 alone: another is a :class:`~redisca.ValidationError`
    (redis-py's own refusal is an error of no family); an explicit ``db=0`` option is
    dropped, since ``RedisCluster`` refuses any ``db`` argument."""
    db = options.pop("db", 0)
    if url is not None:  # the URL's wins, as in from_url (redis-py leaves it unannotated)
        db = parse_url(url).get("db", db)  # type: ignore[no-untyped-call]
    if db != 0:
        raise ValidationError(
            f"a Redis Cluster has database 0 only, not {db!r}", field="db", value=db
        )


def default_client() -> Client:
    """The client used where no bind was given (see the module docstring)."""
    if db is not None:
        return db
    url = os.environ.get("REDIS_URL") or DEFAULT_URL
    cluster = cluster_flag(os.environ.get(CLUSTER_ENV))
    with _lock:
        client = _url_clients.get((url, cluster))
        if client is None:
            client = _url_clients[url, cluster] = make_client(url, cluster=cluster)
        return client


__all__ = [
    "CLUSTER_ENV",
    "DEFAULT_URL",
    "cluster_flag",
    "db",
    "default_client",
    "make_client",
]

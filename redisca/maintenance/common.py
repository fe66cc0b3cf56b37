"""What check, reindex and stats share: choosing models, scanning keys, reading replies.

Every read goes through :mod:`redisca.session.executor` on a pooled connection,
undecoded, so clients made with ``decode_responses`` on or off, RESP2 or RESP3,
all look the same here. Keys are found with ``SCAN`` (never ``KEYS``), page by
page, and whatever is read about a page goes out as one pipelined round trip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from ..conf import Client, default_client
from ..errors import InvalidRequestError, RediscaError
from ..mapping.keys import shard_of
from ..mapping.mapper import MappedField, Mapper, mapper_of
from ..mapping.registry import Registry
from ..session import executor, routing
from ..session.plan import Command
from ..session.rebuild import Rebuild, parse_marker

#: ``progress(model, phase, done, total)``: called as work advances (``total`` may be None).
Progress = Callable[[str, str, int, "int | None"], None]


class MaintenanceError(RediscaError, RuntimeError):
    """A maintenance task cannot run (a reindex already running, a lost marker...)."""


class UnknownName(MaintenanceError, LookupError):
    """A model or field named to a task does not exist, or cannot be used for it."""


def resolve_client(client: Client | None) -> Client:
    return client if client is not None else default_client()


def select_mappers(
    registry_or_classes: Any,
    models: Iterable[Any] | None = None,
    *,
    sharded: bool = False,
) -> list[Mapper]:
    """The mappers to work on: a registry's, or those of the classes given; ``models``
    narrows them by class, class name or prefix. ``sharded``: the task walks a sharded
    model shard by shard (:func:`shard_views`); without it such a model is refused."""
    if isinstance(registry_or_classes, Registry):
        mappers = list(registry_or_classes)
    elif isinstance(registry_or_classes, type | Mapper):
        mappers = [_mapper(registry_or_classes)]
    else:
        mappers = [_mapper(item) for item in registry_or_classes]
    if models is None:
        return _covered(mappers, sharded)
    chosen: list[Mapper] = []
    for wanted in [models] if isinstance(models, str | type) else models:
        found = [m for m in mappers if _matches(m, wanted)]
        if not found:
            names = ", ".join(sorted(m.class_.__name__ for m in mappers)) or "none"
            raise UnknownName(f"no mapped model {wanted!r} (models: {names})")
        chosen += [m for m in found if m not in chosen]
    return _covered(chosen, sharded)


def _covered(mappers: list[Mapper], sharded: bool) -> list[Mapper]:
    """Refuse the sharded models of a task that does not cover them: ``migrate`` (a
    sharded model came after hash tags: it has no layout before them to move)."""
    for mapper in mappers:
        if mapper.shards > 1 and not sharded:
            raise MaintenanceError(
                f"{model_name(mapper)} has {mapper.shards} shards: migrate does not cover "
                "sharded models; name the other models to run it on those"
            )
    return mappers


def shard_views(mapper: Mapper) -> list[Mapper]:
    """The mapper once per shard, each with its shard's key layout: a task runs on each
    as on a model of one slot (every key of an entity without unique fields is in its
    id's shard), on the master serving that shard. ``[mapper]`` for a model of one
    shard (:meth:`Mapper.shard_views`)."""
    return mapper.shard_views()


T = TypeVar("T")

#: Most shards a task works on at once: enough to keep every master of a usual cluster
#: busy (shards spread evenly over the masters), few enough threads for a small client.
PARALLEL_SHARDS = 8


def each_shard(
    mapper: Mapper,
    work: Callable[[int, Mapper, Progress | None], T],
    progress: Progress | None,
) -> list[T]:
    """``work(k, view, progress)`` for every shard view of a model, in shard order.
    The shards of a sharded model are worked on in parallel threads, up to
    :data:`PARALLEL_SHARDS` at once: each has keys of its own on its own master, and
    the time of a task is mostly the round trips and the masters' work, which overlap.
    Their progress is reported as one count for the model (``all shards``)."""
    views = shard_views(mapper)
    if len(views) == 1:
        return [work(0, views[0], progress)]
    merged = None if progress is None else _ShardsProgress(progress, len(views))
    with ThreadPoolExecutor(max_workers=min(len(views), PARALLEL_SHARDS)) as pool:
        futures = [
            pool.submit(work, k, view, None if merged is None else merged.of(k))
            for k, view in enumerate(views)
        ]
        return [future.result() for future in futures]


class _ShardsProgress:
    """The progress of a model's shards worked on at once, as one running count: what
    each shard has done in each of its phases, summed, under ``"all shards"`` (one
    shard's phases interleave with the others', so a count per phase would jump)."""

    def __init__(self, progress: Progress, shards: int) -> None:
        self.progress = progress
        self.shards = shards
        self.done: dict[tuple[int, str], int] = {}
        self.lock = threading.Lock()

    def of(self, shard: int) -> Progress:
        def report(model: str, phase: str, done: int, total: int | None) -> None:
            with self.lock:
                self.done[shard, phase] = done
                self.progress(model, "all shards", sum(self.done.values()), None)

        return report


def in_shard(view: Mapper, ident: bytes) -> bool:
    """Whether an entity found in a shard view's keys belongs there (its id's shard)."""
    layout = view.layout
    return layout.shard is None or shard_of(ident, layout.shards) == layout.shard


def _mapper(item: Any) -> Mapper:
    return item if isinstance(item, Mapper) else mapper_of(item)


def _matches(mapper: Mapper, wanted: Any) -> bool:
    if isinstance(wanted, Mapper):
        return wanted is mapper
    if isinstance(wanted, type):
        return wanted is mapper.class_
    return wanted in (mapper.class_.__name__, mapper.class_.__qualname__, mapper.prefix)


def model_name(mapper: Mapper) -> str:
    return mapper.class_.__name__


def show(raw: bytes) -> str:
    """A key, id or value for people to read, whatever bytes it holds."""
    return raw.decode("utf-8", "backslashreplace")


def run(client: Client, commands: Sequence[Command]) -> list[Any]:
    """One pipelined round trip; error replies come back as ``ResponseError`` values."""
    return executor.run(client, commands)


def scan(client: Client, pattern: bytes, batch: int, pool: Any = None) -> Iterator[list[bytes]]:
    """Pages of at most ``batch`` keys matching ``pattern`` (a key may come twice), from
    one server: the client's, or the cluster master of ``pool``. A task scans through
    :class:`~redisca.maintenance.placement.Keyspace`, which picks the masters."""
    if pool is None and routing.is_cluster(client):
        raise InvalidRequestError("SCAN on a cluster goes to a master: give its pool")
    cursor: Any = b"0"
    while True:
        command = (b"SCAN", cursor, b"MATCH", pattern, b"COUNT", batch)
        with executor.connection(client, pool) as conn:
            reply = _ok(executor.roundtrip(conn, [command])[0])
        cursor, keys = reply
        for start in range(0, len(keys), batch):
            yield [bytes(k) for k in keys[start : start + batch]]
        if int(cursor) == 0:
            return


def scan_members(
    client: Client, key: bytes, kind: bytes, batch: int
) -> Iterator[list[tuple[bytes, float | None]]]:
    """Members of a set (``SSCAN``) or, with scores, of a sorted set (``ZSCAN``)."""
    cursor: Any = b"0"
    command = b"SSCAN" if kind == b"set" else b"ZSCAN"
    while True:
        cursor, items = _ok(run(client, [(command, key, cursor, b"COUNT", batch)])[0])
        if command == b"SSCAN":
            yield [(bytes(m), None) for m in items]
        else:
            flat = iter(items)
            yield [(bytes(m), to_float(s)) for m, s in zip(flat, flat, strict=True)]
        if int(cursor) == 0:
            return


def scan_hash(client: Client, key: bytes, batch: int) -> Iterator[list[tuple[bytes, bytes]]]:
    """Field/value pairs of a hash (``HSCAN``)."""
    cursor: Any = b"0"
    while True:
        cursor, items = _ok(run(client, [(b"HSCAN", key, cursor, b"COUNT", batch)])[0])
        flat = iter(items)
        yield [(bytes(f), bytes(v)) for f, v in zip(flat, flat, strict=True)]
        if int(cursor) == 0:
            return


def _ok(reply: Any) -> Any:
    if isinstance(reply, ResponseError):
        raise reply
    return reply


def type_of(reply: Any) -> bytes:
    """``TYPE``'s reply as bytes (a status reply may come decoded)."""
    return reply.encode() if isinstance(reply, str) else bytes(reply)


def to_float(reply: Any) -> float:
    """A score as RESP2 (a bulk string) or RESP3 (a double) gives it."""
    return float(reply)


def read_marker(client: Client, mapper: Mapper) -> Rebuild | None:
    reply = run(client, [(b"LRANGE", mapper.layout.marker, 0, -1)])[0]
    if isinstance(reply, ResponseError):
        return None  # not a list: not a marker redisca wrote (check reports the key)
    return parse_marker(reply)


def by_hash_field(mapper: Mapper) -> dict[bytes, MappedField]:
    return {f.hash_field: f for f in mapper.fields}


class Ticker:
    """Calls a progress callback at most every ``every`` seconds (and at the end)."""

    def __init__(
        self, progress: Progress | None, model: str, phase: str, total: int | None = None
    ) -> None:
        self.progress = progress
        self.model = model
        self.phase = phase
        self.total = total
        self.done = 0
        self._last = 0.0
        if progress is not None:
            progress(model, phase, 0, total)  # the phase starts: rates count from here

    def add(self, n: int, every: float = 0.2) -> None:
        self.done += n
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last >= every:
            self._last = now
            self.progress(self.model, self.phase, self.done, self.total)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.model, self.phase, self.done, self.total)


__all__ = [
    "MaintenanceError",
    "Progress",
    "Ticker",
    "UnknownName",
    "by_hash_field",
    "each_shard",
    "in_shard",
    "model_name",
    "read_marker",
    "resolve_client",
    "run",
    "scan",
    "scan_hash",
    "scan_members",
    "select_mappers",
    "shard_views",
    "show",
    "to_float",
    "type_of",
]

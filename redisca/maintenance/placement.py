"""Where a maintenance task finds a model's keys: one server, or a Redis Cluster.

On a cluster every key of a model carries the model's hash tag first, so all of them
live in one slot, on the master serving it: a ``SCAN`` of that master finds them all,
and the task's transactions (check's snapshots, reindex's pages) go there. The layout
before hash tags (``P:*``, ``P#*``: what ``migrate`` moves, and ``check`` and ``stats``
report) spreads a model's keys over every slot: those scans visit every master.

A slot being migrated (``CLUSTER SETSLOT ... MIGRATING``/``IMPORTING``) has its keys
on two masters, and they move while a ``SCAN`` walks:

- **the model's own slot: refused.** A task whose model's slot is being migrated when
  it starts, or has moved or started migrating by the time it ends, raises
  :class:`~redisca.maintenance.MaintenanceError` naming the slot and the nodes: a
  snapshot or a reindex page is a ``WATCH``/``MULTI`` on one node, and a result read
  from half the keys is worth nothing. Run the task again once the migration is over;
- **other slots (the old layout's scans): covered.** Every master is scanned, each
  migration's source before its target, so a key that ``MIGRATE`` moves meanwhile is
  found on one side or the other (it stays on the source until the target holds it).
  A pass during which a migration started, or a slot moved other than as a migration
  seen at the start said, is refused like the above; so are migrations both ways
  between two masters, which no order covers.

A plain client (``redis.Redis``) on a cluster node sees one node's keys only: a task
refuses it at once with :class:`~redisca.ClusterNodeError` (never a partial count).
A slot moved away and back between the two looks of a task goes unseen.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from ..conf import Client
from ..errors import ClusterNodeError
from ..mapping.mapper import Mapper
from ..session import executor, routing
from ..session.plan import Command
from .common import MaintenanceError, model_name, scan

#: Characters that make a ``SCAN MATCH`` pattern match more than one text.
_GLOB = re.compile(rb"[*?\[\]\\]")
#: A slot in ``CLUSTER NODES``: ``5``, ``0-5460``, ``[5->-<id>]``, ``[5-<-<id>]``.
SLOTS = 16384
_MIGRATING = re.compile(r"\[(\d+)-([<>])-([0-9a-f]+)\]")


class Migration(NamedTuple):
    """A slot being moved between two masters (``host:port``)."""

    slot: int
    source: str
    target: str


class View(NamedTuple):
    """The cluster as its masters see themselves: who serves which slots, what moves."""

    owners: frozenset[tuple[int, int, str]]
    migrations: frozenset[Migration]

    def owner(self, slot: int) -> str | None:
        return next((a for first, last, a in self.owners if first <= slot <= last), None)


def pattern_slot(pattern: bytes) -> int | None:
    """The one slot every key matching ``pattern`` hashes to, if its hash tag is
    literal (``{usr}:*``); ``None``: keys of any slot match (``usr:*``)."""
    start = pattern.find(b"{")
    end = pattern.find(b"}", start + 1) if start >= 0 else -1
    if start < 0 or end <= start + 1 or _GLOB.search(pattern, 0, end):
        return None
    return routing.slot_of(pattern[: end + 1])


def look(client: Any) -> View:
    """Read the slot map again and ask every master what it serves and migrates."""
    routing.refresh(client)
    owners: set[tuple[int, int, str]] = set()
    migrations: set[Migration] = set()
    for _, pool in routing.masters(client):
        with executor.connection(client, pool) as conn:
            reply = executor.roundtrip(conn, [(b"CLUSTER", b"NODES")])[0]
        routing.check(reply, "CLUSTER NODES")
        _parse(_text(reply), owners, migrations)
    return View(frozenset(owners), frozenset(migrations))


def _parse(text: str, owners: set[Any], migrations: set[Migration]) -> None:
    lines = [line.split() for line in text.splitlines() if line.strip()]
    address = {words[0]: words[1].split("@")[0] for words in lines}
    for words in lines:
        if "myself" not in words[2].split(","):
            continue
        me = address[words[0]]
        for item in words[8:]:
            found = _MIGRATING.fullmatch(item)
            if found:
                slot, way, other = int(found[1]), found[2], address.get(found[3], found[3])
                pair = (me, other) if way == ">" else (other, me)
                migrations.add(Migration(slot, *pair))
            elif not item.startswith("["):
                first, _, last = item.partition("-")
                owners.add((int(first), int(last or first), me))


def _text(reply: Any) -> str:
    if isinstance(reply, bytes):
        return reply.decode(errors="replace")
    return str(reply)


def ordered(view: View, masters: list[tuple[str, Any]], what: str) -> list[tuple[str, Any]]:
    """The masters in an order that scans every migration's source before its target."""
    edges = {(m.source, m.target) for m in view.migrations if m.source != m.target}
    left = [name for name, _ in masters]
    order: list[str] = []
    while left:
        free = [n for n in left if not any(t == n and s in left for s, t in edges)]
        if not free:
            raise MaintenanceError(
                f"{what}: slots are being migrated both ways between masters "
                f"{', '.join(sorted(left))} ({_named(view.migrations)}); no scan order finds "
                "every key: run it again once the migrations are over"
            )
        order.append(free[0])
        left.remove(free[0])
    pools = dict(masters)
    return [(name, pools[name]) for name in order]


def _named(migrations: Any) -> str:
    return ", ".join(f"slot {m.slot} {m.source} -> {m.target}" for m in sorted(migrations))


def refuse_cluster_node(client: Any) -> None:
    """A plain client on a cluster node would see one node's keys: say so now."""
    with executor.connection(client) as conn:
        reply = executor.roundtrip(conn, [(b"INFO", b"cluster")])[0]
    if re.search(r"cluster_enabled:1", _text(reply)):
        raise ClusterNodeError(
            "the Redis server is a cluster node: a maintenance task on it would see only "
            "its keys. Connect with redis.cluster.RedisCluster (python -m redisca ... "
            "--cluster, or REDISCA_CLUSTER=1)"
        )


class Keyspace:
    """Where one task reads one model's keys; refuses a migrating slot (see above).

    Made when the task starts (on a cluster it looks at the slot map then), used for
    every ``SCAN`` and transaction of the task, and :meth:`done` when it ends.
    """

    def __init__(self, client: Client, mapper: Mapper, task: str) -> None:
        self.client = client
        self.cluster = routing.is_cluster(client)
        self.slot = routing.layout_slot(mapper.layout)
        self.what = f"{task} of {model_name(mapper)}"
        #: Whether a scan visited every master (the layout before hash tags).
        self.wide = False
        self.before: View | None = None
        if self.cluster:
            self.before = look(client)
            self._own_slot(self.before)
        else:
            refuse_cluster_node(client)

    def scan(self, pattern: bytes, batch: int) -> Iterator[list[bytes]]:
        """Pages of keys matching ``pattern``, from the masters that may hold them."""
        if not self.cluster:
            yield from scan(self.client, pattern, batch)
            return
        slot = pattern_slot(pattern)
        if slot is not None:
            yield from scan(self.client, pattern, batch, routing.pool(self.client, slot))
            return
        self.wide = True
        assert self.before is not None
        for _, pool in ordered(self.before, routing.masters(self.client), self.what):
            yield from scan(self.client, pattern, batch, pool)

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A connection to the master of the model's slot (a plain client's own pool);
        a cluster's refusal there means the slot moved: refused as above."""
        pool = routing.pool(self.client, self.slot) if self.cluster else None
        try:
            with executor.connection(self.client, pool) as conn:
                yield conn
        except routing.Redirected as refused:
            if not self.cluster:
                raise
            raise MaintenanceError(
                f"{self.what}: slot {self.slot} moved or is being migrated "
                f"({refused.found.kind}); run it again once the migration is over"
            ) from refused

    def done(self) -> None:
        """At the end of the task: refuse if the slot map changed under it."""
        if not self.cluster:
            return
        assert self.before is not None
        after = look(self.client)
        self._own_slot(after)
        if self.before.owner(self.slot) != after.owner(self.slot):
            raise MaintenanceError(
                f"{self.what}: slot {self.slot} moved from {self.before.owner(self.slot)} to "
                f"{after.owner(self.slot)} while it ran; run it again"
            )
        if self.wide:
            self._wide(after)

    def _own_slot(self, view: View) -> None:
        moving = [m for m in view.migrations if m.slot == self.slot]
        if moving:
            raise MaintenanceError(
                f"{self.what}: its slot {self.slot} is being migrated ({_named(moving)}): "
                "its keys are on two masters. Run it again once the migration is over"
            )

    def _wide(self, after: View) -> None:
        """Every master was scanned: only migrations seen at the start may have moved
        keys, each from its source to its target."""
        assert self.before is not None
        planned = self.before.migrations
        was, now = _owners(self.before), _owners(after)
        news = [f"slot {m.slot} {m.source} -> {m.target}" for m in after.migrations - planned]
        news += [
            f"slot {slot} {was[slot]} -> {now[slot]}"
            for slot in range(SLOTS)
            if was[slot] != now[slot]
            and Migration(slot, was[slot] or "", now[slot] or "") not in planned
        ]
        if news:
            shown = ", ".join(news[:5]) + (f" and {len(news) - 5} more" if len(news) > 5 else "")
            raise MaintenanceError(
                f"{self.what}: the slot map changed while every master was scanned "
                f"({shown}); keys may have been missed. Run it again"
            )


def _owners(view: View) -> list[str | None]:
    """The master of every slot (``None``: unserved)."""
    out: list[str | None] = [None] * SLOTS
    for first, last, owner in view.owners:
        out[first : last + 1] = [owner] * (last - first + 1)
    return out


def checked(replies: list[Any], where: str) -> list[Any]:
    """Replies read on :meth:`Keyspace.connection`: a cluster's refusal among them
    raises (:class:`~redisca.session.routing.Redirected`), never taken for data."""
    for reply in replies:
        routing.check(reply, where)
    return replies


def send(conn: Any, commands: list[Command], where: str) -> list[Any]:
    """One round trip on a :meth:`Keyspace.connection`, its replies checked."""
    return checked(executor.roundtrip(conn, commands), where)


__all__ = [
    "Keyspace",
    "Migration",
    "View",
    "checked",
    "look",
    "ordered",
    "pattern_slot",
    "refuse_cluster_node",
    "send",
]

"""Cluster routing: the one place that knows where a key lives.

redisca takes only the topology from redis-py: the slot of a key
(:func:`redis.crc.key_slot`, what ``RedisCluster.keyslot`` computes), the master
serving a slot (``nodes_manager.get_node_from_slot``) and that master's connection
pool (``get_redis_connection(node).connection_pool``); those calls behave alike from
redis-py 5.0 to 8.x. Sending, reading and retrying stay in
:mod:`redisca.session.executor`: redis-py's own cluster transactions resend
``MULTI``/``EXEC`` without the ``WATCH`` after a lost connection and can apply an
``EXEC`` twice, and redis-py 5 has none.

A plain client is one node and needs no routing. On a plain client, a cluster's
refusal (``MOVED``, ``ASK``, ``CROSSSLOT``, ``CLUSTERDOWN``, ``TRYAGAIN``) means
the server is a cluster node: :func:`raise_if_cluster_reply` turns it into
:class:`~redisca.ClusterNodeError` wherever an error reply is read, so it is never
taken for data (a missing hash, a taken key, an empty result).
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from ..errors import ClusterNodeError, InvalidRequestError, OperationalError, ValidationError
from .io import Refresh, Sleep, Steps

#: How often one command or commit follows a redirect, or waits out ``TRYAGAIN`` or
#: ``CLUSTERDOWN``, before giving up (an ``OperationalError``). With :func:`backoff`,
#: the waits add up to about 1.3 s: a slot migration's steps take milliseconds; a
#: failover takes seconds and is reported, not waited out.
MAX_HOPS = 8

#: The refusals of a cluster, as redis-py names them (5.0's plain connections give a
#: bare ``ResponseError``, told apart by its first word).
_CLASSES: tuple[tuple[type[BaseException], str], ...] = (
    (MovedError, "MOVED"),  # before AskError: MovedError is one
    (AskError, "ASK"),
    (TryAgainError, "TRYAGAIN"),
    (ClusterCrossSlotError, "CROSSSLOT"),
    (ClusterDownError, "CLUSTERDOWN"),
)
KINDS = frozenset(kind for _, kind in _CLASSES)
#: Refusals after which the same commands can go out again: nothing of them ran.
RETRYABLE = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"})


class Refusal(NamedTuple):
    """A cluster's refusal of a command: its kind, and for ``MOVED``/``ASK`` where to."""

    kind: str
    error: BaseException
    slot: int | None = None
    address: tuple[str, int] | None = None


def refusal(reply: Any) -> Refusal | None:
    """The cluster refusal a reply is, if it is one (else ``None``)."""
    if not isinstance(reply, ResponseError):
        return None
    for cls, name in _CLASSES:
        if isinstance(reply, cls):
            kind = name
            break
    else:
        word = str(reply).split(" ", 1)[0]
        if word not in KINDS:
            return None
        kind = word
    if kind not in ("MOVED", "ASK"):
        return Refusal(kind, reply)
    return Refusal(kind, reply, *_target(reply))


def _target(reply: BaseException) -> tuple[int | None, tuple[str, int] | None]:
    """The slot and address a ``MOVED``/``ASK`` names (``[MOVED ]<slot> <host>:<port>``)."""
    words = str(reply).split()
    try:
        host, port = words[-1].rsplit(":", 1)
        return int(words[-2]), (host, int(port))
    except (IndexError, ValueError):
        return None, None


def cluster_node_error(found: Refusal, where: str) -> ClusterNodeError:
    """The error for a plain client whose server answered as a cluster node."""
    return ClusterNodeError(
        f"the Redis server is a cluster node: it answered {found.kind} to {where} "
        f"({found.error}). Connect with redis.cluster.RedisCluster (or set "
        "REDISCA_CLUSTER=1 with REDIS_URL naming a node)",
        found.error,
    )


class Redirected(ClusterNodeError):
    """A reply was a cluster's refusal. The executor's cluster path catches it and
    follows the refusal (the connection it came on is dropped, its ``WATCH`` with it:
    an :class:`~redisca.OperationalError` is never taken for redisca's own refusal);
    anywhere else it reaches the caller as what it means there: a plain client on a
    cluster node."""

    def __init__(self, found: Refusal, where: str) -> None:
        super().__init__(str(cluster_node_error(found, where)), found.error)
        self.found = found


def check(reply: Any, where: str) -> None:
    """Raise :class:`Redirected` if ``reply`` is a cluster's refusal."""
    found = refusal(reply)
    if found is not None:
        raise Redirected(found, where)


# -- topology -----------------------------------------------------------------


def is_cluster(client: Any) -> bool:
    """Whether the client is a redis-py cluster client (routed by slot).

    Asked once per class: ``isinstance`` against ``RedisCluster`` (a typing
    Protocol's metaclass in redis-py 8) costs 0.5 µs, a tenth of a whole ``get``'s
    client time, and every load, query and commit asks."""
    kind = client.__class__
    found = _CLUSTER_CLASSES.get(kind)
    if found is None:
        found = _CLUSTER_CLASSES[kind] = isinstance(client, RedisCluster | AsyncRedisCluster)
    return found


_CLUSTER_CLASSES: dict[type, bool] = {}


def _node_pool(client: Any, node: Any) -> Any:
    """Where connections to a node come from: its client's pool, or for a
    ``redis.asyncio`` cluster client the node itself (it keeps its connections)."""
    if isinstance(client, AsyncRedisCluster):
        return node
    return client.get_redis_connection(node).connection_pool


def layout_slot(layout: Any) -> int:
    """The slot of every key of a key layout (``layout.hashtag`` is ``{tag}``)."""
    return tag_slot(layout.hashtag)


def slot_of(key: bytes) -> int:
    """The slot of one key."""
    return key_slot(key)


@functools.lru_cache(maxsize=4096)
def tag_slot(hashtag: bytes) -> int:
    """The slot of a shard's tag (as :func:`layout_slot`), kept: a sharded model has a
    few tags, and a bulk load asks for one per claim and per entity, a query one per
    shard (CRC16 in Python, about 3 µs each)."""
    return key_slot(hashtag)


#: Commands naming their keys after a key count (redisca's own, and the user's).
_SCRIPTS = frozenset({b"EVAL", b"EVALSHA"})
_USER_SCRIPTS = _SCRIPTS | {b"EVAL_RO", b"EVALSHA_RO", b"FCALL", b"FCALL_RO"}


def command_key(command: Sequence[Any]) -> bytes | None:
    """The first key of one of redisca's own commands, which routes it (``None``: none).

    ``EVAL``/``EVALSHA`` name their keys after the key count; every other command
    redisca sends for a load, a query, a commit or a maintenance task has its key first
    (``MEMORY USAGE`` second).
    """
    name = command[0]
    if name in _SCRIPTS:
        return command[3] if len(command) > 3 and int(command[2]) > 0 else None
    if name == b"MEMORY":  # MEMORY USAGE <key> (stats)
        return command[2] if len(command) > 2 else None
    return command[1] if len(command) > 1 else None


def commit_keys(commands: Sequence[Sequence[Any]]) -> list[bytes]:
    """Every key a transaction's commands touch (``EVAL``'s declared keys, ``DEL``'s,
    ``LMOVE``'s two, the first argument of the rest)."""
    keys: list[bytes] = []
    for command in commands:
        name = command[0]
        if name in _SCRIPTS:
            keys.extend(command[3 : 3 + int(command[2])])
        elif name in (b"DEL", b"UNLINK", b"WATCH", b"EXISTS"):
            keys.extend(command[1:])
        elif name == b"LMOVE":
            keys.extend(command[1:3])
        elif len(command) > 1:
            keys.append(command[1])
    return keys


def in_slot(keys: Sequence[bytes], slot: int | None, what: str) -> int:
    """The slot all ``keys`` share, which must be ``slot`` if given. Two slots are a
    bug in redisca, refused before the transaction is sent."""
    by_slot = {key_slot(key): key for key in keys}
    if slot is not None:
        by_slot.setdefault(slot, b"(the group's slot)")
    if len(by_slot) == 1:
        return next(iter(by_slot))
    if not by_slot:
        raise InvalidRequestError(f"{what} names no key: on a cluster it cannot be routed")
    named = ", ".join(
        f"{key.decode(errors='replace')[:80]} (slot {s})" for s, key in sorted(by_slot.items())[:3]
    )
    raise InvalidRequestError(
        f"{what} spans {len(by_slot)} hash slots: {named}; a transaction on a cluster "
        "stays in one slot. This is a bug in redisca: please report it"
    )


def plan_slot(plan: Any) -> int:
    """The slot of a commit plan, checked before anything is sent. Every key redisca
    reads or writes for a change is built by its model's key layout, and every key of a
    layout hashes to the slot of its tag (``mapping/keys.py``; the property test
    ``test_prop_every_key_of_a_model_hashes_to_its_tags_slot``), so the tags of the
    plan's models decide it: one key per model, not one per entity, index entry and
    read. The user's commands were checked when they were queued."""
    tags = list({change.layout.hashtag for change in plan.changes})
    return in_slot(tags, plan.slot, "the commit")


def pool(client: Any, slot: int) -> Any:
    """The connection pool of the master serving ``slot``: the one a ``MOVED`` named
    last, else the slot map's."""
    moved = _moved.get(client)
    node = None if moved is None else moved.get(slot)
    if node is not None:
        return _node_pool(client, node)
    # Asking redis-py costs about 7 µs (a lock, a deprecation wrapper, a Protocol
    # isinstance), and a query of a 16-shard model asks for every shard; the answers
    # are kept while redis-py keeps the same slot map (reading the map anew makes a
    # new one). A slot moved meanwhile is refused with MOVED, which the caller follows.
    slots = client.nodes_manager.slots_cache
    known = _pools.get(client)
    if known is None or known[0] is not slots:
        known = _pools[client] = (slots, {})
    found = known[1].get(slot)
    if found is None:
        try:
            node = client.nodes_manager.get_node_from_slot(slot)
        except RedisClusterException as exc:  # the slot is not covered (yet): retried
            raise Redirected(Refusal("CLUSTERDOWN", exc), f"slot {slot}") from exc
        found = known[1][slot] = _node_pool(client, node)
    return found


def by_node(client: Any, slots: Sequence[int]) -> list[list[int]]:
    """The indexes of ``slots`` grouped by the master serving each (as :func:`pool`
    routes it), in order of first appearance: a sharded model's query runs one script
    per group. A plain client is one node: one group."""
    if not is_cluster(client):
        return [list(range(len(slots)))]
    groups: dict[int, list[int]] = {}
    for i, slot in enumerate(slots):
        groups.setdefault(id(pool(client, slot)), []).append(i)
    return list(groups.values())


#: Per cluster client: its slot map (as redis-py holds it) and slot -> pool from it.
_pools: weakref.WeakKeyDictionary[Any, tuple[Any, dict[int, Any]]] = weakref.WeakKeyDictionary()


#: Per cluster client, slot -> the node the last ``MOVED`` for it named (until the map
#: is read again after a lost connection or a ``CLUSTERDOWN``). redis-py reads the map
#: from its first startup node, which can name a slot's old owner for a while after a
#: move (once for over 10 s in the tests); the node that refused the slot knows better.
_moved: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()


def _point(client: Any, found: Refusal) -> None:
    """Route ``found.slot`` to the node its ``MOVED`` names, if the slot map knows it."""
    if found.slot is None or found.address is None:
        return
    node = client.get_node(host=found.address[0], port=found.address[1])
    if node is not None:
        _moved.setdefault(client, {})[found.slot] = node


def masters(client: Any) -> list[tuple[str, Any]]:
    """Every master of the slot map, as ``("host:port", pool)`` (what a ``SCAN`` of the
    whole keyspace visits: each master answers for its own keys only)."""
    return [
        (node.name, client.get_redis_connection(node).connection_pool)
        for node in client.get_primaries()
    ]


def ask_pool(client: Any, found: Refusal) -> Any:
    """The pool of the node an ``ASK`` names (``None`` if the slot map lacks it)."""
    if found.address is None:
        return None
    node = client.get_node(host=found.address[0], port=found.address[1])
    return None if node is None else _node_pool(client, node)


def refresh(client: Any) -> None:
    """Read the slot map again (``CLUSTER SLOTS`` through redis-py's nodes manager);
    the nodes ``MOVED`` replies named are forgotten."""
    _moved.pop(client, None)
    _pools.pop(client, None)
    try:
        client.nodes_manager.initialize()
    except (RedisError, OSError) as exc:  # no node answered, or they disagree
        raise OperationalError(f"cannot read the cluster's slot map: {exc}", exc) from exc


async def arefresh(client: Any, quiet: bool) -> None:
    """:func:`refresh` (``quiet``: :func:`forget`) for a ``redis.asyncio`` cluster client."""
    _moved.pop(client, None)
    _pools.pop(client, None)
    try:
        await client.nodes_manager.initialize()
    except (RedisError, OSError) as exc:  # no node answered, or they disagree
        if not quiet:
            raise OperationalError(f"cannot read the cluster's slot map: {exc}", exc) from exc


def forget(client: Any) -> None:
    """After a lost connection: read the slot map again if a node answers (a failover
    moves the slots to a replica); the caller reports the failure either way."""
    with contextlib.suppress(OperationalError):
        refresh(client)


def follow(client: Any, found: Refusal, hop: int) -> Steps[None]:
    """Before the next try after ``found``: a new slot map and the node a ``MOVED``
    names (which the map may not name yet), a short, growing wait after ``ASK``
    (the migration ends with ``MOVED``), ``TRYAGAIN`` and ``CLUSTERDOWN`` (and a new
    map after a second ``CLUSTERDOWN``). The map is read after the wait, not before:
    read before, it was as old as the wait at the next try, and a slot moved again
    meanwhile (a busy resharding, a failover in progress) was missed try after try.
    Steps of the executor's protocols: the wait and the read are requests its driver
    performs (:mod:`redisca.session.io`)."""
    if found.kind != "MOVED" or hop:  # a first MOVED is followed at once
        yield Sleep(backoff(hop))
    if found.kind == "MOVED" or (found.kind == "CLUSTERDOWN" and hop):
        yield Refresh(client)  # also for redis-py's own commands on the client
    if found.kind == "MOVED":
        _point(client, found)


def backoff(hop: int) -> float:
    """Seconds to wait before try ``hop + 1``: 5 ms doubling, at most 0.4 s."""
    return float(min(0.005 * 2**hop, 0.4))


def gave_up(found: Refusal, where: str) -> OperationalError:
    return OperationalError(
        f"the cluster kept refusing {where} ({found.kind}, {MAX_HOPS} tries): {found.error}",
        found.error,
    )


# -- the user's own commands (Session.add_command) ------------------------------


def user_command_slot(client: Any, wire: Sequence[bytes], slot: int | None) -> int:
    """The slot a user's command runs in on a cluster, checked when it is queued.

    Its keys are the ones redis-py's command table names (``EVAL``/``EVALSHA``/
    ``FCALL``: the declared keys). They must all hash to ``slot`` (the slot of the
    model given as ``bind``) or, without ``bind``, to one slot, which the command's
    group then commits in.
    """
    keys = _user_keys(client, wire)
    name = wire[0].decode(errors="replace").upper()
    slots = {key_slot(k if isinstance(k, bytes) else str(k).encode()) for k in keys}
    if slot is not None:
        slots.add(slot)
    if len(slots) == 1:
        return slots.pop()
    if not slots:
        raise ValidationError(
            f"add_command({name}, ...) names no key: on a cluster, give bind=SomeModel "
            "so it runs in that model's slot group"
        )
    where = "the slot group of its bind" if slot is not None else "one hash slot"
    raise ValidationError(
        f"add_command({name}, ...): on a cluster its keys must all hash to {where} "
        f"(slots {sorted(slots)}); put the model's hash tag in them, e.g. "
        "inspect(Model).key_for(id), or queue it with the matching bind",
        value=tuple(wire),
    )


def _user_keys(client: Any, wire: Sequence[bytes]) -> list[Any]:
    name = wire[0].upper()
    if name in _USER_SCRIPTS:
        try:
            return list(wire[3 : 3 + int(wire[2])])
        except (IndexError, ValueError):
            return []
    command = wire[0].decode(errors="replace")
    if isinstance(client, AsyncRedisCluster):  # its key finder is a coroutine
        raise ValidationError(
            f"add_command({command.upper()}, ...): on a redis.asyncio cluster client only "
            "scripts (EVAL, EVALSHA, FCALL with their keys declared) can be queued: the "
            "keys of other commands are looked up with I/O, which add_command does not do",
            value=tuple(wire),
        )
    try:
        node = client.get_redis_connection(client.get_default_node())
        keys = client.commands_parser.get_keys(node, command, *wire[1:])
        if not keys and len(wire) > 2:
            # redis-py finds a subcommand (OBJECT ENCODING, MEMORY USAGE) only by a str
            # name: its keys come back empty for the bytes redisca queues
            subcommand = wire[1].decode(errors="replace")
            keys = client.commands_parser.get_keys(node, command, subcommand, *wire[2:])
        return list(keys or [])
    except Exception as exc:  # an unknown command, a bad subcommand: say so now
        raise ValidationError(
            f"add_command({command.upper()}, ...): cannot tell its keys on a cluster ({exc})",
            value=tuple(wire),
        ) from exc


__all__ = [
    "KINDS",
    "MAX_HOPS",
    "RETRYABLE",
    "Redirected",
    "Refusal",
    "arefresh",
    "ask_pool",
    "backoff",
    "by_node",
    "check",
    "cluster_node_error",
    "command_key",
    "commit_keys",
    "follow",
    "forget",
    "gave_up",
    "in_slot",
    "is_cluster",
    "layout_slot",
    "masters",
    "plan_slot",
    "pool",
    "refresh",
    "refusal",
    "slot_of",
    "tag_slot",
    "user_command_slot",
]

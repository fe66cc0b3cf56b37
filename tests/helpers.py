"""Test helpers shared by conftest and test modules (import as ``helpers``).

The round-trip counter exists because redisca promises bounded round trips
(one per ``get``, a constant number per commit); counting at the connection
is the only honest way to check that without MONITOR, which is slow and sees
every client at once.
"""

from __future__ import annotations

import inspect
import math
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

import redisca


def _cluster_flag(value: str) -> bool:
    flag = value.strip().lower()
    if flag in ("", "0", "false", "no"):
        return False
    if flag in ("1", "true", "yes"):
        return True
    raise ValueError(f"REDISCA_TEST_CLUSTER={value!r}: use 1 (a 3-master cluster) or 0")


#: The suite's cluster mode (``REDISCA_TEST_CLUSTER=1``): the ``r``, ``make_client``,
#: ``counted`` and ``redis_url`` fixtures, and :func:`connect` and
#: :func:`counting_client`, give clients of one shared 3-master cluster instead of one
#: server. Read from the environment, so a test's child processes follow it too.
CLUSTER = _cluster_flag(os.environ.get("REDISCA_TEST_CLUSTER", ""))


def with_kwargs(connection_class: type, **fixed: Any) -> type:
    """``connection_class`` with extra constructor kwargs bound (a counter, hooks).

    A cluster client hands its node pools only the kwargs redis-py knows, so a test
    class's own kwargs travel in the class instead (on a plain client too, alike)."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.update(fixed)
        super(bound, self).__init__(*args, **kwargs)

    bound = type(connection_class.__name__, (connection_class,), {"__init__": __init__})
    return bound


class SuiteCluster(RedisCluster):
    """The suite's cluster client: ``KEYS`` asks every master, as it asks the one
    server (redis-py sends it to one node), so a test's check of the keyspace sees it
    all."""

    def keys(self, pattern: Any = "*", **kwargs: Any) -> Any:
        kwargs.setdefault("target_nodes", RedisCluster.PRIMARIES)
        return super().keys(pattern, **kwargs)


def transactions(*models: type) -> int:
    """How many ``MULTI``/``EXEC`` one commit changing ``models`` is: one on a server;
    on a cluster one per hash slot (each model's tag, or its slot group's), since a
    commit is grouped by slot there (``unitofwork.organize``) and each group is a
    commit of its own, with its own round trips."""
    if not CLUSTER:
        return 1
    return len({redisca.inspect(model).layout.tag for model in models})


#: The round trip a commit with nothing else to read spends on its reindex markers on
#: a cluster (``executor._commit_on``): one server sends their ``WATCH`` in the write of
#: ``MULTI``/``EXEC`` (the fence), a cluster reads them first, so that a refused
#: ``WATCH`` never leaves ``EXEC`` unwatched.
FENCE_READ = 1 if CLUSTER else 0


def connect(url: str, **kwargs: Any) -> Any:
    """A client of the suite's server, or in cluster mode a ``RedisCluster`` of the
    cluster ``url`` names a node of (``kwargs`` go to ``from_url`` either way)."""
    if CLUSTER:
        # Only from_url hands connection_class to the node pools (redis-py 5.0 to 8.x).
        return SuiteCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def warm(client: Any) -> None:
    """One PING on every master (one on the server): the handshakes are made."""
    if isinstance(client, RedisCluster):
        client.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.ping()


class RoundTripCounter:
    """Counts of one client's traffic; a lock, because a pool serves threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.round_trips = 0
        self.commands = 0
        #: The keys of each WATCH sent, in order.
        self.watches: list[list[bytes]] = []

    def add(self, *, round_trips: int = 0, commands: int = 0) -> None:
        with self._lock:
            self.round_trips += round_trips
            self.commands += commands

    def reset(self) -> None:
        with self._lock:
            self.round_trips = 0
            self.commands = 0
            self.watches = []

    def watched(self, commands: list[list[bytes]]) -> None:
        with self._lock:
            self.watches += [c[1:] for c in commands if c[0].upper() == b"WATCH"]

    def __repr__(self) -> str:
        return f"<RoundTripCounter round_trips={self.round_trips} commands={self.commands}>"


def sent_commands(packed: Any) -> list[list[bytes]]:
    """The commands in what ``send_packed_command`` was given (RESP arrays of bulk strings).

    Reading the write itself sees every command however it was packed: by
    redis-py (``execute_command``, pipelines) or by redisca's own packer.
    """
    chunks = [packed] if isinstance(packed, (bytes, str)) else packed
    data = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
    commands: list[list[bytes]] = []
    pos = 0
    while pos < len(data):
        pos, count = _header(data, pos, b"*")
        args = []
        for _ in range(count):
            pos, size = _header(data, pos, b"$")
            args.append(data[pos : pos + size])
            assert data[pos + size : pos + size + 2] == b"\r\n", data[pos : pos + size + 2]
            pos += size + 2
        commands.append(args)
    return commands


def _header(data: bytes, pos: int, kind: bytes) -> tuple[int, int]:
    assert data[pos : pos + 1] == kind, data[pos : pos + 20]
    end = data.index(b"\r\n", pos)
    return end + 2, int(data[pos + 1 : end])


class _CountingMixin:
    """One ``send_packed_command`` is one write to the socket: one round trip,
    whether it carries one command or a whole pipeline.

    The counter arrives as a connection kwarg, so every connection of one pool
    shares it while separate clients keep separate counts.
    """

    counter: RoundTripCounter

    def __init__(self, *args: Any, counter: RoundTripCounter | None = None, **kwargs: Any):
        self.counter = counter if counter is not None else RoundTripCounter()
        super().__init__(*args, **kwargs)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        commands = sent_commands(command)
        self.counter.add(round_trips=1, commands=len(commands))
        self.counter.watched(commands)
        super().send_packed_command(command, check_health)  # type: ignore[misc]


class CountingConnection(_CountingMixin, redis.Connection):
    """A TCP connection that counts round trips and commands."""


class CountingUnixConnection(_CountingMixin, redis.UnixDomainSocketConnection):
    """The same, for a unix-socket server."""


@dataclass
class Counted:
    """A client and the counts of what it sent since the last :meth:`reset`."""

    client: redis.Redis
    counter: RoundTripCounter

    @property
    def round_trips(self) -> int:
        return self.counter.round_trips

    @property
    def commands(self) -> int:
        return self.counter.commands

    @property
    def watches(self) -> list[list[bytes]]:
        """The keys of each ``WATCH`` sent, read from the RESP written."""
        return self.counter.watches

    def reset(self) -> None:
        self.counter.reset()

    def close(self) -> None:
        self.client.close()


def counting_client(url: str, *, plain: bool = False, **kwargs: Any) -> Counted:
    """A counting client for ``url`` (``kwargs`` go to ``Redis.from_url``): in cluster
    mode a ``RedisCluster``, unless ``plain`` (a client of that one node).

    It is warmed up with one PING and then reset, so the connection handshake
    (HELLO, CLIENT SETINFO, SELECT) is not counted against the code under test.
    """
    unix = urlsplit(url).scheme == "unix"
    connection_class = CountingUnixConnection if unix else CountingConnection
    counter = RoundTripCounter()
    counting = with_kwargs(connection_class, counter=counter)
    if plain:
        client = redis.Redis.from_url(url, connection_class=counting, **kwargs)
    else:
        client = connect(url, connection_class=counting, **kwargs)
    warm(client)
    counter.reset()
    return Counted(client=client, counter=counter)


def server_for(client: Any, model: type) -> redis.Redis:
    """The server holding ``model``'s keys, for what asks one server (``MONITOR``,
    ``SCRIPT EXISTS``): ``client`` itself; on a cluster, the client redis-py keeps for
    the master serving the model's slot."""
    if not isinstance(client, RedisCluster):
        return client
    slot = key_slot(b"{" + redisca.inspect(model).layout.tag + b"}")
    return client.get_redis_connection(client.nodes_manager.get_node_from_slot(slot))


def connection_kwargs(client: Any) -> dict[str, Any]:
    """The kwargs ``client`` makes its connections with (a cluster client: its masters')."""
    if isinstance(client, RedisCluster):
        node = client.get_primaries()[0]
        return dict(client.get_redis_connection(node).connection_pool.connection_kwargs)
    return dict(client.connection_pool.connection_kwargs)


def decodes(client: redis.Redis) -> bool:
    """Whether ``client`` returns str (``decode_responses=True``) rather than bytes."""
    return bool(connection_kwargs(client).get("decode_responses", False))


def as_str(value: str | bytes) -> str:
    """A reply as str, whichever mode the client is in."""
    return value.decode() if isinstance(value, bytes) else value


# -- keyspace and index checks (session, commit and concurrency tests) ----------


def _raw_client(client: redis.Redis) -> redis.Redis:
    """A client on the same server that replies with bytes whatever ``client`` does
    (of the same cluster, for a cluster client: ``SCAN`` then asks every master)."""
    if isinstance(client, RedisCluster):
        return _raw_cluster_client(client)
    pool = client.connection_pool
    # The plain redis-py class under a test subclass (counting, interleaving), and
    # only the kwargs redis-py's classes take (not a test class's ``counter``).
    connection_class = next(
        c for c in pool.connection_class.__mro__ if c.__module__.startswith("redis.")
    )
    accepted = {
        name
        for klass in connection_class.__mro__
        if "__init__" in vars(klass)
        for name in inspect.signature(klass.__init__).parameters
    }
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k in accepted}
    kwargs["decode_responses"] = False
    return redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=connection_class, **kwargs)
    )


def _raw_cluster_client(client: RedisCluster) -> Any:
    kwargs = connection_kwargs(client)
    nodes = [ClusterNode(n.host, n.port) for n in client.get_primaries()]  # type: ignore[no-untyped-call]
    allowed = ("username", "password", "protocol")
    return SuiteCluster(
        startup_nodes=nodes,
        decode_responses=False,
        **{k: kwargs[k] for k in allowed if kwargs.get(k) is not None},
    )


def _scan(client: redis.Redis, match: bytes | None = None) -> list[bytes]:
    return sorted(client.scan_iter(match=match, count=1000))


def dump_keyspace(client: redis.Redis) -> dict[bytes, tuple[str, Any]]:
    """Every key of the server's db with its type and content, read type by type.

    Two dumps compare equal exactly when the data is the same, whatever the
    internal encoding: the way to show that a failed commit wrote nothing.
    """
    raw = _raw_client(client)
    try:
        out: dict[bytes, tuple[str, Any]] = {}
        for key in _scan(raw):
            kind = raw.type(key).decode()
            value: Any
            if kind == "string":
                value = raw.get(key)
            elif kind == "hash":
                value = raw.hgetall(key)
            elif kind == "set":
                value = frozenset(raw.smembers(key))
            elif kind == "zset":
                value = dict(raw.zrange(key, 0, -1, withscores=True))
            elif kind == "list":
                value = raw.lrange(key, 0, -1)
            else:
                value = raw.dump(key)
            out[key] = (kind, value)
        return out
    finally:
        raw.close()


#: The layout as docs/keylayout.rst documents it, spelled out here on purpose: the
#: expected keys below are built without the library's key code, so a bug there shows.
UNIQUE_STRIPES = 128
GUARD_STRIPES = 128


def head(prefix: str, group: str | None = None) -> bytes:
    """``{P}`` (or ``{G}P`` in slot group G): what every key of the model starts with."""
    if group is None:
        return b"{%s}" % prefix.encode()
    return b"{%s}%s" % (group.encode(), prefix.encode())


def stripe_key(
    prefix: str, field: str | bytes, value: str | bytes, group: str | None = None
) -> bytes:
    """``{P}#u:<field>:<n>`` (``{G}P#u:...`` in slot group G), n = crc32(value) % 128 in
    decimal: a unique value's hash."""
    field = field.encode() if isinstance(field, str) else field
    value = value.encode() if isinstance(value, str) else value
    return b"%s#u:%s:%d" % (head(prefix, group), field, zlib.crc32(value) % UNIQUE_STRIPES)


def guard_key(prefix: str, ident: str | bytes) -> bytes:
    """``{P}#g:<n>``, n = crc32(id) % 128 in decimal: an entity's guard counter."""
    ident = ident.encode() if isinstance(ident, str) else ident
    return b"%s#g:%d" % (head(prefix), zlib.crc32(ident) % GUARD_STRIPES)


def unique_owner(client: redis.Redis, prefix: str, field: str, value: str) -> str | None:
    """The id a unique value names (``HGET`` of its stripe), as str, or None."""
    owner = client.hget(stripe_key(prefix, field, value), value)
    return None if owner is None else as_str(owner)


def expected_indexes(raw: redis.Redis, mapper: Any) -> dict[bytes, tuple[str, Any]]:
    """The index keys of ``mapper`` as they must be, rebuilt from the entity hashes
    with the key names of docs/keylayout.rst (the mapper gives only fields, and
    codecs the index form and score of a value)."""
    prefix = head(mapper.prefix, mapper.slot_group)
    entity_prefix = prefix + b":"
    expected: dict[bytes, tuple[str, Any]] = {}
    ids: dict[bytes, float] = {}
    for key in _scan(raw, entity_prefix + b"*"):
        ident = key[len(entity_prefix) :]
        ids[ident] = 0.0
        stored = raw.hgetall(key)
        for field in mapper.fields:
            value = stored.get(field.hash_field)
            name: bytes
            if field.index == "range":  # every entity; no value scores +inf
                name = prefix + b"#r:" + field.hash_field
                score = math.inf if value is None else float(field.score(value))
                expected.setdefault(name, ("zset", {}))[1][ident] = score
            if value is None:
                continue
            if field.scored:
                # An equality index of scored_indexes=True: a sorted set scored by the
                # entity's instant in P#exp (+inf: none).
                name = prefix + b"#i:" + field.hash_field + b":" + field.index_key(value)
                at = raw.zscore(prefix + b"#exp", ident)
                score = math.inf if at is None else float(at)
                expected.setdefault(name, ("zset", {}))[1][ident] = score
            elif field.index == "eq":
                name = prefix + b"#i:" + field.hash_field + b":" + field.index_key(value)
                expected.setdefault(name, ("set", set()))[1].add(ident)
            if field.unique:
                form = field.index_key(value)
                name = prefix + b"#u:%s:%d" % (field.hash_field, zlib.crc32(form) % UNIQUE_STRIPES)
                stripe = expected.setdefault(name, ("hash", {}))[1]
                assert form not in stripe, f"two entities hold the unique value {form!r}"
                stripe[form] = ident
    # The all-ids set P#all exists only on a model without a range field: a range index
    # holds every entity already (docs/keylayout.rst).
    if ids and not any(field.index == "range" for field in mapper.fields):
        expected[prefix + b"#all"] = ("zset", ids)
    if mapper.expiring:  # the instants as they are: the hashes do not tell them
        instants = dict(raw.zrange(prefix + b"#exp", 0, -1, withscores=True))
        if instants:
            expected[prefix + b"#exp"] = ("zset", instants)
    return {k: (kind, frozenset(v) if kind == "set" else v) for k, (kind, v) in expected.items()}


def flush(client: Any) -> None:
    """``FLUSHALL`` on the server, or on every master of a cluster client."""
    if isinstance(client, RedisCluster):
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.flushall()


def server_or_cluster(request: Any) -> Iterator[Any]:
    """The body of a fixture parametrized ``["one server", "cluster"]``: a client of the
    suite's server or of its 3-master cluster, flushed before and after the test (the
    suites of sharded models check both)."""
    if request.param == "cluster":
        made: Any = RedisCluster.from_url(request.getfixturevalue("cluster").url)
    else:
        made = request.getfixturevalue("redis_server").client()
    flush(made)
    yield made
    flush(made)
    made.close()


def set_instants(client: Any, model: type, instants: dict[str, float]) -> None:
    """Set raw expiry instants (ms) of entities of an expiring model, as if time had
    moved: in ``P#exp`` and, on a model of ``scored_indexes=True``, in the scores of
    their equality index entries (docs/keylayout.rst), as a commit would write them (in the
    id's shard, on a sharded model). Each id in one transaction that watches its hash,
    so writers racing it leave no stray entry. On a cluster the transaction runs on the
    master of the id's slot: a ``RedisCluster`` of redis-py before 6.1 has no
    ``transaction``."""
    mapper = model.__dict__["__redisca_mapper__"]
    for ident, at in instants.items():
        layout = mapper.layout.for_id(ident)
        entity = layout.entity(ident)
        server = client
        if isinstance(client, RedisCluster):
            node = client.nodes_manager.get_node_from_slot(key_slot(entity))
            server = client.get_redis_connection(node)

        def write(pipe: Any, ident: str = ident, at: float = at, layout: Any = layout) -> None:
            stored = pipe.hgetall(layout.entity(ident))
            pipe.multi()
            pipe.zadd(layout.expiry, {ident: at})
            for field in mapper.fields:
                value = stored.get(field.hash_field, stored.get(field.hash_field.decode()))
                if field.scored and value is not None:
                    if isinstance(value, str):
                        value = value.encode()
                    key = layout.eq_index(field.hash_field, field.index_key(value))
                    pipe.zadd(key, {ident: at})

        server.transaction(write, entity)


def without_guards(dump: dict[bytes, tuple[str, Any]]) -> dict[bytes, tuple[str, Any]]:
    """A keyspace dump without the guard counters ``P#g:<n>`` (of any prefix): they
    count commits, they hold no data (a retry of an applied commit bumps them again)."""
    return {k: v for k, v in dump.items() if not _is_guard(k.partition(b"#")[0], k)}


def _is_guard(prefix: bytes, key: bytes) -> bool:
    start = prefix + b"#g:"
    return key.startswith(start) and key[len(start) :] in _GUARD_NAMES


_GUARD_NAMES = {b"%d" % n for n in range(GUARD_STRIPES)}


def assert_indexes_consistent(client: redis.Redis, mapper: Any) -> None:
    """The ``P#...`` keys of ``mapper`` hold exactly what its hashes call for.

    ``P#all`` (on a model without a range field) has every id with a hash and no
    other (score 0), a model with one has no ``P#all``, each equality
    set, range sorted set (every entity, with its score, ``+inf`` without a
    value) and unique stripe (value → owner) matches the stored values, and no
    index key is left over (nor any query scratch key). Guard counters
    ``P#g:<n>`` are left out, but must be integer strings.
    """
    raw = _raw_client(client)
    prefix = head(mapper.prefix, mapper.slot_group)
    try:
        expected = expected_indexes(raw, mapper)
        actual = {
            key: value for key, value in dump_keyspace(raw).items() if key.startswith(prefix + b"#")
        }
    finally:
        raw.close()
    guards = {k: v for k, v in actual.items() if _is_guard(prefix, k)}
    for key, (kind, value) in guards.items():
        assert kind == "string" and int(value) >= 0, (key, kind, value)
        del actual[key]
    missing = {k: v for k, v in expected.items() if actual.get(k) != v}
    extra = {k: v for k, v in actual.items() if k not in expected}
    assert not missing and not extra, (
        f"indexes of {mapper.prefix!r} differ from the hashes:\n"
        f"  expected but absent or different: {missing}\n"
        f"  present but not expected: {extra}\n"
        f"  (present values of the differing keys: { {k: actual.get(k) for k in missing} })"
    )

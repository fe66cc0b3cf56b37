"""Helpers of the cluster tests (import as ``clusterhelpers``): a plain client on one
node, and a slot moved between masters with the standard steps
(``CLUSTER SETSLOT IMPORTING/MIGRATING``, ``MIGRATE ... KEYS``, ``SETSLOT NODE``)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import redisca
from redisca.embedded import EmbeddedCluster, EmbeddedServer
from redisca.session import routing


def model_slot(cls: type) -> int:
    """The hash slot of every key of a mapped class."""
    return routing.layout_slot(redisca.inspect(cls).layout)


def node_client(node: EmbeddedServer, **kwargs: Any) -> redis.Redis:
    """A plain client on one node, which never retries (a test sees every failure)."""
    return node.client(retry=Retry(NoBackoff(), 0), **kwargs)


@contextmanager
def slot_moved(
    cluster: EmbeddedCluster, slot: int, *, finish: bool = True, keys: Sequence[bytes] = ()
) -> Iterator[Any]:
    """Move ``slot`` to another master and back afterwards. ``finish=False``: stop
    half-way (MIGRATING, ``keys`` moved, or else the server's first key of the slot),
    and yield a function that completes the move.

    A move never finished ends with the slot stable on its master and the keys moved
    meanwhile taken back from the target: left there, a key is out of every answer
    (the target does not serve the slot), and a later query in the same test misses
    it. Which key moves first is the server's order (Valkey's differs per process, so
    a test reading a key it moved failed only in some runs)."""
    src = cluster.node_for_slot(slot)
    dst = next(n for n in cluster.masters if n is not src)
    migrate_slot(cluster, slot, src, dst, finish=finish, keys=keys)
    try:
        yield (lambda: migrate_slot(cluster, slot, src, dst, finish=True, started=True))
    finally:
        if cluster.node_for_slot(slot) is not src:
            migrate_slot(cluster, slot, dst, src, finish=True)
        else:  # never finished: the source stable, the moved keys back, then the target
            with node_client(src) as s, node_client(dst) as d:
                s.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
                back = d.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10_000)
                if back:
                    d.execute_command("MIGRATE", "127.0.0.1", src.port, "", 0, 5000, "KEYS", *back)
                d.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


def migrate_slot(
    cluster: EmbeddedCluster,
    slot: int,
    src: EmbeddedServer,
    dst: EmbeddedServer,
    *,
    finish: bool,
    started: bool = False,
    keys: Sequence[bytes] = (),
) -> None:
    """Move ``slot`` from ``src`` to ``dst``: IMPORTING/MIGRATING (unless ``started``),
    its keys migrated (if not ``finish``: only ``keys``, or else the first the server
    lists, which on Valkey differs per process), then SETSLOT NODE on every master,
    the target first, and wait until the first running node sees the new owner."""
    with node_client(src) as s, node_client(dst) as d:
        if not started:
            d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(src))
            s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(dst))
        while True:  # MIGRATING: no new key is made on src, so this ends
            moving = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
            if not finish:
                moving = list(keys) or moving[:1]
            if moving:
                s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *moving)
            if not finish:
                return
            if not moving:
                break
        for node in (dst, src, *[n for n in cluster.masters if n not in (src, dst)]):
            with node_client(node) as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(dst))
    _spread(cluster, slot, dst)


def _spread(cluster: EmbeddedCluster, slot: int, dst: EmbeddedServer) -> None:
    """Wait until the first running node sees ``dst`` serving ``slot``.

    A slot moved back and forth every 0.15 s once left the first node's view naming
    the old owner for over 10 s after every master was told ``SETSLOT NODE`` (about
    once in twenty runs, on redis-py 5.0.8 runs under load). Our reading: gossip gave
    the slot back to the old owner, whose config epoch was the higher one. After 1 s,
    ``CLUSTER BUMPEPOCH`` on ``dst`` makes its claim the newest, and the nodes are told
    again."""
    deadline = time.monotonic() + 10
    bump = time.monotonic() + 1
    while cluster.node_for_slot(slot) is not dst or not _all_masters_see(cluster, slot, dst):
        assert time.monotonic() < deadline, "the slot move did not spread"
        if time.monotonic() > bump:
            bump = deadline
            with node_client(dst) as d:
                d.execute_command("CLUSTER", "BUMPEPOCH")
            for node in cluster.masters:
                with node_client(node) as c:
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(dst))
        time.sleep(0.02)


def _all_masters_see(cluster: EmbeddedCluster, slot: int, dst: EmbeddedServer) -> bool:
    """Whether every running master names ``dst`` for ``slot``: a client may ask any of
    them, and one still naming the old owner sends it back and forth (``MOVED`` more
    times than the executor follows, under load)."""
    for node in cluster.masters:
        if not node.running:
            continue
        with node_client(node) as c:
            for first, last, owner, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if int(first) <= slot <= int(last) and int(owner[1]) != dst.port:
                    return False
    return True

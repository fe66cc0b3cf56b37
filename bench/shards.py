"""``python -m bench.shards``: how a sharded model spreads commands and server CPU over a
cluster's masters (issue: Redis Cluster part 2).

On an embedded 3-master cluster, ``--commits`` one-entity commits (inserts, then updates
of an indexed field) of one model with ``shards=1`` and with ``shards=16`` (and, with
``--unique``, the same model with a unique field, claimed in its value's shard). For each
it prints, per master, the commands it ran (``INFO commandstats``, reset before each run;
Redis 7.0 counts a command inside ``MULTI``/``EXEC`` twice, which inflates every master
alike) and its CPU time (``INFO cpu``), and the commits per second. Not a timed test.

``--bulk N`` measures ``session.bulk_add`` of ``N`` entities instead (chunks of
``--chunk``, 5,000 by default): for a sharded model, each chunk is one transaction per
shard, run in parallel after the chunk's unique values are claimed (with ``--unique``).

``--paged``: instead, the latency of a paged query (limit 10) with ``shards=16``, run
once per node (the default) and shard by shard, against ``shards=1``, the two models'
queries taken in turns, on clusters of ``--masters`` (1 and 3; 0: one plain server);
then the first page against the one a user would write by hand with redis-py, and
against redisca's own script calls replayed with redis-py (the same Redis work).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import attrs
from redis.cluster import RedisCluster

from redisca import Integer, Registry, Session, String
from redisca.embedded import EmbeddedCluster


def model(shards: int, unique: bool) -> type:
    registry = Registry()

    @registry.mapped(prefix=f"u{shards}{'u' if unique else ''}", shards=shards)
    @attrs.define
    class User:
        name: str = String(unique=unique, index=not unique)
        age: int = Integer(index=True, default=0)
        id: str | None = None

    return User


def stats(cluster: EmbeddedCluster) -> list[tuple[int, float]]:
    """Per master: commands run, CPU seconds (user + sys)."""
    out = []
    for node in cluster.masters:
        with node.client() as client:
            commands = sum(v["calls"] for v in client.info("commandstats").values())
            cpu = client.info("cpu")
            out.append((commands, cpu["used_cpu_user"] + cpu["used_cpu_sys"]))
    return out


def run(cluster: EmbeddedCluster, shards: int, commits: int, unique: bool) -> None:
    cls = model(shards, unique)
    client = cluster.client()
    for node in cluster.masters:
        with node.client() as direct:
            direct.flushall()
            direct.config_resetstat()
    before = stats(cluster)
    start = time.perf_counter()
    half = commits // 2
    with Session(client) as session:
        for n in range(half):
            session.add(cls(name=f"n{n}", age=n % 90, id=f"id{n}"))
            session.commit()
        for n in range(commits - half):
            user = session.get(cls, f"id{n % half}")
            assert user is not None  # added above
            user.age += 1
            session.commit()
    elapsed = time.perf_counter() - start
    after = stats(cluster)
    client.close()
    commands = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    cpu = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    total, total_cpu = sum(commands), sum(cpu) or 1.0
    shares = " ".join(f"{c / total:5.1%}" for c in commands)
    cpus = " ".join(f"{c / total_cpu:5.1%}" for c in cpu)
    print(
        f"shards={shards:<3} unique={unique!s:<5} commits={commits}: commands {total} "
        f"per master [{shares}]  cpu {sum(cpu):.2f} s [{cpus}]  "
        f"{commits / elapsed:,.0f} commits/s"
    )


def bulk(cluster: EmbeddedCluster, shards: int, n: int, chunk: int, unique: bool) -> None:
    """``n`` entities by ``bulk_add``, chunks of ``chunk``: entities/s and the masters'
    shares."""
    cls = model(shards, unique)
    client = cluster.client()
    for node in cluster.masters:
        with node.client() as direct:
            direct.flushall()
            direct.config_resetstat()
    before = stats(cluster)
    objs = (cls(name=f"n{i}", age=i % 90, id=f"id{i}") for i in range(n))
    start = time.perf_counter()
    with Session(client) as session:
        written = session.bulk_add(objs, chunk_size=chunk)
    elapsed = time.perf_counter() - start
    after = stats(cluster)
    client.close()
    assert written == n
    commands = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    cpu = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    total, total_cpu = sum(commands) or 1, sum(cpu) or 1.0
    shares = " ".join(f"{c / total:5.1%}" for c in commands)
    cpus = " ".join(f"{c / total_cpu:5.1%}" for c in cpu)
    print(
        f"bulk_add shards={shards:<3} unique={unique!s:<5} n={n} chunk={chunk}: "
        f"commands {sum(commands)} per master [{shares}]  cpu {sum(cpu):.2f} s [{cpus}]  "
        f"{n / elapsed:,.0f} entities/s ({elapsed:.2f} s)"
    )


def paged(masters: list[int], n: int, binary: str | None) -> None:
    """``--paged``: the cluster phase's paged query (``order_by(age).limit(10)``, the
    first page or the one after an entity; bench/cluster.py) on ``n`` users, with
    ``shards=16`` run once per node (``shardquery.PER_NODE``, the default) and shard by
    shard, against ``shards=1``; ``masters`` 0: one plain server (not a cluster).

    Both models hold the same users at once (their keys apart: ``{cu}`` and
    ``{cu@16.k}``), and their queries are taken in turns, the same query on each (which
    one goes first alternates), so that both meet the machine as it is at that moment:
    on a shared machine one model's median alone moves by half between runs. Then the
    first page alone against the floor a user would write by hand with redis-py
    (``cluster.raw_first``), on each model, and that floor's own 16 shards against one.
    Printed: each side's median and the median of the turns' own ratios, and its first
    and third quartiles."""
    import redis

    from redisca.embedded import EmbeddedServer
    from redisca.session import shardquery

    from . import cluster as phase

    for count in masters:
        where = f"{count} master(s)" if count else "one server"
        with contextlib.ExitStack() as stack:
            if count:
                servers = stack.enter_context(
                    EmbeddedCluster(count, binary=binary, node_timeout=15000)
                )
                client: Any = stack.enter_context(RedisCluster.from_url(servers.url))
            else:
                server = stack.enter_context(EmbeddedServer(binary=binary))
                client = stack.enter_context(redis.Redis.from_url(server.url))
            _flush(client)
            one, many = phase.both(client, n)
            for per_node in (True, False):
                shardquery.PER_NODE = per_node
                how = "per node" if per_node else "per shard"
                _print(
                    f"{where:<12} paged query, shards=16 {how:<9} / shards=1",
                    phase.paged(client, one),
                    phase.paged(client, many),
                )
            shardquery.PER_NODE = True
            # The first page against the floor a user would write by hand (bench/cluster.py,
            # raw_first): redisca over the floor on each model, and the floor's own cost
            # of 16 shards.
            floors = {1: phase.raw_first(client, one), 16: phase.raw_first(client, many)}
            for shards, cls in ((1, one), (16, many)):
                _print(
                    f"{where:<12} first page, shards={shards}: redisca / floor",
                    floors[shards],
                    phase.paged(client, cls, "first"),
                )
            label = f"{where:<12} first page, the floor: shards=16 / shards=1"
            _print(label, floors[1], floors[16])
            # The same Redis work (bench/cluster.py, same_work): redisca's own script
            # calls replayed with redis-py, so what remains is redisca's client side.
            for shards, cls in ((1, one), (16, many)):
                _print(
                    f"{where:<12} first page, shards={shards}: redisca / same work",
                    phase.same_work(client, cls),
                    phase.paged(client, cls, "first"),
                )


def _print(label: str, one: Any, many: Any) -> None:
    """``many`` against ``one`` in turns (:func:`bench.cluster.compared`), on a line."""
    from . import cluster as phase

    got = phase.compared(one, many)
    print(
        f"{label}: {got['many']:,.0f} / {got['one']:,.0f} µs, ratio {got['ratio']:.2f} "
        f"(quartiles {got['q1']:.2f} to {got['q3']:.2f})",
        flush=True,
    )


def _flush(client: Any) -> None:
    if isinstance(client, RedisCluster):
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.flushall()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__)
    parser.add_argument("--commits", type=int, default=30_000)
    parser.add_argument("--shards", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--unique", action="store_true", help="also with a unique field")
    parser.add_argument(
        "--bulk", type=int, metavar="N", help="bulk_add N entities instead of the commits"
    )
    parser.add_argument("--chunk", type=int, default=5000, help="bulk_add's chunk_size")
    parser.add_argument(
        "--paged",
        action="store_true",
        help="instead: the paged query's latency, shards=1 against shards=16 per node "
        "and per shard, on --masters",
    )
    parser.add_argument(
        "--masters",
        type=int,
        nargs="*",
        default=[1, 3],
        help="--paged: cluster sizes (0: one plain server)",
    )
    parser.add_argument("--n", type=int, default=10_000, help="--paged: users (>= 1,000)")
    parser.add_argument("--server-bin", default=None, help="--paged: the server binary")
    args = parser.parse_args(argv)
    if args.paged:
        paged(args.masters, args.n, args.server_bin)
        return
    with EmbeddedCluster(masters=3) as cluster:
        for unique in (False, True) if args.unique else (False,):
            for shards in args.shards:
                if args.bulk:
                    bulk(cluster, shards, args.bulk, args.chunk, unique)
                else:
                    run(cluster, shards, args.commits, unique)


if __name__ == "__main__":
    main()

__all__: list[Any] = []

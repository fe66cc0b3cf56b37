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
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import attrs

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
            session.get(cls, f"id{n % half}").age += 1
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__)
    parser.add_argument("--commits", type=int, default=30_000)
    parser.add_argument("--shards", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--unique", action="store_true", help="also with a unique field")
    parser.add_argument(
        "--bulk", type=int, metavar="N", help="bulk_add N entities instead of the commits"
    )
    parser.add_argument("--chunk", type=int, default=5000, help="bulk_add's chunk_size")
    args = parser.parse_args(argv)
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

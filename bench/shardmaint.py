"""``python -m bench.shardmaint``: seconds ``check`` and ``reindex`` take on a model with a
unique field, ``shards=1`` vs ``shards=16``, on an embedded 3-master cluster (issue:
Redis Cluster part 2, maintenance of sharded models with unique fields). With 16 shards
the claims are compared across shards (``redisca.maintenance.shardclaims``); the data
is sound, so no suspicion is read again after ``LINGER``. Not a timed test.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import attrs

from redisca import Email, Integer, Registry, Session, maintenance
from redisca.embedded import EmbeddedCluster


def model(shards: int) -> type:
    registry = Registry()

    @registry.mapped(prefix=f"m{shards}", shards=shards)
    @attrs.define
    class User:
        email: str = Email(unique=True)
        age: int = Integer(index=True, default=0)
        id: str | None = None

    return User


def fill(client: Any, cls: type, users: int) -> None:
    for start in range(0, users, 1000):
        with Session(client) as session:
            session.add_all(
                cls(email=f"u{i}@x.org", age=i % 90, id=f"u{i}")
                for i in range(start, min(users, start + 1000))
            )
            session.commit()


def timed(task: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = task(*args)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with EmbeddedCluster(masters=3, node_timeout=15000) as cluster:
        client = cluster.client()
        for shards in (1, 16):
            cls = model(shards)
            fill(client, cls, args.users)
            checks, reindexes = [], []
            for _ in range(args.rounds):
                seconds, report = timed(maintenance.check, cls, client)
                assert report.ok, report.problems[:5]
                checks.append(seconds)
                seconds, done = timed(maintenance.reindex, cls, client)
                assert done.ok, done.problems[:5]
                reindexes.append(seconds)
            print(
                f"shards={shards:2d} users={args.users}: check "
                f"{min(checks):.2f}-{max(checks):.2f} s, reindex "
                f"{min(reindexes):.2f}-{max(reindexes):.2f} s ({args.rounds} rounds)"
            )
        client.close()


if __name__ == "__main__":
    main()

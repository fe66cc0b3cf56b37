"""Two OS processes claiming one email on the 3-master cluster: exactly one wins.

Each round, both processes (spawned, each with its own ``RedisCluster`` client, one
bytes over RESP3, the other str over RESP2) commit a new user with the same email
(the case differs) at a barrier. Exactly one commit is acknowledged, the other is a
``UniqueViolation`` naming the winner, the email's stripe names the winner, the loser
left nothing, and the indexes match the hashes afterwards (the suite's check and
redisca's ``check``).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import assert_indexes_consistent, dump_keyspace, unique_owner
from models import User
from redis.cluster import RedisCluster

import redisca
from redisca import Session
from redisca.embedded import EmbeddedCluster
from redisca.maintenance import check

ROUNDS = 20
MODES = ({"decode_responses": False, "protocol": 3}, {"decode_responses": True, "protocol": 2})


def claim_worker(url: str, worker: int, barrier: Any, out: Any) -> None:
    client = RedisCluster.from_url(url, **MODES[worker])
    for n in range(ROUNDS):
        s = Session(client)
        email = f"race{n}@x.org" if worker else f"RACE{n}@X.org"
        user = User(email, age=worker)
        s.add(user)
        barrier.wait(timeout=60)
        try:
            s.commit()
            out.put((n, worker, "won", user.id, None))
        except redisca.UniqueViolation as exc:
            out.put((n, worker, "lost", user.id, exc.owner))
        except Exception as exc:  # reported, so the test fails with it
            out.put((n, worker, "error", repr(exc), None))
    client.close()


@pytest.fixture
def rc(redis_cluster: EmbeddedCluster) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster.url)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.close()


def test_two_processes_claiming_one_email_on_the_cluster(
    rc: RedisCluster, redis_cluster: EmbeddedCluster
) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=claim_worker, args=(redis_cluster.url, w, barrier, out))
        for w in range(2)
    ]
    for process in workers:
        process.start()
    try:
        results = [out.get(timeout=120) for _ in range(2 * ROUNDS)]
    finally:
        for process in workers:
            process.join(timeout=60)
    assert [p.exitcode for p in workers] == [0, 0]
    for n in range(ROUNDS):
        rows = sorted((row for row in results if row[0] == n), key=lambda row: row[2])
        assert [row[2] for row in rows] == ["lost", "won"], rows
        lost, won = rows
        assert lost[4] == won[3]  # the violation names the winner
        assert unique_owner(rc, "usr", "eml", f"race{n}@x.org") == won[3]
        assert rc.exists(f"{{usr}}:{won[3]}") and not rc.exists(f"{{usr}}:{lost[3]}")
    stored = {k for k in dump_keyspace(rc) if k.startswith(b"{usr}:")}
    assert stored == {f"{{usr}}:{row[3]}".encode() for row in results if row[2] == "won"}
    assert rc.zcard("{usr}#r:age") == ROUNDS
    assert_indexes_consistent(rc, redisca.inspect(User))
    report = check([User], rc)  # redisca's own check, on the cluster
    assert report.ok and report.problems == [], report.problems
    assert [m.entities for m in report.models] == [ROUNDS]


def test_check_on_the_cluster_finds_what_is_broken(rc: RedisCluster) -> None:
    s = Session(rc)
    s.add_all(User(f"u{i}@x.org", age=i % 150) for i in range(300))
    s.commit()
    assert check([User], rc).ok
    rc.zrem("{usr}#r:age", rc.zrange("{usr}#r:age", 0, 0)[0])
    report = check([User], rc)
    assert not report.ok and report.problems

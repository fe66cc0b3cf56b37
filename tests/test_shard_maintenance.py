"""check, reindex and stats of a sharded model: shard by shard, each on the master
serving its shard, with the same answers as for a model of one shard; an entity found
in another shard than its id's is reported (``wrong_shard``) and never indexed there."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import redis
from helpers import (
    CountingConnection,
    RoundTripCounter,
    flush,
    sent_commands,
    server_or_cluster,
    with_kwargs,
)
from redis.cluster import RedisCluster
from redis.crc import key_slot

import redisca
from redisca import Integer, Registry, Session, String
from redisca.embedded import EmbeddedCluster, EmbeddedServer
from redisca.maintenance import check, reindex, stats

registry = Registry()


@registry.mapped(prefix="sm", shards=8)
@attrs.define
class Member:
    name: str = String(index=True)
    age: int | None = Integer(index=True, default=None)
    id: str | None = None


@registry.mapped(prefix="sm1")
@attrs.define
class Single:
    name: str = String(index=True)
    age: int | None = Integer(index=True, default=None)
    id: str | None = None


N = 300


def fill(client: Any) -> None:
    with Session(client) as s:
        for cls in (Member, Single):
            s.add_all(cls(name=f"n{i % 7}", age=i % 11 or None, id=f"m{i}") for i in range(N))
        s.commit()


@pytest.fixture(params=["one server", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from server_or_cluster(request)


def shard_key(cls: type, ident: str, kind: str = "entity") -> bytes:
    mapper = redisca.inspect(cls)
    layout = mapper.shard_layout(mapper.shard_of(ident))
    if kind == "entity":
        return layout.entity(ident)
    return layout.eq_index(b"name", b"n%d" % (int(ident[1:]) % 7))


def test_a_sound_sharded_model_checks_clean_and_counts_as_one_shard(client: Any) -> None:
    fill(client)
    report = check(registry, client)
    assert report.ok, report.problems
    sharded, single = report.models
    assert (sharded.model, sharded.entities) == ("Member", N)
    assert sharded.entries == single.entries and sharded.entities == single.entities
    counted = stats(registry, client).models
    assert counted[0].entities == counted[1].entities == N
    assert counted[0].ids == N and counted[0].index_entries == counted[1].index_entries
    for kind in ("eq", "range"):  # each shard has every name's set, and its own range index
        assert counted[0].index_keys[kind] == 8 * counted[1].index_keys[kind]


def test_a_lost_index_entry_in_one_shard_is_found_and_reindex_repairs_it(client: Any) -> None:
    fill(client)
    client.srem(shard_key(Member, "m12", "eq"), "m12")
    client.zrem(
        redisca.inspect(Member).shard_layout(3).range_index(b"age"),
        *[i for i in (f"m{k}" for k in range(N)) if redisca.inspect(Member).shard_of(i) == 3][:2],
    )
    found = check([Member], client).problems
    assert sorted(p.kind for p in found) == ["missing_entry"] * 3
    done = reindex([Member], client)
    assert done.ok and done.models[0].entities == N
    assert len(done.models[0].run.split(",")) == 8  # a run per shard
    assert check([Member], client).ok
    with Session(client) as s:
        assert s.query(Member).filter(Member.name == "n5").count() == len(range(5, N, 7))
        assert s.query(Member).count() == N


def test_an_entity_in_another_shard_than_its_ids_is_reported(client: Any) -> None:
    fill(client)
    mapper = redisca.inspect(Member)
    ident = "m40"
    other = mapper.shard_layout((mapper.shard_of(ident) + 1) % 8)
    # Moved by hand: a DUMP/RESTORE, since the two keys are in different slots.
    dumped = client.dump(shard_key(Member, ident))
    client.restore(other.entity(ident), 0, dumped)
    report = check([Member], client)
    assert [(p.kind, p.key) for p in report.problems] == [
        ("wrong_shard", other.entity(ident).decode())
    ]
    assert f"shard is {mapper.shard_of(ident)} of 8" in report.problems[0].detail
    done = reindex([Member], client)
    assert [p.kind for p in done.problems] == ["wrong_shard"]
    assert check([Member], client).problems == report.problems  # indexed in its own shard only


class Recording(CountingConnection):
    """Records each command sent with the port it went to."""

    sent: dict[int, list[list[bytes]]]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.sent[self.port] += sent_commands(command)
        super().send_packed_command(command, check_health)


def test_each_shard_is_walked_on_the_master_serving_it(cluster: EmbeddedCluster) -> None:
    sent: dict[int, list[list[bytes]]] = defaultdict(list)
    cls = type("Rec", (Recording,), {"sent": sent})
    client = RedisCluster.from_url(
        cluster.url, connection_class=with_kwargs(cls, counter=RoundTripCounter())
    )
    try:
        fill(client)
        sent.clear()
        assert check([Member], client).ok
        assert reindex([Member], client).ok
        stats([Member], client)
        masters = set()
        for layout in redisca.inspect(Member).shard_layouts():
            port = cluster.node_for_slot(key_slot(layout.hashtag)).port
            masters.add(port)
            pattern = layout.entity_pattern
            scans = [c for c in sent[port] if c[0] == b"SCAN" and pattern in c]
            assert len(scans) >= 3, layout.tag  # check, reindex, stats
            for other, commands in sent.items():
                if other != port:
                    assert not [c for c in commands if c[0] == b"SCAN" and pattern in c]
        assert len(masters) == 3
    finally:
        flush(client)
        client.close()


def test_check_of_a_single_server_model_is_unchanged(redis_server: EmbeddedServer) -> None:
    client: redis.Redis = redis_server.client()
    try:
        client.flushall()
        fill(client)
        assert check([Single], client).ok and check([Single], client).models[0].entities == N
    finally:
        client.flushall()
        client.close()


class Threaded(CountingConnection):
    """Records the thread each command was sent from."""

    threads: set[int]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.threads.add(threading.get_ident())
        super().send_packed_command(command, check_health)


@pytest.mark.parametrize("task", ["check", "stats"])
def test_the_shards_are_worked_on_at_once_with_one_running_count(
    redis_server: EmbeddedServer, task: str
) -> None:
    """A sharded model's shards are checked (counted) in parallel threads; the progress
    callback is called one call at a time, with one count for the model that only grows
    and ends at the sum of the shards' work. A model of one shard stays on the caller's
    thread."""
    threads: set[int] = set()
    cls = type("Threads", (Threaded,), {"threads": threads})
    client = redis.Redis.from_url(
        redis_server.url, connection_class=with_kwargs(cls, counter=RoundTripCounter())
    )
    run = {"check": check, "stats": stats}[task]
    try:
        fill(client)
        calls: list[tuple[str, str, int]] = []
        inside = threading.Lock()

        def progress(model: str, phase: str, done: int, total: int | None) -> None:
            assert inside.acquire(blocking=False), "progress called from two threads at once"
            try:
                calls.append((model, phase, done))
            finally:
                inside.release()

        threads.clear()
        run([Single], client, progress=progress)
        assert threads == {threading.get_ident()}
        single = [c for c in calls if c[0] == "Single"]
        assert {phase for _, phase, _ in single} != {"all shards"}
        calls.clear()
        threads.clear()
        run([Member], client, progress=progress)
        assert len(threads) > 1  # shards in flight on several threads
        assert {(model, phase) for model, phase, _ in calls} == {("Member", "all shards")}
        counts = [done for _, _, done in calls]
        assert counts == sorted(counts) and counts[-1] >= N
    finally:
        flush(client)
        client.close()

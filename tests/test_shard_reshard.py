"""reshard: a model's data moved from one shard count to another (1 -> 8 -> 3) while a
writer commits with the new mapping: no entity lost, nothing of the old layouts left,
``check`` clean; run again, it moves nothing; an entity the application wrote at its new
key since is never overwritten. On one server and on the 3-master cluster."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from redis.cluster import RedisCluster

import redisca
from redisca import Integer, Registry, Session, String
from redisca.cli import main as cli_main
from redisca.embedded import EmbeddedCluster, EmbeddedServer
from redisca.maintenance import MaintenanceError, UnknownName, check, reshard


def _member(shards: int) -> tuple[Registry, type]:
    """The same model as deployed with ``shards`` shards (prefix ``rs`` each time)."""
    registry = Registry()

    @registry.mapped(prefix="rs", shards=shards)
    @attrs.define
    class Member:
        name: str = String(index=True)
        age: int | None = Integer(index=True, default=None)
        id: str | None = None

    return registry, Member


(REG1, M1), (REG8, M8), (REG3, M3) = _member(1), _member(8), _member(3)
N = 400


def flush(client: Any) -> None:
    if isinstance(client, RedisCluster):
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.flushall()


@pytest.fixture(params=["one server", "cluster"])
def url_and_client(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    if request.param == "cluster":
        cluster: EmbeddedCluster = request.getfixturevalue("cluster")
        make = lambda: RedisCluster.from_url(cluster.url)  # noqa: E731
    else:
        server: EmbeddedServer = request.getfixturevalue("redis_server")
        make = server.client
    client = make()
    flush(client)
    yield make, client
    flush(client)
    client.close()


class Writer(threading.Thread):
    """Commits with the new mapping while a reshard runs: inserts, then updates."""

    def __init__(self, make: Any, cls: type, tag: str) -> None:
        super().__init__(daemon=True)
        self.client, self.cls, self.tag = make(), cls, tag
        self.stop = threading.Event()
        self.written: dict[str, int] = {}
        self.errors: list[BaseException] = []

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set() or n < 20:
                with Session(self.client) as s:
                    ident = f"{self.tag}{n}"
                    s.add(self.cls(name=f"n{n % 5}", age=n, id=ident))
                    if n:
                        s.get(self.cls, f"{self.tag}{n - 1}").age = -n
                    s.commit()
                self.written[ident] = n
                if n:
                    self.written[f"{self.tag}{n - 1}"] = -n
                n += 1
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            self.client.close()


def all_keys(client: Any) -> list[bytes]:
    if isinstance(client, RedisCluster):
        return list(client.scan_iter(match="*rs*", target_nodes=RedisCluster.PRIMARIES))
    return list(client.scan_iter(match="*rs*"))


def expect_all(client: Any, cls: type, expected: dict[str, int | None]) -> None:
    with Session(client) as s:
        got = s.get_many(cls, list(expected))
        assert [None if g is None else g.age for g in got] == list(expected.values())
        assert s.query(cls).count() == len(expected)
        assert sorted(s.query(cls).ids()) == sorted(expected)


def stage(make: Any, client: Any, registry: Registry, cls: type, tag: str) -> dict[str, int]:
    """Deploy ``cls``, reshard to its shards with a writer running; the writer's data."""
    writer = Writer(make, cls, tag)
    writer.start()
    try:
        done = reshard(registry, cls.__name__, redisca.inspect(cls).shards, client, batch=50)
    finally:
        writer.stop.set()
        writer.join(60)
    assert not writer.errors, writer.errors
    assert done.ok, done.problems
    return {**writer.written, "moved": done.models[0].moved}


def test_reshard_1_to_8_to_3_under_a_concurrent_writer(url_and_client: Any) -> None:
    make, client = url_and_client
    with Session(client) as s:
        s.add_all(M1(name=f"n{i % 5}", age=i % 17, id=f"m{i}") for i in range(N))
        s.commit()
    expected: dict[str, int | None] = {f"m{i}": i % 17 for i in range(N)}

    got = stage(make, client, REG8, M8, "w")
    assert got.pop("moved") == N  # the writer's entities were written in place
    expected.update(got)
    expect_all(client, M8, expected)
    assert check(REG8, client).ok
    heads = {k.split(b"}")[0] + b"}" for k in all_keys(client)}
    assert heads <= {layout.hashtag for layout in redisca.inspect(M8).shard_layouts()}

    got = stage(make, client, REG3, M3, "v")
    assert got.pop("moved") == len(expected)
    expected.update(got)
    expect_all(client, M3, expected)
    assert check(REG3, client).ok
    heads = {k.split(b"}")[0] + b"}" for k in all_keys(client)}
    assert heads <= {layout.hashtag for layout in redisca.inspect(M3).shard_layouts()}

    again = reshard(REG3, "Member", 3, client)  # idempotent: nothing more to move
    assert again.ok and (again.models[0].moved, again.models[0].dropped) == (0, 0)
    expect_all(client, M3, expected)


def test_an_entity_written_at_its_new_key_since_is_never_overwritten(
    url_and_client: Any,
) -> None:
    _, client = url_and_client
    with Session(client) as s:
        s.add_all(M1(name="old", age=i, id=f"m{i}") for i in range(10))
        s.commit()
    with Session(client) as s:
        s.add(M8(name="new", age=100, id="m3"))  # the application, with the new mapping
        s.commit()
    done = reshard(REG8, "Member", 8, client)
    assert [(p.kind, p.key) for p in done.problems] == [("old_layout", "{rs}:m3")]
    assert done.models[0].moved == 9 and done.models[0].kept == 1
    with Session(client) as s:
        assert s.get(M8, "m3").name == "new"
        assert s.query(M8).count() == 10


def test_a_run_interrupted_between_its_copy_and_its_delete_resumes(
    redis_server: EmbeddedServer,
) -> None:
    client = redis_server.client()
    client.flushall()
    try:
        with Session(client) as s:
            s.add_all(M1(name="x", age=i, id=f"m{i}") for i in range(10))
            s.commit()
        old = redisca.inspect(M1).layout.entity("m4")
        new = redisca.inspect(M8).layout.entity("m4")
        client.restore(new, 0, client.dump(old))  # copied, not deleted yet
        done = reshard(REG8, "Member", 8, client)
        assert done.ok and (done.models[0].moved, done.models[0].resumed) == (9, 1)
        assert check(REG8, client).ok
    finally:
        client.flushall()
        client.close()


def test_the_shards_given_must_be_the_deployed_ones(redis_server: EmbeddedServer) -> None:
    client = redis_server.client()
    try:
        with pytest.raises(UnknownName, match=r"declares shards=8.*Set shards=3"):
            reshard(REG8, "Member", 3, client)
        with pytest.raises(MaintenanceError, match="shards must be an int"):
            reshard(REG8, "Member", 0, client)
    finally:
        client.close()


def test_from_the_shell_with_json(redis_server: EmbeddedServer, capsys: Any) -> None:
    client = redis_server.client()
    client.flushall()
    try:
        with Session(client) as s:
            s.add_all(M1(name="x", age=i, id=f"m{i}") for i in range(30))
            s.commit()
        argv = ["reshard", "test_shard_reshard:REG8", "Member", "8", "--url", redis_server.url]
        assert cli_main([*argv, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["ok"] and out["models"][0]["moved"] == 30
        assert out["models"][0]["found_layouts"] == [1]
        assert cli_main(argv) == 0
        text = capsys.readouterr().out
        assert "moved 0 entities" in text and "layouts found with none" in text
        assert cli_main(["reshard", "test_shard_reshard:REG8", "Member", "3"]) == 2
    finally:
        client.flushall()
        client.close()


def test_check_reports_the_keys_of_another_shard_count_until_reshard(
    url_and_client: Any,
) -> None:
    _, client = url_and_client
    with Session(client) as s:
        s.add_all(M1(name="x", age=i, id=f"m{i}") for i in range(12))
        s.commit()
    old = sorted(k.decode() for k in all_keys(client))
    found = check(REG8, client)
    assert sorted(p.key for p in found.problems) == old
    assert {p.kind for p in found.problems} == {"old_layout"}
    assert "layout with 1 shard(s)" in found.problems[0].detail
    assert "reshard MODULE:registry Member 8" in found.problems[0].detail
    assert reshard(REG8, "Member", 8, client).ok
    assert check(REG8, client).ok

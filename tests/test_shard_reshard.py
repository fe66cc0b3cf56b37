"""reshard: a model's data moved from one shard count to another (1 -> 8 -> 3) while a
writer commits with the new mapping: no entity lost, nothing of the old layouts left,
``check`` clean; run again, it moves nothing; an entity the application wrote at its new
key since is never overwritten. A model with a unique field too (1 -> 8 -> 3 -> 1): each
value claimed for its holder afterwards, from raw Redis. On one server and on the
3-master cluster."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from helpers import flush
from redis.cluster import RedisCluster

import redisca
from redisca import Email, Integer, Registry, Session, String, UniqueViolation
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


def _account(shards: int) -> tuple[Registry, type]:
    """A model with a unique field, as deployed with ``shards`` shards (prefix ``rsu``)."""
    registry = Registry()

    @registry.mapped(prefix="rsu", shards=shards)
    @attrs.define
    class Account:
        email: str = Email(unique=True)
        age: int = Integer(index=True, default=0)
        id: str | None = None

    return registry, Account


ACCOUNTS = {n: _account(n) for n in (1, 8, 3)}


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
    """Commits with the new mapping while a reshard runs: an insert per commit, and the
    entity before it changed (:meth:`step`), until stopped and at least 20 commits."""

    def __init__(self, make: Any, cls: type, tag: str) -> None:
        super().__init__(daemon=True)
        self.client, self.cls, self.tag = make(), cls, tag
        self.stop = threading.Event()
        self.written: dict[str, Any] = {}
        self.errors: list[BaseException] = []

    def step(self, s: Session, n: int) -> dict[str, Any]:
        """Commit number ``n``'s changes, added to ``s``: what each id now holds."""
        ident, before = f"{self.tag}{n}", f"{self.tag}{n - 1}"
        s.add(self.cls(name=f"n{n % 5}", age=n, id=ident))
        if not n:
            return {ident: n}
        s.get(self.cls, before).age = -n
        return {ident: n, before: -n}

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set() or n < 20:
                with Session(self.client) as s:
                    done = self.step(s, n)
                    s.commit()
                self.written.update(done)
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


class EmailWriter(Writer):
    """A :class:`Writer` of accounts with fresh emails, the previous one's email changed
    (a value claimed, another released, each commit); ``written``: id -> email."""

    def step(self, s: Session, n: int) -> dict[str, Any]:
        ident, before = f"{self.tag}{n}", f"{self.tag}{n - 1}"
        s.add(self.cls(email=f"{ident}@x.org", age=n, id=ident))
        if not n:
            return {ident: f"{ident}@x.org"}
        s.get(self.cls, before).email = f"{before}b@x.org"
        return {ident: f"{ident}@x.org", before: f"{before}b@x.org"}


def claims_from_raw(raw: Any, cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """Every ``email`` held (value -> holder) and claimed (value -> owner) in the model's
    layout, read with plain ``SCAN``/``HGET``/``HGETALL``: an oracle of its own."""
    held: dict[str, str] = {}
    claimed: dict[str, str] = {}
    for layout in redisca.inspect(cls).shard_layouts():
        for stripe in layout.unique_stripes(b"email"):
            claimed.update({_text(v): _text(o) for v, o in raw.hgetall(stripe).items()})
        prefix = layout.entity("")
        for key in raw.scan_iter(match=layout.entity_pattern, count=1000):
            value = raw.hget(key, b"email")
            assert _text(value) not in held, f"{_text(value)} held twice"
            held[_text(value)] = _text(key)[len(_text(prefix)) :]
    return held, claimed


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_reshard_of_a_model_with_a_unique_field_under_a_concurrent_writer(
    url_and_client: Any,
) -> None:
    make, client = url_and_client
    a1 = ACCOUNTS[1][1]
    with Session(client) as s:
        s.add_all(a1(email=f"m{i}@x.org", age=i, id=f"m{i}") for i in range(N // 2))
        s.commit()
    emails = {f"m{i}": f"m{i}@x.org" for i in range(N // 2)}
    for shards, tag in ((8, "w"), (3, "v"), (1, "u")):
        registry, cls = ACCOUNTS[shards]
        writer = EmailWriter(make, cls, tag)
        writer.start()
        try:
            done = reshard(registry, "Account", shards, client, batch=50)
        finally:
            writer.stop.set()
            writer.join(60)
        assert not writer.errors, writer.errors
        assert done.ok, done.problems
        emails.update(writer.written)
        held, claimed = claims_from_raw(client, cls)
        assert held == {email: ident for ident, email in emails.items()}
        assert claimed == held  # each value claimed for its holder, no claim left over
        assert check(registry, client).ok
        with Session(client) as s:
            assert s.query(cls).filter_by(email="m7@x.org").ids() == ["m7"]
            s.add(cls(email="M7@x.org", id="intruder"))
            with pytest.raises(UniqueViolation):
                s.commit()
            s.rollback()
        heads = {k.split(b"}")[0] + b"}" for k in all_keys(client) if b"rsu" in k}
        assert heads <= {layout.hashtag for layout in redisca.inspect(cls).shard_layouts()}


def test_a_value_taken_during_the_window_is_reported_as_a_duplicate(
    url_and_client: Any,
) -> None:
    """Until the reindex has claimed a moved entity's values, a commit's unique check does
    not see them (docs/operations.rst): a value taken meanwhile is held twice, and check
    and reshard's reindex report it, for the user to settle."""
    _, client = url_and_client
    a1, (reg8, a8) = ACCOUNTS[1][1], ACCOUNTS[8]
    with Session(client) as s:
        s.add_all(a1(email=f"m{i}@x.org", id=f"m{i}") for i in range(10))
        s.commit()
    with Session(client) as s:  # the new mapping deployed, the reshard not run yet
        s.add(a8(email="m3@x.org", id="taker"))
        s.commit()
    done = reshard(reg8, "Account", 8, client)
    assert done.models[0].moved == 10
    assert [(p.kind, p.field) for p in done.problems] == [("duplicate_unique", "email")]
    found = check(reg8, client)
    assert [p.kind for p in found.problems] == ["duplicate_unique"]
    assert "m3" in found.problems[0].detail and "taker" in found.problems[0].detail

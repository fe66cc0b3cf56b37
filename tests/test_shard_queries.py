"""Queries of sharded models: the same answers with 1, 8 and 16 shards, on one server and
on the 3-master cluster, and equal to a Python model of the query.

Hypothesis draws the rows (ties in every ordering field, spread over the shards by id)
and the shapes (no condition + limit, order + limit, equality + order + limit, range AND
range, unique values, cursors, offsets from 0 to past the end, so a page boundary falls
inside one shard's run of results and between two shards'). A 16-shard page costs one
round trip per master, counted on the wire.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import redis
from helpers import CountingConnection, RoundTripCounter, flush, with_kwargs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.cluster import RedisCluster
from test_query_engine import Row, Shape, datasets, model, shapes

import redisca
from redisca import Email, Float, Integer, Registry, Session, String
from redisca.embedded import EmbeddedCluster, EmbeddedServer
from redisca.session import executor

registry = Registry()
SHARDS = (1, 8, 16)


def _item(prefix: str, shards: int) -> type:
    """An ``Item`` of test_query_engine (a unique e-mail, two range fields, an equality
    index), with ``shards`` shards."""

    @registry.mapped(prefix=prefix, shards=shards)
    @attrs.define
    class Item:
        email: str = Email(field="eml", unique=True)
        age: int | None = Integer(index=True, default=None)
        score: float | None = Float(index=True, default=None)
        city: str | None = String(index=True, default=None)
        id: str | None = None

    return Item


ONE_SERVER = [_item(f"sq{n}", n) for n in SHARDS]
ON_CLUSTER = [_item(f"sc{n}", n) for n in SHARDS]


def build(session: Session, cls: type, shape: Shape) -> Any:
    """test_query_engine's ``build`` for any of the Item classes."""
    query = session.query(cls)
    for cond in shape.conditions:
        attr = getattr(cls, cond[0])
        if cond[1] == "between":
            query = query.filter(attr.between(cond[2], cond[3]))
        else:
            method = {
                "eq": "__eq__",
                "ge": "__ge__",
                "gt": "__gt__",
                "le": "__le__",
                "lt": "__lt__",
            }
            query = query.filter(getattr(attr, method[cond[1]])(cond[2]))
    if shape.order is not None:
        attr = getattr(cls, shape.order)
        query = query.order_by(attr.desc() if shape.desc else attr)
    query = query.offset(shape.offset).limit(shape.limit)
    return query.after(shape.after) if shape.after is not None else query


def answers(client: Any, cls: type, shape: Shape) -> dict[str, Any]:
    with Session(client) as s:
        query = build(s, cls, shape)
        out: dict[str, Any] = {
            "ids": query.ids(),
            "count": query.count(),
            "all": [attrs.asdict(i) for i in query.all()],
            "first": None if (first := query.first()) is None else first.id,
        }
        if shape.after is not None:
            unpaged = build(s, cls, attrs.evolve(shape, after=None))
            out["after instance"] = unpaged.after(s.get(cls, shape.after)).ids()
    return out


def fill(client: Any, classes: list[type], rows: dict[str, Row]) -> None:
    flush(client)
    with Session(client) as s:
        for cls in classes:
            s.add_all(cls(id=i, **row) for i, row in rows.items())
        s.commit()


def same(client: Any, classes: list[type], rows: dict[str, Row], shape: Shape) -> None:
    expected = model(rows, shape)
    got = [answers(client, cls, shape) for cls in classes]
    for cls, other in zip(classes[1:], got[1:], strict=True):
        assert other == got[0], (redisca.inspect(cls).shards, shape)
    assert got[0]["ids"] == expected and got[0]["count"] == len(expected), shape


@st.composite
def deep_shapes(draw: Any, rows: dict[str, Row]) -> Shape:
    """test_query_engine's shapes, with offsets up to past the end of the rows."""
    shape = draw(shapes(rows))
    return attrs.evolve(shape, offset=draw(st.integers(0, len(rows) + 2)))


MODES = {
    "bytes-resp3": {"decode_responses": False, "protocol": 3},
    "str-resp2": {"decode_responses": True, "protocol": 2},
}


@pytest.fixture(params=list(MODES), ids=list(MODES))
def one(request: pytest.FixtureRequest, redis_server: EmbeddedServer) -> Iterator[redis.Redis]:
    client = redis_server.client(**MODES[request.param])
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def many(cluster: EmbeddedCluster) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url)
    yield client
    client.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_drawn_shapes_answer_alike_on_one_server(one: redis.Redis, data: Any) -> None:
    rows = data.draw(datasets())
    fill(one, ONE_SERVER, rows)
    for _ in range(5):
        same(one, ONE_SERVER, rows, data.draw(deep_shapes(rows)))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_drawn_shapes_answer_alike_on_a_cluster(many: RedisCluster, data: Any) -> None:
    rows = data.draw(datasets())
    fill(many, ON_CLUSTER, rows)
    for _ in range(5):
        same(many, ON_CLUSTER, rows, data.draw(deep_shapes(rows)))


def tied_rows(n: int) -> dict[str, Row]:
    """``n`` rows of three ages and two cities: long runs of ties, every run spread
    over every shard."""
    return {
        f"i{k:03d}": {
            "email": f"i{k}@ex.com",
            "age": k % 3,
            "score": None if k % 5 == 0 else float(k % 4),
            "city": "xy"[k % 2],
        }
        for k in range(n)
    }


NAMED = {
    "no condition + limit": Shape(limit=7),
    "order + limit": Shape(order="score", limit=9),
    "order desc + offset across shards": Shape(order="age", desc=True, offset=37, limit=11),
    "equality + order + limit": Shape((("city", "eq", "x"),), order="score", limit=6),
    "range AND range": Shape((("age", "ge", 1), ("score", "lt", 3.0)), offset=5, limit=10),
    "unique": Shape((("email", "eq", "I42@EX.COM"),)),
    "unique and a miss": Shape((("email", "eq", "i42@ex.com"), ("city", "eq", "y"))),
    "count": Shape((("city", "eq", "y"),)),
    "after, deep": Shape(order="age", after="i150", limit=13),
    "after desc": Shape((("city", "eq", "y"),), order="score", desc=True, after="i011"),
    "past the end": Shape(offset=500, limit=3),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_shapes_with_ties_across_shards(one: redis.Redis, name: str) -> None:
    rows = tied_rows(200)
    fill(one, ONE_SERVER, rows)
    same(one, ONE_SERVER, rows, NAMED[name])


def test_named_shapes_on_a_cluster(many: RedisCluster) -> None:
    rows = tied_rows(200)
    fill(many, ON_CLUSTER, rows)
    for shape in NAMED.values():
        same(many, ON_CLUSTER, rows, shape)


def test_paging_through_everything_by_offset_and_by_keyset(one: redis.Redis) -> None:
    rows = tied_rows(120)
    fill(one, ONE_SERVER, rows)
    expected = model(rows, Shape(order="score"))
    cls = ONE_SERVER[-1]
    with Session(one) as s:
        by_offset = [
            s.query(cls).order_by(cls.score).offset(k).limit(7).ids() for k in range(0, 120, 7)
        ]
        assert [i for page in by_offset for i in page] == expected
        keyset, last = [], None
        while True:
            page = s.query(cls).order_by(cls.score).after(last).limit(7).all()
            if not page:
                break
            keyset += [i.id for i in page]
            last = page[-1]
        assert keyset == expected


def test_a_keyset_page_reads_a_page_per_shard_not_the_offset(one: redis.Redis) -> None:
    """A deep offset costs every shard offset + limit entries; a keyset page costs what
    it returns (the script's own count of the entries it read)."""
    rows = tied_rows(600)
    fill(one, ONE_SERVER[-1:], rows)
    cls = ONE_SERVER[-1]
    with Session(one) as s:
        query = s.query(cls).order_by(cls.score).limit(10)
        deep, _ = executor.drive(query.offset(500)._run(b"ids"))
        keyset, _ = executor.drive(query.after("i300")._run(b"ids"))
    assert deep[2] >= 16 * 10 and deep[2] >= 500  # each shard walked to its 510th
    assert keyset[2] <= 16 * 10


class Recording(CountingConnection):
    """Counts round trips per server port (every connection of one client shares it)."""

    ports: Counter[int]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.ports[self.port] += 1
        super().send_packed_command(command, check_health)


def _recording_client(url: str, cluster: bool) -> tuple[Any, Counter[int]]:
    ports: Counter[int] = Counter()
    cls = type("Recording", (Recording,), {"ports": ports})
    connection_class = with_kwargs(cls, counter=RoundTripCounter())
    if cluster:
        client: Any = RedisCluster.from_url(url, connection_class=connection_class)
        client.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        client = redis.Redis.from_url(url, connection_class=connection_class)
        client.ping()
    return client, ports


@pytest.mark.parametrize("where", ["one server", "cluster"])
def test_a_paged_query_on_16_shards_is_one_round_trip_per_master(
    request: pytest.FixtureRequest, where: str
) -> None:
    if where == "cluster":
        server: Any = request.getfixturevalue("cluster")
        classes, masters = ON_CLUSTER, 3
    else:
        server = request.getfixturevalue("redis_server")
        classes, masters = ONE_SERVER, 1
    cls = classes[-1]
    client, ports = _recording_client(server.url, where == "cluster")
    try:
        fill(client, [cls], tied_rows(100))
        with Session(client) as s:
            s.query(cls).limit(1).ids()  # every server has the script
            for run in (
                lambda q: q.order_by(cls.score).offset(20).limit(10).all(),
                lambda q: q.filter(cls.city == "x").order_by(cls.age.desc()).limit(10).ids(),
                lambda q: q.filter(cls.age >= 1).count(),
            ):
                ports.clear()
                run(s.query(cls))
                assert len(ports) == masters and set(ports.values()) == {1}, ports
    finally:
        flush(client)
        client.close()


def test_a_stale_claim_finds_nothing(one: redis.Redis) -> None:
    """A claim whose owner no longer holds the value (left by a commit that failed
    part-way on a cluster) is no match: the owner's hash is read with the query."""
    cls = ONE_SERVER[-1]
    fill(one, [cls], tied_rows(20))
    mapper = redisca.inspect(cls)
    stripe = mapper.layout.unique_stripe(b"eml", b"i3@ex.com")
    one.hset(stripe, b"i3@ex.com", "i004")  # i004 holds i4@ex.com
    with Session(one) as s:
        assert s.query(cls).filter(cls.email == "i3@ex.com").all() == []
        assert s.query(cls).filter(cls.email == "i3@ex.com").count() == 0
        assert s.query(cls).filter(cls.email == "i4@ex.com").one().id == "i004"


def test_the_async_session_answers_as_the_sync_one(one: redis.Redis) -> None:
    """The shard queries are protocol steps (redisca.session.io): the async query runs
    the same scatter and merge."""
    import asyncio

    import redis.asyncio

    from redisca.asyncio import AsyncSession

    cls = ONE_SERVER[-1]
    rows = tied_rows(120)
    fill(one, [cls], rows)
    kwargs = one.connection_pool.connection_kwargs
    options = {
        k: kwargs[k] for k in ("host", "port", "decode_responses", "protocol") if k in kwargs
    }

    async def main() -> list[Any]:
        client = redis.asyncio.Redis(**options)
        try:
            async with AsyncSession(client) as s:
                q = s.query(cls).filter(cls.city == "x").order_by(cls.score.desc())
                page = await q.offset(13).limit(9).all()
                return [
                    [i.id for i in page],
                    await q.count(),
                    (await s.query(cls).filter(cls.email == "I7@ex.com").one()).id,
                    await q.after("i011").limit(4).ids(),
                ]
        finally:
            await client.aclose()

    got = asyncio.run(main())
    with Session(one) as s:
        q = s.query(cls).filter(cls.city == "x").order_by(cls.score.desc())
        assert got == [
            q.offset(13).limit(9).ids(),
            q.count(),
            "i007",
            q.after("i011").limit(4).ids(),
        ]

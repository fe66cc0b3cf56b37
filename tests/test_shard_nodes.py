"""A sharded model's query runs once per node (``queryscript.NODES``), not once per shard.

Each node merges the runs of the shards it serves by (score, id) and loads only its first
``offset + limit`` hashes; the client merges the nodes' replies. The answers must equal
the shard-by-shard path's (``shardquery.PER_NODE = False``) and one shard's, for every
shape: orders both ways, ties across shards, offsets straddling shards, counts, equality
and range terms, empty shards, id order (a model with no range index), keyset cursors.
The script runs once per node (``INFO commandstats``), and a node that no longer serves
a shard's slot makes the query fall back to the shard path, with the right answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
from clusterhelpers import slot_moved
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.cluster import RedisCluster
from test_query_engine import Row, Shape, datasets, model
from test_shard_queries import NAMED, answers, build, deep_shapes, fill, flush, tied_rows

import redisca
from redisca import Integer, Registry, Session, String
from redisca.asyncio import AsyncSession
from redisca.embedded import EmbeddedCluster, EmbeddedServer
from redisca.session import executor, queryscript, routing, shardquery

registry = Registry()


def _item(prefix: str, shards: int) -> type:
    """test_shard_queries' Item (a unique e-mail, two range fields, an equality index)."""
    from redisca import Email, Float

    @registry.mapped(prefix=prefix, shards=shards)
    @attrs.define
    class Item:
        email: str = Email(field="eml", unique=True)
        age: int | None = Integer(index=True, default=None)
        score: float | None = Float(index=True, default=None)
        city: str | None = String(index=True, default=None)
        id: str | None = None

    return Item


def _tag(prefix: str, shards: int) -> type:
    """A model with no range index: its queries are in id order (``H#all``)."""

    @registry.mapped(prefix=prefix, shards=shards)
    @attrs.define
    class Tag:
        city: str | None = String(index=True, default=None)
        id: str | None = None

    return Tag


ONE, EIGHT, SIXTEEN = (_item(f"nd{n}", n) for n in (1, 8, 16))
TAG1, TAG16 = _tag("ng1", 1), _tag("ng16", 16)


@pytest.fixture
def per_shard(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run a function with the shard-by-shard path, then restore the per-node one."""

    def run(fn: Any) -> Any:
        monkeypatch.setattr(shardquery, "PER_NODE", False)
        try:
            return fn()
        finally:
            monkeypatch.setattr(shardquery, "PER_NODE", True)

    return run


@pytest.fixture
def one(redis_server: EmbeddedServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def many(cluster: EmbeddedCluster) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url)
    yield client
    client.close()


def alike(client: Any, per_shard: Any, rows: dict[str, Row], shape: Shape) -> None:
    """Per node on 16 and 8 shards == shard by shard on 16 == one shard == the model."""
    expected = model(rows, shape)
    one_shard = answers(client, ONE, shape)
    assert one_shard["ids"] == expected, shape
    for cls in (SIXTEEN, EIGHT):
        assert answers(client, cls, shape) == one_shard, (redisca.inspect(cls).shards, shape)
    assert per_shard(lambda: answers(client, SIXTEEN, shape)) == one_shard, shape


SHAPES = {
    **NAMED,
    "offset inside a run of ties": Shape(order="age", offset=66, limit=10),
    "desc, offset straddling shards": Shape(order="score", desc=True, offset=9, limit=25),
    "range window, desc": Shape((("age", "between", 1, 2),), order="age", desc=True, limit=12),
    "equality + range, offset": Shape(
        (("city", "eq", "y"), ("score", "ge", 1.0)), order="age", offset=17, limit=8
    ),
    "count with offset and limit": Shape((("age", "ge", 1),), offset=30, limit=50),
    "no limit": Shape((("city", "eq", "x"),), order="score", offset=90),
    "limit 0": Shape(order="age", limit=0),
    "after, equality": Shape((("city", "eq", "x"),), order="age", after="i100", limit=9),
    "after desc, no term": Shape(order="score", desc=True, after="i012", limit=8),
    "after, no term, no limit": Shape(order="age", after="i100"),
    "after, no term, offset": Shape(order="age", after="i100", offset=5, limit=10),
    "after desc, offset": Shape(order="age", desc=True, after="i031", offset=40, limit=7),
    "after the last": Shape(order="age", after="i198", limit=5),
}


@pytest.mark.parametrize("where", ["one server", "cluster"])
def test_every_shape_answers_as_the_shard_path_and_one_shard(
    request: pytest.FixtureRequest, per_shard: Any, where: str
) -> None:
    client = request.getfixturevalue("one" if where == "one server" else "many")
    rows = tied_rows(200)
    fill(client, [ONE, EIGHT, SIXTEEN], rows)
    for shape in SHAPES.values():
        alike(client, per_shard, rows, shape)


@pytest.mark.parametrize("where", ["one server", "cluster"])
def test_keyset_pages_in_long_runs_of_ties(
    request: pytest.FixtureRequest, per_shard: Any, where: str
) -> None:
    """``after()`` in one run of 300 ties: on 16 shards a shard holds about 19 of them,
    so a cursor early in the run has a few ties of its shard before it (the node script
    reads the page in one command, dropping them) and one late in it more than the
    script's slack of 8 (it places the cursor by rank instead). Same answers either way,
    both orders, with offsets."""
    client = request.getfixturevalue("one" if where == "one server" else "many")
    rows: dict[str, Row] = {
        f"i{k:03d}": {"email": f"i{k}@ex.com", "age": 7, "score": float(k % 2), "city": "x"}
        for k in range(300)
    }
    fill(client, [ONE, EIGHT, SIXTEEN], rows)
    for after in ("i005", "i150", "i290"):
        for desc in (False, True):
            for offset, limit in ((0, 7), (3, 20)):
                shape = Shape(order="age", desc=desc, after=after, offset=offset, limit=limit)
                alike(client, per_shard, rows, shape)


@pytest.mark.parametrize("where", ["one server", "cluster"])
def test_empty_shards_and_id_order(
    request: pytest.FixtureRequest, per_shard: Any, where: str
) -> None:
    """Three entities on 16 shards (most shards empty, some nodes with nothing), and a
    model ordered by id alone."""
    client = request.getfixturevalue("one" if where == "one server" else "many")
    rows = {k: v for k, v in tied_rows(200).items() if k in ("i007", "i100", "i150")}
    fill(client, [ONE, EIGHT, SIXTEEN], rows)
    for shape in (Shape(limit=2), Shape(order="age", desc=True, offset=1, limit=5), Shape()):
        alike(client, per_shard, rows, shape)
    flush(client)
    with Session(client) as s:
        for k in range(150):
            s.add(TAG1(city="ab"[k % 2], id=f"t{k:03d}"))
            s.add(TAG16(city="ab"[k % 2], id=f"t{k:03d}"))
        s.commit()

    def tags(cls: type) -> list[Any]:
        with Session(client) as s:
            q = s.query(cls)
            return [
                q.limit(10).ids(),
                q.filter(cls.city == "b").offset(33).limit(12).ids(),
                [t.id for t in q.offset(140).limit(20).all()],
                q.filter(cls.city == "a").count(),
                q.offset(5).limit(7).count(),
            ]

    expected = tags(TAG1)
    assert expected[0] == [f"t{k:03d}" for k in range(10)]
    assert tags(TAG16) == expected
    assert per_shard(lambda: tags(TAG16)) == expected


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_drawn_shapes_per_node_as_per_shard(one: redis.Redis, per_shard: Any, data: Any) -> None:
    rows = data.draw(datasets())
    fill(one, [ONE, EIGHT, SIXTEEN], rows)
    for _ in range(4):
        alike(one, per_shard, rows, data.draw(deep_shapes(rows)))


def _script_calls(nodes: list[Any]) -> list[int]:
    """EVAL + EVALSHA calls per node since the last call (and reset them)."""
    out = []
    for node in nodes:
        with node.client() as c:
            stats = c.info("commandstats")
            out.append(sum(int(v["calls"]) for k, v in stats.items() if "eval" in k))
            c.config_resetstat()
    return out


@pytest.mark.parametrize("where", ["one server", "cluster"])
def test_one_script_call_per_node(
    request: pytest.FixtureRequest, per_shard: Any, where: str
) -> None:
    if where == "cluster":
        server: Any = request.getfixturevalue("cluster")
        nodes, client = server.masters, request.getfixturevalue("many")
    else:
        server = request.getfixturevalue("redis_server")
        nodes, client = [server], request.getfixturevalue("one")
    fill(client, [SIXTEEN], tied_rows(100))
    slots = [routing.layout_slot(layout) for layout in redisca.inspect(SIXTEEN).shard_layouts()]
    assert len(routing.by_node(client, slots)) == len(nodes)  # 16 shards on every master
    runs = (
        lambda q: q.order_by(SIXTEEN.score).offset(20).limit(10).all(),
        lambda q: q.filter(SIXTEEN.city == "x").order_by(SIXTEEN.age.desc()).limit(10).ids(),
        lambda q: q.filter(SIXTEEN.age >= 1).count(),
    )
    with Session(client) as s:
        _script_calls(nodes)
        for run in runs:
            run(s.query(SIXTEEN))
            assert _script_calls(nodes) == [1] * len(nodes)
        shard_calls = []
        for run in runs:
            per_shard(lambda run=run: run(s.query(SIXTEEN)))
            shard_calls.append(sum(_script_calls(nodes)))
    assert shard_calls == [16, 16, 16]


def test_a_moved_slot_falls_back_to_the_shard_path(
    cluster: EmbeddedCluster, many: RedisCluster, per_shard: Any
) -> None:
    """A shard's slot moved to another master after the client read the slot map: the
    node the client asks no longer serves that shard (its script call is refused), so
    the query asks shard by shard, follows the MOVED, and answers as one shard does."""
    rows = tied_rows(120)
    fill(many, [ONE, SIXTEEN], rows)
    shapes = [NAMED["order desc + offset across shards"], NAMED["count"], SHAPES["no limit"]]
    expected = [answers(many, ONE, shape) for shape in shapes]
    slot = routing.layout_slot(redisca.inspect(SIXTEEN).shard_layouts()[5])
    assert [answers(many, SIXTEEN, shape) for shape in shapes] == expected
    with slot_moved(cluster, slot), counted_shard_path() as calls:
        assert [answers(many, SIXTEEN, shape) for shape in shapes] == expected
    assert calls  # the old master refused the shard's keys: the shard path answered


def test_half_way_through_a_move(
    cluster: EmbeddedCluster, many: RedisCluster, per_shard: Any
) -> None:
    """Half-way through a move of a shard's slot (MIGRATING, one index of that shard
    moved, the age one, then the score one): ids and counts of shapes reading one index
    per shard answer as one shard does (a node missing a key of that shard refuses; the
    shard path follows the ASK). Loading hashes or reading several keys of such a slot
    is the shard path's own business (``TRYAGAIN`` until the move ends, a hash moved
    meanwhile), not tested here. The index is chosen: the server's first key of the slot
    is one no query reads on Redis 7.0 (a guard stripe), and any on Valkey."""
    rows = tied_rows(120)
    fill(many, [ONE, SIXTEEN], rows)
    shapes = [Shape(order="age", desc=True, offset=30, limit=12), Shape(order="score")]

    def ids_and_counts(cls: type) -> list[Any]:
        with Session(many) as s:
            return [(build(s, cls, sh).ids(), build(s, cls, sh).count()) for sh in shapes]

    expected = ids_and_counts(ONE)
    for k, field in ((2, b"age"), (9, b"score")):
        layout = redisca.inspect(SIXTEEN).shard_layouts()[k]
        index = layout.range_index(field)
        slot = routing.layout_slot(layout)
        with slot_moved(cluster, slot, finish=False, keys=[index]), counted_shard_path() as calls:
            got = ids_and_counts(SIXTEEN)
        assert got == expected
        assert calls  # the node missing the index refused: the shard path answered


@contextlib.contextmanager
def counted_shard_path() -> Iterator[list[int]]:
    """Records each time a query asks shard by shard."""
    calls: list[int] = []
    real = queryscript.run_many_steps

    def counting(client: Any, shard_calls: Any) -> Any:
        calls.append(len(shard_calls))
        return real(client, shard_calls)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(queryscript, "run_many_steps", counting)
        yield calls


def test_async_sessions_run_once_per_node(cluster: EmbeddedCluster, per_shard: Any) -> None:
    """The async session runs the same core: per node on a redis.asyncio cluster client
    (its first command a sharded query, before the client read the slot map) and on a
    plain one, with the sync answers."""
    sync = RedisCluster.from_url(cluster.url)
    rows = tied_rows(150)
    fill(sync, [ONE, SIXTEEN], rows)
    shape = Shape((("city", "eq", "y"),), order="score", desc=True, offset=13, limit=9)
    want = answers(sync, ONE, shape)
    sync.close()

    async def main() -> tuple[list[Any], list[int]]:
        client = redis.asyncio.cluster.RedisCluster.from_url(cluster.url)
        try:
            async with AsyncSession(client) as s:
                q = build(s, SIXTEEN, shape)
                got = [await q.ids(), await q.count(), [i.id for i in await q.all()]]
                _script_calls(cluster.masters)
                await q.all()
                return got, _script_calls(cluster.masters)
        finally:
            await client.aclose()

    got, calls = asyncio.run(main())
    assert got == [want["ids"], want["count"], want["ids"]]
    assert calls == [1, 1, 1]


def test_async_plain_client_one_call(redis_server: EmbeddedServer, one: redis.Redis) -> None:
    rows = tied_rows(150)
    fill(one, [ONE, SIXTEEN], rows)
    shape = NAMED["order desc + offset across shards"]
    want = answers(one, ONE, shape)

    async def main() -> tuple[list[Any], list[int]]:
        client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
        try:
            async with AsyncSession(client) as s:
                q = build(s, SIXTEEN, shape)
                got = [await q.ids(), await q.count()]
                _script_calls([redis_server])
                await q.all()
                return got, _script_calls([redis_server])
        finally:
            await client.aclose()

    got, calls = asyncio.run(main())
    assert got == [want["ids"], want["count"]]
    assert calls == [1]


def test_the_node_reply_is_cut_by_the_node_on_one_server(one: redis.Redis) -> None:
    """One node skips the offset itself: a deep page loads ``limit`` hashes, not
    ``offset + limit``; a keyset page reads about a page per shard."""
    fill(one, [SIXTEEN], tied_rows(600))
    with Session(one) as s:
        query = s.query(SIXTEEN).order_by(SIXTEEN.score).limit(10)
        deep, _ = executor.drive(query.offset(500)._run(b"load"))
        keyset, _ = executor.drive(query.after("i300")._run(b"ids"))
    assert len(deep[0]) == 10 and len(deep[1]) == 10
    assert keyset[2] <= 16 * 10


def test_ids_merged_in_byte_order_across_shards(one: redis.Redis, per_shard: Any) -> None:
    """Ties across shards are ordered by id bytes, also for ids that share long prefixes,
    are prefixes of each other, or differ past their 8th byte (the merge compares 8
    bytes at a time)."""
    stems = ["a", "a0", "a00000000", "a000000000", "a00000000z", "a0000000~", "B", "b" * 17]
    idents = [s + t for s in stems for t in ("", "1", "10", "2x", "zzzzzzzzzz9", "zzzzzzzzzz")]
    with Session(one) as s:
        for ident in idents:
            s.add(TAG1(city="a", id=ident))
            s.add(TAG16(city="a", id=ident))
        s.commit()
    expected = sorted(idents, key=str.encode)
    for cls in (TAG1, TAG16):
        with Session(one) as s:
            assert s.query(cls).ids() == expected
            assert s.query(cls).filter(cls.city == "a").offset(7).limit(20).ids() == expected[7:27]
    with Session(one) as s:
        assert per_shard(lambda: s.query(TAG16).offset(3).limit(30).ids()) == expected[3:33]


@pytest.mark.parametrize("where", ["one server", "cluster"])
def test_a_page_reads_a_few_rows_of_each_shard_and_more_where_it_needs_them(
    request: pytest.FixtureRequest, per_shard: Any, where: str
) -> None:
    """A page of 10 over 16 shards (no term) asks each shard for 10 // 16 + 3 = 3 rows,
    not 10, and a shard the page uses up for the rest of it: here one shard holds the
    whole first page (ages 0), so it is asked again for 7 (and the answers stay one
    shard's)."""
    from test_query_engine import work

    client = request.getfixturevalue("one" if where == "one server" else "many")
    shard = redisca.inspect(SIXTEEN)
    rows: dict[str, Row] = {
        f"i{k:03d}": {"email": f"i{k}@ex.com", "age": 1 + k % 9, "score": float(k), "city": "x"}
        for k in range(320)
    }
    crowded = shard.layout.for_id("i000").hashtag
    mine = [i for i in rows if shard.layout.for_id(i).hashtag == crowded][:12]
    assert len(mine) == 12
    for i in mine:
        rows[i]["age"] = 0
    fill(client, [ONE, EIGHT, SIXTEEN], rows)
    for shape in (Shape(order="age", limit=10), Shape(order="age", desc=True, limit=10)):
        alike(client, per_shard, rows, shape)
    tags = _tags(SIXTEEN)
    groups = routing.by_node(client, [routing.tag_slot(t) for t in tags])
    # Each node merges its shards' first rows: a node of g shards asks each for
    # 10 // g + 3 of them (all 10 when that is not fewer), and the crowded shard for the
    # rest of its node's page.
    first_round = sum(len(g) * (min(10, 10 // len(g) + 3) if len(g) > 1 else 10) for g in groups)
    (home,) = [g for g in groups if tags.index(crowded) in g]
    k = min(10, 10 // len(home) + 3) if len(home) > 1 else 10
    with Session(client) as s:
        page = s.query(SIXTEEN).order_by(SIXTEEN.age).limit(10)
        assert set(page.ids()) == set(sorted(mine)[:10])
        assert work(page) == first_round + (10 - k)
        assert work(page) < 16 * 10  # each shard's 10, before
        spread = s.query(SIXTEEN).order_by(SIXTEEN.score).limit(10)
        assert first_round <= work(spread) <= first_round + 10 * len(groups)
    if len(groups) == 1:
        assert first_round + (10 - k) == 16 * 3 + 7


def _tags(cls: type) -> list[bytes]:
    return [layout.hashtag for layout in redisca.inspect(cls).shard_layouts()]

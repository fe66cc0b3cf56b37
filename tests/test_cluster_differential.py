"""Differential: every query shape answers the same on a 3-master cluster as on one server.

The same rows are committed by a session to the run's single server and to its cluster,
then the same query (equality, a unique value, ranges, order ascending and descending,
offset and limit, a cursor by id and by instance, results that are empty) is asked of
both: ids, count, the loaded instances and ``first`` must be equal, and equal to what a
Python model of the query says (tests/test_query_engine.py's). Hypothesis draws the data
and the shapes; a fixed list of named shapes makes sure each kind is asked every run.
Models of their own slot each (on three masters: see the assertion below) also answer
``get_many`` across them alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import redis
from clusterhelpers import model_slot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.cluster import RedisCluster
from test_cluster_routing import MODELS, Company, Post, User
from test_query_engine import Item, Row, Shape, build, datasets, model, shapes, write_session

from redisca import Session
from redisca.embedded import EmbeddedCluster, EmbeddedServer

MODES = {
    "bytes-resp3": {"decode_responses": False, "protocol": 3},
    "str-resp2": {"decode_responses": True, "protocol": 2},
}


@pytest.fixture(params=list(MODES), ids=list(MODES))
def pair(
    request: pytest.FixtureRequest, redis_server: EmbeddedServer, redis_cluster: EmbeddedCluster
) -> Iterator[tuple[redis.Redis, RedisCluster]]:
    """A client of the one server and one of the cluster, in the same mode."""
    one = redis_server.client(**MODES[request.param])
    many = RedisCluster.from_url(redis_cluster.url, **MODES[request.param])
    yield one, many
    flush(one, many)
    one.close()
    many.close()


def flush(one: redis.Redis, many: RedisCluster) -> None:
    one.flushall()
    many.flushall(target_nodes=RedisCluster.PRIMARIES)


def fill(pair: tuple[redis.Redis, RedisCluster], rows: dict[str, Row]) -> None:
    flush(*pair)
    for client in pair:
        write_session(client, rows)


def answers(client: Any, shape: Shape) -> dict[str, Any]:
    """Everything a query says: ids, count, the instances' fields, first, and with a
    cursor the same page after the instance itself."""
    with Session(client) as s:
        query = build(s, shape)
        out: dict[str, Any] = {
            "ids": query.ids(),
            "count": query.count(),
            "all": [attrs.asdict(i) for i in query.all()],
            "first": None if (first := query.first()) is None else first.id,
        }
        if shape.after is not None:
            out["after instance"] = (
                build(s, attrs.evolve(shape, after=None)).after(s.get(Item, shape.after)).ids()
            )
    return out


def same(pair: tuple[redis.Redis, RedisCluster], rows: dict[str, Row], shape: Shape) -> None:
    expected = model(rows, shape)
    on_one, on_many = answers(pair[0], shape), answers(pair[1], shape)
    assert on_many == on_one, shape
    assert on_one["ids"] == expected and on_one["count"] == len(expected), shape


ROWS: dict[str, Row] = {
    ident: {
        "email": f"{ident}{n}@Ex.com",
        "age": (None, -3, 0, 1, 2, 2, 5, 30)[n % 8],
        "score": (None, -1.5, 0.0, 0.5, 2.5, 2.5, 1e300)[n % 7],
        "city": (None, "x", "y", "z")[n % 4],
    }
    for n, ident in enumerate(["a", "B", "b", "0", "_", "Z", "aa", "ab", "b0", "zz", "Za", "00"])
}

NAMED = {
    "everything": Shape(),
    "equality": Shape((("city", "eq", "x"),)),
    "two equalities": Shape((("city", "eq", "y"), ("age", "eq", 2))),
    "unique": Shape((("email", "eq", "AB7@EX.COM"),)),
    "unique, absent": Shape((("email", "eq", "no@ex.com"),)),
    "range": Shape((("age", "between", 0, 5),)),
    "open range": Shape((("score", "gt", 0.0),)),
    "range and equality": Shape((("age", "ge", 1), ("city", "eq", "z"))),
    "order asc": Shape(order="score"),
    "order desc": Shape(order="age", desc=True),
    "offset and limit": Shape(order="age", offset=3, limit=4),
    "limit 0": Shape(limit=0),
    "offset past the end": Shape(offset=40),
    "filtered page desc": Shape((("city", "eq", "x"),), order="score", desc=True, limit=2),
    "after": Shape(order="age", after="b"),
    "after desc": Shape(order="score", desc=True, after="Z", limit=3),
    "after, filtered": Shape((("city", "eq", "y"),), after="aa"),
    "empty equality": Shape((("city", "eq", "w"),)),
    "empty range": Shape((("age", "gt", 2**40),)),
    "contradiction": Shape((("age", "lt", 0), ("age", "gt", 5))),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_each_named_shape_answers_alike(pair: tuple[redis.Redis, RedisCluster], name: str) -> None:
    fill(pair, ROWS)
    same(pair, ROWS, NAMED[name])


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_drawn_shapes_answer_alike(pair: tuple[redis.Redis, RedisCluster], data: Any) -> None:
    rows = data.draw(datasets())
    fill(pair, rows)
    for _ in range(5):
        same(pair, rows, data.draw(shapes(rows)))


def test_get_many_across_three_masters_answers_alike(
    pair: tuple[redis.Redis, RedisCluster], redis_cluster: EmbeddedCluster
) -> None:
    masters = {redis_cluster.node_for_slot(model_slot(cls)).port for cls in MODELS}
    assert len(masters) == 3  # the three models are on three masters
    flush(*pair)
    for client in pair:
        with Session(client) as s:
            company = Company(name="acme", id="c")
            user = User(email="u@x.org", age=3, company=company, id="u")
            s.add_all([company, user, Post(title="t", author=user, id="p")])
            s.commit()
    got = []
    for client in pair:
        with Session(client) as s:
            loaded = [
                s.get_many(Company, ["c", "gone"]),
                s.get_many(User, ["u", "gone"]),
                s.get_many(Post, ["gone", "p"]),
            ]
            got.append([[None if o is None else attrs.asdict(o) for o in row] for row in loaded])
    assert got[0] == got[1]

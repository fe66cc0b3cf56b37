"""The query engine against a Python model, and what it reads, leaves and returns.

Data is written two ways: by hand in the documented key layout (docs/keylayout.rst),
so the engine is checked without the library's write path, and by a session. Query
shapes and data come from hypothesis: ties, missing values, ids whose byte order is
not their locale order, offsets, limits, counts and keyset cursors.
"""

from __future__ import annotations

import math
import threading
import zlib
from typing import Any

import attrs
import pytest
import redis
from helpers import server_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redisca import Email, Float, Integer, Registry, Session, String
from redisca.errors import QueryError
from redisca.session import executor, queryscript

registry = Registry()


@registry.mapped(prefix="qe")
@attrs.define
class Item:
    email: str = Email(field="eml", unique=True)
    age: int | None = Integer(index=True, default=None)
    score: float | None = Float(index=True, default=None)
    city: str | None = String(index=True, default=None)
    id: str | None = None


@registry.mapped(prefix="qp")
@attrs.define
class Plain:
    """No range index: its ids are in ``qp#all`` and its queries come in id order."""

    email: str = Email(field="eml", unique=True)
    city: str | None = String(index=True, default=None)
    id: str | None = None


@registry.mapped(prefix="qbig")
@attrs.define
class Big:
    n: int | None = Integer(index=True, default=None)
    id: str | None = None


# -- the model ------------------------------------------------------------------

Row = dict[str, Any]
INF = math.inf


@attrs.frozen
class Shape:
    """One query: conditions as (field, op, value[, value2]), order, paging, cursor."""

    conditions: tuple[tuple[Any, ...], ...] = ()
    order: str | None = None
    desc: bool = False
    offset: int = 0
    limit: int | None = None
    after: str | None = None


def _holds(row: Row, cond: tuple[Any, ...]) -> bool:
    field, op, value = cond[0], cond[1], cond[2]
    have = row[field]
    if field == "email":
        return have.lower() == value.lower()
    if op == "eq":
        return have is not None and have == value
    if have is None:
        return False
    return {
        "ge": have >= value,
        "gt": have > value,
        "le": have <= value,
        "lt": have < value,
        "between": value <= have <= (cond[3] if len(cond) > 3 else value),
    }[op]


def model(rows: dict[str, Row], shape: Shape, default: str | None = "age") -> list[str]:
    """What the query returns: filter, order by (value, id bytes), cursor, slice. With
    no order and no range condition, the default order: by the first range field
    (``default``: Item's ``age``), or by id alone for a model without one."""
    by = shape.order
    if by is None:
        ranged = [c[0] for c in shape.conditions if c[0] in ("age", "score")]
        by = ranged[0] if ranged else default

    def key(ident: str) -> tuple[float, bytes]:
        value = 0 if by is None else rows.get(ident, {}).get(by)
        return (INF if value is None else value, ident.encode())

    ordered = sorted(rows, key=key)
    if shape.desc:
        ordered.reverse()
    found = [i for i in ordered if all(_holds(rows[i], c) for c in shape.conditions)]
    if shape.after is not None:
        cursor = key(shape.after)
        found = [i for i in found if (key(i) < cursor if shape.desc else key(i) > cursor)]
    end = None if shape.limit is None else shape.offset + shape.limit
    return found[shape.offset : end]


def build(session: Session, shape: Shape) -> Any:
    query = session.query(Item)
    for cond in shape.conditions:
        attr = getattr(Item, cond[0])
        op = cond[1]
        if op == "between":
            query = query.filter(attr.between(cond[2], cond[3]))
        else:
            query = query.filter(
                {
                    "eq": attr.__eq__,
                    "ge": attr.__ge__,
                    "gt": attr.__gt__,
                    "le": attr.__le__,
                    "lt": attr.__lt__,
                }[op](cond[2])
            )
    if shape.order is not None:
        attr = getattr(Item, shape.order)
        query = query.order_by(attr.desc() if shape.desc else attr)
    query = query.offset(shape.offset).limit(shape.limit)
    return query.after(shape.after) if shape.after is not None else query


# -- writing data -----------------------------------------------------------------


def write_raw(r: redis.Redis, rows: dict[str, Row]) -> None:
    """The rows in the documented layout, written without the library."""
    pipe = r.pipeline(transaction=False)
    for ident, row in rows.items():
        fields: dict[str, Any] = {"eml": row["email"]}
        if row["age"] is not None:
            fields["age"] = b"%d" % row["age"]
        if row["score"] is not None:
            fields["score"] = repr(row["score"])
        if row["city"] is not None:
            fields["city"] = row["city"]
            pipe.sadd(f"{{qe}}#i:city:{row['city']}", ident)
        pipe.hset(f"{{qe}}:{ident}", mapping=fields)
        # no qe#all: qe#r:age, the first range index, holds every id
        for name in ("age", "score"):
            value = row[name]
            pipe.zadd(f"{{qe}}#r:{name}", {ident: "+inf" if value is None else float(value)})
        value = row["email"].lower().encode()
        pipe.hset(f"{{qe}}#u:eml:{zlib.crc32(value) % 128}", value, ident)
    pipe.execute()


def write_raw_plain(r: redis.Redis, rows: dict[str, Row]) -> None:
    """The rows as ``Plain`` entities (email and city), in the documented layout."""
    pipe = r.pipeline(transaction=False)
    for ident, row in rows.items():
        fields: dict[str, Any] = {"eml": row["email"]}
        if row["city"] is not None:
            fields["city"] = row["city"]
            pipe.sadd(f"{{qp}}#i:city:{row['city']}", ident)
        pipe.hset(f"{{qp}}:{ident}", mapping=fields)
        pipe.zadd("{qp}#all", {ident: 0})  # a model without a range index keeps P#all
        value = row["email"].lower().encode()
        pipe.hset(f"{{qp}}#u:eml:{zlib.crc32(value) % 128}", value, ident)
    pipe.execute()


def write_session(r: redis.Redis, rows: dict[str, Row]) -> None:
    with Session(r) as s:
        s.add_all(Item(id=i, **row) for i, row in rows.items())
        s.commit()


# -- hypothesis strategies -------------------------------------------------------------

IDS = st.text(alphabet="aBb0_Z", min_size=1, max_size=3)
AGES = st.sampled_from([None, -3, 0, 1, 2, 2, 5, 30, 2**53, -(2**53)])
SCORES = st.sampled_from([None, -1.5, 0.0, 0.5, 2.5, 2.5, 1e300])
CITIES = st.sampled_from([None, "x", "y", "z"])


@st.composite
def datasets(draw: Any) -> dict[str, Row]:
    idents = draw(st.lists(IDS, max_size=18, unique=True))
    return {
        ident: {
            "email": f"{ident}{n}@Ex.com",
            "age": draw(AGES),
            "score": draw(SCORES),
            "city": draw(CITIES),
        }
        for n, ident in enumerate(idents)
    }


def _condition(draw: Any, rows: dict[str, Row]) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["city", "email", "age", "score"]))
    if kind == "city":
        return ("city", "eq", draw(st.sampled_from(["x", "y", "z", "w"])))
    if kind == "email":
        known = [row["email"].upper() for row in rows.values()] or ["no@ex.com"]
        return ("email", "eq", draw(st.sampled_from([*known, "no@ex.com"])))
    values = draw(AGES if kind == "age" else SCORES.filter(lambda v: v is not None))
    if values is None:
        values = 2
    op = draw(st.sampled_from(["eq", "ge", "gt", "le", "lt", "between"]))
    if op == "between":
        other = draw(AGES if kind == "age" else SCORES)
        other = 2 if other is None else other
        return (kind, op, min(values, other), max(values, other))
    return (kind, op, values)


@st.composite
def shapes(draw: Any, rows: dict[str, Row]) -> Shape:
    conditions = tuple(_condition(draw, rows) for _ in range(draw(st.integers(0, 3))))
    order = draw(st.sampled_from([None, "age", "score"]))
    after = draw(st.sampled_from([None, *sorted(rows)])) if rows else None
    return Shape(
        conditions=conditions,
        order=order,
        desc=order is not None and draw(st.booleans()),
        offset=draw(st.integers(0, 4)),
        limit=draw(st.sampled_from([None, 0, 1, 2, 3, 7])),
        after=after,
    )


# -- the differential tests -----------------------------------------------------------


def _check(r: redis.Redis, rows: dict[str, Row], shape: Shape) -> None:
    expected = model(rows, shape)
    with Session(r) as s:
        query = build(s, shape)
        assert query.ids() == expected, shape
        assert query.count() == len(expected), shape
        assert [i.id for i in query.all()] == expected, shape
        if shape.after is not None:  # the instance itself: its stored order value
            anchor = s.get(Item, shape.after)
            assert query.after(anchor).ids() == expected, shape


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_engine_agrees_with_a_model_on_data_written_by_hand(r: redis.Redis, data: Any) -> None:
    rows = data.draw(datasets())
    r.flushdb()
    write_raw(r, rows)
    for _ in range(4):
        _check(r, rows, data.draw(shapes(rows)))


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_engine_agrees_with_a_model_on_data_a_session_wrote(r: redis.Redis, data: Any) -> None:
    rows = data.draw(datasets())
    r.flushdb()
    write_session(r, rows)
    for _ in range(4):
        _check(r, rows, data.draw(shapes(rows)))


@st.composite
def plain_shapes(draw: Any, rows: dict[str, Row]) -> Shape:
    """Queries a model without a range index takes: equality only, in id order, with a
    cursor that may name no entity (id order needs no lookup)."""
    conditions = tuple(
        c
        for c in (_condition(draw, rows) for _ in range(draw(st.integers(0, 2))))
        if c[0] in ("city", "email")
    )
    return Shape(
        conditions=conditions,
        offset=draw(st.integers(0, 4)),
        limit=draw(st.sampled_from([None, 0, 1, 2, 7])),
        after=draw(st.sampled_from([None, "", "a", "Zz", *sorted(rows)])),
    )


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_model_without_a_range_index_comes_in_id_order(r: redis.Redis, data: Any) -> None:
    rows = data.draw(datasets())
    r.flushdb()
    write_raw_plain(r, rows)
    for _ in range(4):
        shape = data.draw(plain_shapes(rows))
        expected = model(rows, shape, default=None)
        with Session(r) as s:
            query = s.query(Plain)
            for field, _, value in shape.conditions:
                query = query.filter(getattr(Plain, field) == value)
            query = query.offset(shape.offset).limit(shape.limit)
            if shape.after is not None:
                query = query.after(shape.after)
            assert query.ids() == expected, shape
            assert query.count() == len(expected), shape
            assert [p.id for p in query.all()] == expected, shape


def test_byte_order_not_locale_order(r: redis.Redis) -> None:
    rows = {i: {"email": f"{i}@x.io", "age": 1, "score": None, "city": "x"} for i in "aBb_Z0"}
    write_raw(r, rows)
    with Session(r) as s:
        expected = sorted(rows, key=str.encode)
        assert s.query(Item).ids() == expected
        assert s.query(Item).filter(Item.city == "x").ids() == expected
        assert s.query(Item).order_by(Item.age).ids() == expected
        assert s.query(Item).order_by(Item.age.desc()).ids() == expected[::-1]
        # (b), a sort in the script by rank: a one-row page from a small set
        assert s.query(Item).filter(Item.city == "x").offset(2).limit(1).ids() == [expected[2]]


def test_a_unique_value_is_looked_up_by_the_lookup_script(r: redis.Redis) -> None:
    """A condition on a unique value leaves one candidate: the short script answers,
    with the engine's results (the differential tests above cover both scripts)."""
    rows = {
        i: {"email": f"{i}@x.io", "age": n, "score": None, "city": "x"}
        for n, i in enumerate("abcd")
    }
    write_raw(r, rows)
    r.script_flush()
    with Session(r) as s:
        by_email = s.query(Item).filter(Item.email == "C@X.IO")
        assert [i.id for i in by_email.all()] == ["c"] and by_email.count() == 1
        assert by_email.filter(Item.city == "y").ids() == []
        assert by_email.filter(Item.age.between(1, 2)).ids() == ["c"]
        assert by_email.filter(Item.age > 2).ids() == []
        assert by_email.order_by(Item.age).offset(1).ids() == []
        server = server_for(r, Item)  # on a cluster, the scripts' master
        assert server.script_exists(queryscript.LOOKUP_SHA, queryscript.SHA) == [True, False]
        assert by_email.after("b").ids() == ["c"]  # a cursor: the engine's script
        assert server.script_exists(queryscript.SHA) == [True]


# -- cost: what the server reads -----------------------------------------------------


BIG = 3000


@pytest.fixture
def skewed(r: redis.Redis) -> dict[str, Row]:
    """3,000 items, every one with an age and a score (big range indexes), 5 in city
    "rare" and the rest in "common"."""
    rows = {
        f"i{n:05d}": {
            "email": f"i{n}@ex.com",
            "age": n % 97,
            "score": float(n),
            "city": "rare" if n % 600 == 7 else "common",
        }
        for n in range(BIG)
    }
    write_raw(r, rows)
    return rows


def work(query: Any, mode: bytes = b"ids") -> int:
    return int(executor.drive(query._run(mode))[0][-1])


def test_a_page_reads_what_it_returns_not_the_index(r: redis.Redis, skewed: dict[str, Row]) -> None:
    with Session(r) as s:
        q = s.query(Item)
        assert work(q.limit(10)) == 10  # (a) without a term: a slice of qe#r:age by rank
        assert work(q.order_by(Item.age).limit(10)) == 10
        assert work(q.order_by(Item.score.desc()).offset(2000).limit(10)) == 10  # by rank
        assert work(q, b"count") == 0 and q.count() == BIG  # one ZCARD
        assert work(q.filter(Item.score >= 100), b"count") == 0  # two ZCOUNTs
        rare = q.filter(Item.city == "rare")
        # (b): 5 candidates, each probed for nothing and ranked once; the index of
        # 3,000 ages is not read
        assert rare.order_by(Item.age).limit(3).ids() == model(
            skewed, Shape((("city", "eq", "rare"),), order="age", limit=3)
        )
        assert work(rare.order_by(Item.age).limit(3)) <= 2 * 5
        assert work(rare.order_by(Item.age.desc()), b"count") <= 2 * 5
        # two windows: the smaller (ZCOUNT) drives, the other is probed
        both = q.filter(Item.score.between(100, 104), Item.age <= 50)
        assert len(both.ids()) == 5 and work(both) <= 4 * 5 + 2
        # a unique value: one candidate
        assert work(q.filter(Item.email == "I42@EX.COM").order_by(Item.age)) <= 3
        # (a) with a budget: a common value walks the order until the page is full
        common = q.filter(Item.city == "common").order_by(Item.score).limit(5)
        assert work(common) <= 2 * queryscript.MIN_BATCH + 2 * 5


def test_a_page_sends_one_command_and_the_script_no_whole_index_read(
    r: redis.Redis, skewed: dict[str, Row], redis_url: str
) -> None:
    """MONITOR shows the script's own commands: none copies or reads a whole index."""
    pages: list[Any] = []

    def run() -> None:
        with Session(r) as s:
            rare = s.query(Item).filter(Item.city == "rare")
            pages.append(rare.order_by(Item.age).limit(3).all())

    inner = _monitored(r, redis_url, run)
    page = pages[0]
    assert len(page) == 3
    outer = [c for kind, c in inner if kind != "lua"]
    script = [c.split()[0].upper() for kind, c in inner if kind == "lua"]
    assert [c.split()[0].upper() for c in outer] in (["EVAL"], ["EVALSHA"])  # one command
    assert script.count("SMEMBERS") == 1  # of the 5 rare ids
    whole = {"ZRANGEBYSCORE", "ZINTERSTORE", "ZUNIONSTORE", "SINTER", "ZRANGESTORE", "SCAN"}
    assert not set(script) & whole
    assert len(script) < 60  # 5 candidates: SMEMBERS of 5, 5 ZRANKs, 3 HGETALLs, sizes


def test_no_query_leaves_a_key_behind(r: redis.Redis, skewed: dict[str, Row]) -> None:
    before = set(r.scan_iter(count=1000))
    with Session(r) as s:
        q = s.query(Item)
        for query in (
            q,
            q.limit(3),
            q.filter(Item.city == "rare"),
            q.filter(Item.city == "common").order_by(Item.age.desc()).offset(40).limit(7),
            q.filter(Item.score.between(10, 400), Item.age > 20).limit(4),
            q.filter(Item.email == "i5@ex.com", Item.age == 5),
            q.order_by(Item.score).after("i00010").limit(2),
        ):
            query.ids(), query.count(), query.all()
    assert set(r.scan_iter(count=1000)) == before


# -- bounds and errors ---------------------------------------------------------------


def test_after_an_id_in_no_index_is_a_query_error(r: redis.Redis) -> None:
    write_raw(r, {"a": {"email": "a@x.io", "age": 1, "score": None, "city": None}})
    with Session(r) as s:
        with pytest.raises(QueryError, match="after"):
            s.query(Item).order_by(Item.age).after("gone").ids()
        # no order: the default order (by age) needs the id's position there too
        with pytest.raises(QueryError, match="after"):
            s.query(Item).after("0").ids()
        assert s.query(Item).after("a").ids() == []
    write_raw_plain(r, {"a": {"email": "a@x.io", "city": None}})
    with Session(r) as s:
        assert s.query(Plain).after("0").ids() == ["a"]  # id order needs no lookup
        assert s.query(Plain).after("a").ids() == []


@pytest.mark.parametrize("desc", [False, True])
def test_the_smallest_set_sorted_with_ties_and_a_cursor(r: redis.Redis, desc: bool) -> None:
    """Strategy (b) on an ordered query: candidates sorted by score, ties by id bytes,
    cut at a cursor inside a run of ties."""
    rows = {
        f"{c}{n}": {"email": f"{c}{n}@x.io", "age": n % 2, "score": None, "city": "x"}
        for n in range(6)
        for c in "aBz"
    }
    rows.update(
        {f"o{n}": {"email": f"o{n}@x.io", "age": 1, "score": None, "city": "y"} for n in range(40)}
    )
    write_raw(r, rows)
    for after in (None, "B3", "a2", "z5", "o1"):
        shape = Shape((("city", "eq", "x"),), order="age", desc=desc, after=after)
        expected = model(rows, shape)
        with Session(r) as s:
            query = build(s, shape)
            assert query.ids() == expected, after
            assert query.count() == len(expected), after
            assert work(query) <= 3 * 18 + 40  # (b): 18 candidates, never the 58 rows


def _monitored(r: redis.Redis, redis_url: str, run: Any) -> list[tuple[str, str]]:
    """(client type, command) of every command MONITOR saw while ``run()`` ran."""
    seen: list[tuple[str, str]] = []
    ready = threading.Event()
    server = server_for(r, Item)  # on a cluster, the master serving Item's slot
    where = server.connection_pool.connection_kwargs
    watcher = redis.Redis(host=where["host"], port=where["port"], decode_responses=True)

    def record() -> None:
        with watcher.monitor() as monitor:
            ready.set()
            for event in monitor.listen():
                if event["command"] == "ECHO monitor-stop":
                    return
                seen.append((event["client_type"], event["command"]))

    thread = threading.Thread(target=record)
    thread.start()
    assert ready.wait(10)
    run()
    server.echo("monitor-stop")
    thread.join(10)
    watcher.close()
    return seen


def _script_commands(r: redis.Redis, redis_url: str, run: Any) -> list[str]:
    """The commands the script ran (MONITOR) while ``run()`` ran."""
    seen = _monitored(r, redis_url, run)
    return [c.split()[0].upper() for kind, c in seen if kind == "lua"]


def test_lookup_and_slice_shapes_run_short(
    r: redis.Redis, skewed: dict[str, Row], redis_url: str
) -> None:
    """A unique value alone (the LOOKUP script) and a window of the ordering index alone
    (SLICE, before the engine is built) run the commands they need and no more."""
    with Session(r) as s:
        q = s.query(Item)
        found = _script_commands(r, redis_url, q.filter(Item.email == "I42@EX.COM").one)
        assert found == ["HGET", "ZSCORE", "HGETALL"]
        page = q.filter(Item.age.between(3, 9)).offset(5).limit(10)
        assert _script_commands(r, redis_url, page.all) == ["ZRANGEBYSCORE"] + ["HGETALL"] * 10
        assert work(page) == 10
        desc = page.order_by(Item.age.desc())
        assert _script_commands(r, redis_url, desc.ids) == ["ZREVRANGEBYSCORE"]
        # a deep offset goes by rank (ZRANGEBYSCORE would step over every skipped entry)
        deep = q.filter(Item.age >= 3).offset(queryscript.SLICE_OFFSET + 1).limit(2)
        assert "ZRANGEBYSCORE" not in _script_commands(r, redis_url, deep.ids)


@pytest.mark.parametrize("desc", [False, True])
def test_lookup_and_slice_shapes_agree_with_the_model(r: redis.Redis, desc: bool) -> None:
    """The two short paths at the edges the hypothesis tests rarely draw: SLICE at offsets
    about SLICE_OFFSET, no limit, open and exclusive bounds, ties, missing values; LOOKUP
    with an offset, a limit of 0, an owner no index holds, on P#all (id order)."""
    rows = {
        f"{c}{n}": {
            "email": f"{c}{n}@x.io",
            "age": n % 7 if n % 11 else None,
            "score": None,
            "city": None,
        }
        for n in range(60)
        for c in "aBz"
    }
    write_raw(r, rows)
    edge = queryscript.SLICE_OFFSET
    windows = [
        ("age", "between", 1, 5),
        ("age", "gt", 1),
        ("age", "lt", 4),
        ("age", "ge", -3),
        ("age", "eq", 2),
        ("age", "gt", 6),
    ]
    with Session(r) as s:
        for cond in windows:
            for offset in (0, 3, edge - 1, edge, edge + 1, 170):
                for limit in (None, 0, 1, 10):
                    shape = Shape((cond,), order="age", desc=desc, offset=offset, limit=limit)
                    expected = model(rows, shape)
                    query = build(s, shape)
                    assert query.ids() == expected, shape
                    assert [i.id for i in query.all()] == expected, shape
                    assert work(query) == len(expected), shape
        for offset, limit in ((0, None), (0, 1), (1, None), (0, 0)):
            for order in (None, "age"):
                shape = Shape(
                    (("email", "eq", "B7@X.IO"),),
                    order=order,
                    desc=desc,
                    offset=offset,
                    limit=limit,
                )
                assert build(s, shape).ids() == model(rows, shape), shape
                assert [i.id for i in build(s, shape).all()] == model(rows, shape), shape
                assert build(s, shape).count() == len(model(rows, shape)), shape
                assert work(build(s, shape)) == 2  # the owner's stripe, its score
        assert s.query(Item).filter(Item.email == "no@x.io").count() == 0
        assert work(s.query(Item).filter(Item.email == "no@x.io")) == 0
    r.zrem("{qe}#r:age", "B7")  # an owner the ordering index does not hold: not found
    with Session(r) as s:
        assert s.query(Item).filter(Item.email == "B7@x.io").all() == []
    write_raw_plain(r, {"a": {"email": "a@x.io", "city": None}})
    with Session(r) as s:  # id order: the owner's rank in qp#all
        assert s.query(Plain).filter(Plain.email == "A@x.io").one().id == "a"
        assert s.query(Plain).filter(Plain.email == "b@x.io").one_or_none() is None

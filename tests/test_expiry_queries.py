"""Queries of an expiring model never return nor count an expired entity.

An entity is expired when its instant in ``H#exp`` (ms since the epoch, by the server's
clock) is <= the server's now. Entities are written by a session; some are then marked
expired by a raw ``ZADD`` of a long-past instant, others given a far-future one (which
must stay visible), and every query shape is checked against a Python model of the live
rows: conditions, order, offset, limit, cursors, counts, ``|`` and ``in_``, unique
lookups, ``contains`` on a collection, on one server and (``REDISCA_TEST_CLUSTER=1``) on
a cluster. A model that is not expiring must send what it always sent.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import attrs
import pytest
import redis
from helpers import server_for, set_instants
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redisca
from redisca import Email, Float, Integer, Registry, Session, String
from redisca.errors import NotFound, OperationalError
from redisca.session import queryscript

registry = Registry()


@registry.mapped(prefix="xq", ttl=3600)
@attrs.define
class Tok:
    email: str = Email(field="eml", unique=True)
    age: int | None = Integer(index=True, default=None)
    score: float | None = Float(index=True, default=None)
    city: str | None = String(index=True, default=None)
    id: str | None = None
    tags: set[str] = redisca.Set(str, index=True)


@registry.mapped(prefix="xqp", expiring=True)
@attrs.define
class PlainTok:
    """No range index: ordered by ``xqp#all`` (id order)."""

    email: str = Email(field="eml", unique=True)
    city: str | None = String(index=True, default=None)
    id: str | None = None


@registry.mapped(prefix="xqn")
@attrs.define
class Same:
    """Tok's fields, not expiring: its queries must not change at all."""

    email: str = Email(field="eml", unique=True)
    age: int | None = Integer(index=True, default=None)
    score: float | None = Float(index=True, default=None)
    city: str | None = String(index=True, default=None)
    id: str | None = None


#: Instants (ms since the epoch): long past (expired) and far future (live).
PAST = 1000
FUTURE = 2**42

Row = dict[str, Any]
INF = math.inf


def expiry_key(model: type) -> bytes:
    return redisca.inspect(model).layout.expiry


def mark(r: redis.Redis, model: type, instants: dict[str, int]) -> None:
    """Give ids expiry instants by hand (what a commit of ``session.expire`` writes: in
    ``H#exp`` and as the scores of their equality index entries)."""
    if instants:
        set_instants(r, model, instants)


def server_now_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


# -- the model ------------------------------------------------------------------------


@attrs.frozen
class Shape:
    """AND of ``conditions``, then (if any) an OR of ``either``'s conditions."""

    conditions: tuple[tuple[Any, ...], ...] = ()
    either: tuple[tuple[Any, ...], ...] = ()
    order: str | None = None
    desc: bool = False
    offset: int = 0
    limit: int | None = None
    after: str | None = None


def _holds(row: Row, cond: tuple[Any, ...]) -> bool:
    field, op, value = cond[0], cond[1], cond[2]
    have = row[field]
    if field == "email":
        return bool(have.lower() == value.lower())
    if op == "contains":
        return value in have
    if op == "eq":
        return have is not None and have == value
    if have is None:
        return False
    return bool(
        {
            "ge": have >= value,
            "gt": have > value,
            "le": have <= value,
            "lt": have < value,
            "between": value <= have <= (cond[3] if len(cond) > 3 else value),
        }[op]
    )


def model(rows: dict[str, Row], live: set[str], shape: Shape, default: str | None) -> list[str]:
    """What the query returns: the live rows filtered, ordered by (value, id bytes), after
    the cursor (whose position may be an expired row's: its index entries stay), sliced.
    Order: ``order_by``'s, else (no OR) the first range condition's, else ``default``."""
    by = shape.order
    if by is None and not shape.either:
        ranged = [c[0] for c in shape.conditions if c[0] in ("age", "score")]
        by = ranged[0] if ranged else default
    elif by is None:
        by = default

    def key(ident: str) -> tuple[float, bytes]:
        value = 0 if by is None else rows[ident].get(by)
        return (INF if value is None else value, ident.encode())

    ordered = sorted(live, key=key)
    if shape.desc:
        ordered.reverse()
    found = [
        i
        for i in ordered
        if all(_holds(rows[i], c) for c in shape.conditions)
        and (not shape.either or any(_holds(rows[i], c) for c in shape.either))
    ]
    if shape.after is not None:
        cursor = key(shape.after)
        found = [i for i in found if (key(i) < cursor if shape.desc else key(i) > cursor)]
    end = None if shape.limit is None else shape.offset + shape.limit
    return found[shape.offset : end]


_OPS = {"eq": "__eq__", "ge": "__ge__", "gt": "__gt__", "le": "__le__", "lt": "__lt__"}


def _expression(cls: type, cond: tuple[Any, ...]) -> Any:
    attr = getattr(cls, cond[0])
    if cond[1] == "between":
        return attr.between(cond[2], cond[3])
    if cond[1] == "contains":
        return attr.contains(cond[2])
    return getattr(attr, _OPS[cond[1]])(cond[2])


def build(session: Session, cls: type, shape: Shape) -> Any:
    query = session.query(cls)
    for cond in shape.conditions:
        query = query.filter(_expression(cls, cond))
    if shape.either:
        same = {c[0] for c in shape.either} == {"city"} and all(c[1] == "eq" for c in shape.either)
        if same:  # in_() of the values
            query = query.filter(cls.city.in_([c[2] for c in shape.either]))
        else:
            combined = _expression(cls, shape.either[0])
            for cond in shape.either[1:]:
                combined = combined | _expression(cls, cond)
            query = query.filter(combined)
    if shape.order is not None:
        attr = getattr(cls, shape.order)
        query = query.order_by(attr.desc() if shape.desc else attr)
    query = query.offset(shape.offset).limit(shape.limit)
    return query.after(shape.after) if shape.after is not None else query


# -- data -------------------------------------------------------------------------------

IDS = st.text(alphabet="aBb0_Z", min_size=1, max_size=3)
AGES = st.sampled_from([None, -3, 0, 1, 2, 2, 5, 30, 2**53])
SCORES = st.sampled_from([None, -1.5, 0.0, 0.5, 2.5, 2.5, 1e300])
CITIES = st.sampled_from([None, "x", "y", "z"])
TAGS = st.sets(st.sampled_from(["p", "q", "r"]), max_size=2)


@st.composite
def datasets(draw: Any) -> tuple[dict[str, Row], dict[str, int]]:
    """Rows, and instants for some of them: past (expired) or future (live)."""
    idents = draw(st.lists(IDS, max_size=20, unique=True))
    rows = {
        ident: {
            "email": f"{ident}{n}@Ex.com",
            "age": draw(AGES),
            "score": draw(SCORES),
            "city": draw(CITIES),
            "tags": draw(TAGS),
        }
        for n, ident in enumerate(idents)
    }
    instants = {i: draw(st.sampled_from([PAST, FUTURE])) for i in idents if draw(st.booleans())}
    return rows, instants


def _condition(draw: Any, rows: dict[str, Row], plain: bool = False) -> tuple[Any, ...]:
    kinds = ["city", "email"] if plain else ["city", "email", "age", "score", "tags"]
    kind = draw(st.sampled_from(kinds))
    if kind == "city":
        return ("city", "eq", draw(st.sampled_from(["x", "y", "z", "w"])))
    if kind == "tags":
        return ("tags", "contains", draw(st.sampled_from(["p", "q", "r"])))
    if kind == "email":
        known = [row["email"].upper() for row in rows.values()] or ["no@ex.com"]
        return ("email", "eq", draw(st.sampled_from([*known, "no@ex.com"])))
    value = draw(AGES if kind == "age" else SCORES)
    value = 2 if value is None else value
    op = draw(st.sampled_from(["eq", "ge", "gt", "le", "lt", "between"]))
    if op == "between":
        other = draw(AGES if kind == "age" else SCORES)
        other = 2 if other is None else other
        return (kind, op, min(value, other), max(value, other))
    return (kind, op, value)


@st.composite
def shapes(draw: Any, rows: dict[str, Row], plain: bool = False) -> Shape:
    conditions = tuple(_condition(draw, rows, plain) for _ in range(draw(st.integers(0, 2))))
    either: tuple[tuple[Any, ...], ...] = ()
    if draw(st.integers(0, 3)) == 0:
        either = tuple(_condition(draw, rows, plain) for _ in range(draw(st.integers(2, 3))))
    order = None if plain else draw(st.sampled_from([None, "age", "score"]))
    after = draw(st.sampled_from([None, *sorted(rows)])) if rows else None
    return Shape(
        conditions=conditions,
        either=either,
        order=order,
        desc=order is not None and draw(st.booleans()),
        offset=draw(st.integers(0, 3)),
        limit=draw(st.sampled_from([None, 0, 1, 2, 3, 7])),
        after=after,
    )


def write(r: redis.Redis, cls: type, rows: dict[str, Row]) -> None:
    fields = {a.name for a in attrs.fields(cls)}
    with Session(r) as s:
        s.add_all(
            cls(id=i, **{k: v for k, v in row.items() if k in fields}) for i, row in rows.items()
        )
        s.commit()


def _check(r: redis.Redis, cls: type, rows: dict[str, Row], live: set[str], shape: Shape) -> None:
    default = None if cls is PlainTok else "age"
    expected = model(rows, live, shape, default)
    with Session(r) as s:
        query = build(s, cls, shape)
        assert query.ids() == expected, shape
        assert query.count() == len(expected), shape
        assert [i.id for i in query.all()] == expected, shape
        first = query.first()  # the query's offset, a limit of 1
        top = model(rows, live, attrs.evolve(shape, limit=1), default)
        assert (first.id if first else None) == (top[0] if top else None), shape


# -- the differential tests ---------------------------------------------------------------


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_queries_skip_expired_entities_as_a_model_does(r: redis.Redis, data: Any) -> None:
    rows, instants = data.draw(datasets())
    _flush(r)
    write(r, Tok, rows)
    mark(r, Tok, instants)
    live = {i for i in rows if instants.get(i) != PAST}
    for _ in range(4):
        _check(r, Tok, rows, live, data.draw(shapes(rows)))


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_model_in_id_order_skips_expired_entities(r: redis.Redis, data: Any) -> None:
    rows, instants = data.draw(datasets())
    _flush(r)
    write(r, PlainTok, rows)
    mark(r, PlainTok, instants)
    live = {i for i in rows if instants.get(i) != PAST}
    for _ in range(4):
        _check(r, PlainTok, rows, live, data.draw(shapes(rows, plain=True)))


def _flush(r: Any) -> None:
    """Every master of a cluster, or the one server."""
    if hasattr(r, "get_primaries"):
        for node in r.get_primaries():
            r.get_redis_connection(node).flushall()
    else:
        r.flushdb()


# -- edges ----------------------------------------------------------------------------------


def _many(r: redis.Redis, n: int, expired: set[int]) -> dict[str, Row]:
    rows = {
        f"t{k:04d}": {
            "email": f"t{k}@x.io",
            "age": k % 50,
            "score": float(k),
            "city": "rare" if k % 40 == 0 else "common",
            "tags": {"p"} if k % 2 else set(),
        }
        for k in range(n)
    }
    write(r, Tok, rows)
    mark(r, Tok, {f"t{k:04d}": PAST for k in expired})
    return rows


def work(query: Any, mode: bytes = b"ids") -> int:
    reply, _ = executor_drive(query._run(mode))
    return int(reply[-1] if mode == b"count" else reply[2])


def executor_drive(steps: Any) -> Any:
    from redisca.session import executor

    return executor.drive(steps)


def test_pages_and_counts_over_runs_of_expired_entities(r: redis.Redis) -> None:
    """The first 300 of 400 expired: a page walks past them, counts subtract them."""
    rows = _many(r, 400, set(range(300)))
    live = sorted(i for i in rows if int(i[1:]) >= 300)
    with Session(r) as s:
        q = s.query(Tok)
        assert q.order_by(Tok.score).limit(5).ids() == live[:5]
        assert q.order_by(Tok.score.desc()).limit(5).ids() == live[::-1][:5]
        assert q.order_by(Tok.score).offset(90).limit(20).ids() == live[90:]
        assert q.count() == 100 and work(q, b"count") == 0  # ZCARD - ZCOUNT
        assert q.filter(Tok.score >= 250).count() == 100
        assert q.filter(Tok.score < 350).count() == 50
        assert q.filter(Tok.city == "rare").count() == 2  # t0320, t0360
        assert (
            q.filter(Tok.city == "common").limit(3).ids()
            == [
                i
                for i in sorted(live, key=lambda i: (rows[i]["age"], i))
                if rows[i]["city"] == "common"
            ][:3]
        )
        assert q.filter(Tok.tags.contains("p")).count() == 50
        assert q.filter(Tok.email == "t5@x.io").first() is None
        assert q.filter(Tok.email == "t305@x.io").one().id == "t0305"
        with pytest.raises(NotFound):
            q.filter(Tok.email == "T5@X.IO").one()
        assert q.filter(Tok.email == "t5@x.io", Tok.age == 5).count() == 0
        assert q.filter(Tok.email.in_(["t5@x.io", "t305@x.io"])).ids() == ["t0305"]
        assert q.filter((Tok.city == "rare") | (Tok.score < 310)).count() == 12
        last = q.order_by(Tok.score).limit(10).all()[-1]
        assert q.order_by(Tok.score).after(last).limit(3).ids() == live[10:13]
        # a cursor at an expired entity: its position in the index still holds
        assert q.order_by(Tok.score).after("t0100").limit(2).ids() == live[:2]


def test_a_slice_whose_offset_skips_an_expired_entity(r: redis.Redis) -> None:
    """The short path for a window's page checks the ids its offset skips too."""
    _many(r, 10, {1})
    with Session(r) as s:
        q = s.query(Tok).order_by(Tok.score)
        assert q.offset(1).limit(2).ids() == ["t0002", "t0003"]
        assert q.filter(Tok.score >= 0).offset(1).limit(1).ids() == ["t0002"]
        assert q.order_by(Tok.score.desc()).offset(8).limit(5).ids() == ["t0000"]
        assert [t.id for t in q.limit(2).all()] == ["t0000", "t0002"]


def test_count_costs_the_smaller_side(r: redis.Redis) -> None:
    """count() probes the candidates or H#exp's expired ids, whichever is fewer (an
    equality index is a set by default; with ``scored_indexes=True`` its count probes
    nothing: tests/test_expiry.py)."""
    _many(r, 400, {0, 40, 80, 1, 3})  # 3 of the 10 rare ones, 2 of the 200 tagged 'p'
    with Session(r) as s:
        q = s.query(Tok)
        assert q.count() == 395 and work(q, b"count") == 0
        rare = q.filter(Tok.city == "rare")
        # 10 candidates, 5 expired ids in H#exp: the 5 are probed in the set.
        assert rare.count() == 7 and work(rare, b"count") == 5
        tagged = q.filter(Tok.tags.contains("p"))
        assert tagged.count() == 198 and work(tagged, b"count") <= 5
        window = q.filter(Tok.score < 100)
        assert window.count() == 95 and work(window, b"count") <= 5  # each one ZRANK
        mark(r, Tok, {f"t{k:04d}": PAST for k in range(0, 400, 2)})  # 202 now expired
        # 202 expired ids now: the set's 10 ids are read and probed in H#exp instead.
        assert rare.count() == 0 and work(rare, b"count") == 20
        assert window.count() == 48


def test_an_instant_is_compared_with_the_servers_now(r: redis.Redis) -> None:
    """1 ms ago is expired, a minute ahead is not; an instant passing while the data sits
    takes the entity out of every query."""
    _many(r, 3, set())
    now = server_now_ms(r)
    mark(r, Tok, {"t0000": now - 1, "t0001": now + 60_000, "t0002": now + 300})
    with Session(r) as s:
        q = s.query(Tok).order_by(Tok.score)
        assert q.ids() == ["t0001", "t0002"] and q.count() == 2
        assert q.filter(Tok.email == "t2@x.io").count() == 1
        time.sleep(0.45)
        assert q.ids() == ["t0001"] and q.count() == 1
        assert q.filter(Tok.email == "t2@x.io").count() == 0
        assert q.filter(Tok.city == "common").ids() == ["t0001"]


def test_the_async_session_skips_expired_entities(r: redis.Redis, driver: str) -> None:
    _many(r, 30, {1, 2, 3})
    with Session(r) as s:  # the driver fixture makes it an AsyncSession's facade
        q = s.query(Tok).order_by(Tok.score)
        assert q.limit(2).ids() == ["t0000", "t0004"]
        assert q.count() == 27
        assert q.filter(Tok.email == "t2@x.io").count() == 0


# -- a model that is not expiring --------------------------------------------------------------


def _monitored(r: redis.Redis, model: type, run: Any) -> list[tuple[str, list[str]]]:
    """(client type, command and arguments) of every command the server of ``model``'s
    slot saw while ``run()`` ran (MONITOR)."""
    seen: list[tuple[str, list[str]]] = []
    ready = threading.Event()
    server = server_for(r, model)
    where = server.connection_pool.connection_kwargs
    watcher = redis.Redis(host=where["host"], port=where["port"], decode_responses=True)

    def record() -> None:
        with watcher.monitor() as monitor:
            ready.set()
            for event in monitor.listen():
                if event["command"] == "ECHO monitor-stop":
                    return
                seen.append((event["client_type"], event["command"].split(" ")))

    thread = threading.Thread(target=record)
    thread.start()
    assert ready.wait(10)
    run()
    server.echo("monitor-stop")
    thread.join(10)
    watcher.close()
    return seen


def test_a_model_that_does_not_expire_sends_what_it_sent(r: redis.Redis) -> None:
    """The scripts of other models are the ones they always ran (no TIME, no H#exp), and
    a query sends one EVALSHA of exactly the keys and arguments it sent before."""
    for script in (queryscript.SCRIPT, queryscript.UNION, queryscript.LOOKUP):
        assert b"TIME" not in script and b"xkey" not in script
    with Session(r) as s:
        s.add_all(Same(id=f"s{k}", email=f"s{k}@x.io", age=k, city="c") for k in range(5))
        s.commit()
    # warm the scripts so every query below is sent by digest
    with Session(r) as s:
        q = s.query(Same)
        for query in (
            q.limit(2),
            q.filter(Same.email == "s1@x.io"),
            q.filter(Same.city.in_(["c", "d"])),
        ):
            query.ids(), query.count()
    expected = {
        "page": (
            queryscript.SHA,
            ["{xqn}#r:age"],
            ["ids", "0", "2", "0", "1", "{xqn}:", "0", "-inf", "0", "+inf", "1", "", "", "", "0"],
            ["ZRANGEBYSCORE"],
        ),
        "count": (
            queryscript.SHA,
            ["{xqn}#r:age"],
            [
                "count",
                "0",
                "-1",
                "0",
                "1",
                "{xqn}:",
                "0",
                "-inf",
                "0",
                "+inf",
                "1",
                "",
                "",
                "",
                "0",
            ],
            ["ZCARD"],
        ),
        "eq": (
            queryscript.SHA,
            ["{xqn}#r:age", "{xqn}#i:city:c"],
            [
                "ids",
                "0",
                "3",
                "0",
                "1",
                "{xqn}:",
                "0",
                "-inf",
                "0",
                "+inf",
                "1",
                "",
                "",
                "",
                "1",
                "e",
            ],
            None,
        ),
    }
    with Session(r) as s:
        q = s.query(Same)
        runs = {
            "page": lambda: q.limit(2).ids(),
            "count": lambda: q.count(),
            "eq": lambda: q.filter(Same.city == "c").limit(3).ids(),
        }
        for name, run in runs.items():
            sha, keys, args, inner = expected[name]
            seen = _monitored(r, Same, run)
            outer = [c for kind, c in seen if kind != "lua"]
            assert outer == [["EVALSHA", sha.decode(), str(len(keys)), *keys, *args]], name
            script = [c[0].upper() for kind, c in seen if kind == "lua"]
            assert "TIME" not in script and not any("#exp" in " ".join(c) for _, c in seen)
            if inner is not None:
                assert script == inner, name
    # the expiring model's query: the same call plus H#exp, to the expiring script
    _many(r, 3, set())
    with Session(r) as s:
        s.query(Tok).count()  # the script sent once, then by digest
        seen = _monitored(r, Tok, lambda: s.query(Tok).count())
    outer = [c for kind, c in seen if kind != "lua"]
    assert outer == [
        [
            "EVALSHA",
            queryscript.SHA_X.decode(),
            "2",
            "{xq}#r:age",
            "{xq}#exp",
            *[a.replace("xqn", "xq") for a in expected["count"][2]],
        ]
    ]
    assert [c[0].upper() for kind, c in seen if kind == "lua"] == ["TIME", "ZCOUNT", "ZCARD"]
    # a page of live entities: the slice, then one probe of its ids; each hash loaded
    # with its instant (so the instances know their expires_at)
    with Session(r) as s:
        found = _monitored(r, Tok, lambda: s.query(Tok).order_by(Tok.score).limit(2).all())
    script = [c[0].upper() for kind, c in found if kind == "lua"]
    assert script == ["ZRANGEBYSCORE", "TIME", "ZMSCORE", *["HGETALL", "ZSCORE"] * 2]


def test_candidate_sets_larger_than_a_probe_chunk(r: redis.Redis) -> None:
    """Sets and walks of more than 512 ids (one ZMSCORE each 512) with most ids expired."""
    rows = _many(r, 1300, {k for k in range(1300) if k % 3})  # 434 live
    live = sorted((i for i in rows if int(i[1:]) % 3 == 0), key=lambda i: (rows[i]["age"], i))
    with Session(r) as s:
        q = s.query(Tok)
        assert q.count() == 434
        assert q.filter(Tok.tags.contains("p")).count() == len(
            [i for i in live if "p" in rows[i]["tags"]]
        )
        assert q.filter(Tok.score < 1000).count() == 334  # 866 expired ids placed by rank
        assert q.filter(Tok.score < 500).count() == 167  # the window walked, probed in chunks
        assert q.filter(Tok.city == "common").count() == len(
            [i for i in live if rows[i]["city"] == "common"]
        )
        assert q.offset(400).ids() == live[400:]
        assert q.order_by(Tok.score.desc()).offset(430).ids() == [
            "t0009",
            "t0006",
            "t0003",
            "t0000",
        ]


def test_with_nothing_expired_a_deep_offset_goes_by_rank(r: redis.Redis) -> None:
    """No expired id in H#exp (one ZCOUNT says so): no probe, the engine's slice by rank;
    one expired id: the walk probes what it passes."""
    _many(r, 1200, set())
    mark(r, Tok, {"t0003": FUTURE})
    with Session(r) as s:
        q = s.query(Tok).order_by(Tok.score).offset(1000).limit(10)
        expected = [f"t{k:04d}" for k in range(1000, 1010)]
        assert q.ids() == expected and work(q) == 10
        mark(r, Tok, {"t0003": PAST})
        assert q.ids() == [f"t{k:04d}" for k in range(1001, 1011)]
        assert work(q) > 1000


def test_h_exp_of_another_type_is_named_in_the_error(r: redis.Redis) -> None:
    _many(r, 3, set())
    r.delete(expiry_key(Tok))
    r.set(expiry_key(Tok), "not a sorted set")
    with Session(r) as s:
        for run in (s.query(Tok).count, s.query(Tok).filter(Tok.city == "common").ids):
            with pytest.raises(OperationalError, match=r"\{xq\}#exp"):
                run()

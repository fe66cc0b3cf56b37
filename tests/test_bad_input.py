"""Bad input: awkward ids and values, extreme numbers and dates, wrong Python types,
and data other programs wrote into redisca's keys.

What is promised: a value redisca cannot store exactly is refused with a
:class:`redisca.ValidationError` before anything reaches Redis; stored data
redisca cannot read is a :class:`redisca.DecodeError` naming the key and the
field; a commit refused because of either writes nothing (the keyspace is
compared before and after); whatever is accepted round-trips and leaves the
indexes clean (``redisca.maintenance.check``). Codec round trips of single
values are in ``test_codecs.py``; stored garbage per type in
``test_codecs_redis.py``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
import redis
from helpers import as_str, assert_indexes_consistent, dump_keyspace, guard_key, stripe_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redisca
from redisca import (
    DateTime,
    DecodeError,
    Email,
    Float,
    Integer,
    QueryError,
    Reference,
    Registry,
    Session,
    String,
    ValidationError,
)
from redisca.maintenance import check

registry = Registry()


@registry.mapped(prefix="bgrp")
@attrs.define
class Group:
    name: str = String(unique=True)
    id: str | None = None


@registry.mapped(prefix="bitem")
@attrs.define
class Item:
    tag: str | None = String(index=True, default=None)
    code: str | None = String(unique=True, default=None)
    mail: str | None = Email(unique=True, default=None)
    count: int | None = Integer(index=True, default=None)
    big: int | None = Integer(default=None)
    real: float | None = Float(index=True, default=None)
    plain: float | None = Float(default=None)
    ratio: float | None = Float(minval=0, maxval=1, default=None)
    when: datetime | None = DateTime(index=True, default=None)
    group: Group | None = Reference(Group, index=True, default=None)
    note: str | None = None
    id: str | None = None


@registry.mapped(prefix="bver", versioned=True)
@attrs.define
class Versioned:
    title: str = String(index=True)
    id: str | None = None


MAPPERS = [redisca.inspect(Group), redisca.inspect(Item), redisca.inspect(Versioned)]


def clean(r: redis.Redis) -> None:
    report = check(registry, r)
    assert report.ok, report.problems
    for mapper in MAPPERS:
        assert_indexes_consistent(r, mapper)


def commit(r: redis.Redis, *objs: object) -> None:
    with Session(r) as s:
        s.add_all(objs)
        s.commit()


def ids(query: Any) -> list[str]:
    return sorted(query.ids())


# -- awkward ids and text values ------------------------------------------------------------

AWKWARD = [
    ":",
    "#",
    "*",
    "?",
    "[",
    "]",
    "[a-z]",
    "\\",
    "a:b#c",
    "x#i:tag:y",
    "{bitem}#all",
    "{tag}",
    "\n",
    "a\r\nb",
    "\x00",
    "nul\x00in",
    "\t",
    " ",
    "ü",
    "😀",
    "\u200b",
    "e\u0301",
    "",
    "x" * 10_000,
]


@pytest.mark.parametrize("awkward", AWKWARD, ids=lambda v: repr(v)[:20])
def test_awkward_text_as_id_and_as_every_kind_of_indexed_value(
    r: redis.Redis, awkward: str
) -> None:
    group = Group(awkward, id=awkward)
    item = Item(tag=awkward, code=awkward, note=awkward, group=group, id=awkward)
    other = Item(tag="plain", code="other", id="other")
    commit(r, item, other)
    clean(r)
    with Session(r) as s:
        loaded = s.get(Item, awkward)
        assert loaded is not None and loaded is not item
        assert (loaded.id, loaded.tag, loaded.code, loaded.note) == (awkward,) * 4
        assert loaded.group is not None and loaded.group.name == awkward
        assert ids(s.query(Item).filter(Item.tag == awkward)) == [awkward]
        assert ids(s.query(Item).filter(Item.code == awkward)) == [awkward]
        assert ids(s.query(Item).filter(Item.group == awkward)) == [awkward]
        assert s.query(Group).filter(Group.name == awkward).one().id == awkward
        loaded.tag = awkward + "2"
        loaded.code = None
        s.commit()
        clean(r)
        s.delete(loaded)
        s.delete(s.get(Group, awkward))
        s.commit()
    clean(r)
    assert {as_str(k) for k in r.scan_iter()} == {
        "{bitem}:other",  # no bitem#all: bitem#r:count, its first range index, holds the ids
        "{bitem}#i:tag:plain",
        as_str(stripe_key("bitem", "code", "other")),
        "{bitem}#r:count",  # range indexes hold every entity, those without a value at +inf
        "{bitem}#r:real",
        "{bitem}#r:when",
        # guard counters of the entities written (they count commits, and stay)
        *(as_str(guard_key(p, i)) for p, i in (("bitem", awkward), ("bitem", "other"))),
        as_str(guard_key("bgrp", awkward)),
    }


def test_one_megabyte_values_ids_and_index_keys(r: redis.Redis) -> None:
    big = "é" * 2**19  # 1 MiB as UTF-8
    item = Item(tag=big, code=big + "c", note=big, mail=f"{big}@x.org", id=big)
    commit(r, item, Group(big + "g", id=big))
    clean(r)
    with Session(r) as s:
        loaded = s.get(Item, big)
        assert loaded is not None and loaded.note == big and loaded.mail == f"{big}@x.org"
        assert ids(s.query(Item).filter(Item.tag == big)) == [big]
        assert ids(s.query(Item).filter(Item.mail == f"{big.upper()}@X.ORG")) == [big]
    owner = r.hget(stripe_key("bitem", "code", big + "c"), (big + "c").encode())
    assert owner is not None and as_str(owner) == big


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ident=st.text(max_size=30), tag=st.text(max_size=30), code=st.text(max_size=30))
def test_prop_any_text_round_trips_and_indexes_stay_clean(
    r: redis.Redis, ident: str, tag: str, code: str
) -> None:
    r.flushdb()
    surrogate = any("\ud800" <= c <= "\udfff" for c in ident + tag + code)
    if surrogate:
        with pytest.raises(ValidationError):
            Item(tag=tag, code=code, id=ident)
        return
    commit(r, Item(tag=tag, code=code, id=ident))
    with Session(r) as s:
        loaded = s.get(Item, ident)
        assert loaded is not None and (loaded.tag, loaded.code) == (tag, code)
        assert ids(s.query(Item).filter(Item.tag == tag)) == [ident]
        assert ids(s.query(Item).filter(Item.code == code)) == [ident]
        loaded.tag, loaded.code = code, tag
        s.commit()
    clean(r)


# -- numbers ----------------------------------------------------------------------------------


def test_nan_and_infinities(r: redis.Redis) -> None:
    """NaN: only in an unindexed, unbounded Float (a score cannot hold it, and no bound can
    compare it). ±inf: not in a range index (its +inf means "no value"), anywhere else a
    float goes; infinite bounds still query."""
    nan, inf = float("nan"), float("inf")
    with pytest.raises(ValidationError, match=r"Item\.real: NaN"):
        Item(real=nan)
    with pytest.raises(ValidationError, match=r"Item\.ratio: value NaN"):
        Item(ratio=nan)
    item = Item(plain=nan, id="nan")
    with pytest.raises(ValidationError, match="NaN"):
        item.real = nan
    for bad in (inf, -inf):
        with pytest.raises(ValidationError, match=r"Item\.real: .*must be finite"):
            Item(real=bad)
        with pytest.raises(ValidationError, match=r"Item\.real: .*must be finite"):
            item.real = bad
    up, down = Item(real=1e308, plain=inf, id="up"), Item(real=-1e308, plain=-inf, id="down")
    commit(r, item, up, down, Item(real=0.5, id="mid"))
    clean(r)
    with Session(r) as s:
        loaded = s.get(Item, "nan")
        assert loaded is not None and math.isnan(loaded.plain)  # type: ignore[arg-type]
        assert ids(s.query(Item).filter(Item.real >= 0)) == ["mid", "up"]
        assert ids(s.query(Item).filter(Item.real == inf)) == []
        assert ids(s.query(Item).filter(Item.real == 1e308)) == ["up"]
        assert s.get(Item, "up").plain == inf and s.get(Item, "down").plain == -inf
        assert ids(s.query(Item).filter(Item.real.between(-inf, inf))) == ["down", "mid", "up"]
        assert ids(s.query(Item).filter(Item.real < -1e307)) == ["down"]
        order = [i.id for i in s.query(Item).filter(Item.real <= inf).order_by(Item.real)]
        assert order == ["down", "mid", "up"]
        for condition in (Item.real >= nan, Item.real == nan, Item.count < nan):
            with pytest.raises(QueryError, match="NaN"):
                s.query(Item).filter(condition).all()
    with pytest.raises(ValidationError, match="maximum"):
        Item(ratio=inf)


def test_integers_beyond_64_bits_and_beyond_double_precision(r: redis.Redis) -> None:
    """Unindexed ints are stored as text, any size Python can print; indexed ones are
    sorted-set scores (doubles), exact only within ±2**53, and refused beyond."""
    huge = 2**200 + 1
    commit(r, Item(big=huge, id="h"), Item(big=-(2**63) - 1, id="n"))
    with Session(r) as s:
        assert s.get(Item, "h").big == huge  # type: ignore[union-attr]
        assert s.get(Item, "n").big == -(2**63) - 1  # type: ignore[union-attr]
    for bad in (2**53 + 1, -(2**53) - 1, 2**63, 10**30):
        with pytest.raises(ValidationError, match=r"Item\.count.*2\*\*53"):
            Item(count=bad)
    too_long = 10 ** (sys.get_int_max_str_digits() + 1)
    with pytest.raises(ValidationError, match=r"Item\.big: integer too long"):
        Item(big=too_long)
    with pytest.raises(ValidationError, match=r"Item\.plain: .*too large for a float"):
        Item(plain=10**400)
    clean(r)


def test_query_bounds_beyond_what_a_double_holds_are_exact(r: redis.Redis) -> None:
    """A bound no double can hold is compared as Python would compare it, not rounded."""
    edge = 2**53
    commit(r, Item(count=edge, real=float(edge), id="edge"), Item(count=-edge, id="low"))
    with Session(r) as s:
        assert ids(s.query(Item).filter(Item.count >= edge + 1)) == []
        assert ids(s.query(Item).filter(Item.count > edge - 1)) == ["edge"]
        assert ids(s.query(Item).filter(Item.count <= edge + 1)) == ["edge", "low"]
        assert ids(s.query(Item).filter(Item.count < -edge - 1)) == []
        assert ids(s.query(Item).filter(Item.real >= edge + 1)) == []
        assert ids(s.query(Item).filter(Item.real < edge + 1)) == ["edge"]
        assert ids(s.query(Item).filter(Item.count >= 10**400)) == []
        assert ids(s.query(Item).filter(Item.count <= 10**400)) == ["edge", "low"]
        assert ids(s.query(Item).filter(Item.count > -(10**400))) == ["edge", "low"]
        assert s.query(Item).filter(Item.count.between(-(10**400), 10**400)).count() == 2


# -- dates --------------------------------------------------------------------------------


def test_naive_aware_and_extreme_datetimes(r: redis.Redis) -> None:
    """Naive means UTC; aware values are converted to UTC; whole seconds are kept; a moment
    that has no UTC datetime (beyond year 1..9999 once converted) is refused."""
    plus5 = timezone(timedelta(hours=5))
    values = {
        "naive": datetime(2024, 2, 29, 12, 30, 15, 999_999),
        "aware": datetime(2024, 2, 29, 17, 30, 15, tzinfo=plus5),
        "min": datetime.min,
        "max": datetime.max.replace(tzinfo=UTC),
        "epoch": datetime(1970, 1, 1),
        "before": datetime(1969, 12, 31, 23, 59, 59),
    }
    commit(r, *[Item(when=v, id=k) for k, v in values.items()])
    with Session(r) as s:
        got = {k: s.get(Item, k).when for k in values}  # type: ignore[union-attr]
    assert got["naive"] == got["aware"] == datetime(2024, 2, 29, 12, 30, 15, tzinfo=UTC)
    assert got["min"] == datetime.min.replace(tzinfo=UTC)
    assert got["max"] == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert got["before"] == datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert all(v is not None and v.tzinfo is UTC for v in got.values())
    with Session(r) as s:
        since = s.query(Item).filter(Item.when >= datetime(1970, 1, 1, tzinfo=plus5))
        assert ids(since) == ["aware", "before", "epoch", "max", "naive"]
    for moment in (
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),
        datetime.min.replace(tzinfo=timezone(timedelta(hours=1))),
    ):
        with pytest.raises(ValidationError, match="out of range"):
            Item(when=moment)
    clean(r)


# -- wrong Python types --------------------------------------------------------------------

WRONG_TYPES: list[tuple[str, Any]] = [
    ("tag", 5),
    ("tag", b"bytes"),
    ("tag", ["list"]),
    ("tag", "lone \udc80 surrogate"),
    ("code", 1.5),
    ("mail", "not an address"),
    ("mail", "two@@at.org"),
    ("mail", "a b@c.d"),
    ("count", "5"),
    ("count", 5.0),
    ("count", True),
    ("real", "1.5"),
    ("real", False),
    ("real", 1j),
    ("ratio", -0.1),
    ("ratio", 2),
    ("when", date(2024, 1, 1)),
    ("when", "2024-01-01"),
    ("when", 1700000000),
    ("group", "an id"),
    ("group", Item()),
    ("note", 3),
]


@pytest.mark.parametrize(("name", "value"), WRONG_TYPES, ids=lambda v: repr(v)[:16])
def test_wrong_python_types_are_refused_before_redis(r: redis.Redis, name: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        Item(**{name: value})
    assert info.value.field == name and f"Item.{name}" in str(info.value)
    item = Item(id="x")
    with pytest.raises(ValidationError):
        setattr(item, name, value)
    with Session(r) as s:
        s.add(item)
        s.commit()
    assert r.hlen("{bitem}:x") == 1  # written without the value: just the exists marker
    clean(r)


@pytest.mark.parametrize("bad", [1.5, b"id", ["x"], True, "lone \ud800", object()])
def test_ids_of_the_wrong_type_are_refused(r: redis.Redis, bad: Any) -> None:
    with pytest.raises(ValidationError, match=r"Item\.id"):
        Item(id=bad)
    with Session(r) as s, pytest.raises(ValidationError, match=r"Item\.id"):
        s.get(Item, bad)
    assert dump_keyspace(r) == {}


def test_an_int_id_is_its_decimal_string(r: redis.Redis) -> None:
    commit(r, Item(tag="t", id=42))  # type: ignore[arg-type]
    with Session(r) as s:
        assert s.get(Item, 42) is s.get(Item, "42")
    assert r.exists("{bitem}:42")


# -- data other programs wrote -------------------------------------------------------------


@pytest.fixture
def stored(r: redis.Redis) -> redis.Redis:
    """Two items and a versioned entity, committed by redisca."""
    acme = Group("acme", id="acme")
    commit(
        r,
        Item(tag="t", code="c1", mail="A@x.org", count=1, group=acme, id="1"),
        Item(tag="t", code="c2", count=2, id="2"),
        Versioned("v", id="v"),
    )
    return r


def refused(r: redis.Redis, error: type[Exception], match: str, action: Callable[[], Any]) -> Any:
    """``action`` raises ``error`` and Redis is exactly as before."""
    before = dump_keyspace(r)
    with pytest.raises(error, match=match) as info:
        action()
    assert dump_keyspace(r) == before
    return info.value


def test_a_missing_field_loads_as_none_and_other_fields_survive_updates(stored: redis.Redis):
    """A field another program removed (or a field added to the model later) is None;
    fields the model does not know are kept: commits write only what changed."""
    stored.hdel("{bitem}:1", "code")
    stored.hset("{bitem}:1", "legacy", "kept")
    with Session(stored) as s:
        item = s.get(Item, "1")
        assert item is not None and item.code is None and item.tag == "t"
        item.tag = "u"
        s.commit()
    assert as_str(stored.hget("{bitem}:1", "legacy")) == "kept"


def test_undecodable_values_name_key_and_field_on_every_read_path(stored: redis.Redis) -> None:
    stored.hset("{bitem}:1", "count", "many")
    paths: list[Callable[[Session], Any]] = [
        lambda s: s.get(Item, "1"),
        lambda s: s.get_many(Item, ["2", "1"]),
        lambda s: s.query(Item).filter(Item.tag == "t").all(),
        lambda s: s.query(Item).order_by(Item.count).first(),
        lambda s: s.reference(Item, "1").count,
        lambda s: s.refresh(s.reference(Item, "1")),
    ]
    for path in paths:
        with Session(stored) as s, pytest.raises(DecodeError) as info:
            path(s)
        assert (info.value.key, info.value.field) == ("{bitem}:1", "count")
        assert "{bitem}:1" in str(info.value) and "'count'" in str(info.value)


def test_a_string_where_a_hash_should_be(stored: redis.Redis) -> None:
    stored.delete("{bitem}:1")
    stored.set("{bitem}:1", "not a hash")
    with Session(stored) as s:
        with pytest.raises(DecodeError, match=r"\{bitem\}:1 is not a hash") as info:
            s.query(Item).filter(Item.tag == "t").all()
        assert info.value.key == "{bitem}:1"
        ref = s.reference(Item, "1")
        ref.tag = "new"  # an indexed change: the commit reads the hash first
        failure = refused(stored, redisca.IntegrityError, "{bitem}:1", s.commit)
        assert "WRONGTYPE" in str(failure)
    with Session(stored) as s:
        s.add(Item(id="1"))
        refused(stored, redisca.IntegrityError, "{bitem}:1 already exists", s.commit)


def test_a_version_that_is_no_number(stored: redis.Redis) -> None:
    stored.hset("{bver}:v", "#v", "seven")
    with Session(stored) as s, pytest.raises(DecodeError) as info:
        s.get(Versioned, "v")
    assert (info.value.key, info.value.field) == ("{bver}:v", "#v")
    with Session(stored) as s:
        s.reference(Versioned, "v").title = "w"  # unloaded: the version is only incremented
        error = refused(stored, DecodeError, "{bver}:v: field '#v'", s.commit)
        assert error.field == "#v"


def test_a_unique_key_of_the_wrong_type_refuses_the_commit(stored: redis.Redis) -> None:
    stripe = as_str(stripe_key("bitem", "code", "c3"))
    stored.sadd(stripe, "3")
    with Session(stored) as s:
        s.add(Item(code="c3", id="3"))
        refused(stored, redisca.IntegrityError, f"{stripe} does not hold", s.commit)


def test_ids_that_are_not_text_in_index_keys(stored: redis.Redis) -> None:
    stored.sadd("{bitem}#i:tag:t", b"\xff\xfe")
    stripe = as_str(stripe_key("bitem", "code", "c9"))
    stored.hset(stripe, "c9", b"\xc3")
    # in every index, as an entity's id would be (the query engine drops ids in no
    # ordering index: an orphan entry names no entity)
    stored.zadd("{bitem}#r:count", {b"\xff\xfe": math.inf, b"\xc3": math.inf})
    with Session(stored) as s:
        with pytest.raises(DecodeError, match=r"{bitem}#i:tag:t holds b'\\xff\\xfe'") as info:
            s.query(Item).filter(Item.tag == "t").ids()
        assert info.value.key == "{bitem}#i:tag:t"
        with pytest.raises(DecodeError, match=stripe):
            s.query(Item).filter(Item.code == "c9").all()
        s.add(Item(code="c9", id="9"))  # the claim reads the owner
        refused(stored, DecodeError, f"{stripe} holds", s.commit)


def test_an_address_that_is_not_text_can_still_be_deleted(stored: redis.Redis) -> None:
    """A unique Email value another program replaced by bytes that are not UTF-8: its
    keys are computed from the bytes as they are, so the entity can go."""
    stored.hdel(stripe_key("bitem", "mail", "a@x.org"), "a@x.org")
    stored.hset("{bitem}:1", "mail", b"\xffB@X.org")
    stripe = stripe_key("bitem", "mail", b"\xffb@x.org")
    stored.hset(stripe, b"\xffb@x.org", "1")
    with Session(stored) as s:
        s.delete(s.reference(Item, "1"))
        s.commit()
    assert not stored.exists("{bitem}:1") and stored.hget(stripe, b"\xffb@x.org") is None
    clean(stored)


@pytest.mark.parametrize(
    ("key", "make"),
    [
        ("{bgrp}#all", lambda r: r.hset("{bgrp}#all", "x", "y")),  # Group: no range index
        ("{bitem}#r:count", lambda r: r.set("{bitem}#r:count", "junk")),
        ("{bitem}#i:tag:t", lambda r: r.set("{bitem}#i:tag:t", "junk")),
    ],
)
def test_index_keys_of_the_wrong_type(
    stored: redis.Redis, key: str, make: Callable[[redis.Redis], Any]
) -> None:
    """An index key another program overwrote with another type. Queries using it fail,
    naming it; a commit writing to it fails inside EXEC, where Redis has no rollback: the
    rest of the commit is applied and the error names the key. ``check`` reports the key
    (``wrong_type``) and ``reindex`` rebuilds it."""
    stored.delete(key)
    make(stored)
    with Session(stored) as s:
        new: Any
        if key == "{bgrp}#all":
            query: Any = s.query(Group)
            new = Group("g3", id="g3")
        else:
            query = s.query(Item).filter(Item.tag == "t", Item.count >= 0)
            new = Item(tag="t", count=3, id="3")
        with pytest.raises(redisca.OperationalError, match=key) as info:
            query.all()
        assert "WRONGTYPE" in str(info.value.orig)
        s.add(new)
        with pytest.raises(redisca.OperationalError, match=f"rest was applied: .* {key} answered"):
            s.commit()
    assert any(p.kind == "wrong_type" and p.key == key for p in check(registry, stored).problems)


SAFE = 2**53
reals = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-SAFE, SAFE)
bounds = st.integers() | st.floats(allow_nan=False) | st.integers(SAFE - 3, SAFE + 3)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    counts=st.lists(st.integers(-SAFE, SAFE), min_size=1, max_size=6),
    reals_=st.lists(reals, min_size=1, max_size=6),
    bound=bounds,
)
def test_prop_range_queries_compare_as_python_does(
    r: redis.Redis, counts: list[int], reals_: list[float], bound: float
) -> None:
    """Whatever the stored numbers and the bound (ints beyond 2**53 or beyond the float
    range, ±inf), a range query answers what the same comparison in Python answers."""
    r.flushdb()
    items = [Item(count=c, id=f"c{n}") for n, c in enumerate(counts)]
    items += [Item(real=x, id=f"r{n}") for n, x in enumerate(reals_)]
    commit(r, *items)
    compare: dict[str, Callable[[Any, Any], bool]] = {
        ">=": lambda a, b: a >= b,
        ">": lambda a, b: a > b,
        "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b,
    }
    with Session(r) as s:
        for attribute, name in ((Item.count, "count"), (Item.real, "real")):
            for op, python in compare.items():
                condition = python(attribute, bound)
                expected = sorted(
                    i.id  # type: ignore[misc]
                    for i in items
                    if getattr(i, name) is not None and python(getattr(i, name), bound)
                )
                assert ids(s.query(Item).filter(condition)) == expected, (name, op, bound)

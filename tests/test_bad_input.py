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
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
import redis
from helpers import as_str, assert_indexes_consistent, dump_keyspace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redisca
from redisca import (
    DateTime,
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
    "bitem#all",
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
        "bitem:other",
        "bitem#all",
        "bitem#i:tag:plain",
        "bitem#u:code:other",
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
    assert r.strlen(f"bitem#u:code:{big}c".encode()) == len(big.encode())


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
    compare it). ±inf: anywhere a float goes, range indexes included."""
    nan, inf = float("nan"), float("inf")
    with pytest.raises(ValidationError, match=r"Item\.real: NaN"):
        Item(real=nan)
    with pytest.raises(ValidationError, match=r"Item\.ratio: value NaN"):
        Item(ratio=nan)
    item = Item(plain=nan, id="nan")
    with pytest.raises(ValidationError, match="NaN"):
        item.real = nan
    commit(r, item, Item(real=inf, id="up"), Item(real=-inf, id="down"), Item(real=0.5, id="mid"))
    clean(r)
    with Session(r) as s:
        loaded = s.get(Item, "nan")
        assert loaded is not None and math.isnan(loaded.plain)  # type: ignore[arg-type]
        assert ids(s.query(Item).filter(Item.real >= 0)) == ["mid", "up"]
        assert ids(s.query(Item).filter(Item.real == inf)) == ["up"]
        assert ids(s.query(Item).filter(Item.real.between(-inf, inf))) == ["down", "mid", "up"]
        assert ids(s.query(Item).filter(Item.real < -1e308)) == ["down"]
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
    assert r.hlen("bitem:x") == 1  # written without the value: just the exists marker
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
    assert r.exists("bitem:42")

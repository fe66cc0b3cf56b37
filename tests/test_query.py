"""Queries against real Redis: every index kind, AND, order, paging, round trips."""

from __future__ import annotations

import enum
import math
import random
import threading
from datetime import UTC, date, datetime, timedelta

import attrs
import pytest
import redis
from helpers import Counted, as_str

from redisca import (
    Boolean,
    Date,
    DateTime,
    Email,
    Field,
    Float,
    Integer,
    Reference,
    Registry,
    Session,
    String,
)
from redisca.errors import (
    MultipleResultsFound,
    NotFound,
    OperationalError,
    QueryError,
    ValidationError,
)

#: Each test runs with the sync Session and with an AsyncSession (conftest: driver).
pytestmark = pytest.mark.usefixtures("driver")

registry = Registry()


class Tier(enum.Enum):
    FREE = 1
    PRO = 2


@registry.mapped(prefix="qco")
@attrs.define
class Company:
    name: str = String(index=True)
    id: str | None = None


@registry.mapped(prefix="qusr")
@attrs.define
class User:
    email: str = Email(field="eml", unique=True)
    age: int | None = Integer(index=True, default=None)
    score: float | None = Float(index=True, default=None)
    joined: datetime | None = DateTime(index=True, default=None)
    birthday: date | None = Date(index=True, default=None)
    city: str | None = String(index=True, default=None)
    active: bool | None = Boolean(index=True, default=None)
    company: Company | None = Reference(Company, index=True, default=None)
    tier: Tier | None = Field(index=True, default=None)
    nickname: str | None = None
    id: str | None = None


@registry.mapped(prefix="qempty")
@attrs.define
class Empty:
    n: int | None = Integer(index=True, default=None)
    tag: str | None = String(index=True, default=None)
    id: str | None = None


T0 = datetime(2020, 1, 1, tzinfo=UTC)


def scratch_keys(r: redis.Redis) -> list[str]:
    return [as_str(k) for k in r.scan_iter(match="*#t:*")]


def ids_of(objs: list[User]) -> list[str]:
    return [u.id for u in objs]  # type: ignore[misc]


@pytest.fixture
def people(r: redis.Redis) -> dict[str, User]:
    """Eight users with distinct, known values; ids not in insertion order."""
    acme, globex = Company(name="acme", id="c1"), Company(name="globex", id="c2")
    rows = [
        # id, age, score, day offset, birthday, city, active, company, tier
        ("u5", 20, 1.5, 0, date(1990, 1, 1), "paris", True, acme, Tier.FREE),
        ("u3", 25, 2.5, 10, date(1995, 6, 15), "paris", False, acme, Tier.PRO),
        ("u8", 30, 3.5, 20, date(2000, 2, 29), "lyon", True, globex, Tier.FREE),
        ("u1", 30, 2.5, 30, date(1985, 12, 31), "rome", True, None, None),
        ("u7", 35, 4.0, 40, date(1999, 12, 31), "paris", True, globex, Tier.PRO),
        ("u2", 40, 0.5, 50, date(2001, 1, 1), "lyon", False, acme, None),
        ("u6", 45, 5.0, 60, date(1970, 1, 1), "rome", None, None, Tier.FREE),
        ("u4", None, None, None, None, None, None, None, None),
    ]
    names = ("id", "age", "score", "joined", "birthday", "city", "active", "company", "tier")
    users = {}
    with Session(r) as s:
        for row in rows:
            values = dict(zip(names, row, strict=True))
            day = values.pop("joined")
            joined = None if day is None else T0 + timedelta(days=day)  # type: ignore[arg-type]
            users[row[0]] = User(email=f"{row[0]}@Example.com", joined=joined, **values)
        s.add_all(users.values())
        s.commit()
    return users


def L(text: str) -> list[str]:
    return text.split()


#: The people in User's default order: by age (its first range field), ties by id,
#: u4 (no age) last. Queries with no order and no range condition come in it.
DEFAULT_ORDER = "u5 u3 u1 u8 u7 u2 u6 u4"


def q(r: redis.Redis):  # type: ignore[no-untyped-def]
    return Session(r).query(User)


# -- equality on each index kind -------------------------------------------------


def test_equality_on_each_equality_index(r: redis.Redis, people: dict[str, User]) -> None:
    # In the default order: by age (User's first range field), ties by id, None last.
    assert L(DEFAULT_ORDER) == ["u5", "u3", "u1", "u8", "u7", "u2", "u6", "u4"]
    assert q(r).filter(User.city == "paris").ids() == ["u5", "u3", "u7"]
    assert q(r).filter_by(city="lyon").ids() == ["u8", "u2"]
    assert q(r).filter(User.city == "nowhere").ids() == []
    assert q(r).filter(User.active == True).ids() == ["u5", "u1", "u8", "u7"]  # noqa: E712
    assert q(r).filter(User.active == False).ids() == ["u3", "u2"]  # noqa: E712
    assert q(r).filter(User.tier == Tier.PRO).ids() == ["u3", "u7"]
    with Session(r) as s:
        acme = s.get(Company, "c1")
        assert s.query(User).filter(User.company == acme).ids() == ["u5", "u3", "u2"]
        assert s.query(User).filter_by(company=acme).ids() == ["u5", "u3", "u2"]
    assert q(r).filter(User.company == "c2").ids() == ["u8", "u7"]
    # range-indexed fields answer == too
    assert q(r).filter(User.age == 30).ids() == ["u1", "u8"]
    assert q(r).filter(User.score == 2.5).ids() == ["u1", "u3"]
    assert q(r).filter(User.birthday == date(2000, 2, 29)).ids() == ["u8"]
    assert q(r).filter(User.joined == T0 + timedelta(days=40)).ids() == ["u7"]


def test_unique_email_equality_ignores_case(r: redis.Redis, people: dict[str, User]) -> None:
    for text in ("u3@example.com", "U3@EXAMPLE.COM", "u3@Example.com"):
        found = q(r).filter(User.email == text).one()
        assert found.id == "u3" and found.email == "u3@Example.com"
    assert q(r).filter_by(email="U7@example.COM").ids() == ["u7"]
    assert q(r).filter(User.email == "nobody@example.com").all() == []
    assert q(r).filter(User.email == "U3@example.com").count() == 1


def test_unique_equality_combined_with_another_condition(
    r: redis.Redis, people: dict[str, User]
) -> None:
    assert q(r).filter(User.email == "u3@example.com", User.city == "paris").ids() == ["u3"]
    assert q(r).filter(User.email == "u3@example.com", User.city == "rome").ids() == []
    assert q(r).filter(User.email == "u3@example.com", User.age.between(25, 25)).ids() == ["u3"]
    assert q(r).filter(User.email == "u3@example.com", User.age > 25).ids() == []
    assert q(r).filter(User.email == "u4@example.com", User.age >= 0).ids() == []
    assert q(r).filter(User.email == "u3@example.com", User.city == "rome").count() == 0
    assert q(r).filter(User.email == "u3@example.com").offset(1).ids() == []
    assert q(r).filter(User.email == "u3@example.com").offset(1).count() == 0
    assert q(r).filter(User.email == "u3@example.com").limit(0).count() == 0
    assert q(r).filter(User.email == "u3@example.com").limit(5).count() == 1


# -- ranges ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr", "lo", "hi"),
    [
        ("age", 30, 40),
        ("score", 2.5, 4.0),
        ("joined", T0 + timedelta(days=20), T0 + timedelta(days=40)),
        ("birthday", date(1995, 6, 15), date(2000, 2, 29)),
    ],
)
def test_range_operators_at_the_boundary(
    r: redis.Redis, people: dict[str, User], attr: str, lo: object, hi: object
) -> None:
    col = getattr(User, attr)
    values = {u.id: getattr(u, attr) for u in people.values() if getattr(u, attr) is not None}

    def expect(keep):  # type: ignore[no-untyped-def]
        return sorted((v, i) for i, v in values.items() if keep(v))

    def got(*conds):  # type: ignore[no-untyped-def]
        found = q(r).filter(*conds).all()
        return [(getattr(u, attr), u.id) for u in found]

    assert got(col.between(lo, hi)) == expect(lambda v: lo <= v <= hi)
    assert got(col >= lo) == expect(lambda v: v >= lo)
    assert got(col > lo) == expect(lambda v: v > lo)
    assert got(col <= hi) == expect(lambda v: v <= hi)
    assert got(col < hi) == expect(lambda v: v < hi)
    # the boundary value itself decides inclusive against exclusive
    assert lo in [v for v, _ in got(col >= lo)] and lo not in [v for v, _ in got(col > lo)]
    assert hi in [v for v, _ in got(col <= hi)] and hi not in [v for v, _ in got(col < hi)]
    with pytest.raises(QueryError, match="low bound is above the high bound"):
        got(col.between(hi, lo))


def test_fractional_bounds_on_an_integer_index(r: redis.Redis, people: dict[str, User]) -> None:
    assert (
        q(r).filter(User.age > 24.5, User.age <= 30.0).ids()
        == q(r).filter(User.age.between(25, 30)).ids()
    )
    assert q(r).filter(User.age.between(25.5, 29.9)).all() == []


def test_between_is_inclusive_at_both_ends(r: redis.Redis, people: dict[str, User]) -> None:
    assert q(r).filter(User.age.between(25, 35)).ids() == ["u3", "u1", "u8", "u7"]
    assert q(r).filter(User.age > 25, User.age < 35).ids() == ["u1", "u8"]
    assert q(r).filter(User.score.between(0.5, 1.5)).ids() == ["u2", "u5"]


# -- AND ------------------------------------------------------------------------


def test_conditions_are_anded(r: redis.Redis, people: dict[str, User]) -> None:
    assert q(r).filter(User.city == "paris", User.active == True).ids() == ["u5", "u7"]  # noqa: E712
    assert q(r).filter(User.city == "paris", User.company == "c2").ids() == ["u7"]
    assert q(r).filter(User.city == "lyon", User.city == "rome").ids() == []
    # equality + range: ascending by the range field
    assert q(r).filter(User.city == "paris", User.age >= 25).ids() == ["u3", "u7"]
    assert q(r).filter(User.active == True, User.score < 4.0).ids() == ["u5", "u1", "u8"]  # noqa: E712
    # two ranges on different fields
    both = q(r).filter(User.age >= 30, User.score <= 3.5)
    assert set(both.ids()) == {"u1", "u8", "u2"}
    assert both.order_by(User.score).ids() == ["u2", "u1", "u8"]
    assert both.order_by(User.age.desc()).ids() == ["u2", "u8", "u1"]
    assert both.count() == 3
    # two ranges on the same field narrow each other
    assert q(r).filter(User.age >= 25, User.age < 40).ids() == ["u3", "u1", "u8", "u7"]
    assert q(r).filter(User.age.between(20, 35), User.age.between(30, 45)).ids() == L("u1 u8 u7")
    assert q(r).filter(User.age > 30, User.age <= 30).ids() == []
    # everything at once
    assert q(r).filter(
        User.city == "paris",
        User.company == "c1",
        User.age <= 40,
        User.score >= 2.0,
        User.birthday >= date(1990, 1, 1),
    ).ids() == ["u3"]
    assert scratch_keys(r) == []


# -- ordering -------------------------------------------------------------------


def test_order_by_asc_desc_ties_by_id(r: redis.Redis, people: dict[str, User]) -> None:
    within = q(r).filter(User.score >= 0)
    assert within.ids() == ["u2", "u5", "u1", "u3", "u8", "u7", "u6"]
    assert within.order_by(User.score.desc()).ids() == ["u6", "u7", "u8", "u3", "u1", "u5", "u2"]
    assert within.order_by(User.age).ids() == ["u5", "u3", "u1", "u8", "u7", "u2", "u6"]
    assert within.order_by(User.age.asc()).ids() == within.order_by(User.age).ids()
    assert q(r).filter(User.age >= 30).order_by(User.age.desc()).ids() == L("u6 u2 u7 u8 u1")
    assert q(r).filter(User.city == "paris").order_by(User.joined.desc()).ids() == L("u7 u3 u5")


def test_order_by_without_range_keeps_entities_without_a_value(
    r: redis.Redis, people: dict[str, User]
) -> None:
    asc = q(r).order_by(User.age).ids()
    assert asc == ["u5", "u3", "u1", "u8", "u7", "u2", "u6", "u4"]  # u4 has no age: last
    assert q(r).order_by(User.age.desc()).ids() == asc[::-1]
    # with an equality condition, and with a range on another field
    assert q(r).filter(User.city == "rome").order_by(User.score).ids() == ["u1", "u6"]
    assert q(r).filter(User.company == "c1").order_by(User.birthday).ids() == ["u5", "u3", "u2"]
    no_birthday = User(email="x@example.com", age=33, score=9.0, id="u0")
    with Session(r) as s:
        s.add(no_birthday)
        s.commit()
    assert q(r).filter(User.age.between(30, 35)).order_by(User.birthday).ids() == L("u1 u7 u8 u0")
    assert q(r).order_by(User.birthday).limit(2).offset(7).ids() == ["u0", "u4"]
    assert q(r).order_by(User.birthday).count() == 9
    assert scratch_keys(r) == []


# -- paging ---------------------------------------------------------------------


@pytest.fixture
def crowd(r: redis.Redis) -> list[tuple[int, str]]:
    """300 users with 12 distinct ages (many ties) and ids unrelated to insertion order."""
    rng = random.Random(1234)
    idents = [f"{rng.getrandbits(40):x}" for _ in range(300)]
    rows = []
    with Session(r) as s:
        for n, ident in enumerate(idents):
            age = rng.choice([0, 5, 17, 18, 33, 50, 64, 99, 100, 101, 120, -1])
            s.add(User(email=f"c{n}@example.com", age=age, id=ident))
            rows.append((age, ident))
        s.commit()
    return sorted(rows)


def test_the_1x_range_example(r: redis.Redis, crowd: list[tuple[int, str]]) -> None:
    """1.x ``User.age.range(minval=0, maxval=100, start=50, num=10)``."""
    expected = [i for a, i in crowd if 0 <= a <= 100]
    assert len(expected) > 150
    query = q(r).filter(User.age.between(0, 100))
    page = query.offset(50).limit(10).all()
    assert ids_of(page) == expected[50:60]
    assert [u.age for u in page] == sorted(u.age for u in page)  # type: ignore[type-var]
    for start in (0, 10, 95, len(expected) - 3, len(expected) + 5):
        assert query.offset(start).limit(7).ids() == expected[start : start + 7]
    assert query.offset(20).ids() == expected[20:]
    assert query.limit(0).ids() == []
    assert query.ids() == expected
    desc = q(r).filter(User.age.between(0, 100)).order_by(User.age.desc())
    assert desc.offset(50).limit(10).ids() == expected[::-1][50:60]
    assert query.count() == len(expected)
    assert query.offset(50).limit(10).count() == 10
    assert query.offset(len(expected) - 4).limit(10).count() == 4
    assert query.offset(len(expected) + 1).count() == 0
    assert q(r).count() == 300
    assert q(r).offset(290).count() == 10
    everyone = [i for _, i in crowd]  # the default order: by age (the first range field)
    assert q(r).offset(100).limit(5).ids() == everyone[100:105]
    assert scratch_keys(r) == []


def test_skipped_rows_are_never_loaded(
    r: redis.Redis, counted: Counted, crowd: list[tuple[int, str]]
) -> None:
    expected = [i for a, i in crowd if 0 <= a <= 100]
    session = Session(counted.client)
    query = session.query(User).filter(User.age.between(0, 100)).offset(50).limit(10)
    counted.reset()
    assert query.ids() == expected[50:60]
    assert (counted.round_trips, counted.commands) == (1, 1)
    assert len(list(session)) == 0
    counted.reset()
    page = query.all()
    assert ids_of(page) == expected[50:60]
    assert (counted.round_trips, counted.commands) == (1, 1)  # ids and hashes: one script
    assert sorted(u.id for u in session) == sorted(expected[50:60])  # type: ignore[type-var]
    counted.reset()
    again = query.all()
    assert counted.round_trips == 1  # every row is already in the map: kept as it is
    assert all(a is b for a, b in zip(again, page, strict=True)) and len(again) == 10
    counted.reset()
    session.query(User).filter(User.city == "x", User.age > 1).limit(3).all()
    assert (counted.round_trips, counted.commands) == (1, 1)  # no scratch key, one script
    assert scratch_keys(r) == []


def test_count_without_condition_is_one_zcard(r: redis.Redis, counted: Counted) -> None:
    with Session(r) as s:
        s.add_all(User(email=f"k{n}@example.com", age=n) for n in range(25))
        s.commit()
    session = Session(counted.client)
    counted.reset()
    assert session.query(User).count() == 25
    assert (counted.round_trips, counted.commands) == (1, 1)
    # counted from the ids of qusr#r:age (the all-ids index), not by loading
    r.zadd("{qusr}#r:age", {"ghost1": math.inf, "ghost2": math.inf})
    assert session.query(User).count() == 27


# -- first / one / one_or_none / ids / iteration --------------------------------


def test_first_one_one_or_none(r: redis.Redis, people: dict[str, User]) -> None:
    assert issubclass(NotFound, LookupError) and issubclass(MultipleResultsFound, LookupError)
    s = Session(r)
    paris = s.query(User).filter(User.city == "paris")
    assert paris.order_by(User.age).first().id == "u5"  # type: ignore[union-attr]
    assert paris.order_by(User.age.desc()).first().id == "u7"  # type: ignore[union-attr]
    assert paris.first().id == "u5"  # type: ignore[union-attr]  # the default order: age
    assert s.query(User).filter(User.city == "oslo").first() is None
    with pytest.raises(MultipleResultsFound):
        paris.one()
    with pytest.raises(MultipleResultsFound):
        paris.one_or_none()
    assert s.query(User).filter(User.city == "oslo").one_or_none() is None
    with pytest.raises(NotFound):
        s.query(User).filter(User.city == "oslo").one()
    one = s.query(User).filter(User.city == "paris", User.age > 30).one()
    assert one is s.get(User, "u7")
    assert paris.order_by(User.age).offset(2).one().id == "u7"
    assert paris.limit(1).one_or_none() is not None


def test_a_model_with_a_range_field_lists_in_its_default_order(
    r: redis.Redis, people: dict[str, User]
) -> None:
    """No qusr#all: qusr#r:age (age is User's first range field) holds every id, and
    queries with no order and no range condition come in its order, as order_by(age)."""
    assert not r.exists("{qusr}#all") and r.zcard("{qusr}#r:age") == 8
    assert r.zscore("{qusr}#r:age", "u4") == math.inf  # no age: still listed, last
    s = Session(r)
    everyone = s.query(User)
    default = L(DEFAULT_ORDER)
    assert everyone.ids() == default == everyone.order_by(User.age).ids()
    assert ids_of(everyone.all()) == default and everyone.count() == 8
    assert everyone.offset(2).limit(3).ids() == default[2:5]
    assert everyone.offset(6).count() == 2 and everyone.limit(3).count() == 3
    assert everyone.after("u1").limit(2).ids() == ["u8", "u7"]  # (30, u1) < (30, u8)
    first = everyone.limit(4).all()
    assert everyone.after(first[-1]).ids() == default[4:]  # the instance's stored age
    assert everyone.after("u6").ids() == ["u4"] and everyone.after("u4").ids() == []
    with pytest.raises(QueryError, match="after"):
        everyone.after("nobody").ids()  # the id's position in qusr#r:age is needed
    paris = everyone.filter(User.city == "paris")
    assert paris.ids() == ["u5", "u3", "u7"] and paris.after("u3").ids() == ["u7"]
    assert paris.offset(1).limit(1).ids() == ["u3"] and paris.count() == 3
    # a second range field's condition orders by that field, as before
    assert everyone.filter(User.score >= 2.5).ids() == ["u1", "u3", "u8", "u7", "u6"]


def test_a_model_without_a_range_field_lists_in_id_order(r: redis.Redis) -> None:
    with Session(r) as s:
        s.add_all(Company(name=n, id=i) for i, n in [("c2", "b"), ("c10", "a"), ("a", "b")])
        s.commit()
    stored = r.zrange("{qco}#all", 0, -1, withscores=True)  # P#all: every score 0
    assert [(as_str(m), score) for m, score in stored] == [("a", 0), ("c10", 0), ("c2", 0)]
    s = Session(r)
    companies = s.query(Company)
    assert companies.ids() == ["a", "c10", "c2"] and companies.count() == 3
    assert companies.offset(1).limit(1).ids() == ["c10"]
    assert companies.after("b").ids() == ["c10", "c2"]  # id order: any id is a position
    assert companies.filter(Company.name == "b").ids() == ["a", "c2"]
    assert companies.filter(Company.name == "b").after("a").ids() == ["c2"]


def test_ids_and_iteration(r: redis.Redis, people: dict[str, User]) -> None:
    s = Session(r)
    query = s.query(User).filter(User.age <= 30)
    ids = query.ids()
    assert ids == ["u5", "u3", "u1", "u8"]
    assert all(isinstance(i, str) for i in ids)
    assert len(list(s)) == 0  # ids() loads nothing
    assert [u.id for u in query] == ids
    assert list(query) == query.all()
    assert q(r).ids() == L(DEFAULT_ORDER)  # no condition: every id, in the default order
    assert sorted(q(r).ids()) == sorted(people)


# -- errors ---------------------------------------------------------------------


def test_query_errors(r: redis.Redis) -> None:
    s = Session(r)
    with pytest.raises(QueryError, match="nickname"):
        s.query(User).filter(User.nickname == "bob")
    with pytest.raises(QueryError, match="nickname"):
        s.query(User).filter_by(nickname="bob")
    with pytest.raises(QueryError, match="city"):
        s.query(User).filter(User.city >= "m")
    with pytest.raises(QueryError, match="active"):
        s.query(User).filter(User.active.between(False, True))
    with pytest.raises(QueryError, match="city"):
        s.query(User).order_by(User.city)
    with pytest.raises(QueryError, match="nickname"):
        s.query(User).order_by(User.nickname)
    with pytest.raises(QueryError):
        s.query(User).filter(User.age != 3)
    with pytest.raises(QueryError):
        s.query(User).filter(User.city != "paris")
    with pytest.raises(QueryError):
        s.query(User).filter_by(no_such_attribute=1)
    with pytest.raises(QueryError):
        s.query(User).filter(Empty.n == 1)  # another class's attribute
    with pytest.raises(QueryError):
        s.query(User).offset(-1)
    with pytest.raises(QueryError, match="company"):
        s.query(User).filter(User.company == None)  # noqa: E711
    with pytest.raises(QueryError, match="company"):
        s.query(User).filter(User.company == Company(name="unsaved"))  # no id yet
    assert isinstance(QueryError("x"), ValueError)


# -- generative queries, identity map, committed state --------------------------


def test_queries_are_generative(r: redis.Redis, people: dict[str, User]) -> None:
    base = Session(r).query(User).filter(User.city == "paris")
    older = base.filter(User.age > 20)
    ordered = base.order_by(User.score.desc())
    paged = ordered.offset(1).limit(1)
    assert base.ids() == ["u5", "u3", "u7"]
    assert older.ids() == ["u3", "u7"]
    assert ordered.ids() == ["u7", "u3", "u5"]
    assert paged.ids() == ["u3"]
    assert base.ids() == ["u5", "u3", "u7"] and ordered.ids() == ["u7", "u3", "u5"]
    assert base is not older and base.filter() is not base


def test_results_are_the_sessions_instances(r: redis.Redis, people: dict[str, User]) -> None:
    s = Session(r)
    u3 = s.get(User, "u3")
    assert u3 is not None
    u3.city = "oslo"  # not committed: the query reads Redis, returns the session's object
    u3.nickname = "changed"
    found = s.query(User).filter(User.city == "paris").all()
    assert ids_of(found) == ["u5", "u3", "u7"]  # by the stored age, the default order
    assert found[1] is u3 and found[1].city == "oslo" and found[1].nickname == "changed"
    assert s.query(User).filter(User.city == "oslo").all() == []
    again = s.query(User).filter(User.age <= 25).all()
    assert again[1] is u3 and again[0] is s.get(User, "u5")


def test_results_follow_commits(r: redis.Redis, people: dict[str, User]) -> None:
    s = Session(r)
    u3, u5 = s.get_many(User, ["u3", "u5"])
    assert u3 is not None and u5 is not None
    u3.city, u3.age = "oslo", 99
    s.delete(u5)
    s.commit()
    other = Session(r)
    assert other.query(User).filter(User.city == "paris").ids() == ["u7"]
    assert other.query(User).filter(User.city == "oslo").one().age == 99
    assert other.query(User).filter(User.age >= 45).ids() == ["u6", "u3"]
    assert other.query(User).filter(User.age.between(20, 25)).ids() == []
    assert "u5" not in other.query(User).ids()
    assert other.query(User).count() == 7
    assert other.query(User).filter(User.email == "u5@example.com").one_or_none() is None
    u3.age = None
    s.commit()
    assert Session(r).query(User).filter(User.age >= 0).count() == 5
    assert Session(r).query(User).order_by(User.age).ids()[-2:] == ["u3", "u4"]


def test_no_scratch_key_survives_a_failing_query(r: redis.Redis, people: dict[str, User]) -> None:
    r.set("{qusr}#i:city:broken", "not a set")
    with pytest.raises(OperationalError, match="WRONGTYPE"):
        q(r).filter(User.city == "broken", User.age > 1).all()
    with pytest.raises(OperationalError, match="WRONGTYPE"):
        q(r).filter(User.city == "broken").all()  # a single command, no scratch key
    with pytest.raises(OperationalError, match="WRONGTYPE"):
        q(r).filter(User.city == "broken", User.company == "c1").count()
    assert scratch_keys(r) == []


def test_query_on_an_empty_model(r: redis.Redis) -> None:
    s = Session(r)
    query = s.query(Empty)
    assert query.all() == [] and query.ids() == [] and list(query) == []
    assert query.count() == 0 and query.first() is None and query.one_or_none() is None
    with pytest.raises(NotFound):
        query.one()
    assert query.filter(Empty.n >= 1).all() == []
    assert query.filter(Empty.n >= 1, Empty.tag == "a").count() == 0
    assert query.order_by(Empty.n.desc()).offset(3).limit(2).all() == []
    assert query.filter(Empty.tag == "a").limit(2).ids() == []
    assert scratch_keys(r) == []


# -- exact bounds and argument errors (issue 15) -----------------------------------


def test_integer_equality_is_exact_at_the_limit(r: redis.Redis) -> None:
    """2**53 is the largest indexed int; equality with 2**53 + 1 (no double holds it)
    matches nothing instead of its rounded double."""
    edge = 2**53
    with Session(r) as s:
        s.add_all([User(email="e@x.io", age=edge, id="e"), User(email="n@x.io", age=-edge, id="n")])
        s.commit()
    assert q(r).filter(User.age == edge).ids() == ["e"]
    assert q(r).filter(User.age == edge + 1).ids() == []
    assert q(r).filter(User.age == -edge - 1).ids() == []
    assert q(r).filter(User.age == 2**64).ids() == []
    assert q(r).filter(User.age.between(edge + 1, 2**70)).ids() == []
    with pytest.raises(ValidationError, match=r"User\.age.*2\*\*53"):
        User(email="b@x.io", age=edge + 1)


def test_datetime_bounds_with_fractions_agree_with_python(r: redis.Redis) -> None:
    """Stored datetimes are whole seconds: a bound with a fraction compares as Python
    compares it with the stored value (low bounds round up, high bounds down)."""
    t0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    half = timedelta(milliseconds=500)
    with Session(r) as s:
        s.add(User(email="t@x.io", joined=t0, id="t"))
        s.commit()
    for condition, python in (
        (User.joined >= t0 + half, t0 >= t0 + half),
        (User.joined > t0 - half, t0 > t0 - half),
        (User.joined < t0 + half, t0 < t0 + half),
        (User.joined <= t0 - half, t0 <= t0 - half),
        (User.joined == t0 + half, False),
        (User.joined == t0, True),
        (User.joined.between(t0 - half, t0 + half), True),
        (User.joined.between(t0 + half, t0 + 3 * half), False),
        (User.joined >= t0.replace(tzinfo=None), True),  # naive: taken as UTC
        (User.joined > t0.replace(tzinfo=None), False),
    ):
        assert q(r).filter(condition).ids() == (["t"] if python else []), condition


def test_two_bounds_of_one_value_with_different_inclusivity(
    r: redis.Redis, people: dict[str, User]
) -> None:
    """age <= 30 and age < 30, in either order, exclude 30 (and >= / > likewise)."""
    below = ["u5", "u3"]
    assert q(r).filter(User.age <= 30, User.age < 30).ids() == below
    assert q(r).filter(User.age < 30, User.age <= 30).ids() == below
    assert q(r).filter(User.age >= 30, User.age > 30).ids() == ["u7", "u2", "u6"]
    assert q(r).filter(User.age > 30, User.age >= 30).ids() == ["u7", "u2", "u6"]
    assert q(r).filter(User.age == 30, User.age < 30).ids() == []


def test_bad_paging_arguments_and_inverted_between(r: redis.Redis) -> None:
    s = Session(r)
    for bad in ("a", 1.5, None, True):
        with pytest.raises(QueryError, match="offset"):
            s.query(User).offset(bad)  # type: ignore[arg-type]
    for bad in ("a", 2.0, False):
        with pytest.raises(QueryError, match="limit"):
            s.query(User).limit(bad)  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="limit"):
        s.query(User).limit(-1)
    with pytest.raises(QueryError, match="low bound is above the high bound"):
        s.query(User).filter(User.age.between(40, 20))
    with pytest.raises(QueryError, match="low bound"):
        s.query(User).filter(User.joined.between(T0, T0.replace(tzinfo=None) - timedelta(1)))
    assert s.query(User).filter(User.age.between(20, 20)).ids() == []  # empty, allowed
    with pytest.raises(QueryError, match="after"):
        s.query(User).after(3.5)


# -- keyset pagination ----------------------------------------------------------------


def test_after_pages_through_in_order(r: redis.Redis, crowd: list[tuple[int, str]]) -> None:
    """Pages by ``after()`` are the offset pages, ties and direction included."""
    for query in (
        q(r).order_by(User.age),
        q(r).order_by(User.age.desc()),
        q(r).filter(User.age.between(0, 100)),
        q(r),
    ):
        expected = query.ids()
        seen: list[str] = []
        last = None
        while True:
            page = query.after(last).limit(7).all()
            if not page:
                break
            seen += ids_of(page)
            last = page[-1]
        assert seen == expected
        middle = expected[40]
        assert query.after(middle).limit(5).ids() == expected[41:46]  # an id works too


def test_after_an_entity_that_moved_keeps_its_place(
    r: redis.Redis, people: dict[str, User]
) -> None:
    """The cursor is the (value, id) the reader saw: another client moving or deleting
    that entity does not move the next page."""
    s = Session(r)
    query = s.query(User).order_by(User.age)
    first = query.limit(3).all()
    assert ids_of(first) == ["u5", "u3", "u1"]
    with Session(r) as other:
        moved = other.get(User, "u1")
        assert moved is not None
        moved.age = 99
        other.delete(other.get(User, "u3"))
        other.commit()
    assert query.after(first[-1]).limit(3).ids() == ["u8", "u7", "u2"]


# -- consistency ----------------------------------------------------------------------


def test_loaded_results_never_contradict_their_filter(r: redis.Redis, make_client) -> None:  # type: ignore[no-untyped-def]
    """A writer moves ages while queries run: every instance a query loads satisfies the
    filter that found it, since ids and hashes are read in one atomic step."""
    ids = [f"m{n:03d}" for n in range(60)]
    with Session(r) as s:
        s.add_all(
            User(email=f"{i}@x.io", age=n % 40, city="paris", id=i) for n, i in enumerate(ids)
        )
        s.commit()
    stop = threading.Event()
    writer_client = make_client()

    def write() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            with Session(writer_client) as w:
                for obj in w.get_many(User, rng.sample(ids, 10)):
                    obj.age = rng.randrange(40)  # type: ignore[union-attr]
                w.commit()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for n in range(300):
            with Session(r) as s:
                low = n % 30
                query = s.query(User).filter(User.age.between(low, low + 5), User.city == "paris")
                for user in query.order_by(User.age.desc()).limit(8).all():
                    assert user.age is not None and low <= user.age <= low + 5
    finally:
        stop.set()
        thread.join()

"""Query expressions: conditions refuse bool(), ``&`` is AND, ``|`` is OR, ``in_()``.

An OR runs in one script call (docs/queries.rst, "Expressions"): each AND-branch as a
query of its own, merged by (score, id). Checked against a Python model on generated
data and expressions, with the data of :mod:`test_query_engine` (a unique email, an
equality-indexed city, range-indexed age and score).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import attrs
import pytest
import redis
from helpers import Counted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_query_engine import AGES, INF, SCORES, Item, Row, datasets, write_raw

from redisca import Integer, Registry, Session, String
from redisca.errors import QueryError
from redisca.mapping.expressions import MAX_BRANCHES, And, Condition, Or

# -- bool() is refused -------------------------------------------------------------


def test_bool_of_a_condition_raises_naming_the_alternatives() -> None:
    with pytest.raises(TypeError) as info:
        bool(Item.age >= 1)
    message = str(info.value)
    assert "&" in message and "|" in message and "filter()" in message
    for expr in (Item.city == "x", (Item.age >= 1) & (Item.city == "x"), Item.age.in_([1, 2])):
        with pytest.raises(TypeError):
            bool(expr)


def test_and_or_not_and_chained_comparisons_raise() -> None:
    with pytest.raises(TypeError):
        _ = Item.city == "x" and Item.age >= 1
    with pytest.raises(TypeError):
        _ = Item.city == "x" or Item.age >= 1
    with pytest.raises(TypeError):
        _ = not (Item.city == "x")  # noqa: SIM201
    with pytest.raises(TypeError):
        _ = 1 <= Item.age <= 5  # type: ignore[operator]
    with pytest.raises(TypeError):
        if Item.age >= 1:
            pass


def test_conditions_still_compare_hash_and_sit_in_collections() -> None:
    """attrs' generated __eq__ and __hash__ compare the attribute by identity, never with
    the attribute's own ``==`` (which builds a Condition)."""
    a, b = Item.age >= 1, Item.age >= 1
    assert a == b and hash(a) == hash(b)
    assert (Item.age >= 1) != (Item.score >= 1)
    assert (Item.city == "x") != (Item.age >= 1)
    assert a in [Item.score >= 1, b]
    assert (Item.city == "y") not in [Item.age >= 1, Item.city == "x"]
    assert {a: 1}[b] == 1
    assert len({a, b, Item.score >= 1}) == 2
    assert Item.age.asc() == Item.age.asc() and Item.age.asc() != Item.score.asc()
    assert ((Item.age >= 1) & (Item.city == "x")) == ((Item.age >= 1) & (Item.city == "x"))


def test_combinations_are_plain_data() -> None:
    a, b, c = Item.age >= 1, Item.city == "x", Item.score <= 2
    assert a & b & c == And((a, b, c))
    assert a & (b & c) == And((a, b, c))
    assert (a | b) | c == Or((a, b, c))
    assert (a | b) & c == And((Or((a, b)), c))
    assert Item.city.in_(["x"]) == Condition(Item.city, "eq", "x")  # type: ignore[arg-type]
    assert Item.city.in_([]) == Or(())
    with pytest.raises(TypeError):
        _ = a & 1  # type: ignore[operator]
    with pytest.raises(QueryError):
        _ = ~a


# -- semantics on a small data set -----------------------------------------------------

ROWS: dict[str, Row] = {
    "a": {"email": "a@x.io", "age": 1, "score": 0.5, "city": "x"},
    "b": {"email": "b@x.io", "age": 2, "score": None, "city": "y"},
    "c": {"email": "c@x.io", "age": 2, "score": 2.5, "city": "z"},
    "d": {"email": "d@x.io", "age": None, "score": 1e300, "city": None},
    "e": {"email": "e@x.io", "age": 30, "score": -1.5, "city": "x"},
}


@pytest.fixture
def rows(r: redis.Redis) -> dict[str, Row]:
    write_raw(r, ROWS)
    return ROWS


@pytest.mark.usefixtures("rows", "driver")
def test_and_is_the_same_query_as_several_filter_arguments(r: redis.Redis) -> None:
    with Session(r) as s:
        q = s.query(Item)
        one = q.filter((Item.city == "x") & (Item.age >= 2))
        assert one.ids() == q.filter(Item.city == "x", Item.age >= 2).ids() == ["e"]
        assert one.ids() == q.filter(Item.city == "x").filter(Item.age >= 2).ids()
        ranged = q.filter((Item.age >= 1) & (Item.age <= 2)).ids()
        assert ranged == q.filter(Item.age.between(1, 2)).ids() == ["a", "b", "c"]


@pytest.mark.usefixtures("rows", "driver")
def test_or_and_in(r: redis.Redis) -> None:
    with Session(r) as s:
        q = s.query(Item)
        assert q.filter((Item.city == "x") | (Item.age == 2)).ids() == ["a", "b", "c", "e"]
        assert q.filter((Item.city == "x") | (Item.age == 2)).count() == 4
        # overlapping branches: each id once
        assert q.filter((Item.age <= 2) | (Item.city == "x")).count() == 4
        assert q.filter(Item.city.in_(["y", "z", "nowhere"])).ids() == ["b", "c"]
        assert q.filter(Item.age.in_([2, 30])).order_by(Item.age.desc()).ids() == ["e", "c", "b"]
        assert q.filter(Item.email.in_(["A@X.io", "d@x.io", "zz@x.io"])).ids() == ["a", "d"]
        # nested: (x or z) and (age >= 2 or score < 0)
        nested = ((Item.city == "x") | (Item.city == "z")) & ((Item.age >= 2) | (Item.score < 0))
        assert q.filter(nested).ids() == ["c", "e"]
        # with other filter() arguments: ANDed
        assert q.filter(Item.city.in_(["x", "y"]), Item.age <= 2).ids() == ["a", "b"]
        # order, offset, limit, first, one
        by_score = q.filter((Item.city == "x") | (Item.city == "z")).order_by(Item.score)
        assert by_score.ids() == ["e", "a", "c"]
        assert by_score.offset(1).limit(1).ids() == ["a"]
        assert by_score.offset(1).count() == 2
        assert [i.id for i in by_score.offset(1).all()] == ["a", "c"]
        first = by_score.first()
        assert first is not None and first.id == "e"
        assert q.filter(Item.email.in_(["c@x.io", "zz@x.io"])).one().id == "c"
        # keyset pagination
        assert by_score.after("e").ids() == ["a", "c"]
        assert by_score.after(first).limit(1).ids() == ["a"]


@pytest.mark.usefixtures("rows")
def test_an_empty_in_matches_nothing_without_asking(r: redis.Redis, counted: Counted) -> None:
    with Session(counted.client) as s:
        counted.reset()
        q = s.query(Item).filter(Item.city.in_([]))
        assert q.ids() == [] and q.count() == 0 and q.all() == [] and q.first() is None
        assert s.query(Item).filter(Item.city.in_([]) | (Item.city == "x")).count() == 2
        assert s.query(Item).filter(Item.city.in_(()) & (Item.city == "x")).count() == 0
    assert counted.round_trips == 1  # the one non-empty OR


@pytest.mark.usefixtures("driver")
def test_in_checks_its_values_as_eq_does(r: redis.Redis) -> None:
    with Session(r) as s:
        with pytest.raises(QueryError, match="age"):
            s.query(Item).filter(Item.age.in_([1, "old"]))
        with pytest.raises(QueryError, match="age"):
            s.query(Item).filter((Item.city == "x") | (Item.age == "old"))
        with pytest.raises(QueryError, match="collection"):
            s.query(Item).filter(Item.city.in_("xy"))
        with pytest.raises(QueryError, match="collection"):
            Item.age.in_(3)  # type: ignore[arg-type]
        with pytest.raises(QueryError, match=str(MAX_BRANCHES)):
            s.query(Item).filter(Item.age.in_(range(MAX_BRANCHES + 1)))
        eight = [Item.city.in_(["x", "y"]) for _ in range(7)]  # 2**7 branches
        with pytest.raises(QueryError, match="AND-branches"):
            s.query(Item).filter(*eight)


def test_an_or_query_is_one_round_trip_and_leaves_no_key(
    r: redis.Redis, rows: dict[str, Row], counted: Counted
) -> None:
    before = set(r.keys("*"))
    with Session(counted.client) as s:
        q = s.query(Item).filter((Item.city == "x") | (Item.age.between(2, 2)))
        q.ids()  # the server learns the script
        for run in (q.ids, q.count, q.all, q.first, q.order_by(Item.score.desc()).limit(2).all):
            counted.reset()
            run()
            assert (counted.round_trips, counted.commands) == (1, 1), run
        counted.reset()
        q.filter(Item.score >= 0).after("a").limit(2).all()
        assert (counted.round_trips, counted.commands) == (1, 1)
    assert set(r.keys("*")) == before


def test_a_single_branch_compiles_as_before(r: redis.Redis) -> None:
    """An expression with one AND-branch is the query of its conditions: the same call."""
    with Session(r) as s:
        q = s.query(Item)
        plain = q.filter(Item.city == "x", Item.age >= 2)._call(b"load")
        for same in (
            q.filter((Item.city == "x") & (Item.age >= 2)),
            q.filter(
                Item.city.in_(["x"]) & Item.age.in_([]) | (Item.city == "x") & (Item.age >= 2)
            ),
        ):
            assert same._call(b"load") == plain
        assert not plain.union


registry = Registry()


@registry.mapped(prefix="xsh", shards=2)
@attrs.define
class Sharded:
    n: int | None = Integer(index=True, default=None)
    tag: str | None = String(index=True, default=None)
    id: str | None = None


def test_a_sharded_model_refuses_an_or_with_a_clear_error(r: redis.Redis) -> None:
    with Session(r) as s:
        s.add_all([Sharded(id="a", n=1, tag="x"), Sharded(id="b", n=2, tag="y")])
        s.commit()
        with pytest.raises(QueryError, match="sharded"):
            s.query(Sharded).filter((Sharded.n == 1) | (Sharded.tag == "y"))
        with pytest.raises(QueryError, match="sharded"):
            s.query(Sharded).filter(Sharded.tag.in_(["x", "y"]))
        # one branch is a plain query; no branch is nothing
        assert s.query(Sharded).filter((Sharded.n >= 1) & (Sharded.tag == "y")).ids() == ["b"]
        assert s.query(Sharded).filter(Sharded.tag.in_([])).count() == 0
        assert s.query(Sharded).filter(Sharded.tag.in_(["x"])).ids() == ["a"]


# -- the differential test ---------------------------------------------------------

#: An expression as data: ("cond", field, op, value[, high]), ("and", parts),
#: ("or", parts), ("in", field, values).
Tree = tuple[Any, ...]


def holds(row: Row, tree: Tree) -> bool:
    kind = tree[0]
    if kind == "and":
        return all(holds(row, t) for t in tree[1])
    if kind == "or":
        return any(holds(row, t) for t in tree[1])
    if kind == "in":
        return any(holds(row, ("cond", tree[1], "eq", v)) for v in tree[2])
    field, op, value = tree[1], tree[2], tree[3]
    have = row[field]
    if field == "email":
        return have.lower() == value.lower()
    if have is None:
        return False
    if op == "between":
        return value <= have <= tree[4]
    return {
        "eq": operator.eq,
        "ge": operator.ge,
        "gt": operator.gt,
        "le": operator.le,
        "lt": operator.lt,
    }[op](have, value)


def expression(tree: Tree) -> Any:
    kind = tree[0]
    if kind in ("and", "or"):
        parts = [expression(t) for t in tree[1]]
        out = parts[0]
        for part in parts[1:]:
            out = out & part if kind == "and" else out | part
        return out
    attr = getattr(Item, tree[1])
    if kind == "in":
        return attr.in_(tree[2])
    op = tree[2]
    if op == "between":
        return attr.between(tree[3], tree[4])
    return {
        "eq": attr.__eq__,
        "ge": attr.__ge__,
        "gt": attr.__gt__,
        "le": attr.__le__,
        "lt": attr.__lt__,
    }[op](tree[3])


def width(tree: Tree) -> int:
    """How many AND-branches the tree distributes to (its disjunctive normal form)."""
    kind = tree[0]
    if kind == "and":
        return math.prod(width(t) for t in tree[1])
    if kind == "or":
        return sum(width(t) for t in tree[1])
    if kind == "in":
        return len(tree[2])
    return 1


def first_range(tree: Tree) -> str | None:
    """A one-branch query's default order: its first range-indexed field. A subtree that
    matches nothing (``in_([])`` in it) leaves no branch, so it gives no order."""
    if width(tree) == 0:
        return None
    if tree[0] in ("and", "or"):
        for t in tree[1]:
            found = first_range(t)
            if found:
                return found
        return None
    return tree[1] if tree[1] in ("age", "score") else None


CITY = st.sampled_from(["x", "y", "z", "w"])
NUMBERS = AGES.filter(lambda v: v is not None)
FLOATS = SCORES.filter(lambda v: v is not None)


@st.composite
def leaves(draw: Any, emails: list[str]) -> Tree:
    field = draw(st.sampled_from(["city", "email", "age", "score"]))
    if field == "city":
        if draw(st.booleans()):
            return ("in", "city", draw(st.lists(CITY, max_size=3)))
        return ("cond", "city", "eq", draw(CITY))
    if field == "email":
        known = st.sampled_from([*emails, "no@ex.com"])
        if draw(st.booleans()):
            return ("in", "email", draw(st.lists(known, max_size=3)))
        return ("cond", "email", "eq", draw(known))
    values = NUMBERS if field == "age" else FLOATS
    op = draw(st.sampled_from(["eq", "ge", "gt", "le", "lt", "between", "in"]))
    if op == "in":
        return ("in", field, draw(st.lists(values, max_size=3)))
    if op == "between":
        low, high = sorted([draw(values), draw(values)])
        return ("cond", field, op, low, high)
    return ("cond", field, op, draw(values))


def trees(emails: list[str]) -> Any:
    return st.recursive(
        leaves(emails),
        lambda inner: st.tuples(
            st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3)
        ),
        max_leaves=6,
    )


@attrs.frozen
class OrShape:
    tree: Tree
    order: str | None
    desc: bool
    offset: int
    limit: int | None
    after: str | None


def expected_ids(rows: dict[str, Row], shape: OrShape) -> list[str]:
    by = shape.order
    if by is None:  # one branch: its first range field; several: the model's (age)
        by = (first_range(shape.tree) if width(shape.tree) == 1 else None) or "age"

    def key(ident: str) -> tuple[float, bytes]:
        value = rows[ident][by]
        return (INF if value is None else value, ident.encode())

    found = sorted((i for i in rows if holds(rows[i], shape.tree)), key=key)
    if shape.desc:
        found.reverse()
    if shape.after is not None:
        cursor = key(shape.after)
        found = [i for i in found if (key(i) < cursor if shape.desc else key(i) > cursor)]
    end = None if shape.limit is None else shape.offset + shape.limit
    return found[shape.offset : end]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_expressions_agree_with_a_model(r: redis.Redis, data: Any) -> None:
    rows = data.draw(datasets())
    r.flushdb()
    write_raw(r, rows)
    emails = [row["email"].upper() for row in rows.values()]
    with Session(r) as s:
        for _ in range(4):
            order = data.draw(st.sampled_from([None, "age", "score"]))
            shape = OrShape(
                tree=data.draw(trees(emails)),
                order=order,
                desc=order is not None and data.draw(st.booleans()),
                offset=data.draw(st.integers(0, 4)),
                limit=data.draw(st.sampled_from([None, 0, 1, 2, 3, 7])),
                after=data.draw(st.sampled_from([None, *sorted(rows)])) if rows else None,
            )
            if width(shape.tree) > MAX_BRANCHES:
                with pytest.raises(QueryError):
                    s.query(Item).filter(expression(shape.tree))
                continue
            query = s.query(Item).filter(expression(shape.tree))
            if order is not None:
                attr = getattr(Item, order)
                query = query.order_by(attr.desc() if shape.desc else attr)
            query = query.offset(shape.offset).limit(shape.limit)
            if shape.after is not None:
                query = query.after(shape.after)
            expected = expected_ids(rows, shape)
            assert query.ids() == expected, shape
            assert query.count() == len(expected), shape
            assert [i.id for i in query.all()] == expected, shape
            first, one = query.first(), expected_ids(rows, attrs.evolve(shape, limit=1))
            assert (first.id if first else None) == (one[0] if one else None), shape

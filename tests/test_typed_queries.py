"""``redisca.inspect(Model).attrs``: the typed handle on a model's query attributes.

``typed_queries.py`` is query code as a strictly typed application writes it (mypy
checks it in CI); these tests run it on Redis and check it answers as the same queries
written with the class attributes do.
"""

from __future__ import annotations

import copy

import attrs
import pytest
import redis
from typed_queries import M, Member, aged_between, among, named, oldest, young_or_tagged

import redisca
from redisca import Session

PEOPLE = [("ann", 31, {"ops"}), ("bob", 17, set()), ("cid", 45, {"dev"}), ("dee", 12, {"ops"})]


@pytest.fixture
def session(r: redis.Redis) -> Session:
    s = Session(r)
    for name, age, tags in PEOPLE:
        s.add(Member(name=name, age=age, tags=set(tags), id=name))
    s.commit()
    return s


def test_the_attributes_are_the_class_attributes() -> None:
    assert M.age is Member.age and M.name is Member.name and M.tags is Member.tags
    assert M.id is Member.id
    assert [a.name for a in M] == ["id", "name", "age", "tags"]
    assert len(M) == 4 and "age" in M and "nope" not in M
    assert M["age"] is Member.age
    assert {"id", "name", "age", "tags"} <= set(dir(M))
    assert repr(M) == "<Attributes of Member: id, name, age, tags>"


def test_an_unmapped_name_is_an_attribute_error_naming_the_mapped_ones() -> None:
    with pytest.raises(
        AttributeError,
        match=r"Member has no mapped attribute 'agee' \(mapped: id, name, age, tags\)",
    ):
        M.agee  # noqa: B018
    assert not hasattr(M, "agee")
    with pytest.raises(KeyError):
        M["agee"]


def test_a_copy_is_a_working_copy() -> None:
    assert copy.copy(M).age is Member.age
    assert copy.deepcopy(M).name.name == "name"


def test_typed_queries_answer_as_class_attribute_queries(session: Session) -> None:
    assert [m.name for m in oldest(session, 2)] == ["cid", "ann"]
    assert [m.name for m in oldest(session, 2)] == [
        m.name
        for m in session.query(Member).filter(Member.age >= 18).order_by(Member.age.desc()).limit(2)
    ]
    found = named(session, "bob")
    assert found is not None and found.age == 17
    assert named(session, "zed") is None
    assert aged_between(session, 12, 31) == 3
    assert aged_between(session, 13, 30) == 1
    assert young_or_tagged(session, "ops") == ["ann", "bob", "dee"]
    assert [m.name for m in among(session, ["cid", "dee", "zed"])] == ["dee", "cid"]


def test_a_class_mapped_imperatively_has_them_too() -> None:
    @attrs.define
    class Plain:
        title: str
        key: str | None = None

    registry = redisca.Registry()
    registry.map(Plain, prefix="tqp", id="key", fields={"title": redisca.String(index=True)})
    handle = redisca.inspect(Plain).attrs
    assert [a.name for a in handle] == ["key", "title"]
    assert handle.title is Plain.title

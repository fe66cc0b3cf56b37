"""References: lazy targets from the identity map, cycles by name, preload without N+1."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import redis
from helpers import Counted

import redisca
from redisca import Integer, NotFound, Reference, Registry, Session, String

#: Each test runs with the sync Session and with an AsyncSession (conftest: driver).
pytestmark = pytest.mark.usefixtures("driver")

registry = Registry()


@registry.mapped(prefix="rco")
@attrs.define
class Company:
    name: str = String(index=True)
    id: str | None = None


@registry.mapped(prefix="rusr")
@attrs.define
class User:
    name: str = String()
    age: int | None = Integer(index=True, default=None)
    company: Company | None = Reference(Company, index=True, default=None)
    id: str | None = None


@registry.mapped(prefix="rnode")
@attrs.define
class Node:
    name: str = String()
    parent: Node | None = Reference("Node", index=True, default=None)
    id: str | None = None


def seed(r: redis.Redis, users: int = 3, companies: int = 2) -> None:
    cos = [Company(name=f"co{n}", id=f"c{n:02d}") for n in range(companies)]
    with Session(r) as s:
        s.add_all(
            User(name=f"u{n}", age=n % 7, company=cos[n % companies], id=f"u{n:03d}")
            for n in range(users)
        )
        s.commit()


def test_reference_is_the_identity_maps_instance_loaded_lazily(
    r: redis.Redis, counted: Counted
) -> None:
    seed(r, users=6)
    s = Session(counted.client)
    user = s.get(User, "u001")
    assert user is not None
    counted.reset()
    company = user.company
    assert counted.round_trips == 0  # reading the reference itself loads nothing
    assert isinstance(company, Company) and company.id == "c01"
    assert redisca.inspect(company).status == "persistent"
    assert company.name == "co1"
    assert counted.round_trips == 1  # first field read: one HGETALL
    assert company.name == "co1" and user.company is company
    assert counted.round_trips == 1
    assert s.get(Company, "c01") is company
    assert s.get_many(User, ["u003", "u005"])[0].company is company  # type: ignore[union-attr]
    assert counted.round_trips == 2  # the two users; their company is already loaded


def test_reference_to_a_loaded_target_and_by_get_first(r: redis.Redis, counted: Counted) -> None:
    seed(r)
    s = Session(counted.client)
    company = s.get(Company, "c00")
    user = s.get(User, "u000")
    assert user is not None and user.company is company
    counted.reset()
    assert user.company.name == "co0"  # type: ignore[union-attr]
    assert counted.round_trips == 0
    # another session has its own instance
    other_session = Session(r)
    other = other_session.get(User, "u000")
    assert other is not None and other.company is not company
    assert other.company.name == "co0"  # type: ignore[union-attr]


def test_assigning_and_querying_a_reference(r: redis.Redis) -> None:
    seed(r)
    s = Session(r)
    user, c1 = s.get(User, "u000"), s.get(Company, "c01")
    assert user is not None and c1 is not None and user.company is not c1
    user.company = c1
    s.commit()
    fresh = Session(r)
    moved = fresh.get(User, "u000")
    assert moved is not None and moved.company is fresh.get(Company, "c01")
    assert fresh.query(User).filter(User.company == c1).ids() == ["u000", "u001"]
    assert fresh.query(User).filter(User.company == "c00").ids() == ["u002"]
    user.company = None
    s.commit()
    assert Session(r).get(User, "u000").company is None  # type: ignore[union-attr]


def test_self_reference_and_cycle_by_name(r: redis.Redis, counted: Counted) -> None:
    assert redisca.inspect(Node).by_name["parent"].target_mapper() is redisca.inspect(Node)
    with Session(r) as s:
        a = Node(name="a", id="a")
        b = Node(name="b", parent=a, id="b")
        a.parent = b  # a cycle: a -> b -> a
        root = Node(name="root", id="root")
        leaf = Node(name="leaf", parent=Node(name="mid", parent=root, id="mid"), id="leaf")
        s.add_all([a, leaf])  # b, mid and root come by the save cascade
        s.commit()
        assert {n.id for n in s} == {"a", "b", "root", "mid", "leaf"}
    s = Session(counted.client)
    counted.reset()
    a2 = s.get(Node, "a")
    assert a2 is not None and counted.round_trips == 1
    b2 = a2.parent
    assert b2 is not None and b2.id == "b" and counted.round_trips == 1  # not loaded yet
    assert b2.parent is a2 and counted.round_trips == 2  # reading b's field loads b
    assert b2.parent.parent is b2 and b2.name == "b" and counted.round_trips == 2
    leaf2 = s.get(Node, "leaf")
    assert leaf2 is not None
    names = []
    node: Node | None = leaf2
    while node is not None:
        names.append(node.name)
        node = node.parent
    assert names == ["leaf", "mid", "root"]
    assert s.query(Node).filter(Node.parent == "root").one().name == "mid"
    assert s.query(Node).filter(Node.parent == a2).one() is b2


def test_preload_loads_every_target_in_one_round_trip(r: redis.Redis, counted: Counted) -> None:
    seed(r, users=200, companies=50)
    s = Session(counted.client)
    counted.reset()
    users = s.query(User).all()
    assert len(users) == 200 and counted.round_trips == 1  # ids and hashes: one script
    counted.reset()
    s.preload(users, User.company)
    assert counted.round_trips == 1
    assert counted.commands == 50  # one HGETALL per distinct company
    assert {u.company.name for u in users} == {f"co{n}" for n in range(50)}  # type: ignore[union-attr]
    assert counted.round_trips == 1
    counted.reset()
    s.preload(users, User.company)  # all loaded already: nothing to send
    assert counted.round_trips == 0


def test_query_preload(r: redis.Redis, counted: Counted) -> None:
    seed(r, users=200, companies=50)
    s = Session(counted.client)
    counted.reset()
    users = s.query(User).filter(User.age >= 0).preload(User.company).all()
    assert len(users) == 200
    names = [u.company.name for u in users]  # type: ignore[union-attr]
    assert counted.round_trips == 2  # ids with the users (one script), companies
    assert names == [f"co{int(u.id[1:]) % 50}" for u in users]  # type: ignore[index]
    # without preload, the same reads cost one round trip per company
    s2 = Session(counted.client)
    users = s2.query(User).all()
    counted.reset()
    for u in users:
        assert u.company is not None and u.company.name
    assert counted.round_trips == 50


def test_preload_all_references_and_mixed_sets(r: redis.Redis, counted: Counted) -> None:
    seed(r, users=10, companies=3)
    with Session(r) as s:
        s.add(User(name="nobody", id="u999"))  # no company
        s.commit()
    s = Session(counted.client)
    users = s.query(User).all()
    counted.reset()
    s.preload(users)  # no attribute: every reference of each instance
    assert counted.round_trips == 1 and counted.commands == 3
    assert [u.company.name if u.company else None for u in users][-1] is None
    assert counted.round_trips == 1


def test_reference_to_a_deleted_target(r: redis.Redis) -> None:
    seed(r)
    r.delete("{rco}:c01")  # another client removed the company
    s = Session(r)
    user = s.get(User, "u001")
    assert user is not None
    company = user.company
    assert company is not None and company.id == "c01"  # the reference itself is fine
    with pytest.raises(NotFound):
        company.name  # noqa: B018
    with pytest.raises(LookupError):
        company.name  # noqa: B018
    # preload does not raise for a missing target; reading it still does
    users = s.query(User).all()
    s.preload(users, User.company)
    assert users[0].company.name == "co0"  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        users[1].company.name  # type: ignore[union-attr]  # noqa: B018


def test_preload_names_only_references(r: redis.Redis) -> None:
    s = Session(r)
    user = User(name="p")
    s.add(user)
    with pytest.raises(redisca.InvalidRequestError, match="name"):
        s.preload([user], User.name)


def test_an_entity_that_refers_to_itself_loads_as_one_instance(r: redis.Redis) -> None:
    """Filling a fresh instance makes stubs of what it refers to; when that is the
    entity itself, the stub is the instance the session returns."""
    with Session(r) as s:
        loop = Node(name="loop", id="self")
        loop.parent = loop
        s.add(loop)
        s.commit()
    with Session(r) as s:
        (again,) = s.get_many(Node, ["self"])
        assert again is not None and again.parent is again
        assert again.name == "loop" and s.state(again).status == "persistent"
        assert s.state(again).changes() == {}
        assert len(list(s)) == 1


def test_a_load_that_fails_to_decode_tracks_nothing(r: redis.Redis) -> None:
    seed(r, users=3)
    r.hset("{rusr}:u001", "age", "old")
    with Session(r) as s:
        with pytest.raises(redisca.DecodeError) as info:
            s.get_many(User, ["u000", "u001", "u002"])
        assert (info.value.key, info.value.field) == ("{rusr}:u001", "age")
        assert s.get(User, "u000") is not None  # the session is still usable
        assert "u001" not in {u.id for u in s if isinstance(u, User)}


def test_a_reference_to_a_class_mapped_after_the_first_load(r: redis.Redis) -> None:
    """Loading runs a function generated per class; a reference whose target class is
    not mapped when it is generated is resolved on each load instead."""
    local = Registry()

    @local.mapped(prefix="lpost")
    @attrs.define
    class Post:
        title: str = String()
        author: Any = Reference("Author", default=None)
        id: str | None = None

    r.hset("{lpost}:p1", mapping={"title": "first"})
    with Session(r) as s:
        post = s.get(Post, "p1")
        assert post is not None and post.title == "first" and post.author is None

    @local.mapped(prefix="lauth")
    @attrs.define
    class Author:
        name: str = String()
        id: str | None = None

    r.hset("{lauth}:a1", mapping={"name": "Ann"})
    r.hset("{lpost}:p2", mapping={"title": "second", "author": "a1"})
    with Session(r) as s:
        second = s.get(Post, "p2")
        assert second is not None and isinstance(second.author, Author)
        assert second.author.name == "Ann"

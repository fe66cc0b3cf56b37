"""redisca 1.x parity (issue 15): ``load()``, ``unload()``, the create-or-update idiom,
``None`` ids, ``MD5Pass(minlen=)``; the rest of docs/migration.rst runs as its examples.

1.x's ``User(x)``; set fields; ``save()`` wrote exactly the fields set, whether the key
existed or not. ``session.update_or_create`` is that call; ``session.unload`` is 1.x's
``unload()`` (drop what was loaded, keep the changes).
"""

from __future__ import annotations

import hashlib
import warnings
from datetime import UTC, datetime

import attrs
import pytest
import redis
from helpers import Counted, as_str, dump_keyspace

import redisca
from redisca import (
    DateTime,
    Email,
    Integer,
    InvalidRequestError,
    MD5Pass,
    Reference,
    Registry,
    Session,
    String,
    ValidationError,
)

registry = Registry()

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


@registry.mapped(prefix="pt")
@attrs.define
class Team:
    name: str = String(default="")
    id: str | None = None


@registry.mapped(prefix="pu")
@attrs.define
class Member:
    email: str = Email(index=True, unique=True)
    age: int | None = Integer(index=True, default=None)
    nick: str = String(default="anon")
    created: datetime = DateTime(new=lambda: EPOCH)
    team: Team | None = Reference(Team, default=None)
    id: str | None = None


@pytest.fixture
def ann(r: redis.Redis) -> str:
    with Session(r) as s:
        s.add(Member(email="ann@example.com", age=30, nick="annie", id="ann"))
        s.commit()
    return "ann"


# -- load() is refresh(obj, only_missing=True) ---------------------------------------


def test_refresh_only_missing_is_1x_load_and_plain_refresh_is_revert(r: redis.Redis, ann):
    with Session(r) as s:
        stub = s.reference(Member, ann)  # 1.x: Member("ann"), nothing loaded
        stub.age = 50  # 1.x: a change in the diff
        s.refresh(stub, only_missing=True)  # 1.x: stub.load()
        assert (stub.age, stub.nick, stub.email) == (50, "annie", "ann@example.com")
        assert s.is_modified(stub)
        s.refresh(stub)  # 1.x: revert() and load again
        assert stub.age == 30 and not s.is_modified(stub)


# -- unload() -------------------------------------------------------------------------


def test_unload_keeps_changes_and_reloads_the_rest_on_the_next_read(
    r: redis.Redis, counted: Counted, ann
):
    with Session(counted.client) as s:
        member = s.get(Member, ann)
        member.age = 31
        member.nick = "annie"  # the loaded value: no change, as in 1.x's diff
        with Session(r) as other:  # someone else changes two fields meanwhile
            theirs = other.get(Member, ann)
            theirs.nick, theirs.email = "ann2", "ann2@example.com"
            other.commit()
        before = counted.round_trips
        s.unload(member)
        assert counted.round_trips == before  # no round trip
        assert not redisca.inspect(member).loaded
        assert member.age == 31  # kept, still no round trip
        assert counted.round_trips == before
        assert member.nick == "ann2" and member.email == "ann2@example.com"  # one load
        assert counted.round_trips == before + 1
        assert {f.name for f in redisca.inspect(member).changes()} == {"age"}
        s.commit()
    assert as_str(r.hget("{pu}:ann", "age")) == "31"
    assert as_str(r.hget("{pu}:ann", "nick")) == "ann2"
    with Session(r) as s:
        assert s.query(Member).filter(Member.age == 31).ids() == [ann]
        assert s.query(Member).filter(Member.email == "ann2@example.com").ids() == [ann]


def test_unload_of_an_unchanged_or_pending_instance(r: redis.Redis, ann):
    with Session(r) as s:
        member = s.get(Member, ann)
        s.unload(member)
        r.hset("{pu}:ann", "nick", "fresh")
        assert member.nick == "fresh" and not s.is_modified(member)
        s.commit()  # nothing to write
        new = Member(email="new@example.com", id="new")
        s.add(new)
        s.unload(new)  # nothing loaded: unchanged
        assert new.nick == "anon" and new in s.new
        s.commit()
    assert as_str(r.hget("{pu}:new", "nick")) == "anon"


def test_unload_then_a_vanished_key_raises_not_found_on_read(r: redis.Redis, ann):
    with Session(r) as s:
        member = s.get(Member, ann)
        s.unload(member)
        r.delete("{pu}:ann")
        with pytest.raises(redisca.NotFound):
            member.nick  # noqa: B018


def test_unload_needs_an_instance_of_this_session(r: redis.Redis):
    with Session(r) as s, pytest.raises(InvalidRequestError):
        s.unload(Member(email="x@example.com"))


# -- the create-or-update idiom --------------------------------------------------------


def test_update_or_create_updates_only_the_given_fields(r: redis.Redis, counted: Counted, ann):
    r.hset("{pu}:ann", "created", "1700000000")
    with Session(counted.client) as s:
        before = counted.round_trips
        member = s.update_or_create(Member, ann, age=40)
        assert counted.round_trips == before + 1  # the load
        assert member is s.get(Member, ann) and member not in s.new
        assert {f.name for f in redisca.inspect(member).changes()} == {"age"}
        s.commit()
    stored = {as_str(k): as_str(v) for k, v in r.hgetall("{pu}:ann").items()}
    assert stored == {
        "email": "ann@example.com",
        "age": "40",
        "nick": "annie",
        "created": "1700000000",
    }


def test_update_or_create_creates_with_the_class_defaults(r: redis.Redis, counted: Counted):
    with Session(counted.client) as s:
        before = counted.round_trips
        member = s.update_or_create(Member, 7, email="bob@example.com", age=20)
        assert counted.round_trips == before + 1
        assert member.id == "7" and member in s.new and member.nick == "anon"
        s.commit()
        before = counted.round_trips
        again = s.update_or_create(Member, "7", nick="bobby")  # in the session: no load
        assert again is member and counted.round_trips == before
        s.commit()
    stored = {as_str(k): as_str(v) for k, v in r.hgetall("{pu}:7").items()}
    assert stored == {
        "email": "bob@example.com",
        "age": "20",
        "nick": "bobby",
        "created": "1577836800",
    }


def test_update_or_create_refuses_what_it_cannot_do_before_writing(r: redis.Redis, ann):
    before = dump_keyspace(r)
    with Session(r) as s:
        with pytest.raises(InvalidRequestError, match=r"no mapped attributes.*'mail'"):
            s.update_or_create(Member, ann, mail="typo@example.com")
        with pytest.raises(ValidationError, match="None names no entity"):
            s.update_or_create(Member, None, age=1)
        with pytest.raises(ValidationError, match=r"Member\.age"):
            s.update_or_create(Member, ann, age="old")
        with pytest.raises(InvalidRequestError, match=r"{pu}:nobody does not exist.*needs email"):
            s.update_or_create(Member, "nobody", age=1)  # creating needs the email
        assert not s.new
        s.delete(s.get(Member, ann))
        with pytest.raises(InvalidRequestError, match="marked for deletion"):
            s.update_or_create(Member, ann, age=1)
    assert dump_keyspace(r) == before


def test_update_or_create_turns_a_reference_to_a_missing_key_into_the_new_entity(
    r: redis.Redis,
):
    with Session(r) as s:
        lead = s.reference(Member, "lead")  # Redis holds no pu:lead
        team = Team(name="core", id="t1")
        s.add(team)
        member = s.update_or_create(Member, "lead", email="lead@example.com", team=team)
        assert member is lead and lead in s.new and lead.nick == "anon"
        s.commit()
    with Session(r) as s:
        loaded = s.get(Member, "lead")
        assert loaded.email == "lead@example.com" and loaded.team.name == "core"


def test_a_concurrent_create_makes_the_commit_fail_and_write_nothing(r: redis.Redis):
    with Session(r) as s:
        mine = s.update_or_create(Member, "race", email="mine@example.com")
        assert mine in s.new
        with Session(r) as other:
            other.add(Member(email="theirs@example.com", id="race"))
            other.commit()
        before = dump_keyspace(r)
        with pytest.raises(redisca.IntegrityError, match="already exists"):
            s.commit()
        assert dump_keyspace(r) == before


# -- None ids ---------------------------------------------------------------------------


def test_none_names_no_entity_and_the_empty_id_is_1x_none(r: redis.Redis):
    with Session(r) as s:
        for call in (
            lambda: s.get(Member, None),
            lambda: s.reference(Member, None),
            lambda: s.get_many(Member, ["a", None]),
        ):
            with pytest.raises(ValidationError, match="None names no entity"):
                call()
    r.hset("{pu}:", mapping={"email": "nobody@example.com"})  # what 1.x's Member(None) wrote
    with Session(r) as s:
        empty = s.get(Member, "")
        assert empty.email == "nobody@example.com" and redisca.inspect(empty).key == "{pu}:"


# -- MD5Pass(minlen=) -------------------------------------------------------------------


def test_md5pass_takes_1x_minlen_and_maxlen():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)

        @Registry().mapped(prefix="old")
        @attrs.define
        class Legacy:
            password: str | None = MD5Pass(field="pass", minlen=4, maxlen=8, default=None)
            id: str | None = None

    with pytest.raises(ValidationError, match=r"Legacy\.password.*at least 4"):
        Legacy(password="abc")
    with pytest.raises(ValidationError, match=r"Legacy\.password.*at most 8"):
        Legacy(password="abcdefghi")
    legacy = Legacy(password="abcd")
    assert legacy.password == hashlib.md5(b"abcd").hexdigest()
    assert Legacy(password=legacy.password).password == legacy.password  # a digest is kept

"""Change tracking: a commit compares only the attributes assigned since the snapshot.

Assignments on a tracked instance are noted, so a commit need not encode every
field of every loaded instance. These tests pin the cases where that shortcut
could miss a change: values changed in place, instances changed while detached,
lazy loads between an assignment and the commit, rollbacks and refreshes.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import redis
from helpers import Counted, as_str
from models import User

import redisca
from redisca import Registry, Session

registry = Registry()


class Tags:
    """A mutable value: changing it in place changes what is stored."""

    def __init__(self, *names: str) -> None:
        self.names = list(names)


class TagsCodec(redisca.Codec):
    types = (Tags,)
    name = "Tags"

    def encode(self, value: Any) -> bytes:
        return ",".join(value.names).encode()

    def decode(self, raw: bytes) -> Tags:
        return Tags(*raw.decode().split(",")) if raw else Tags()


redisca.register_codec(Tags, TagsCodec)


@registry.mapped(prefix="ctpost")
@attrs.define
class Post:
    title: str
    tags: Tags = attrs.field(factory=Tags)
    id: str | None = None


def _saved_user(r: redis.Redis, **values: Any) -> str:
    with Session(r) as s:
        user = User(email="ann@example.com", **values)
        s.add(user)
        s.commit()
        return user.id  # type: ignore[return-value]


def test_a_value_changed_in_place_is_committed(r: redis.Redis) -> None:
    with Session(r) as s:
        s.add(Post("hello", Tags("a"), id="p1"))
        s.commit()
    with Session(r) as s:
        post = s.get(Post, "p1")
        assert post is not None
        post.tags.names.append("b")  # no assignment
        assert post in s.dirty
        s.commit()
    assert as_str(r.hget("{ctpost}:p1", "tags")) == "a,b"


def test_an_instance_changed_while_detached_is_committed_when_added_back(
    r: redis.Redis,
) -> None:
    ident = _saved_user(r, age=30, nickname="a")
    s = Session(r)
    user = s.get(User, ident)
    assert user is not None
    s.expunge(user)
    user.nickname = "b"  # not tracked by any session now
    user.age = 31
    s.add(user)
    assert s.is_modified(user)
    s.commit()
    assert as_str(r.hget(f"{{usr}}:{ident}", "nickname")) == "b"
    assert r.zscore("{usr}#r:age", ident) == 31


def test_assigning_the_loaded_value_changes_nothing(r: redis.Redis, counted: Counted) -> None:
    ident = _saved_user(r, age=30, nickname="a")
    with Session(counted.client) as s:
        user = s.get(User, ident)
        assert user is not None
        user.nickname = "a"
        user.age = 30
        assert not s.dirty
        counted.reset()
        s.commit()
        assert counted.round_trips == 0


def test_an_assignment_survives_a_lazy_load(r: redis.Redis) -> None:
    ident = _saved_user(r, age=30, nickname="a")
    with Session(r) as s:
        user = s.reference(User, ident)
        user.nickname = "b"
        assert user.age == 30  # loads the rest of the hash, keeps the assignment
        assert s.is_modified(user)
        s.commit()
    assert as_str(r.hget(f"{{usr}}:{ident}", "nickname")) == "b"


def test_after_rollback_or_refresh_nothing_is_pending(r: redis.Redis, counted: Counted) -> None:
    ident = _saved_user(r, age=30, nickname="a")
    with Session(counted.client) as s:
        user = s.get(User, ident)
        assert user is not None
        user.nickname = "b"
        s.rollback()
        assert user.nickname == "a" and not s.dirty
        user.age = 40
        s.refresh(user)
        assert user.age == 30 and not s.dirty
        counted.reset()
        s.commit()
        assert counted.round_trips == 0


def test_each_commit_writes_what_was_assigned_since_the_last(r: redis.Redis) -> None:
    ident = _saved_user(r, age=30, nickname="a")
    with Session(r) as s:
        user = s.get(User, ident)
        assert user is not None
        user.nickname = "b"
        s.commit()
        r.hset(f"{{usr}}:{ident}", "nickname", "changed elsewhere")
        user.age = 31  # the next commit writes age only
        s.commit()
    assert as_str(r.hget(f"{{usr}}:{ident}", "nickname")) == "changed elsewhere"
    assert as_str(r.hget(f"{{usr}}:{ident}", "age")) == "31"


def test_a_value_that_cannot_be_encoded_fails_the_insert_naming_the_field(
    r: redis.Redis,
) -> None:
    """Inserts encode through code generated per class; a codec that fails there gives
    the same error as the field-by-field path (class, field, reason), and nothing is
    written, so the session commits once the value is fixed."""
    with Session(r) as s:
        post = Post("hello", Tags("ok", "\ud800"), id="p9")  # a lone surrogate: no UTF-8
        s.add(post)
        with pytest.raises(redisca.ValidationError, match=r"Post\.tags: string cannot be") as info:
            s.commit()
        assert info.value.field == "tags"
        assert r.dbsize() == 0
        post.tags.names[1] = "fine"
        s.commit()
    stored = {as_str(k): as_str(v) for k, v in r.hgetall("{ctpost}:p9").items()}
    assert stored == {"title": "hello", "tags": "ok,fine"}

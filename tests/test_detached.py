"""Detached instances, and your own commands inside a commit."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from helpers import Counted, assert_indexes_consistent, decodes, dump_keyspace
from models import Company, User

import redisca
from redisca import OperationalError, Session


def _committed_user(r: redis.Redis, email: str = "ann@example.com") -> User:
    user = User(email=email, age=30)
    with Session(r) as s:
        s.add(user)
        s.commit()
    return user


def test_plain_updates_of_many_entities_skip_only_the_ones_deleted_meanwhile(
    r: redis.Redis,
) -> None:
    """One guarded call writes every plain update; it asks EXISTS of a thousand keys at
    once and each key alone only in a thousand where one is gone."""
    with Session(r) as s:
        s.add_all(User(email=f"u{i:04}@example.com", age=i % 200) for i in range(1500))
        s.commit()
    s = Session(r)
    users = s.query(User).all()
    assert len(users) == 1500
    gone = [users[3], users[998]]  # both among the first thousand keys of the call
    with Session(r) as other:
        for user in gone:
            other.delete(other.get(User, user.id))
        other.commit()
    for user in users:
        user.nickname = user.email[:5]
    s.commit()
    for user in gone:
        assert not r.exists(redisca.inspect(user).key)
        assert redisca.inspect(user).status == "detached"
    with Session(r) as fresh:
        kept = fresh.query(User).all()
        assert len(kept) == 1498
        assert all(u.nickname == u.email[:5] for u in kept)  # both thousands written
    assert_indexes_consistent(r, redisca.inspect(User))


def test_expunged_and_closed_instances_are_detached(r: redis.Redis) -> None:
    user = _committed_user(r)
    assert redisca.inspect(user).status == "detached"
    s = Session(r)
    loaded = s.get(User, user.id)
    s.expunge(loaded)
    assert redisca.inspect(loaded).status == "detached"
    assert redisca.inspect(User(email="new@example.com")).status == "transient"


def test_a_committed_delete_leaves_a_detached_instance(r: redis.Redis) -> None:
    user = _committed_user(r)
    s = Session(r)
    loaded = s.get(User, user.id)
    s.delete(loaded)
    assert redisca.inspect(loaded).status == "deleted"
    s.commit()
    assert loaded not in s
    assert redisca.inspect(loaded).status == "detached"


def test_re_adding_a_detached_instance_makes_it_persistent_again(
    r: redis.Redis, counted: Counted
) -> None:
    user = _committed_user(r)  # committed, then its session closed
    s = Session(counted.client)
    s.add(user)
    assert redisca.inspect(user).status == "persistent"
    assert user not in s.new and user not in s.dirty
    counted.reset()
    s.commit()
    assert counted.round_trips == 0  # nothing changed: no insert, no IntegrityError
    user.age = 31
    assert user in s.dirty
    s.commit()
    assert Session(r).get(User, user.id).age == 31  # type: ignore[union-attr]
    assert_indexes_consistent(r, redisca.inspect(User))


def test_re_adding_a_deleted_instance_inserts_it_again(r: redis.Redis) -> None:
    user = _committed_user(r)
    s = Session(r)
    loaded = s.get(User, user.id)
    assert loaded is not None
    s.delete(loaded)
    s.commit()
    assert not r.exists(redisca.inspect(loaded).key)
    s.add(loaded)
    assert loaded in s.new
    s.commit()
    again = Session(r).get(User, loaded.id)
    assert again is not None and again.email == "ann@example.com"
    assert_indexes_consistent(r, redisca.inspect(User))


def test_own_command_replies_are_shaped_like_redis_py(r: redis.Redis) -> None:
    r.hset("stats", mapping={"a": "1"})
    r.set("greeting", "hi")
    s = Session(r)
    s.add(Company(name="Acme"))
    got = s.add_command("GET", "greeting")
    whole = s.add_command("HGETALL", "stats")
    grown = s.add_command("INCR", "counter")
    s.commit()
    assert got.done and whole.done and grown.done
    if decodes(r):
        assert got.value == "hi" and whole.value == {"a": "1"}
    else:
        assert got.value == b"hi" and whole.value == {b"a": b"1"}
    assert grown.value == 1


def test_a_failing_own_command_is_reported_and_not_run_again(r: redis.Redis) -> None:
    r.set("not-a-number", "x")
    s = Session(r)
    acme = Company(name="Acme")
    s.add(acme)
    bad = s.add_command("INCR", "not-a-number")
    with pytest.raises(OperationalError, match="INCR") as raised:
        s.commit()
    assert isinstance(raised.value.orig, redis.ResponseError)
    # MULTI/EXEC has no rollback: the rest was applied, and the session knows it.
    assert bad.done and isinstance(bad.value, redis.ResponseError)
    assert redisca.inspect(acme).status == "persistent" and acme not in s.new
    before = dump_keyspace(r)
    s.commit()  # the failed command is not queued any more
    assert dump_keyspace(r) == before
    assert_indexes_consistent(r, redisca.inspect(Company))


def test_merge_of_a_detached_instance_whose_key_is_gone_inserts_a_copy(r: redis.Redis) -> None:
    user = _committed_user(r)  # detached now
    r.flushall()  # someone removed everything meanwhile
    s = Session(r)
    merged = s.merge(user)
    assert merged is not user and merged.id == user.id and merged in s.new
    assert redisca.inspect(user).status == "detached"  # the original is left alone
    s.commit()
    loaded = Session(r).get(User, user.id)
    assert loaded is not None and loaded.email == user.email
    assert_indexes_consistent(r, redisca.inspect(User))


def test_merge_of_another_sessions_instance_updates_ours(r: redis.Redis) -> None:
    user = _committed_user(r)
    theirs = Session(r)
    their_user = theirs.get(User, user.id)
    assert their_user is not None
    their_user.age = 55
    ours = Session(r)
    merged = ours.merge(their_user)
    assert merged is not their_user and merged in ours and their_user in theirs
    assert merged in ours.dirty
    ours.commit()
    assert Session(r).get(User, user.id).age == 55  # type: ignore[union-attr]


def test_a_refused_commit_keeps_its_connection(
    r: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    client = make_client()
    _committed_user(r, "taken@example.com")
    s = Session(client)
    s.add(User(email="taken@example.com"))
    with pytest.raises(redisca.UniqueViolation):
        s.commit()
    pool = client.connection_pool
    assert len(pool._available_connections) == 1  # back in the pool, still connected
    conn = pool._available_connections[0]
    assert conn._sock is not None
    s.rollback()
    s.add(User(email="free@example.com"))
    s.commit()  # on the same connection: the refusal left no WATCH behind
    assert pool._available_connections == [conn] and conn._sock is not None


def test_a_connection_dropped_between_commits_is_replaced(
    r: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    client = make_client()
    s = Session(client)
    s.add(User(email="a@example.com"))
    s.commit()
    r.client_kill_filter(skipme=True)  # the server drops every other client, ours too
    mine = User(email="b@example.com", age=1)
    s.add(mine)
    s.commit()
    assert Session(r).get(User, mine.id) is not None


def test_a_plain_update_of_an_entity_deleted_meanwhile_leaves_no_trace(
    r: redis.Redis, counted: Counted
) -> None:
    gone = _committed_user(r, "gone@example.com")
    kept = _committed_user(r, "kept@example.com")
    s = Session(counted.client)
    mine_gone, mine_kept = s.get(User, gone.id), s.get(User, kept.id)
    assert mine_gone is not None and mine_kept is not None
    with Session(r) as other:  # another client deletes one of them
        other.delete(other.get(User, gone.id))
        other.commit()
    mine_gone.nickname = "too late"
    mine_kept.nickname = "fine"
    counted.reset()
    s.commit()
    assert counted.round_trips == 1  # still one round trip: nothing was watched
    # The delete wins: no hash is recreated with just the updated field ...
    assert not r.exists(redisca.inspect(mine_gone).key)
    assert mine_gone not in s and redisca.inspect(mine_gone).status == "detached"
    # ... and the rest of the commit went through.
    assert Session(r).get(User, kept.id).nickname == "fine"  # type: ignore[union-attr]
    assert_indexes_consistent(r, redisca.inspect(User))

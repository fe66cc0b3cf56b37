"""Session: identity map, loading, change tracking, rollback, merge, binds, add_command.

Every test runs in both client modes (``r``); round trips are counted where the
contract promises a number.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import attrs
import pytest
import redis
from helpers import Counted, as_str, assert_indexes_consistent, dump_keyspace, unique_owner
from models import Company, User

import redisca
from redisca import Integer, Registry, Session, String
from redisca.embedded import EmbeddedServer

local = Registry()


@local.mapped(prefix="doc", versioned=True)
@attrs.define
class Doc:
    title: str = String()
    id: str | None = None


@local.mapped(prefix="base")
@attrs.define
class Base:
    name: str = String(index=True)
    id: str | None = None


@local.mapped(prefix="sub")
@attrs.define
class Sub(Base):
    extra: int | None = Integer(index=True, default=None)


@pytest.fixture(scope="module")
def second_server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as server:
        yield server


def stored(r: redis.Redis, key: str) -> dict[str, str]:
    return {as_str(k): as_str(v) for k, v in r.hgetall(key).items()}


def persist(r: redis.Redis, *objs: object) -> None:
    s = Session(r)
    s.add_all(objs)
    s.commit()


# -- adding, ids, cascade ------------------------------------------------------


def test_add_assigns_a_hexid_and_int_ids_become_str(r: redis.Redis) -> None:
    s = Session(r)
    u, v = User("a@x.org"), User("b@x.org", id=7)
    assert u.id is None and v.id == "7"
    s.add_all([u, v])
    assert isinstance(u.id, str) and u.id
    s.commit()
    assert redisca.inspect(u).key == "{usr}:" + u.id
    fresh = Session(r)
    assert fresh.get(User, 7).email == "b@x.org"  # type: ignore[union-attr]
    assert fresh.get(User, u.id).email == "a@x.org"  # type: ignore[union-attr]


def test_adding_a_user_adds_its_transient_company(r: redis.Redis) -> None:
    s = Session(r)
    company = Company("acme")
    user = User("a@x.org", company=company)
    s.add(user)
    assert company in s and company in s.new and company.id
    s.commit()
    assert stored(r, f"{{co}}:{company.id}") == {"name": "acme"}
    assert stored(r, f"{{usr}}:{user.id}")["company"] == company.id


def test_adding_an_object_whose_identity_is_taken_in_the_session(r: redis.Redis) -> None:
    s = Session(r)
    s.add(User("a@x.org", id="1"))
    with pytest.raises(redisca.IntegrityError):
        s.add(User("b@x.org", id="1"))


# -- identity map and loading ---------------------------------------------------


def test_identity_map_and_get_round_trips(r: redis.Redis, counted: Counted) -> None:
    persist(r, User("a@x.org", id="1"))
    s = Session(counted.client)
    first = s.get(User, "1")
    assert counted.round_trips == 1
    assert s.get(User, "1") is first
    assert s.get(User, 1) is first
    assert counted.round_trips == 1  # already loaded: no round trip
    assert first is not None and first.email == "a@x.org"
    assert s.get(User, "nope") is None


def test_get_many_order_missing_and_one_round_trip(r: redis.Redis, counted: Counted) -> None:
    users = [User(f"u{n}@x.org", id=str(n)) for n in range(5)]
    persist(r, *users)
    s = Session(counted.client)
    loaded = s.get(User, "2")
    pending = User("p@x.org", id="p")
    s.add(pending)
    counted.reset()
    got = s.get_many(User, ["3", "missing", "0", "2", "p", 1, "3"])
    assert counted.round_trips == 1
    assert [u.id if u else None for u in got] == ["3", None, "0", "2", "p", "1", "3"]
    assert got[3] is loaded and got[4] is pending and got[0] is got[6]
    counted.reset()
    assert s.get_many(User, ["0", "1", "p"]) == [got[2], got[5], pending]
    assert counted.round_trips == 0
    s.delete(got[2])
    assert s.get(User, "0") is None  # pending delete


def test_reference_is_lazy_and_loads_once(r: redis.Redis, counted: Counted) -> None:
    persist(r, User("a@x.org", age=30, company=Company("acme", id="c1"), id="1"))
    s = Session(counted.client)
    ref = s.reference(User, "1")
    ref.nickname = "nick"
    assert counted.round_trips == 0  # neither reference() nor assigning loads
    assert (ref.age, ref.email) == (30, "a@x.org")
    assert ref.created.tzinfo is not None and ref.company.id == "c1"  # type: ignore[union-attr]
    assert counted.round_trips == 1
    assert ref.nickname == "nick"  # the load kept what was assigned
    assert s.get(User, "1") is ref and counted.round_trips == 1
    assert ref.company.name == "acme"  # type: ignore[union-attr]
    assert counted.round_trips == 2
    s.commit()
    assert stored(r, "{usr}:1")["nickname"] == "nick"


def test_reference_to_a_missing_key(r: redis.Redis) -> None:
    s = Session(r)
    ghost = s.reference(User, "ghost")
    with pytest.raises(redisca.NotFound) as info:
        ghost.age  # noqa: B018
    assert isinstance(info.value, LookupError)
    ghost.age = 3
    with pytest.raises(redisca.NotFound):
        s.commit()  # an update of a key that does not exist
    assert dump_keyspace(r) == {}


def test_unloaded_attribute_after_expunge(r: redis.Redis) -> None:
    persist(r, User("a@x.org", id="1"))
    s = Session(r)
    stub = s.reference(User, "1")
    assert stub in s
    s.expunge(stub)
    assert stub not in s
    with pytest.raises(redisca.DetachedInstanceError):
        stub.email  # noqa: B018


# -- change tracking --------------------------------------------------------------


def test_membership_new_dirty_deleted_and_is_modified(r: redis.Redis) -> None:
    persist(r, User("a@x.org", id="1"), User("b@x.org", id="2"))
    s = Session(r)
    loaded, doomed = s.get(User, "1"), s.get(User, "2")
    assert loaded is not None and doomed is not None
    assert loaded in s and not s.is_modified(loaded) and not s.dirty
    new = User("c@x.org")
    s.add(new)
    loaded.age = 40
    s.delete(doomed)
    assert new in s.new and loaded not in s.new and doomed not in s.new
    assert loaded in s.dirty and new not in s.dirty and len(s.dirty) == 1
    assert doomed in s.deleted and len(s.deleted) == 1
    assert all(s.is_modified(o) for o in (loaded, new, doomed))
    assert User("d@x.org") not in s
    loaded.age = None  # back to what was loaded
    assert not s.is_modified(loaded) and loaded not in s.dirty


def test_rollback(r: redis.Redis, counted: Counted) -> None:
    persist(r, User("a@x.org", age=1, nickname="n", id="1"), User("b@x.org", id="2"))
    before = dump_keyspace(r)
    s = Session(counted.client)
    kept, doomed = s.get(User, "1"), s.get(User, "2")
    assert kept is not None and doomed is not None
    stub = s.reference(User, "2")  # loaded: the same object
    lazy = s.reference(User, "3")
    new = User("c@x.org")
    s.add(new)
    s.delete(doomed)
    kept.age, kept.nickname, kept.email = 99, None, "z@x.org"
    lazy.age = 5
    s.rollback()
    assert new not in s and not s.new
    assert doomed in s and doomed is stub and not s.deleted and doomed.email == "b@x.org"
    assert (kept.age, kept.nickname, kept.email) == (1, "n", "a@x.org")
    assert not s.dirty and not redisca.inspect(lazy).loaded
    counted.reset()
    s.commit()
    assert counted.round_trips == 0
    assert dump_keyspace(r) == before
    persist(r, User("l@x.org", age=8, id="3"))
    counted.reset()
    assert lazy.age == 8 and counted.round_trips == 1  # unset again, so it loads


def test_refresh_discards_changes(r: redis.Redis) -> None:
    persist(r, User("a@x.org", age=1, id="1"))
    s = Session(r)
    user = s.get(User, "1")
    assert user is not None
    user.age = 50
    r.hset("{usr}:1", "nickname", "set elsewhere")
    s.refresh(user)
    assert (user.age, user.nickname) == (1, "set elsewhere")
    assert not s.is_modified(user)


def test_expunge_and_expunge_all(r: redis.Redis) -> None:
    s = Session(r)
    a, b = User("a@x.org"), User("b@x.org")
    s.add_all([a, b])
    s.expunge(a)
    assert a not in s and b in s and list(s.new) == [b]
    s.expunge_all()
    assert b not in s and not s.new
    s.commit()
    assert dump_keyspace(r) == {}


def test_session_as_context_manager_closes_without_committing(r: redis.Redis) -> None:
    user = User("a@x.org")
    with Session(r) as s:
        s.add(user)
        assert user in s
    assert user not in s
    assert dump_keyspace(r) == {}


def test_begin_commits_at_the_end_of_the_block(r: redis.Redis) -> None:
    s = Session(r)
    with s.begin():
        s.add(User("a@x.org", id="1"))
    assert stored(r, "{usr}:1")["eml"] == "a@x.org"


def test_begin_rolls_back_when_the_block_raises(r: redis.Redis) -> None:
    s = Session(r)
    user = User("a@x.org")
    with pytest.raises(RuntimeError), s.begin():
        s.add(user)
        raise RuntimeError("boom")
    assert user not in s and not s.new
    assert dump_keyspace(r) == {}


# -- writing ---------------------------------------------------------------------------


def test_merge_copies_onto_the_session_instance_and_updates(r: redis.Redis) -> None:
    persist(r, User("a@x.org", age=1, nickname="old", id="1"))
    s = Session(r)
    loaded = s.get(User, "1")
    incoming = User("b@x.org", age=2, id="1")
    merged = s.merge(incoming)
    assert merged is loaded and merged is not incoming and incoming not in s
    assert (merged.email, merged.age, merged.nickname) == ("b@x.org", 2, None)
    assert merged in s.dirty and not s.new
    s.commit()
    assert stored(r, "{usr}:1")["eml"] == "b@x.org" and "nickname" not in stored(r, "{usr}:1")
    assert unique_owner(r, "usr", "eml", "b@x.org") and not unique_owner(r, "usr", "eml", "a@x.org")


def test_merge_inserts_a_missing_key(r: redis.Redis) -> None:
    s = Session(r)
    incoming = User("n@x.org", id="9")
    assert s.merge(incoming) is incoming and incoming in s.new
    s.commit()
    assert stored(r, "{usr}:9")["eml"] == "n@x.org"


def test_inserting_an_existing_key_is_an_integrity_error(r: redis.Redis) -> None:
    persist(r, User("a@x.org", id="1"))
    before = dump_keyspace(r)
    s = Session(r)
    dup = User("other@x.org", id="1")
    s.add(dup)
    with pytest.raises(redisca.IntegrityError) as info:
        s.commit()
    assert not isinstance(info.value, redisca.UniqueViolation)
    assert dump_keyspace(r) == before
    assert dup in s.new  # still pending


def test_none_removes_the_field(r: redis.Redis) -> None:
    persist(r, User("a@x.org", age=5, nickname="n", id="1"))
    s = Session(r)
    user = s.get(User, "1")
    assert user is not None
    user.age, user.nickname = None, None
    s.commit()
    assert set(stored(r, "{usr}:1")) == {"eml", "created"}
    assert r.zscore("{usr}#r:age", "1") == float("inf")  # no value: it sorts last
    again = Session(r).get(User, "1")
    assert again is not None and again.age is None and again.nickname is None
    assert_indexes_consistent(r, redisca.inspect(User))


def test_only_changed_fields_are_written(r: redis.Redis, counted: Counted) -> None:
    persist(r, User("a@x.org", age=5, id="1"))
    s = Session(counted.client)
    user = s.get(User, "1")
    assert user is not None
    other = Session(r)
    theirs = other.get(User, "1")
    theirs.nickname = "theirs"  # type: ignore[union-attr]
    other.commit()
    user.created = user.created.replace(year=2001)
    counted.reset()
    s.commit()
    assert (counted.round_trips, counted.commands) == (1, 3)  # MULTI, one HSET, EXEC
    row = stored(r, "{usr}:1")
    assert row["nickname"] == "theirs" and row["created"] == str(int(user.created.timestamp()))


# -- binds, default client ------------------------------------------------------------------


def test_binds_send_a_class_to_another_server(
    r: redis.Redis, second_server: EmbeddedServer
) -> None:
    other = second_server.client()
    other.flushall()
    s = Session(r, binds={Company: other})
    user = User("a@x.org", company=Company("acme"))
    s.add(user)
    s.commit()
    assert {as_str(k) for k in r.keys("{co}*")} == set()
    assert other.hgetall(f"{{co}}:{user.company.id}") == {b"name": b"acme"}  # type: ignore[union-attr]
    assert not other.keys("{usr}*")
    reader = Session(r, binds={Company: other})
    fresh = reader.get(User, user.id)  # type: ignore[arg-type]
    assert fresh is not None and fresh.company.name == "acme"  # type: ignore[union-attr]
    other.close()


def test_binds_cover_subclasses_of_a_mapped_class(
    r: redis.Redis, second_server: EmbeddedServer
) -> None:
    other = second_server.client()
    other.flushall()
    s = Session(r, binds={Base: other})
    base, sub = Base("b"), Sub("s", extra=3)
    s.add_all([base, sub])
    s.commit()
    assert not r.keys("*")
    keys = [f"{{base}}:{base.id}", f"{{sub}}:{sub.id}", "{sub}#r:extra", "{sub}#i:name:s"]
    assert other.exists(*keys) == 4
    other.close()


def test_default_client_is_conf_db(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redisca.conf, "db", r)
    s = Session()
    s.add(User("a@x.org", id="1"))
    s.commit()
    assert stored(r, "{usr}:1")["eml"] == "a@x.org"


@pytest.mark.single_server(reason="a cluster has one database, 0: there is no db 3 to name")
def test_without_conf_db_the_default_client_follows_redis_url(
    r: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redisca.conf, "db", None)
    monkeypatch.setenv("REDIS_URL", redis_url.rsplit("/", 1)[0] + "/3")
    s = Session()
    s.add(User("b@x.org", id="2"))
    s.commit()
    assert not r.exists("{usr}:2")  # not db 0 ...
    db3 = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3")
    assert db3.hget("{usr}:2", "eml") == b"b@x.org"  # ... but the one REDIS_URL names
    assert Session().bind_for(User) is s.bind_for(User)  # one shared client per URL
    db3.flushdb()
    db3.close()


# -- versioning, user commands ------------------------------------------------------------------


def test_versioned_entity_changed_elsewhere_is_stale(r: redis.Redis) -> None:
    ours = Session(r)
    doc = Doc("v1")
    ours.add(doc)
    ours.commit()
    theirs = Session(r)
    their_doc = theirs.get(Doc, doc.id)  # type: ignore[arg-type]
    their_doc.title = "theirs"  # type: ignore[union-attr]
    theirs.commit()
    before = dump_keyspace(r)
    doc.title = "ours"
    with pytest.raises(redisca.StaleDataError) as info:
        ours.commit()
    assert isinstance(info.value, redisca.ConflictError)
    assert dump_keyspace(r) == before and doc in ours.dirty
    ours.refresh(doc)
    doc.title = "ours"
    ours.commit()
    assert stored(r, f"{{doc}}:{doc.id}")["title"] == "ours"


def test_add_command_runs_inside_the_commit(r: redis.Redis) -> None:
    s = Session(r)
    result = s.add_command("INCR", "counter")
    assert not result.done
    s.add(User("a@x.org", id="1"))
    s.commit()
    assert result.done and result.value == 1
    assert r.get("counter") in (b"1", "1")
    s.add(User("A@x.org", id="2"))  # a taken email: the commit fails
    failed = s.add_command("INCR", "counter")
    with pytest.raises(redisca.UniqueViolation):
        s.commit()
    assert not failed.done and r.get("counter") in (b"1", "1")


def test_add_command_takes_what_redis_py_takes(r: redis.Redis) -> None:
    s = Session(r)
    s.add_command("SET", b"price", 1.25)
    s.add_command("SET", "count", 7)
    s.add_command("SET", "label", "café")
    kind = s.add_command("OBJECT ENCODING", "count")  # two words, as redis-py splits them
    s.commit()
    assert r.get("price") in (b"1.25", "1.25") and r.get("count") in (b"7", "7")
    assert r.get("label") in ("café".encode(), "café")
    assert kind.value in (b"int", "int")


@pytest.mark.parametrize("bad", [None, True, [1], object()])
def test_add_command_refuses_other_arguments_when_queued(r: redis.Redis, bad: object) -> None:
    s = Session(r)
    s.add(User("a@x.org", id="1"))
    with pytest.raises(redisca.ValidationError, match=f"argument 3 is {type(bad).__name__}"):
        s.add_command("SET", "k", bad)
    with pytest.raises(redisca.ValidationError, match="at least a command name"):
        s.add_command()
    with pytest.raises(redisca.ValidationError, match="needs a command name, not ' '"):
        s.add_command(" ", "k")
    assert s.queued_commands() == []
    s.commit()  # the session is unharmed: the rest commits
    assert r.exists("{usr}:1") and not r.exists("k")


def test_a_session_dropped_without_close_lets_its_instances_go(r: redis.Redis) -> None:
    """Sessions find an instance's state through a table keyed by id(obj) that holds the
    state; a session dropped without close() empties its part of it in its finalizer,
    so neither its instances nor their states outlive it."""
    with Session(r) as s:
        s.add(Company(name="Acme", id="c1"))
        s.commit()
    session = Session(r)
    company = session.get(Company, "c1")
    pending = Company(name="Initech", id="c2")
    session.add(pending)
    refs = [weakref.ref(company), weakref.ref(session.state(company)), weakref.ref(pending)]
    assert session.state(pending).status == "pending"
    del company, session
    gc.collect()
    assert [ref() for ref in refs[:2]] == [None, None]
    assert redisca.inspect(pending).status == "transient"  # no session tracks it now

"""The commit plan, the emitter and the query compiler as pure data: no Redis here.

Sessions below are bound to a client of a port nothing listens on, so any I/O
would fail the test: organize, collect_reads, emit and compile_query do none.
"""

from __future__ import annotations

import zlib
from typing import Any

import attrs
import pytest
import redis

import redisca
from redisca import Email, Integer, Reference, Registry, Session, String
from redisca.errors import IntegrityError, NotFound, StaleDataError, UniqueViolation
from redisca.session import unitofwork
from redisca.session.emit import (
    GUARDED_WRITE,
    RELEASE_OWNED,
    REMOVE_FIELDS,
    InDoubtInsert,
    emit,
    vanished,
)
from redisca.session.executor import Executed
from redisca.session.plan import (
    DELETE,
    INSERT,
    UPDATE,
    CommitPlan,
    EntityChange,
    Observed,
    collect_reads,
)
from redisca.session.querycompile import compile_query, ordering_field, sort_filters

registry = Registry()


@registry.mapped(prefix="pco")
@attrs.define
class Company:
    name: str = String(index=True)
    id: str | None = None


@registry.mapped(prefix="pusr")
@attrs.define
class User:
    email: str = Email(field="eml", unique=True)
    age: int | None = Integer(index=True, default=None)
    city: str | None = String(index=True, default=None)
    company: Company | None = Reference(Company, index=True, default=None)
    nickname: str | None = None
    id: str | None = None


@registry.mapped(prefix="pdoc", versioned=True)
@attrs.define
class Doc:
    title: str | None = None
    id: str | None = None


@registry.mapped(prefix="ptwo")
@attrs.define
class Two:
    a: int | None = Integer(index=True, default=None)
    b: int | None = Integer(index=True, default=None)
    id: str | None = None


UM = redisca.inspect(User)
F = UM.by_name
KEY = b"{pusr}:u1"
#: User's all-ids index: its first range field's (it has no ``pusr#all``).
ALL = b"{pusr}#r:age"


def uk(email: str) -> tuple[bytes, bytes]:
    """Where a unique email is claimed: its stripe ``P#u:eml:<crc32 % 128>``, and the value."""
    value = email.encode()
    return b"{pusr}#u:eml:%d" % (zlib.crc32(value) % 128), value


def guard(prefix: bytes, ident: str) -> bytes:
    """An entity's guard stripe ``{P}#g:<crc32(id) % 128>`` (docs/keylayout.rst)."""
    return b"{" + prefix + b"}#g:%d" % (zlib.crc32(ident.encode()) % 128)


def guard_bump(prefix: bytes, ident: str) -> tuple[bytes, bytes]:
    return (b"INCR", guard(prefix, ident))


BUMP = guard_bump(b"pusr", "u1")


def change(op: str, ident: str = "u1", mapper: Any = UM, **values: bytes | None) -> EntityChange:
    fields = {mapper.by_name[name]: raw for name, raw in values.items()}
    return EntityChange(mapper, ident, op, fields, needs_read=op != INSERT)


def offline() -> Session:
    return Session(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2))


def organized(session: Session) -> list[unitofwork.Group]:
    """What ``Session.commit`` plans, without I/O: the save cascade, then organize."""
    unitofwork.cascade(session.states(), session.__contains__, session.add)
    return unitofwork.organize(session.states(), session.queued_commands(), session.bind_for)


def committed(session: Session) -> None:
    """Pretend the pending plan was committed: finalize without Redis."""
    for group in organized(session):
        unitofwork.finalize(group, Executed([], []), lambda s: session.forget(s, deleted=True))


def plan_of(session: Session) -> CommitPlan:
    (group,) = organized(session)
    return group.plan()


# -- insert ---------------------------------------------------------------------


def test_insert_from_a_session() -> None:
    s = offline()
    acme = Company(name="acme", id="c1")
    s.add(User(email="Ann@X.com", age=30, city="paris", company=acme, id="u1"))
    plan = plan_of(s)
    ops = sorted((c.op, c.id) for c in plan.changes)
    assert ops == [(INSERT, "c1"), (INSERT, "u1")]
    reads = collect_reads(plan)
    assert sorted(reads.exists) == [b"{pco}:c1", KEY]
    assert reads.fields == {}
    assert reads.owners == [uk("ann@x.com")]  # unique keys ignore the email's case
    observed = Observed(exists={KEY: False, b"{pco}:c1": False}, owners={uk("ann@x.com"): None})
    user_cmds = [c for c in emit(plan, observed) if c[1] != b"{pco}:c1" and b"{pco}#" not in c[1]]
    assert user_cmds == [
        (b"HSET", KEY, b"eml", b"Ann@X.com", b"age", b"30", b"city", b"paris", b"company", b"c1"),
        (b"ZADD", b"{pusr}#r:age", b"30.0", "u1"),  # and no ZADD pusr#all: this one holds ids
        (b"SADD", b"{pusr}#i:city:paris", "u1"),
        (b"SADD", b"{pusr}#i:company:c1", "u1"),
        (b"HSET", *uk("ann@x.com"), "u1"),
        BUMP,  # inserted: its guard stripe moves, failing the EXEC of its readers
    ]
    company_cmds = [c for c in emit(plan, observed) if c not in user_cmds]
    assert company_cmds == [
        (b"HSET", b"{pco}:c1", b"name", b"acme"),
        (b"ZADD", b"{pco}#all", 0, "c1"),
        (b"SADD", b"{pco}#i:name:acme", "c1"),
        (b"INCR", guard(b"pco", "c1")),
    ]


def test_insert_markers_and_existing_key() -> None:
    empty = change(INSERT, mapper=redisca.inspect(Doc), title=None)
    observed = Observed(exists={b"{pdoc}:u1": False})
    assert collect_reads(CommitPlan((empty,))).exists == [b"{pdoc}:u1"]
    assert emit(CommitPlan((empty,)), observed) == [
        (b"HSET", b"{pdoc}:u1", b"#v", b"1"),  # versioned: the version starts at 1
        (b"ZADD", b"{pdoc}#all", 0, "u1"),
        (b"INCR", guard(b"pdoc", "u1")),
    ]
    bare = change(INSERT, email=b"a@b.c")
    bare.values = {}
    assert emit(CommitPlan((bare,)), Observed(exists={KEY: False}))[0] == (
        b"HSET", KEY, b"#e", b"",
    )  # fmt: skip
    with pytest.raises(IntegrityError, match=r"\{pusr\}:u1"):
        emit(CommitPlan((change(INSERT, email=b"a@b.c"),)), Observed(exists={KEY: True}))


# -- update ---------------------------------------------------------------------


def loaded_user(**values: Any) -> tuple[Session, User]:
    s = offline()
    user = User(email="ann@x.com", id="u1", **values)
    s.add(user)
    committed(s)
    assert redisca.inspect(user).status == "persistent"
    return s, user


def test_update_removes_the_observed_index_value_not_the_snapshot() -> None:
    s, user = loaded_user(city="paris", age=30)
    user.city, user.nickname = "lyon", "annie"
    plan = plan_of(s)
    (c,) = plan.changes
    assert (c.op, c.needs_read, c.was_loaded) == (UPDATE, True, True)
    reads = collect_reads(plan)
    assert (reads.exists, reads.fields, reads.owners) == ([KEY], {KEY: [b"city"]}, [])
    # another client moved the user to rome meanwhile: rome's set loses it, not paris's
    observed = Observed(exists={KEY: True}, fields={KEY: {b"city": b"rome"}})
    assert emit(plan, observed) == [
        (b"HSET", KEY, b"city", b"lyon", b"nickname", b"annie"),
        (b"SREM", b"{pusr}#i:city:rome", "u1"),
        (b"SADD", b"{pusr}#i:city:lyon", "u1"),
        BUMP,
    ]
    already = Observed(exists={KEY: True}, fields={KEY: {b"city": b"lyon"}})
    assert emit(plan, already) == [
        (b"HSET", KEY, b"city", b"lyon", b"nickname", b"annie"),
        BUMP,
    ]
    with pytest.raises(StaleDataError):  # deleted since it was loaded
        emit(plan, Observed(exists={KEY: False}))


def test_update_of_unindexed_field_reads_nothing() -> None:
    s, user = loaded_user(city="paris")
    user.nickname = "annie"
    plan = plan_of(s)
    reads = collect_reads(plan)
    assert not reads and reads.keys() == []
    # Unwatched, so written only if the entity still exists: a concurrent delete wins.
    commands = emit(plan, Observed())
    # One script call for all of them: per key, (pairs, removals, pairs..., fields...).
    assert commands == [(b"EVAL", GUARDED_WRITE, 1, KEY, 1, 0, b"nickname", b"annie")]
    assert vanished(commands, [[1]]) == {KEY} and vanished(commands, [[]]) == set()
    committed(s)
    user.nickname = None
    user.city = "paris"  # unchanged: still nothing indexed in the change
    assert emit(plan_of(s), Observed()) == [(b"EVAL", GUARDED_WRITE, 1, KEY, 0, 1, b"nickname")]


def test_range_update_and_field_to_none() -> None:
    s, user = loaded_user(city="paris", age=30, nickname="a")
    user.age = 31
    plan = plan_of(s)
    observed = Observed(exists={KEY: True}, fields={KEY: {b"age": b"30"}})
    assert emit(plan, observed) == [
        (b"HSET", KEY, b"age", b"31"),
        (b"ZADD", b"{pusr}#r:age", b"31.0", "u1"),  # a new score replaces the old one
        BUMP,
    ]
    user.age, user.city, user.nickname = None, None, None
    plan = plan_of(s)
    # city's old set must be found by value; age's range entry is moved by id, unread
    assert collect_reads(plan).fields == {KEY: [b"city"]}
    observed = Observed(exists={KEY: True}, fields={KEY: {b"age": b"30", b"city": b"paris"}})
    assert emit(plan, observed) == [
        (b"EVAL", REMOVE_FIELDS, 1, KEY, b"age", b"city", b"nickname"),
        (b"SREM", b"{pusr}#i:city:paris", "u1"),  # removals come before additions
        (b"ZADD", b"{pusr}#r:age", b"+inf", "u1"),  # no value: it stays, sorting last
        BUMP,
    ]
    gone = Observed(exists={KEY: True}, fields={KEY: {b"age": None, b"city": None}})
    assert emit(plan, gone) == [
        (b"EVAL", REMOVE_FIELDS, 1, KEY, b"age", b"city", b"nickname"),
        BUMP,
    ]


def test_update_to_no_field_keeps_a_marker() -> None:
    s = offline()
    doc = Doc(title="t", id="d1")
    s.add(doc)
    committed(s)
    doc.title = None
    (c,) = plan_of(s).changes
    # a versioned entity starts at a time-based version, not 1 (see first_version)
    assert c.empty_after and c.expect_version is not None and c.expect_version > 1 << 40
    assert collect_reads(CommitPlan((c,))).fields == {b"{pdoc}:d1": [b"#v"]}
    version = b"%d" % c.expect_version
    observed = Observed(exists={b"{pdoc}:d1": True}, fields={b"{pdoc}:d1": {b"#v": version}})
    assert emit(CommitPlan((c,)), observed) == [
        (b"HSET", b"{pdoc}:d1", b"#e", b""),
        (b"EVAL", REMOVE_FIELDS, 1, b"{pdoc}:d1", b"title"),
        (b"HINCRBY", b"{pdoc}:d1", b"#v", 1),
        (b"INCR", guard(b"pdoc", "d1")),  # a version changes: its readers must know
    ]


def test_versioned_mismatch_is_stale() -> None:
    c = change(UPDATE, "d1", redisca.inspect(Doc), title=b"new")
    c.expect_version = 3
    plan = CommitPlan((c,))
    assert collect_reads(plan).fields == {b"{pdoc}:d1": [b"#v"]}
    for stored in (b"4", None):
        with pytest.raises(StaleDataError):
            emit(plan, Observed({b"{pdoc}:d1": True}, {b"{pdoc}:d1": {b"#v": stored}}))
    ok = emit(plan, Observed({b"{pdoc}:d1": True}, {b"{pdoc}:d1": {b"#v": b"3"}}))
    assert ok[-2:] == [(b"HINCRBY", b"{pdoc}:d1", b"#v", 1), (b"INCR", guard(b"pdoc", "d1"))]


def test_update_of_a_reference_that_does_not_exist() -> None:
    s = offline()
    s.reference(User, "u1").nickname = "x"  # never loaded: must be read, NotFound if missing
    plan = plan_of(s)
    (c,) = plan.changes
    assert c.needs_read and not c.was_loaded
    assert collect_reads(plan).exists == [KEY]
    with pytest.raises(NotFound):
        emit(plan, Observed(exists={KEY: False}))
    assert emit(plan, Observed(exists={KEY: True})) == [(b"HSET", KEY, b"nickname", b"x")]


# -- delete ---------------------------------------------------------------------


def test_delete() -> None:
    s, user = loaded_user(city="paris", age=30)
    s.delete(user)
    plan = plan_of(s)
    assert [c.op for c in plan.changes] == [DELETE]
    reads = collect_reads(plan)
    assert reads.exists == []  # no EXISTS: an entity gone meanwhile reads as no values
    assert reads.fields == {KEY: [b"eml", b"city", b"company"]}  # not age: ZREM by id
    assert reads.owners == []  # a released value's owner is checked by the server
    assert reads.keys() == [guard(b"pusr", "u1")]  # watched all the same
    current = {b"eml": b"ANN@x.com", b"age": b"30", b"city": b"rome", b"company": None}
    observed = Observed({}, {KEY: current})
    assert emit(plan, observed) == [
        (b"DEL", KEY),
        (b"ZREM", b"{pusr}#r:age", "u1"),  # the all-ids index too: no ZREM pusr#all
        (b"SREM", b"{pusr}#i:city:rome", "u1"),
        (b"EVAL", RELEASE_OWNED, 1, *uk("ann@x.com"), "u1"),
        BUMP,
    ]
    # an owner the commit read (another change claims the value) is released directly,
    # and a unique key owned by someone else is left alone
    observed.owners[uk("ann@x.com")] = "u1"
    assert (b"HDEL", *uk("ann@x.com")) in emit(plan, observed)
    observed.owners[uk("ann@x.com")] = "u2"
    commands = emit(plan, observed)
    assert (b"HDEL", *uk("ann@x.com")) not in commands
    assert not any(c[0] == b"EVAL" for c in commands)
    # Already gone: its fields read as None, and the removals find nothing to remove.
    gone = Observed(fields={KEY: dict.fromkeys(current)})
    assert emit(plan, gone) == [(b"DEL", KEY), (b"ZREM", b"{pusr}#r:age", "u1"), BUMP]


def test_a_versioned_delete_still_asks_whether_the_entity_exists() -> None:
    s = offline()
    doc = Doc(title="t", id="d1")
    s.add(doc)
    committed(s)
    s.delete(doc)
    plan = plan_of(s)
    assert collect_reads(plan).exists == [b"{pdoc}:d1"]  # gone and changed differ for it
    assert emit(plan, Observed(exists={b"{pdoc}:d1": False})) == [guard_bump(b"pdoc", "d1")]


# -- unique claims --------------------------------------------------------------


def test_claim_owned_by_another_id() -> None:
    plan = CommitPlan((change(INSERT, email=b"Bob@X.com"),))
    with pytest.raises(UniqueViolation) as info:
        emit(plan, Observed(exists={KEY: False}, owners={uk("bob@x.com"): "u9"}))
    assert (info.value.field, info.value.value, info.value.owner) == ("email", "Bob@X.com", "u9")
    assert isinstance(info.value, IntegrityError)
    # ours already (a retry): fine
    assert emit(plan, Observed(exists={KEY: False}, owners={uk("bob@x.com"): "u1"}))[-2:] == [
        (b"HSET", *uk("bob@x.com"), "u1"), BUMP,
    ]  # fmt: skip
    # two entities of one commit claiming one value
    twice = CommitPlan((plan.changes[0], change(INSERT, "u2", email=b"bob@x.com")))
    with pytest.raises(UniqueViolation):
        emit(twice, Observed(exists={KEY: False}, owners={uk("bob@x.com"): None}))


def test_claim_of_a_key_released_in_the_same_commit() -> None:
    a = change(UPDATE, "u1", email=b"y@x.com")
    b = change(UPDATE, "u2", email=b"x@x.com")
    plan = CommitPlan((a, b))
    reads = collect_reads(plan)
    # only claimed values' owners are read; the old ones are released by the server
    assert sorted(reads.owners) == sorted([uk("x@x.com"), uk("y@x.com")])
    assert reads.fields == {KEY: [b"eml"], b"{pusr}:u2": [b"eml"]}
    observed = Observed(
        {KEY: True, b"{pusr}:u2": True},
        {KEY: {b"eml": b"x@x.com"}, b"{pusr}:u2": {b"eml": b"z@x.com"}},
        {uk("x@x.com"): "u1", uk("y@x.com"): None},
    )
    out = emit(plan, observed)
    assert out.index((b"HDEL", *uk("x@x.com"))) < out.index((b"HSET", *uk("x@x.com"), "u2"))
    assert (b"HSET", *uk("y@x.com"), "u1") in out
    assert (b"EVAL", RELEASE_OWNED, 1, *uk("z@x.com"), "u2") in out
    # without the release (u1 keeps x), u2's claim is a violation
    keep = CommitPlan((b,))
    with pytest.raises(UniqueViolation):
        emit(keep, observed)


def test_an_old_value_unknown_to_the_session_is_released_without_a_read() -> None:
    s = offline()
    s.reference(User, "u1").email = "new@x.com"  # the old value is unknown to the session
    plan = plan_of(s)
    reads = collect_reads(plan)
    assert reads.owners == [uk("new@x.com")] and reads.fields == {KEY: [b"eml"]}
    observed = Observed({KEY: True}, {KEY: {b"eml": b"Old@X.com"}}, {uk("new@x.com"): None})
    # released before the claims, and only where the stripe still names u1
    assert emit(plan, observed) == [
        (b"HSET", KEY, b"eml", b"new@x.com"),
        (b"EVAL", RELEASE_OWNED, 1, *uk("old@x.com"), "u1"),
        (b"HSET", *uk("new@x.com"), "u1"),
        BUMP,
    ]


def test_user_commands_come_last() -> None:
    plan = CommitPlan((change(INSERT, city=b"rome"),), ((b"INCR", b"hits"), (b"PING",)))
    out = emit(plan, Observed(exists={KEY: False}))
    assert out[-3:] == [BUMP, (b"INCR", b"hits"), (b"PING",)]
    # HSET, the age entry (no age: at +inf; it is the all-ids entry too), the city
    # entry, then those
    assert len(out) == 6 and (b"ZADD", b"{pusr}#r:age", b"+inf", "u1") in out
    assert not CommitPlan() and CommitPlan(commands=((b"PING",),))
    s = offline()
    s.add_command("SET", "k", "v")  # the plan holds it as sent: checked and encoded
    assert plan_of(s).commands == ((b"SET", b"k", b"v"),)
    assert emit(plan_of(s), Observed()) == [(b"SET", b"k", b"v")]


# -- query compilation ----------------------------------------------------------

NONE = [0, b"-inf", 0, b"+inf", 1]  # no window: restricted 0, then (-inf, +inf)


def call(
    *conds: Any,
    order: Any = None,
    mode: bytes = b"ids",
    offset: int = 0,
    limit: Any = None,
    mapper: Any = UM,
) -> tuple[list[bytes], list[Any], list[bytes]]:
    """The query script's keys, its arguments after the fixed header, and key types."""
    filters = sort_filters(mapper, conds)
    by = ordering_field(mapper, filters, order)
    done = compile_query(
        mapper,
        filters,
        by,
        mode=mode,
        descending=order is not None and order.descending,
        offset=offset,
        limit=limit,
    )
    args = list(done.args)
    assert args[:4] == [
        mode,
        offset,
        -1 if limit is None else limit,
        int(order is not None and order.descending),
    ] and args[5] == mapper.layout.entity_of(b"")
    assert args[4] == int(done.keys[0] != mapper.layout.all_set)  # byscore: not P#all
    return list(done.keys), args[6:], list(done.types)


def test_compile_no_condition_reads_all_ids_by_rank() -> None:
    # User has a range field: its first one's index holds every id and gives the
    # default order, by (score, id); it is the only key read, once
    assert call() == ([ALL], [*NONE, b"", b"", b"", 0], [b"zset"])
    keys, args, _ = call(mode=b"count", offset=3, limit=4)
    assert keys == [ALL] and args[-1] == 0  # no term: ZCARD (and slicing) only
    # a model without one: P#all, every score 0, in id order (positions are ranks)
    company = redisca.inspect(Company)
    assert call(mapper=company) == ([b"{pco}#all"], [*NONE, b"", b"", b"", 0], [b"zset"])
    assert compile_query(company, sort_filters(company, ()), None, mode=b"ids").args[4] == 0
    assert compile_query(UM, sort_filters(UM, ()), F["age"], mode=b"ids").args[4] == 1
    keys, _, _ = call(Company.name == "acme", mapper=company)
    assert keys == [b"{pco}#all", b"{pco}#i:name:acme"]


def test_compile_order_and_its_window() -> None:
    # the order field's range is the walk's window, never a term; +inf (no value) is
    # never inside: an open high end is "(+inf"
    keys, args, _ = call(User.age > 18, order=User.age.desc())
    assert keys == [b"{pusr}#r:age"]
    assert args == [1, b"18.0", 1, b"+inf", 1, b"", b"", b"", 0]
    keys, args, _ = call(User.age.between(18, 30))  # no order_by: the first range orders
    assert keys == [b"{pusr}#r:age"] and args[:5] == [1, b"18.0", 0, b"30.0", 0]
    keys, args, _ = call(User.age <= float("inf"), order=User.age.asc())
    assert args[:5] == [1, b"-inf", 0, b"+inf", 1]
    keys, args, _ = call(order=User.age.asc())  # order without a condition: every entity
    assert keys == [b"{pusr}#r:age"] and args[:5] == NONE


def test_compile_terms() -> None:
    keys, args, types = call(User.city == "paris", User.age >= 18, User.email == "Ann@X.com")
    stripe, value = uk("ann@x.com")
    assert keys == [b"{pusr}#r:age", b"{pusr}#i:city:paris", stripe]
    assert args[5:] == [b"", b"", b"", 2, b"e", b"u", value]
    assert types == [b"zset", b"set", b"hash"]
    two = redisca.inspect(Two)
    keys, args, types = call(Two.a >= 1, Two.b <= 5, mapper=two, limit=10)
    assert keys == [b"{ptwo}#r:a", b"{ptwo}#r:b"]  # a orders, b is a term
    assert args == [1, b"1.0", 0, b"+inf", 1, b"", b"", b"", 1, b"r", b"-inf", 0, b"5.0", 0]


def test_compile_two_bounds_of_one_field_narrow() -> None:
    for conds in ((User.age <= 30, User.age < 30), (User.age < 30, User.age <= 30)):
        assert call(*conds)[1][:5] == [1, b"-inf", 0, b"30.0", 1]
    for conds in ((User.age >= 30, User.age > 30), (User.age > 30, User.age >= 30)):
        assert call(*conds)[1][:5] == [1, b"30.0", 1, b"+inf", 1]
    assert call(User.age >= 18, User.age < 65, User.age.between(10, 70))[1][:5] == [
        1, b"18.0", 0, b"65.0", 1,
    ]  # fmt: skip


def test_compile_exact_bounds() -> None:
    # an int no double holds: the nearest double on the side the bound lets through
    low, high = call(User.age == 2**53 + 1)[1][1], call(User.age == 2**53 + 1)[1][3]
    assert float(low) > float(high)  # an empty window: no stored int equals it
    assert call(User.age == 2**53)[1][:5] == [1, b"9007199254740992.0", 0, b"9007199254740992.0", 0]


def test_an_in_doubt_insert_absent_now_is_inserted_only_if_its_guard_did_not_move() -> None:
    """The lost attempt read the guard counter; had it been applied, it would have moved it."""
    c = change(INSERT, email=b"a@b.c")
    plan = CommitPlan((c,))
    assert collect_reads(plan).counters == [guard(b"pusr", "u1")]  # read by every insert
    c.in_doubt, c.guard_seen = True, (b"7",)
    unmoved = Observed(exists={KEY: False}, guards={guard(b"pusr", "u1"): b"7"})
    assert emit(plan, unmoved)[0] == (b"HSET", KEY, b"eml", b"a@b.c")
    for now in (b"8", None):  # moved, or gone: applied then deleted, or not applied
        moved = Observed(exists={KEY: False}, guards={guard(b"pusr", "u1"): now})
        with pytest.raises(InDoubtInsert, match=r"{pusr}:u1: .*unknown outcome"):
            emit(plan, moved)
    c.guard_seen = None  # the lost attempt's read never came back
    with pytest.raises(InDoubtInsert):
        emit(plan, unmoved)


# -- grouping: one variadic command per index key ---------------------------------


def _users_plan(*idents: str, **kw: Any) -> tuple[Session, CommitPlan]:
    s = offline()
    for ident in idents:
        s.add(User(email=f"{ident}@x.com", age=30, city="paris", id=ident, **kw))
    return s, plan_of(s)


def test_index_writes_of_a_commit_are_one_command_per_key() -> None:
    _, plan = _users_plan("u1", "u2", "u3")
    reads = collect_reads(plan)
    exists = dict.fromkeys(reads.exists, False)
    observed = Observed(exists=exists, owners=dict.fromkeys(reads.owners))
    commands = emit(plan, observed)
    names = [(c[0], c[1]) for c in commands]
    assert len(names) == len(set(names)), "a command repeated on one key"
    by_key = {(c[0], c[1]): c[2:] for c in commands}
    assert (b"ZADD", b"{pusr}#all") not in by_key  # pusr#r:age holds the ids
    assert by_key[(b"ZADD", b"{pusr}#r:age")] == (b"30.0", "u1", b"30.0", "u2", b"30.0", "u3")
    assert by_key[(b"SADD", b"{pusr}#i:city:paris")] == ("u1", "u2", "u3")
    # every claim lands in its stripe, whichever stripes the three addresses share
    claimed = [
        (key, *args[i : i + 2])
        for (name, key), args in by_key.items()
        if name == b"HSET" and key.startswith(b"{pusr}#u:")
        for i in range(0, len(args), 2)
    ]
    assert sorted(claimed) == sorted((*uk(f"{i}@x.com"), i) for i in ("u1", "u2", "u3"))
    assert sum(1 for c in commands if c[0] == b"HSET" and c[1].startswith(b"{pusr}:")) == 3


def test_deletes_are_one_del_and_removals_precede_additions() -> None:
    s, _ = _users_plan("u1", "u2")
    committed(s)
    u1, u2 = s.get(User, "u1"), s.get(User, "u2")  # from the identity map: no I/O
    s.delete(u1)
    u2.email = "u1@x.com"  # takes the address u1 releases, in the same commit
    u2.city = "rome"
    plan = plan_of(s)
    reads = collect_reads(plan)
    fields = {
        b"{pusr}:u1": {b"eml": b"u1@x.com", b"age": b"30", b"city": b"paris", b"company": None},
        b"{pusr}:u2": {b"eml": b"u2@x.com", b"city": b"paris"},
    }
    owners = {uk("u1@x.com"): "u1", uk("u2@x.com"): "u2"}
    observed = Observed(exists=dict.fromkeys(reads.exists, True), fields=fields, owners=owners)
    commands = emit(plan, observed)
    assert commands[0] == (b"DEL", b"{pusr}:u1")
    position = {(c[0], c[1]): i for i, c in enumerate(commands)}
    stripe = uk("u1@x.com")[0]
    assert position[(b"HDEL", stripe)] < position[(b"HSET", stripe)]  # released, then taken
    assert position[(b"SREM", b"{pusr}#i:city:paris")] < position[(b"SADD", b"{pusr}#i:city:rome")]
    srem = commands[position[(b"SREM", b"{pusr}#i:city:paris")]]
    assert sorted(srem[2:]) == ["u1", "u2"]  # both leave paris in one command


def test_plain_updates_are_one_guarded_call() -> None:
    s, _ = _users_plan("u1", "u2", "u3", nickname="n")
    committed(s)
    for ident in ("u1", "u2"):
        s.get(User, ident).nickname = ident.upper()
    s.get(User, "u3").nickname = None  # a removed field
    commands = emit(plan_of(s), Observed())
    (call,) = commands
    assert call[:6] == (b"EVAL", GUARDED_WRITE, 3, b"{pusr}:u1", b"{pusr}:u2", b"{pusr}:u3")
    assert call[6:] == (1, 0, b"nickname", b"U1", 1, 0, b"nickname", b"U2", 0, 1, b"nickname")
    assert vanished(commands, [[2]]) == {b"{pusr}:u2"}

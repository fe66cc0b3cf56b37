"""The commit protocol: round trips per commit, uniqueness, nothing written on failure.

Round trips are counted at the connection (``counted``); "nothing written" is
checked by comparing a dump of the whole keyspace before and after.
"""

from __future__ import annotations

import attrs
import pytest
import redis
from helpers import (
    FENCE_READ,
    Counted,
    as_str,
    assert_indexes_consistent,
    dump_keyspace,
    guard_key,
    stripe_key,
    transactions,
    unique_owner,
)
from models import Company, User

import redisca
from redisca import Session

#: Each test runs with the sync Session and with an AsyncSession (conftest: driver).
pytestmark = pytest.mark.usefixtures("driver")

USERS = redisca.inspect(User)
COMPANIES = redisca.inspect(Company)


def consistent(r: redis.Redis) -> None:
    assert_indexes_consistent(r, USERS)
    assert_indexes_consistent(r, COMPANIES)


def persist(r: redis.Redis, *objs: object) -> None:
    s = Session(r)
    s.add_all(objs)
    s.commit()


def owner(r: redis.Redis, email: str) -> str | None:
    return unique_owner(r, "usr", "eml", email.lower())


# -- round trips -------------------------------------------------------------------


def insert_batch(counted: Counted, n: int, tag: str) -> int:
    s = Session(counted.client)
    company = Company(f"company-{tag}")
    s.add_all(User(f"{tag}{i}@x.org", age=i % 150, company=company) for i in range(n))
    counted.reset()
    s.commit()
    return counted.round_trips


def test_round_trips_of_an_insert_do_not_grow_with_the_batch(
    r: redis.Redis, counted: Counted
) -> None:
    one = insert_batch(counted, 1, "one")
    thousand = insert_batch(counted, 1000, "many")
    # per transaction: WATCH + reads, then MULTI/EXEC (a cluster: one per model's slot)
    assert one == thousand == 2 * transactions(User, Company)
    # usr#r:age holds every user (no usr#all: the first range index is the all-ids one)
    assert r.zcard("{usr}#r:age") == 1001 and r.zcard("{co}#all") == 2
    assert not r.exists("{usr}#all")
    assert r.zcard("{usr}#r:age") == 1001
    consistent(r)


@pytest.fixture
def loaded(r: redis.Redis, counted: Counted) -> tuple[Session, User]:
    persist(r, User("a@x.org", age=1, company=Company("acme", id="c1"), id="1"))
    s = Session(counted.client)
    user = s.get(User, "1")
    assert user is not None
    counted.reset()
    return s, user


def test_an_update_touching_no_indexed_field_is_one_round_trip(
    r: redis.Redis, counted: Counted, loaded: tuple[Session, User]
) -> None:
    s, user = loaded
    user.nickname = "nick"
    s.commit()
    assert counted.round_trips == 1
    assert as_str(r.hget("{usr}:1", "nickname")) == "nick"


@pytest.mark.parametrize("change", ["age", "email", "company", "all"])
def test_an_indexed_update_is_two_round_trips(
    r: redis.Redis, counted: Counted, loaded: tuple[Session, User], change: str
) -> None:
    s, user = loaded
    if change in ("age", "all"):
        user.age = 77
    if change in ("email", "all"):
        user.email = "B@x.org"
    if change in ("company", "all"):
        user.company = Company("other", id="c2")
    s.commit()
    changed = (User, Company) if change in ("company", "all") else (User,)  # a new company
    assert counted.round_trips == 2 * transactions(*changed)
    consistent(r)


STRIPE_NAMES = {b"%d" % n for n in range(128)}


def watched_kinds(watches: list[list[bytes]]) -> list[dict[str, int]]:
    """Each WATCH's keys by kind, named as docs/keylayout.rst names them."""
    found = []
    for keys in watches:
        kinds: dict[str, int] = {}
        for key in keys:
            head, _, stripe = key.rpartition(b":")
            if head in (b"{usr}#u:eml", b"{co}#u:name") and stripe in STRIPE_NAMES:
                kind = "unique stripe"
            elif head in (b"{usr}#g", b"{co}#g") and stripe in STRIPE_NAMES:
                kind = "guard"
            elif key in (b"{usr}#x", b"{co}#x"):
                kind = "marker"
            else:
                kind = key.decode(errors="replace")  # anything else is a failure below
            kinds[kind] = kinds.get(kind, 0) + 1
        found.append(kinds)
    return found


def test_watched_keys_do_not_grow_with_the_commit(r: redis.Redis, counted: Counted) -> None:
    """Redis up to 8.x checks each watched key against the connection's list: WATCH of n
    keys costs n² (10k keys 0.8 s, 50k 28 s on Redis 7.0). A commit watches the stripes
    of the unique values it claims and the guard stripes of the entities it reads, 128 of
    each at most, and the markers: counted from the RESP each write holds."""
    n = 10_000
    s = Session(counted.client)
    users = [User(f"W{i}@x.org", age=i % 90, id=f"w{i}") for i in range(n)]
    s.add_all(users)  # ids of its own: each one's existence is read, its guard watched
    s.commit()
    for user in users:
        user.email, user.age = user.email.replace("W", "V"), None  # claims and releases
    s.commit()
    for user in users:
        s.delete(user)
    s.commit()
    found = watched_kinds(counted.watches)
    assert len(found) == 3, found  # one WATCH per commit: no conflict, nothing stale
    insert, update, delete = found
    assert insert == {"unique stripe": 128, "guard": 128, "marker": 1}
    assert update == {"unique stripe": 128, "guard": 128, "marker": 1}
    assert delete == {"guard": 128, "marker": 1}  # releases are read, not watched
    assert r.zcard("{usr}#r:age") == 0 and not r.exists("{usr}#all")
    consistent(r)


def test_a_delete_is_two_round_trips_and_removes_every_index_entry(
    r: redis.Redis, counted: Counted, loaded: tuple[Session, User]
) -> None:
    s, user = loaded
    s.delete(user)
    s.commit()
    assert counted.round_trips == 2
    assert user not in s and user.email == "a@x.org"  # detached, values kept
    # nothing left but the guard counter of its stripe (it counts commits, holds no data)
    assert {as_str(k) for k in r.keys("{usr}*")} == {as_str(guard_key("usr", user.id))}
    consistent(r)


def test_an_update_through_an_unloaded_reference(r: redis.Redis, counted: Counted) -> None:
    persist(r, User("a@x.org", age=1, id="1"))
    s = Session(counted.client)
    stub = s.reference(User, "1")
    stub.email = "b@x.org"  # the owner of the old value is unknown: a third round trip
    s.commit()
    assert counted.round_trips <= 3
    assert owner(r, "b@x.org") == "1" and owner(r, "a@x.org") is None
    consistent(r)


def test_a_commit_with_nothing_pending_is_no_round_trip(
    counted: Counted, loaded: tuple[Session, User]
) -> None:
    s, user = loaded
    s.commit()
    user.age = user.age  # an assignment of the same value changes nothing
    s.commit()
    assert counted.round_trips == 0


def test_round_trips_of_a_mixed_commit_do_not_grow_with_it(
    r: redis.Redis, counted: Counted
) -> None:
    figures = []
    for n in (1, 300):
        r.flushall()
        persist(r, *[User(f"old{i}@x.org", age=i % 9, id=f"u{i}") for i in range(2 * n)])
        s = Session(counted.client)
        for i in range(n):  # through unloaded references: unique owners unknown
            stub = s.reference(User, f"u{i}")
            stub.email, stub.age = f"new{i}@x.org", 100
            s.delete(s.reference(User, f"u{n + i}"))
            s.add(User(f"old{n + i}@x.org", company=Company(f"co{i}")))  # a released value
        counted.reset()
        s.commit()
        figures.append(counted.round_trips)
        assert r.zcard("{usr}#r:age") == 2 * n and r.zcount("{usr}#r:age", 100, 100) == n
        consistent(r)
    assert figures[0] == figures[1] <= 3 * transactions(User, Company)


notes = redisca.Registry()


@notes.mapped
@attrs.define
class Note:
    text: str = ""
    rank: int | None = redisca.Integer(index=True, default=None)
    id: str | None = None


def test_inserts_with_nothing_to_check_are_one_round_trip(r: redis.Redis, counted: Counted) -> None:
    s = Session(counted.client)
    s.add_all(Note(f"n{i}", rank=i) for i in range(50))
    s.commit()  # hexid() ids are unique by construction, no unique field: nothing to watch
    assert counted.round_trips == 1 + FENCE_READ
    counted.reset()
    s.add(Note("mine", id="my-own-id"))
    s.commit()  # an id of your own is checked under WATCH first
    assert counted.round_trips == 2
    with pytest.raises(redisca.IntegrityError):
        s.add(Note("clash", id="my-own-id"))  # in this session already, as another object
    with pytest.raises(redisca.IntegrityError):
        fresh = Session(r)
        fresh.add(Note("clash", id="my-own-id"))
        fresh.commit()  # in Redis already
    assert r.zcard("{note}#r:rank") == 51  # "mine": at +inf
    assert not r.exists("{note}#all")  # the range index holds every id
    assert_indexes_consistent(r, redisca.inspect(Note))


# -- unique values -----------------------------------------------------------------


def test_unique_violation_reports_and_writes_nothing(r: redis.Redis, counted: Counted) -> None:
    persist(r, User("taken@x.org", id="owner"))
    before = dump_keyspace(r)
    s = Session(counted.client)
    company = Company("newco")
    user = User("TAKEN@X.org", age=3, company=company)  # uniqueness ignores case
    s.add(user)
    with pytest.raises(redisca.UniqueViolation) as info:
        s.commit()
    error = info.value
    assert isinstance(error, redisca.IntegrityError)
    assert (error.field, error.value, error.owner) == ("email", "TAKEN@X.org", "owner")
    assert dump_keyspace(r) == before
    assert user in s.new and company in s.new  # still pending
    user.email = "free@x.org"
    s.commit()
    assert owner(r, "free@x.org") == user.id and owner(r, "taken@x.org") == "owner"
    consistent(r)


def test_unique_violation_on_update_keeps_the_change_pending(r: redis.Redis) -> None:
    persist(r, User("a@x.org", id="1"), User("b@x.org", age=2, id="2"))
    before = dump_keyspace(r)
    s = Session(r)
    user = s.get(User, "2")
    assert user is not None
    user.email, user.age = "A@x.org", 9
    with pytest.raises(redisca.UniqueViolation) as info:
        s.commit()
    assert info.value.owner == "1"
    assert dump_keyspace(r) == before and user in s.dirty
    user.email = "c@x.org"
    s.commit()
    assert owner(r, "c@x.org") == "2" and owner(r, "b@x.org") is None
    assert r.zscore("{usr}#r:age", "2") == 9
    consistent(r)


def test_two_new_objects_claiming_one_value(r: redis.Redis) -> None:
    s = Session(r)
    s.add_all([User("same@x.org"), User("Same@x.org")])
    with pytest.raises(redisca.UniqueViolation):
        s.commit()
    assert dump_keyspace(r) == {}


def test_string_uniqueness_is_case_sensitive(r: redis.Redis) -> None:
    persist(r, Company("Acme"), Company("acme"))
    assert r.zcard("{co}#all") == 2
    consistent(r)


def test_swapping_two_unique_values_in_one_commit(r: redis.Redis) -> None:
    persist(r, User("a@x.org", id="1"), User("b@x.org", id="2"))
    s = Session(r)
    one, two = s.get_many(User, ["1", "2"])
    assert one is not None and two is not None
    one.email, two.email = two.email, one.email
    s.commit()
    assert owner(r, "a@x.org") == "2" and owner(r, "b@x.org") == "1"
    consistent(r)


def test_a_delete_releases_its_unique_value(r: redis.Redis) -> None:
    persist(r, User("a@x.org", age=4, company=Company("acme", id="c1"), id="1"))
    s = Session(r)
    s.delete(s.reference(User, "1"))  # not even loaded: values come from Redis
    s.commit()
    assert owner(r, "a@x.org") is None
    consistent(r)
    persist(r, User("A@x.org", id="2"))
    assert owner(r, "a@x.org") == "2"


def test_a_delete_and_a_new_claim_of_its_value_in_one_commit(r: redis.Redis) -> None:
    persist(r, User("a@x.org", id="1"))
    s = Session(r)
    s.delete(s.get(User, "1"))
    s.add(User("a@x.org", id="2"))
    s.commit()
    assert owner(r, "a@x.org") == "2" and not r.exists("{usr}:1")
    consistent(r)


def test_changing_email_releases_the_old_value(r: redis.Redis) -> None:
    persist(r, User("a@x.org", id="1"))
    s = Session(r)
    user = s.get(User, "1")
    assert user is not None
    user.email = "b@x.org"
    s.commit()
    assert owner(r, "a@x.org") is None and owner(r, "b@x.org") == "1"
    persist(r, User("a@x.org", id="2"))
    assert owner(r, "a@x.org") == "2"
    consistent(r)


def test_a_release_never_removes_a_value_another_entity_owns(r: redis.Redis) -> None:
    """A release is checked on the server (the stripe must still name the releasing
    entity), not read first: with the stripe naming another id (drift that ``check``
    reports), deleting or renaming the entity leaves that claim alone."""
    persist(r, User("a@x.org", id="1"), User("b@x.org", id="2"))
    for value in ("a@x.org", "b@x.org"):
        r.hset(stripe_key("usr", "eml", value), value, "9")
    s = Session(r)
    s.delete(s.reference(User, "1"))  # unloaded: its email comes from Redis
    two = s.get(User, "2")
    assert two is not None
    two.email = "c@x.org"
    s.commit()
    assert owner(r, "a@x.org") == "9" and owner(r, "b@x.org") == "9"
    assert owner(r, "c@x.org") == "2" and not r.exists("{usr}:1")


def test_changing_only_the_case_of_an_email_keeps_its_claim(r: redis.Redis) -> None:
    persist(r, User("a@x.org", id="1"))
    s = Session(r)
    user = s.get(User, "1")
    assert user is not None
    user.email = "A@X.org"
    s.commit()
    assert owner(r, "a@x.org") == "1" and as_str(r.hget("{usr}:1", "eml")) == "A@X.org"
    other = Session(r)
    other.add(User("a@X.ORG"))
    with pytest.raises(redisca.UniqueViolation):
        other.commit()
    consistent(r)


def test_clearing_an_indexed_reference(r: redis.Redis) -> None:
    persist(r, Company("acme", id="c1"), User("a@x.org", company=Company("b", id="c2"), id="1"))
    s = Session(r)
    user = s.get(User, "1")
    assert user is not None
    user.company = None
    s.commit()
    assert "company" not in {as_str(k) for k in r.hkeys("{usr}:1")}
    consistent(r)


# -- validation first -------------------------------------------------------------------


def test_an_invalid_pending_object_fails_before_any_round_trip(
    r: redis.Redis, counted: Counted
) -> None:
    s = Session(counted.client)
    company = Company("acme")
    s.add_all([User(f"u{i}@x.org", company=company) for i in range(10)])
    company.id = None  # the users now refer to an entity without an id
    counted.reset()
    with pytest.raises(redisca.RediscaError):
        s.commit()
    assert counted.round_trips == 0
    assert dump_keyspace(r) == {}


def test_an_id_changed_after_add_fails_before_any_round_trip(
    r: redis.Redis, counted: Counted
) -> None:
    s = Session(counted.client)
    good, bad = User("a@x.org"), User("b@x.org")
    s.add_all([good, bad])
    bad.id = "another"
    counted.reset()
    with pytest.raises(redisca.InvalidRequestError):
        s.commit()
    assert counted.round_trips == 0
    assert dump_keyspace(r) == {}


def test_a_value_assigned_out_of_range_never_reaches_the_session(r: redis.Redis) -> None:
    s = Session(r)
    user = User("a@x.org", age=3)
    s.add(user)
    with pytest.raises(redisca.ValidationError):
        user.age = 201
    s.commit()
    assert as_str(r.hget(f"{{usr}}:{user.id}", "age")) == "3"

"""Behaviours users rely on that a mutation run of the suite found unpinned (issue 15).

Each test here failed against a deliberately broken copy of the code it pins (what
was broken is named in the test's docstring); they use the public API only, so they
keep pinning the behaviour when the code behind it is rewritten.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import redis
from helpers import Counted, as_str, dump_keyspace
from models import Company, User

import redisca
from redisca import MD5Pass, Registry, Session


def persist(r: redis.Redis, *objs: object) -> None:
    with Session(r) as s:
        s.add_all(objs)
        s.commit()


# -- the update path's identity check ---------------------------------------------------


@pytest.mark.parametrize("also_changed", [False, True], ids=["id-only", "id-and-a-field"])
def test_renaming_a_loaded_instance_is_refused_before_any_round_trip(
    r: redis.Redis, counted: Counted, also_changed: bool
) -> None:
    """Pins unitofwork._update's identity check (the insert path has its own test in
    test_commit.py). Without it the rename with a changed field wrote a partial hash at
    the new id; with the check moved after the no-change test, a bare rename was ignored."""
    persist(r, User("a@x.org", id="a"))
    before = dump_keyspace(r)
    s = Session(counted.client)
    user = s.get(User, "a")
    assert user is not None
    user.id = "b"
    if also_changed:
        user.nickname = "nick"
    counted.reset()
    with pytest.raises(redisca.InvalidRequestError, match="id cannot change"):
        s.commit()
    assert counted.round_trips == 0
    assert dump_keyspace(r) == before
    user.id = "a"  # put back, the same session commits what it held
    s.commit()
    assert r.exists("{usr}:b") == 0
    if also_changed:
        assert as_str(r.hget("{usr}:a", "nickname")) == "nick"


# -- the commit-time save cascade -------------------------------------------------------


@pytest.mark.parametrize("holder", ["pending", "loaded"])
def test_a_reference_assigned_after_its_holder_was_added_is_saved_at_commit(
    r: redis.Redis, holder: str
) -> None:
    """Pins unitofwork.cascade (commit time): session.add's cascade ran before the
    reference existed. With the commit-time cascade removed the commit raised
    ValidationError ("refers to an entity that has no id yet")."""
    s = Session(r)
    if holder == "pending":
        user = User("a@x.org")
        s.add(user)
    else:
        persist(r, User("a@x.org", id="a"))
        loaded = s.get(User, "a")
        assert loaded is not None
        user = loaded
    acme = Company("acme")
    user.company = acme
    assert acme not in s  # only the commit can find it
    s.commit()
    assert acme in s and acme.id is not None
    with Session(r) as fresh:
        again = fresh.get(User, user.id)  # type: ignore[arg-type]
        assert again is not None and again.company is not None
        assert again.company.id == acme.id and again.company.name == "acme"
        assert fresh.query(Company).filter(Company.name == "acme").ids() == [acme.id]


# -- two bounds of one field, same value, different inclusivity -------------------------

AGES = [28, 29, 30, 31, 32]

SAME_VALUE_BOUNDS: list[tuple[str, Callable[[], list[Any]], list[int]]] = [
    ("<= then <", lambda: [User.age <= 30, User.age < 30], [28, 29]),
    ("< then <=", lambda: [User.age < 30, User.age <= 30], [28, 29]),
    (">= then >", lambda: [User.age >= 30, User.age > 30], [31, 32]),
    ("> then >=", lambda: [User.age > 30, User.age >= 30], [31, 32]),
    ("between then >", lambda: [User.age.between(30, 31), User.age > 30], [31]),
    ("< then between", lambda: [User.age < 30, User.age.between(29, 30)], [29]),
]


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [(conds, ages) for _, conds, ages in SAME_VALUE_BOUNDS],
    ids=[name for name, _, _ in SAME_VALUE_BOUNDS],
)
def test_the_exclusive_of_two_bounds_at_one_value_wins_in_either_order(
    r: redis.Redis, conditions: Callable[[], list[Any]], expected: list[int]
) -> None:
    """Pins querycompile.Range.narrow's tie-break on inclusivity: comparing scores only
    (keeping the first of two equal bounds) returned age 30 for ``<= 30, < 30``."""
    persist(r, *(User(f"{age}@x.org", age=age, id=f"age{age}") for age in AGES))
    want = sorted(f"age{age}" for age in expected)
    with Session(r) as s:
        together = s.query(User).filter(*conditions())
        first, second = conditions()
        chained = s.query(User).filter(first).filter(second)
        for query in (together, chained):
            assert sorted(query.ids()) == want
            assert query.count() == len(want)
            assert sorted(u.age for u in query.all()) == expected  # type: ignore[type-var]


# -- a pooled connection after a non-redisca exception between two replies --------------


def interrupting_connection() -> tuple[type[redis.Connection], Callable[[int], None]]:
    """A connection class whose n-th ``read_response`` after arming raises
    KeyboardInterrupt before reading (as a Ctrl-C between two replies does), and the
    function that arms it. The replies not yet read stay in the socket."""
    remaining: list[int] = []

    class Interrupting(redis.Connection):
        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            if remaining:
                remaining[0] -= 1
                if remaining[0] == 0:
                    remaining.clear()
                    raise KeyboardInterrupt
            return super().read_response(*args, **kwargs)

    def arm(nth: int) -> None:
        remaining[:] = [nth]

    return Interrupting, arm


@pytest.mark.parametrize("single", [False, True], ids=["pooled", "single-connection"])
def test_a_connection_interrupted_between_replies_never_serves_stale_replies(
    r: redis.Redis, make_client: Callable[..., redis.Redis], single: bool
) -> None:
    """Pins executor.connection.__exit__: a connection left by any exception but redisca's
    own refusals is disconnected (and then goes back to the pool). With KeyboardInterrupt
    let through as is, the next ``get("c")`` returned ``b``'s hash under id ``c``.

    redis-py's pool checks a connection for unread data at checkout, but not over RESP3
    (redis-py 8 skips the check when maintenance notifications are on) nor for a
    ``single_connection_client``; those two cases fail without the disconnect."""
    kwargs = r.connection_pool.connection_kwargs
    connection_class, arm = interrupting_connection()
    client = make_client(
        connection_class=connection_class,
        single_connection_client=single,
        decode_responses=kwargs.get("decode_responses", False),
        protocol=kwargs.get("protocol"),
    )
    persist(r, *(User(f"{name}@x.org", nickname=name, id=name) for name in "abc"))
    client.ping()  # the connection exists (handshake done) before the interrupt
    arm(2)  # reply 1 (a's HGETALL) read, replies 2 and 3 still in the socket
    with pytest.raises(KeyboardInterrupt):
        Session(client).get_many(User, ["a", "b", "c"])
    if not single:
        assert len(client.connection_pool._available_connections) == 1  # released
    with Session(client) as s:
        c = s.get(User, "c")
        assert c is not None and (c.email, c.nickname) == ("c@x.org", "c")
        found = s.get_many(User, ["b", "a"])
        assert [(u.id, u.nickname) for u in found if u is not None] == [("b", "b"), ("a", "a")]


# -- MD5Pass: the comparison in constant time --------------------------------------------


def test_md5pass_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """As test_security's scrypt test: hmac.compare_digest is observed, not replaced.
    Pins MD5Hash.verify; an ``==`` comparison there made no call."""
    with pytest.warns(DeprecationWarning, match="MD5Pass"):

        @Registry().mapped(prefix="md5")
        @attrs.define
        class Legacy:
            password: str = MD5Pass()
            id: str | None = None

    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def observed(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", observed)
    stored = Legacy(password="pw").password
    assert stored == hashlib.md5(b"pw").hexdigest()
    assert stored.verify("pw") and not stored.verify("pW")  # type: ignore[attr-defined]
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)

"""Concurrent writers: processes racing for a unique value, writes between load and
commit, WATCH conflicts at a real interleaving point, threads hammering indexes.

No mocks: every conflicting write is a real write by a second client, and
every check reads the server.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from helpers import (
    Counted,
    as_str,
    assert_indexes_consistent,
    connect,
    connection_kwargs,
    dump_keyspace,
    guard_key,
    stripe_key,
    unique_owner,
    with_kwargs,
)
from models import Company, User

import redisca
from redisca import Session

#: Each test runs with the sync Session and with an AsyncSession (conftest: driver).
pytestmark = pytest.mark.usefixtures("driver")

USERS = redisca.inspect(User)
COMPANIES = redisca.inspect(Company)


def mode(r: redis.Redis) -> dict[str, Any]:
    kwargs = connection_kwargs(r)
    return {
        "decode_responses": kwargs.get("decode_responses", False),
        "protocol": kwargs["protocol"],
    }


def consistent(r: redis.Redis) -> None:
    assert_indexes_consistent(r, USERS)
    assert_indexes_consistent(r, COMPANIES)


def owner(r: redis.Redis, email: str) -> str | None:
    value = r.hget(stripe_key("usr", "eml", email.lower()), email.lower())
    return None if value is None else as_str(value)


def mentions(r: redis.Redis, ident: str) -> list[str]:
    """Every key that holds ``ident`` as a set/zset member or a string value."""
    found = []
    for key, (kind, value) in dump_keyspace(r).items():
        members = value if kind in ("set", "zset") else {value} if kind == "string" else ()
        if ident.encode() in members or key.endswith(b":" + ident.encode()):
            found.append(key.decode())
    return found


# -- (a) two processes claim one unique value ------------------------------------------

ROUNDS = 20


def race_worker(url: str, kwargs: dict[str, Any], worker: int, barrier: Any, out: Any) -> None:
    client = connect(url, **kwargs)  # on the cluster in cluster mode (the env is inherited)
    for n in range(ROUNDS):
        s = Session(client)
        company = Company(f"co-{n}-{worker}")
        user = User(f"race{n}@x.org", age=worker, company=company)
        s.add(user)
        barrier.wait(timeout=60)
        try:
            s.commit()
            out.put((n, worker, "won", user.id, company.id, None))
        except redisca.UniqueViolation as exc:
            out.put((n, worker, "lost", user.id, company.id, exc.owner))
        except Exception as exc:  # reported, so the test fails with it
            out.put((n, worker, "error", repr(exc), None, None))
    client.close()


def test_two_processes_claiming_one_email(r: redis.Redis, redis_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=race_worker, args=(redis_url, mode(r), w, barrier, out))
        for w in range(2)
    ]
    for process in workers:
        process.start()
    try:
        results = [out.get(timeout=120) for _ in range(2 * ROUNDS)]
    finally:
        for process in workers:
            process.join(timeout=60)
    assert [p.exitcode for p in workers] == [0, 0]
    for n in range(ROUNDS):
        rows = sorted((row for row in results if row[0] == n), key=lambda row: row[2])
        assert [row[2] for row in rows] == ["lost", "won"], rows
        lost, won = rows
        assert lost[5] == won[3]  # the violation names the winner
        assert owner(r, f"race{n}@x.org") == won[3]
        assert r.exists(f"{{usr}}:{won[3]}", f"{{co}}:{won[4]}") == 2
        assert mentions(r, lost[3]) == [] and mentions(r, lost[4]) == []
        assert unique_owner(r, "co", "name", f"co-{n}-{lost[1]}") is None
    assert r.zcard("{usr}#r:age") == ROUNDS
    consistent(r)


# -- (b) another client changes indexed fields between our load and our commit ------------


def seed(r: redis.Redis) -> None:
    s = Session(r)
    s.add_all([Company(name, id=name) for name in ("c1", "c2", "c3")])
    s.add(User("orig@x.org", age=30, company=s.get(Company, "c1"), id="1"))
    s.commit()


@pytest.mark.parametrize("ours", ["age", "email", "company", "all", "nickname"])
def test_a_write_between_load_and_commit(r: redis.Redis, counted: Counted, ours: str) -> None:
    seed(r)
    s = Session(counted.client)
    user = s.get(User, "1")
    assert user is not None and user.company is not None and user.company.name == "c1"
    theirs_session = Session(r)
    theirs = theirs_session.get(User, "1")
    assert theirs is not None
    theirs.age, theirs.email = 40, "theirs@x.org"
    theirs.company = theirs_session.reference(Company, "c2")
    theirs_session.commit()
    if ours in ("age", "all"):
        user.age = 50
    if ours in ("email", "all"):
        user.email = "ours@x.org"
    if ours in ("company", "all"):
        user.company = s.reference(Company, "c3")
    if ours == "nickname":
        user.nickname = "nick"
    counted.reset()
    s.commit()
    assert counted.round_trips <= 3
    consistent(r)
    row = {as_str(k): as_str(v) for k, v in r.hgetall("{usr}:1").items()}
    mine = ours == "all"
    assert row["age"] == ("50" if mine or ours == "age" else "40")
    assert row["eml"] == ("ours@x.org" if mine or ours == "email" else "theirs@x.org")
    assert row["company"] == ("c3" if mine or ours == "company" else "c2")
    assert owner(r, row["eml"]) == "1" and owner(r, "orig@x.org") is None
    if row["eml"] == "ours@x.org":
        assert owner(r, "theirs@x.org") is None


def test_a_delete_between_load_and_commit(r: redis.Redis) -> None:
    seed(r)
    s = Session(r)
    user = s.get(User, "1")
    assert user is not None
    theirs = Session(r)
    theirs.delete(theirs.get(User, "1"))
    theirs.commit()
    before = dump_keyspace(r)
    user.age = 1
    with pytest.raises(redisca.StaleDataError):
        s.commit()
    assert dump_keyspace(r) == before
    consistent(r)


# -- (c) a WATCH conflict at the real interleaving point ---------------------------------------

MULTI = b"*1\r\n$5\r\nMULTI\r\n"


class InterleavingConnection(redis.Connection):
    """Runs ``hooks["before_exec"]`` just before a ``MULTI`` block is sent.

    The WATCH and reads have gone out and come back by then; a write made by
    the hook is a real concurrent write by another client.
    """

    def __init__(self, *args: Any, hooks: dict[str, Any], **kwargs: Any) -> None:
        self.hooks = hooks
        super().__init__(*args, **kwargs)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        data = command if isinstance(command, bytes) else b"".join(command)
        if data.startswith(MULTI):
            self.hooks["attempts"] += 1
            hook = self.hooks.get("before_exec")
            if hook is not None:
                hook(self.hooks["attempts"])
        super().send_packed_command(command, check_health)


@pytest.fixture
def interleaved(r: redis.Redis, redis_url: str) -> Iterator[tuple[redis.Redis, dict[str, Any]]]:
    hooks: dict[str, Any] = {"attempts": 0}
    client = connect(
        redis_url, connection_class=with_kwargs(InterleavingConnection, hooks=hooks), **mode(r)
    )
    yield client, hooks
    client.close()


def other_sets_age(r: redis.Redis, age: int) -> None:
    s = Session(r)
    user = s.get(User, "1")
    assert user is not None
    user.age = age
    s.commit()


def conflicting(r: redis.Redis, on_attempts: Callable[[int], bool]) -> Callable[[int], None]:
    def hook(attempt: int) -> None:
        if on_attempts(attempt):
            other_sets_age(r, 100 + attempt)

    return hook


def test_a_watch_conflict_is_retried(
    r: redis.Redis, interleaved: tuple[redis.Redis, dict[str, Any]]
) -> None:
    seed(r)
    client, hooks = interleaved
    s = Session(client)
    user = s.get(User, "1")
    assert user is not None
    hooks["before_exec"] = conflicting(r, lambda attempt: attempt == 1)
    user.age = 7
    s.commit()
    assert hooks["attempts"] == 2  # the first EXEC was refused, the second went through
    assert r.zscore("{usr}#r:age", "1") == 7 and as_str(r.hget("{usr}:1", "age")) == "7"
    consistent(r)


def test_a_commit_on_another_entity_of_the_guard_stripe_is_a_retry_not_an_error(
    r: redis.Redis, interleaved: tuple[redis.Redis, dict[str, Any]]
) -> None:
    """Commits watch guard stripes, not entity hashes: an indexed change to another entity
    of the same stripe (ids "1" and "240": crc32 % 128 == 55 for both) fails our EXEC
    too. It costs a retry, never a wrong result."""
    assert guard_key("usr", "1") == guard_key("usr", "240") == b"{usr}#g:55"
    seed(r)
    with Session(r) as other:
        other.add(User("neighbour@x.org", age=1, id="240"))
        other.commit()
    client, hooks = interleaved
    s = Session(client)
    user = s.get(User, "1")
    assert user is not None

    def neighbour_moves(attempt: int) -> None:
        if attempt == 1:
            with Session(r) as other:
                neighbour = other.get(User, "240")
                assert neighbour is not None
                neighbour.age = 2
                other.commit()

    hooks["before_exec"] = neighbour_moves
    user.age = 7
    s.commit()
    assert hooks["attempts"] == 2  # a false conflict: read again, committed
    assert r.zscore("{usr}#r:age", "1") == 7 and r.zscore("{usr}#r:age", "240") == 2
    consistent(r)


def test_a_watch_conflict_without_retries(
    r: redis.Redis, interleaved: tuple[redis.Redis, dict[str, Any]]
) -> None:
    seed(r)
    client, hooks = interleaved
    s = Session(client, retries=0)
    user = s.get(User, "1")
    assert user is not None
    after_theirs: list[dict[bytes, Any]] = []

    def hook(attempt: int) -> None:
        other_sets_age(r, 99)
        after_theirs.append(dump_keyspace(r))

    hooks["before_exec"] = hook
    user.age, user.email = 7, "new@x.org"
    with pytest.raises(redisca.ConflictError):
        s.commit()
    assert hooks["attempts"] == 1
    assert dump_keyspace(r) == after_theirs[0]  # ours wrote nothing
    assert user in s.dirty
    hooks["before_exec"] = None
    s.commit()  # a retry by hand
    assert r.zscore("{usr}#r:age", "1") == 7 and owner(r, "new@x.org") == "1"
    consistent(r)


def test_a_watch_conflict_every_time(
    r: redis.Redis, interleaved: tuple[redis.Redis, dict[str, Any]]
) -> None:
    seed(r)
    client, hooks = interleaved
    s = Session(client, retries=2)
    user = s.get(User, "1")
    assert user is not None
    hooks["before_exec"] = conflicting(r, lambda attempt: True)
    user.age = 7
    with pytest.raises(redisca.ConflictError):
        s.commit()
    assert hooks["attempts"] == 3
    assert as_str(r.hget("{usr}:1", "age")) == "103"  # the last write was theirs
    consistent(r)


def test_a_unique_value_claimed_between_read_and_exec(
    r: redis.Redis, interleaved: tuple[redis.Redis, dict[str, Any]]
) -> None:
    client, hooks = interleaved
    s = Session(client)
    mine = User("contested@x.org", company=Company("mine"))
    s.add(mine)

    def hook(attempt: int) -> None:
        if attempt == 1:
            other = Session(r)
            other.add(User("Contested@x.org", id="theirs"))
            other.commit()

    hooks["before_exec"] = hook
    with pytest.raises(redisca.UniqueViolation) as info:
        s.commit()
    assert info.value.owner == "theirs" and hooks["attempts"] == 1
    assert mentions(r, mine.id) == []  # type: ignore[arg-type]
    assert unique_owner(r, "co", "name", "mine") is None
    consistent(r)


# -- (d) threads ----------------------------------------------------------------------


def hammer(client: redis.Redis, seed_: int, rounds: int, tally: queue.Queue[str]) -> None:
    rnd = random.Random(seed_)
    for _ in range(rounds):
        s = Session(client, retries=20)
        ident = str(rnd.randrange(12))
        try:
            user = s.get(User, ident)
            if user is None:
                s.add(User(f"e{rnd.randrange(16)}@x.org", age=rnd.randrange(5), id=ident))
            elif rnd.random() < 0.15:
                s.delete(user)
            else:
                user.age = rnd.randrange(5)
                user.company = rnd.choice([None, s.reference(Company, f"c{rnd.randrange(1, 4)}")])
                if rnd.random() < 0.5:
                    user.email = f"e{rnd.randrange(16)}@x.org"
            s.commit()
            tally.put("ok")
        except (redisca.IntegrityError, redisca.ConflictError, redisca.NotFound) as exc:
            tally.put(type(exc).__name__)
        except Exception as exc:
            tally.put(f"unexpected {exc!r}")


def test_threads_updating_overlapping_entities(r: redis.Redis, make_client: Any) -> None:
    seed(r)
    tally: queue.Queue[str] = queue.Queue()
    threads = [
        threading.Thread(target=hammer, args=(make_client(**mode(r)), n, 40, tally))
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    outcomes = [tally.get_nowait() for _ in range(tally.qsize())]
    assert len(outcomes) == 8 * 40
    assert not [o for o in outcomes if o.startswith("unexpected")], outcomes
    assert outcomes.count("ok") > len(outcomes) // 3, outcomes
    consistent(r)

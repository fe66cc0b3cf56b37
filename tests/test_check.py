"""check: every kind of problem, made by corrupting data with a raw client, is found and
named (kind, model, key, field); clean data is ok; commits running during a check never
make it report a problem that is not there; keys are found with SCAN, never KEYS.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import attrs
import pytest
import redis
from helpers import as_str, guard_key, sent_commands, stripe_key
from models import Company, User, registry

import redisca
from redisca import Registry, Session
from redisca.maintenance import KINDS, MaintenanceError, Problem, check, migrate, stats

# -- data --------------------------------------------------------------------------


def seed(r: redis.Redis, n: int = 12) -> None:
    with Session(r) as s:
        acme = Company("acme", id="c1")
        s.add_all(User(f"u{i}@x.org", age=i, company=acme, id=str(i)) for i in range(n))
        s.commit()


def S(email: str, prefix: str = "usr", field: str = "eml") -> str:
    """The unique stripe of a value, as docs/keylayout.rst names it."""
    return as_str(stripe_key(prefix, field, email))


def kinds(problems: list[Problem]) -> list[tuple[str, str, str | None]]:
    return sorted((p.kind, p.key, p.field) for p in problems)


def test_clean_data_is_ok(r: redis.Redis) -> None:
    seed(r)
    report = check(registry, r)
    assert report.ok and report.problems == []
    by_model = {m.model: m for m in report.models}
    assert by_model["User"].entities == 12 and by_model["Company"].entities == 1
    # usr#r:age (which holds every id: no usr#all), usr#i:company:c1, the stripes of 12
    # emails and the guards of 12 ids; co#all, co's stripe and its guard
    stripes = len({S(f"u{i}@x.org") for i in range(12)})
    guards = len({guard_key("usr", str(i)) for i in range(12)})
    assert by_model["User"].index_keys == 2 + stripes + guards
    assert by_model["Company"].index_keys == 3
    assert not by_model["User"].reindexing
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True


def test_an_empty_database_is_ok(r: redis.Redis) -> None:
    report = check(registry, r)
    assert report.ok and [m.entities for m in report.models] == [0, 0]


# -- every kind of problem -------------------------------------------------------------

Corruption = Callable[[redis.Redis], None]

CASES: list[tuple[str, Corruption, list[tuple[str, str, str | None]]]] = [
    (
        "an entity missing from its equality index",
        lambda r: r.srem("{usr}#i:company:c1", "3"),
        [("missing_entry", "{usr}#i:company:c1", "company")],
    ),
    (
        "an entity missing from its range index",
        lambda r: r.zrem("{usr}#r:age", "3"),
        [("missing_entry", "{usr}#r:age", "age")],
    ),
    (
        "an equality entry whose entity holds another value",
        lambda r: r.sadd("{usr}#i:company:c2", "4"),
        [("orphan_entry", "{usr}#i:company:c2", "company")],
    ),
    (
        "a range entry of an entity that does not exist",
        lambda r: r.zadd("{usr}#r:age", {"nobody": 5}),
        [("orphan_entry", "{usr}#r:age", "age")],
    ),
    (
        "a range entry with the wrong score",
        lambda r: r.zadd("{usr}#r:age", {"5": 99}),
        [("wrong_score", "{usr}#r:age", "age")],
    ),
    (
        "an entity without a value missing from its range index (at +inf)",
        lambda r: (r.hdel("{usr}:3", "age"), r.zrem("{usr}#r:age", "3")),
        [("missing_entry", "{usr}#r:age", "age")],
    ),
    (  # Company has no range index: its ids are in co#all (User's, in usr#r:age)
        "an entity missing from the all-ids set",
        lambda r: r.zrem("{co}#all", "c1"),
        [("missing_from_all", "{co}#all", None)],
    ),
    (
        "an id in the all-ids set without a hash",
        lambda r: r.zadd("{co}#all", {"ghost": 0}),
        [("stale_id", "{co}#all", None)],
    ),
    (
        "an all-ids set on a model whose range index holds the ids",
        lambda r: r.zadd("{usr}#all", {"1": 0, "2": 0}),
        [("old_layout", "{usr}#all", None)],
    ),
    (
        "an all-ids SET of the layout before 2.0 on a model with a range index",
        lambda r: (r.delete("{usr}#all"), r.sadd("{usr}#all", "1")),
        [("old_layout", "{usr}#all", None)],
    ),
    (
        "a unique value owned by the wrong id",
        lambda r: r.hset(S("u7@x.org"), "u7@x.org", "8"),
        [("wrong_owner", S("u7@x.org"), "email")],
    ),
    (
        "a unique value pointing to nothing",
        lambda r: r.hset(S("nobody@x.org"), "nobody@x.org", "ghost"),
        [("dangling_unique", S("nobody@x.org"), "email")],
    ),
    (
        "a unique value whose owner holds another value",
        lambda r: r.hset(S("nobody@x.org"), "nobody@x.org", "2"),
        [("dangling_unique", S("nobody@x.org"), "email")],
    ),
    (
        "a unique value missing from its stripe",
        lambda r: r.hdel(S("u10@x.org"), "u10@x.org"),
        [("missing_unique", S("u10@x.org"), "email")],
    ),
    (
        "two entities holding one unique value",
        lambda r: r.hset("{usr}:11", "eml", "U9@x.org"),
        # 11's own value now names an entity that does not hold it
        [
            ("dangling_unique", S("u11@x.org"), "email"),
            ("duplicate_unique", S("u9@x.org"), "email"),
        ],
    ),
    (
        "a unique key of the layout before 2.0 (a string per value)",
        lambda r: r.set("{co}#u:name:acme", "c1"),
        [("old_layout", "{co}#u:name:acme", None)],
    ),
    (
        "an all-ids SET of the layout before 2.0",
        lambda r: (r.delete("{co}#all"), r.sadd("{co}#all", "c1")),
        [("old_layout", "{co}#all", None)],
    ),
    (
        "a unique stripe of the wrong type",
        lambda r: (r.delete(S("acme", "co", "name")), r.sadd(S("acme", "co", "name"), "c1")),
        [("wrong_type", S("acme", "co", "name"), "name")],
    ),
    (
        "an undecodable value",
        lambda r: r.hset("{usr}:2", "created", "yesterday"),
        [("undecodable", "{usr}:2", "created")],
    ),
    (
        "an undecodable indexed value",
        lambda r: r.hset("{usr}:2", "age", "two"),
        [("undecodable", "{usr}:2", "age")],
    ),
    (
        "an entity key holding a string",
        lambda r: r.set("{usr}:99", "not a hash"),
        [("wrong_type", "{usr}:99", None)],
    ),
    (
        "an index key of the wrong type",
        lambda r: (r.delete("{co}#all"), r.set("{co}#all", "oops")),
        [("wrong_type", "{co}#all", None)],
    ),
    (
        "a range index of the wrong type",
        lambda r: (r.delete("{usr}#r:age"), r.sadd("{usr}#r:age", "1")),
        [("wrong_type", "{usr}#r:age", "age")],
    ),
    (
        "a reindex marker that is not a list (commits could not read it)",
        lambda r: r.set("{usr}#x", "running"),
        [("wrong_type", "{usr}#x", None)],
    ),
    (
        "an index of a field that is not indexed",
        lambda r: r.sadd("{usr}#i:nickname:bob", "1"),
        [("stray_key", "{usr}#i:nickname:bob", None)],
    ),
    (
        "a key that is no key redisca writes",
        lambda r: r.set("{usr}#what", "x"),
        [("stray_key", "{usr}#what", None)],
    ),
    (
        "a leftover query scratch key",
        lambda r: r.sadd("{usr}#t:0123", "1"),
        [("stray_key", "{usr}#t:0123", None)],
    ),
    (
        "a build key of a reindex that is not running",
        lambda r: r.sadd("{usr}#b:dead:all", "1"),
        [("stray_key", "{usr}#b:dead:all", None)],
    ),
    (
        "an entity hash of the layout before hash tags (redisca 1.x's name)",
        lambda r: r.hset("usr:99", "eml", "old@x.org"),
        [("old_layout", "usr:99", None)],
    ),
    (
        "a reference to an entity that does not exist (on_delete=None: allowed, reported)",
        lambda r: (
            r.hset("{usr}:2", "company", "c9"),
            r.srem("{usr}#i:company:c1", "2"),
            r.sadd("{usr}#i:company:c9", "2"),
        ),
        [("dangling_reference", "{usr}:2", "company")],
    ),
    (
        "an index key of the layout before hash tags",
        lambda r: r.zadd("co#all", {"c1": 0}),
        [("old_layout", "co#all", None)],
    ),
]


@pytest.mark.parametrize(("corrupt", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_problem_is_found(
    r: redis.Redis, corrupt: Corruption, expected: list[tuple[str, str, str | None]]
) -> None:
    seed(r)
    corrupt(r)
    report = check(registry, r)
    assert not report.ok
    assert kinds(report.problems) == sorted(expected)
    for problem in report.problems:
        assert problem.kind in KINDS and problem.detail
        assert problem.model == ("Company" if problem.key.startswith(("{co}", "co")) else "User")


#: Kinds of a sharded model only, found in tests/test_shard_maintenance.py.
#: ... and of a sharded model's unique claims, found in
#: tests/test_shard_claims_maintenance.py.
SHARDED_KINDS = {"wrong_shard", "stale_token", "stale_registration"}
#: Kinds of collection member indexes (the models here have no collection), found in
#: tests/test_collections.py.
MEMBER_KINDS = {"missing_member_entry", "stale_member_entry"}


def test_every_kind_is_covered() -> None:
    found = {kind for _, _, found in CASES for kind, _, _ in found}
    assert found == set(KINDS) - SHARDED_KINDS - MEMBER_KINDS


def test_many_problems_at_once_with_any_batch(r: redis.Redis) -> None:
    seed(r, 40)
    for _, corrupt, _ in CASES:
        corrupt(r)  # some undo or hide others (the range index ends up a set)
    found = [kinds(check(registry, r, batch=batch).problems) for batch in (1, 3, 500)]
    assert found[0] == found[1] == found[2]
    # co#all ends up a string: the problems of its members are hidden too
    hidden = {"wrong_score", "missing_from_all", "stale_id"}
    assert {kind for kind, _, _ in found[0]} == set(KINDS) - hidden - SHARDED_KINDS - MEMBER_KINDS


def test_data_of_the_layout_before_hash_tags_is_reported_until_migrated(
    r: redis.Redis,
) -> None:
    """What an upgrade left in the layout before hash tags never goes unnoticed: each key
    is reported with what ``migrate`` does to it, ``stats`` counts them, and once
    ``migrate`` ran, check is ok."""
    seed(r, 3)
    r.hset("usr:9", mapping={"eml": "nine@x.org", "age": "9"})  # a 1.x entity hash
    r.hset("usr:1", mapping={"eml": "one@x.org"})  # 1.x's user 1: {usr}:1 exists too
    r.sadd("usr:eml:nine@x.org", "9")  # 1.x's equality index, among the entities
    r.zadd("usr#r:age", {"9": 9})  # a 2.0 development build's range index
    r.rpush("usr:queue", "job")  # a list redisca never wrote: migrate leaves it
    report = check(registry, r, batch=2)
    assert kinds(report.problems) == [
        ("old_layout", "usr#r:age", None),
        ("old_layout", "usr:1", None),
        ("old_layout", "usr:9", None),
        ("old_layout", "usr:eml:nine@x.org", None),
        ("stray_key", "usr:queue", None),
    ]
    detail = {p.key: p.detail for p in report.problems}
    assert "`python -m redisca migrate` moves it to {usr}:9" in detail["usr:9"]
    assert "{usr}:1 holds an entity already" in detail["usr:1"]
    assert (
        "(redisca 1.x)" in detail["usr:eml:nine@x.org"]
        and "deletes it" in detail["usr:eml:nine@x.org"]
    )
    assert "(redisca 2.0 development builds)" in detail["usr#r:age"]
    assert "leaves it alone" in detail["usr:queue"]
    users = next(m for m in report.models if m.model == "User")
    assert (users.entities, users.old_keys, users.problems) == (3, 5, 5)
    counted = next(m for m in stats(registry, r).models if m.model == "User")
    assert counted.entities == 3 and counted.index_keys["old_layout"] == 5
    assert counted.memory["old_layout"] > 0

    r.delete("usr:queue", "usr:1")  # the application's list goes; user 1 is decided
    assert migrate(registry, r).ok
    assert check(registry, r).ok
    counted = next(m for m in stats(registry, r).models if m.model == "User")
    assert counted.entities == 4 and "old_layout" not in counted.index_keys


def test_problems_serialise_to_json(r: redis.Redis) -> None:
    seed(r)
    r.zrem("{co}#all", "c1")
    data = json.loads(json.dumps(check(registry, r).as_dict()))
    assert data["ok"] is False
    assert data["problems"] == [
        {
            "kind": "missing_from_all",
            "model": "Company",
            "key": "{co}#all",
            "field": None,
            "detail": "c1 has a hash ({co}:c1) but is not in it",
        }
    ]
    assert {m["model"]: m["problems"] for m in data["models"]} == {"Company": 1, "User": 0}


# -- awkward ids and values ---------------------------------------------------------------

odd = Registry()


@odd.mapped(prefix="odd")
@attrs.define
class Odd:
    tag: str | None = redisca.String(index=True, default=None)
    price: Decimal | None = redisca.Field(index=True, unique=True, default=None)
    id: str | None = None


AWKWARD = ["", ":", "a:b", "{x}", "*", "line\nbreak", "ünï🙂", "#all", "{odd}#all"]


def test_awkward_ids_and_values_are_ok(r: redis.Redis) -> None:
    with Session(r) as s:
        s.add_all(
            Odd(tag=ident or None, price=Decimal(f"{n}.10"), id=ident)
            for n, ident in enumerate(AWKWARD)
        )
        s.commit()
    report = check(Odd, r)
    assert report.ok, report.problems
    r.hset("{odd}:a:b", "price", "7.1000")  # the same price as another: a duplicate
    assert kinds(check(Odd, r).problems) == [
        ("dangling_unique", S("2.1", "odd", "price"), "price"),
        ("duplicate_unique", S("7.1", "odd", "price"), "price"),
    ]


def test_an_id_that_is_not_utf8_is_undecodable(r: redis.Redis) -> None:
    r.hset(b"{odd}:\xff", "tag", "x")
    r.zadd("{odd}#all", {b"\xff": 0})
    r.sadd("{odd}#i:tag:x", b"\xff")
    assert kinds(check(Odd, r).problems) == [("undecodable", "{odd}:\\xff", None)]


# -- choosing models ---------------------------------------------------------------------


def test_models_are_chosen_by_class_name_or_prefix(r: redis.Redis) -> None:
    seed(r)
    r.zrem("{co}#all", "c1")
    r.zrem("{usr}#r:age", "1")
    for models, expected in (
        (["User"], {"User"}),
        (["co"], {"Company"}),
        ([Company, "usr"], {"Company", "User"}),
        ("Company", {"Company"}),
    ):
        report = check(registry, r, models=models)
        assert {m.model for m in report.models} == expected
        assert {p.model for p in report.problems} == expected
    assert {m.model for m in check([User], r).models} == {"User"}
    with pytest.raises(MaintenanceError, match="no mapped model 'Nope'"):
        check(registry, r, models=["Nope"])


def test_the_default_client_is_used_without_one(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(r)
    monkeypatch.setattr(redisca.conf, "db", r)
    assert check(registry).ok


# -- how it reads -----------------------------------------------------------------------


class Recorder(redis.Connection):
    """A connection that remembers the name of every command it sends."""

    names: list[bytes] = []

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        Recorder.names += [args[0] for args in sent_commands(command)]
        super().send_packed_command(command, check_health)


@pytest.mark.single_server(
    reason="records one plain connection's commands; on a cluster each master is scanned "
    "through a cluster client (test_cluster_maintenance)"
)
def test_keys_are_scanned_never_listed(r: redis.Redis, redis_url: str) -> None:
    seed(r, 30)
    client = redis.Redis.from_url(redis_url, connection_class=Recorder)
    Recorder.names = []
    try:
        assert check(registry, client, batch=7).ok
    finally:
        client.close()
    names = {n.upper() for n in Recorder.names}
    assert b"SCAN" in names and b"KEYS" not in names
    assert not names & {b"SET", b"DEL", b"SADD", b"SREM", b"ZADD", b"HSET", b"EVAL"}


def test_problems_found_during_commits_are_real(r: redis.Redis, make_client: Any) -> None:
    """A writer keeps moving entities between index values while check runs: every
    suspicion a commit caused is ruled out by the snapshot; the one real problem stays."""
    seed(r, 60)
    with Session(r) as s:
        s.add_all(Company(f"co{n}", id=f"c{n}") for n in (10, 11, 12))
        s.commit()
    r.sadd("{usr}#i:company:c9", "ghost-member")  # the real one
    writer_client = make_client()
    stop = threading.Event()
    commits = [0]

    def write() -> None:
        n = 0
        with Session(writer_client) as s:
            while not stop.is_set():
                user = s.get(User, str(n % 60))
                assert user is not None
                user.age = (user.age or 0) % 150 + 1
                user.company = s.reference(Company, f"c{n % 3 + 10}") if n % 2 else None
                s.commit()
                s.expunge_all()
                commits[0] += 1
                n += 1

    thread = threading.Thread(target=write)
    thread.start()
    reports = []
    deadline = time.monotonic() + 60
    try:  # at least 8 checks, and as many as it takes to overlap 20 commits (a loaded
        # machine slows the writer more than the checks)
        while len(reports) < 8 or (commits[0] <= 20 and time.monotonic() < deadline):
            reports.append(check(registry, r, batch=5))
    finally:
        stop.set()
        thread.join()
    assert commits[0] > 20
    for report in reports:
        assert kinds(report.problems) == [("orphan_entry", "{usr}#i:company:c9", "company")]
    r.srem("{usr}#i:company:c9", "ghost-member")
    assert check(registry, r).ok


# -- stats ---------------------------------------------------------------------------------


def test_stats_counts_keys_and_entries(r: redis.Redis) -> None:
    seed(r, 20)
    r.sadd("{usr}#i:nickname:bob", "1")  # a stray key counts as "other"
    r.zadd("{usr}#all", {"1": 0})  # and so does a P#all the range index replaces
    report = stats(registry, r, batch=3, sample=5)
    users = next(m for m in report.models if m.model == "User")
    assert (users.entities, users.ids) == (20, 20)  # ids: ZCARD usr#r:age
    stripes = len({S(f"u{i}@x.org") for i in range(20)})
    guards = len({guard_key("usr", str(i)) for i in range(20)})
    assert users.index_keys == {
        "eq": 1, "range": 1, "unique": stripes, "guard": guards, "other": 2,
    }  # fmt: skip
    assert users.index_entries == 20 + 20 + 20  # company, age, and one per unique value
    assert set(users.memory) == {"entity", "eq", "range", "unique", "guard", "other"}
    assert users.memory_total > 0 and users.memory_sampled == 5 + 1 + 1 + 5 + 5 + 2
    company = next(m for m in report.models if m.model == "Company")
    assert company.index_keys["all"] == 1 and company.ids == 1
    assert not users.reindexing
    r.rpush("{usr}#x", "abcd", "#all")
    assert next(m for m in stats(User, r).models).reindexing
    data = json.loads(json.dumps(report.as_dict()))
    assert data["models"][1]["memory_total"] == users.memory_total


#: Kinds of expiring models (the models here do not expire), found in tests/test_sweep.py:
#: left out of the coverage tests above, as the sharded ones are.
SHARDED_KINDS |= {"stale_expiry"}

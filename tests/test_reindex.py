"""reindex: rebuilds indexes from the hashes (repairs, a field that gained index=True),
while commits keep running: commits mirror into the build keys, the switch is atomic,
queries never answer wrongly, and the round trips a commit costs are measured.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import redis
from helpers import (
    FENCE_READ,
    as_str,
    assert_indexes_consistent,
    counting_client,
    dump_keyspace,
    stripe_key,
)

import redisca
from redisca import Registry, Session
from redisca.maintenance import MaintenanceError, RunLost, check, reindex
from redisca.session import executor

registry = Registry()


@registry.mapped(prefix="item")
@attrs.define
class Item:
    color: str | None = redisca.String(index=True, default=None)
    rank: int | None = redisca.Integer(index=True, default=None)
    code: str | None = redisca.String(unique=True, default=None)
    note: str | None = None
    id: str | None = None


@registry.mapped(prefix="log")
@attrs.define
class Log:
    """No unique field: hexid inserts of it read nothing, so they are fenced."""

    level: str = redisca.String(index=True, default="info")
    n: int | None = redisca.Integer(index=True, default=None)
    id: str | None = None


@registry.mapped(prefix="tag")
@attrs.define
class Tag:
    """No range index: its ids live in ``tag#all`` (Item's in ``item#r:rank``, Log's in
    ``log#r:n``), which a run rebuilds as member ``#all``."""

    label: str = redisca.String(index=True, default="")
    id: str | None = None


ITEMS = redisca.inspect(Item)
LOGS = redisca.inspect(Log)
TAGS = redisca.inspect(Tag)


@pytest.fixture(autouse=True)
def forget_sightings() -> Iterator[None]:
    """Markers seen by one test are a hint another test's round trips must not inherit."""
    yield
    executor._sightings = type(executor._sightings)()


def consistent(r: redis.Redis) -> None:
    assert_indexes_consistent(r, ITEMS)
    assert_indexes_consistent(r, LOGS)
    assert_indexes_consistent(r, TAGS)
    report = check(registry, r)
    assert report.ok, report.problems


def seed(r: redis.Redis, n: int = 40) -> None:
    with Session(r) as s:
        s.add_all(
            Item(color=f"c{i % 4}", rank=i, code=f"K{i}", note="x", id=str(i)) for i in range(n)
        )
        s.add_all(Log(level=("info", "warn")[i % 2], n=i) for i in range(n))
        s.add_all(Tag(f"t{i % 3}", id=f"t{i}") for i in range(n))
        s.commit()


def S(code: str) -> str:
    """The unique stripe of a code, as docs/keylayout.rst names it."""
    return as_str(stripe_key("item", "code", code))


def corrupt(r: redis.Redis) -> None:
    r.srem("{item}#i:color:c1", "1")  # missing entry
    r.sadd("{item}#i:color:c2", "3")  # orphan
    r.zadd("{item}#r:rank", {"5": 99, "ghost": 1})  # wrong score, orphan
    r.zrem("{item}#r:rank", "6")  # missing from the range index, Item's all-ids index
    r.zadd("{item}#all", {"6": 0})  # an all-ids set Item no longer keeps (it has a range index)
    r.zrem("{tag}#all", "t6")  # missing from all
    r.zadd("{tag}#all", {"ghost": 0})  # stale id
    r.hset(S("K7"), "K7", "8")  # wrong owner
    r.hset(S("nobody"), "nobody", "9")  # dangling
    r.hdel(S("K10"), "K10")  # missing unique
    r.delete(S("K12"))
    r.sadd(S("K12"), "12")  # a unique stripe of the wrong type
    r.set("{item}#u:code:K13", "13")  # a unique key of the layout before 2.0
    r.sadd("{item}#i:note:x", "1")  # an index of a field without one
    r.sadd("{item}#b:dead:all", "1")  # a dead run's build key
    r.delete("{log}#i:level:warn")  # a whole index key gone


# -- repairs --------------------------------------------------------------------------


def test_reindex_repairs_every_index_problem(r: redis.Redis) -> None:
    seed(r)
    corrupt(r)
    kinds = {p.kind for p in check(registry, r).problems}
    assert len(kinds) == 11
    report = reindex(registry, r, batch=7)
    assert report.ok, report.problems
    by_model = {m.model: m for m in report.models}
    assert by_model["Item"].entities == 40 and by_model["Log"].entities == 40
    assert by_model["Item"].rebuilt == ["color", "rank", "code"]  # rank's index: the ids
    assert by_model["Tag"].rebuilt == ["#all", "label"]
    # the note index, the old-layout unique key and item#all, and the stripe naming
    # nobody if no code shares it
    alone = S("nobody") not in {S(f"K{i}") for i in range(40)}
    assert by_model["Item"].deleted == 3 + alone
    assert not r.exists("{item}#all") and r.zcard("{tag}#all") == 40
    consistent(r)
    assert not [k for k in r.scan_iter(match="*#[xb]*")]  # no marker, no build key left
    with Session(r) as s:
        assert sorted(s.query(Item).filter(Item.color == "c1").ids(), key=int)[:3] == [
            "1",
            "5",
            "9",
        ]
        assert s.query(Item).filter(Item.code == "K7").one().id == "7"
        assert s.query(Log).filter(Log.level == "warn").count() == 20


def test_clean_data_is_rebuilt_identical(r: redis.Redis) -> None:
    seed(r)
    before = dump_keyspace(r)
    assert reindex(registry, r).ok
    assert dump_keyspace(r) == before


def test_only_the_fields_asked_for(r: redis.Redis) -> None:
    seed(r)
    corrupt(r)
    report = reindex(registry, r, models=["Item"], fields=["color"])
    assert report.models[0].rebuilt == ["color"]
    assert ("old_layout", "{item}#all") in {(p.kind, p.key) for p in check(Item, r).problems}
    report = reindex(registry, r, models=["Item"], fields=["rank", Item.code])
    assert report.models[0].rebuilt == ["rank", "code"]
    assert not r.exists("{item}#all")  # rank's index holds the ids: item#all goes with it
    r.srem("{item}#i:color:c1", "1")
    r.sadd("{item}#i:color:c2", "3")
    left = {(p.kind, p.key) for p in check(registry, r).problems}
    assert left == {  # the color index, Log's and Tag's were not touched
        ("missing_entry", "{item}#i:color:c1"),
        ("orphan_entry", "{item}#i:color:c2"),
        ("stray_key", "{item}#i:note:x"),
        ("missing_entry", "{log}#i:level:warn"),
        ("missing_from_all", "{tag}#all"),
        ("stale_id", "{tag}#all"),
    }
    with pytest.raises(MaintenanceError, match=r"Item\.note is not indexed"):
        reindex(registry, r, models=["Item"], fields=["note"])
    with pytest.raises(MaintenanceError, match="no mapped attribute 'nope'"):
        reindex(registry, r, models=["Item"], fields=["nope"])


def test_a_leftover_all_ids_set_is_reported_then_deleted(r: redis.Redis) -> None:
    """Item's ids live in item#r:rank: an item#all as earlier versions wrote it beside the
    range index is reported as old_layout, and a run deletes it in its switch."""
    seed(r, 12)
    assert not r.exists("{item}#all") and r.zcard("{item}#r:rank") == 12
    r.zadd("{item}#all", {str(i): 0 for i in range(12)})
    found = check(registry, r).problems
    assert [(p.kind, p.key, p.field) for p in found] == [("old_layout", "{item}#all", None)]
    assert "{item}#r:rank, holds every id" in found[0].detail
    with Session(r) as s:  # queries never read it
        assert s.query(Item).count() == 12 and s.query(Item).limit(2).ids() == ["0", "1"]
    report = reindex(registry, r)
    assert report.ok and not r.exists("{item}#all") and r.zcard("{tag}#all") == 12
    by_model = {m.model: m for m in report.models}
    assert by_model["Item"].deleted == 1 and "#all" not in by_model["Item"].rebuilt
    consistent(r)


def test_values_that_cannot_be_indexed_are_reported(r: redis.Redis) -> None:
    seed(r)
    r.hset("{item}:2", "rank", "two")
    r.hset("{item}:4", "code", "K3")  # 3 and 4 both hold K3
    r.set("{item}:99", "a string")
    report = reindex(registry, r, models=["Item"], batch=5)
    assert sorted((p.kind, p.key, p.field) for p in report.problems) == [
        ("duplicate_unique", S("K3"), "code"),
        ("undecodable", "{item}:2", "rank"),
        ("wrong_type", "{item}:99", None),
    ]
    assert r.zscore("{item}#r:rank", "2") is None  # nothing to index it by
    assert r.hget(S("K4"), "K4") is None  # 4 holds K3 now, which names 3 or 4


# -- a field gains index=True ----------------------------------------------------------

before = Registry()


@before.mapped(prefix="shop")
@attrs.define
class ShopBefore:
    name: str = ""
    city: str | None = None
    size: int | None = None
    id: str | None = None


after = Registry()


@after.mapped(prefix="shop")
@attrs.define
class Shop:
    name: str = ""
    city: str | None = redisca.String(index=True, default=None)
    size: int | None = redisca.Integer(index=True, default=None)
    id: str | None = None


def test_an_index_for_a_field_that_gained_index_true_is_built(r: redis.Redis) -> None:
    with Session(r) as s:
        s.add_all(ShopBefore(f"s{i}", city=("Oslo", "Rome")[i % 2], size=i) for i in range(30))
        s.commit()
    with Session(r) as s:  # the new model on old data: its indexes are empty
        assert s.query(Shop).filter(Shop.city == "Oslo").all() == []
        s.add(Shop("new", city="Oslo", size=100))  # a write by the new model is indexed
        s.commit()
        assert len(s.query(Shop).filter(Shop.city == "Oslo").all()) == 1
    # Shop gained its first range index: shop#r:size holds its ids now, not shop#all
    found = check(Shop, r).problems
    assert {p.kind for p in found} == {"missing_entry", "old_layout"}
    (old,) = [p for p in found if p.kind == "old_layout"]
    assert old.key == "{shop}#all" and "{shop}#r:size" in old.detail and "reindex" in old.detail
    with Session(r) as s:
        assert s.query(Shop).count() == 1  # until reindex, only what shop#r:size holds
    report = reindex(after, r, fields=["city", "size"])
    assert report.ok and report.models[0].entities == 31
    assert check(Shop, r).ok and not r.exists("{shop}#all")
    with Session(r) as s:
        assert s.query(Shop).count() == 31
        assert s.query(Shop).limit(3).ids() == s.query(Shop).order_by(Shop.size).limit(3).ids()
    with Session(r) as s:
        oslo = s.query(Shop).filter(Shop.city == "Oslo").all()
        assert len(oslo) == 16 and {shop.city for shop in oslo} == {"Oslo"}
        big = s.query(Shop).filter(Shop.size >= 25).order_by(Shop.size).all()
        assert [shop.name for shop in big] == ["s25", "s26", "s27", "s28", "s29", "new"]


# -- commits during a run ---------------------------------------------------------------


def run_token(r: redis.Redis, prefix: str) -> str:
    token = r.lindex(f"{{{prefix}}}#x", 0)
    assert token is not None
    return token.decode() if isinstance(token, bytes) else token


def built_ids(r: redis.Redis, prefix: str, index: str = "all") -> set[str]:
    """The ids the running run has built into an all-ids index: ``P#all``'s, or that of
    the first range field (``index="r:<field>"``)."""
    members = r.zrange(f"{{{prefix}}}#b:{run_token(r, prefix)}:{index}", 0, -1)
    return {m.decode() if isinstance(m, bytes) else m for m in members}


def test_commits_during_a_run_are_in_the_switched_indexes(r: redis.Redis) -> None:
    """Mid-build, commits change entities already built and entities not built yet:
    inserts (fenced and not), indexed updates, unique values changing hands, deletes."""
    seed(r, 60)
    done: list[str] = []

    def meanwhile(model: str, phase: str, count: int, total: int | None) -> None:
        if phase != "entities" or model in done or count == 0:
            return
        done.append(model)
        if model == "Log":
            with Session(r) as s:
                s.add_all(Log("late", n=1000 + i) for i in range(5))  # fenced inserts
                s.commit()
                for log in s.query(Log).filter(Log.n < 10).all():
                    log.level = "moved"
                s.commit()
            return
        if model == "Tag":
            built = sorted(built_ids(r, "tag"), key=lambda t: int(t[1:]))
            unbuilt = sorted({f"t{i}" for i in range(60)} - set(built), key=lambda t: int(t[1:]))
            assert built and unbuilt
            with Session(r) as s:  # inserts and deletes mirror into the build of tag#all
                s.add_all(Tag("late", id=f"late{i}") for i in range(3))
                s.delete(s.reference(Tag, built[0]))  # one built, one not built yet
                s.delete(s.reference(Tag, unbuilt[-1]))
                s.commit()
            return
        built = sorted(built_ids(r, "item", "r:rank"), key=int)
        rest = sorted({str(i) for i in range(60)} - set(built), key=int)
        assert built and len(rest) > 3  # part of the model is built, part is not
        with Session(r) as s:
            for ident in (built[0], rest[0]):
                item = s.get(Item, ident)
                assert item is not None
                item.color, item.rank, item.code = "new", 500 + int(ident), f"N{ident}"
            s.commit()
            a, b = s.get(Item, built[0]), s.get(Item, rest[1])
            assert a is not None and b is not None
            freed = a.code
            a.code, b.code = None, freed  # a unique value changes hands in one commit
            s.commit()
            for ident in [*built[1:2], rest[2]]:
                s.delete(s.get(Item, ident))
            s.add(Item(color="new", rank=1, code="ADDED", id="added"))
            s.commit()

    report = reindex(registry, r, batch=5, progress=meanwhile)
    assert report.ok and done == ["Item", "Log", "Tag"]
    consistent(r)
    assert r.zcard("{tag}#all") == 60 + 3 - 2
    with Session(r) as s:
        assert len(s.query(Item).filter(Item.color == "new").all()) == 3
        assert s.query(Log).filter(Log.level == "late").count() == 5
        assert s.query(Log).filter(Log.level == "moved").count() == 10
        assert s.query(Item).filter(Item.code == "ADDED").one().id == "added"


@pytest.mark.single_server(
    reason="a single server's round trips; on a cluster a commit reads the reindex markers "
    "before MULTI instead of watching them with it (helpers.FENCE_READ)"
)
def test_round_trips_of_commits_before_during_and_after_a_run(
    r: redis.Redis, redis_url: str
) -> None:
    seed(r, 20)
    counted = counting_client(redis_url)
    figures: dict[str, list[int]] = {}

    def commit_logs(label: str) -> None:
        figures[label] = []
        with Session(counted.client) as s:
            for i in range(2):
                s.add(Log("rt", n=i))
                counted.reset()
                s.commit()
                figures[label].append(counted.round_trips)

    def indexed_update(label: str) -> None:
        with Session(counted.client) as s:
            item = s.get(Item, "1")
            assert item is not None
            item.rank = (item.rank or 0) + 1
            item.note = label
            counted.reset()
            s.commit()
            figures[label] = [counted.round_trips]
            item.note = label + "!"
            counted.reset()
            s.commit()
            figures[label].append(counted.round_trips)

    def meanwhile(model: str, phase: str, *_: Any) -> None:
        if model == "Log" and phase == "entities" and "during" not in figures:
            commit_logs("during")
            indexed_update("update during")

    commit_logs("before")
    indexed_update("update before")
    reindex(registry, r, progress=meanwhile)
    commit_logs("after")
    counted.close()
    assert figures == {
        "before": [1, 1],  # fenced: nothing to read, one write
        "during": [3, 2],  # the fence trips once; then the marker is read, then written
        "after": [2, 1],  # the marker is read once more, seen gone: fenced again
        "update before": [2, 1],  # WATCH + reads, then MULTI/EXEC; a plain update: one
        "update during": [2, 1],  # the marker rides along the reads
    }
    consistent(r)


def test_a_second_run_is_refused_while_one_runs(r: redis.Redis) -> None:
    seed(r, 10)
    refused: list[str] = []

    def meanwhile(model: str, phase: str, *_: Any) -> None:
        if phase == "entities" and not refused:
            with pytest.raises(MaintenanceError, match="running already") as exc:
                reindex(registry, r, models=[model])
            refused.append(str(exc.value))

    assert reindex(registry, r, progress=meanwhile).ok
    assert refused
    consistent(r)


def test_a_run_that_fails_leaves_nothing_behind(r: redis.Redis, redis_url: str) -> None:
    seed(r, 30)
    before = dump_keyspace(r)

    def fail(model: str, phase: str, *_: Any) -> None:
        if phase == "entities":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reindex(registry, r, batch=5, progress=fail)
    assert dump_keyspace(r) == before  # no marker, no build key, live keys as they were
    counted = counting_client(redis_url)
    with Session(counted.client) as s:
        s.add(Log("x"))
        s.commit()
        assert counted.round_trips == 1 + FENCE_READ
    counted.close()


def test_a_lost_marker_stops_the_run_before_the_switch(r: redis.Redis) -> None:
    seed(r, 30)
    corrupt(r)

    def lose(model: str, phase: str, *_: Any) -> None:
        if phase == "entities":
            r.delete(f"{{{redisca.inspect(Item).prefix}}}#x")

    with pytest.raises(RunLost):
        reindex(registry, r, models=["Item"], batch=5, progress=lose)
    assert not [k for k in r.scan_iter(match="{item}#b:*") if b"dead" not in _b(k)]
    assert len({p.kind for p in check(Item, r).problems}) == 9  # nothing was switched


def test_a_long_run_keeps_its_marker_alive(r: redis.Redis) -> None:
    seed(r, 30)
    naps: list[float] = []

    def slow(model: str, phase: str, *_: Any) -> None:
        if model == "Item" and len(naps) < 4:
            naps.append(0.4)
            time.sleep(0.4)  # 1.6 s in all: longer than the marker's ttl, refreshed meanwhile

    report = reindex(registry, r, batch=3, progress=slow, ttl=1.0)
    assert report.ok and sum(naps) > 1.0
    consistent(r)


def test_a_run_whose_marker_expires_is_lost(r: redis.Redis) -> None:
    seed(r, 30)
    corrupt(r)
    before = dump_keyspace(r)
    naps: list[float] = []

    def stalled(model: str, phase: str, count: int, *_: Any) -> None:
        if count and not naps:
            naps.append(1.3)
            time.sleep(1.3)  # the process stalls past its marker's ttl

    with pytest.raises(RunLost, match="expired"):
        reindex(registry, r, models=["Item"], batch=5, progress=stalled, ttl=1.0)
    after = dump_keyspace(r)
    assert {k: v for k, v in after.items() if b"#b:" not in k} == {
        k: v for k, v in before.items() if b"#b:" not in k and k != b"{item}#b:dead:all"
    }  # the live keys are as they were (the dead run's leftover went at the start)
    assert not [k for k in after if b"#b:" in k or k.endswith(b"#x")]


def test_a_dead_run_expires_and_the_next_run_cleans_up(r: redis.Redis) -> None:
    seed(r, 10)
    r.rpush("{item}#x", "d1ed", "#all", "color")  # a run that died mid-build
    r.sadd("{item}#b:d1ed:all", "1")
    r.hset("{item}#b:d1ed", "{item}#b:d1ed:all", "{item}#all")
    r.pexpire("{item}#x", 200)
    report = check(Item, r)
    assert report.ok and report.models[0].reindexing  # its build keys are its business
    with pytest.raises(MaintenanceError, match="running already"):
        reindex(Item, r)
    time.sleep(0.3)
    assert {(p.kind, p.key) for p in check(Item, r).problems} == {
        ("stray_key", "{item}#b:d1ed:all"),
        ("stray_key", "{item}#b:d1ed"),
    }
    assert reindex(Item, r).ok
    consistent(r)


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


# -- concurrent writers and readers --------------------------------------------------------

STABLE = 150  # items and logs no writer touches: what the reader checks
MUTABLE = 350


def seed_for_races(r: redis.Redis) -> None:
    with Session(r) as s:
        s.add_all(
            Item(color=f"s{i % 5}", rank=100_000 + i, code=f"S{i}", id=f"s{i}")
            for i in range(STABLE)
        )
        s.add_all(Item(color=f"m{i % 7}", rank=i, code=f"M{i}", id=f"m{i}") for i in range(MUTABLE))
        s.add_all(Log("stable", n=1_000_000 + i, id=f"s{i}") for i in range(STABLE))
        s.add_all(Log(("info", "warn")[i % 2], n=i) for i in range(MUTABLE))
        s.add(Item(color="d", rank=-1, code="D0", id="d0"))
        s.commit()
    # drift for the runs to repair, on values no reader asks about
    r.srem("{item}#i:color:m3", "m3", "m10")
    r.sadd("{item}#i:color:m4", "ghost")
    r.zadd("{item}#r:rank", {"m5": 77_777})
    # A deleted unique key frees its value for any writer to claim, a duplicate the run then
    # rightly reports; on d0, whose code no writer can draw, a reported duplicate is a bug.
    r.hdel(S("D0"), "D0")


class Writer(threading.Thread):
    """Random commits on the mutable items and logs until stopped."""

    def __init__(self, client: redis.Redis, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client, self.random, self.stop = client, random.Random(seed), stop
        self.seed = seed
        self.commits = 0
        self.refused = 0
        self.conflicts = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                with Session(self.client) as s:
                    self.step(s)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def step(self, s: Session) -> None:
        rnd = self.random
        op = rnd.random()
        if op < 0.35:
            item = s.get(Item, f"m{rnd.randrange(MUTABLE)}")
            if item is None:
                s.add(Item(color="m0", rank=0, code=None, id=f"m{rnd.randrange(MUTABLE)}"))
            else:
                item.color = f"m{rnd.randrange(7)}"
                item.rank = rnd.randrange(90_000)
                item.code = f"M{rnd.randrange(2 * MUTABLE)}" if rnd.random() < 0.7 else None
        elif op < 0.45:
            item = s.get(Item, f"m{rnd.randrange(MUTABLE)}")
            if item is not None:
                s.delete(item)
        elif op < 0.6:
            s.add(Item(color=f"m{rnd.randrange(7)}", rank=rnd.randrange(90_000)))
        elif op < 0.85:
            s.add_all(
                Log(("info", "warn")[rnd.randrange(2)], n=rnd.randrange(90_000)) for _ in range(3)
            )
        else:
            ids = s.query(Log).filter(Log.n < 90_000).limit(3).ids()
            for log in s.get_many(Log, ids):
                if log is not None and rnd.random() < 0.5:
                    s.delete(log)
                elif log is not None:
                    log.level = "moved"
        try:
            s.commit()
            self.commits += 1
        except redisca.IntegrityError:
            self.refused += 1  # a unique value taken, or an id that exists: nothing written
        except redisca.ConflictError:
            self.conflicts += 1  # the other writer kept changing it: nothing written


class Reader(threading.Thread):
    """Queries whose answers are known: the stable items and logs never change."""

    def __init__(self, client: redis.Redis, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client, self.stop = client, stop
        self.queries = 0
        self.wrong: list[str] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        rnd = random.Random(7)
        try:
            while not self.stop.is_set():
                with Session(self.client) as s:
                    self.ask(s, rnd)
        except BaseException as exc:
            self.errors.append(exc)

    def expect(self, what: str, got: Any, wanted: Any) -> None:
        self.queries += 1
        if got != wanted:
            self.wrong.append(f"{what}: got {got!r}, wanted {wanted!r}")

    def ask(self, s: Session, rnd: random.Random) -> None:
        k = rnd.randrange(5)
        ids = sorted(f"s{i}" for i in range(STABLE) if i % 5 == k)
        self.expect(f"color s{k}", sorted(s.query(Item).filter(Item.color == f"s{k}").ids()), ids)
        self.expect(f"count s{k}", s.query(Item).filter(Item.color == f"s{k}").count(), len(ids))
        lo = rnd.randrange(STABLE)
        window = s.query(Item).filter(Item.rank.between(100_000 + lo, 100_000 + lo + 9))
        self.expect(
            f"ranks from {lo}",
            window.order_by(Item.rank).ids(),
            [f"s{i}" for i in range(lo, min(lo + 10, STABLE))],
        )
        i = rnd.randrange(STABLE)
        found = s.query(Item).filter(Item.code == f"S{i}").one_or_none()
        self.expect(f"code S{i}", found.id if found is not None else None, f"s{i}")
        both = s.query(Item).filter(Item.color == f"s{k}", Item.rank >= 100_000 + lo)
        self.expect(
            f"s{k} from {lo}", sorted(both.ids()), sorted(x for x in ids if int(x[1:]) >= lo)
        )
        self.expect("stable logs", s.query(Log).filter(Log.level == "stable").count(), STABLE)
        logs = s.query(Log).filter(Log.n >= 1_000_000).offset(lo).limit(5).ids()
        self.expect(f"logs from {lo}", logs, [f"s{j}" for j in range(lo, min(lo + 5, STABLE))])


def test_concurrent_writers_and_readers_during_runs(make_client: Any, redis_server: Any) -> None:
    r = make_client()
    r.flushall()
    seed_for_races(r)
    stop = threading.Event()
    writers = [Writer(make_client(protocol=3), n, stop) for n in range(2)]
    reader = Reader(make_client(decode_responses=True, protocol=2), stop)
    threads = [*writers, reader]
    for thread in threads:
        thread.start()
    runs = []
    try:
        time.sleep(0.2)
        for batch in (10, 50, 200):
            started = sum(w.commits for w in writers)
            report = reindex(registry, r, batch=batch)
            runs.append((report, sum(w.commits for w in writers) - started))
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    errors = [e for t in threads for e in t.errors]
    assert not errors, errors
    assert reader.wrong == [], reader.wrong[:5]
    assert reader.queries > 100
    assert all(report.ok for report, _ in runs), [report.problems for report, _ in runs]
    assert sum(during for _, during in runs) > 10  # commits landed while runs were building
    consistent(r)
    print(
        f"\nreindex under writers: {[d for _, d in runs]} commits during the runs, "
        f"{sum(w.commits for w in writers)} in all ({sum(w.refused for w in writers)} refused, "
        f"{sum(w.conflicts for w in writers)} conflicts), "
        f"{reader.queries} answers checked, {len(reader.wrong)} wrong, "
        f"page retries {[rep.models[0].retries for rep, _ in runs]}"
    )


def test_a_marker_of_another_type_is_refused(r: redis.Redis) -> None:
    r.set("{item}#x", "oops")
    with pytest.raises(MaintenanceError, match="is not a reindex marker"):
        reindex(Item, r)
    assert [(p.kind, p.key) for p in check(Item, r).problems] == [("wrong_type", "{item}#x")]


# -- an expiring model: equality indexes scored by the instants ----------------------

expiring = Registry()


@expiring.mapped(prefix="pass", ttl=3600, scored_indexes=True)
@attrs.define
class Pass:
    color: str = redisca.String(index=True)
    id: str | None = None


def _pass_eq(r: redis.Redis, color: str) -> dict[str, float]:
    key = redisca.inspect(Pass).layout.eq_index(b"color", color.encode())
    return {as_str(m): s for m, s in r.zrange(key, 0, -1, withscores=True)}


def test_check_reports_a_wrong_score_and_reindex_rescores_it(r: redis.Redis) -> None:
    with Session(r) as s:
        s.add_all(Pass("red", id=str(i)) for i in range(3))
        s.commit()
    layout = redisca.inspect(Pass).layout
    instant = r.zscore(layout.expiry, "1")
    assert _pass_eq(r, "red")["1"] == instant
    r.zadd(layout.eq_index(b"color", b"red"), {"1": 5})  # an instant long past: hidden
    with Session(r) as s:
        assert s.query(Pass).filter(Pass.color == "red").count() == 2
    problems = check(expiring, r).problems
    assert [(p.kind, p.field) for p in problems] == [("wrong_score", "color")]
    assert "expiry instant" in problems[0].detail
    assert reindex(expiring, r).ok
    assert _pass_eq(r, "red") == {str(i): r.zscore(layout.expiry, str(i)) for i in range(3)}
    assert check(expiring, r).ok
    with Session(r) as s:
        assert s.query(Pass).filter(Pass.color == "red").count() == 3


def test_reindex_migrates_equality_sets_to_sorted_sets(r: redis.Redis) -> None:
    """``scored_indexes=True`` given to a model with data: its equality indexes are
    plain sets (the default layout). check calls them wrong_type; reindex rebuilds them
    as sorted sets scored by the instants."""
    with Session(r) as s:
        s.add_all(Pass("red" if i % 2 else "blue", id=str(i)) for i in range(6))
        s.commit()
    s = Session(r)
    s.expire(s.get(Pass, "0"), None)  # no instant: +inf
    s.commit()
    s.close()
    layout = redisca.inspect(Pass).layout
    for color in ("red", "blue"):
        key = layout.eq_index(b"color", color.encode())
        members = r.zrange(key, 0, -1)
        r.delete(key)
        r.sadd(key, *members)
    problems = check(expiring, r).problems
    assert sorted((p.kind, p.key) for p in problems) == [
        ("wrong_type", "{pass}#i:color:blue"),
        ("wrong_type", "{pass}#i:color:red"),
    ]
    assert all("a set, not a zset" in p.detail for p in problems)
    assert reindex(expiring, r).ok
    assert r.type(layout.eq_index(b"color", b"red")) in (b"zset", "zset")
    blue = _pass_eq(r, "blue")
    assert blue["0"] == float("inf") and blue["2"] == r.zscore(layout.expiry, "2")
    assert check(expiring, r).ok
    assert_indexes_consistent(r, redisca.inspect(Pass))
    with Session(r) as s:
        assert s.query(Pass).filter(Pass.color == "red").count() == 3


#: The same keys mapped with the default layout (sets), as after scored_indexes=True is
#: taken away from Pass.
unscored = Registry()


@unscored.mapped(prefix="pass", ttl=3600)
@attrs.define
class PassSets:
    color: str = redisca.String(index=True)
    id: str | None = None


def test_reindex_turns_sorted_sets_back_into_sets(r: redis.Redis) -> None:
    """Taking ``scored_indexes=True`` away: check calls each sorted set wrong_type, and
    reindex rebuilds it as a set, leaving an expired entity's entry for the sweep."""
    with Session(r) as s:
        s.add_all(Pass("red" if i % 2 else "blue", id=str(i)) for i in range(6))
        s.commit()
    layout = redisca.inspect(PassSets).layout
    r.zadd(layout.expiry, {"3": 1})  # expired, not swept
    problems = check(unscored, r).problems
    assert sorted((p.kind, p.key) for p in problems) == [
        ("wrong_type", "{pass}#i:color:blue"),
        ("wrong_type", "{pass}#i:color:red"),
    ]
    assert reindex(unscored, r).ok
    red = layout.eq_index(b"color", b"red")
    assert r.type(red) in (b"set", "set")
    assert {as_str(m) for m in r.smembers(red)} == {"1", "3", "5"}
    assert check(unscored, r).ok
    assert_indexes_consistent(r, redisca.inspect(PassSets))
    with Session(r) as s:
        assert sorted(s.query(PassSets).filter(PassSets.color == "red").ids()) == ["1", "5"]

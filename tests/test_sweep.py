"""sweep: the leftovers of expired entities (hash, index entries, unique claims, collection
keys and member index entries, ``H#exp`` member) are removed exactly, and nothing else;
a writer that re-creates an id, extends its life or takes its unique value between the
sweep's read and its removal keeps its data; ``check`` counts expired entities as
"expired, not yet swept" (no problem) and reports an ``H#exp`` member without a hash;
``stats`` counts them.

Commits do not write ``H#exp`` here: entities are made expired by a raw ``ZADD`` of an
instant long past (1 s after the epoch), as the expiry design says.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import attrs
import pytest
import redis
from helpers import CLUSTER, Counted, set_instants

import redisca
from redisca import Integer, List, Registry, Session, Set, String
from redisca.maintenance import KINDS, check, stats, sweep
from redisca.session import routing
from redisca.session import sweep as sweeping
from redisca.session.executor import run

registry = Registry()


@registry.mapped(prefix="tok", ttl=3600)
@attrs.define
class Token:
    code: str = String(unique=True)
    kind: str = String(index=True)
    rank: int = Integer(index=True)
    tags: set[str] = Set(str, index=True)
    log: list[str] = List(str)
    note: str = String(default="")
    id: str | None = None


@registry.mapped(prefix="kept")
@attrs.define
class Kept:
    name: str = String(index=True)
    id: str | None = None


N = 12
EXPIRED = ("1", "4", "5", "9")
PAST = 1000  # ms since the epoch


def layout() -> Any:
    return redisca.inspect(Token).layout


def make(i: int) -> Token:
    return Token(
        code=f"c{i}",
        kind="ab"[i % 2],
        rank=i,
        tags={"x", f"t{i % 3}"},
        log=["a", f"l{i}", "a"],
        note=f"n{i}",
        id=str(i),
    )


def seed(r: redis.Redis, ids: list[int]) -> None:
    with Session(r) as s:
        s.add_all(make(i) for i in ids)
        s.add(Kept(name="k", id="k1"))
        s.commit()


def expire(r: redis.Redis, ids: tuple[str, ...], score: int = PAST) -> None:
    """Instants moved by hand: ``H#exp`` and the equality entries they score."""
    set_instants(r, Token, dict.fromkeys(ids, score))


def b(x: Any) -> bytes:
    return x.encode() if isinstance(x, str) else bytes(x)


def dump(r: redis.Redis) -> dict[bytes, Any]:
    """Every key of the models but the guard stripes, with its contents (``H#exp``: its
    members only, whose instants depend on the clock)."""
    out: dict[bytes, Any] = {}
    for key in r.keys("{tok}*") + r.keys("{kept}*"):
        key = b(key)
        kind = b(r.type(key))
        if b"#g:" in key:
            continue
        if kind == b"hash":
            value: Any = {b(k): b(v) for k, v in r.hgetall(key).items()}
        elif kind == b"set":
            value = {b(m) for m in r.smembers(key)}
        elif kind == b"zset":
            pairs = r.zrange(key, 0, -1, withscores=True)
            value = (
                {b(m) for m, _ in pairs}
                if key == layout().expiry or b"#i:" in key
                else {(b(m), s) for m, s in pairs}
            )
        elif kind == b"list":
            value = [b(m) for m in r.lrange(key, 0, -1)]
        else:
            value = b(r.get(key)) if kind == b"string" else kind
        out[key] = value
    return out


def flush(r: redis.Redis) -> None:
    if CLUSTER:
        for node in r.get_primaries():  # type: ignore[attr-defined]
            r.get_redis_connection(node).flushall()  # type: ignore[attr-defined]
    else:
        r.flushall()


def survivors() -> list[int]:
    return [i for i in range(N) if str(i) not in EXPIRED]


# -- the sweep ---------------------------------------------------------------------------


def test_sweep_removes_exactly_the_expired_entities(r: redis.Redis) -> None:
    seed(r, survivors())
    wanted = dump(r)
    flush(r)
    seed(r, list(range(N)))
    guards = {i: r.get(layout().guard(i.encode())) for i in EXPIRED}
    expire(r, EXPIRED)
    assert dump(r) != wanted
    report = sweep(registry, r, batch=3)  # several batches
    assert report.ok
    [model] = report.models  # Kept does not expire: not swept
    assert (model.model, model.removed, model.skipped) == ("Token", len(EXPIRED), 0)
    assert model.batches == 2
    assert dump(r) == wanted
    for i in EXPIRED:  # every commit that read them meanwhile fails its EXEC
        assert r.get(layout().guard(i.encode())) != guards[i]
    assert check(registry, r).ok
    assert sweep(registry, r).models[0].removed == 0  # nothing left to do


def test_unexpired_instants_and_other_models_are_left(r: redis.Redis) -> None:
    seed(r, list(range(N)))
    expire(r, ("2",), score=2**50)  # far in the future
    before = dump(r)
    report = sweep(registry, r, models=["Token"])
    assert report.models[0].removed == 0
    assert dump(r) == before
    with pytest.raises(redisca.maintenance.UnknownName, match="expiring"):
        sweep(registry, r, models=["Kept"])


def read(r: redis.Redis, limit: int = 100) -> sweeping.Batch:
    mapper = redisca.inspect(Token)
    reply = run(r, [sweeping.read_command(mapper, limit, by_digest=False)])[0]
    return sweeping.parse_batch(mapper, reply)


def remove(
    r: redis.Redis, batch: sweeping.Batch, items: list[sweeping.Expired] | None = None
) -> sweeping.Removal:
    mapper = redisca.inspect(Token)
    reply = run(r, [sweeping.removal_command(mapper, batch, items, by_digest=False)])[0]
    return sweeping.parse_removal(reply)


def test_the_read_returns_hashes_and_members_of_expired_ids_only(r: redis.Redis) -> None:
    seed(r, list(range(N)))
    expire(r, ("3",))
    expire(r, ("7",), score=2**50)
    batch = read(r)
    assert batch.rebuild is None and batch.now_ms > 1_700_000_000_000
    [item] = batch.expired
    assert item.id == "3"
    assert item.fields[b"code"] == b"c3" and item.fields[b"rank"] == b"3"
    members = {field.name: got for field, got in item.members.items()}
    assert members == {"tags": frozenset({b"x", b"t0"}), "log": (b"a", b"l3", b"a")}


def test_a_writer_recreating_the_id_keeps_its_data(r: redis.Redis) -> None:
    seed(r, list(range(N)))
    expire(r, ("1", "4"))
    batch = read(r)
    assert {i.id for i in batch.expired} == {"1", "4"}
    expire(r, ("1",), score=2**50)  # alive again, so that a session sees it (and deletes it)
    with Session(r) as s:  # id 1 re-created with other values between read and removal
        s.delete(s.get(Token, "1"))
        s.commit()
        s.add(Token(code="new", kind="z", rank=99, tags={"y"}, id="1"))
        s.commit()
    expire(r, ("1",))  # expired as well: only its hash tells the incarnations apart
    before = dump(r)
    removal = remove(r, batch)
    # "4" went with the commit that deleted "1" (a commit that reads sweeps a batch too),
    # so it fails its re-check as well; all or nothing: nothing was removed.
    assert (removal.removed, removal.skipped) == (0, ("1", "4"))
    assert dump(r) == before
    assert not r.exists(layout().entity("4"))
    assert b(r.hget(layout().entity("1"), "code")) == b"new"
    assert r.sismember(layout().eq_index(b"kind", b"z"), "1")
    assert r.zscore(layout().range_index(b"rank"), "1") == 99
    assert r.smembers(layout().members(b"tags", b"1")) in ({b"y"}, {"y"})
    assert r.zscore(layout().expiry, "1") is not None  # left for a later sweep


def test_a_new_owner_of_the_unique_value_keeps_its_claim(r: redis.Redis) -> None:
    seed(r, list(range(N)))
    expire(r, ("4",))
    batch = read(r)
    stripe = layout().unique_stripe(b"code", b"c4")
    r.hset(stripe, "c4", "other")  # the value claimed from the expired owner meanwhile
    assert remove(r, batch).removed == 1
    assert b(r.hget(stripe, "c4")) == b"other"
    assert not r.exists(layout().entity("4"))
    assert not r.exists(layout().members(b"tags", b"4"))


@pytest.mark.parametrize("change", ["ttl", "members", "hash", "list", "list order"])
def test_an_entity_changed_after_the_read_is_skipped(r: redis.Redis, change: str) -> None:
    seed(r, list(range(N)))
    expire(r, ("5",))
    batch = read(r)
    if change == "ttl":  # its life extended
        expire(r, ("5",), score=2**50)
    elif change == "members":
        r.sadd(layout().members(b"tags", b"5"), "late")
    elif change == "list":
        r.rpush(layout().members(b"log", b"5"), "late")
    elif change == "list order":
        r.lset(layout().members(b"log", b"5"), 0, "l5")
        r.lset(layout().members(b"log", b"5"), 1, "a")
    else:
        r.hset(layout().entity("5"), "note", "late")
    before = dump(r)
    assert remove(r, batch).skipped == ("5",)
    assert dump(r) == before


def test_a_reindex_starting_after_the_read_makes_it_read_again(r: redis.Redis) -> None:
    seed(r, list(range(N)))
    expire(r, ("5",))
    batch = read(r)
    r.rpush(layout().marker, "abc", "kind")
    removal = remove(r, batch)
    assert removal.marker_changed and removal.removed == 0
    assert r.exists(layout().entity("5"))


def test_the_removal_declares_every_key_it_touches(r: redis.Redis) -> None:
    seed(r, list(range(N)))
    expire(r, EXPIRED)
    batch = read(r)
    keys, _ = sweeping.removal_call(redisca.inspect(Token), batch)
    assert len(keys) == len(set(keys))
    assert all(k.startswith(b"{tok}") for k in keys)
    commands = sweeping.removal(redisca.inspect(Token), list(batch.expired))
    assert set(routing.commit_keys(commands)) <= set(keys)
    assert {routing.slot_of(k) for k in keys} == {routing.slot_of(layout().expiry)}


# -- check and stats ------------------------------------------------------------------------


def test_check_counts_expired_entities_and_reports_no_problem(r: redis.Redis) -> None:
    seed(r, list(range(N)))
    # The unique value of an expired entity taken over by another one (what a claim of
    # a value held by an expired owner does). Expired after this commit, which would
    # otherwise sweep them (a commit that reads sweeps a batch).
    with Session(r) as s:
        s.add(make(50))
        s.commit()
    expire(r, EXPIRED)
    r.hdel(layout().unique_stripe(b"code", b"c50"), "c50")
    r.hset(layout().entity("50"), "code", "c1")
    r.hset(layout().unique_stripe(b"code", b"c1"), "c1", "50")
    report = check(registry, r)
    assert report.ok, report.problems
    token = next(m for m in report.models if m.model == "Token")
    assert token.expired == len(EXPIRED)
    assert sweep(registry, r).models[0].removed == len(EXPIRED)
    report = check(registry, r)
    assert report.ok, report.problems
    assert next(m for m in report.models if m.model == "Token").expired == 0
    assert b(r.hget(layout().unique_stripe(b"code", b"c1"), "c1")) == b"50"


def test_check_reports_an_expiry_member_without_a_hash(r: redis.Redis) -> None:
    seed(r, list(range(N)))
    expire(r, ("ghost",), score=2**50)
    expire(r, ("old-ghost",))
    report = check(registry, r)
    found = sorted((p.kind, p.detail) for p in report.problems)
    assert [k for k, _ in found] == ["stale_expiry", "stale_expiry"]
    assert "ghost" in found[0][1]
    assert "stale_expiry" in KINDS
    assert sweep(registry, r).models[0].removed == 1  # the expired one's member goes
    assert [p.detail for p in check(registry, r).problems] == [found[0][1]]


def test_an_id_that_is_not_utf8_is_reported_and_left(r: redis.Redis) -> None:
    seed(r, list(range(N)))
    expire(r, EXPIRED)
    r.zadd(layout().expiry, {b"\xff": PAST})
    report = sweep(registry, r, batch=2)
    assert report.models[0].removed == len(EXPIRED)
    assert [(p.kind, p.key) for p in report.problems] == [("undecodable", "{tok}#exp")]
    assert r.zscore(layout().expiry, b"\xff") == PAST
    assert r.zcount(layout().expiry, "-inf", PAST) == 1
    assert [p.kind for p in check(registry, r).problems] == ["stale_expiry"]


def test_check_reports_an_expiry_set_of_another_type(r: redis.Redis) -> None:
    seed(r, [0])
    r.set(layout().expiry, "x")
    kinds = [p.kind for p in check(registry, r).problems]
    assert kinds == ["wrong_type"]


def test_stats_counts_pending_expired_entities(r: redis.Redis) -> None:
    seed(r, list(range(N)))
    expire(r, EXPIRED)
    expire(r, ("2",), score=2**50)
    instants = r.zcard(layout().expiry)  # commits write theirs (ttl=) once they do
    token = next(m for m in stats(registry, r).models if m.model == "Token")
    assert (token.expired, token.expiring) == (len(EXPIRED), instants)
    # Its equality index entries are counted, expired ones included.
    eq = sum(r.scard(layout().eq_index(b"kind", v)) for v in (b"a", b"b"))
    assert eq == N
    assert token.index_keys["eq"] == 2 and token.index_entries == eq + N + N  # rank, code
    sweep(registry, r)
    token = next(m for m in stats(registry, r).models if m.model == "Token")
    assert (token.expired, token.expiring) == (0, instants - len(EXPIRED))


# -- the command line ---------------------------------------------------------------------


def test_cli_sweep(r: redis.Redis, redis_url: str) -> None:
    seed(r, list(range(N)))
    expire(r, EXPIRED)
    env_cluster = ["--cluster"] if CLUSTER else []
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "redisca",
            "sweep",
            "test_sweep:registry",
            "--url",
            redis_url,
            "--json",
            *env_cluster,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=__file__.rsplit("/", 1)[0],
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["ok"] and out["models"][0]["removed"] == len(EXPIRED)
    assert not r.exists(layout().entity("1"))


def test_flask_sweep_and_check_text(r: redis.Redis, redis_url: str) -> None:
    from flask import Flask

    from redisca.flaskcli import cli as flask_cli

    seed(r, list(range(N)))
    expire(r, EXPIRED)
    app = Flask("sweep_test_app")
    app.config["REDISCA_REGISTRY"] = registry
    runner = app.test_cli_runner()
    where = ["--url", redis_url, *(["--cluster"] if CLUSTER else [])]
    done = runner.invoke(flask_cli, ["check", *where])
    assert done.exit_code == 0, done.output
    assert f"{len(EXPIRED)} expired entities not yet swept" in done.output
    done = runner.invoke(flask_cli, ["stats", *where])
    assert f"{len(EXPIRED)} expired not yet swept" in done.output
    done = runner.invoke(flask_cli, ["sweep", "--model", "Token", *where])
    assert done.exit_code == 0, done.output
    assert f"Token (tok): removed {len(EXPIRED)} expired entities" in done.output
    assert (
        "expired entities not yet swept" not in runner.invoke(flask_cli, ["check", *where]).output
    )


def test_a_running_reindex_build_keys_lose_the_entries_too(r: redis.Redis) -> None:
    seed(r, list(range(N)))
    expire(r, ("4",))
    run_token = b"abc"
    r.rpush(layout().marker, run_token, b"kind", b"code")
    live = layout().eq_index(b"kind", b"a")
    built = layout().build(run_token, live)
    r.sadd(built, "4", "2")  # what the run built so far
    stripe = layout().unique_stripe(b"code", b"c4")
    built_stripe = layout().build(run_token, stripe)
    r.hset(built_stripe, mapping={"c4": "4", "c2": "2"})
    assert sweep(registry, r).models[0].removed == 1
    assert {b(m) for m in r.smembers(built)} == {b"2"}
    assert {b(k) for k in r.hkeys(built_stripe)} == {b"c2"}
    directory = {b(k): b(v) for k, v in r.hgetall(layout().build_dir(run_token)).items()}
    assert directory[built] == live and directory[built_stripe] == stripe


def test_sweeps_racing_commits_leave_no_drift(r: redis.Redis, make_client: Any) -> None:
    """Writers update (indexed fields, sets) and re-create entities, expired or not, while
    sweeps run: afterwards, a last sweep leaves exactly the entities not expired, and
    check finds nothing wrong."""
    import random
    import threading

    n = 60
    seed(r, list(range(n)))
    doomed = tuple(str(i) for i in range(0, n, 2))
    expire(r, doomed)
    stop = threading.Event()
    errors: list[BaseException] = []
    commits: list[int] = []

    def writer(seed_: int) -> None:
        rnd = random.Random(seed_)
        client = make_client()
        try:
            while not stop.is_set():
                i = rnd.randrange(n)
                with Session(client) as s:
                    obj = s.get(Token, str(i))
                    if obj is None:
                        s.add(make(i))
                    elif rnd.random() < 0.3:
                        s.delete(obj)
                    else:
                        obj.kind = rnd.choice("abz")
                        obj.rank = rnd.randrange(100)
                        obj.tags = {rnd.choice("xyz")}
                    try:
                        s.commit()
                        commits.append(1)
                    except redisca.RediscaError:
                        s.rollback()  # a conflict: the next round tries again
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    runs = 0
    # At least 1.5 s of racing, and on until both sides did enough to race (a slow
    # machine or a cluster client's discovery can hold a sweep up), within 30 s.
    start = time.monotonic()
    try:
        while time.monotonic() - start < 1.5 or (
            (runs <= 5 or len(commits) <= 20) and time.monotonic() - start < 30
        ):
            sweep(registry, make_client(), batch=7)
            runs += 1
            expire(r, doomed)  # the ids re-created meanwhile expire again
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    # The writers' commits sweep too (a commit that reads takes a batch), so how many of
    # the removals were the sweeper's varies; that nothing drifted is what counts.
    assert len(commits) > 20 and runs > 5
    expire(r, doomed)
    sweep(registry, r)
    report = check(registry, r)
    assert report.ok, report.problems
    left = {b(k) for k in r.keys("{tok}:*")}
    assert not left & {layout().entity(i) for i in doomed}
    assert r.zcount(layout().expiry, "-inf", PAST) == 0


def test_a_model_of_a_slot_group_is_swept_on_its_node(r: redis.Redis) -> None:
    grouped = Registry()

    @grouped.mapped(prefix="ses", slot_group="auth", expiring=True)
    @attrs.define
    class Login:
        user: str = String(unique=True)
        tags: set[str] = Set(str, index=True)
        id: str | None = None

    with Session(r) as s:
        s.add_all(Login(user=f"u{i}", tags={"t"}, id=str(i)) for i in range(5))
        s.commit()
    where = redisca.inspect(Login).layout
    r.zadd(where.expiry, {"1": PAST, "3": PAST})
    report = sweep(grouped, r)
    assert report.models[0].removed == 2
    assert [b(k) for k in sorted(r.keys("{auth}ses:*"))] == [
        where.entity(i) for i in ("0", "2", "4")
    ]
    assert {b(m) for m in r.smembers(where.eq_index(b"tags", b"t"))} == {b"0", b"2", b"4"}
    assert check(grouped, r).ok


# -- commits sweep too -------------------------------------------------------------------


def _expired_left(r: redis.Redis) -> set[str]:
    return {b(m).decode() for m in r.zrangebyscore(layout().expiry, "-inf", PAST)}


def test_a_commit_that_reads_sweeps_in_its_own_round_trips(
    r: redis.Redis, counted: Counted
) -> None:
    """An update of an indexed field reads before its transaction: that read takes a
    batch of expired entities, and the transaction removes them (guarded as a sweep
    is), with no round trip added."""
    seed(r, list(range(N)))
    expire(r, EXPIRED)
    s = Session(counted.client)
    token = s.get(Token, "0")
    assert token is not None
    token.kind = "z"
    counted.reset()
    s.commit()
    assert counted.round_trips == 2
    assert _expired_left(r) == set()
    assert not [i for i in EXPIRED if r.exists(layout().entity(i))]
    assert r.hget(layout().entity("0"), "kind") in (b"z", "z")
    report = check(registry, r)
    assert report.ok and report.models[0].expired == 0, report.problems


def test_a_commit_sweeps_at_most_sixteen_per_model(r: redis.Redis) -> None:
    seed(r, list(range(40)))
    doomed = tuple(str(i) for i in range(1, 31))
    expire(r, doomed)
    for left in (14, 0):
        with Session(r) as s:
            token = s.get(Token, "0")
            token.rank += 1  # type: ignore[union-attr]
            s.commit()
        assert len(_expired_left(r)) == left
    assert check(registry, r).ok


def test_a_commit_that_reads_nothing_sweeps_nothing(r: redis.Redis, counted: Counted) -> None:
    """A plain update sends its transaction alone: one round trip, no sweep."""
    seed(r, list(range(N)))
    expire(r, EXPIRED)
    s = Session(counted.client)
    token = s.get(Token, "0")
    token.note = "plain"  # type: ignore[union-attr]
    counted.reset()
    s.commit()
    assert counted.round_trips == 1
    assert _expired_left(r) == set(EXPIRED)


def test_an_expired_id_the_commit_writes_is_left_to_the_commit(r: redis.Redis) -> None:
    """Created again with its own id while its old self waits in the batch: the insert
    removes the old leftovers itself, and the sweep leaves the id alone."""
    seed(r, list(range(N)))
    expire(r, EXPIRED)
    with Session(r) as s:
        again = make(1)
        again.code, again.tags = "new1", {"fresh"}
        s.add(again)
        s.commit()
    assert _expired_left(r) == set()
    with Session(r) as s:
        found = s.get(Token, "1")
        assert found is not None and found.code == "new1" and found.tags == {"fresh"}
        assert s.query(Token).filter(Token.tags.contains("x")).count() == N - len(EXPIRED)
    assert check(registry, r).ok

"""Expiry of a sharded model (``registry.mapped(shards=N, ttl=...)``): each shard keeps
its entities' instants in its own ``H#exp``, and every reader, commit, sweep and
maintenance task reads the shard of the entity it touches. Checked against the same
model with one shard, on one server and on the 3-master cluster, with the async session
too: an expired entity is gone for every reader before any sweep; its unique value can
be claimed; ``check`` tells expired leftovers from drift; ``sweep`` removes them all;
``reindex`` and ``reshard`` keep every live entity's instant."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from helpers import server_or_cluster, set_instants
from redis.cluster import RedisCluster

import redisca
from redisca import Integer, Registry, Session, Set, String, UniqueViolation
from redisca.maintenance import check, reindex, reshard, stats, sweep

#: Each test runs with the sync Session and with an AsyncSession (conftest: driver).
pytestmark = pytest.mark.usefixtures("driver")


def _token(
    shards: int, prefix: str, unique: bool = True, scored: bool = False
) -> tuple[Registry, type]:
    registry = Registry()

    @registry.mapped(prefix=prefix, shards=shards, ttl=600, scored_indexes=scored)
    @attrs.define
    class Token:
        owner: str = String(index=True)
        score: int | None = Integer(index=True, default=None)
        code: str | None = String(unique=unique, default=None)
        tags: set[str] = Set(str, index=True)
        id: str | None = None

    return registry, Token


#: The same model with one shard and with 8, in their own key spaces.
(REG1, T1), (REG8, T8) = _token(1, "xe1"), _token(8, "xe8")
#: The model with 8 shards and no unique field, its equality indexes scored.
REGV, V8 = _token(8, "xev", unique=False, scored=True)
#: The model of the reshard test, as deployed with 1, then 8, then 3 shards.
RESHARDED = {n: _token(n, "xer") for n in (1, 8, 3)}

N = 120
#: Ids made expired (instant 1 ms after the epoch): about half, in every shard.
EXPIRED = [f"t{i:03d}" for i in range(N) if i % 3 == 0 or i % 7 == 0]
LIVE = [f"t{i:03d}" for i in range(N) if f"t{i:03d}" not in EXPIRED]


@pytest.fixture(params=["one server", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from server_or_cluster(request)


def fill(client: Any, *models: type) -> None:
    with Session(client) as s:
        for cls in models:
            s.add_all(
                cls(
                    owner=f"o{i % 5}",
                    score=i % 17 or None,
                    code=f"c{i}",
                    tags={f"g{i % 3}", f"h{i % 4}"},
                    id=f"t{i:03d}",
                )
                for i in range(N)
            )
        s.commit()


def expire(client: Any, *models: type) -> None:
    for cls in models:
        set_instants(client, cls, dict.fromkeys(EXPIRED, 1))


def seen(client: Any, cls: type) -> dict[str, Any]:
    """What readers of ``cls`` see, in forms that do not depend on the shard count."""
    out: dict[str, Any] = {}
    with Session(client) as s:
        found = s.get_many(cls, [f"t{i:03d}" for i in range(N)])
        out["get_many"] = [x.id for x in found if x is not None]
        out["expires_at set"] = all(redisca.inspect(x).expires_at for x in found if x)
        q = s.query(cls)
        out["count"] = q.count()
        out["eq count"] = q.filter_by(owner="o1").count()
        out["range count"] = q.filter(cls.score >= 5).count()
        out["contains count"] = q.filter(cls.tags.contains("g1")).count()
        out["page"] = q.order_by(cls.score).offset(7).limit(10).ids()
        out["page desc"] = q.order_by(cls.score.desc()).offset(3).limit(12).ids()
        out["eq page"] = q.filter_by(owner="o2").order_by(cls.score).limit(9).ids()
        out["eq range"] = q.filter(cls.owner == "o4", cls.score.between(2, 11)).ids()
        out["contains and eq"] = q.filter(cls.tags.contains("h1"), cls.owner == "o0").ids()
        out["all ids"] = q.ids()
        loaded = q.order_by(cls.score).limit(15).all()
        out["loaded instants"] = [
            redisca.inspect(x).expires_at == redisca.inspect(s.get(cls, x.id)).expires_at
            for x in loaded
        ]
        walked, last = [], None
        while True:
            page = q.order_by(cls.score).limit(13)
            page = page.after(last) if last is not None else page
            got = page.all()
            walked += [x.id for x in got]
            if len(got) < 13:
                break
            last = got[-1]
        out["keyset walk"] = walked
        out["by code"] = {
            c: getattr(q.filter_by(code=c).first(), "id", None)
            for c in ("c0", "c1", "c3", "c7", "c8", "c100")
        }
    return out


def test_readers_of_a_sharded_model_never_see_an_expired_entity(client: Any) -> None:
    fill(client, T1, T8)
    before = seen(client, T8)
    assert before == seen(client, T1)
    assert before["count"] == N and before["get_many"] == [f"t{i:03d}" for i in range(N)]
    expire(client, T1, T8)
    after = seen(client, T8)
    assert after == seen(client, T1)
    assert after["get_many"] == LIVE and after["count"] == len(LIVE)
    assert sorted(after["all ids"]) == LIVE and sorted(after["keyset walk"]) == LIVE
    assert after["eq count"] == len([i for i in LIVE if int(i[1:]) % 5 == 1])
    assert after["by code"] == {"c0": None, "c1": "t001", "c3": None, "c7": None, "c8": "t008",
                                "c100": "t100"}  # fmt: skip
    assert after["expires_at set"] and all(after["loaded instants"])
    # Nothing was swept: the expired entities' hashes are all still there.
    mapper = redisca.inspect(T8)
    assert sum(client.exists(mapper.layout.entity(i)) for i in EXPIRED) == len(EXPIRED)


def test_pages_skip_long_runs_of_expired_ids_in_every_shard(client: Any) -> None:
    """Most of each shard's window expired, at its start: a shard's slice reads its
    window in chunks (16 ids, then doubling) until it has the page's live ids."""
    with Session(client) as s:
        for cls in (T1, T8):
            s.add_all(cls(owner=f"o{i % 2}", score=i, id=f"p{i:04d}") for i in range(800))
        s.commit()
    gone = {f"p{i:04d}": 1 for i in range(800) if i < 600 or i % 5 == 0}
    for cls in (T1, T8):
        set_instants(client, cls, gone)
    live = [f"p{i:04d}" for i in range(800) if f"p{i:04d}" not in gone]
    with Session(client) as s:
        for offset, limit in ((0, 5), (3, 7), (150, 10), (0, 400)):
            for cls in (T1, T8):
                q = s.query(cls).order_by(cls.score).offset(offset).limit(limit)
                assert q.ids() == live[offset : offset + limit], (cls, offset, limit)
                low = s.query(cls).filter(cls.score.between(590, 700)).order_by(cls.score)
                assert low.limit(6).ids() == [i for i in live if int(i[1:]) <= 700][:6]
            desc = s.query(T8).order_by(T8.score.desc()).offset(offset).limit(limit).ids()
            assert desc == live[::-1][offset : offset + limit]
    # Live ids scattered (one in four) in one shard, so its chunks make the page: they
    # end on live ids too, each read once.
    layout = redisca.inspect(T8).layout
    ids = [i for i in (f"q{n:05d}" for n in range(8000)) if layout.shard_of(i) == 5][:400]
    with Session(client) as s:
        s.add_all(T8(owner="q", score=1000 + n, id=i) for n, i in enumerate(ids))
        s.commit()
    set_instants(client, T8, {i: 1 for n, i in enumerate(ids) if n % 4 != 3})
    scattered = [i for n, i in enumerate(ids) if n % 4 == 3]
    with Session(client) as s:
        window = s.query(T8).filter(T8.score >= 1000).order_by(T8.score)
        for offset, limit in ((0, 30), (10, 45), (0, 200)):
            assert window.offset(offset).limit(limit).ids() == scattered[offset : offset + limit]


def test_a_value_an_expired_entity_holds_in_another_shard_is_claimed(client: Any) -> None:
    fill(client, T8)
    mapper = redisca.inspect(T8)
    # t003 holds c3 and expires; the claim of "c3" lives in another shard (the value's).
    assert mapper.layout.shard_of("t003") != mapper.layout.for_value(b"c3").shard_of("")
    expire(client, T8)
    with Session(client) as s:
        s.add(T8(owner="new", code="c3", id="n1"))
        s.commit()
    with Session(client) as s:
        s.add(T8(owner="new", code="c1", id="n2"))  # c1's holder t001 is live
        with pytest.raises(UniqueViolation, match="'c1' is already taken by id 't001'"):
            s.commit()
        s.rollback()
        assert s.query(T8).filter_by(code="c3").one().id == "n1"
        assert s.get(T8, "t003") is None
    assert claimed(client, T8, "c3") == "n1"
    report = check(REG8, client)  # t003 still holds c3, expired: no problem
    assert report.ok, report.problems
    with Session(client) as s:  # t003's id again: a new entity, claiming c3 back fails
        s.add(T8(owner="again", code="c3", id="t003"))
        with pytest.raises(UniqueViolation, match="taken by id 'n1'"):
            s.commit()
        s.rollback()
        s.add(T8(owner="again", code="c12", id="t003"))  # t012 expired: c12 is free
        s.commit()
    assert claimed(client, T8, "c12") == "t003"
    assert check(REG8, client).ok


def claimed(client: Any, cls: type, value: str) -> str | None:
    """The owner a unique value's claim names, from raw Redis (in the value's shard)."""
    stripe = redisca.inspect(cls).layout.unique_stripe(b"code", value.encode())
    owner = client.hget(stripe, value)
    return None if owner is None else owner.decode()


def test_session_expire_moves_an_entity_in_its_own_shard(client: Any) -> None:
    fill(client, T8, V8)
    mapper = redisca.inspect(T8)
    with Session(client) as s:
        token = s.get(T8, "t010")
        s.expire(token, 3600)
        s.commit()
        at = redisca.inspect(token).expires_at
        assert at is not None
    ms = client.zscore(mapper.layout.expiry_of("t010"), "t010")
    assert math.isclose(ms / 1000, at.timestamp(), abs_tol=0.002)
    eq = mapper.layout.for_id("t010").eq_index(b"owner", b"o0")
    assert client.sismember(eq, "t010")  # a set entry: the instant is in H#exp alone
    scored = redisca.inspect(V8).layout.for_id("t010").eq_index(b"owner", b"o0")
    with Session(client) as s:  # scored_indexes=True: the entry is rescored too
        s.expire(s.get(V8, "t010"), 3600)
        s.commit()
    assert client.zscore(scored, "t010") == client.zscore(
        redisca.inspect(V8).layout.expiry_of("t010"), "t010"
    )
    with Session(client) as s:
        token = s.get(T8, "t010")
        assert redisca.inspect(token).expires_at == at
        s.expire(token, None)  # never
        s.commit()
    assert client.zscore(mapper.layout.expiry_of("t010"), "t010") is None
    with Session(client) as s:
        assert redisca.inspect(s.get(T8, "t010")).expires_at is None
        assert "t010" in s.query(T8).filter_by(owner="o0").ids()


def test_check_stats_and_sweep_of_a_sharded_model(client: Any) -> None:
    fill(client, T1, T8)
    expire(client, T1, T8)
    for registry in (REG1, REG8):
        report = check(registry, client)
        assert report.ok, report.problems
        (model,) = report.models
        assert (model.entities, model.expired) == (N, len(EXPIRED))
        assert stats(registry, client).models[0].expired == len(EXPIRED)
    one, eight = check(REG1, client).models[0], check(REG8, client).models[0]
    assert one.expired_entries == eight.expired_entries > 0
    swept = sweep(REG8, client)
    assert swept.ok and swept.models[0].removed == len(EXPIRED)
    assert sweep(REG1, client).models[0].removed == len(EXPIRED)
    report = check(REG8, client)
    assert report.ok and report.models[0].entities == len(LIVE)
    assert report.models[0].expired == 0
    assert stats(REG8, client).models[0].expired == 0
    mapper = redisca.inspect(T8)
    assert not any(client.exists(mapper.layout.entity(i)) for i in EXPIRED)
    for ident in EXPIRED:  # no member key, no instant, no index entry left
        layout = mapper.layout.for_id(ident)
        assert client.zscore(layout.expiry, ident) is None
        assert not client.exists(layout.members(b"tags", ident.encode()))
        assert client.zscore(layout.range_index(b"score"), ident) is None
    assert seen(client, T8) == seen(client, T1)
    for ident in EXPIRED:  # every swept entity's claim released
        assert claimed(client, T8, f"c{int(ident[1:])}") is None
    with Session(client) as s:  # so every expired value is free: claimed in one commit
        s.add_all(T8(owner="x", code=f"c{int(i[1:])}") for i in EXPIRED)
        s.commit()
    assert check(REG8, client).ok


@pytest.mark.parametrize("model", ["no unique field", "a unique field"])
def test_a_commit_sweeps_the_shards_it_writes(client: Any, model: str) -> None:
    """Up to 16 expired entities of each shard a commit writes, in that shard's
    transaction. On a cluster, a model with a unique field is left to ``sweep``: its
    entities' claims are in other shards, which the transaction cannot reach."""
    registry, cls = (REGV, V8) if model == "no unique field" else (REG8, T8)
    fill(client, cls)
    expire(client, cls)
    mapper = redisca.inspect(cls)
    target = mapper.layout.shard_of("t001")
    in_shard = [i for i in EXPIRED if mapper.layout.shard_of(i) == target]
    elsewhere = [i for i in EXPIRED if mapper.layout.shard_of(i) != target]
    assert 0 < len(in_shard) <= 16
    with Session(client) as s:
        s.get(cls, "t001").owner = "moved"  # an indexed change: its reads go out
        s.commit()
    swept = not (isinstance(client, RedisCluster) and mapper.uniques)
    left = [i for i in in_shard if client.exists(mapper.layout.entity(i))]
    assert left == ([] if swept else in_shard)
    assert all(client.exists(mapper.layout.entity(i)) for i in elsewhere)
    if mapper.uniques and swept:
        assert not any(claimed(client, cls, f"c{int(i[1:])}") for i in in_shard)
    assert check(registry, client).ok
    assert sweep(registry, client).models[0].removed == len(EXPIRED) - swept * len(in_shard)
    assert check(registry, client).ok


def test_reindex_keeps_the_instants_and_skips_nothing_live(client: Any) -> None:
    fill(client, T8)
    expire(client, T8)
    before = seen(client, T8)
    mapper = redisca.inspect(T8)
    for layout in mapper.shard_layouts():  # lose every equality index of every shard
        for key in client.scan_iter(match=layout.hashtag + b"#i:*"):
            client.delete(key)
    done = reindex(REG8, client)
    assert done.ok, done.problems
    assert seen(client, T8) == before
    assert check(REG8, client).ok


def test_reshard_moves_the_instants_and_collections_with_the_entities(client: Any) -> None:
    registry, cls = RESHARDED[1]
    fill(client, cls)
    expire(client, cls)
    with Session(client) as s:
        s.expire(s.get(cls, "t001"), 7200)
        s.commit()
    before = seen(client, cls)
    waiting = check(registry, client).models[0].expired  # (that commit swept a few)
    assert 0 < waiting < len(EXPIRED)
    for shards in (8, 3):
        registry, cls = RESHARDED[shards]
        done = reshard(registry, "Token", shards, client)
        assert done.ok, done.problems
        assert seen(client, cls) == before
        report = check(registry, client)
        assert report.ok, report.problems
        assert report.models[0].expired == waiting
    assert sweep(registry, client).models[0].removed == waiting
    assert seen(client, cls) == before
    assert check(registry, client).ok

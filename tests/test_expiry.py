"""Logical expiry (issue 17): ``mapped(ttl=...)``, ``session.expire``, ``expires_at``,
and what commits and loads make of an expired entity before any sweep.

An entity is made expired by a raw ``ZADD`` of a small instant into its model's
``H#exp`` (the server's clock is far past it), so no test sleeps for a TTL.
"""

from __future__ import annotations

import math
import time
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import redis
from helpers import (
    CLUSTER,
    FENCE_READ,
    Counted,
    as_str,
    assert_indexes_consistent,
    head,
    set_instants,
    stripe_key,
    transactions,
)

import redisca
from redisca import (
    Integer,
    IntegrityError,
    InvalidRequestError,
    Reference,
    Registry,
    Session,
    Set,
    StaleDataError,
    String,
    UncommittedChangesWarning,
    UniqueViolation,
    ValidationError,
)

#: Each test runs with the sync Session and with an AsyncSession (conftest: driver).
pytestmark = pytest.mark.usefixtures("driver")

registry = Registry()


@registry.mapped(prefix="tok", ttl=60, slot_group="exp", scored_indexes=True)
@attrs.define
class Token:
    owner: str = String(index=True)
    code: str | None = String(unique=True, default=None)
    score: int | None = Integer(index=True, default=None)
    tags: set[str] = Set(str, index=True)
    id: str | None = None


@registry.mapped(prefix="ses", expiring=True)
@attrs.define
class Visit:
    page: str = String()
    id: str | None = None


@registry.mapped(prefix="vvis", expiring=True, versioned=True)
@attrs.define
class Versioned:
    page: str = String()
    id: str | None = None


@registry.mapped(prefix="chn", slot_group="exp", expiring=True, scored_indexes=True)
@attrs.define
class Chain:
    """An expiring referrer whose target's delete cascades to it."""

    token: Token | None = Reference(Token, index=True, on_delete="cascade", default=None)
    id: str | None = None


@registry.mapped(prefix="lbl", slot_group="exp", expiring=True, scored_indexes=True)
@attrs.define
class Label:
    """Expiring, no ttl: its equality entries score +inf until an expire."""

    color: str = String(index=True)
    size: str | None = String(index=True, default=None)
    id: str | None = None


@registry.mapped(prefix="pln")
@attrs.define
class Plain:
    name: str = String()
    id: str | None = None


@registry.mapped(prefix="grt", slot_group="exp")
@attrs.define
class Grant:
    token: Token | None = Reference(Token, index=True, on_delete="restrict", default=None)
    id: str | None = None


def _cost_model(prefix: str, **options: object) -> type:
    @registry.mapped(prefix=prefix, **options)  # type: ignore[call-overload]
    @attrs.define
    class Costed:
        name: str = String()
        code: str | None = String(unique=True, default=None)
        n: int | None = Integer(index=True, default=None)
        id: str | None = None

    return Costed


#: The same model twice, plain and with a time to live: what expiry costs.
PlainCost, ExpiringCost = _cost_model("cpl"), _cost_model("cex", ttl=60)


@registry.mapped(prefix="lnk", slot_group="exp", expiring=True)
@attrs.define
class Link:
    token: Token | None = Reference(Token, index=True, on_delete="restrict", default=None)
    id: str | None = None


@registry.mapped(prefix="pin", slot_group="exp", expiring=True)
@attrs.define
class Pin:
    token: Token | None = Reference(Token, index=True, on_delete="set_null", default=None)
    id: str | None = None


@registry.mapped(prefix="bdg", slot_group="exp", expiring=True)
@attrs.define
class Badge:
    """The default layout: equality indexes are sets (Token and Label are scored)."""

    color: str = String(index=True)
    size: str | None = String(index=True, default=None)
    id: str | None = None


TOK = head("tok", "exp")


def expiry_key(model: type) -> bytes:
    return redisca.inspect(model).layout.expiry  # type: ignore[no-any-return]


def instant(r: redis.Redis, model: type, ident: str) -> float | None:
    return r.zscore(expiry_key(model), ident)


def expire_now(r: redis.Redis, model: type, ident: str) -> None:
    """Make an entity expired, as if its instant had passed (its equality index entries
    are scored by the instant too)."""
    set_instants(r, model, {ident: 1})


def server_ms(r: redis.Redis) -> int:
    if CLUSTER:
        node = r.get_default_node()  # type: ignore[attr-defined]
        seconds, micros = r.get_redis_connection(node).time()  # type: ignore[attr-defined]
    else:
        seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def consistent(r: redis.Redis, model: type) -> None:
    """The model's index keys hold what its hashes call for (``H#exp`` as it is: the
    helper knows no instants, and scores the equality entries by it)."""
    assert_indexes_consistent(r, redisca.inspect(model))


def persist(r: redis.Redis, *objs: object) -> None:
    s = Session(r)
    s.add_all(objs)
    s.commit()
    s.close()


# -- writing instants ------------------------------------------------------------------


def test_an_insert_writes_its_instant_in_one_round_trip(r: redis.Redis, counted: Counted) -> None:
    s = Session(counted.client)
    token = Token("ann")  # a generated id: nothing to read
    s.add(token)
    before = server_ms(r)
    counted.reset()
    s.commit()
    assert counted.round_trips == transactions(Token) + FENCE_READ  # MULTI/EXEC alone
    at = instant(r, Token, token.id)  # type: ignore[arg-type]
    after = server_ms(r)
    assert at is not None and before + 60_000 <= at <= after + 60_000
    expires = redisca.inspect(token).expires_at
    assert expires == datetime.fromtimestamp(at / 1000, tz=UTC)
    assert expires is not None and expires.tzinfo is not None


def test_a_model_without_ttl_writes_no_instant_and_plain_models_pay_nothing(
    r: redis.Redis, counted: Counted
) -> None:
    s = Session(counted.client)
    s.add_all([Visit("home", id="v1"), Plain("p", id="p1")])
    s.commit()
    assert r.zcard(expiry_key(Visit)) == 0
    assert redisca.inspect(s.get(Visit, "v1")).expires_at is None
    assert not [k for k in r.keys("*") if as_str(k).endswith("#exp")]
    s2 = Session(counted.client)
    counted.reset()
    assert s2.get(Plain, "p1") is not None
    assert counted.commands == 1  # HGETALL alone


def test_expire_sets_and_clears_an_instant(r: redis.Redis) -> None:
    persist(r, Visit("home", id="v1"))
    s = Session(r)
    visit = s.get(Visit, "v1")
    s.expire(visit, timedelta(seconds=30))
    assert redisca.inspect(visit).expires_at is None  # pending: shown once committed
    assert s.is_modified(visit)
    before = server_ms(r)
    s.commit()
    at = instant(r, Visit, "v1")
    assert at is not None and before + 30_000 <= at <= server_ms(r) + 30_000
    assert redisca.inspect(visit).expires_at == datetime.fromtimestamp(at / 1000, tz=UTC)
    assert not s.is_modified(visit)
    s.expire(visit, None)
    s.commit()
    assert instant(r, Visit, "v1") is None
    assert redisca.inspect(visit).expires_at is None
    s.close()


def test_expire_on_a_new_instance_replaces_the_models_ttl(r: redis.Redis) -> None:
    s = Session(r)
    kept, short = Token("a", id="t1"), Token("b", id="t2")
    s.add_all([kept, short])
    s.expire(kept, None)
    s.expire(short, 5)
    s.commit()
    assert instant(r, Token, "t1") is None and redisca.inspect(kept).expires_at is None
    at = instant(r, Token, "t2")
    assert at is not None and at <= server_ms(r) + 5_000
    s.close()


def test_a_loaded_entity_knows_its_instant(r: redis.Redis) -> None:
    persist(r, Token("a", id="t1"))
    at = instant(r, Token, "t1")
    s = Session(r)
    token = s.get(Token, "t1")
    assert redisca.inspect(token).expires_at == datetime.fromtimestamp(at / 1000, tz=UTC)  # type: ignore[operator]
    s.close()
    assert redisca.inspect(token).expires_at is not None  # detached, still known


def test_expire_is_refused_before_anything_is_sent(r: redis.Redis) -> None:
    s = Session(r)
    plain = Plain("p", id="p1")
    s.add(plain)
    with pytest.raises(InvalidRequestError, match=r"mapped\(ttl=\.\.\.\)"):
        s.expire(plain, 10)
    visit = Visit("v", id="v1")
    s.add(visit)
    for bad in (0, -1, "10", float("nan"), True):
        with pytest.raises(ValidationError, match="time to live"):
            s.expire(visit, bad)  # type: ignore[arg-type]
    s.rollback()
    assert not r.keys("*")


def test_pending_expires_are_counted_by_the_warning_and_dropped_by_rollback(
    r: redis.Redis,
) -> None:
    persist(r, Visit("home", id="v1"))
    s = Session(r)
    visit = s.get(Visit, "v1")
    s.expire(visit, 10)
    with pytest.warns(UncommittedChangesWarning, match=r"Visit\('v1'\) expire"):
        s.close()
    s = Session(r)
    visit = s.get(Visit, "v1")
    s.expire(visit, 10)
    visit.page = "other"
    with pytest.warns(UncommittedChangesWarning, match=r"2 pending: Visit\('v1'\) expire, Visit"):
        s.close()
    s = Session(r)
    visit = s.get(Visit, "v1")
    s.expire(visit, 10)
    s.rollback()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.commit()
        s.close()
    assert instant(r, Visit, "v1") is None


def test_a_delete_removes_the_instant(r: redis.Redis) -> None:
    persist(r, Token("a", id="t1"))
    s = Session(r)
    s.delete(s.get(Token, "t1"))
    s.commit()
    assert instant(r, Token, "t1") is None and not r.exists(TOK + b":t1")


def test_a_short_ttl_expires_on_the_servers_clock(r: redis.Redis) -> None:
    s = Session(r)
    visit = Visit("v", id="v1")
    s.add(visit)
    s.expire(visit, 0.05)
    s.commit()
    s.close()
    assert Session(r).get(Visit, "v1") is not None
    time.sleep(0.1)
    assert Session(r).get(Visit, "v1") is None
    assert r.exists(redisca.inspect(Visit).layout.entity("v1"))  # not swept: still there


# -- equality index entries, scored by the instants ------------------------------------

LBL = head("lbl", "exp")


def eq_entries(r: redis.Redis, key: bytes) -> dict[str, float]:
    """An equality index key of an expiring model: a sorted set, id → score."""
    assert r.type(key) in (b"zset", "zset"), r.type(key)
    return {as_str(m): score for m, score in r.zrange(key, 0, -1, withscores=True)}


def test_equality_entries_are_sorted_sets_scored_by_the_instant(r: redis.Redis) -> None:
    persist(r, Token("ann", score=3, tags={"x"}, id="t1"), Label("red", id="l1"))
    at = instant(r, Token, "t1")
    assert at is not None
    assert eq_entries(r, TOK + b"#i:owner:ann") == {"t1": at}
    # A collection's member index stays a set; a range index keeps its value's score.
    assert r.type(TOK + b"#i:tags:x") in (b"set", "set")
    assert r.zscore(TOK + b"#r:score", "t1") == 3
    assert eq_entries(r, LBL + b"#i:color:red") == {"l1": math.inf}  # no instant: +inf
    consistent(r, Label)


def test_an_instant_that_changes_rescores_every_equality_entry(r: redis.Redis) -> None:
    persist(r, Label("red", size="s", id="l1"), Label("red", id="l2"))
    s = Session(r)
    label = s.get(Label, "l1")
    s.expire(label, 60)
    s.commit()
    at = instant(r, Label, "l1")
    assert at is not None
    assert eq_entries(r, LBL + b"#i:color:red") == {"l1": at, "l2": math.inf}
    assert eq_entries(r, LBL + b"#i:size:s") == {"l1": at}
    s.expire(label, 120)
    label.color = "blue"  # a new value and a new instant in one commit
    s.commit()
    later = instant(r, Label, "l1")
    assert later is not None and later > at
    assert eq_entries(r, LBL + b"#i:color:red") == {"l2": math.inf}
    assert eq_entries(r, LBL + b"#i:color:blue") == {"l1": later}
    assert eq_entries(r, LBL + b"#i:size:s") == {"l1": later}
    s.expire(label, None)  # no instant: +inf again
    s.commit()
    assert eq_entries(r, LBL + b"#i:color:blue") == {"l1": math.inf}
    assert eq_entries(r, LBL + b"#i:size:s") == {"l1": math.inf}
    label.size = "m"  # an indexed update keeps the instant it finds (none)
    s.commit()
    assert not r.exists(LBL + b"#i:size:s")
    assert eq_entries(r, LBL + b"#i:size:m") == {"l1": math.inf}
    s.close()
    consistent(r, Label)


def test_an_insert_with_a_ttl_and_one_over_an_expired_id_score_their_entries(
    r: redis.Redis,
) -> None:
    s = Session(r)
    short = Label("red", id="l1")
    s.add(short)
    s.expire(short, 30)  # a ttl of its own, on an insert
    s.commit()
    at = instant(r, Label, "l1")
    assert at is not None and eq_entries(r, LBL + b"#i:color:red") == {"l1": at}
    s.close()
    expire_now(r, Label, "l1")
    assert eq_entries(r, LBL + b"#i:color:red") == {"l1": 1}
    persist(r, Label("red", id="l1"))  # the same id again, no instant this time
    assert eq_entries(r, LBL + b"#i:color:red") == {"l1": math.inf}
    persist(r, Token("ann", id="t1"))
    expire_now(r, Token, "t1")
    persist(r, Token("ann", id="t1"))  # over an expired id: the model's ttl
    at = instant(r, Token, "t1")
    assert at is not None and at > server_ms(r)
    assert eq_entries(r, TOK + b"#i:owner:ann") == {"t1": at}
    consistent(r, Label)
    consistent(r, Token)


def test_equality_counts_and_pages_leave_out_expired_ids_before_any_sweep(
    r: redis.Redis,
) -> None:
    persist(r, *[Label("red", id=f"l{i}") for i in range(6)], Label("blue", id="b1"))
    for i in range(3):
        expire_now(r, Label, f"l{i}")
    s = Session(r)
    red = s.query(Label).filter(Label.color == "red")
    assert red.count() == 3
    assert sorted(x.id for x in red.all()) == ["l3", "l4", "l5"]  # type: ignore[type-var]
    either = s.query(Label).filter((Label.color == "red") | (Label.color == "blue"))
    assert either.count() == 4
    assert s.query(Label).filter(Label.color.in_(["red", "blue"])).count() == 4
    assert r.zcard(LBL + b"#i:color:red") == 6  # nothing swept: the entries are there
    s.close()


# -- equality index entries of the default layout: sets ----------------------------------

BDG = head("bdg", "exp")


def members(r: redis.Redis, key: bytes) -> set[str]:
    """An equality index key of the default layout: a set of ids."""
    assert r.type(key) in (b"set", "set"), r.type(key)
    return {as_str(m) for m in r.smembers(key)}


def test_equality_entries_are_sets_by_default_and_an_instant_leaves_them_be(
    r: redis.Redis, counted: Counted
) -> None:
    persist(r, Badge("red", size="s", id="b1"), Badge("red", id="b2"), Visit("x", id="v1"))
    assert members(r, BDG + b"#i:color:red") == {"b1", "b2"}
    sent = []
    s = Session(counted.client)
    for model, ident in ((Badge, "b1"), (Visit, "v1")):
        s.expire(s.get(model, ident), 60)
        counted.reset()
        s.commit()
        sent.append((counted.round_trips, counted.commands))
    # No entry to rescore: the same commands as a model with no equality index.
    assert sent[0] == sent[1]
    assert instant(r, Badge, "b1") is not None
    assert members(r, BDG + b"#i:color:red") == {"b1", "b2"}
    assert members(r, BDG + b"#i:size:s") == {"b1"}
    s.close()
    consistent(r, Badge)


def test_set_counts_and_pages_leave_out_expired_ids_before_any_sweep(r: redis.Redis) -> None:
    persist(r, *[Badge("red", id=f"b{i}") for i in range(6)], Badge("blue", id="x1"))
    for i in range(3):
        expire_now(r, Badge, f"b{i}")
    with Session(r) as s:
        red = s.query(Badge).filter(Badge.color == "red")
        assert red.count() == 3
        assert sorted(red.ids()) == ["b3", "b4", "b5"]
        either = s.query(Badge).filter((Badge.color == "red") | (Badge.color == "blue"))
        assert either.count() == 4
        assert s.query(Badge).filter(Badge.color.in_(["red", "blue"])).count() == 4
    assert r.scard(BDG + b"#i:color:red") == 6  # nothing swept: the entries are there
    persist(r, Badge("blue", id="b0"))  # an insert over an expired id moves its entry,
    # and its commit (which reads first) sweeps the model's other expired entities.
    assert members(r, BDG + b"#i:color:red") == {"b3", "b4", "b5"}
    assert members(r, BDG + b"#i:color:blue") == {"b0", "x1"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scored_indexes": True}, "needs ttl= or expiring=True"),
        ({"expiring": False, "scored_indexes": True}, "needs ttl= or expiring=True"),
        ({"ttl": 60, "scored_indexes": "yes"}, "scored_indexes= takes True or False"),
        ({"ttl": 60, "expiring": False}, "contradict"),
        ({"expiring": "yes"}, "expiring= takes True or False"),
        ({"ttl": 0}, "ttl"),
    ],
)
def test_expiry_options_are_checked_when_mapping(options: dict[str, Any], message: str) -> None:
    mapping = Registry()
    with pytest.raises(redisca.MappingError, match=message):

        @mapping.mapped(prefix="bad", **options)
        @attrs.define
        class Bad:
            name: str = String(index=True)
            id: str | None = None


# -- loads -------------------------------------------------------------------------------


def test_loads_treat_an_expired_entity_as_missing_in_the_same_round_trip(
    r: redis.Redis, counted: Counted
) -> None:
    persist(r, Token("a", id="t1"), Token("b", id="t2"))
    expire_now(r, Token, "t1")
    s = Session(counted.client)
    counted.reset()
    assert s.get(Token, "t1") is None
    assert counted.round_trips == 1
    found = s.get_many(Token, ["t1", "t2"])
    assert found[0] is None and found[1] is not None and found[1].owner == "b"
    assert r.exists(TOK + b":t1")  # not swept: only invisible


def test_refresh_and_lazy_loads_of_an_expired_entity(r: redis.Redis) -> None:
    persist(r, Token("a", id="t1"), Grant(Token("b", id="t2"), id="g1"))
    s = Session(r)
    token = s.get(Token, "t1")
    expire_now(r, Token, "t1")
    with pytest.raises(redisca.NotFound):
        s.refresh(token)
    s.close()
    persist(r, Grant(Token("c", id="t3"), id="g3"))
    expire_now(r, Token, "t2")
    s = Session(r)
    grant, live = s.get_many(Grant, ["g1", "g3"])
    s.preload([grant, live], Grant.token)
    assert not redisca.inspect(grant.token).loaded  # type: ignore[union-attr] # expired
    assert redisca.inspect(live.token).loaded  # type: ignore[union-attr]
    assert redisca.inspect(live.token).expires_at is not None  # type: ignore[union-attr]
    s.close()


# -- commits ---------------------------------------------------------------------------


def test_an_update_of_an_expired_entity_is_refused_as_one_deleted(r: redis.Redis) -> None:
    persist(r, Token("a", id="t1"))
    s = Session(r)
    token = s.get(Token, "t1")
    expire_now(r, Token, "t1")
    token.owner = "z"
    with pytest.raises(StaleDataError, match="deleted"):
        s.commit()
    s.rollback()
    s.expire(token, 100)  # an expire of an expired entity too
    with pytest.raises(StaleDataError):
        s.commit()
    s.rollback()
    s.close()
    assert as_str(r.hget(TOK + b":t1", "owner")) == "a"


def test_a_plain_update_costs_one_round_trip_and_skips_an_expired_entity(
    r: redis.Redis, counted: Counted
) -> None:
    persist(r, Visit("home", id="v1"), Visit("away", id="v2"))
    s = Session(counted.client)
    one, two = s.get_many(Visit, ["v1", "v2"])
    one.page, two.page = "x", "y"  # type: ignore[union-attr]
    counted.reset()
    s.commit()
    assert counted.round_trips == 1
    expire_now(r, Visit, "v1")
    one.page, two.page = "xx", "yy"  # type: ignore[union-attr]
    s.commit()  # as for an entity deleted meanwhile: its write is skipped, it leaves
    assert one not in s and two in s
    entity = redisca.inspect(Visit).layout.entity
    assert as_str(r.hget(entity("v1"), "page")) == "x"
    assert as_str(r.hget(entity("v2"), "page")) == "yy"
    s.close()


def test_an_insert_over_an_expired_id_replaces_its_leftovers(r: redis.Redis) -> None:
    persist(r, Token("old", code="c-old", score=5, tags={"x", "y"}, id="t1"))
    expire_now(r, Token, "t1")
    s = Session(r)
    s.add(Token("new", score=7, tags={"z"}, id="t1"))
    s.commit()
    s.close()
    assert {as_str(k): as_str(v) for k, v in r.hgetall(TOK + b":t1").items()} == {
        "owner": "new",
        "score": "7",
    }
    assert not r.exists(TOK + b"#i:owner:old")
    assert r.zscore(TOK + b"#i:owner:new", "t1") == instant(r, Token, "t1")
    assert r.zscore(TOK + b"#r:score", "t1") == 7
    assert r.hget(stripe_key("tok", "code", "c-old", "exp"), "c-old") is None
    assert {as_str(m) for m in r.smembers(TOK + b"#m:tags:t1")} == {"z"}
    assert not r.exists(TOK + b"#i:tags:x") and not r.exists(TOK + b"#i:tags:y")
    assert r.sismember(TOK + b"#i:tags:z", "t1")
    at = instant(r, Token, "t1")
    assert at is not None and at > server_ms(r)  # a new instant (the model's ttl)
    loaded = Session(r).get(Token, "t1")
    assert loaded is not None and loaded.owner == "new"


def test_an_insert_over_a_live_id_is_still_refused(r: redis.Redis) -> None:
    persist(r, Token("old", id="t1"))
    s = Session(r)
    s.add(Token("new", id="t1"))
    with pytest.raises(IntegrityError, match="already exists"):
        s.commit()
    s.rollback()


def test_an_insert_over_an_expired_id_costs_its_read(r: redis.Redis, counted: Counted) -> None:
    persist(r, Visit("old", id="v1"))
    expire_now(r, Visit, "v1")
    s = Session(counted.client)
    s.add(Visit("new", id="v1"))
    counted.reset()
    s.commit()
    assert counted.round_trips == 2  # WATCH + reads (the instant among them), MULTI/EXEC
    assert Session(r).get(Visit, "v1").page == "new"  # type: ignore[union-attr]
    assert instant(r, Visit, "v1") is None  # no ttl: the old instant went


def test_deleting_an_expired_entity_removes_it_all(r: redis.Redis) -> None:
    persist(r, Token("a", code="c1", id="t1"))
    s = Session(r)
    token = s.get(Token, "t1")
    expire_now(r, Token, "t1")
    s.delete(token)
    s.commit()
    assert not r.exists(TOK + b":t1") and instant(r, Token, "t1") is None
    assert r.hget(stripe_key("tok", "code", "c1", "exp"), "c1") is None
    assert not r.exists(TOK + b"#i:owner:a")


def test_a_versioned_expired_entity_is_refused_and_deleted(r: redis.Redis) -> None:
    persist(r, Versioned("a", id="x1"), Versioned("b", id="x2"))
    s = Session(r)
    one, two = s.get(Versioned, "x1"), s.get(Versioned, "x2")
    expire_now(r, Versioned, "x1")
    expire_now(r, Versioned, "x2")
    one.page = "z"  # type: ignore[union-attr]
    with pytest.raises(StaleDataError):
        s.commit()
    s.rollback()
    s.delete(two)
    s.commit()
    assert not r.exists(redisca.inspect(Versioned).layout.entity("x2"))
    s.close()


# -- unique values and references ----------------------------------------------------------


def test_a_unique_value_of_an_expired_owner_can_be_claimed(
    r: redis.Redis, counted: Counted
) -> None:
    persist(r, Token("a", code="c1", id="t1"))
    s = Session(counted.client)
    s.add(Token("b", code="c1", id="t2"))
    counted.reset()
    with pytest.raises(UniqueViolation):
        s.commit()
    # WATCH + reads, the owner's guard WATCHed + its instant (live), UNWATCH
    assert counted.round_trips == 3
    s.rollback()
    expire_now(r, Token, "t1")
    s.add(Token("b", code="c1", id="t2"))
    counted.reset()
    s.commit()
    # WATCH + reads, the owner's guard WATCHed + its instant, MULTI/EXEC
    assert counted.round_trips == 3
    assert as_str(r.hget(stripe_key("tok", "code", "c1", "exp"), "c1")) == "t2"
    s.close()


def test_a_takeover_fails_when_the_owner_changes_meanwhile(
    r: redis.Redis, make_client: object
) -> None:
    """The owner's guard stripe is watched before its instant is read: a commit that
    revives the owner between the reads and EXEC fails the takeover's EXEC, whose retry
    then sees a live owner."""
    persist(r, Token("a", code="c1", id="t1"))
    expire_now(r, Token, "t1")
    s = Session(r)
    s.add(Token("b", code="c1", id="t2"))
    from redisca.session import executor

    real = executor._expired_owners
    revived = []

    def meddling(*args: object) -> object:
        result = yield from real(*args)  # type: ignore[arg-type]
        if not revived:  # the first attempt only: the owner comes back to life
            set_instants(r, Token, {"t1": server_ms(r) + 60_000})
            r.incr(redisca.inspect(Token).layout.guard(b"t1"))
            revived.append(1)
        return result

    executor._expired_owners = meddling  # type: ignore[assignment]
    try:
        with pytest.raises(UniqueViolation):
            s.commit()
    finally:
        executor._expired_owners = real  # type: ignore[assignment]
    assert revived
    assert as_str(r.hget(stripe_key("tok", "code", "c1", "exp"), "c1")) == "t1"
    s.rollback()
    s.close()


def test_a_new_reference_to_an_expired_target_is_an_integrity_error(r: redis.Redis) -> None:
    persist(r, Token("a", id="t1"))
    expire_now(r, Token, "t1")
    s = Session(r)
    s.add(Grant(s.reference(Token, "t1"), id="g1"))
    with pytest.raises(IntegrityError, match="does not exist"):
        s.commit()
    s.rollback()
    persist(r, Token("b", id="t2"))
    s.add(Grant(s.reference(Token, "t2"), id="g2"))
    s.commit()
    assert Session(r).get(Grant, "g2") is not None


def test_merge_creates_over_an_expired_id(r: redis.Redis) -> None:
    persist(r, Visit("old", id="v1"))
    expire_now(r, Visit, "v1")
    s = Session(r)
    merged = s.merge(Visit("merged", id="v1"))
    assert merged in s.new
    s.commit()
    s.close()
    assert Session(r).get(Visit, "v1").page == "merged"  # type: ignore[union-attr]


@pytest.mark.sync_only(reason="AsyncSession has no update_or_create")
def test_update_or_create_creates_over_an_expired_id(r: redis.Redis) -> None:
    persist(r, Visit("old", id="v1"))
    expire_now(r, Visit, "v1")
    s = Session(r)
    created = s.update_or_create(Visit, "v1", page="new")
    assert created in s.new
    s.commit()
    s.close()
    assert Session(r).get(Visit, "v1").page == "new"  # type: ignore[union-attr]


def test_a_lazy_load_of_an_expired_target_finds_nothing(r: redis.Redis) -> None:
    persist(r, Grant(Token("a", id="t1"), id="g1"))
    s = Session(r)
    grant = s.get(Grant, "g1")
    expire_now(r, Token, "t1")
    with pytest.raises(redisca.NotFound):
        s.refresh(grant.token)  # what a lazy load does (the AsyncSession's load too)
    s.close()


# -- costs ---------------------------------------------------------------------------------


def _costs(counted: Counted, model: type) -> dict[str, tuple[int, int]]:
    """Round trips and commands of each operation on ``model``."""
    out: dict[str, tuple[int, int]] = {}

    def step(name: str, run: object) -> None:
        counted.reset()
        run()  # type: ignore[operator]
        out[name] = (counted.round_trips, counted.commands)

    s = Session(counted.client)
    s.add(model("a"))
    step("insert, generated id", s.commit)
    s.add(model("a", id="x1", code="c1", n=1))
    step("insert, own id", s.commit)
    s.close()
    s = Session(counted.client)
    step("get", lambda: s.get(model, "x1"))
    step("get_many of 3", lambda: s.get_many(model, ["x2", "x3", "x4"]))
    obj = s.get(model, "x1")
    obj.name = "b"
    step("plain update", s.commit)
    obj.n = 5
    step("indexed update", s.commit)
    obj.code = "c2"
    step("unique update", s.commit)
    s.delete(obj)
    step("delete", s.commit)
    s.close()
    return out


def test_expiry_costs_commands_never_round_trips(counted: Counted) -> None:
    plain, expiring = _costs(counted, PlainCost), _costs(counted, ExpiringCost)
    assert {k: v[0] for k, v in expiring.items()} == {k: v[0] for k, v in plain.items()}
    extra = {k: expiring[k][1] - plain[k][1] for k in plain}
    assert extra == {
        "insert, generated id": 1,  # the WRITE of the instant, inside MULTI
        # + the READ of an old instant, the old values (HMGET); and every commit that
        # reads anyway reads a batch of expired entities to sweep (sweep.READ, one
        # command in the same round trip: there are none here, so no removal follows)
        "insert, own id": 4,
        "get": 1,  # the READ of the instants, in the same round trip
        "get_many of 3": 1,
        "plain update": 0,  # the guarded write of expiring models checks the instants
        "indexed update": 2,  # the READ with the other reads, the sweep's READ
        "unique update": 2,
        "delete": 2,  # the ZREM of the instant, the sweep's READ
    }


def test_indexes_stay_consistent_through_replacements_takeovers_and_deletes(
    r: redis.Redis,
) -> None:
    model = ExpiringCost
    persist(r, *(model(f"n{i}", code=f"c{i}", n=i, id=f"e{i}") for i in range(6)))
    for i in range(4):
        expire_now(r, model, f"e{i}")
    s = Session(r)
    s.add(model("again", code="c0", n=10, id="e0"))  # its own old value, reclaimed
    s.add(model("again", code="new", n=11, id="e1"))  # another value: c1 is released
    s.add(model("taker", code="c2", n=12, id="e9"))  # takes over e2's value
    s.delete(s.reference(model, "e3"))  # an expired entity deleted
    s.commit()
    s.close()
    assert as_str(r.hget(stripe_key("cex", "code", "c2"), "c2")) == "e9"
    assert r.hget(stripe_key("cex", "code", "c1"), "c1") is None
    r.delete(redisca.inspect(model).layout.entity("e2"))  # e2's leftovers, as a sweep would
    r.zrem(redisca.inspect(model).layout.range_index(b"n"), "e2")
    r.srem(redisca.inspect(model).layout.eq_index(b"name", b"n2"), "e2")
    consistent(r, model)


def test_refresh_discards_a_pending_expire(r: redis.Redis) -> None:
    persist(r, Visit("home", id="v1"))
    s = Session(r)
    visit = s.get(Visit, "v1")
    s.expire(visit, 10)
    s.refresh(visit)
    assert not s.is_modified(visit)
    s.commit()
    s.close()
    assert instant(r, Visit, "v1") is None


def test_bulk_add_writes_the_instants(r: redis.Redis) -> None:
    s = Session(r)
    tokens = [Token(f"o{i}", code=f"k{i}", id=f"b{i}") for i in range(20)]
    assert s.bulk_add(tokens, chunk_size=8) == 20
    s.close()
    now = server_ms(r)
    scores = [instant(r, Token, f"b{i}") for i in range(20)]
    assert all(at is not None and now < at <= now + 60_000 for at in scores)
    assert all(redisca.inspect(t).expires_at is not None for t in tokens)


@pytest.mark.sync_only(reason="threads, each with its own session")
def test_one_of_many_concurrent_claimants_takes_an_expired_owners_value(
    r: redis.Redis, make_client: object
) -> None:
    persist(r, Token("a", code="prize", id="t0"))
    expire_now(r, Token, "t0")
    import threading

    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def claim(i: int) -> None:
        s = Session(make_client())  # type: ignore[operator]
        s.add(Token("b", code="prize", id=f"c{i}"))
        barrier.wait()
        try:
            s.commit()
            outcomes.append("won")
        except UniqueViolation:
            s.rollback()
            outcomes.append("lost")
        s.close()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost"] * 5 + ["won"]
    winner = as_str(r.hget(stripe_key("tok", "code", "prize", "exp"), "prize"))
    assert winner.startswith("c") and Session(r).get(Token, winner) is not None


def test_an_expire_of_a_versioned_entity_moves_its_version(r: redis.Redis) -> None:
    persist(r, Versioned("a", id="x1"))
    s = Session(r)
    obj = s.get(Versioned, "x1")
    before = redisca.inspect(obj).version
    s.expire(obj, 60)
    s.commit()
    assert redisca.inspect(obj).version == before + 1  # type: ignore[operator]
    obj.page = "b"  # the session's version is Redis's: no StaleDataError
    s.commit()
    s.close()
    other = Session(r)
    assert other.get(Versioned, "x1").page == "b"  # type: ignore[union-attr]
    other.close()


def test_an_expired_referrer_neither_restricts_nor_is_nulled(r: redis.Redis) -> None:
    persist(r, Link(Token("a", id="t1"), id="l1"), Pin(Token("b", id="t2"), id="p1"))
    persist(r, Link(Token("c", id="t3"), id="l3"))
    expire_now(r, Link, "l1")
    expire_now(r, Pin, "p1")
    s = Session(r)
    s.delete(s.get(Token, "t3"))  # a live referrer still restricts
    with pytest.raises(IntegrityError, match="lnk:l3 refers to it"):
        s.commit()
    s.rollback()
    s.delete(s.get(Token, "t1"))
    s.delete(s.get(Token, "t2"))
    s.commit()
    s.close()
    assert not r.exists(TOK + b":t1") and not r.exists(TOK + b":t2")
    pin = redisca.inspect(Pin).layout.entity("p1")
    assert as_str(r.hget(pin, "token")) == "t2"  # untouched: a sweep removes it whole


def test_a_cascade_deletes_live_referrers_and_leaves_expired_ones(r: redis.Redis) -> None:
    token = Token("a", id="t1")
    persist(r, token, Chain(token, id="c1"), Chain(token, id="c2"))
    expire_now(r, Chain, "c2")
    index = redisca.inspect(Chain).layout.eq_index(b"token", b"t1")
    assert eq_entries(r, index) == {"c1": instant(r, Chain, "c1") or math.inf, "c2": 1}
    s = Session(r)
    s.delete(s.get(Token, "t1"))
    # The live referrer goes with it; the expired one is no referrer (the cascade reads
    # the index from now on), and its leftovers go with the commit's sweep.
    s.commit()
    s.close()
    chain = redisca.inspect(Chain).layout
    assert not r.exists(chain.entity("c1")) and not r.exists(chain.entity("c2"))
    assert not r.exists(index)
    consistent(r, Chain)


# -- random sessions against a model ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_random_commits_over_expiring_entities_match_a_model(r: redis.Redis, seed: int) -> None:
    """Inserts (own ids), unique-value updates, deletes, expiries (an instant moved into
    the past) and cleared expiries at random, each in its own session: every load sees
    exactly the live entities of a Python model, unique values change hands only from
    expired or deleted owners, and once swept the indexes match the hashes."""
    import random

    from redisca.maintenance import sweep

    model = ExpiringCost
    rnd = random.Random(seed)
    ids, codes = [f"r{i}" for i in range(8)], [f"k{i}" for i in range(5)]
    live: dict[str, str | None] = {}  # id -> its unique code

    def holder(code: str) -> str | None:
        return next((i for i, c in live.items() if c == code), None)

    for _ in range(60):
        ident, code = rnd.choice(ids), rnd.choice([*codes, None])
        op = rnd.choice(["insert", "insert", "update", "delete", "expire", "clear"])
        s = Session(r)
        if op == "insert":
            s.add(model("x", code=code, n=rnd.randrange(5), id=ident))
            if ident in live:
                with pytest.raises(IntegrityError):
                    s.commit()
                s.rollback()
            elif code is not None and holder(code) is not None:
                with pytest.raises(UniqueViolation):
                    s.commit()
                s.rollback()
            else:
                s.commit()
                live[ident] = code
        elif op == "update" and ident in live:
            obj = s.get(model, ident)
            obj.code = code  # type: ignore[union-attr]
            other = None if code is None else holder(code)
            if other is not None and other != ident:
                with pytest.raises(UniqueViolation):
                    s.commit()
                s.rollback()
            else:
                s.commit()
                live[ident] = code
        elif op == "delete":
            s.delete(s.reference(model, ident))
            s.commit()
            live.pop(ident, None)
        elif op == "expire" and ident in live:
            expire_now(r, model, ident)
            del live[ident]
        elif op == "clear" and ident in live:
            s.expire(s.get(model, ident), None)
            s.commit()
        s.close()
        check = Session(r)
        found = check.get_many(model, ids)
        assert {i: o.code for i, o in zip(ids, found, strict=True) if o is not None} == live
        check.close()
    sweep(registry, r)
    consistent(r, model)
    assert {as_str(m) for m in r.zrange(expiry_key(model), 0, -1)} <= set(live)

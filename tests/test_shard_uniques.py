"""Unique values of a sharded model on a 3-master cluster: a value's claim lives in the
value's shard, its owner's hash in the owner's (docs/guarantees.rst, "Unique values of a
sharded model"). Processes race for the same values with swaps and deletes, and the
connection is killed at each step of the protocol; after every round and every fault,
raw Redis shows no value held by two entities, and every held value's claim names its
holder. Every claim left stale is taken over by the next claimant.
"""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import redis
from redis.cluster import RedisCluster

import redisca
from redisca import Email, Integer, OperationalError, Registry, Session, String
from redisca.embedded import EmbeddedCluster
from redisca.session import claims, executor

registry = Registry()


@registry.mapped(prefix="acct", shards=8)
@attrs.define
class Account:
    email: str = Email(unique=True)
    nick: str | None = String(unique=True, default=None)
    n: int = Integer(index=True, default=0)
    id: str | None = None


IDS = [f"a{i}" for i in range(8)]
VALUES = [f"v{i}@x.org" for i in range(6)]


def holders_and_claims(raw: Any, field: bytes = b"email") -> tuple[dict[bytes, str], dict]:
    """From raw Redis (every shard): value -> the entity whose hash holds it (asserting
    no value is held twice), and value -> the id its claim names."""
    mapper = redisca.inspect(Account)
    held: dict[bytes, str] = {}
    claimed: dict[bytes, str] = {}
    for layout in mapper.shard_layouts():
        for stripe in layout.unique_stripes(field):
            for value, owner in raw.hgetall(stripe).items():
                claimed[_b(value)] = _b(owner).decode()
        for key in raw.scan_iter(match=layout.entity_pattern, count=1000):
            ident = _b(key)[len(layout.entity("")) :].decode()
            value = raw.hget(key, field)
            if value is None:
                continue
            value = _b(value).lower() if field == b"email" else _b(value)
            assert value not in held, f"{value!r} held by {held[value]!r} and {ident!r}"
            held[value] = ident
    return held, claimed


def _b(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def assert_one_owner_each(raw: Any) -> dict[bytes, str]:
    """No value has two owners: each held value is held by one entity, and its claim
    names that entity (so no other entity can come to hold it)."""
    for field in (b"email", b"nick"):
        held, claimed = holders_and_claims(raw, field)
        for value, ident in held.items():
            assert claimed.get(value) == ident, (field, value, ident, claimed.get(value))
    return holders_and_claims(raw)[0]


# -- processes racing -------------------------------------------------------------------

ROUNDS = 40
WORKERS = 4


def race_worker(url: str, worker: int, start: Any, done: Any, out: Any) -> None:
    client = RedisCluster.from_url(url, decode_responses=bool(worker % 2))
    rng = random.Random(worker * 1000 + 7)
    for n in range(ROUNDS):
        start.wait(timeout=120)
        out.put((n, worker, *race_step(client, rng)))
        done.wait(timeout=120)
    client.close()


def race_step(client: Any, rng: random.Random) -> tuple[str, str]:
    session = Session(client)
    op = rng.choice(["claim", "claim", "swap", "delete", "nick"])
    a, b = rng.sample(IDS, 2)
    try:
        if op == "swap":
            x, y = session.get_many(Account, [a, b])
            if x is None or y is None:
                return op, "absent"
            x.email, y.email = y.email, x.email
        elif op == "delete":
            x = session.get(Account, a)
            if x is None:
                return op, "absent"
            session.delete(x)
        else:
            x = session.get(Account, a)
            value = rng.choice(VALUES)
            if x is None:
                session.add(Account(email=value, id=a))
            elif op == "nick":
                x.nick = value
            else:
                x.email = value
        session.commit()
        return op, "ok"
    except redisca.UniqueViolation:
        return op, "taken"
    except (redisca.ConflictError, redisca.IntegrityError, redisca.NotFound) as exc:
        return op, type(exc).__name__
    except Exception as exc:  # reported: the test fails with it
        return op, f"error {exc!r}"
    finally:
        session.close()


@pytest.fixture
def rc(cluster: EmbeddedCluster) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url)
    yield client
    client.close()


def test_processes_racing_for_values_never_give_one_two_owners(
    rc: RedisCluster, cluster: EmbeddedCluster
) -> None:
    """4 processes, 25 rounds: each round every process claims a value (inserting or
    updating), moves a second unique field, swaps two entities' values (refused across
    shards: a swap) or deletes, all at once on 8 entities and 6 values. After each round
    raw Redis is checked: no value held twice, every held value's claim names its
    holder."""
    context = multiprocessing.get_context("spawn")
    start, done, out = context.Barrier(WORKERS + 1), context.Barrier(WORKERS + 1), context.Queue()
    workers = [
        context.Process(target=race_worker, args=(cluster.url, w, start, done, out))
        for w in range(WORKERS)
    ]
    for process in workers:
        process.start()
    results = []
    try:
        for _ in range(ROUNDS):
            start.wait(timeout=120)
            results += [out.get(timeout=120) for _ in range(WORKERS)]
            assert_one_owner_each(rc)
            done.wait(timeout=120)
    finally:
        for process in workers:
            process.join(timeout=60)
    assert [p.exitcode for p in workers] == [0] * WORKERS
    outcomes = [row[3] for row in results]
    assert not [o for o in outcomes if o.startswith("error")], results
    assert outcomes.count("ok") > ROUNDS and outcomes.count("taken") > 5, outcomes
    # Every value not held now is free for the next claimant, stale claim or not.
    held = assert_one_owner_each(rc)
    with Session(rc) as session:
        for n, value in enumerate(VALUES):
            session.add(Account(email=value, id=f"next{n}"))
            try:
                session.commit()
                assert value.encode() not in held
            except redisca.UniqueViolation as exc:
                assert held[value.encode()] == exc.owner
                session.rollback()
    assert_one_owner_each(rc)


# -- faults at each step of the protocol ------------------------------------------------


def step_of(commands: list[Any]) -> str:
    """Which step of the protocol a round trip is (``read`` when it writes nothing)."""
    names = [c[0] for c in commands]
    if b"MULTI" not in names:
        return "read"
    body = commands[names.index(b"MULTI") + 1 :]
    keys = [c[1] for c in body if len(c) > 1 and isinstance(c[1], bytes)]
    keys += [c[3] for c in body if c[0] == b"EVAL" and int(c[2]) > 0]
    if any(b"}:" in k for k in keys) or any(c[0] == b"DEL" for c in body):
        return "entity"
    if any(c[0] == b"HSET" and b"}#c:" in c[1] for c in body):
        return "register"
    if any(c[0] == b"HDEL" and b"}#c:" in c[1] for c in body):
        return "revoke"
    if any(c[0] == b"HSET" and b"}#u:" in c[1] for c in body):
        return "claim"
    if any(c[0] == b"HDEL" and b"}#u:" in c[1] for c in body):
        return "release"
    return "other"


@attrs.define
class Fault:
    """Kills the connection at the first round trip of ``step``: before it is sent
    (nothing of it runs) or after its replies came (it ran; the client never knows)."""

    step: str
    when: str
    hooked: Any = None
    fired: bool = False

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = executor.roundtrip

        def roundtrip(conn: Any, commands: Any, **kwargs: Any) -> list[Any]:
            if self.fired or step_of(list(commands)) != self.step:
                return original(conn, commands, **kwargs)
            self.fired = True
            if self.hooked is not None:  # another client acts right before this step
                self.hooked()
                return original(conn, commands, **kwargs)
            if self.when == "after":
                original(conn, commands, **kwargs)
            conn.disconnect()
            lost = redis.ConnectionError("killed by the test")
            raise OperationalError(
                f"Redis connection failed: {lost}", lost, outcome_unknown=self.when == "after"
            )

        monkeypatch.setattr(executor, "roundtrip", roundtrip)


def ghost_claim(raw: Any, value: bytes, owner: str, registered: bool) -> None:
    """A claim left by a claimant that died between its claim and its entity's
    transaction: the claim (with a token) and, if ``registered``, its registration."""
    mapper = redisca.inspect(Account)
    layout = mapper.layout
    raw.hset(layout.unique_stripe(b"email", value), value, owner)
    raw.hset(layout.claim_tokens(b"email", value), value, b"deadbeefdeadbeef")
    if registered:
        raw.hset(layout.registry(owner.encode()), b"email:" + owner.encode(), b"deadbeefdeadbeef")


SCENARIOS = {
    # what runs, and the steps it goes through
    "insert": ("register", "claim", "entity"),
    "takeover": ("register", "revoke", "claim", "entity"),
    "update": ("register", "claim", "entity", "release"),
    "delete": ("entity", "release"),
}
CASES = [
    (scenario, step, when)
    for scenario, steps in SCENARIOS.items()
    for step in steps
    for when in ("before", "after")
]


def _setup(client: Any, scenario: str) -> None:
    if scenario == "takeover":
        ghost_claim(client, b"v@x.org", "ghost", registered=True)
    if scenario in ("update", "delete"):
        with Session(client) as session:
            session.add(Account(email="v@x.org", id="a1"))
            session.commit()


def _act(session: Session, scenario: str) -> None:
    if scenario in ("insert", "takeover"):
        session.add(Account(email="v@x.org", id="a1"))
    elif scenario == "update":
        session.get(Account, "a1").email = "w@x.org"
    else:
        session.delete(session.get(Account, "a1"))
    session.commit()


@pytest.mark.parametrize(("scenario", "step", "when"), CASES, ids=["-".join(c) for c in CASES])
def test_a_connection_killed_at_each_step_leaves_one_owner_and_no_lasting_claim(
    cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch, scenario: str, step: str, when: str
) -> None:
    client = cluster.client()
    try:
        _setup(client, scenario)
        fault = Fault(step, when)
        fault.install(monkeypatch)
        session = Session(client)
        try:
            _act(session, scenario)
            failed = False
        except OperationalError as exc:
            failed = True
            assert exc.outcome_unknown == (when == "after" and step == "entity")
        assert fault.fired
        monkeypatch.undo()
        held = assert_one_owner_each(client)
        # A release that failed leaves at worst a stale claim; a commit that failed is
        # pending still, and its values free or its own.
        assert failed == (step != "release")
        # The next claimant of every value takes over whatever claim is stale.
        for value in (b"v@x.org", b"w@x.org"):
            with Session(client) as other:
                other.add(Account(email=value.decode(), id=f"next-{value[0]:c}"))
                try:
                    other.commit()
                    assert value not in held, (value, held)
                except redisca.UniqueViolation as exc:
                    assert held.get(value) == exc.owner, (value, held, exc.owner)
            held = assert_one_owner_each(client)
        if failed:  # committing again ends consistently too
            try:
                session.commit()
            except redisca.UniqueViolation as exc:
                assert exc.owner.startswith("next-")
            except redisca.IntegrityError:
                assert scenario in ("insert", "takeover")  # in doubt, then taken
            assert_one_owner_each(client)
        session.close()
    finally:
        client.close()


def test_the_entity_transaction_refuses_a_claim_revoked_after_it_was_made(
    cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claims a value, and before its entity's transaction B proves A's claim stale
    (A's hash does not hold the value yet), revokes it and takes the value: A's
    transaction sees its registration gone and claims again, to find B the owner."""
    client = cluster.client()
    try:
        abandoned = []

        def dead(self: Any, groups: Any) -> Any:  # no clean-up: only the protocol acts
            abandoned.append(1)
            yield from ()

        monkeypatch.setattr(claims.Pending, "abandon", dead)

        def b_claims() -> None:
            with Session(client) as other:
                other.add(Account(email="v@x.org", id="b1"))
                other.commit()

        fault = Fault("entity", "before", hooked=b_claims)
        fault.install(monkeypatch)
        with Session(client) as session:
            session.add(Account(email="v@x.org", id="a1"))
            with pytest.raises(redisca.UniqueViolation) as caught:
                session.commit()
            assert caught.value.owner == "b1"
        assert fault.fired and abandoned
        held = assert_one_owner_each(client)
        assert held == {b"v@x.org": "b1"}
        assert not client.exists(redisca.inspect(Account).layout.entity("a1"))
    finally:
        client.close()


def test_a_claimant_that_died_leaves_a_claim_the_next_one_takes_over(
    cluster: EmbeddedCluster,
) -> None:
    """A dead claimant's claim, with or without its registration, and a claim whose
    owner no longer holds the value, are taken over; a claim whose owner holds the
    value is not."""
    client = cluster.client()
    try:
        ghost_claim(client, b"a@x.org", "ghost1", registered=True)
        ghost_claim(client, b"b@x.org", "ghost2", registered=False)
        with Session(client) as session:
            session.add_all([Account(email="a@x.org", id="n1"), Account(email="b@x.org", id="n2")])
            session.commit()
        assert assert_one_owner_each(client) == {b"a@x.org": "n1", b"b@x.org": "n2"}
        layout = redisca.inspect(Account).layout
        assert client.hget(layout.registry(b"ghost1"), b"email:ghost1") is None  # revoked
        with Session(client) as session:
            session.add(Account(email="A@x.org", id="n3"))
            with pytest.raises(redisca.UniqueViolation) as caught:
                session.commit()
            assert caught.value.owner == "n1"
    finally:
        client.close()


def test_sharded_uniques_on_one_server_are_one_transaction(redis_server: Any) -> None:
    """On one server no token or registration is written: the claim and the entity
    change in one MULTI/EXEC, and a swap is allowed."""
    raw = redis_server.client()
    raw.flushall()
    try:
        with Session(raw) as session:
            session.add_all([Account(email="x@x.org", id="a1"), Account(email="y@x.org", id="a2")])
            session.commit()
        with Session(raw) as session:
            a1, a2 = session.get_many(Account, ["a1", "a2"])
            a1.email, a2.email = a2.email, a1.email
            session.commit()
        assert assert_one_owner_each(raw) == {b"y@x.org": "a1", b"x@x.org": "a2"}
        assert not [k for k in raw.scan_iter() if b"#o:" in k or b"#c:" in k]
    finally:
        raw.close()


def test_an_async_session_runs_the_same_protocol(cluster: EmbeddedCluster) -> None:
    """``AsyncSession`` on ``redis.asyncio``'s cluster client runs the same commit
    protocol: tasks racing for values across shards leave one owner each, and a swap is
    refused as in the sync session."""
    import asyncio

    import redis.asyncio.cluster

    from redisca.asyncio import AsyncSession

    async def claim(client: Any, ident: str, value: str) -> str:
        session = AsyncSession(client)
        session.add(Account(email=value, id=ident))
        try:
            await session.commit()
            return "ok"
        except redisca.UniqueViolation:
            return "taken"
        except redisca.ConflictError:
            return "conflict"

    async def main() -> list[str]:
        client = redis.asyncio.cluster.RedisCluster.from_url(cluster.url)
        try:
            outcomes = await asyncio.gather(
                *(claim(client, f"t{n}", VALUES[n % 3]) for n in range(12))
            )
            session = AsyncSession(client)
            x, y = await session.get_many(Account, ["t0", "t1"])
            if x is not None and y is not None:
                x.email, y.email = y.email, x.email
                try:
                    await session.commit()
                    raise AssertionError("a swap across shards was committed")
                except redisca.UniqueViolation as exc:
                    assert "a swap" in str(exc)
            return outcomes
        finally:
            await client.aclose()

    outcomes = asyncio.run(main())
    assert outcomes.count("ok") <= 3 and outcomes.count("ok") >= 1, outcomes
    sync = cluster.client()
    try:
        held = assert_one_owner_each(sync)
        assert len(held) == outcomes.count("ok")
    finally:
        sync.close()

"""``Session.bulk_add`` of a sharded model: on a cluster each chunk is one ``MULTI``/``EXEC``
per shard, run in parallel (threads; ``asyncio.gather`` for the async session), after the
chunk's unique values are claimed in their own shards; on one server a chunk is one
transaction, as for any model.

Each test runs with the sync and the async session (the ``driver`` fixture), on the
suite's server, or with ``REDISCA_TEST_CLUSTER=1`` on its 3-master cluster. What is
written is read back raw: every entity in its own shard's key, every index entry, every
unique claim naming the entity that holds its value. Failures part-way (a taken value, a
connection killed before or after a shard's ``EXEC``, a master killed between chunks)
leave written, unwritten and in-doubt objects that ``BulkAddError`` names, and giving
``bulk_add`` the unwritten and in-doubt ones again completes the input.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import redis
from helpers import CLUSTER, assert_indexes_consistent

import redisca
import redisca.asyncio.driver
from redisca import BulkAddError, BulkTransaction, Email, Integer, Registry, Session, String
from redisca.embedded import EmbeddedCluster
from redisca.maintenance import check
from redisca.session import executor

pytestmark = pytest.mark.usefixtures("driver")

registry = Registry()
SHARDS = 8


@registry.mapped(prefix="bsh", shards=SHARDS)
@attrs.define
class Member:
    email: str = Email(unique=True)
    n: int = Integer(index=True, default=0)
    team: str | None = String(index=True, default=None)
    id: str | None = None


@registry.mapped(prefix="bshp", shards=SHARDS)
@attrs.define
class Point:
    n: int = Integer(index=True, default=0)
    id: str | None = None


def members(count: int, start: int = 0, ids: bool = True) -> list[Member]:
    return [
        Member(
            email=f"m{i}@x.org",
            n=i % 50,
            team=f"t{i % 7}",
            id=f"m{i}" if ids else None,
        )
        for i in range(start, start + count)
    ]


def _b(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def stored(raw: Any, cls: type = Member) -> dict[str, dict[bytes, bytes]]:
    """Every entity of ``cls`` from raw Redis, shard by shard: id -> hash. Asserts each
    is in the key of its own shard (the shard its id maps to)."""
    mapper = redisca.inspect(cls)
    out: dict[str, dict[bytes, bytes]] = {}
    for shard, layout in enumerate(mapper.shard_layouts()):
        for key in raw.scan_iter(match=layout.entity_pattern, count=1000):
            ident = _b(key)[len(layout.entity("")) :].decode()
            assert mapper.shard_of(ident) == shard, (ident, shard)
            assert _b(key).decode() == mapper.key_for(ident)
            out[ident] = {_b(k): _b(v) for k, v in raw.hgetall(key).items()}
    return out


def claims_of(raw: Any) -> dict[bytes, str]:
    """Every unique claim of ``Member.email``, from every shard: value -> owner id."""
    claimed: dict[bytes, str] = {}
    for layout in redisca.inspect(Member).shard_layouts():
        for stripe in layout.unique_stripes(b"email"):
            for value, owner in raw.hgetall(stripe).items():
                assert _b(value) not in claimed
                claimed[_b(value)] = _b(owner).decode()
    return claimed


def assert_clean(raw: Any, ids: set[str] | None = None) -> dict[str, dict[bytes, bytes]]:
    """Exactly ``ids`` are stored (if given), each in its shard; each email claimed by
    its holder and no other claim; indexes as the hashes say; ``check`` clean."""
    found = stored(raw)
    if ids is not None:
        assert set(found) == ids
    held = {values[b"email"].lower(): ident for ident, values in found.items()}
    assert claims_of(raw) == held
    assert_indexes_consistent(raw, redisca.inspect(Member))
    report = check(registry, raw)  # the claims across shards included
    assert report.ok, report.problems
    return found


def test_every_entity_lands_in_its_shard_and_queries_find_it(r: redis.Redis) -> None:
    objs = members(400)
    seen: list[tuple[int, int | None]] = []
    session = Session(r)
    written = session.bulk_add(
        objs, chunk_size=90, progress=lambda done, total: seen.append((done, total))
    )
    assert written == 400
    assert seen == [(90, 400), (180, 400), (270, 400), (360, 400), (400, 400)]
    found = assert_clean(r, {o.id for o in objs})  # type: ignore[misc]
    assert found["m7"][b"email"] == b"m7@x.org" and found["m7"][b"n"] == b"7"
    assert {redisca.inspect(Member).shard_of(o.id) for o in objs} == set(range(SHARDS))  # type: ignore[arg-type]
    with Session(r) as reader:
        query = reader.query(Member)
        assert query.count() == 400
        assert query.filter(Member.n.between(10, 11)).count() == 16
        assert query.filter_by(team="t3").count() == len([o for o in objs if o.team == "t3"])
        assert query.filter_by(email="M123@X.org").one().id == "m123"
        page = query.filter(Member.n >= 49).order_by(Member.n).limit(3).ids()
        assert page == sorted([o.id for o in objs if o.n == 49])[:3]  # type: ignore[type-var]
        assert reader.get(Member, "m399").email == "m399@x.org"  # type: ignore[union-attr]
    session.close()


def test_generated_ids_and_a_model_without_uniques(r: redis.Redis) -> None:
    session = Session(r)
    objs = [Point(n=i) for i in range(250)]
    assert session.bulk_add(objs, chunk_size=100) == 250
    assert all(o.id is not None for o in objs)
    assert set(stored(r, Point)) == {o.id for o in objs}
    with Session(r) as reader:
        assert reader.query(Point).filter(Point.n < 10).count() == 10
    gen = members(120, ids=False)
    assert session.bulk_add(iter(gen), chunk_size=50) == 120
    assert_clean(r, {o.id for o in gen})  # type: ignore[misc]
    session.close()


def test_a_value_twice_in_one_chunk_refuses_the_chunk_and_writes_none_of_it(
    r: redis.Redis,
) -> None:
    objs = members(120)
    objs[75].email = "M10@x.org"  # m10's, in the first chunk; m75 is in the second
    session = Session(r)
    with pytest.raises(BulkAddError) as info:
        session.bulk_add(objs, chunk_size=50)
    exc = info.value
    assert isinstance(exc.error, redisca.UniqueViolation)
    assert exc.written == 50 and exc.index == 50 and exc.next_index == 100
    assert exc.first_unwritten is objs[50]
    assert exc.unwritten == objs[50:100] and exc.in_doubt == []
    assert not exc.outcome_unknown
    assert all(t.outcome == "not written" for t in exc.transactions)
    assert_clean(r, {o.id for o in objs[:50]})  # type: ignore[misc]
    objs[75].email = "m75@x.org"
    assert session.bulk_add(exc.unwritten + objs[exc.next_index :], chunk_size=50) == 70
    assert_clean(r, {o.id for o in objs})  # type: ignore[misc]
    session.close()


def test_a_value_already_stored_refuses_its_chunk_and_leaves_no_claim(r: redis.Redis) -> None:
    with Session(r) as first:
        first.add(Member(email="taken@x.org", id="owner"))
        first.commit()
    objs = members(100)
    objs[30].email = "TAKEN@x.org"
    session = Session(r)
    with pytest.raises(BulkAddError) as info:
        session.bulk_add(objs, chunk_size=60)
    exc = info.value
    assert isinstance(exc.error, redisca.UniqueViolation)
    assert exc.error.owner == "owner" and exc.entity is objs[30]
    assert exc.written == 0 and exc.next_index == 60
    assert exc.unwritten == objs[:60] and exc.in_doubt == []
    # nothing of the chunk written, and its other values' claims taken back
    assert_clean(r, {"owner"})
    objs[30].email = "free@x.org"
    assert session.bulk_add(exc.unwritten + objs[exc.next_index :]) == 100
    assert_clean(r, {"owner"} | {o.id for o in objs})  # type: ignore[operator]
    session.close()


class Kill:
    """Kills the connection of the ``nth`` entity transaction (the round trip that
    ends with ``EXEC`` and writes the model's entity keys) before it is sent, or after
    its replies came (it ran; the client never knows), in the sync and async drivers."""

    def __init__(self, nth: int, when: str) -> None:
        self.nth, self.when = nth, when
        self.seen = 0
        self.fired = False

    def aimed(self, commands: Any) -> bool:
        if self.fired or not any(c[0] == b"EXEC" for c in commands):
            return False
        tag = redisca.inspect(Member).layout.entity("")[:4]  # b"{bsh"
        if not any(len(c) > 1 and bytes(c[1]).startswith(tag) and b"}:" in c[1] for c in commands):
            return False
        self.seen += 1
        if self.seen < self.nth:
            return False
        self.fired = True
        return True

    def lost(self) -> redisca.OperationalError:
        error = redis.ConnectionError("killed by the test")
        return redisca.OperationalError(
            f"Redis connection failed: {error}", error, outcome_unknown=self.when == "after"
        )

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        sync, aio = executor.roundtrip, redisca.asyncio.driver.roundtrip

        def roundtrip(conn: Any, commands: Any, **kwargs: Any) -> list[Any]:
            if not self.aimed(commands):
                return sync(conn, commands, **kwargs)
            if self.when == "after":
                sync(conn, commands, **kwargs)
            conn.disconnect()
            raise self.lost()

        async def aroundtrip(conn: Any, commands: Any, **kwargs: Any) -> list[Any]:
            if not self.aimed(commands):
                return await aio(conn, commands, **kwargs)
            if self.when == "after":
                await aio(conn, commands, **kwargs)
            await conn.disconnect()
            raise self.lost()

        monkeypatch.setattr(executor, "roundtrip", roundtrip)
        monkeypatch.setattr(redisca.asyncio.driver, "roundtrip", aroundtrip)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_connection_killed_mid_chunk_is_reported_and_a_retry_completes(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    objs = members(300)
    kill = Kill(nth=SHARDS + 3 if CLUSTER else 2, when=when)  # in the second chunk
    kill.install(monkeypatch)
    session = Session(r)
    with pytest.raises(BulkAddError) as info:
        session.bulk_add(objs, chunk_size=100)
    monkeypatch.undo()
    assert kill.fired
    exc = info.value
    assert isinstance(exc.error, redisca.OperationalError)
    assert exc.next_index == 200
    chunk = objs[100:200]
    ids = lambda objs: {o.id for o in objs}  # noqa: E731
    written = ids(chunk) - ids(exc.unwritten) - ids(exc.in_doubt)
    assert exc.written == 100 + len(written)
    first = next(o for o in chunk if o.id not in written)
    assert exc.first_unwritten is first and exc.index == objs.index(first)
    assert not ids(exc.unwritten) & ids(exc.in_doubt)
    # The transactions account for every object of the chunk, and say how each ended.
    assert all(isinstance(t, BulkTransaction) for t in exc.transactions)
    outcomes = {o.id: t.outcome for t in exc.transactions for o in t.entities}
    assert set(outcomes) == ids(chunk)
    failed = [t for t in exc.transactions if t.outcome != "written"]
    assert len(failed) == 1
    assert failed[0].outcome == ("unknown" if when == "after" else "not written")
    assert exc.outcome_unknown == (when == "after")
    if CLUSTER:  # one shard's transaction failed, the others' went through
        assert len(exc.transactions) == SHARDS
        assert failed[0].shard is not None and 0 < len(failed[0].entities) < 100
        assert len(written) == 100 - len(failed[0].entities)
    else:  # one transaction for the whole chunk
        assert [t.shard for t in exc.transactions] == [None]
        assert written == set()
    lost = exc.in_doubt if when == "after" else exc.unwritten
    assert ids(lost) == ids(failed[0].entities)
    on_server = stored(r)
    assert set(on_server) == ids(objs[:100]) | written | (ids(lost) if when == "after" else set())
    # The retry: the unwritten and in-doubt objects again, then the rest of the input.
    again = exc.unwritten + exc.in_doubt + objs[exc.next_index :]
    assert session.bulk_add(again, chunk_size=100) == len(again)
    assert_clean(r, ids(objs))
    session.close()


def test_an_in_doubt_object_is_recognised_only_by_its_identity(r: redis.Redis) -> None:
    """An equal copy of an in-doubt object is a new object: its key is taken."""
    objs = members(10)
    session = Session(r)
    assert session.bulk_add(objs) == 10
    with pytest.raises(BulkAddError) as info:
        session.bulk_add([Member(email="m3@x.org", id="m3")])
    assert isinstance(info.value.error, redisca.IntegrityError)
    assert info.value.unwritten and not info.value.in_doubt
    assert_clean(r, {o.id for o in objs})  # type: ignore[misc]
    session.close()


# -- a master killed between chunks (a cluster of its own, with replicas) -----------------


@pytest.fixture
def ha() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(3, 1, node_timeout=2000) as c:
        yield c


@pytest.mark.skipif(not CLUSTER, reason="a master of a cluster: REDISCA_TEST_CLUSTER=1")
def test_a_master_killed_mid_way_then_retrying_until_failover_completes(
    ha: EmbeddedCluster,
) -> None:
    client = ha.client()
    objs = members(400)
    killed: list[Any] = []

    def progress(done: int, total: int | None) -> None:
        if done == 100 and not killed:
            victim = ha.masters[0]
            with victim.client() as raw:
                assert raw.wait(1, 5000) >= 1  # the replica has the first chunk
            victim.kill()
            killed.append(victim)

    session = Session(client)
    todo: list[Any] = objs
    failures = []
    deadline = time.monotonic() + 60
    while True:
        try:
            session.bulk_add(todo, chunk_size=100, progress=progress)
            break
        except BulkAddError as exc:
            failures.append(exc)
            assert isinstance(exc.error, redisca.OperationalError), exc
            assert time.monotonic() < deadline, f"no progress for 60 s: {exc}"
            todo = exc.unwritten + exc.in_doubt + todo[exc.next_index :]
            time.sleep(0.2)
    assert killed and failures
    assert failures[0].written >= 100  # the first chunk (and shards of other masters)
    for exc in failures:  # a failure in the claims writes nothing of the chunk
        left = exc.unwritten + exc.in_doubt
        assert all(t.outcome != "written" for t in exc.transactions) or len(left) < 100
    ha.wait_ok(timeout=30)
    assert_clean(client, {o.id for o in objs})  # type: ignore[misc]
    client.close()


# -- a commit's claims across shards ------------------------------------------------------


@pytest.mark.sync_only(reason="spies on the sync driver's threads")
@pytest.mark.skipif(not CLUSTER, reason="claims in shards of their own: a cluster")
def test_a_commit_claims_its_values_in_parallel_across_shards(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit of entities whose values fall in several shards registers, claims and
    writes its shards' transactions in parallel (one ``Parallel`` request per step), and
    its result is as before."""
    ran: list[int] = []
    original = executor._parallel

    def spy(steps: Any) -> Any:
        ran.append(len(steps))
        return original(steps)

    monkeypatch.setattr(executor, "_parallel", spy)
    with Session(r) as session:
        session.add_all(members(40))
        session.commit()
    # registrations, claims, then the entities' transactions
    assert len(ran) == 3 and all(n > 1 for n in ran), ran
    assert_clean(r, {f"m{i}" for i in range(40)})
    with Session(r) as session:
        session.add(Member(email="M7@x.org", id="late"))
        with pytest.raises(redisca.UniqueViolation) as info:
            session.commit()
        assert info.value.owner == "m7"
    assert_clean(r, {f"m{i}" for i in range(40)})


def test_a_commit_in_doubt_committed_again_leaves_no_registration(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit path of the same fix: an insert whose ``EXEC`` reply was lost, then
    committed again (recognised as applied), leaves no claim registration in flight."""
    kill = Kill(nth=1, when="after")
    kill.install(monkeypatch)
    session = Session(r)
    session.add_all(members(5))
    with pytest.raises(redisca.OperationalError) as info:
        session.commit()
    monkeypatch.undo()
    assert kill.fired and info.value.outcome_unknown
    session.commit()
    assert_clean(r, {f"m{i}" for i in range(5)})
    session.close()


# -- an async bulk_add cancelled --------------------------------------------------------


@pytest.mark.sync_only(reason="drives an AsyncSession itself, to cancel its task")
@pytest.mark.parametrize("delay", [0.0, 0.003, 0.01, 0.03, 0.1])
def test_a_cancelled_async_bulk_add_leaves_whole_entities_and_a_retry_completes(
    r: redis.Redis, delay: float
) -> None:
    """The task of an ``AsyncSession.bulk_add`` cancelled at some point of its chunks (on
    a cluster: while its shards' transactions run in parallel): the caller gets the
    ``CancelledError``, every entity on the server is whole (hash, index entries, claim),
    no connection is left in use, and adding the objects not stored completes the input
    with ``check`` clean (a claim the cancelled chunk left is its own id's)."""
    import asyncdriver

    from redisca.asyncio import AsyncSession

    objs = members(600)
    with asyncdriver.loops():
        client = asyncdriver.async_client(r)

        async def cancelled_run() -> bool:
            session = AsyncSession(client)
            task = asyncio.ensure_future(session.bulk_add(objs, chunk_size=50))
            await asyncio.sleep(delay)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                return True
            finally:
                await session.close()
            return False

        cancelled = asyncdriver.run(cancelled_run())
        if CLUSTER:  # every node's connections are back (or were dropped)
            assert all(len(n._free) == len(n._connections) for n in client.get_nodes())
        else:
            assert not client.connection_pool._in_use_connections
    on_server = stored(r)
    assert cancelled or len(on_server) == len(objs)
    assert set(on_server) <= {o.id for o in objs}
    assert_indexes_consistent(r, redisca.inspect(Member))
    claimed = claims_of(r)
    for ident, values in on_server.items():
        assert claimed[values[b"email"].lower()] == ident
    for value, owner in claimed.items():  # a claim with no entity yet: its value's own id
        assert value == f"{owner}@x.org".encode()
    rest = [o for o in members(600) if o.id not in on_server]
    with Session(r) as session:
        assert session.bulk_add(rest, chunk_size=50) == len(rest)
    assert_clean(r, {o.id for o in objs})  # type: ignore[misc]


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_commit_whose_shard_fails_keeps_only_that_shard_pending(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """An ordinary commit (not bulk_add) of entities over several shards, one shard's
    transaction killed before it is sent or after it ran: on a cluster the other shards,
    sent beside it, commit and leave the session, and that shard stays pending (in
    doubt after); on one server the commit is one transaction. Committing again
    completes it, with every claim its holder's."""
    objs = members(60)
    kill = Kill(nth=2 if CLUSTER else 1, when=when)
    kill.install(monkeypatch)
    session = Session(r)
    session.add_all(objs)
    with pytest.raises(redisca.OperationalError) as info:
        session.commit()
    monkeypatch.undo()
    assert kill.fired and info.value.outcome_unknown == (when == "after")
    mapper = redisca.inspect(Member)
    pending = {o.id for o in session.new}
    on_server = set(stored(r))
    if CLUSTER:
        (failed,) = {mapper.shard_of(i) for i in pending}  # type: ignore[arg-type]
        assert pending == {o.id for o in objs if mapper.shard_of(o.id) == failed}  # type: ignore[arg-type]
        others = {o.id for o in objs} - pending
        assert on_server == others | (pending if when == "after" else set())
    else:
        assert pending == {o.id for o in objs}
        assert on_server == (pending if when == "after" else set())
    session.commit()
    assert not session.new
    assert_clean(r, {o.id for o in objs})  # type: ignore[misc]
    session.close()

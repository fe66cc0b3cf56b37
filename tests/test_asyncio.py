"""AsyncSession's own behaviour: what the shared suites (run with both sessions through
``asyncdriver``) cannot show. No implicit loads, the async API's shapes, 100 tasks
racing for unique values on one loop, cancellation at each stage of a commit, and an
event loop that keeps running during large commits and loads.

Every test runs its coroutine with ``asyncio.run`` (no plugin needed)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio
from helpers import as_str, assert_indexes_consistent, unique_owner
from models import Company, User, registry

import redisca
from redisca import InvalidRequestError, MissingLoadError, Session, UniqueViolation
from redisca.asyncio import AsyncQuery, AsyncSession
from redisca.maintenance import check

pytestmark = pytest.mark.single_server(reason="redis.asyncio cluster clients: test_asyncio's own")

USERS = redisca.inspect(User)


def arun(r: redis.Redis, body: Callable[[Any], Awaitable[Any]], **kwargs: Any) -> Any:
    """``body(client)`` on a new loop, with a ``redis.asyncio`` client of ``r``'s server
    in ``r``'s mode (``kwargs``: more client options)."""
    pool = r.connection_pool.connection_kwargs
    names = ("host", "port", "db", "decode_responses", "protocol")
    options = {k: pool[k] for k in names if k in pool}

    async def main() -> Any:
        client = redis.asyncio.Redis(**options, **kwargs)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def clean(r: redis.Redis) -> None:
    report = check(registry, r)
    assert report.ok, report.problems
    assert_indexes_consistent(r, USERS)


def seed(r: redis.Redis, n: int = 3) -> list[str]:
    with Session(r) as s:
        acme = Company("Acme", id="acme")
        s.add_all([User(f"u{i}@x.org", age=20 + i, company=acme, id=f"u{i}") for i in range(n)])
        s.commit()
    return [f"u{i}" for i in range(n)]


# -- the API ----------------------------------------------------------------------------


def test_a_sync_client_is_refused_naming_the_fix(r: redis.Redis) -> None:
    with pytest.raises(InvalidRequestError, match=r"redis\.asyncio"):
        AsyncSession(r)


def test_reading_an_unloaded_attribute_raises_missing_load_naming_the_fix(
    r: redis.Redis,
) -> None:
    seed(r)

    async def body(client: Any) -> None:
        async with AsyncSession(client) as s:
            user = await s.get(User, "u0")
            assert user is not None and user.email == "u0@x.org"
            with pytest.raises(MissingLoadError) as info:
                _ = user.company.name  # type: ignore[union-attr]
            said = str(info.value)
            assert "Company.name" in said and "await session.load(obj)" in said
            assert "await session.refresh(obj)" in said and "await session.preload(" in said
            assert isinstance(info.value, redisca.RediscaError)
            assert await s.load(user.company) is user.company
            assert user.company.name == "Acme"  # type: ignore[union-attr]

            ref = s.reference(User, "u1")
            with pytest.raises(MissingLoadError, match=r"User\.email"):
                _ = ref.email
            await s.refresh(ref)
            assert ref.email == "u1@x.org"

    arun(r, body)


def test_preload_loads_the_targets_of_many_in_one_round_trip(r: redis.Redis) -> None:
    seed(r, 5)

    async def body(client: Any) -> None:
        async with AsyncSession(client) as s:
            users = await s.get_many(User, [f"u{i}" for i in range(5)])
            await s.preload(users, User.company)
            assert {u.company.name for u in users} == {"Acme"}  # type: ignore[union-attr]

    arun(r, body)


def test_the_async_api_commits_queries_and_rolls_back(r: redis.Redis) -> None:
    async def body(client: Any) -> None:
        async with AsyncSession(client) as s:
            acme = Company("Acme")
            async with s.begin():
                s.add_all([User(f"a{i}@x.org", age=i, company=acme, id=f"a{i}") for i in range(6)])
                assert len(s.new) == 7
            assert not s.new
            q = s.query(User).filter(User.age >= 3).order_by(User.age)
            assert isinstance(q, AsyncQuery)
            assert await q.count() == 3
            assert await q.ids() == ["a3", "a4", "a5"]
            assert [u.id async for u in q] == ["a3", "a4", "a5"]
            assert (await q.first()).id == "a3"  # type: ignore[union-attr]
            assert (await s.query(User).filter_by(email="a1@x.org").one()).id == "a1"
            assert await s.query(User).filter(User.age == 99).one_or_none() is None
            with pytest.raises(TypeError, match="async for"):
                list(q)

            a0 = await s.get(User, "a0")
            assert a0 is not None
            a0.age = 50
            assert s.is_modified(a0) and a0 in s.dirty
            await s.rollback()
            assert a0.age == 0 and not s.dirty

            with pytest.raises(RuntimeError):
                async with s.begin():
                    s.delete(a0)
                    raise RuntimeError("the block failed")
            assert not s.deleted
            s.delete(a0)
            await s.commit()
            assert await s.get(User, "a0") is None

            merged = await s.merge(User("a1@x.org", age=77, id="a1"))
            await s.commit()
            assert merged.age == 77
            assert await s.bulk_add([User(f"b{i}@x.org") for i in range(10)], chunk_size=4) == 10
        async with AsyncSession(client) as other:
            assert (await other.get(User, "a1")).age == 77  # type: ignore[union-attr]
            assert len(await other.query(User).all()) == 15

    arun(r, body)
    clean(r)


# -- concurrency ------------------------------------------------------------------------


def test_a_hundred_tasks_race_for_unique_values(r: redis.Redis) -> None:
    """100 tasks on one loop, each with its own session, claim 10 emails (10 tasks
    per email): exactly one owner each, the others refused, the indexes clean."""

    async def claim(client: Any, n: int) -> str | None:
        async with AsyncSession(client) as s:
            s.add(User(f"e{n % 10}@x.org", age=n, id=f"t{n}"))
            try:
                await s.commit()
            except UniqueViolation:
                await s.rollback()  # dropped on purpose: no UncommittedChangesWarning
                return None
            return f"t{n}"

    async def body(client: Any) -> list[str | None]:
        return await asyncio.gather(*(claim(client, n) for n in range(100)))

    won = arun(r, body, max_connections=200)
    winners = [w for w in won if w is not None]
    assert len(winners) == 10
    for n in range(10):
        owner = unique_owner(r, "usr", "eml", f"e{n}@x.org")
        assert owner in winners and int(owner[1:]) % 10 == n  # type: ignore[index]
    clean(r)


# -- cancellation at each stage of a commit -----------------------------------------------

WATCH = b"\r\n$5\r\nWATCH\r\n"
MULTI = b"*1\r\n$5\r\nMULTI\r\n"


class Gate:
    """Where a commit's task stops, to be cancelled there: ``stage`` is one of
    ``before-reads`` (the WATCH + reads not sent), ``reads-reply`` (sent, their
    replies awaited), ``before-exec`` (MULTI … EXEC not sent) and ``exec-reply``
    (EXEC applied by Redis, its reply awaited)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.reached = asyncio.Event()
        self.connections: list[Any] = []


def gated(gate: Gate) -> type:
    class Gated(redis.asyncio.Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            data = command if isinstance(command, bytes) else b"".join(command)
            stage = gate.stage
            watch, multi = WATCH in data[:40], data.startswith(MULTI) or MULTI in data
            hit = (stage in ("before-reads", "reads-reply") and watch and not multi) or (
                stage in ("before-exec", "exec-reply") and multi
            )
            if hit and stage.startswith("before"):
                await self._stop()
            await super().send_packed_command(command, check_health)
            if hit and not stage.startswith("before"):
                if stage == "exec-reply":
                    await asyncio.sleep(0.05)  # Redis has run the EXEC by now
                await self._stop()

        async def _stop(self) -> None:
            gate.connections.append(self)
            gate.reached.set()
            await asyncio.Event().wait()  # until cancelled

    return Gated


@pytest.mark.parametrize("stage", ["before-reads", "reads-reply", "before-exec", "exec-reply"])
def test_a_commit_cancelled_at_each_stage(r: redis.Redis, stage: str) -> None:
    """Cancelled before EXEC went out: nothing written, the changes pending. After:
    the outcome is unknown (in doubt), and the next commit verifies it. Either way
    the connection is dropped, never returned to the pool in a transaction."""
    seed(r, 1)

    async def body(client: Any) -> None:
        gate = Gate(stage)
        pool = redis.asyncio.ConnectionPool(
            connection_class=gated(gate), **client.connection_pool.connection_kwargs
        )
        gated_client = redis.asyncio.Redis(connection_pool=pool)
        s = AsyncSession(gated_client)
        user = await s.get(User, "u0")
        assert user is not None
        user.email = "renamed@x.org"  # an indexed unique field: WATCH + reads, then EXEC
        s.add(User("new@x.org", age=5, id="n1"))
        task = asyncio.ensure_future(s.commit())
        await gate.reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (conn,) = gate.connections
        assert not conn.is_connected  # dropped, its WATCH / MULTI with it
        assert not pool._in_use_connections
        stored = await client.hget(USERS.key("u0"), "eml")
        applied = stage == "exec-reply"
        assert as_str(stored) == ("renamed@x.org" if applied else "u0@x.org")
        assert (await client.exists(USERS.key("n1"))) == applied
        assert s.is_modified(user) and len(s.new) == 1  # still pending
        if applied:
            assert redisca.inspect(user).in_doubt
        gate.stage = "none"
        await s.commit()  # verified (in doubt) or simply done again
        assert not s.new and not s.dirty
        await s.close()
        await gated_client.aclose()
        await pool.disconnect()  # a pool passed in is not the client's to close

    arun(r, body)
    assert as_str(r.hget(USERS.key("u0"), "eml")) == "renamed@x.org"
    assert unique_owner(r, "usr", "eml", "renamed@x.org") == "u0"
    assert unique_owner(r, "usr", "eml", "u0@x.org") is None
    assert unique_owner(r, "usr", "eml", "new@x.org") == "n1"
    clean(r)


# -- the loop keeps running ---------------------------------------------------------------


def test_the_loop_keeps_ticking_during_a_large_commit_and_get_many(r: redis.Redis) -> None:
    """A ticker task (every 10 ms) ticks during a 10,000-entity commit and during a
    10,000-entity get_many: redisca awaits its round trips instead of blocking the loop.
    (How long they take is the benchmark's business, not asserted here.)"""

    async def body(client: Any) -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async def ticked(work: Awaitable[Any]) -> int:
            nonlocal ticks
            ticking = asyncio.ensure_future(ticker())
            await asyncio.sleep(0)  # the ticker has started
            ticks = 0
            try:
                await work
            finally:
                ticking.cancel()
            return ticks

        ids = [f"k{i}" for i in range(10_000)]
        async with AsyncSession(client) as s:
            s.add_all([User(f"{i}@x.org", age=n % 100, id=i) for n, i in enumerate(ids)])
            during_commit = await ticked(s.commit())
        async with AsyncSession(client) as s:
            during_load = await ticked(s.get_many(User, ids))
            assert sum(u is not None for u in await s.get_many(User, ids)) == 10_000
        return during_commit, during_load

    during_commit, during_load = arun(r, body)
    assert during_commit > 0 and during_load > 0

"""The async column: the same phases through ``AsyncSession`` and through the same
hand-written floor on ``redis.asyncio`` (one write per batch on a pooled connection, a
pipeline without a transaction), each side on an event loop of its own.

The phases keep the sync sides' shape (a method per phase, run by
:func:`bench.runner._sequence`): each runs one coroutine to completion on the side's
loop, so a phase's time includes one ``run_until_complete`` and nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any

import redis
import redis.asyncio

from redisca import hexid
from redisca.asyncio import AsyncSession

from .floor import AGE, EMAILS, ENTITY
from .model import Company, DataSet, U, User, company_ids
from .raw import as_dict, decode


class _OnLoop:
    """A loop and a ``redis.asyncio`` client of the sync client's server and mode."""

    def __init__(self, client: redis.Redis) -> None:
        kwargs = client.connection_pool.connection_kwargs
        keep = ("host", "port", "path", "db", "decode_responses", "protocol", "socket_timeout")
        options = {k: kwargs[k] for k in keep if kwargs.get(k) is not None}
        if "path" in options:
            options["unix_socket_path"] = options.pop("path")
        self.loop = asyncio.new_event_loop()
        self.aclient = redis.asyncio.Redis(**options)

    def run(self, work: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(work)

    def __del__(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is not None and not loop.is_closed():
            loop.run_until_complete(self.aclient.aclose())
            loop.close()


class AsyncOrmSide(_OnLoop):
    name = "async redisca"

    def __init__(self, client: redis.Redis, data: DataSet) -> None:
        super().__init__(client)
        self.data = data
        self.ids: list[str] = []
        self.session: AsyncSession | None = None
        self.users: list[Any] = []

    def setup(self) -> None:
        async def setup() -> None:
            async with AsyncSession(self.aclient) as session:
                session.add_all(Company(name=f"company {i}", id=i) for i in company_ids())
                await session.commit()

        self.run(setup())

    def _users(self, session: AsyncSession) -> Iterator[Any]:
        refs = {i: session.reference(Company, i) for i in company_ids()}
        for r in self.data.rows:
            yield User(
                email=r.email, age=r.age, name=r.name, created=r.created, company=refs[r.company]
            )

    def insert(self, ids: list[str] | None = None) -> int:
        async def insert() -> int:
            async with AsyncSession(self.aclient) as session:
                users = list(self._users(session))
                session.add_all(users)
                await session.commit()
                self.ids = [u.id for u in users]
            return len(users)

        return int(self.run(insert()))

    def get(self) -> int:
        self.session = AsyncSession(self.aclient)
        self.users = self.run(self.session.get_many(User, self.ids))
        assert all(u is not None for u in self.users)
        return len(self.users)

    def find(self) -> int:
        async def find() -> None:
            async with AsyncSession(self.aclient) as session:
                for email in self.data.lookups:
                    await session.query(User).filter(U.email == email).one()
                    session.expunge_all()

        self.run(find())
        return len(self.data.lookups)

    def range(self) -> int:
        async def range_() -> None:
            async with AsyncSession(self.aclient) as session:
                for low, high in self.data.windows:
                    q = session.query(User).filter(U.age.between(low, high))
                    await q.offset(5).limit(10).all()
                    session.expunge_all()

        self.run(range_())
        return len(self.data.windows)

    def update_plain(self) -> int:
        assert self.session is not None
        for user, name in zip(self.users, self.data.new_names, strict=True):
            user.name = name
        self.run(self.session.commit())
        return len(self.users)

    def update_indexed(self) -> int:
        assert self.session is not None
        for user, age in zip(self.users, self.data.new_ages, strict=True):
            user.age = age
        self.run(self.session.commit())
        return len(self.users)

    def delete(self) -> int:
        assert self.session is not None
        for user in self.users:
            self.session.delete(user)
        self.run(self.session.commit())
        self.run(self.session.close())
        return len(self.users)


class AsyncFloorSide(_OnLoop):
    """:class:`bench.floor.FloorSide` on ``redis.asyncio``: the same commands, batched
    the same way, read with redis-py's own ``read_response``."""

    name = "async floor"

    def __init__(self, client: redis.Redis, data: DataSet) -> None:
        super().__init__(client)
        self.data = data
        self.ids: list[str] = []
        self.records: list[dict[str, Any]] = []

    def setup(self) -> None:
        """Nothing: the floor keeps no companies."""

    async def _run(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        pool = self.aclient.connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except TypeError:  # redis-py < 5.3 wants a command name (as raw.connection does)
            conn = await pool.get_connection("MULTI")  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            return [await conn.read_response() for _ in commands]
        finally:
            await pool.release(conn)

    def insert(self, ids: list[str] | None = None) -> int:
        rows = self.data.rows
        self.ids = ids or [hexid() for _ in rows]
        writes: list[tuple[Any, ...]] = []
        for ident, row in zip(self.ids, rows, strict=True):
            writes += [
                (b"HSETNX", EMAILS, row.email.lower().encode(), ident),
                row.hset(ENTITY + ident.encode()),
                (b"ZADD", AGE, b"%d" % row.age, ident),
            ]
        replies = self.run(self._run(writes))
        if not all(replies[::3]):
            raise RuntimeError("an email is taken")
        return len(rows)

    def get(self) -> int:
        keys = [ENTITY + i.encode() for i in self.ids]
        replies = self.run(self._run([(b"HGETALL", k) for k in keys]))
        self.records = [decode(i, as_dict(h)) for i, h in zip(self.ids, replies, strict=True)]
        return len(self.records)

    def find(self) -> int:
        async def find() -> None:
            for email in self.data.lookups:
                (owner,) = await self._run([(b"HGET", EMAILS, email.lower().encode())])
                (h,) = await self._run([(b"HGETALL", ENTITY + owner)])
                decode(owner.decode(), as_dict(h))

        self.run(find())
        return len(self.data.lookups)

    def range(self) -> int:
        async def range_() -> None:
            for low, high in self.data.windows:
                (ids,) = await self._run([(b"ZRANGE", AGE, low, high, b"BYSCORE", b"LIMIT", 5, 10)])
                replies = await self._run([(b"HGETALL", ENTITY + i) for i in ids])
                [decode(i.decode(), as_dict(h)) for i, h in zip(ids, replies, strict=True)]

        self.run(range_())
        return len(self.data.windows)

    def update_plain(self) -> int:
        writes: list[tuple[Any, ...]] = []
        for record, name in zip(self.records, self.data.new_names, strict=True):
            record["name"] = name
            writes.append((b"HSET", ENTITY + record["id"].encode(), b"name", name.encode()))
        self.run(self._run(writes))
        return len(self.records)

    def update_indexed(self) -> int:
        writes: list[tuple[Any, ...]] = []
        for record, age in zip(self.records, self.data.new_ages, strict=True):
            record["age"] = age
            new = b"%d" % age
            writes += [
                (b"HSET", ENTITY + record["id"].encode(), b"age", new),
                (b"ZADD", AGE, new, record["id"]),
            ]
        self.run(self._run(writes))
        return len(self.records)

    def delete(self) -> int:
        writes: list[tuple[Any, ...]] = []
        for record in self.records:
            ident = record["id"]
            writes += [
                (b"DEL", ENTITY + ident.encode()),
                (b"HDEL", EMAILS, record["email"].lower().encode()),
                (b"ZREM", AGE, ident),
            ]
        self.run(self._run(writes))
        count = len(self.records)
        self.records = []
        return count


__all__ = ["AsyncFloorSide", "AsyncOrmSide"]

"""The query of an :class:`~redisca.asyncio.AsyncSession`: awaited terminals.

Building a query (``filter``, ``order_by``, ``limit``, ``after``, ``preload``...) is
the sync :class:`~redisca.Query`'s own; the terminals run the same protocols (the
script call, the page's hashes, the preloads) through the asyncio driver.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

from ..session.io import Steps
from ..session.query import Query
from .driver import drive, ready

T = TypeVar("T")
T_ = TypeVar("T_")


class AsyncQuery(Query[T]):
    """``session.query(User)`` of an AsyncSession: ``await q.all()``, ``await q.first()``,
    ``await q.one()``, ``await q.one_or_none()``, ``await q.count()``, ``await q.ids()``,
    and ``async for obj in q``."""

    async def _drive(self, steps: Steps[T_]) -> T_:
        """Run a protocol once the session's cluster clients know their slot map (a
        query can be a session's first I/O)."""
        await ready(self.session)
        return await drive(steps)

    async def ids(self) -> list[str]:  # type: ignore[override]
        """Ids of the matching entities, in query order; nothing is loaded."""
        return await self._drive(self._ids())

    async def count(self) -> int:  # type: ignore[override]
        """How many entities match (within offset and limit), computed on the server;
        an expiring model's expired entities are not counted (see :meth:`redisca.Query.count`)."""
        return await self._drive(self._count())

    async def all(self) -> list[T]:  # type: ignore[override]
        """The matching instances, in query order, read with the ids in one atomic step."""
        return await self._drive(self._all(self.limit_))

    async def first(self) -> T | None:  # type: ignore[override]
        """The first result, or ``None``."""
        found = await self._drive(self._all(1))
        return found[0] if found else None

    async def one_or_none(self) -> T | None:  # type: ignore[override]
        """The only result, or ``None``; more than one raises ``MultipleResultsFound``."""
        return self._only(await self._drive(self._all(self._at_most_two())))

    async def one(self) -> T:  # type: ignore[override]
        """The only result; none raises ``NotFound``, more than one ``MultipleResultsFound``."""
        return self._required(self._only(await self._drive(self._all(self._at_most_two()))))

    def __iter__(self) -> Iterator[T]:
        raise TypeError("an AsyncSession's query is iterated with `async for`")

    async def __aiter__(self) -> AsyncIterator[T]:
        for obj in await self.all():
            yield obj


__all__ = ["AsyncQuery"]

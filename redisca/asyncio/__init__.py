"""redisca on asyncio: :class:`AsyncSession`, the unit of work on ``redis.asyncio``
clients, running the sync session's commit, load and query protocols through an
asyncio driver (see :mod:`redisca.session.io`)."""

from .query import AsyncQuery
from .session import AsyncSession

__all__ = ["AsyncQuery", "AsyncSession"]

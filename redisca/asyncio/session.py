"""``AsyncSession``: the unit of work on ``redis.asyncio`` clients.

It wraps a :class:`~redisca.Session` (:attr:`AsyncSession.sync_session`, as
SQLAlchemy's ``AsyncSession`` does): tracking, the identity map, validation and
the commit plan are that session's, and every awaited call runs the sync session's
own protocol (:mod:`redisca.session.io`: the commit, a load, a query) through the
asyncio driver (:mod:`redisca.asyncio.driver`). Nothing loads implicitly: reading
an unloaded attribute raises :class:`~redisca.MissingLoadError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, TypeVar

import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from ..errors import InvalidRequestError
from ..mapping.mapper import Mapper, mapper_of
from ..session import bulk, executor, gcpause, loading, unitofwork
from ..session.collections import IdentitySet
from ..session.identity import IdentityMap
from ..session.io import Steps
from ..session.session import CommandResult, Session
from ..session.state import InstanceState
from .driver import drive, ready
from .query import AsyncQuery

T = TypeVar("T")


class AsyncSession:
    """Identity map + unit of work over ``redis.asyncio`` clients (one per task or
    request, like the sync session per thread).

    ``add``, ``add_all``, ``delete``, ``expunge``, ``expunge_all``, ``new``, ``dirty``,
    ``deleted`` and ``is_modified`` are plain calls; ``commit``, ``rollback``,
    ``refresh``, ``load``, ``get``, ``get_many``, ``merge``, ``preload``, ``bulk_add``
    and ``close`` are awaited. ``async with AsyncSession(r) as s:`` closes it;
    ``async with s.begin():`` commits, or rolls back if the block raises.
    """

    def __init__(
        self,
        bind: Any,
        *,
        binds: dict[type, Any] | None = None,
        retries: int = executor.DEFAULT_RETRIES,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        for client in [bind, *(binds or {}).values()]:
            _check_client(client)
        #: The sync session holding this one's instances, changes and plans; its
        #: I/O is never used (the AsyncSession's awaited calls do it).
        self.sync_session = Session(
            bind,
            binds=binds,
            retries=retries,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
        )
        self.sync_session.lazy_loads = False

    # -- context management -------------------------------------------------

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        # Leaving because of an exception: it says why the changes were not committed.
        self.sync_session._close(warn=exc_type is None)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncSession]:
        """Commit at the end of the block, or roll back if it raises."""
        try:
            yield self
        except BaseException:
            self.sync_session.rollback()
            raise
        await self.commit()

    async def close(self) -> None:
        """Expunge every instance and drop queued commands; nothing is written (changes
        no commit wrote are dropped with an :class:`~redisca.UncommittedChangesWarning`
        naming them, as :meth:`redisca.Session.close` does)."""
        self.sync_session.close()

    # -- the sync session's plain calls --------------------------------------

    @property
    def bind(self) -> Any:
        """The default client."""
        return self.sync_session.bind

    @property
    def identity_map(self) -> IdentityMap:
        return self.sync_session.identity_map

    def bind_for(self, mapper: Mapper | type) -> Any:
        """The client for a class (``binds``, subclasses included, else :attr:`bind`)."""
        return self.sync_session.bind_for(mapper)

    def state(self, obj: object) -> InstanceState:
        return self.sync_session.state(obj)

    def states(self) -> list[InstanceState]:
        return self.sync_session.states()

    def __contains__(self, obj: object) -> bool:
        return obj in self.sync_session

    def __iter__(self) -> Iterator[Any]:
        return iter(self.sync_session)

    @property
    def new(self) -> IdentitySet:
        """Instances added and not committed yet."""
        return self.sync_session.new

    @property
    def dirty(self) -> IdentitySet:
        """Persistent instances whose encoded values differ from what was loaded."""
        return self.sync_session.dirty

    @property
    def deleted(self) -> IdentitySet:
        """Instances marked for deletion by the next commit."""
        return self.sync_session.deleted

    def is_modified(self, obj: object) -> bool:
        """Whether a commit now would write something for ``obj``."""
        return self.sync_session.is_modified(obj)

    def add(self, obj: object) -> None:
        """Track a new instance (and the entities its references point to)."""
        self.sync_session.add(obj)

    def add_all(self, objs: Iterable[object]) -> None:
        """:meth:`add` each object."""
        self.sync_session.add_all(objs)

    def delete(self, obj: object) -> None:
        """Mark a persistent instance for deletion (a pending one is simply dropped)."""
        self.sync_session.delete(obj)

    def expire(self, obj: object, ttl: float | timedelta | None) -> None:
        """:meth:`redisca.Session.expire`: written by the next commit."""
        self.sync_session.expire(obj, ttl)

    def expunge(self, obj: object) -> None:
        """Stop tracking one instance."""
        self.sync_session.expunge(obj)

    def expunge_all(self) -> None:
        """Stop tracking every instance."""
        self.sync_session.expunge_all()

    def reference(self, cls: type[T], id: str | int) -> T:
        """An instance for a key without loading it: ``await s.load(ref)`` loads it."""
        return self.sync_session.reference(cls, id)

    def unload(self, obj: object) -> None:
        """Forget what was loaded of ``obj`` but keep its changes."""
        self.sync_session.unload(obj)

    def add_command(self, *args: Any, bind: type | None = None) -> CommandResult:
        """Queue your own Redis command to run inside the next commit's MULTI/EXEC."""
        return self.sync_session.add_command(*args, bind=bind)

    def query(self, cls: type[T]) -> AsyncQuery[T]:
        """An :class:`~redisca.asyncio.AsyncQuery` over the indexed fields of ``cls``."""
        return AsyncQuery(self.sync_session, mapper_of(cls))

    # -- awaited: the sync session's protocols through the asyncio driver -----

    async def _run(self, steps: Steps[T]) -> T:
        await ready(self.sync_session)
        return await drive(steps)

    async def commit(self) -> None:
        """Write every pending change: one MULTI/EXEC per server, all or nothing."""
        with gcpause.paused(len(self.identity_map)):
            await self._run(unitofwork.commit_steps(self.sync_session))

    async def rollback(self) -> None:
        """Drop pending adds, deletes and commands; loaded instances return to what was
        loaded (no I/O: awaited for symmetry with the sync session's API)."""
        self.sync_session.rollback()

    async def get(self, cls: type[T], id: str | int) -> T | None:
        """The instance with this id, loading it in one round trip unless already loaded."""
        return (await self._run(self.sync_session._get_many_steps(cls, [id])))[0]

    async def get_many(self, cls: type[T], ids: Sequence[str | int]) -> list[T | None]:
        """Instances in the order of ``ids``; one round trip for all not yet loaded."""
        return await self._run(self.sync_session._get_many_steps(cls, ids))

    async def refresh(self, obj: object, *, only_missing: bool = False) -> None:
        """Reload from Redis, discarding changes (``only_missing``: just fill unset fields)."""
        await self._run(self.sync_session._refresh_steps(obj, only_missing=only_missing))

    async def load(self, obj: T) -> T:
        """Load an unloaded instance (a reference's target, say ``await s.load(user.company)``)
        keeping what was set on it; one round trip, none when it is loaded. Returns it."""
        if obj is not None and not self.state(obj).loaded and self.state(obj).persistent:
            await self.refresh(obj, only_missing=True)
        return obj

    async def preload(self, objs: Iterable[object], *attributes: Any) -> None:
        """Load the targets of reference attributes of many instances: one round trip
        per server for all of them (``await s.preload(users, User.company)``)."""
        session = self.sync_session
        targets = session._unloaded_targets(objs, attributes)
        if targets:
            steps = loading.load_states_steps(session.identity_map, session.bind_for, targets)
            await self._run(steps)

    async def merge(self, obj: T) -> T:
        """Upsert: copy ``obj``'s values onto the session's instance of the same id."""
        return await self._run(self.sync_session._merge_steps(obj))

    async def bulk_add(
        self,
        objs: Iterable[object],
        *,
        chunk_size: int = 5000,
        progress: Callable[[int, int | None], object] | None = None,
    ) -> int:
        """Insert any number of new entities in chunks, each chunk one atomic commit
        (see :meth:`redisca.Session.bulk_add`)."""
        return await self._run(bulk.bulk_steps(self.sync_session, objs, chunk_size, progress))


def _check_client(client: Any) -> None:
    """An AsyncSession talks to ``redis.asyncio`` clients only: a sync client would
    block the event loop on every round trip."""
    if not isinstance(client, redis.asyncio.Redis | AsyncRedisCluster):
        raise InvalidRequestError(
            f"AsyncSession needs a redis.asyncio client (redis.asyncio.Redis or "
            f"redis.asyncio.cluster.RedisCluster), not {client!r}; use redisca.Session "
            "with a sync client"
        )


__all__ = ["AsyncSession"]

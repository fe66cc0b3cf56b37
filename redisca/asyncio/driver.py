"""The asyncio driver: runs the executor's protocols on ``redis.asyncio`` clients.

The commit, load and query protocols (:mod:`redisca.session.executor`,
:mod:`redisca.session.io`) are the sync session's own; this module only performs
their requests with ``await``: a round trip on a pooled ``redis.asyncio``
connection, a wait, a slot-map read. So retries, ``WATCH`` checks, in-doubt
verification and a cluster's refusals behave exactly as in the sync session.

Cancellation: a task cancelled while awaiting a round trip drops that connection
(never returned to the pool mid-transaction: its ``WATCH``, or a ``MULTI`` half
sent, go with it). Before the ``EXEC`` write began nothing was written; once it
began, the ``CancelledError`` carries ``outcome_unknown = True``, and the commit
protocol leaves its changes in doubt, verified by the next commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio.connection
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import ResponseError

from ..errors import OperationalError, RediscaError
from ..session import executor, routing
from ..session.io import OnConnection, Parallel, Run, RunAll, Send, Sleep, Steps
from ..session.plan import Command
from ..session.resp import pack

T = TypeVar("T")

_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


class connection:  # lowercase: used like a function, `async with connection(client)`
    """A connection of the client's pool (or of ``pool``), released afterwards, or
    dropped first when anything but redisca's own refusals ended its use (a
    cancellation included), so no ``WATCH`` or half-sent transaction stays on it."""

    __slots__ = ("client", "conn", "pool")

    def __init__(self, client: Any, pool: Any = None) -> None:
        self.client = client
        self.pool = pool
        self.conn: Any = None

    async def __aenter__(self) -> Any:
        pool = self.client.connection_pool if self.pool is None else self.pool
        self.pool = pool
        try:
            if hasattr(pool, "acquire_connection"):  # a cluster node: it keeps its connections
                self.conn = pool.acquire_connection()
                if not self.conn.is_connected:
                    await self.conn.connect()
            else:  # redis-py connects (or reconnects a stale connection) at checkout
                self.conn = await (
                    pool.get_connection("MULTI")
                    if executor.wants_command_name(pool.__class__)
                    else pool.get_connection()
                )
        except _CONNECTION_ERRORS as exc:
            if self.conn is not None:
                await self._release()
            raise OperationalError(f"Redis connection failed: {exc}", exc) from exc
        except BaseException:  # cancelled while a node's connection connected
            if self.conn is not None:
                await self._dropped()
            raise
        return self.conn

    async def _dropped(self) -> None:
        """Disconnect the connection, then give it back (a node keeps it in its list
        until it is released: not released, it would count against the node's
        ``max_connections`` for good)."""
        try:
            await self.conn.disconnect()
        finally:
            await self._release()

    async def _release(self) -> None:
        release = getattr(self.pool, "release", None)
        if release is None:  # a cluster node of an older redis-py (5.0): its free list
            self.pool._free.append(self.conn)
            return
        released = release(self.conn)  # a node's release is a plain call
        if released is not None:
            await released

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and (
            not isinstance(exc, RediscaError) or isinstance(exc, OperationalError)
        ):
            await self._dropped()
        else:
            await self._release()


async def roundtrip(
    conn: Any, commands: Sequence[Command], *, sealed: bool = False, got: list[Any] | None = None
) -> list[Any]:
    """:func:`redisca.session.executor.roundtrip` with ``await``: one write, every
    reply read (error replies as values); a failure is the same ``OperationalError``.
    Cancelled once a sealed write began, the ``CancelledError`` is marked
    ``outcome_unknown``: the ``EXEC`` may have reached Redis."""
    try:
        await conn.send_packed_command(pack(commands))
    except _CONNECTION_ERRORS as exc:
        await conn.disconnect()
        raise executor.lost(exc, executor.AFTER_EXEC if sealed else "") from exc
    except BaseException as exc:  # cancelled: part of the write may be out
        if sealed:
            exc.outcome_unknown = True  # type: ignore[attr-defined]
        raise
    replies: list[Any] = [] if got is None else got
    fast = _fast_reader(conn)
    try:
        if fast is not None:
            await fast(len(commands), replies)
        else:
            read = conn.read_response
            for _ in commands:
                try:
                    replies.append(await read(disable_decoding=True))
                except ResponseError as exc:
                    replies.append(exc)
    except _CONNECTION_ERRORS as exc:
        await conn.disconnect()
        raise executor.lost(exc, executor.AFTER_EXEC if sealed else "") from exc
    except BaseException as exc:
        if sealed:
            exc.outcome_unknown = True  # type: ignore[attr-defined]
        raise
    return replies


try:  # redis-py's sentinel for "the reply is not complete yet" (5.0 to 8.x)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _INCOMPLETE
except ImportError:  # pragma: no cover - a redis-py without it reads the usual way
    _INCOMPLETE = None

#: The read redisca bypasses only when the connection's class keeps it as is.
_PLAIN_READ = redis.asyncio.connection.AbstractConnection.read_response


def _fast_reader(conn: Any) -> Any:
    """A coroutine function ``read(n, into)`` appending the connection's next ``n``
    replies, undecoded, or ``None`` when redisca cannot read them itself.

    As :func:`redisca.session.executor._reader` does on a sync connection: with
    redis-py's hiredis parser, redisca asks hiredis for each reply and awaits the
    socket only when a reply is incomplete, instead of one awaited ``read_response``
    per reply (its timeout context, health bookkeeping and push dispatch cost more than
    parsing a short reply). The connection's ``socket_timeout`` bounds each wait for
    data, as it bounds ``read_response``. RESP3 push messages go to the parser's
    handler. Anything else (redis-py's own parser, a class overriding
    ``read_response``) reads with ``read_response``.
    """
    parser: Any = getattr(conn, "_parser", None)
    hiredis = getattr(parser, "_reader", None)
    if hiredis is None or _INCOMPLETE is None or type(conn).read_response is not _PLAIN_READ:
        return None
    push = getattr(parser, "_hiredis_PushNotificationType", None)
    if push is not None and not hasattr(parser, "handle_push_response"):
        return None
    gets, refill, timeout = hiredis.gets, parser.read_from_socket, conn.socket_timeout

    async def read(n: int, into: list[Any]) -> None:
        while n:
            reply = gets(False)
            while reply is _INCOMPLETE:
                async with asyncio.timeout(timeout):
                    await refill()
                reply = gets(False)
            if push is not None and isinstance(reply, push):
                await parser.handle_push_response(reply)  # not a reply: the next one is
                continue
            if isinstance(reply, redis.ConnectionError):  # e.g. LOADING
                raise reply
            into.append(reply)  # an error reply is a ResponseError value
            n -= 1

    return read


def _server(conn: Any) -> Hashable:
    """What the executor remembers a server by (as its sync driver does)."""
    return tuple(getattr(conn, name, None) for name in ("host", "port", "path", "db"))


async def ready(session: Any) -> None:
    """Before a protocol of ``session`` (a sync :class:`~redisca.Session`) runs: its
    ``redis.asyncio`` cluster clients read their slot map (once; a no-op after).
    redis-py reads it on a client's first command of its own, but redisca's routing
    asks the map before it sends anything: a query or a load run first would find no
    slot covered."""
    for client in (session.bind, *session.binds.values()):
        if isinstance(client, AsyncRedisCluster):
            await client.initialize()


async def drive(steps: Steps[T], conn: Any = None) -> T:
    """Run a protocol with ``await``; a failure (a cancellation too) is thrown into
    it where it yielded, as :func:`redisca.session.executor.drive` does."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        reply = error = None
        try:
            kind = request.__class__
            if kind is Send:
                reply = await roundtrip(
                    conn, request.commands, sealed=request.sealed, got=request.got
                )
            elif kind is Run:
                async with connection(request.client, request.pool) as other:
                    reply = await roundtrip(other, request.commands)
            elif kind is RunAll:
                reply = list(await asyncio.gather(*(_run(one) for one in request.runs)))
            elif kind is OnConnection:
                async with connection(request.client, request.pool) as other:
                    reply = await drive(request.work(_server(other)), other)
            elif kind is Parallel:
                reply = list(await asyncio.gather(*(_outcome(one) for one in request.steps)))
            elif kind is Sleep:
                await asyncio.sleep(request.seconds)
            else:
                await routing.arefresh(request.client, request.quiet)
        except BaseException as exc:  # thrown into the protocol, which re-raises it
            error = exc


async def _outcome(steps: Steps[Any]) -> tuple[bool, Any]:
    """One protocol of a :class:`~redisca.session.io.Parallel`, its failure as a value
    (a cancellation too: every protocol of the request ends, and the caller sees it)."""
    try:
        return True, await drive(steps)
    except BaseException as exc:
        return False, exc


async def _run(one: Run) -> list[Any]:
    """One :class:`~redisca.session.io.Run` of a ``RunAll``: the masters' round trips
    overlap (``asyncio.gather``)."""
    async with connection(one.client, one.pool) as conn:
        return await roundtrip(conn, one.commands)


async def run(client: Any, commands: Sequence[Command]) -> list[Any]:
    """:func:`redisca.session.executor.run` with ``await``."""
    return await drive(executor.run_steps(client, commands))


__all__ = ["connection", "drive", "roundtrip", "run"]

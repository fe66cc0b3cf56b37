"""The async driver of the shared suites: ``Session`` replaced by :class:`Driven`.

A suite module opts in with ``pytestmark = pytest.mark.usefixtures("driver")``: the
``driver`` fixture (conftest) runs each of its tests twice, once with redisca's
``Session`` and once with ``Session`` bound in the module to :class:`Driven`, a
blocking facade over :class:`redisca.asyncio.AsyncSession` that runs each awaited
call on an event loop of its thread and makes a ``redis.asyncio`` client of the same
server and mode for each sync client it is given. So the same assertions check both
sessions. Lazy loading, which an AsyncSession refuses (``MissingLoadError``, tested
in test_asyncio.py), is done here by the awaited refresh, as an application would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import redis.asyncio
import redis.asyncio.cluster
from helpers import RoundTripCounter, sent_commands
from redis.cluster import RedisCluster

from redisca.asyncio import AsyncSession

_AWAITED = frozenset(
    {"commit", "rollback", "refresh", "get", "get_many", "merge", "bulk_add", "close", "preload"}
)
_REFINE = frozenset({"filter", "filter_by", "order_by", "offset", "limit", "after", "preload"})
_TERMINALS = frozenset({"ids", "count", "all", "first", "one", "one_or_none"})


class _Loops(threading.local):
    loop: asyncio.AbstractEventLoop | None = None
    clients: dict[int, Any] | None = None


_local = _Loops()
_all_loops: list[tuple[asyncio.AbstractEventLoop, dict[int, Any]]] = []
_lock = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    if _local.loop is None:
        _local.loop, _local.clients = asyncio.new_event_loop(), {}
        with _lock:
            _all_loops.append((_local.loop, _local.clients))
    return _local.loop


def run(coroutine: Any) -> Any:
    """Run a coroutine on this thread's loop of the test."""
    return _loop().run_until_complete(coroutine)


@contextlib.contextmanager
def loops() -> Iterator[None]:
    """The test's loops and async clients, closed at its end."""
    try:
        yield
    finally:
        with _lock:
            made = list(_all_loops)
            _all_loops.clear()
        for loop, clients in made:
            for _, client in clients.values():
                loop.run_until_complete(client.aclose())
                pool = getattr(client, "connection_pool", None)
                if pool is not None:  # a pool passed in is not the client's to close, and
                    # redis-py 5.0's connections fail when collected after the loop closed
                    loop.run_until_complete(pool.disconnect())
            loop.close()
        _local.loop = _local.clients = None


def async_client(client: Any) -> Any:
    """A ``redis.asyncio`` client of the server (or cluster) of a sync ``client``, in
    its mode (decode_responses, protocol), made once per thread and test."""
    _loop()
    assert _local.clients is not None
    known = _local.clients.get(id(client))
    if known is not None:
        return known[1]
    if isinstance(client, RedisCluster):
        node = client.get_primaries()[0]
        pool = client.get_redis_connection(node).connection_pool
        counter, hooks = _attr(pool, "counter"), _attr(pool, "hooks")
        made = redis.asyncio.cluster.RedisCluster(
            host=node.host, port=node.port, **_mode(pool.connection_kwargs)
        )
        run(made.initialize())
        if counter is not None or hooks is not None:  # its nodes' connections instrumented
            instrumented = _bound(
                _instrumented(redis.asyncio.Connection), counter=counter, hooks=hooks
            )
            for each in made.get_nodes():
                run(each.disconnect())
                each._connections.clear()  # made again, of the instrumented class
                each._free.clear()
                each.connection_class = instrumented
            _warm(made, counter)
    else:
        kwargs = client.connection_pool.connection_kwargs
        where = {k: kwargs[k] for k in ("host", "port", "path", "db") if k in kwargs}
        if "path" in where:
            where["unix_socket_path"] = where.pop("path")
        pool = client.connection_pool
        counter, hooks = _attr(pool, "counter"), _attr(pool, "hooks")
        fault = pool.connection_kwargs.get("fault")
        if fault is not None:  # test_faults: its Fault sees (and breaks) every write
            made = redis.asyncio.Redis(
                connection_pool=redis.asyncio.ConnectionPool(
                    connection_class=_faulty(), fault=fault, **where, **_mode(kwargs)
                )
            )
        elif counter is not None or hooks is not None:
            # a counting (helpers.counting_client) or interleaving (test_concurrency)
            # client: its async twin counts into the same counter, runs the same hooks
            unix = "unix_socket_path" in where
            base = redis.asyncio.UnixDomainSocketConnection if unix else redis.asyncio.Connection
            made = redis.asyncio.Redis(
                connection_pool=redis.asyncio.ConnectionPool(
                    connection_class=_instrumented(base),
                    counter=counter,
                    hooks=hooks,
                    **{("path" if k == "unix_socket_path" else k): v for k, v in where.items()},
                    **_mode(kwargs),
                )
            )
            _warm(made, counter)
        else:
            made = redis.asyncio.Redis(**where, **_mode(kwargs))
    _local.clients[id(client)] = (client, made)  # the client kept: its id stays its own
    return made


def _bound(cls: type, **fixed: Any) -> type:
    """``cls`` with constructor kwargs bound (a cluster node hands its own only)."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.update(fixed)
        cls.__init__(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"__init__": __init__})


def _attr(pool: Any, name: str) -> Any:
    """An attribute of a pool's connections (a test's counter or hooks), or ``None``."""
    for conn in [*pool._available_connections, *pool._in_use_connections]:
        if hasattr(conn, name):
            return getattr(conn, name)
    kwargs = getattr(pool.connection_class.__init__, "__closure__", None) or ()
    for cell in kwargs:  # helpers.with_kwargs binds them in the class
        if isinstance(cell.cell_contents, dict) and name in cell.cell_contents:
            return cell.cell_contents[name]
    return None


MULTI = b"*1\r\n$5\r\nMULTI\r\n"


def _instrumented(base: type) -> type:
    class Instrumented(base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, counter: Any = None, hooks: Any = None, **kw: Any) -> None:
            self.counter, self.hooks = counter, hooks
            super().__init__(*args, **kw)

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            data = command if isinstance(command, bytes) else b"".join(command)
            if self.hooks is not None and data.startswith(MULTI):
                self.hooks["attempts"] += 1
                hook = self.hooks.get("before_exec")
                if hook is not None:  # sync test code: in a thread, with its own loop
                    await asyncio.to_thread(hook, self.hooks["attempts"])
            if self.counter is not None:
                commands = sent_commands(command)
                self.counter.add(round_trips=1, commands=len(commands))
                self.counter.watched(commands)
            await super().send_packed_command(command, check_health)

    return Instrumented


def _faulty() -> type:
    """test_faults' ``FaultyConnection`` for ``redis.asyncio``: the ``Fault`` sees each
    write and sends its parts through the transport (written at once, the loop being
    held by the fault), kills the connection and drains the socket through a duplicate
    of its file descriptor, as it does on a sync connection's socket."""

    class Faulty(redis.asyncio.Connection):
        def __init__(self, *args: Any, fault: Any = None, **kwargs: Any) -> None:
            self.fault = fault
            super().__init__(*args, **kwargs)

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if self.fault is None or not self.fault.armed:
                await super().send_packed_command(command, check_health)
                return
            if not self.is_connected:
                await self.connect()
            chunks = [command] if isinstance(command, (bytes, str)) else command
            data = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
            fd = self._writer.get_extra_info("socket").fileno()
            view = _SocketView(socket.socket(fileno=os.dup(fd)))
            try:
                self.fault.on_send(view, data, self._writer.write)
            finally:
                view._sock.close()
            await self._writer.drain()

    return Faulty


class _SocketView:
    """What a ``Fault`` uses of a connection: its socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock


def _warm(client: Any, counter: RoundTripCounter | None) -> None:
    """One PING, its handshake not counted (as ``counting_client`` warms the sync one)."""
    if counter is None:
        return
    before = (counter.round_trips, counter.commands, list(counter.watches))
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        run(client.ping(target_nodes=redis.asyncio.cluster.RedisCluster.PRIMARIES))
    else:
        run(client.ping())
    counter.round_trips, counter.commands, counter.watches = before


def _mode(kwargs: dict[str, Any]) -> dict[str, Any]:
    keep = ("decode_responses", "protocol", "password", "username", "socket_timeout")
    return {k: kwargs[k] for k in keep if kwargs.get(k) is not None}


class Driven:
    """``Session``'s API over an :class:`AsyncSession` (see the module's docstring)."""

    def __init__(self, bind: Any = None, *, binds: dict[type, Any] | None = None, **kw: Any):
        if bind is None:
            import redisca.conf

            bind = redisca.conf.default_client()
        binds = {cls: async_client(c) for cls, c in (binds or {}).items()}
        self.async_session = AsyncSession(async_client(bind), binds=binds, **kw)
        sync = self.async_session.sync_session
        sync.lazy_loads = True  # the facade's lazy load: the awaited refresh, on the loop
        sync.refresh = self.refresh  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.async_session, name, None)
        if target is None:
            return getattr(self.async_session.sync_session, name)
        if name in _AWAITED:
            return lambda *a, **k: run(target(*a, **k))
        return target

    def refresh(self, obj: object, *, only_missing: bool = False) -> None:
        run(self.async_session.refresh(obj, only_missing=only_missing))

    def query(self, cls: type) -> DrivenQuery:
        return DrivenQuery(self.async_session.query(cls))

    def __contains__(self, obj: object) -> bool:
        return obj in self.async_session

    def __iter__(self) -> Iterator[Any]:
        return iter(self.async_session)

    def __enter__(self) -> Driven:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def begin(self) -> Iterator[Driven]:
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()


class DrivenQuery:
    """A query of :class:`Driven`: refinements wrap, terminals run on the loop."""

    def __init__(self, query: Any) -> None:
        self.query = query

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.query, name)
        if name in _REFINE:
            return lambda *a, **k: DrivenQuery(target(*a, **k))
        if name in _TERMINALS:
            return lambda *a, **k: run(target(*a, **k))
        return target

    def __iter__(self) -> Iterator[Any]:
        async def collect() -> list[Any]:
            return [obj async for obj in self.query]

        return iter(run(collect()))


__all__ = ["Driven", "DrivenQuery", "async_client", "loops", "run"]

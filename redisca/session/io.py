"""The I/O requests of the sans-I/O commit and load protocols.

The protocols (:mod:`redisca.session.executor`'s generators: a commit's reads,
checks, ``MULTI``/``EXEC``, retries and in-doubt bookkeeping, and on a cluster the
following of refusals) do no I/O themselves: they yield one of these requests and
are sent the reply, or have the failure thrown in where they yielded. A driver
performs the requests: :func:`redisca.session.executor.drive` with blocking
sockets, :mod:`redisca.asyncio`'s with ``await``. So the sync and async sessions
run the very same protocol code, and only the sending and reading differ.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable, Sequence
from typing import Any, NamedTuple, TypeVar

from .plan import Command

T = TypeVar("T")

#: A protocol: yields requests, is sent their replies, returns its result.
Steps = Generator[Any, Any, T]


class Send(NamedTuple):
    """Send ``commands`` in one write on the protocol's connection; reply: the list of
    replies, error replies as ``ResponseError`` values. ``sealed``: they end with
    ``EXEC`` (a failure while reading leaves the outcome unknown). ``got`` receives
    the replies as they arrive."""

    commands: Sequence[Command]
    sealed: bool = False
    got: list[Any] | None = None


class OnConnection(NamedTuple):
    """Run the steps ``work(server)`` makes on a connection of ``pool``, or of
    ``client``'s own pool when ``pool`` is ``None`` (``server``: what identifies the
    connection's server and database); reply: what they return. The connection goes
    back clean, or is dropped when they fail with anything but redisca's own refusals."""

    client: Any
    pool: Any
    work: Callable[[Hashable], Steps[Any]]


class Run:
    """Send ``commands`` in one write on a connection of ``pool`` (``client``'s own pool
    when ``None``) and read every reply: :class:`OnConnection` with one :class:`Send` as
    its work, without the two generators that would cost every lookup and query. A
    class with slots, not a NamedTuple: every lookup makes one, and a NamedTuple costs
    0.4 µs more to build."""

    __slots__ = ("client", "commands", "pool")

    def __init__(self, client: Any, pool: Any, commands: Sequence[Command]) -> None:
        self.client = client
        self.pool = pool
        self.commands = commands


class RunAll:
    """Several :class:`Run` on different servers (a cluster's masters), all written
    before any reply is read, so the servers work at the same time: one round trip per
    master, overlapping. Reply: each run's replies, in order. A failure of one drops
    every connection of the batch (their replies are not all read)."""

    __slots__ = ("runs",)

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs


class Parallel(NamedTuple):
    """Run several protocols at once, each on connections of its own (they must send
    through :class:`OnConnection`, :class:`Run` or :class:`RunAll`, never a bare
    :class:`Send`): threads for the blocking driver, ``asyncio.gather`` for the async
    one. Used where each protocol works on another master (a sharded model's shards),
    so the masters' work and the round trips overlap. Reply: one entry per protocol,
    in order, ``(True, result)`` or ``(False, exception)``: every protocol runs to its
    end whatever the others do, so the caller can tell what each one did."""

    steps: Sequence[Steps[Any]]


class Sleep(NamedTuple):
    """Wait ``seconds`` before trying again (a cluster's ``TRYAGAIN``, say)."""

    seconds: float


class Refresh(NamedTuple):
    """Read the cluster client's slot map again; ``quiet``: a failure to read it is
    ignored (after a lost connection, whose own error is reported)."""

    client: Any
    quiet: bool = False


__all__ = ["OnConnection", "Parallel", "Refresh", "Run", "RunAll", "Send", "Sleep", "Steps"]

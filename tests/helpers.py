"""Test helpers shared by conftest and test modules (import as ``helpers``).

The round-trip counter exists because redisca promises bounded round trips
(one per ``get``, a constant number per commit); counting at the connection
is the only honest way to check that without MONITOR, which is slow and sees
every client at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis


class RoundTripCounter:
    """Counts of one client's traffic; a lock, because a pool serves threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.round_trips = 0
        self.commands = 0

    def add(self, *, round_trips: int = 0, commands: int = 0) -> None:
        with self._lock:
            self.round_trips += round_trips
            self.commands += commands

    def reset(self) -> None:
        with self._lock:
            self.round_trips = 0
            self.commands = 0

    def __repr__(self) -> str:
        return f"<RoundTripCounter round_trips={self.round_trips} commands={self.commands}>"


class _CountingMixin:
    """One ``send_packed_command`` is one write to the socket: one round trip,
    whether it carries one command or a whole pipeline.

    The counter arrives as a connection kwarg, so every connection of one pool
    shares it while separate clients keep separate counts.
    """

    counter: RoundTripCounter

    def __init__(self, *args: Any, counter: RoundTripCounter | None = None, **kwargs: Any):
        self.counter = counter if counter is not None else RoundTripCounter()
        super().__init__(*args, **kwargs)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.counter.add(round_trips=1)
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    # redis-py's send_command packs with its own packer, never via pack_command,
    # so counting in both does not count a command twice.
    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.counter.add(commands=1)
        super().send_command(*args, **kwargs)  # type: ignore[misc]

    def pack_command(self, *args: Any) -> list[bytes]:
        self.counter.add(commands=1)
        return super().pack_command(*args)  # type: ignore[misc,no-any-return]

    def pack_commands(self, commands: Iterable[Sequence[Any]]) -> list[bytes]:
        commands = list(commands)
        self.counter.add(commands=len(commands))
        return super().pack_commands(commands)  # type: ignore[misc,no-any-return]


class CountingConnection(_CountingMixin, redis.Connection):
    """A TCP connection that counts round trips and commands."""


class CountingUnixConnection(_CountingMixin, redis.UnixDomainSocketConnection):
    """The same, for a unix-socket server."""


@dataclass
class Counted:
    """A client and the counts of what it sent since the last :meth:`reset`."""

    client: redis.Redis
    counter: RoundTripCounter

    @property
    def round_trips(self) -> int:
        return self.counter.round_trips

    @property
    def commands(self) -> int:
        return self.counter.commands

    def reset(self) -> None:
        self.counter.reset()

    def close(self) -> None:
        self.client.close()


def counting_client(url: str, **kwargs: Any) -> Counted:
    """A counting client for ``url`` (``kwargs`` go to ``Redis.from_url``).

    It is warmed up with one PING and then reset, so the connection handshake
    (HELLO, CLIENT SETINFO, SELECT) is not counted against the code under test.
    """
    unix = urlsplit(url).scheme == "unix"
    connection_class = CountingUnixConnection if unix else CountingConnection
    counter = RoundTripCounter()
    client = redis.Redis.from_url(
        url, connection_class=connection_class, counter=counter, **kwargs
    )
    client.ping()
    counter.reset()
    return Counted(client=client, counter=counter)


def decodes(client: redis.Redis) -> bool:
    """Whether ``client`` returns str (``decode_responses=True``) rather than bytes."""
    return bool(client.connection_pool.connection_kwargs.get("decode_responses", False))


def as_str(value: str | bytes) -> str:
    """A reply as str, whichever mode the client is in."""
    return value.decode() if isinstance(value, bytes) else value

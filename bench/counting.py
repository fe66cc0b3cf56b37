"""A connection class that counts round trips and commands (the bench's own copy of
the one in ``tests/helpers.py``; the bench must not import the tests).

One ``send_packed_command`` is one write to the socket, so one round trip, whether
it carries one command or a whole pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis


class Counter:
    __slots__ = ("commands", "round_trips")

    def __init__(self) -> None:
        self.round_trips = 0
        self.commands = 0

    def reset(self) -> None:
        self.round_trips = 0
        self.commands = 0


class CountingConnection(redis.Connection):
    """Counts into the ``counter`` connection kwarg, shared by every connection of a pool."""

    def __init__(self, *args: Any, counter: Counter, **kwargs: Any) -> None:
        self.counter = counter
        super().__init__(*args, **kwargs)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.counter.round_trips += 1
        super().send_packed_command(command, check_health)

    # redis-py's send_command packs with its own packer, never through pack_command,
    # so counting in both does not count a command twice.
    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self.counter.commands += 1
        super().send_command(*args, **kwargs)

    def pack_command(self, *args: Any) -> list[bytes]:
        self.counter.commands += 1
        return super().pack_command(*args)

    def pack_commands(self, commands: Iterable[Sequence[Any]]) -> list[bytes]:
        commands = list(commands)
        self.counter.commands += len(commands)
        return super().pack_commands(commands)


def counting_client(url: str, **kwargs: Any) -> tuple[redis.Redis, Counter]:
    """A client whose traffic is counted; the handshake is done and not counted."""
    counter = Counter()
    client = redis.Redis.from_url(
        url, connection_class=CountingConnection, counter=counter, **kwargs
    )
    client.ping()
    counter.reset()
    return client, counter

"""A connection class that counts round trips and commands (the bench's own copy of
the one in ``tests/helpers.py``; the bench must not import the tests).

One ``send_packed_command`` is one write to the socket, so one round trip, whether
it carries one command or a whole pipeline. Commands are counted by reading the
RESP that goes out, since redisca packs its own and redis-py packs the baseline's.
Reading it costs about a microsecond per argument, so the runner counts in a round
of its own and times the other rounds on a plain client.
"""

from __future__ import annotations

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


def count_commands(packed: Any) -> int:
    """How many commands (RESP arrays of bulk strings) one write holds."""
    chunks = [packed] if isinstance(packed, (bytes, str)) else packed
    data = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
    commands = pos = 0
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        args = int(data[pos + 1 : end])
        pos = end + 2
        for _ in range(args):
            end = data.index(b"\r\n", pos)
            pos = end + 2 + int(data[pos + 1 : end]) + 2
        commands += 1
    return commands


class CountingConnection(redis.Connection):
    """Counts into the ``counter`` connection kwarg, shared by every connection of a pool."""

    def __init__(self, *args: Any, counter: Counter, **kwargs: Any) -> None:
        self.counter = counter
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.counter.round_trips += 1
        self.counter.commands += count_commands(command)
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def counting_client(url: str, **kwargs: Any) -> tuple[redis.Redis, Counter]:
    """A client whose traffic is counted; the handshake is done and not counted."""
    counter = Counter()
    client = redis.Redis.from_url(
        url, connection_class=CountingConnection, counter=counter, **kwargs
    )
    client.ping()
    counter.reset()
    return client, counter

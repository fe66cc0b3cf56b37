"""Fixtures for every test of the project: one real server, clients in two modes.

redisca must work with ``decode_responses`` on and off and with RESP2 and RESP3
replies (whose shapes differ), so the ``r`` fixture runs each test in the two
modes that are furthest apart: bytes over RESP3 and str over RESP2.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from helpers import Counted, counting_client
from hypothesis import settings

from redisca.embedded import EmbeddedCluster, EmbeddedServer, ServerNotFound, find_server_binary

# Property tests check values, never speed: on a loaded CI machine hypothesis's default
# 200 ms deadline per example would fail a correct test at random.
settings.register_profile("redisca", deadline=None)
settings.load_profile("redisca")

MODES: dict[str, dict[str, Any]] = {
    "bytes-resp3": {"decode_responses": False, "protocol": 3},
    "str-resp2": {"decode_responses": True, "protocol": 2},
}


def pytest_report_header(config: pytest.Config) -> str:
    try:
        binary = find_server_binary()
    except ServerNotFound as exc:
        return f"redis server: none ({exc})"
    try:
        version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        version = f"--version failed: {exc}"
    return f"redis server: {binary} ({version})"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedServer]:
    """One TCP server on 127.0.0.1 for the whole run."""
    with EmbeddedServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedCluster]:
    """A 3-master Redis Cluster on loopback for the whole run, started (about 2 s) only
    when a test asks for it. Same binary as ``redis_server``; tests share it, so they
    flush it (every master) themselves and leave its nodes running.

    Redis's default node timeout (15 s) rather than the launcher's 2 s: nothing here
    fails over, and a node blocked for 2 s (a long WATCH, a loaded CI machine) would
    otherwise be marked failed and take the cluster down mid-test."""
    with EmbeddedCluster(node_timeout=15000) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedServer) -> str:
    return redis_server.url


@pytest.fixture(params=list(MODES), ids=list(MODES))
def r(request: pytest.FixtureRequest, redis_server: EmbeddedServer) -> Iterator[redis.Redis]:
    """A client in one of :data:`MODES`, on a server flushed for this test."""
    client = redis_server.client(**MODES[request.param])
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def make_client(redis_server: EmbeddedServer) -> Iterator[Callable[..., redis.Redis]]:
    """Factory of extra clients on the same server (``Redis.from_url`` kwargs)."""
    made: list[redis.Redis] = []

    def make(**kwargs: Any) -> redis.Redis:
        client = redis_server.client(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def counted(r: redis.Redis, redis_url: str) -> Iterator[Counted]:
    """A counting client in the same mode as ``r`` (see ``helpers.counting_client``)."""
    kwargs = r.connection_pool.connection_kwargs
    result = counting_client(
        redis_url,
        decode_responses=kwargs.get("decode_responses", False),
        protocol=kwargs.get("protocol"),
    )
    yield result
    result.close()

"""Fixtures for every test of the project: one real server, clients in two modes.

redisca must work with ``decode_responses`` on and off and with RESP2 and RESP3
replies (whose shapes differ), so the ``r`` fixture runs each test in the two
modes that are furthest apart: bytes over RESP3 and str over RESP2.

With ``REDISCA_TEST_CLUSTER=1`` (``helpers.CLUSTER``) the same fixtures give clients
of one 3-master cluster (``redis_cluster``), every master flushed per test, so the
commit, query, concurrency, state-machine and soak suites run unchanged on a cluster
(docs/contributing.rst). A test that can only hold on one server is marked
``@pytest.mark.single_server(reason=...)`` and skipped there, with its reason.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from helpers import CLUSTER, Counted, connect, connection_kwargs, counting_client, warm
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
    mode = " [cluster mode: 3 masters, REDISCA_TEST_CLUSTER=1]" if CLUSTER else ""
    return _server_line() + mode


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In cluster mode, skip the tests marked ``single_server``, giving their reason."""
    if not CLUSTER:
        return
    for item in items:
        marker = item.get_closest_marker("single_server")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            if not reason:
                raise pytest.UsageError(f"{item.nodeid}: single_server needs a reason")
            item.add_marker(pytest.mark.skip(reason=f"single server only: {reason}"))


def _server_line() -> str:
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
def redis_url(request: pytest.FixtureRequest) -> str:
    """The server's URL; in cluster mode, a node's (``helpers.connect`` makes a
    ``RedisCluster`` of it)."""
    if CLUSTER:
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    server: EmbeddedServer = request.getfixturevalue("redis_server")
    return server.url


def flush_cluster(cluster: EmbeddedCluster) -> None:
    """``FLUSHALL`` on every master of ``cluster``."""
    for node in cluster.masters:
        with node.client() as client:
            client.flushall()


@pytest.fixture
def cluster(redis_cluster: EmbeddedCluster) -> Iterator[EmbeddedCluster]:
    """The run's 3-master cluster, every master flushed before and after the test."""
    flush_cluster(redis_cluster)
    yield redis_cluster
    flush_cluster(redis_cluster)


@pytest.fixture(params=list(MODES), ids=list(MODES))
def r(request: pytest.FixtureRequest, redis_url: str) -> Iterator[redis.Redis]:
    """A client in one of :data:`MODES`, on a server (in cluster mode: a cluster,
    every master) flushed for this test."""
    if CLUSTER:
        flush_cluster(request.getfixturevalue("redis_cluster"))
        client = connect(redis_url, **MODES[request.param])
        warm(client)
    else:
        server: EmbeddedServer = request.getfixturevalue("redis_server")
        client = server.client(**MODES[request.param])
        client.flushall()
    yield client
    client.close()


@pytest.fixture
def make_client(redis_url: str) -> Iterator[Callable[..., redis.Redis]]:
    """Factory of extra clients on the same server or cluster (``from_url`` kwargs)."""
    made: list[redis.Redis] = []

    def make(**kwargs: Any) -> redis.Redis:
        client = connect(redis_url, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def counted(r: redis.Redis, redis_url: str) -> Iterator[Counted]:
    """A counting client in the same mode as ``r`` (see ``helpers.counting_client``)."""
    kwargs = connection_kwargs(r)
    result = counting_client(
        redis_url,
        decode_responses=kwargs.get("decode_responses", False),
        protocol=kwargs.get("protocol"),
    )
    yield result
    result.close()


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs a suite's test with redisca's ``Session``, then with ``Session`` in its
    module bound to ``asyncdriver.Driven`` (an AsyncSession behind a blocking facade):
    the suites of commits, queries, references and concurrency check both sessions.
    ``@pytest.mark.sync_only(reason=...)`` keeps a test to the sync session (e.g. one
    that instruments a sync client's connections), giving why."""
    if request.param == "sync":
        yield "sync"
        return
    marker = request.node.get_closest_marker("sync_only")
    if marker is not None:
        pytest.skip(f"sync session only: {marker.kwargs.get('reason', '')}")
    import asyncdriver

    monkeypatch.setattr(request.module, "Session", asyncdriver.Driven)
    with asyncdriver.loops():
        yield "async"

"""The fixtures measure what other tests assert, so they are tested first."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import redis
from helpers import Counted, as_str, counting_client, decodes

from redisca.embedded import EmbeddedServer


def test_counter_starts_at_zero_after_warm_up(counted: Counted) -> None:
    assert (counted.round_trips, counted.commands) == (0, 0)


def test_a_plain_command_is_one_round_trip(counted: Counted) -> None:
    counted.client.set("k", "v")
    assert (counted.round_trips, counted.commands) == (1, 1)
    counted.client.get("k")
    assert (counted.round_trips, counted.commands) == (2, 2)
    counted.reset()
    assert (counted.round_trips, counted.commands) == (0, 0)


def test_a_pipeline_is_one_round_trip(counted: Counted) -> None:
    pipe = counted.client.pipeline(transaction=False)
    for i in range(10):
        pipe.set(f"k{i}", i)
    pipe.execute()
    assert (counted.round_trips, counted.commands) == (1, 10)


def test_a_transaction_counts_multi_and_exec(counted: Counted) -> None:
    with counted.client.pipeline(transaction=True) as pipe:
        for _ in range(10):
            pipe.incr("n")
        assert pipe.execute()[-1] == 10
    assert (counted.round_trips, counted.commands) == (1, 12)


def test_counted_uses_the_mode_of_r(r: redis.Redis, counted: Counted) -> None:
    r.set("k", "v")
    assert counted.client.get("k") == r.get("k")
    assert decodes(counted.client) == decodes(r)
    # The protocol each connection negotiated (CLIENT INFO has "resp" only from Redis 7).
    assert _proto(counted.client) == _proto(r) in (2, 3)


def _proto(client: redis.Redis) -> int:
    reply = client.execute_command("HELLO")  # a map in RESP3, a flat list in RESP2
    pairs = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    return int(next(v for k, v in pairs.items() if k in ("proto", b"proto")))


def test_counters_are_per_client(redis_url: str) -> None:
    clients = [counting_client(redis_url) for _ in range(4)]
    try:

        def work(n: int) -> None:
            for _ in range(n):
                clients[n].client.ping()

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [c.round_trips for c in clients] == [0, 1, 2, 3]
    finally:
        for c in clients:
            c.close()


def test_counting_client_on_a_unix_socket() -> None:
    with EmbeddedServer(unix_socket=True) as server:
        counted = counting_client(server.url, decode_responses=True)
        try:
            counted.client.set("k", "v")
            assert counted.client.get("k") == "v"
            assert (counted.round_trips, counted.commands) == (2, 2)
        finally:
            counted.close()


def test_modes_decode_as_named(r: redis.Redis, request: pytest.FixtureRequest) -> None:
    mode = request.node.callspec.id  # type: ignore[attr-defined]
    r.set("k", "v")
    r.hset("h", mapping={"f": "1"})
    if mode == "bytes-resp3":
        assert r.get("k") == b"v"
        assert r.hgetall("h") == {b"f": b"1"}
        assert _proto(r) == 3
    else:
        assert mode == "str-resp2"
        assert r.get("k") == "v"
        assert r.hgetall("h") == {"f": "1"}
        assert _proto(r) == 2


def test_each_test_starts_on_an_empty_server(r: redis.Redis) -> None:
    # Runs once per mode: the second run would see the first one's key.
    assert r.dbsize() == 0
    r.set("left-over", 1)


def test_make_client_reaches_the_same_server(
    r: redis.Redis, make_client: Callable[..., redis.Redis]
) -> None:
    r.set("k", "v")
    other = make_client(decode_responses=True)
    assert other.get("k") == "v"
    assert as_str(other.client_id()) != as_str(r.client_id())  # type: ignore[arg-type]


def test_redis_url_is_the_session_server(redis_server: EmbeddedServer, redis_url: str) -> None:
    assert redis_url == redis_server.url
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()


def test_property_tests_run_without_a_deadline() -> None:
    from hypothesis import settings

    assert settings().deadline is None  # conftest's profile: values are checked, not speed

"""How the executor reads replies: hiredis directly where it can, redis-py otherwise.

Both ways must give the same values for every reply shape (the whole suite runs in
RESP2 and RESP3, with and without hiredis in CI); these tests pin down which way is
taken and the edge cases of the direct one: error replies kept as values, nested
errors, replies split across socket reads, timeouts and closed sockets.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError

from redisca.embedded import EmbeddedServer
from redisca.errors import OperationalError
from redisca.session.executor import _reader, connection, roundtrip, run


class Overriding(redis.Connection):
    """A connection class that wraps read_response, as instrumentation does."""

    seen = 0

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        Overriding.seen += 1
        return super().read_response(*args, **kwargs)


def _is_direct(conn: Any) -> bool:
    return not isinstance(_reader(conn), functools.partial)


def _direct_expected(conn: Any) -> bool:
    """With hiredis (CI's second run): RESP2 always, RESP3 where the parser tells push
    messages from replies (redis-py with hiredis 3.2+; not redis-py 5.0). Without it
    (the README's run), redis-py's own parser, always through ``read_response``."""
    if getattr(conn._parser, "_reader", None) is None:
        return False
    if conn.protocol in (2, "2", None):
        return True
    return getattr(conn._parser, "_hiredis_PushNotificationType", None) is not None


def test_hiredis_is_read_directly_where_it_can_be(redis_server: EmbeddedServer) -> None:
    with redis_server.client(protocol=2) as client, connection(client) as conn:
        assert _is_direct(conn) == _direct_expected(conn)
    with redis_server.client(protocol=3) as client, connection(client) as conn:
        # RESP3 too, where the parser tells push messages from replies (hiredis 3.2+)
        assert _is_direct(conn) == _direct_expected(conn)


def test_a_push_message_between_replies_is_handed_to_redis_py(
    redis_server: EmbeddedServer,
) -> None:
    """An invalidation push (client-side caching) arrives before the next reply: either
    reader gives it to redis-py's push handler and returns the reply."""
    client = redis_server.client(protocol=3, single_connection_client=True)
    conn = client.connection
    if not hasattr(conn._parser, "invalidation_push_handler_func"):
        client.close()
        pytest.skip("this redis-py (5.0) hands no invalidation push to a handler")
    assert _is_direct(conn) == _direct_expected(conn)
    pushed: list[Any] = []
    conn._parser.invalidation_push_handler_func = pushed.append
    assert run(client, [(b"SET", b"cached", b"1")]) == [b"OK"]
    assert run(client, [(b"CLIENT", b"TRACKING", b"ON"), (b"GET", b"cached")]) == [b"OK", b"1"]
    other = redis_server.client()
    other.set("cached", "2")  # invalidates the key this connection read
    other.close()
    assert run(client, [(b"PING",), (b"GET", b"cached")]) == [b"PONG", b"2"]
    assert pushed and pushed[0][0] in (b"invalidate", "invalidate")
    client.close()


def test_a_subclass_overriding_read_response_is_always_called(
    redis_server: EmbeddedServer,
) -> None:
    client = redis_server.client(protocol=2, connection_class=Overriding)
    client.ping()  # connected: the handshake's replies are not counted below
    Overriding.seen = 0
    assert run(client, [(b"PING",), (b"ECHO", b"x")]) == [b"PONG", b"x"]
    assert Overriding.seen == 2
    client.close()


@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "str"])
def test_direct_and_redis_py_reads_agree(
    redis_server: EmbeddedServer, decode: bool, protocol: int
) -> None:
    client = redis_server.client(protocol=protocol, decode_responses=decode)
    client.flushall()
    client.hset("h", mapping={"a": "1", "b": "é"})
    client.set("s", "text")
    big = b"x" * 300_000  # longer than one socket read: the reply arrives in pieces
    commands = [
        (b"SET", b"big", big),
        (b"HGETALL", b"h"),
        (b"INCR", b"s"),  # an error reply, kept as a value
        (b"HMGET", b"h", b"a", b"zz"),
        (b"EVAL", b"return {1, redis.pcall('INCR', KEYS[1]), 'ok'}", 1, b"s"),  # nested error
        (b"GET", b"big"),
        (b"GET", b"none"),
        (b"ZSCORE", b"nozset", b"m"),
    ]
    with connection(client) as conn:
        assert _is_direct(conn) == _direct_expected(conn)
        direct = roundtrip(conn, commands)
    slow = Overriding  # same commands through redis-py's read_response
    other = redis_server.client(protocol=protocol, decode_responses=decode, connection_class=slow)
    with connection(other) as conn:
        assert not _is_direct(conn)
        usual = roundtrip(conn, commands)
    other.close()
    client.close()

    def shape(value: Any) -> Any:
        if isinstance(value, ResponseError):
            return (type(value).__name__, str(value))
        if isinstance(value, list):
            return [shape(v) for v in value]
        return value

    assert shape(direct) == shape(usual)
    assert isinstance(direct[2], ResponseError) and direct[5] == big  # undecoded
    assert isinstance(direct[4][1], ResponseError)


def test_a_timeout_while_reading_directly_is_an_operational_error(
    redis_server: EmbeddedServer,
) -> None:
    client = redis_server.client(protocol=2, socket_timeout=0.2)
    with connection(client) as conn:
        assert _is_direct(conn) == _direct_expected(conn)
    with pytest.raises(OperationalError, match=r"[Tt]imeout"):
        run(client, [(b"BLPOP", b"empty-list", 5)])
    assert run(client, [(b"PING",)]) == [b"PONG"]  # the broken connection was dropped
    client.close()


def test_a_connection_closed_while_reading_directly_is_an_operational_error(
    redis_server: EmbeddedServer,
) -> None:
    client = redis_server.client(protocol=2, single_connection_client=True)
    (victim,) = run(client, [(b"CLIENT", b"ID")])
    assert _is_direct(client.connection) == _direct_expected(client.connection)
    admin = redis_server.client()
    # BLPOP blocks; the admin kills the connection while redisca waits for the reply.
    killer = threading.Timer(0.3, admin.execute_command, ("CLIENT", "KILL", "ID", victim))
    killer.start()
    try:
        with pytest.raises(OperationalError, match="connection"):
            run(client, [(b"BLPOP", b"empty-list", 5)])
    finally:
        killer.join()
        admin.close()
    assert run(client, [(b"PING",)]) == [b"PONG"]
    client.close()

"""The executor's own command packer (``redisca.session.resp``).

It replaces redis-py's ``pack_commands`` on every write redisca makes, so it
must send the bytes redis-py would have sent, with or without hiredis.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from helpers import sent_commands
from hypothesis import given
from hypothesis import strategies as st
from models import Company, User

from redisca import Session
from redisca.session import resp

NAMES = [b"HSET", b"SADD", b"ZADD", b"SET", b"EVAL", b"EVALSHA", b"MULTI", b"EXEC", "WATCH"]
ARGS = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20),  # non-ASCII and control characters included
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
COMMANDS = st.lists(
    st.tuples(st.sampled_from(NAMES), st.lists(ARGS, max_size=6)).map(
        lambda named: (named[0], *named[1])
    ),
    max_size=8,
)


def redis_py_packs(commands: list[tuple[Any, ...]]) -> bytes:
    """What redis-py's own Python serializer sends for these commands, as UTF-8."""
    encoder = redis.connection.Encoder("utf-8", "strict", False)
    serializer = redis.connection.PythonRespSerializer(6000, encoder.encode)
    return b"".join(chunk for command in commands for chunk in serializer.pack(*command))


@given(COMMANDS)
def test_both_packers_send_what_redis_py_sends(commands: list[tuple[Any, ...]]) -> None:
    expected = redis_py_packs(commands)
    assert b"".join(resp.pack_python(commands)) == expected
    assert b"".join(resp.pack(commands)) == expected  # through hiredis where installed
    assert [list(c) for c in sent_commands(expected)] == [
        [a if isinstance(a, bytes) else str(a).encode() for a in c] for c in commands
    ]


def test_buffers_and_views_are_sent_as_their_bytes() -> None:
    commands = [(b"SET", memoryview(b"k"), bytearray(b"v\r\n")), [b"GET", b"k"]]
    assert b"".join(resp.pack(commands)) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    )


@pytest.mark.parametrize("bad", [1.5, None, True, object()])
def test_an_argument_of_another_type_is_refused_by_name(bad: Any) -> None:
    # (hiredis would pack a float in its own format: redisca sends scores as bytes)
    with pytest.raises(TypeError, match=f"not {type(bad).__name__}"):
        resp.pack_python([(b"SET", b"k", bad)])


def test_ids_stay_utf8_on_a_client_of_another_encoding(make_client: Any) -> None:
    # redis-py's Python packer encodes text with the client's encoding; ids are
    # UTF-8 in keys, so an index member in Latin-1 would read back as another id.
    client = make_client(encoding="latin-1")
    client.flushall()
    with Session(client) as s:
        s.add(User(email="a@example.com", company=Company("Café", id="é"), id="ü"))
        s.commit()
    with Session(client) as s:
        assert s.query(User).filter(User.company == "é").ids() == ["ü"]
        assert s.query(Company).filter(Company.name == "Café").ids() == ["é"]
        user = s.get(User, "ü")
        assert user is not None and user.company is not None and user.company.id == "é"
    assert sorted(client.zrange("{usr}#r:age", 0, -1)) == ["ü".encode()]  # the all-ids index


@pytest.mark.parametrize("packer", [resp.pack, resp.pack_python])
def test_a_large_batch_is_packed_in_chunks_of_whole_commands(packer: Any) -> None:
    commands = [(b"SADD", b"k", str(i), i) for i in range(2 * resp.CHUNK + 1)]
    chunks = packer(commands)
    assert [len(sent_commands(c)) for c in chunks] == [resp.CHUNK, resp.CHUNK, 1]
    assert b"".join(chunks) == redis_py_packs(commands)

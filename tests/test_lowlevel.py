"""Key and Hash: laziness and diff-saving are the point, so they are counted."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping

import pytest
import redis
from helpers import Counted, as_str, decodes

from redisca import conf
from redisca.lowlevel import Hash, Key


def _v(r: redis.Redis, text: str) -> str | bytes:
    """``text`` as the client in use returns it."""
    return text if decodes(r) else text.encode()


def _stored(r: redis.Redis, name: str) -> dict[str, str]:
    return {as_str(k): as_str(v) for k, v in r.hgetall(name).items()}


# -- Key -----------------------------------------------------------------------


def test_key_exists_and_delete(r: redis.Redis) -> None:
    key = Key("k", db=r)
    assert not key.exists()
    assert key.delete() is False
    r.set("k", "v")
    assert key.exists() is True
    assert key.delete() is True
    assert not key.exists()
    assert r.get("k") is None


def test_key_with_a_bytes_name(r: redis.Redis) -> None:
    r.set(b"\xffbin", "v")
    assert Key(b"\xffbin", db=r).exists()


def test_key_identity_is_its_name() -> None:
    assert Key("a") == Key("a")
    assert Key("a") != Key("b")
    assert len({Key("a"), Key("a"), Hash("a")}) == 1
    assert Key("a") != "a"
    assert repr(Key("a")) == "Key('a')"
    assert repr(Hash(b"h")) == "Hash(b'h')"


def test_default_client_is_resolved_at_first_use(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, hash_ = Key("k"), Hash("h")  # made before conf.db is set
    monkeypatch.setattr(conf, "db", r)
    r.set("k", "v")
    r.hset("h", "f", "1")
    assert key.db is r and key.exists()
    assert hash_["f"] == _v(r, "1")


# -- Hash: reading -------------------------------------------------------------


def test_hash_is_a_mutable_mapping(r: redis.Redis) -> None:
    r.hset("h", mapping={"a": "1", "b": "2"})
    h = Hash("h", db=r)
    assert isinstance(h, MutableMapping)
    assert "a" in h and "z" not in h
    assert len(h) == 2
    assert sorted(h) == ["a", "b"]
    assert h.get("z") is None and h.get("z", 0) == 0
    assert dict(h) == {"a": _v(r, "1"), "b": _v(r, "2")}
    with pytest.raises(KeyError):
        h["z"]


def test_first_read_loads_everything_in_one_round_trip(r: redis.Redis, counted: Counted) -> None:
    r.hset("h", mapping={"a": "1", "b": "2"})
    h = Hash("h", db=counted.client)
    assert counted.round_trips == 0
    assert h["a"] == _v(r, "1")
    assert h["b"] == _v(r, "2")
    assert len(h) == 2 and list(h) == ["a", "b"] and "a" in h
    assert (counted.round_trips, counted.commands) == (1, 1)
    assert h.loaded


def test_bytes_field_names_are_the_same_fields(r: redis.Redis) -> None:
    r.hset("h", "f", "1")
    h = Hash("h", db=r)
    assert h[b"f"] == h["f"]
    h[b"g"] = "2"
    assert "g" in h and list(h) == ["f", "g"]


def test_a_missing_hash_is_empty(r: redis.Redis, counted: Counted) -> None:
    h = Hash("nothing", db=counted.client)
    assert len(h) == 0 and dict(h) == {}
    assert counted.round_trips == 1


def test_non_utf8_field_names_round_trip(make_client: Callable[..., redis.Redis]) -> None:
    # Only a client that does not decode replies can read non-UTF-8 names at all.
    r = make_client(decode_responses=False)
    r.flushall()
    r.hset("h", b"\xff", b"x")
    h = Hash("h", db=r)
    assert h[b"\xff"] == b"x"
    h[b"\xff"] = b"y"
    h.save()
    assert r.hgetall("h") == {b"\xff": b"y"}


# -- Hash: writing -------------------------------------------------------------


def test_writes_before_a_read_send_nothing_until_save(r: redis.Redis, counted: Counted) -> None:
    r.hset("h", mapping={"keep": "k", "gone": "g"})
    h = Hash("h", db=counted.client)
    h["new"] = "n"
    del h["gone"]  # blind: the hash is not loaded
    assert counted.round_trips == 0
    h.save()
    assert (counted.round_trips, counted.commands) == (1, 4)  # MULTI HSET HDEL EXEC
    assert _stored(r, "h") == {"keep": "k", "new": "n"}
    assert not h.loaded
    counted.reset()
    assert dict(h) == {"keep": _v(r, "k"), "new": _v(r, "n")}
    assert counted.round_trips == 1


def test_local_changes_survive_the_lazy_load(r: redis.Redis) -> None:
    r.hset("h", mapping={"a": "1", "b": "2", "c": "3"})
    h = Hash("h", db=r)
    h["a"] = "local"
    del h["c"]
    assert h["b"] == _v(r, "2")  # loads now
    assert dict(h) == {"a": "local", "b": _v(r, "2")}
    assert h.modified


def test_save_sends_only_the_diff(r: redis.Redis, counted: Counted) -> None:
    r.hset("h", mapping={"same": "1", "changed": "2", "removed": "3"})
    h = Hash("h", db=counted.client)
    h.load()
    counted.reset()
    h["same"] = "1"
    h["changed"] = "20"
    del h["removed"]
    h["added"] = "4"
    # Another writer changes a field this hash did not change: save must keep it.
    r.hset("h", "same", "theirs")
    h.save()
    assert (counted.round_trips, counted.commands) == (1, 4)
    assert _stored(r, "h") == {"same": "theirs", "changed": "20", "added": "4"}


def test_save_without_changes_sends_nothing(r: redis.Redis, counted: Counted) -> None:
    r.hset("h", mapping={"a": "1", "n": "5"})
    h = Hash("h", db=counted.client)
    h.save()  # unloaded and untouched
    assert counted.round_trips == 0
    h.load()
    h["a"] = "1"
    h["n"] = 5  # stored as b"5": no change either
    assert not h.modified
    counted.reset()
    h.save()
    assert counted.round_trips == 0


def test_saved_state_counts_as_loaded(r: redis.Redis, counted: Counted) -> None:
    h = Hash("h", db=counted.client)
    h.load()
    h["a"] = "1"
    h.save()
    counted.reset()
    h.save()
    assert counted.round_trips == 0
    assert not h.modified
    h["a"] = "2"
    h.save()
    assert (counted.round_trips, counted.commands) == (1, 3)  # MULTI HSET EXEC
    assert _stored(r, "h") == {"a": "2"}


def test_numbers_and_bytes_are_stored(r: redis.Redis) -> None:
    h = Hash("h", db=r)
    h["i"], h["f"], h["b"] = 5, 1.5, b"raw"
    h.save()
    assert _stored(r, "h") == {"i": "5", "f": "1.5", "b": "raw"}


def test_an_unstorable_value_fails_at_save(r: redis.Redis) -> None:
    h = Hash("h", db=r)
    h.load()
    h["flag"] = True
    with pytest.raises(redis.DataError):
        h.save()
    assert r.exists("h") == 0


def test_removing_every_field_removes_the_key(r: redis.Redis) -> None:
    r.hset("h", mapping={"a": "1", "b": "2"})
    h = Hash("h", db=r)
    h.clear()
    h.save()
    assert not h.exists()


def test_deleting_a_missing_field_of_a_loaded_hash(r: redis.Redis) -> None:
    h = Hash("h", db=r)
    h.load()
    with pytest.raises(KeyError):
        del h["missing"]


def test_reload_drops_local_changes(r: redis.Redis, counted: Counted) -> None:
    r.hset("h", "a", "1")
    h = Hash("h", db=counted.client)
    h["a"] = "local"
    h["b"] = "local"
    h.reload()
    assert dict(h) == {"a": _v(r, "1")}
    assert counted.round_trips == 1
    r.hset("h", "a", "theirs")
    h.reload()
    assert h["a"] == _v(r, "theirs")


def test_delete_removes_the_key_and_local_state(r: redis.Redis, counted: Counted) -> None:
    r.hset("h", mapping={"a": "1"})
    h = Hash("h", db=counted.client)
    assert h["a"] == _v(r, "1")
    h["b"] = "pending"
    assert h.delete() is True
    assert not h.exists()
    assert not h.loaded and not h.modified
    assert h.delete() is False
    counted.reset()
    assert len(h) == 0
    assert counted.round_trips == 1  # state was dropped, so this read loaded again

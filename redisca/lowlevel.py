"""redisca 1.x's ``Key`` and ``Hash``: plain Redis keys without a mapping.

They stay for code that wants Redis hashes as dicts without declaring entity
classes. A :class:`Hash` reads lazily (one ``HGETALL`` at the first read) and
saves only what changed since, so two processes editing different fields of
one hash do not overwrite each other.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from redis.exceptions import DataError

from redisca.conf import Client, default_client
from redisca.session import executor


class Key:
    """A Redis key by name; the client is resolved at first use, so keys can be
    made at import time, before the application configures ``conf.db``."""

    def __init__(self, name: str | bytes, db: Client | None = None) -> None:
        self.name = name
        self._db = db

    @property
    def db(self) -> Client:
        """The client given, else :func:`redisca.conf.default_client` at first use."""
        if self._db is None:
            self._db = default_client()
        return self._db

    @db.setter
    def db(self, client: Client) -> None:
        self._db = client

    def exists(self) -> bool:
        """Whether the key exists in Redis now (one round trip, never cached)."""
        return bool(self.db.exists(self.name))

    def delete(self) -> bool:
        """Delete the key; True if it existed."""
        return bool(self.db.delete(self.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Key):
            return NotImplemented
        return self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)


def _field(name: str | bytes) -> str:
    """Field names are str; undecodable bytes survive via surrogateescape."""
    if isinstance(name, bytes):
        return name.decode("utf-8", "surrogateescape")
    if isinstance(name, str):
        return name
    raise TypeError(f"hash field names are str or bytes, not {type(name).__name__}")


def _wire(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


class Hash(Key, MutableMapping[str, Any]):
    """A Redis hash as a dict, loaded lazily and saved as a diff.

    Values read back are bytes, or str if the client decodes responses. Before
    the first read, writes and deletes are recorded blindly (no round trip;
    deleting an unknown field is not a ``KeyError`` then). Equality and hashing
    are by key name, as for :class:`Key`, never by content.
    """

    def __init__(self, name: str | bytes, db: Client | None = None) -> None:
        super().__init__(name, db)
        self._reset()

    def _reset(self) -> None:
        self._loaded = False
        self._remote: dict[str, Any] = {}  # Redis's state at the last load or save
        self._data: dict[str, Any] = {}  # loaded: the whole hash; else: local writes only
        self._removed: set[str] = set()  # deletes made before loading

    # -- loading -------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the hash has been read (reads before that load it first)."""
        return self._loaded

    def load(self) -> None:
        """Read the hash (one round trip); unsaved local changes stay on top."""
        changed, removed = self._pending()
        remote = {_field(k): v for k, v in self.db.hgetall(self.name).items()}
        self._remote, self._data = remote, dict(remote)
        self._data.update(changed)
        for name in removed:
            self._data.pop(name, None)
        self._removed.clear()
        self._loaded = True

    def reload(self) -> None:
        """Read the hash again and drop unsaved local changes."""
        self._reset()
        self.load()

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()

    # -- saving --------------------------------------------------------------

    def _same(self, old: Any, new: Any) -> bool:
        # Compare as Redis stores them, so h["n"] = 5 over a loaded b"5" is no change.
        encode = self.db.get_encoder().encode
        try:
            return bytes(encode(old)) == bytes(encode(new))
        except DataError:  # unstorable; let save() send it and redis-py complain
            return False

    def _pending(self) -> tuple[dict[str, Any], set[str]]:
        """Fields to write and fields to remove, relative to what Redis holds."""
        if not self._loaded:
            return dict(self._data), set(self._removed)
        changed = {
            name: value
            for name, value in self._data.items()
            if name not in self._remote or not self._same(self._remote[name], value)
        }
        return changed, set(self._remote) - set(self._data)

    @property
    def modified(self) -> bool:
        """Whether :meth:`save` has anything to write."""
        changed, removed = self._pending()
        return bool(changed or removed)

    def save(self) -> None:
        """Write the changes in one MULTI/EXEC round trip; nothing if none.

        Sent by redisca's executor, so a ``RedisCluster`` client works too, on every
        redis-py version (redis-py 5's cluster client has no transactions)."""
        changed, removed = self._pending()
        if not changed and not removed:
            return
        encode: Any = self.db.get_encoder().encode
        key = encode(self.name)  # raises redis.DataError for what Redis cannot store
        commands: list[tuple[Any, ...]] = []
        if changed:
            pairs = [x for k, v in changed.items() for x in (_wire(k), encode(v))]
            commands.append((b"HSET", key, *pairs))
        if removed:
            commands.append((b"HDEL", key, *(_wire(k) for k in sorted(removed))))
        for reply in executor.atomic(self.db, commands):
            if isinstance(reply, Exception):  # another program's key of another type
                raise reply
        if self._loaded:
            self._remote = dict(self._data)
        else:
            # Only the written fields are known; the next read loads them all.
            self._data.clear()
            self._removed.clear()

    def delete(self) -> bool:
        """Delete the key and forget local state; True if the key existed."""
        existed = super().delete()
        self._reset()
        return existed

    # -- MutableMapping ------------------------------------------------------

    def __getitem__(self, name: str | bytes) -> Any:
        self._ensure_loaded()
        return self._data[_field(name)]

    def __setitem__(self, name: str | bytes, value: Any) -> None:
        field = _field(name)
        self._data[field] = value
        self._removed.discard(field)

    def __delitem__(self, name: str | bytes) -> None:
        field = _field(name)
        if self._loaded:
            del self._data[field]
        else:
            self._data.pop(field, None)
            self._removed.add(field)

    def __iter__(self) -> Iterator[str]:
        self._ensure_loaded()
        return iter(self._data)

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._data)


__all__ = ["Hash", "Key"]

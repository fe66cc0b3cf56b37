"""The baseline: hand-written redis-py code that writes the same data as redisca.

Same keys, same hash fields, same values, same index entries, and the same
guarantees where redisca's semantics need them: ``WATCH`` on the unique keys
an insert claims, ``WATCH`` plus ``EXISTS``/``HMGET`` of the entities an indexed
update or a delete touches (their old index entries come from what Redis holds
under ``WATCH``), and a script that writes a plain update only if the entity
still exists (so a concurrent delete cannot leave a partial hash behind): the
same commands as redisca sends, so the server does the same work (redisca's
script, one call per commit; index writes of one key in one variadic command, as
redisca groups them; an indexed update's old range entry removed before the new one
is added). What redisca sends and this does not: its reindex marker
(``usr#x``), read and watched once per commit. Every batch goes out in one
write on a pooled connection: the fewest round trips redis-py allows (its
``Pipeline`` would send each read after ``WATCH`` on its own). Loaded hashes
become dicts of Python values (str, int, aware datetime, the company's id), the
least an application needs.

Keys are spelled here by hand, as a hand-written application would;
:func:`check_layout` checks they are redisca's. Two layouts are known: the one with a
string key per unique value and a set of all ids (before issue 11), and the striped one
(``usr#u:eml:<n>`` hashes, ``usr#all`` a sorted set, range indexes holding every
entity); the module follows whichever the library in use has. Since a range index holds
every entity, a model with one keeps no ``usr#all`` (its first range index, ``usr#r:age``,
is its all-ids index): :data:`SEPARATE_ALL` follows that too.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import redis

from redisca import hexid, inspect
from redisca.mapping.keys import KeyLayout
from redisca.session.emit import GUARDED_WRITE

from .model import DataSet, company_ids

ENTITY = b"{usr}:"
ALL = b"{usr}#all"
AGE = b"{usr}#r:age"
COMPANY = b"{usr}#i:company:"
EMAIL = b"{usr}#u:eml:"
#: The striped layout: unique values in 128 hashes, all ids in a sorted set.
STRIPED = hasattr(KeyLayout, "unique_stripe")
STRIPES = 128


def _separate_all() -> bool:
    from .model import User

    return bool(inspect(User).layout.all_ids == ALL)


#: Whether redisca keeps the users' ids in ``usr#all`` beside ``usr#r:age`` (before the
#: range index became the all-ids index of a model with one): then both sides write it.
SEPARATE_ALL = _separate_all()


def email_slot(address: str) -> tuple[bytes, bytes]:
    """Where an address is claimed: its key (a stripe hash, or a string key per value
    before the striped layout) and, in a stripe, the lower-cased address."""
    value = address.lower().encode()
    if STRIPED:
        return EMAIL + b"%d" % (zlib.crc32(value) % STRIPES), value
    return EMAIL + value, b""


#: A plain update writes only if the entity still exists: redisca's own script, so the
#: server does the same work (one call for every plain update of a commit).
UPDATE_IF_EXISTS = GUARDED_WRITE


def guards(prefix: bytes, ids: Sequence[str]) -> list[bytes]:
    """The guard stripes (``{P}#g:<n>``) of these entities, each once, in first-seen order:
    what a guarded commit watches for the entities it reads and bumps for those whose
    index entries it changes."""
    head = b"{" + prefix + b"}"
    return list(dict.fromkeys(head + b"#g:%d" % (zlib.crc32(i.encode()) % STRIPES) for i in ids))


def bumps(prefix: bytes, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    return [(b"INCR", key) for key in guards(prefix, ids)] if Protocol.guarded else []


class Protocol:
    """Whether redisca's commits bump guard stripes (the bounded-WATCH protocol): then
    they watch the guard stripes of the entities they read instead of the entities'
    keys. Found by :func:`detect` on the server, from what a commit leaves behind."""

    guarded = False


def detect(client: redis.Redis) -> bool:
    """Look at what a redisca commit writes: guard stripes or not."""
    from redisca import Session

    from .model import Company

    client.flushall()
    with Session(client) as session:
        session.add(Company(name="probe", id="probe"))
        session.commit()
    Protocol.guarded = bool(list(client.scan_iter(match=b"{co}#g:*")))
    client.flushall()
    return Protocol.guarded


def check_layout() -> None:
    layout: Any = KeyLayout("usr")
    assert layout.entity("x") == ENTITY + b"x"
    assert layout.all_ids == ALL  # of a model without a range index
    from .model import User

    assert inspect(User).layout.all_ids == (ALL if SEPARATE_ALL else AGE)
    assert layout.range_index(b"age") == AGE
    assert layout.eq_index(b"company", b"x") == COMPANY + b"x"
    for address in ("a@b.c", "User7@Example.com"):
        key, value = email_slot(address)
        if STRIPED:
            assert layout.unique_stripe(b"eml", value) == key
        else:
            assert layout.unique(b"eml", address.lower().encode()) == key


def _owner_read(slot: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    return (b"HGET", *slot) if STRIPED else (b"GET", slot[0])


def _claim(slot: tuple[bytes, bytes], ident: str) -> tuple[Any, ...]:
    return (b"HSET", *slot, ident) if STRIPED else (b"SET", slot[0], ident)


def _release(slot: tuple[bytes, bytes]) -> tuple[Any, ...]:
    return (b"HDEL", *slot) if STRIPED else (b"DEL", slot[0])


def _all_add(ident: str) -> list[tuple[Any, ...]]:
    """The user's all-ids entry: none when ``usr#r:age`` is the all-ids index."""
    if not SEPARATE_ALL:
        return []
    return [(b"ZADD", ALL, 0, ident) if STRIPED else (b"SADD", ALL, ident)]


def _all_remove(ident: str) -> list[tuple[Any, ...]]:
    if not SEPARATE_ALL:
        return []
    return [(b"ZREM", ALL, ident) if STRIPED else (b"SREM", ALL, ident)]


class Batch:
    """Index writes as redisca sends them: every ``SADD``/``ZADD``/``HSET`` (or
    ``SREM``/``ZREM``/``HDEL``) of one key in one variadic command, entity deletes in one
    ``DEL``, plain updates in one call of its guarded-write script; removals before
    additions."""

    def __init__(self) -> None:
        self.deleted: list[bytes] = []
        self.entities: list[tuple[Any, ...]] = []
        self.guarded: tuple[list[bytes], list[Any]] = ([], [])
        self.removals: dict[tuple[bytes, bytes], list[Any]] = {}
        self.additions: dict[tuple[bytes, bytes], list[Any]] = {}

    def index(self, command: tuple[Any, ...]) -> None:
        name, key = command[0], command[1]
        part = (
            self.removals
            if name in (b"SREM", b"ZREM", b"HDEL", b"SET", b"DEL")
            else (self.additions)
        )
        part.setdefault((name, key), []).extend(command[2:])

    def commands(self) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = [(b"DEL", *self.deleted)] if self.deleted else []
        out += self.entities
        keys, args = self.guarded
        if keys:
            out.append((b"EVAL", UPDATE_IF_EXISTS, len(keys), *keys, *args))
        for part in (self.removals, self.additions):
            out += [(name, key, *args) for (name, key), args in part.items()]
        return out


@contextmanager
def connection(client: redis.Redis) -> Iterator[Any]:
    pool = client.connection_pool
    try:
        conn = pool.get_connection()
    except TypeError:  # redis-py < 5.3 wants a command name
        conn = pool.get_connection("MULTI")
    try:
        yield conn
    finally:
        pool.release(conn)


def roundtrip(conn: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    conn.send_packed_command(conn.pack_commands(commands))
    return [conn.read_response() for _ in commands]


def run(client: redis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    with connection(client) as conn:
        return roundtrip(conn, commands)


def transaction(conn: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    replies = roundtrip(conn, [(b"MULTI",), *commands, (b"EXEC",)])
    if replies[-1] is None:
        raise RuntimeError("a watched key changed: the benchmark runs alone, this is a bug")
    return list(replies[-1])


def as_dict(reply: Any) -> dict[bytes, bytes]:
    """HGETALL's reply: a dict in RESP3, a flat list in RESP2."""
    if isinstance(reply, dict):
        return reply
    items = iter(reply)
    return dict(zip(items, items, strict=True))


def decode(ident: str, h: dict[bytes, bytes]) -> dict[str, Any]:
    age = h.get(b"age")
    company = h.get(b"company")
    return {
        "id": ident,
        "email": h[b"eml"].decode(),
        "age": None if age is None else int(age),
        "name": h[b"name"].decode(),
        "created": datetime.fromtimestamp(int(h[b"created"]), UTC),
        "company": None if company is None else company.decode(),
    }


class RawSide:
    name = "same-work"

    def __init__(self, client: redis.Redis, data: DataSet) -> None:
        self.client = client
        self.data = data
        self.ids: list[str] = []
        self.records: list[dict[str, Any]] = []

    def setup(self) -> None:
        """The companies (as redisca stores them) and the update script (not timed)."""
        commands: list[tuple[Any, ...]] = []
        for i in company_ids():
            name = f"company {i}".encode()
            if STRIPED:
                stripe = b"{co}#u:name:%d" % (zlib.crc32(name) % STRIPES)
                commands += [(b"ZADD", b"{co}#all", 0, i), (b"HSET", stripe, name, i)]
            else:
                commands += [(b"SADD", b"{co}#all", i), (b"SET", b"{co}#u:name:" + name, i)]
            commands.append((b"HSET", b"{co}:" + i.encode(), b"name", name))
        commands += bumps(b"co", company_ids())
        run(self.client, commands)

    def insert(self, ids: list[str] | None = None) -> int:
        rows = self.data.rows
        self.ids = ids or [hexid() for _ in rows]
        slots = [email_slot(r.email) for r in rows]
        watched = list(dict.fromkeys(key for key, _ in slots))
        with connection(self.client) as conn:
            owners = roundtrip(conn, [(b"WATCH", *watched), *[_owner_read(s) for s in slots]])
            if any(o is not None for o in owners[1:]):
                raise RuntimeError("an email is taken")
            batch = Batch()
            for ident, row, slot in zip(self.ids, rows, slots, strict=True):
                batch.entities.append(row.hset(ENTITY + ident.encode()))
                for command in _all_add(ident):
                    batch.index(command)
                batch.index((b"ZADD", AGE, b"%d" % row.age, ident))
                batch.index((b"SADD", COMPANY + row.company.encode(), ident))
                batch.index(_claim(slot, ident))
            transaction(conn, batch.commands() + bumps(b"usr", self.ids))
        return len(rows)

    def get(self) -> int:
        keys = [ENTITY + i.encode() for i in self.ids]
        replies = run(self.client, [(b"HGETALL", k) for k in keys])
        self.records = [decode(i, as_dict(h)) for i, h in zip(self.ids, replies, strict=True)]
        return len(self.records)

    def find(self) -> int:
        for email in self.data.lookups:
            (owner,) = run(self.client, [_owner_read(email_slot(email))])
            ident = owner.decode()
            (h,) = run(self.client, [(b"HGETALL", ENTITY + owner)])
            decode(ident, as_dict(h))
        return len(self.data.lookups)

    def range(self) -> int:
        for low, high in self.data.windows:
            (ids,) = run(self.client, [(b"ZRANGE", AGE, low, high, b"BYSCORE", b"LIMIT", 5, 10)])
            replies = run(self.client, [(b"HGETALL", ENTITY + i) for i in ids])
            [decode(i.decode(), as_dict(h)) for i, h in zip(ids, replies, strict=True)]
        return len(self.data.windows)

    def update_plain(self) -> int:
        batch = Batch()
        keys, args = batch.guarded
        for record, name in zip(self.records, self.data.new_names, strict=True):
            record["name"] = name
            keys.append(ENTITY + record["id"].encode())
            args += (1, 0, b"name", name.encode())
        with connection(self.client) as conn:
            transaction(conn, batch.commands())
        return len(self.records)

    def _watched(self, keys: list[bytes]) -> list[bytes]:
        """What a commit that reads these entities watches: their keys, or their guard
        stripes under the guarded protocol."""
        if Protocol.guarded:
            return guards(b"usr", [r["id"] for r in self.records])
        return keys

    def update_indexed(self) -> int:
        keys = []
        for record, age in zip(self.records, self.data.new_ages, strict=True):
            record["age"] = age
            keys.append(ENTITY + record["id"].encode())
        with connection(self.client) as conn:
            reads = [(b"EXISTS", k) for k in keys] + [(b"HMGET", k, b"age") for k in keys]
            replies = roundtrip(conn, [(b"WATCH", *self._watched(keys)), *reads])
            n = len(keys)
            exists, old = replies[1 : n + 1], replies[n + 1 :]
            batch = Batch()
            for record, key, found, (was,) in zip(self.records, keys, exists, old, strict=True):
                if not found:
                    raise RuntimeError(f"{key!r} vanished")
                new = b"%d" % record["age"]
                batch.entities.append((b"HSET", key, b"age", new))
                if was != new:
                    # As redisca does: the old entry out, the new one in (the striped
                    # layout's range index holds every entity: the ZADD moves it).
                    if was is not None and not STRIPED:
                        batch.index((b"ZREM", AGE, record["id"]))
                    batch.index((b"ZADD", AGE, new, record["id"]))
            ids = [r["id"] for r in self.records]
            transaction(conn, batch.commands() + bumps(b"usr", ids))
        return len(keys)

    def delete(self) -> int:
        keys = [ENTITY + r["id"].encode() for r in self.records]
        slots = [email_slot(r["email"]) for r in self.records]
        with connection(self.client) as conn:
            reads: list[tuple[bytes, ...]] = [(b"EXISTS", k) for k in keys]
            reads += [(b"HMGET", k, b"eml", b"age", b"company") for k in keys]
            reads += [_owner_read(s) for s in slots]
            replies = roundtrip(conn, [(b"WATCH", *self._watched(keys)), *reads])
            n = len(keys)
            exists, old, owners = (
                replies[1 : n + 1],
                replies[n + 1 : 2 * n + 1],
                replies[2 * n + 1 :],
            )
            batch = Batch()
            for record, key, slot, found, (eml, age, company), owner in zip(
                self.records, keys, slots, exists, old, owners, strict=True
            ):
                if not found:
                    continue
                ident = record["id"]
                batch.deleted.append(key)
                for command in _all_remove(ident):
                    batch.index(command)
                if age is not None or STRIPED:
                    batch.index((b"ZREM", AGE, ident))
                if eml is not None and owner is not None and owner.decode() == ident:
                    batch.index(_release(slot))
                if company is not None:
                    batch.index((b"SREM", COMPANY + company, ident))
            ids = [r["id"] for r in self.records]
            transaction(conn, batch.commands() + bumps(b"usr", ids))
        self.records = []
        return len(keys)

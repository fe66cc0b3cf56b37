"""The floor: what anyone writes by hand with redis-py and no guarantees to keep.

One hash per user (the same fields and values redisca stores), ``HSETNX`` into ONE hash
for the unique email (lower-cased address -> id), ``ZADD`` of the age. No ``WATCH``, no
``MULTI``, no all-ids index, no company index, nothing else. Update: ``HSET`` (and
``ZADD`` for the age); delete: ``DEL`` + ``HDEL`` + ``ZREM``; get: ``HGETALL``; find:
``HGET`` on the email hash, then ``HGETALL``; range: ``ZRANGE … BYSCORE LIMIT``, then
``HGETALL``. Each batch is one write on a pooled connection (a pipeline without a
transaction). Loaded hashes become the same dicts as the same-work baseline's.

Key names follow redisca's layout (``{usr}:<id>``, ``{usr}#u:eml``, ``{usr}#r:age``) so the
memory per entity compares like for like.
"""

from __future__ import annotations

from typing import Any

import redis

from redisca import hexid

from .model import DataSet
from .raw import as_dict, connection, decode, roundtrip, run

ENTITY = b"{usr}:"
EMAILS = b"{usr}#u:eml"
AGE = b"{usr}#r:age"


class FloorSide:
    name = "floor"

    def __init__(self, client: redis.Redis, data: DataSet) -> None:
        self.client = client
        self.data = data
        self.ids: list[str] = []
        self.records: list[dict[str, Any]] = []

    def setup(self) -> None:
        """Nothing: the floor keeps no companies (a user's company is its id)."""

    def insert(self, ids: list[str] | None = None) -> int:
        rows = self.data.rows
        self.ids = ids or [hexid() for _ in rows]
        writes: list[tuple[Any, ...]] = []
        for ident, row in zip(self.ids, rows, strict=True):
            age = b"%d" % row.age
            key = ENTITY + ident.encode()
            writes += [
                (b"HSETNX", EMAILS, row.email.lower().encode(), ident),
                row.hset(key),
                (b"ZADD", AGE, age, ident),
            ]
        with connection(self.client) as conn:
            replies = roundtrip(conn, writes)
        if not all(replies[::3]):
            raise RuntimeError("an email is taken")
        return len(rows)

    def get(self) -> int:
        keys = [ENTITY + i.encode() for i in self.ids]
        replies = run(self.client, [(b"HGETALL", k) for k in keys])
        self.records = [decode(i, as_dict(h)) for i, h in zip(self.ids, replies, strict=True)]
        return len(self.records)

    def find(self) -> int:
        for email in self.data.lookups:
            (owner,) = run(self.client, [(b"HGET", EMAILS, email.lower().encode())])
            (h,) = run(self.client, [(b"HGETALL", ENTITY + owner)])
            decode(owner.decode(), as_dict(h))
        return len(self.data.lookups)

    def range(self) -> int:
        for low, high in self.data.windows:
            (ids,) = run(self.client, [(b"ZRANGE", AGE, low, high, b"BYSCORE", b"LIMIT", 5, 10)])
            replies = run(self.client, [(b"HGETALL", ENTITY + i) for i in ids])
            [decode(i.decode(), as_dict(h)) for i, h in zip(ids, replies, strict=True)]
        return len(self.data.windows)

    def update_plain(self) -> int:
        writes: list[tuple[Any, ...]] = []
        for record, name in zip(self.records, self.data.new_names, strict=True):
            record["name"] = name
            writes.append((b"HSET", ENTITY + record["id"].encode(), b"name", name.encode()))
        run(self.client, writes)
        return len(self.records)

    def update_indexed(self) -> int:
        writes: list[tuple[Any, ...]] = []
        for record, age in zip(self.records, self.data.new_ages, strict=True):
            record["age"] = age
            new = b"%d" % age
            writes += [
                (b"HSET", ENTITY + record["id"].encode(), b"age", new),
                (b"ZADD", AGE, new, record["id"]),
            ]
        run(self.client, writes)
        return len(self.records)

    def delete(self) -> int:
        writes: list[tuple[Any, ...]] = []
        for record in self.records:
            ident = record["id"]
            writes += [
                (b"DEL", ENTITY + ident.encode()),
                (b"HDEL", EMAILS, record["email"].lower().encode()),
                (b"ZREM", AGE, ident),
            ]
        run(self.client, writes)
        count = len(self.records)
        self.records = []
        return count

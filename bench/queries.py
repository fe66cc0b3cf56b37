"""The query phase: the server's time per query, for each query shape, as the data grows.

An ``Item`` has a range-indexed ``i`` (the order), an eq-indexed ``s`` (20 items hold
``"rare"``, the rest one of 100 common values) and two range-indexed ``a`` (spread over
2**31) and ``b`` (0-999). The data is loaded once per server, growing through the sizes
(10,000 then 200,000 then 1,000,000 by default), by redisca itself (``bulk_add`` when the
session has it, else commits of 5,000), and checked through redisca's queries before
anything is measured.

Server time is the sum of the SLOWLOG durations of the query's commands, with
``slowlog-log-slower-than 0`` (every command logged). A script logs as one entry and a
``MULTI``/``EXEC`` as its commands, so nothing is counted twice, unlike Redis 7.0's
``INFO commandstats``. The median of the repetitions counts.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs
import redis

from redisca import Integer, Registry, Session, String, hexid, inspect
from redisca.session import resp
from redisca.session.query import Query

from . import raw, runner, servers
from .counting import Counter, counting_client

registry = Registry()


@registry.mapped(prefix="itm")
@attrs.define
class Item:
    i: int = Integer(index=True)
    s: str = String(index=True)
    a: int = Integer(index=True)
    b: int = Integer(index=True)
    name: str = String(default="")
    id: str | None = None


#: ``Item``'s query attributes, typed for mypy (``It.a.between(1, 9)``).
It = inspect(Item).attrs

SIZES = (10_000, 200_000, 1_000_000)
RARE = 20
#: Items among the first 1,000 that hold "rare": every level has them all.
RARE_EVERY = 50
SPREAD = 2**31
#: How many items each ``a`` window covers: with ``b < 100`` (a tenth) about 5 match.
A_WINDOW = 50
PAGE, PER_PAGE = 50, 20
DEEP_OFFSET = 5_000
CHUNK = 5_000
REPEATS = 15
#: A shape stops repeating after this many seconds (and at least three runs).
SHAPE_SECONDS = 10.0


class Items:
    """The items in load order (a fixed seed), and what the checks need to know of them."""

    def __init__(self, seed: int = 7) -> None:
        self.rnd = random.Random(seed)
        self.made = 0
        self.min_i: int | None = None

    def values(self, count: int) -> Iterator[tuple[int, str, int, int, str]]:
        """The next ``count`` items' values: ``(i, s, a, b, name)``."""
        rnd = self.rnd
        for _ in range(count):
            k = self.made
            self.made += 1
            i = rnd.randrange(SPREAD)
            self.min_i = i if self.min_i is None else min(self.min_i, i)
            rare = k < RARE * RARE_EVERY and k % RARE_EVERY == 0
            s = "rare" if rare else f"s{k % 100}"
            yield i, s, rnd.randrange(SPREAD), rnd.randrange(1000), f"item {k}"

    def take(self, count: int) -> Iterator[Item]:
        for i, s, a, b, name in self.values(count):
            yield Item(i=i, s=s, a=a, b=b, name=name)


def load(client: redis.Redis, items: Items, count: int, how: str = "raw") -> dict[str, Any]:
    """Add ``count`` items, by a raw pipeline writing redisca's layout (``raw``, fast)
    or through redisca (``redisca``: ``bulk_add``, else commits of 5,000); the time."""
    start = time.perf_counter()
    if how == "raw":
        load_raw(client, items.values(count))
        done = "raw pipeline in redisca's layout"
    elif hasattr(Session, "bulk_add"):
        with Session(client) as session:
            session.bulk_add(items.take(count), chunk_size=CHUNK)
        done = f"session.bulk_add, chunks of {CHUNK:,}"
    else:
        batch = items.take(count)
        while True:
            chunk = [item for _, item in zip(range(CHUNK), batch, strict=False)]
            if not chunk:
                break
            with Session(client) as session:
                session.add_all(chunk)
                session.commit()
        done = f"one commit per {CHUNK:,} (no bulk_add yet)"
    seconds = time.perf_counter() - start
    return {"loaded": count, "seconds": seconds, "per_s": count / seconds, "how": done}


def load_raw(
    client: redis.Redis,
    values: Iterable[tuple[int, str, int, int, str]],
    ids: Iterator[str] | None = None,
) -> None:
    """Items written as redisca writes them (entity hash, three range indexes, the
    first of which, ``itm#r:i``, is the all-ids index (``itm#all`` too, in layouts
    before that), the eq index of ``s``; no guard counters, which hold no data), in
    writes of 10,000 items. :func:`check_loader` compares the result with redisca's own."""
    all_ids = b"{itm}#all"
    separate = inspect(Item).layout.all_ids == all_ids
    batch: list[tuple[Any, ...]] = []
    for i, s, a, b, name in values:
        ident = (next(ids) if ids is not None else hexid()).encode()
        batch.append(
            (b"HSET", b"{itm}:" + ident, b"i", i, b"s", s, b"a", a, b"b", b, b"name", name)
        )
        if separate:
            batch.append((b"ZADD", all_ids, 0, ident) if raw.STRIPED else (b"SADD", all_ids, ident))
        batch += [
            (b"ZADD", b"{itm}#r:i", i, ident),
            (b"ZADD", b"{itm}#r:a", a, ident),
            (b"ZADD", b"{itm}#r:b", b, ident),
            (b"SADD", b"{itm}#i:s:" + s.encode(), ident),
        ]
        if len(batch) >= 60_000:
            _write(client, batch)
            batch = []
    if batch:
        _write(client, batch)


def _write(client: redis.Redis, commands: list[tuple[Any, ...]]) -> None:
    with raw.connection(client) as conn:
        conn.send_packed_command(resp.pack(commands))
        for _ in commands:
            reply = conn.read_response()
            if isinstance(reply, Exception):
                raise reply


def check_loader(url: str, n: int = 300) -> None:
    """The raw loader writes what redisca writes (guard counters aside), with the same
    ids: the query phase measures redisca's layout."""
    client = servers.client(url)
    try:
        client.flushall()
        with Session(client) as session:
            objs = list(Items().take(n))
            session.add_all(objs)
            session.commit()
            ids: list[str] = []
            for o in objs:
                assert o.id is not None  # committed: every item has its id
                ids.append(o.id)
        mine = _data(client)
        client.flushall()
        load_raw(client, Items().values(n), iter(ids))
        theirs = _data(client)
        if mine != theirs:
            diff = sorted(mine ^ theirs, key=repr)[:6]
            raise AssertionError(f"the raw loader writes other data than redisca: {diff}")
    finally:
        client.flushall()
        client.close()


def _data(client: redis.Redis) -> frozenset[Any]:
    return frozenset(kv for kv in runner.dump(client) if not kv[0].startswith(b"{itm}#g:"))


def check(client: redis.Redis, items: Items) -> None:
    """redisca reads back what was loaded: every item counted, the rare ones found, the
    first in order the smallest ``i`` written."""
    with Session(client) as session:
        q = session.query(Item)
        total = q.count()
        assert total == items.made, f"redisca counts {total} items, {items.made} were loaded"
        rare = q.filter(It.s == "rare").count()
        assert rare == RARE, f"{rare} rare items, expected {RARE}"
        first = q.order_by(It.i).first()
        assert first is not None and first.i == items.min_i, "order_by(i) starts elsewhere"


def _keyset(q: Query[Any], last: Any) -> Query[Any]:
    """``after()``: keyset pagination from an entity (the query engine's addition)."""
    return q.after(last)


def shapes(n: int, rnd: random.Random) -> dict[str, Callable[[Session, Any], Any]]:
    """Each shape: a function of a session (and the entity keyset pagination starts
    after) that runs one query the way an application would."""
    width = A_WINDOW * SPREAD // n
    deep = deep_offset(n)

    def two_ranges(s: Session, _: Any) -> Any:
        low = rnd.randrange(SPREAD - width)
        return s.query(Item).filter(It.a.between(low, low + width), It.b < 100).all()

    def paginate(s: Session, _: Any) -> Any:
        # What redisca.flask.paginate sends for page 50: the count, then the page.
        whole = s.query(Item).order_by(It.i)
        whole.count()
        return whole.offset((PAGE - 1) * PER_PAGE).limit(PER_PAGE).all()

    out: dict[str, Callable[[Session, Any], Any]] = {
        "query(M).limit(10)": lambda s, _: s.query(Item).limit(10).all(),
        "order_by(i).limit(10)": lambda s, _: s.query(Item).order_by(It.i).limit(10).all(),
        "s == rare, order_by(i).limit(10)": lambda s, _: (
            s.query(Item).filter(It.s == "rare").order_by(It.i).limit(10).all()
        ),
        "a between, b < 100 (~5 ids)": two_ranges,
        "count()": lambda s, _: s.query(Item).count(),
        f"paginate page {PAGE} (count + {PER_PAGE})": paginate,
        f"order_by(i).offset({deep:,}).limit(10)": lambda s, _: (
            s.query(Item).order_by(It.i).offset(deep).limit(10).all()
        ),
    }
    if hasattr(Query, "after"):
        out[f"order_by(i).after(#{deep:,}).limit(10)"] = lambda s, last: (
            _keyset(s.query(Item).order_by(It.i), last).limit(10).all()
        )
    return out


def deep_offset(n: int) -> int:
    """The deep-ish offset: 5,000, or half the items of a smaller (quick) run."""
    return min(DEEP_OFFSET, n // 2)


def _slowlog_usec(client: redis.Redis) -> tuple[int, int]:
    """The logged commands' summed duration (µs) and how many there were."""
    entries = client.slowlog_get(10_000)
    total = count = 0
    for entry in entries:
        command = entry["command"]
        name = command.split()[0] if command else b""
        if isinstance(name, str):
            name = name.encode()
        if name.upper() in (b"SLOWLOG", b"CONFIG"):
            continue
        total += int(entry["duration"])
        count += 1
    return total, count


def measure(url: str, n: int, rnd: random.Random) -> dict[str, Any]:
    """Each shape's server time (SLOWLOG), wall time and round trips per query."""
    admin = servers.client(url)
    client, counter = counting_client(url)
    old = admin.config_get("slowlog-*")
    admin.config_set("slowlog-max-len", 10_000)
    admin.config_set("slowlog-log-slower-than", 0)
    out: dict[str, Any] = {}
    try:
        last = None
        try:
            with Session(client) as session:
                item = session.query(Item).order_by(It.i).offset(deep_offset(n) - 1).first()
                last = None if item is None else item.id
        except redis.RedisError as exc:  # a query engine slower than the client's timeout
            out["(the keyset's start)"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        for name, run in shapes(n, rnd).items():
            if last is None and ".after(" in name:
                continue
            try:
                out[name] = _repeat(admin, client, counter, run, last)
            except Exception as exc:  # recorded: a timeout is a figure too
                out[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        for key, value in old.items():
            assert key is not None and value is not None  # CONFIG GET's names and values
            admin.config_set(key, value)
        client.close()
        admin.close()
    return out


def _repeat(
    admin: redis.Redis, client: redis.Redis, counter: Counter, run: Any, last: Any
) -> dict[str, Any]:
    server, wall, commands, results = [], [], [], []
    with Session(client) as session:
        run(session, last)  # warm-up: scripts loaded, connections made
        started = time.perf_counter()
        for rep in range(REPEATS):
            session.expunge_all()
            admin.slowlog_reset()
            counter.reset()
            start = time.perf_counter()
            got = run(session, last)
            wall.append(time.perf_counter() - start)
            results.append(len(got) if isinstance(got, list) else int(got))
            trips = counter.round_trips
            usec, logged = _slowlog_usec(admin)
            server.append(usec)
            commands.append(logged)
            if rep >= 2 and time.perf_counter() - started > SHAPE_SECONDS:
                break
    return {
        "server_us": statistics.median(server),
        "server_us_max": max(server),
        "wall_ms": 1e3 * statistics.median(wall),
        "round_trips": trips,
        "commands": statistics.median(commands),
        "runs": len(server),
        # What the query returned: rows loaded (the page), or the count.
        "results": statistics.median(results),
    }


def phase(
    url: str, sizes: tuple[int, ...], log: Callable[[str], None], how: str = "raw"
) -> dict[str, Any]:
    """Load the items level by level; at each size check them and measure every shape."""
    if how == "raw":
        check_loader(url)
    client = servers.client(url)
    client.flushall()
    items = Items()
    rnd = random.Random(11)
    out: dict[str, Any] = {}
    try:
        for n in sorted(sizes):
            log(f"query phase: loading to {n:,} items")
            loaded = load(client, items, n - items.made, how)
            check(client, items)
            log(f"query phase: measuring at {n:,} items")
            out[str(n)] = {"load": loaded, "shapes": measure(url, n, rnd)}
    finally:
        # In the background: a synchronous FLUSHALL of a million items takes seconds.
        client.flushall(asynchronous=True)
        client.close()
    return out

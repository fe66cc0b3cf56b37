"""Expiry soak: short-lived entities with unique values, readers, a sweeper, all at once.

Two writer processes create entities that live 0.1 to 0.5 s, each with an email from
a pool of twelve (unique, so most claims meet a holder), a color (equality index) and a
rank (range index); now and then a writer re-creates one of its own ids whose last
incarnation has expired. Each creation records its serial (a field no two creations
share) and its expiry instant as the session learnt it from the commit. A reader
process runs queries (equality, order and limit, the unique lookup, ``count()``) and
records, with the server's clock read *before* each query, the serials it got back. A
sweeper process sweeps all the while. Everything is on the server's clock (``TIME``),
the clock redisca's instants use.

Afterwards: no query ever returned a serial whose instant had passed before the query
started (no ghost); every refused claim was refused for an owner with an incarnation
alive at the time (no value blocked by an expired holder); and once every instant has
passed and a last sweep ran, no key of the model is left but its guard counters, and
``check`` is clean.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections import Counter
from typing import Any

import attrs
import pytest
import redis
from helpers import CLUSTER, connect

import redisca
from redisca import Email, Integer, Registry, Session, String, UniqueViolation
from redisca.maintenance import check as maintenance_check
from redisca.maintenance import sweep as maintenance_sweep

registry = Registry()
GROUP = "xsoak" if CLUSTER else None

SECONDS = float(os.environ.get("REDISCA_SOAK_SECONDS", "8"))
EMAILS = [f"e{n}@x" for n in range(12)]
COLORS = ["red", "green", "blue"]


@registry.mapped(prefix="xs", ttl=0.3, slot_group=GROUP)
@attrs.define
class Token:
    serial: str
    email: str | None = Email(unique=True, default=None)
    color: str | None = String(index=True, default=None)
    rank: int | None = Integer(index=True, default=None)
    id: str | None = None


@registry.mapped(prefix="xsh", ttl=0.3, shards=8, scored_indexes=True)
@attrs.define
class Sharded:
    """The same over 8 shards: each shard keeps its own instants, and a claim lives in
    its value's shard (on a cluster, claimed and released with the claim protocol). Its
    equality indexes are sorted sets scored by the instants (the other layout)."""

    serial: str
    email: str | None = Email(unique=True, default=None)
    color: str | None = String(index=True, default=None)
    rank: int | None = Integer(index=True, default=None)
    id: str | None = None


MODELS = {"one shard": Token, "8 shards": Sharded}


def now_ms(raw: redis.Redis) -> int:
    seconds, micros = raw.time()
    return int(seconds) * 1000 + int(micros) // 1000


def instant_ms(obj: Any) -> int:
    expires_at = redisca.inspect(obj).expires_at
    assert expires_at is not None
    return round(expires_at.timestamp() * 1000)


def _writer(url: str, name: str, worker: int, start: Any, out: Any) -> None:
    Token = MODELS[name]
    rng = random.Random(worker)
    client = connect(url)
    created: list[tuple[str, str, int]] = []  # (serial, id, instant)
    blocked: list[tuple[str, str | None, int]] = []  # (email, owner id, server ms before)
    tally: Counter[str] = Counter()
    latest: dict[str, int] = {}  # id -> the instant of its last incarnation
    start.wait()
    deadline = time.monotonic() + SECONDS
    n = 0
    while time.monotonic() < deadline:
        n += 1
        serial = f"{worker}-{n}"
        ident = f"w{worker}-{n}"
        passed = now_ms(client) - 50
        gone = [i for i, at in latest.items() if at < passed]
        if gone and rng.random() < 0.2:
            ident = rng.choice(gone)  # its last incarnation expired: created again
        email = rng.choice(EMAILS)
        with Session(client) as s:
            obj = Token(serial, email, rng.choice(COLORS), rng.randrange(100), id=ident)
            s.add(obj)
            s.expire(obj, rng.uniform(0.1, 0.5))
            before = now_ms(client)
            try:
                s.commit()
            except UniqueViolation as exc:
                blocked.append((email, exc.owner, before))
                tally["blocked"] += 1
                s.rollback()
                continue
            created.append((serial, ident, instant_ms(obj)))
            tally["recreate"] += ident in latest
            latest[ident] = created[-1][2]
            tally["created"] += 1
    out.put(("writer", created, blocked, tally))
    client.close()


def _reader(url: str, name: str, start: Any, out: Any) -> None:
    Token = MODELS[name]
    rng = random.Random(99)
    client = connect(url)
    seen: list[tuple[int, list[str]]] = []
    counts: list[int] = []
    start.wait()
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        with Session(client) as s:
            before = now_ms(client)
            shape = rng.randrange(4)
            if shape == 0:
                found = s.query(Token).filter(Token.color == rng.choice(COLORS)).all()
            elif shape == 1:
                found = s.query(Token).order_by(Token.rank).limit(10).all()
            elif shape == 2:
                one = s.query(Token).filter(Token.email == rng.choice(EMAILS)).first()
                found = [] if one is None else [one]
            else:
                counts.append(s.query(Token).filter(Token.email == rng.choice(EMAILS)).count())
                found = []
            seen.append((before, [obj.serial for obj in found]))
    out.put(("reader", seen, counts))
    client.close()


def _sweeper(url: str, name: str, start: Any, out: Any) -> None:
    Token = MODELS[name]
    client = connect(url)
    runs = 0
    start.wait()
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        maintenance_sweep([Token], client)
        runs += 1
        time.sleep(0.05)
    out.put(("sweeper", runs))
    client.close()


def reported(body: Any) -> Any:
    """A process's body whose failure reaches the test at once, as a row of its own."""

    def run(*args: Any) -> None:
        out = args[-1]
        try:
            body(*args)
        except BaseException as exc:
            out.put(("error", repr(exc)))

    return run


def writer(url: str, name: str, worker: int, start: Any, out: Any) -> None:
    reported(_writer)(url, name, worker, start, out)


def reader(url: str, name: str, start: Any, out: Any) -> None:
    reported(_reader)(url, name, start, out)


def sweeper(url: str, name: str, start: Any, out: Any) -> None:
    reported(_sweeper)(url, name, start, out)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_expiry_soak_no_ghost_no_blocked_value_check_clean(redis_url: str, name: str) -> None:
    Token = MODELS[name]
    raw = connect(redis_url)
    raw.flushall()
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    processes = [
        context.Process(target=writer, args=(redis_url, name, 0, start, out)),
        context.Process(target=writer, args=(redis_url, name, 1, start, out)),
        context.Process(target=reader, args=(redis_url, name, start, out)),
        context.Process(target=sweeper, args=(redis_url, name, start, out)),
    ]
    for process in processes:
        process.start()
    start.set()
    try:
        results = [out.get(timeout=SECONDS + 120) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=60)
    assert [row for row in results if row[0] == "error"] == []
    assert [p.exitcode for p in processes] == [0] * len(processes)

    instants: dict[str, int] = {}
    lives: dict[str, list[int]] = {}
    blocked: list[tuple[str, str | None, int]] = []
    tally: Counter[str] = Counter()
    seen: list[tuple[int, list[str]]] = []
    counts: list[int] = []
    sweeps = 0
    for row in results:
        if row[0] == "writer":
            for serial, ident, instant in row[1]:
                instants[serial] = instant
                lives.setdefault(ident, []).append(instant)
            blocked += row[2]
            tally.update(row[3])
        elif row[0] == "reader":
            seen, counts = row[1], row[2]
        else:
            sweeps = row[1]

    ghosts = [
        (before, serial, instants.get(serial))
        for before, serials in seen
        for serial in serials
        if serial not in instants or instants[serial] <= before
    ]
    assert ghosts == []
    held_by_expired = [
        (email, owner, before)
        for email, owner, before in blocked
        if not any(instant > before for instant in lives.get(owner or "", []))
    ]
    assert held_by_expired == []
    assert set(counts) <= {0, 1}
    assert tally["created"] > 20 and tally["blocked"] > 0 and tally["recreate"] > 0, tally

    # Every instant passes; a last sweep leaves nothing but the guard counters.
    time.sleep(max(0.0, (max(instants.values()) - now_ms(raw)) / 1000) + 0.05)
    maintenance_sweep([Token], raw)
    left = [
        k
        for layout in redisca.inspect(Token).shard_layouts()
        for k in raw.scan_iter(match=layout.pattern)
        if layout.parse(k).kind != "guard"
    ]
    assert left == []
    report = maintenance_check([Token], raw)
    assert report.ok, report.problems
    returned = sum(len(serials) for _, serials in seen)
    print(
        f"\nexpiry soak ({name}): {tally['created']} created "
        f"({tally['recreate']} ids created again), "
        f"{tally['blocked']} claims refused by live holders, {len(seen)} queries returned "
        f"{returned} entities and no ghost, {sweeps} sweeps"
    )
    raw.flushall()
    raw.close()

"""The expiry phase: what expired entities not yet swept cost queries, what expiry costs
in memory, and how fast a sweep removes the leftovers; for each layout of an expiring
model's equality indexes (sets, the default, and ``scored_indexes=True``).

Per layout, two expiring models hold the same N entities (a unique ``code``, an
eq-indexed ``kind`` of 10 values, an eq-indexed ``owner`` of 3 entities a value, a
range-indexed ``rank``, an indexed ``Set`` of tags): in ``live`` every entity's instant
is an hour ahead, in ``half`` every other one's is long past (written by a raw ``ZADD`` of
``H#exp``, and of the scores of the equality entries where they are scored, as a sweep
finds them after their TTL ran out). Each query shape runs on both, and the ratio is
half's time over live's (client wall time, the median of the repetitions): the price a
query pays for the expired entities it must skip. Then ``redisca.maintenance.sweep``
removes each half's expired entities: entities per second, and the keys left checked
against what the live half should leave.

Memory, measured first: the same N entities loaded alone into the emptied server, in the
model without expiry and in the expiring one of each layout. What an entity costs in
each (``INFO used_memory`` before and after the load), and what each equality index and
``H#exp`` cost (``MEMORY USAGE ... SAMPLES 0`` of their keys; ``used_memory`` around
the instants' write too, since Redis 7.0's ``MEMORY USAGE`` counts a sorted-set entry's
dict entry as 24 bytes where the allocator gives it 32), show what expiry adds per entity
against the one sorted-set entry (``H#exp``'s) it may add. ``kind``'s values hold
more entities than a sorted set keeps compact (``zset-max-listpack-entries``, 128 by
default) and ``owner``'s fewer: the two cases of what scoring an equality index costs.

"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, cast

import attrs
import redis

import redisca
from redisca import Integer, Registry, Session, Set, String
from redisca.maintenance import sweep

#: Repetitions per shape (a count reads every id: fewer).
REPEATS = {"limit 10": 200, "eq + limit 10": 200, "count": 20, "eq count": 20}
KINDS = 10
#: Entities per value of ``owner``: few, as for tokens of one user.
PER_OWNER = 3
#: The equality-indexed fields, and the value of each for entity i.
EQ_FIELDS: dict[str, Callable[[int], str]] = {
    "kind": lambda i: f"k{i % KINDS}",
    "owner": lambda i: f"o{i // PER_OWNER}",
}
#: One hour ahead, and one second after the epoch (ms).
AHEAD_MS = 3_600_000
PAST_MS = 1_000


#: The layouts of an expiring model's equality indexes, by the suffix of their figures'
#: keys (``queries``, ``sweep``, ``memory["expiring"]`` for the default), with their
#: ``mapped(scored_indexes=...)`` and a label.
LAYOUTS = {"": (False, "sets"), "_scored": (True, "scored_indexes=True")}


def model(prefix: str, expiring: bool = True, scored: bool = False) -> type:
    registry = Registry()

    @registry.mapped(prefix=prefix, expiring=expiring, scored_indexes=scored)
    @attrs.define
    class Token:
        code: str = String(unique=True)
        kind: str = String(index=True)
        owner: str = String(index=True)
        rank: int = Integer(index=True)
        tags: set[str] = Set(str, index=True)
        id: str | None = None

    return Token


def load(client: redis.Redis, cls: type, n: int, expired: Callable[[int], bool] | None) -> float:
    """The entities, then (``expired`` given) their instants (:func:`write_instants`); the
    seconds it took."""
    started = time.perf_counter()
    with Session(client) as s:
        s.bulk_add(
            cls(
                code=f"c{i}",
                **{name: value(i) for name, value in EQ_FIELDS.items()},
                rank=i,
                tags={f"t{i % 7}"},
                id=f"{i:07d}",
            )
            for i in range(n)
        )
    if expired is not None:
        write_instants(client, cls, n, expired)
    return time.perf_counter() - started


def write_instants(client: redis.Redis, cls: type, n: int, expired: Callable[[int], bool]) -> None:
    """The entities' instants, by a raw ``ZADD`` (which can put them in the past), in
    ``H#exp`` and, on a scored model, as the scores of its equality index entries, as a
    commit of ``session.expire`` writes them."""
    now_ms = int(client.time()[0]) * 1000
    mapper = redisca.inspect(cls)
    layout = mapper.layout
    scored = [f for f in mapper.fields if f.scored]
    key = layout.expiry
    pipe = client.pipeline(transaction=False)
    for start in range(0, n, 5_000):
        scores = {
            f"{i:07d}": PAST_MS if expired(i) else now_ms + AHEAD_MS
            for i in range(start, min(n, start + 5_000))
        }
        pipe.zadd(key, scores)
        by_key: dict[bytes, dict[str, int]] = {}
        for i in range(start, min(n, start + 5_000)):
            for field in scored:
                value = EQ_FIELDS[field.name]
                eq = layout.eq_index(field.hash_field, value(i).encode())
                by_key.setdefault(eq, {})[f"{i:07d}"] = scores[f"{i:07d}"]
        for eq, pairs in by_key.items():
            pipe.zadd(eq, pairs)
        pipe.execute()


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def key_bytes(client: redis.Redis, keys: list[bytes]) -> int:
    """What ``MEMORY USAGE`` counts for the keys, every element of each (``SAMPLES 0``)."""
    total = 0
    for start in range(0, len(keys), 1_000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 1_000]:
            pipe.memory_usage(key, samples=0)
        total += sum(int(b or 0) for b in pipe.execute())
    return total


def measure(
    client: redis.Redis, cls: type, n: int, expired: Callable[[int], bool] | None
) -> dict[str, float]:
    """Bytes per entity of ``cls`` loaded alone into an empty server (so that neither
    model pays for the keyspace's growth more than the other), then of its indexes; and
    of an expiring model, what writing the instants added (``H#exp used``: all of it is
    ``H#exp`` unless the equality entries are scored, whose rescoring adds nothing)."""
    flush_now(client)
    before = used_memory(client)
    load(client, cls, n, None)
    loaded = used_memory(client)
    if expired is not None:
        write_instants(client, cls, n, expired)
    after = used_memory(client)
    out = {"entity": (after - before) / n, **index_bytes(client, cls, n)}
    if expired is not None:
        out["H#exp used"] = (after - loaded) / n
    flush_now(client)
    return out


def flush_now(client: redis.Redis) -> None:
    """``FLUSHALL SYNC``: a server that frees a flush in the background (Valkey) would
    still count its remains in the next ``used_memory``."""
    cast(Any, client).execute_command("FLUSHALL", "SYNC")


def index_bytes(client: redis.Redis, cls: type, n: int) -> dict[str, float]:
    """Bytes per entity of each equality index of ``cls`` (and of ``H#exp`` when the
    model expires)."""
    mapper = redisca.inspect(cls)
    layout = mapper.layout
    out = {
        name: key_bytes(
            client,
            sorted({layout.eq_index(name.encode(), value(i).encode()) for i in range(n)}),
        )
        / n
        for name, value in EQ_FIELDS.items()
    }
    if mapper.expiring:
        out["H#exp"] = key_bytes(client, [layout.expiry]) / n
    return out


def shapes(cls: Any) -> dict[str, Callable[[Session], Any]]:
    return {
        "limit 10": lambda s: len(s.query(cls).limit(10).all()),
        "eq + limit 10": lambda s: len(s.query(cls).filter(cls.kind == "k3").limit(10).all()),
        "count": lambda s: s.query(cls).count(),
        "eq count": lambda s: s.query(cls).filter(cls.kind == "k3").count(),
    }


def timed(client: redis.Redis, mine: type, base: type) -> dict[str, dict[str, Any]]:
    """Per shape: the median µs and what the query returned (rows or the count), on
    ``mine`` and ``base`` in turn, so that neither gets the quieter moments."""
    out = {}
    for name in REPEATS:
        runs = {"mine": shapes(mine)[name], "base": shapes(base)[name]}
        times: dict[str, list[float]] = {"mine": [], "base": []}
        results: dict[str, Any] = {}
        for side, run in runs.items():
            with Session(client) as s:
                results[side] = run(s)  # untimed: the server learns the scripts
        for _ in range(REPEATS[name]):
            for side, run in runs.items():
                with Session(client) as s:
                    began = time.perf_counter()
                    run(s)
                    times[side].append(time.perf_counter() - began)
        mine_us, base_us = (statistics.median(times[k]) * 1e6 for k in ("mine", "base"))
        out[name] = {
            "live_us": base_us,
            "half_expired_us": mine_us,
            "ratio": mine_us / base_us,
            "live_result": results["base"],
            "half_expired_result": results["mine"],
        }
    return out


def phase(url: str, n: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The figures of each layout (:data:`LAYOUTS`): ``queries``, ``sweep`` and
    ``memory["expiring"]`` (sets, the default), the same keys with ``_scored``; and
    ``memory["plain"]``, the model without expiry."""
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
        log(f"expiry phase: memory of {n:,} entities, with expiry and without")
        memory = {"plain": measure(client, model("exn", expiring=False), n, None)}
        out: dict[str, Any] = {"n": n, "load_seconds": 0.0, "memory": memory}
        for suffix, (scored, name) in LAYOUTS.items():
            # Prefixes of one length: a longer key name can cost each key 8 bytes more
            # (an allocator size class), which would be taken for expiry's.
            first = "ey" if scored else "ex"
            live, half = model(f"{first}l", scored=scored), model(f"{first}h", scored=scored)
            memory["expiring" + suffix] = measure(client, live, n, lambda i: False)
            log(f"expiry phase ({name}): loading 2 x {n:,} entities")
            out["load_seconds"] += load(client, live, n, lambda i: False)
            out["load_seconds"] += load(client, half, n, lambda i: i % 2 == 0)
            log(f"expiry phase ({name}): queries")
            out["queries" + suffix] = timed(client, half, live)
            log(f"expiry phase ({name}): sweeping {n - n // 2:,} expired entities")
            out["sweep" + suffix] = swept(client, half, n)
            flush_now(client)
        return out
    finally:
        client.flushall()
        client.close()


def swept(client: redis.Redis, half: type, n: int) -> dict[str, Any]:
    """Sweeps ``half``'s expired entities; the rate, and whether the live half is left."""
    report = sweep([half], client, batch=500)
    [done] = report.models
    left = int(client.zcard(redisca.inspect(half).layout.expiry))
    return {
        "removed": done.removed,
        "skipped": done.skipped,
        "batches": done.batches,
        "seconds": done.seconds,
        "per_s": done.per_second,
        "left_in_expiry": left,
        "ok": report.ok and done.removed == n - n // 2 and left == n // 2,
    }


def render(figures: dict[str, Any], table: Callable[[list[str], list[list[str]]], str]) -> str:
    """One table of queries and sweep per layout measured, then the memory table (runs
    saved before a layout or the memory were measured have none of it)."""
    header = ["query", "live µs", "half expired µs", "x", "results: live / half expired"]
    out = []
    for suffix, (_, layout) in LAYOUTS.items():
        if "queries" + suffix not in figures:
            continue
        rows = [
            [
                f"{name} ({layout})",
                f"{q['live_us']:,.0f}",
                f"{q['half_expired_us']:,.0f}",
                f"{q['ratio']:.2f}",
                f"{q['live_result']:,} / {q['half_expired_result']:,}",
            ]
            for name, q in figures["queries" + suffix].items()
        ]
        s = figures["sweep" + suffix]
        rows.append(
            [
                f"sweep ({layout})",
                "",
                f"{s['seconds'] * 1e6 / max(1, s['removed']):,.1f} /entity",
                "",
                f"{s['removed']:,} removed, {s['per_s']:,.0f}/s ({'ok' if s['ok'] else 'WRONG'})",
            ]
        )
        out.append(table(header, rows))
    if "memory" in figures:
        out.append(render_memory(figures["memory"], table))
    return "\n\n".join(out)


def render_memory(
    memory: dict[str, dict[str, float]], table: Callable[[list[str], list[list[str]]], str]
) -> str:
    """Bytes per entity, each expiring layout against the same model without expiry,
    with what it adds (the issue allows one ``H#exp`` entry)."""
    plain = memory["plain"]
    sides = [(s, memory["expiring" + s]) for s in LAYOUTS if "expiring" + s in memory]

    def used_row(suffix: str, exp: dict[str, float]) -> str:
        return f"{exp['H#exp used']:,.1f}" if not suffix and "H#exp used" in exp else ""

    def row(label: str, key: str) -> list[str]:
        cells = [label, f"{plain[key]:,.1f}"]
        for _, exp in sides:
            cells += [f"{exp[key]:,.1f}", f"{exp[key] - plain[key]:+,.1f}"]
        return cells

    rows = [
        row(f"equality index kind ({KINDS} values)", "kind"),
        row(f"equality index owner ({PER_OWNER} a value)", "owner"),
        ["H#exp entry (MEMORY USAGE)", ""]
        + [c for _, exp in sides for c in (f"{exp['H#exp']:,.1f}", "")],
        # Of the sets layout only: a scored model's instants rewrite its entries too.
        ["H#exp entry (used_memory)", ""] + [c for k, exp in sides for c in (used_row(k, exp), "")],
        row("entity, all keys (used_memory)", "entity"),
    ]
    header = ["bytes per entity", "no expiry"]
    for suffix, _ in sides:
        header += [f"expiring ({LAYOUTS[suffix][1]})", "added"]
    return table(header, rows)


__all__ = ["phase", "render"]

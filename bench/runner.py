"""Runs the phases on one server: the three sides alternating, then a memory pass.

Sides: ``redisca``; ``same-work``, hand-written redis-py code sending the commands redisca
sends (:mod:`bench.raw`); ``floor``, the plain pipeline anyone writes by hand
(:mod:`bench.floor`).
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import redis

from redisca.embedded import EmbeddedServer

from . import raw, servers
from .counting import Counter, counting_client
from .floor import FloorSide
from .model import DataSet, dataset
from .orm import OrmSide
from .raw import RawSide

PHASES = ("insert", "get", "find", "range", "update_plain", "update_indexed", "delete")
#: What one operation is, per phase.
UNITS = {
    "insert": "user",
    "get": "user",
    "find": "lookup",
    "range": "query",
    "update_plain": "user",
    "update_indexed": "user",
    "delete": "user",
}
SIDES: dict[str, Callable[[redis.Redis, DataSet], Any]] = {
    "redisca": OrmSide,
    "same-work": RawSide,
    "floor": FloorSide,
}


def _needed(phases: tuple[str, ...]) -> tuple[str, ...]:
    """The phases to run: the chosen ones and what they build on (insert, get)."""
    needed = set(phases) | {"insert"}
    if needed & {"update_plain", "update_indexed", "delete"}:
        needed.add("get")
    return tuple(p for p in PHASES if p in needed)


#: Key kinds of the memory breakdown, by prefix (the longest first).
KINDS = (
    (b"{usr}:", "user hashes"),
    (b"{usr}#all", "all-ids index"),
    (b"{usr}#r:", "range indexes"),
    (b"{usr}#i:", "eq indexes"),
    (b"{usr}#u:", "unique index"),
    (b"{usr}#g:", "guard stripes"),
    (b"{usr}#", "other usr# keys"),
    (b"", "companies and the rest"),
)


def kind_of(key: bytes) -> str:
    return next(name for prefix, name in KINDS if key.startswith(prefix))


def memory_by_kind(client: redis.Redis) -> dict[str, int]:
    """``MEMORY USAGE … SAMPLES 0`` of every key, summed by kind (:data:`KINDS`).

    Not ``INFO memory``'s ``used_memory``, which also counts client buffers and the
    keyspace's hash table (it grows by doubling: at N = 1,000 two identical data sets
    could differ by 10 %). This sum is the same for the same data.
    """
    totals: dict[str, int] = {}
    keys: list[bytes] = []

    def flush() -> None:
        for key, size in zip(keys, _usage(client, keys), strict=True):
            kind = kind_of(key)
            totals[kind] = totals.get(kind, 0) + size
        keys.clear()

    for key in client.scan_iter(count=1000):
        keys.append(key)
        if len(keys) == 10_000:
            flush()
    flush()
    return totals


def _usage(client: redis.Redis, keys: list[bytes]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return [int(x or 0) for x in pipe.execute()]


def server_cpu(client: redis.Redis) -> float:
    """The server process's CPU seconds so far (``INFO cpu``). Not ``INFO commandstats``:
    Redis 7.0 counts a command run inside ``MULTI``/``EXEC`` or a script twice there."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _run_phase(side: Any, phase: str, ids: list[str] | None) -> int:
    if phase == "insert" and ids is not None:
        return int(side.insert(ids=ids))
    return int(getattr(side, phase)())


def _sequence(
    side: Any,
    client: redis.Redis,
    counter: Counter | None,
    phases: tuple[str, ...],
    ids: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """One side's phases in order, on an empty server; seconds (and counts, given a
    counter) per phase. A phase that raises ends the sequence, its error recorded."""
    client.flushall()
    side.setup()
    out: dict[str, dict[str, Any]] = {}
    for phase in _needed(phases):
        gc.collect()
        # Memory is measured in the counting round only: MEMORY USAGE of every key
        # takes seconds at N = 100,000.
        measure = phase == "insert" and counter is not None
        if measure:
            before, keys = memory_by_kind(client), client.dbsize()
        server = server_cpu(client)
        if counter is not None:
            counter.reset()
        cpu = time.process_time()
        start = time.perf_counter()
        try:
            ops = _run_phase(side, phase, ids)
        except Exception as exc:  # recorded, the run goes on
            out[phase] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            break
        seconds = time.perf_counter() - start
        counts = (counter.round_trips, counter.commands) if counter is not None else None
        result: dict[str, Any] = {
            "ops": ops,
            "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu,
            # The server process's CPU time (one INFO included: a few µs).
            "server_seconds": server_cpu(client) - server,
        }
        if counts is not None:  # what the phase sent, before INFO and MEMORY USAGE
            result["round_trips"], result["commands"] = counts
        if measure:
            after = memory_by_kind(client)
            growth = {k: (v - before.get(k, 0)) / ops for k, v in after.items()}
            result["redis_bytes_by_kind"] = {k: v for k, v in growth.items() if v}
            result["redis_bytes_per_entity"] = sum(growth.values())
            result["redis_keys_per_entity"] = (client.dbsize() - keys) / ops
        out[phase] = result
    client.flushall()
    return out


def _counted(server: EmbeddedServer, data: DataSet, phases: tuple[str, ...]) -> dict[str, Any]:
    """Each side's round trips, commands and Redis memory per phase, from a round of their
    own (the baselines write redisca's ids, so memory compares like for like).

    Counting reads every write's RESP, which costs time the timed rounds must not
    carry; this round also warms up every side (imports, the server's first keys).
    """
    client, counter = counting_client(server.url, socket_timeout=servers.SOCKET_TIMEOUT)
    out: dict[str, Any] = {}
    try:
        ids: list[str] | None = None
        for name, make in SIDES.items():
            side = make(client, data)
            out[name] = _sequence(side, client, counter, phases, ids)
            if name == "redisca" and "error" not in out[name].get("insert", {}):
                ids = side.ids
            servers.recover(server)
    finally:
        client.close()
    return out


def timed(server: EmbeddedServer, n: int, phases: tuple[str, ...], rounds: int) -> dict[str, Any]:
    """Every side ``rounds`` times, rotating which goes first; the best time counts.

    A side that fails a phase (a timeout on a server stuck in a huge ``WATCH``) runs no
    more rounds; its error is reported instead of a time.
    """
    data = dataset(n)
    counts = _counted(server, data, phases)
    client = servers.client(server.url)
    runs: dict[str, list[dict[str, dict[str, Any]]]] = {name: [] for name in SIDES}
    failed: set[str] = {name for name, seq in counts.items() if _error(seq)}
    try:
        names = list(SIDES)
        for round_ in range(rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                if name in failed:
                    continue
                side = SIDES[name](client, data)
                seq = _sequence(side, client, None, phases)
                runs[name].append(seq)
                if _error(seq):
                    failed.add(name)
                    servers.recover(server)
                del side
    finally:
        client.close()
    return {name: _summary(runs[name], counts[name], phases) for name in SIDES}


#: The async column's sides (:mod:`bench.asyncsides`).
ASYNC_SIDES = ("async redisca", "async floor")


def async_timed(
    server: EmbeddedServer, n: int, phases: tuple[str, ...], rounds: int
) -> dict[str, Any]:
    """The async column: ``AsyncSession`` against the floor on ``redis.asyncio``, each
    ``rounds`` times alternating, the best time per phase (µs per operation)."""
    from .asyncsides import AsyncFloorSide, AsyncOrmSide

    makers = {"async redisca": AsyncOrmSide, "async floor": AsyncFloorSide}
    data = dataset(n)
    client = servers.client(server.url)
    runs: dict[str, list[dict[str, dict[str, Any]]]] = {name: [] for name in ASYNC_SIDES}
    try:
        for round_ in range(rounds + 1):  # the first round warms up, uncounted
            order = ASYNC_SIDES if round_ % 2 == 0 else ASYNC_SIDES[::-1]
            for name in order:
                side = makers[name](client, data)
                seq = _sequence(side, client, None, phases)
                if round_:
                    runs[name].append(seq)
                del side
                gc.collect()
    finally:
        client.close()
    out: dict[str, Any] = {}
    for name, seqs in runs.items():
        per_phase: dict[str, Any] = {}
        for phase in phases:
            samples = [q[phase] for q in seqs if phase in q and "error" not in q[phase]]
            if not samples:
                errors = [q[phase]["error"] for q in seqs if "error" in q.get(phase, {})]
                per_phase[phase] = {"error": errors[0] if errors else "not run"}
                continue
            ops = samples[-1]["ops"]
            seconds = min(x["seconds"] for x in samples)
            per_phase[phase] = {
                "ops": ops,
                "ops_per_s": ops / seconds,
                "us_per_op": 1e6 * seconds / ops,
                "cpu_us_per_op": 1e6 * min(x["cpu_seconds"] for x in samples) / ops,
            }
        out[name] = per_phase
    return out


def _error(seq: dict[str, dict[str, Any]]) -> str | None:
    for figures in seq.values():
        if "error" in figures:
            return str(figures["error"])
    return None


def _summary(
    seqs: list[dict[str, dict[str, Any]]], counted: dict[str, Any], phases: tuple[str, ...]
) -> dict[str, Any]:
    per_phase: dict[str, Any] = {}
    for phase in phases:
        samples = [s[phase] for s in seqs if phase in s and "error" not in s[phase]]
        if not samples or phase not in counted or "error" in counted[phase]:
            errors = [s[phase]["error"] for s in seqs if "error" in s.get(phase, {})]
            error = counted.get(phase, {}).get("error") or (errors[0] if errors else None)
            per_phase[phase] = {"error": error or "not run (an earlier phase failed)"}
            continue
        # The best round: the one least disturbed by the rest of the machine.
        seconds = min(s["seconds"] for s in samples)
        cpu = min(s["cpu_seconds"] for s in samples)
        server = min(s["server_seconds"] for s in samples)
        ops = samples[-1]["ops"]
        count = counted[phase]
        figures = {
            "ops": ops,
            "seconds": seconds,
            "ops_per_s": ops / seconds,
            "us_per_op": 1e6 * seconds / ops,
            # This process's CPU time: what the client costs, whatever else the
            # machine (or the server) is doing.
            "cpu_us_per_op": 1e6 * cpu / ops,
            # The server process's CPU time (INFO cpu).
            "server_us_per_op": 1e6 * server / ops,
            "round_trips": count["round_trips"],
            "commands_per_op": count["commands"] / count["ops"],
            "samples": [s["seconds"] for s in samples],
        }
        for key in ("redis_bytes_per_entity", "redis_keys_per_entity", "redis_bytes_by_kind"):
            if key in count:
                figures[key] = count[key]
        per_phase[phase] = figures
    return per_phase


def memory(url: str, n: int, phases: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Peak Python memory per phase (tracemalloc slows everything down: its own pass)."""
    client = servers.client(url)
    data = dataset(n)
    out: dict[str, dict[str, float]] = {}
    try:
        for name, make in SIDES.items():
            side = make(client, data)
            client.flushall()
            side.setup()
            peaks: dict[str, float] = {}
            tracemalloc.start()
            try:
                for phase in _needed(phases):
                    gc.collect()
                    tracemalloc.reset_peak()
                    current = tracemalloc.get_traced_memory()[0]
                    getattr(side, phase)()
                    peaks[phase] = tracemalloc.get_traced_memory()[1] - current
            finally:
                tracemalloc.stop()
            out[name] = peaks
            del side
            client.flushall()
    finally:
        client.close()
    return out


def verify(url: str, n: int = 200) -> None:
    """The same-work baseline leaves the same keyspace as redisca after each write phase,
    and the floor the same entity hashes, emails and ages (redisca's ids are given to
    both): the comparison is like for like."""
    client = servers.client(url)
    data = dataset(n)
    steps = ("insert", "get", "update_plain", "update_indexed", "delete")
    raw.detect(client)
    try:
        for upto in ("insert", "update_plain", "update_indexed", "delete"):
            orm = OrmSide(client, data)
            dumps = []
            for side in (orm, RawSide(client, data), FloorSide(client, data)):
                client.flushall()
                side.setup()
                for step in steps[: steps.index(upto) + 1]:
                    if not isinstance(side, OrmSide) and step == "insert":
                        side.insert(ids=orm.ids)
                    else:
                        getattr(side, step)()
                dumps.append(dump(client))
            _same(dumps[0], dumps[1], f"redisca and the same-work baseline differ after {upto}")
            _same(_floor_view(dumps[0]), dumps[2], f"redisca and the floor differ after {upto}")
    finally:
        client.flushall()
        client.close()


def _same(a: frozenset[Any], b: frozenset[Any], message: str) -> None:
    if a != b:
        diff = sorted(a ^ b, key=repr)[:6]
        raise AssertionError(f"{message}: {diff}")


def _floor_view(dump: frozenset[tuple[bytes, Any]]) -> frozenset[tuple[bytes, Any]]:
    """What the floor keeps, read from redisca's keyspace: the users' hashes (without the
    fields redisca keeps for itself), one hash of emails, the ages of users with one."""
    from .floor import AGE, EMAILS, ENTITY

    hashes: list[tuple[bytes, Any]] = []
    emails: set[tuple[Any, bytes]] = set()
    ages: set[tuple[bytes, float]] = set()
    for key, value in dump:
        if not key.startswith(ENTITY):
            continue
        fields = frozenset((f, v) for f, v in value if not f.startswith(b"#"))
        hashes.append((key, fields))
        ident = key[len(ENTITY) :]
        found = dict(fields)
        emails.add((found[b"eml"].lower(), ident))
        if b"age" in found:
            ages.add((ident, float(found[b"age"])))
    extra: list[tuple[bytes, Any]] = [(EMAILS, frozenset(emails))] if emails else []
    extra += [(AGE, frozenset(ages))] if ages else []
    return frozenset(hashes + extra)


def dump(client: redis.Redis) -> frozenset[tuple[bytes, Any]]:
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "hash":
            value: Any = frozenset(client.hgetall(key).items())
        elif kind == "set":
            value = frozenset(client.smembers(key))
        elif kind == "zset":
            value = frozenset(client.zrange(key, 0, -1, withscores=True))
        else:
            value = client.get(key)
        out.append((key, value))
    return frozenset(out)


def big_commit(url: str, n: int) -> dict[str, Any]:
    """One commit of ``n`` new users (a unique email each) on a client with redis-py's
    default settings (a 5 s socket timeout): it succeeds only if no step of the commit
    holds the server that long."""
    client = redis.Redis.from_url(url)
    side = OrmSide(client, dataset(n, lookups=1, queries=1))
    try:
        client.flushall()
        side.setup()
        start = time.perf_counter()
        try:
            side.insert()
        except Exception as exc:  # recorded: the figure is whether it fails
            return {"n": n, "error": f"{type(exc).__name__}: {exc}"[:300]}
        return {"n": n, "seconds": time.perf_counter() - start}
    finally:
        servers.recover_url(url)
        servers.client(url).flushall()
        client.close()

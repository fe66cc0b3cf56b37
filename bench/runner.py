"""Runs the phases: both sides alternating on one server, then a memory pass."""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import redis

from .counting import Counter, counting_client
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
SIDES: dict[str, Callable[[redis.Redis, DataSet], Any]] = {"redisca": OrmSide, "baseline": RawSide}


def _needed(phases: tuple[str, ...]) -> tuple[str, ...]:
    """The phases to run: the chosen ones and what they build on (insert, get)."""
    needed = set(phases) | {"insert"}
    if needed & {"update_plain", "update_indexed", "delete"}:
        needed.add("get")
    return tuple(p for p in PHASES if p in needed)


def _used_memory(client: redis.Redis) -> int:
    """The keys' memory: ``MEMORY USAGE … SAMPLES 0`` summed over every key.

    ``INFO memory``'s ``used_memory`` also counts client buffers and the keyspace's
    hash table, which grows by doubling: at N = 1,000 two identical data sets could
    differ by 10 %. This sum is the same for the same data.
    """
    keys = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(pipe.execute())


def _server_usec(client: redis.Redis) -> int:
    """The server's own time in commands so far (INFO commandstats), in µs."""
    stats = client.info("commandstats")
    return sum(int(v["usec"]) for k, v in stats.items() if k.startswith("cmdstat_"))


def _sequence(
    side: Any, client: redis.Redis, counter: Counter | None, phases: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """One side's phases in order, on an empty server; seconds (and counts, given a
    counter) per phase."""
    client.flushall()
    side.setup()
    out: dict[str, dict[str, float]] = {}
    for phase in _needed(phases):
        gc.collect()
        before = _used_memory(client) if phase == "insert" else 0
        server = _server_usec(client)
        if counter is not None:
            counter.reset()
        cpu = time.process_time()
        start = time.perf_counter()
        ops = getattr(side, phase)()
        seconds = time.perf_counter() - start
        counts = (counter.round_trips, counter.commands) if counter is not None else None
        result = {
            "ops": ops,
            "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu,
            # The server's time in commands (one INFO included: a few µs).
            "server_seconds": (_server_usec(client) - server) / 1e6,
        }
        if counts is not None:  # what the phase sent, before INFO and MEMORY USAGE
            result["round_trips"], result["commands"] = counts
        if phase == "insert":
            result["redis_bytes_per_entity"] = (_used_memory(client) - before) / ops
        out[phase] = result
    client.flushall()
    return out


def _counted(url: str, data: DataSet, phases: tuple[str, ...]) -> dict[str, Any]:
    """Each side's round trips and commands per phase, from a round of their own.

    Counting reads every write's RESP, which costs time the timed rounds must not
    carry; this round also warms up both sides (imports, the server's first keys).
    """
    client, counter = counting_client(url)
    try:
        return {
            name: _sequence(make(client, data), client, counter, phases)
            for name, make in SIDES.items()
        }
    finally:
        client.close()


def timed(url: str, n: int, phases: tuple[str, ...], rounds: int) -> dict[str, Any]:
    """Both sides ``rounds`` times, alternating which goes first; the best time counts."""
    data = dataset(n)
    counts = _counted(url, data, phases)
    client = redis.Redis.from_url(url)
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in SIDES}
    try:
        for round_ in range(rounds):
            order = list(SIDES) if round_ % 2 == 0 else list(reversed(SIDES))
            for name in order:
                side = SIDES[name](client, data)
                runs[name].append(_sequence(side, client, None, phases))
                del side
    finally:
        client.close()
    result: dict[str, Any] = {}
    for name, seqs in runs.items():
        per_phase: dict[str, Any] = {}
        for phase in phases:
            samples = [s[phase] for s in seqs]
            # The best round: the one least disturbed by the rest of the machine.
            seconds = min(s["seconds"] for s in samples)
            cpu = min(s["cpu_seconds"] for s in samples)
            server = min(s["server_seconds"] for s in samples)
            last = samples[-1]
            counted = counts[name][phase]
            per_phase[phase] = {
                "ops": last["ops"],
                "seconds": seconds,
                "ops_per_s": last["ops"] / seconds,
                # This process's CPU time: what the client costs, whatever else the
                # machine (or the server) is doing.
                "cpu_us_per_op": 1e6 * cpu / last["ops"],
                # The server's time in commands (INFO commandstats).
                "server_us_per_op": 1e6 * server / last["ops"],
                "round_trips": counted["round_trips"],
                "commands_per_op": counted["commands"] / counted["ops"],
                "samples": [s["seconds"] for s in samples],
            }
            if "redis_bytes_per_entity" in last:
                per_phase[phase]["redis_bytes_per_entity"] = last["redis_bytes_per_entity"]
        result[name] = per_phase
    return result


def memory(url: str, n: int, phases: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Peak Python memory per phase (tracemalloc slows everything down: its own pass)."""
    client = redis.Redis.from_url(url)
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
    """Both sides leave the same keyspace after each write phase (redisca's ids are given
    to the baseline): the comparison is like for like."""
    client = redis.Redis.from_url(url)
    data = dataset(n)
    steps = ("insert", "get", "update_plain", "update_indexed", "delete")
    try:
        for upto in ("insert", "update_plain", "update_indexed", "delete"):
            orm, raw = OrmSide(client, data), RawSide(client, data)
            dumps = []
            for side in (orm, raw):
                client.flushall()
                side.setup()
                for step in steps[: steps.index(upto) + 1]:
                    if side is raw and step == "insert":
                        raw.insert(ids=orm.ids)
                    else:
                        getattr(side, step)()
                dumps.append(_dump(client))
            if dumps[0] != dumps[1]:
                diff = sorted(dumps[0] ^ dumps[1], key=repr)[:6]
                raise AssertionError(f"redisca and the baseline differ after {upto}: {diff}")
    finally:
        client.flushall()
        client.close()


def _dump(client: redis.Redis) -> frozenset[tuple[bytes, Any]]:
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

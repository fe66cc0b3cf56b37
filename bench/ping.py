"""How long other clients wait while a big write runs: a second process sends ``PING`` in
a loop (one every millisecond) during the write and records each reply's latency.

A process, not a thread: a thread would share the writer's GIL and measure the client's
own pauses. The worst latency is how long the server was held (a ``MULTI``/``EXEC`` runs
without serving anyone else); p99 shows whether the stall is one or many.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import redis

from . import servers
from .floor import FloorSide
from .model import dataset
from .orm import OrmSide

INTERVAL = 0.001
IDLE_SECONDS = 5.0
CHUNK = 5_000


def _pinger(url: str, ready: Any, stop: Any, results: Any) -> None:
    client = redis.Redis.from_url(url)
    client.ping()
    latencies = []
    ready.set()
    while not stop.is_set():
        start = time.perf_counter()
        client.ping()
        latencies.append(time.perf_counter() - start)
        time.sleep(INTERVAL)
    results.put(latencies)


def probe(url: str, work: Callable[[], Any]) -> dict[str, Any]:
    """Run ``work`` while another process pings; its wall time and the pings' latencies."""
    ctx = multiprocessing.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    pinger = ctx.Process(target=_pinger, args=(url, ready, stop, results), daemon=True)
    pinger.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the PING process did not start")
        time.sleep(0.05)
        start = time.perf_counter()
        work()
        seconds = time.perf_counter() - start
        time.sleep(0.05)
    finally:
        stop.set()
    latencies = sorted(results.get(timeout=60))
    pinger.join(10)
    worst = latencies[-1]
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return {
        "seconds": seconds,
        "pings": len(latencies),
        "worst_ms": 1e3 * worst,
        "p99_ms": 1e3 * p99,
        "median_ms": 1e3 * latencies[len(latencies) // 2],
    }


def stalls(url: str, n: int) -> dict[str, Any]:
    """PING latencies during an N-user insert: redisca's one commit, redisca's bulk load,
    and the floor's one pipeline (for comparison)."""
    client = servers.client(url)
    data = dataset(n, lookups=1, queries=1)
    out: dict[str, Any] = {}
    try:
        # The machine's own noise: the same probe while nothing is written.
        out[f"nothing (idle, {IDLE_SECONDS:g} s)"] = probe(url, lambda: time.sleep(IDLE_SECONDS))
        orm = OrmSide(client, data)
        client.flushall()
        orm.setup()
        out["redisca insert, one commit"] = _guarded(lambda: probe(url, orm.insert))
        client.flushall()
        OrmSide(client, data).setup()
        bulk = OrmSide(client, data)
        out[f"redisca {bulk.bulk_how(CHUNK)}"] = _guarded(
            lambda: probe(url, lambda: bulk.bulk_insert(CHUNK))
        )
        client.flushall()
        floor = FloorSide(client, data)
        out["floor insert, one pipeline"] = _guarded(lambda: probe(url, floor.insert))
    finally:
        client.flushall()
        client.close()
    return out


def _guarded(step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return step()
    except Exception as exc:  # recorded, the run goes on
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}

"""The cluster phase: one model with ``shards=1`` and ``shards=16``, on a cluster of 1
master and of 3 (``redisca.embedded_cluster``), each phase's ops/s and how its commands
and server CPU fall on the masters (``INFO commandstats``, ``INFO cpu``), and the latency
of a paged query (limit 10) on 16 shards against one shard. It ends with a bulk phase:
``n`` more entities by ``session.bulk_add`` (chunks of 5,000; with 16 shards on a
cluster, one transaction per shard per chunk, run in parallel).

``shards=1`` keeps the model in one hash slot: one master holds all of it and takes all
of its writes, however many masters there are. ``shards=16`` spreads it 5/6/5 over the
standard 3-master layout. On a machine with fewer cores than masters the masters share
them, so ops/s measure the client and the scheduling more than the cluster: the shares
of commands and CPU per master are the figures that carry over (see docs/performance.rst
for running it where each master has a core).

Redis 7.0 counts a command run inside ``MULTI``/``EXEC`` or a script twice in
``INFO commandstats``: the shares compare like with like, the totals overstate.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import redis
from redis.cluster import RedisCluster

from redisca import Integer, Registry, Session, String, inspect
from redisca.embedded import EmbeddedCluster

SHARDS = (1, 16)
MASTERS = (1, 3)
#: Entities per commit (insert, update) and per session (get).
BATCH = 100
#: Queries per query phase (find, range, page).
QUERIES = 300
CITIES = 20
PHASES = ("insert", "get", "find", "range", "update", "page", "bulk")
#: Entities per chunk of the bulk phase (``session.bulk_add``'s default).
BULK_CHUNK = 5000


def model(shards: int) -> type:
    """The phase's model, in a registry of its own (same prefix for both shard counts)."""
    registry = Registry()

    @registry.mapped(prefix="cu", shards=shards)
    @attrs.define
    class ClusterUser:
        age: int | None = Integer(index=True, default=None)
        city: str = String(index=True, default="")
        name: str = String(default="")
        id: str | None = None

    return ClusterUser


def phase(n: int, binary: str | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Every (masters, shards) pair: each phase's figures, and the paged query's."""
    out: dict[str, Any] = {"n": n, "batch": BATCH, "queries": QUERIES, "runs": {}}
    for masters in MASTERS:
        with EmbeddedCluster(masters, binary=binary, node_timeout=15000) as cluster:
            nodes = [m.client() for m in cluster.masters]
            client = RedisCluster.from_url(cluster.url)
            try:
                for shards in SHARDS:
                    log(f"cluster phase: {masters} master(s), shards={shards}, N={n:,}")
                    client.flushall(target_nodes=RedisCluster.PRIMARIES)
                    run = _run(client, nodes, model(shards), n)
                    out["runs"][f"{masters}x{shards}"] = {
                        "masters": masters,
                        "shards": shards,
                        **run,
                    }
                log(f"cluster phase: {masters} master(s), paged query, 16 shards and 1 in turns")
                client.flushall(target_nodes=RedisCluster.PRIMARIES)
                out.setdefault("turns", {})[str(masters)] = side_by_side(client, n)
            finally:
                client.close()
                for node in nodes:
                    node.close()
    return out


def _run(client: Any, nodes: list[redis.Redis], cls: type, n: int) -> dict[str, Any]:
    rng = random.Random(7)
    ids = [f"u{i:07d}" for i in range(n)]
    work: dict[str, Callable[[], int]] = {
        "insert": lambda: _insert(client, cls, ids, rng),
        "get": lambda: _get(client, cls, ids),
        "find": lambda: _queries(client, cls, rng, "find"),
        "range": lambda: _queries(client, cls, rng, "range"),
        "update": lambda: _update(client, cls, ids, rng),
        "page": lambda: _queries(client, cls, rng, "page"),
        "bulk": lambda: _bulk(client, cls, n, rng),
    }
    out: dict[str, Any] = {}
    for name, step in work.items():
        before = [_reset(node) for node in nodes]
        began = time.perf_counter()
        ops = step()
        seconds = time.perf_counter() - began
        commands = [_commands(node) for node in nodes]
        cpu = [_cpu(node) - was for node, was in zip(nodes, before, strict=True)]
        out[name] = {
            "ops": ops,
            "seconds": seconds,
            "ops_s": ops / seconds if seconds else None,
            "commands": commands,
            "cpu_s": [round(c, 3) for c in cpu],
        }
    out["page"]["latency_us"] = _latency(client, cls)
    return out


def _insert(client: Any, cls: type, ids: list[str], rng: random.Random) -> int:
    for start in range(0, len(ids), BATCH):
        with Session(client) as s:
            s.add_all(
                cls(age=rng.randrange(100), city=f"c{rng.randrange(CITIES)}", name="x", id=i)
                for i in ids[start : start + BATCH]
            )
            s.commit()
    return len(ids)


def _bulk(client: Any, cls: type, n: int, rng: random.Random) -> int:
    """``n`` new entities by ``bulk_add`` (a sharded model's chunk: one transaction per
    shard, in parallel), ids of their own beside the phases' ``n``."""
    objs = (
        cls(age=rng.randrange(100), city=f"c{rng.randrange(CITIES)}", name="x", id=f"b{i:07d}")
        for i in range(n)
    )
    with Session(client) as s:
        return s.bulk_add(objs, chunk_size=BULK_CHUNK)


def _get(client: Any, cls: type, ids: list[str]) -> int:
    for start in range(0, len(ids), BATCH):
        with Session(client) as s:
            for ident in ids[start : start + BATCH]:
                s.get(cls, ident)
    return len(ids)


def _update(client: Any, cls: type, ids: list[str], rng: random.Random) -> int:
    for start in range(0, len(ids), BATCH):
        with Session(client) as s:
            for user in s.get_many(cls, ids[start : start + BATCH]):
                assert user is not None  # the phases' ids all exist
                user.age = rng.randrange(100)
            s.commit()
    return len(ids)


def _query(s: Session, cls: Any, rng: random.Random, kind: str) -> Any:
    if kind == "find":
        city = f"c{rng.randrange(CITIES)}"
        return s.query(cls).filter(cls.city == city).order_by(cls.age).limit(10)
    if kind == "range":
        low = rng.randrange(95)
        return s.query(cls).filter(cls.age.between(low, low + 5)).limit(10)
    # A page of 10 by age: the first one, or the one after an entity the session holds
    # (keyset pagination, what every page after the first should use: docs/queries.rst).
    query = s.query(cls).order_by(cls.age).limit(10)
    if kind == "first" or rng.randrange(2):
        return query
    return query.after(s.get(cls, f"u{rng.randrange(1000):07d}"))


def _queries(client: Any, cls: type, rng: random.Random, kind: str) -> int:
    for _ in range(QUERIES):
        with Session(client) as s:
            _query(s, cls, rng, kind).all()
    return QUERIES


def _latency(client: Any, cls: type) -> dict[str, float]:
    """A paged query's latency (limit 10, loaded), median and 90th percentile in µs."""
    rng = random.Random(3)
    times = []
    for _ in range(QUERIES):
        with Session(client) as s:
            query = _query(s, cls, rng, "page")  # the previous page's entity: read here
            began = time.perf_counter()
            query.all()
            times.append((time.perf_counter() - began) * 1e6)
    times.sort()
    return {"median": statistics.median(times), "p90": times[int(len(times) * 0.9)]}


def side_by_side(client: Any, n: int) -> dict[str, float]:
    """The paged query with ``shards=16`` against ``shards=1``, both models holding the
    same ``n`` users at once (their keys apart: ``{cu}``, ``{cu@16.k}``) and their
    queries taken in turns: see :func:`turns`."""
    one, many = both(client, n)
    return compared(paged(client, one), paged(client, many))


def both(client: Any, n: int) -> tuple[type, type]:
    """The model with ``shards=1`` and with ``shards=16``, each loaded with the same
    ``n`` users."""
    ids = [f"u{i:07d}" for i in range(n)]
    one, many = model(1), model(16)
    for cls in (one, many):
        _insert(client, cls, ids, random.Random(7))
        with Session(client) as s:
            assert s.query(cls).count() == n, "the two layouts must not share keys"
    return one, many


#: :func:`turns`: queries of one model in a row, and the first ones of each row left
#: out (the other model's run just before leaves the caches to it).
TURN, TURN_WARM = 30, 5


#: One side of :func:`turns`: given a seed, a context whose value runs one query.
Side = Callable[[int], contextlib.AbstractContextManager[Callable[[], Any]]]


def paged(client: Any, cls: type, kind: str = "page") -> Side:
    """The phase's paged query on ``cls`` (``kind`` "first": the first page only), a
    session of its own each time (the previous page's entity read before the clock
    starts)."""

    @contextlib.contextmanager
    def side(seed: int) -> Iterator[Callable[[], Any]]:
        with Session(client) as s:
            yield _query(s, cls, random.Random(seed), kind).all

    return side


def raw_first(client: Any, cls: type) -> Side:
    """The first page of ``order_by(age).limit(10)`` as a user would write it by hand
    with redis-py: every shard's first 10 entries of the age index with their scores
    (one pipeline: a round trip per master), merged by (score, id), then the page's
    hashes (a second pipeline). The plain floor of that query: no check that an id's
    hash still holds its score, no entities built."""
    indexes = [layout.range_index(b"age") for layout in inspect(cls).shard_layouts()]
    entity = inspect(cls).layout.entity_of

    def run() -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for key in indexes:
            pipe.zrange(key, 0, 9, withscores=True)
        rows = heapq.merge(*pipe.execute(), key=lambda row: (row[1], row[0]))
        pipe = client.pipeline(transaction=False)
        for member, _ in itertools.islice(rows, 10):
            pipe.hgetall(entity(member))
        return pipe.execute()  # type: ignore[no-any-return]

    return lambda seed: contextlib.nullcontext(run)


def same_work(client: Any, cls: type) -> Side:
    """The first page of ``order_by(age).limit(10)`` as the same Redis work sent by hand:
    the commands redisca sends for it (its script calls, by digest), recorded once and
    replayed with redis-py (``execute_command``, or a pipeline where redisca sent several
    at once: one round trip per master), replies parsed and nothing more. What redisca
    adds to that is its client side: compiling the query, merging the nodes' pages,
    building the entities."""
    from redisca.session import executor

    sent: list[list[Any]] = []
    real_steps, real_run = executor.run_steps, executor.run

    def steps(client: Any, commands: Any) -> Any:
        sent.append(list(commands))
        return (yield from real_steps(client, commands))

    def run_(client: Any, commands: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(list(commands))  # the one-server fast path (queryscript.run)
        return real_run(client, commands, *args, **kwargs)

    with Session(client) as s:
        query = _query(s, cls, random.Random(0), "first")
        query.all()  # the scripts loaded: the recorded calls are the steady state's
        executor.run_steps, executor.run = steps, run_
        try:
            query.all()
        finally:
            executor.run_steps, executor.run = real_steps, real_run
    assert sent and all(c[0] == b"EVALSHA" for group in sent for c in group), sent
    sent = [[("EVALSHA", *c[1:]) for c in group] for group in sent]  # RedisCluster: str

    def run() -> list[Any]:
        out = []
        for group in sent:
            if len(group) == 1:
                out.append(client.execute_command(*group[0]))
                continue
            pipe = client.pipeline(transaction=False)
            for command in group:
                pipe.execute_command(*command)
            out.append(pipe.execute())
        return out

    return lambda seed: contextlib.nullcontext(run)


def compared(one: Side, many: Side) -> dict[str, float]:
    """:func:`turns` once to warm up (scripts loaded, pools filled), then measured."""
    turns(one, many)
    return turns(one, many)


def turns(one: Side, many: Side) -> dict[str, float]:
    """Two queries (``one``, ``many``: two models, or redisca and a hand-written floor)
    in turns of :data:`TURN` (the same seeds on each; which side goes first
    alternates), ``QUERIES`` of each, so that both meet the machine as it is at that
    moment: on a shared machine one model's median alone moves by half between runs a
    few seconds apart. A turn's first :data:`TURN_WARM` queries are left out: taken one
    query each in turn, the sides slow each other down (one shard's query by half:
    each finds the caches full of the other's work). Each side's median in µs, and the
    median and quartiles of the ratios of each pair of turns (``many`` over ``one``)."""
    times: dict[str, list[float]] = {"one": [], "many": []}
    ratios = []
    for turn in range(max(1, QUERIES // TURN)):
        got: dict[str, list[float]] = {"one": [], "many": []}
        for name in ("one", "many") if turn % 2 else ("many", "one"):
            side = one if name == "one" else many
            for q in range(TURN):
                with side(turn * TURN + q) as run:
                    began = time.perf_counter()
                    run()
                    if q >= TURN_WARM:
                        got[name].append((time.perf_counter() - began) * 1e6)
        ratios.append(statistics.median(got["many"]) / statistics.median(got["one"]))
        for name in got:
            times[name] += got[name]
    ratios.sort()
    quarter = len(ratios) // 4
    return {
        "one": statistics.median(times["one"]),
        "many": statistics.median(times["many"]),
        "ratio": statistics.median(ratios),
        "q1": ratios[quarter],
        "q3": ratios[-1 - quarter],
    }


def _reset(node: redis.Redis) -> float:
    node.config_resetstat()
    return _cpu(node)


def _cpu(node: redis.Redis) -> float:
    info = node.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _commands(node: redis.Redis) -> int:
    """Commands run since the reset, but the phase's own INFO and CONFIG."""
    stats = node.info("commandstats")
    return sum(
        int(v["calls"])
        for k, v in stats.items()
        if k not in ("cmdstat_info", "cmdstat_config", "cmdstat_cluster", "cmdstat_ping")
    )


def render(figures: dict[str, Any]) -> str:
    """The phase's table: ops/s and each master's share of commands and server CPU."""
    from .report import table  # report imports this module for its render

    rows = []
    for key, run in figures["runs"].items():
        for name in PHASES:
            got = run.get(name)
            if got:
                rows.append(
                    [
                        key,
                        name,
                        f"{got['ops_s']:,.0f}",
                        _shares(got["commands"]),
                        _shares(got["cpu_s"]),
                    ]
                )
    header = ["masters x shards", "phase", "ops/s", "commands per master", "CPU per master"]
    lat = [
        [
            key,
            f"{run['page']['latency_us']['median']:.0f}",
            f"{run['page']['latency_us']['p90']:.0f}",
        ]
        for key, run in figures["runs"].items()
    ]
    side = [
        [
            f"{masters} master(s)",
            f"{got['many']:.0f} / {got['one']:.0f}",
            f"{got['ratio']:.2f} ({got['q1']:.2f} to {got['q3']:.2f})",
        ]
        for masters, got in figures.get("turns", {}).items()
    ]
    out = (
        table(header, rows)
        + "\n\nPaged query (limit 10, loaded), µs:\n\n"
        + table(["masters x shards", "median", "p90"], lat)
    )
    if side:  # figures saved before the turns were taken have none
        out += "\n\nThe same, 16 shards and 1 in turns (medians, and the turns' ratio):\n\n"
        out += table(["where", "16 / 1 shard µs", "ratio (quartiles)"], side)
    return out


def _shares(values: list[float]) -> str:
    total = sum(values)
    if not total:
        return "-"
    return "/".join(f"{100 * v / total:.0f}" for v in values) + " %"


def latency_ratio(figures: dict[str, Any], masters: int) -> float | None:
    """The paged query's latency on 16 shards over one shard's: the median of the
    turns' ratios (:func:`turns`), or for figures saved before it, of the two runs'
    medians."""
    taken = figures.get("turns", {}).get(str(masters))
    if taken:
        return float(taken["ratio"])
    one, many = figures["runs"].get(f"{masters}x1"), figures["runs"].get(f"{masters}x16")
    if not one or not many:
        return None
    return float(many["page"]["latency_us"]["median"] / one["page"]["latency_us"]["median"])


def top_share(figures: dict[str, Any], kind: str) -> float | None:
    """The largest share of one master in any phase, shards=16 on 3 masters."""
    run = figures["runs"].get("3x16")
    if not run:
        return None
    phases = [run[p] for p in PHASES if p in run]  # figures of older runs lack "bulk"
    shares = [max(p[kind]) / sum(p[kind]) for p in phases if sum(p[kind])]
    return max(shares) if shares else None


__all__ = ["PHASES", "latency_ratio", "phase", "render", "top_share"]

"""stats: how much of each model Redis holds, counted with SCAN and cheap reads.

Entities and index keys are counted by scanning; index entries with
``SCARD``/``ZCARD``/``HLEN``; memory is estimated from ``MEMORY USAGE`` of a sample of
keys of each kind (the average times the count), which stays cheap however
large the model is. Nothing is decoded and nothing is written. Keys of the layout
before hash tags (``P:*`` and ``P#*``, which ``python -m redisca migrate`` moves)
are counted apart as ``old_layout``, by one more ``SCAN`` per model: entities
left there would otherwise go uncounted.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import Any

import attrs
from redis.exceptions import ResponseError

from ..conf import Client
from ..mapping.keys import KeyLayout, ParsedKey
from ..mapping.mapper import MappedField, Mapper
from ..session.sweep import now_command
from .common import (
    Progress,
    Ticker,
    by_hash_field,
    each_shard,
    model_name,
    read_marker,
    resolve_client,
    run,
    select_mappers,
)
from .placement import Keyspace
from .shardclaims import count as count_claims
from .shardclaims import covers

#: How many keys of each kind ``MEMORY USAGE`` is asked about.
DEFAULT_SAMPLE = 200

_KINDS = ("entity", "all", "eq", "range", "unique", "guard", "expiry")
_CARD = {"all": b"ZCARD", "eq": b"SCARD", "range": b"ZCARD", "unique": b"HLEN"}


@attrs.define
class ModelStats:
    """Counts for one model; ``memory`` in bytes, estimated from a sample per kind."""

    model: str
    prefix: str
    entities: int = 0
    #: Members of the all-ids index (``H#all``, or the first range index of a model
    #: with one): equal to ``entities`` when the indexes are sound.
    ids: int = 0
    #: Keys by kind: ``all`` (``H#all``: none on a model with a range index), ``eq``,
    #: ``range``, ``unique`` (stripes), ``guard``, ``expiry`` (``H#exp``), ``other``
    #: (reindex, stray, the layout before 2.0's indexes), ``old_layout`` (every key of
    #: the layout before hash tags, its entity hashes too: ``migrate`` moves them).
    #: Kinds with no key are left out.
    index_keys: dict[str, int] = attrs.field(factory=dict)
    #: Entries of the equality, range and unique indexes (a unique value is one entry).
    index_entries: int = 0
    memory: dict[str, int] = attrs.field(factory=dict)
    memory_sampled: int = 0
    reindexing: bool = False
    seconds: float = 0.0
    #: An expiring model's entities with an expiry instant (``H#exp``), and those of them
    #: expired and not yet swept: their hashes, index entries and claims are still counted
    #: above, until ``sweep`` (or a commit) removes them.
    expiring: int = 0
    expired: int = 0
    #: A sharded model with a unique field: the values claimed in its shards (its keys
    #: of claims in flight, ``H#o`` and ``H#c``, are counted above as ``claims``).
    claims: int = 0

    @property
    def memory_total(self) -> int:
        return sum(self.memory.values())

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["memory_total"] = self.memory_total
        return out


@attrs.define
class StatsReport:
    models: list[ModelStats] = attrs.field(factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"models": [m.as_dict() for m in self.models]}


def stats(
    registry_or_classes: Any,
    client: Client | None = None,
    *,
    models: Iterable[Any] | None = None,
    batch: int = 500,
    sample: int = DEFAULT_SAMPLE,
    progress: Progress | None = None,
) -> StatsReport:
    """Count the entities, index keys and index entries of each model, and estimate
    their memory from ``MEMORY USAGE`` of up to ``sample`` keys of each kind."""
    client = resolve_client(client)
    report = StatsReport()
    for mapper in select_mappers(registry_or_classes, models, sharded=True):

        def one(k: int, view: Mapper, shown: Progress | None) -> ModelStats:
            return _model_stats(client, view, max(1, batch), sample, shown, first=k == 0)

        parts = each_shard(mapper, one, progress)
        summed = _summed(parts)
        if covers(mapper):
            summed.claims = count_claims(client, mapper)
        report.models.append(summed)
    return report


def _summed(parts: list[ModelStats]) -> ModelStats:
    """The shards' stats as one model's (one part: itself)."""
    out = parts[0]
    for part in parts[1:]:
        out.entities += part.entities
        out.ids += part.ids
        for kind, n in part.index_keys.items():
            out.index_keys[kind] = out.index_keys.get(kind, 0) + n
        out.index_entries += part.index_entries
        for kind, n in part.memory.items():
            out.memory[kind] = out.memory.get(kind, 0) + n
        out.memory_sampled += part.memory_sampled
        out.reindexing = out.reindexing or part.reindexing
        out.expiring += part.expiring
        out.expired += part.expired
        out.seconds = round(out.seconds + part.seconds, 3)
    return out


def _model_stats(
    client: Client,
    mapper: Mapper,
    batch: int,
    sample: int,
    progress: Progress | None,
    *,
    first: bool = True,
) -> ModelStats:
    """One model's stats, or one shard's (``first``: the layout before hash tags is
    counted too, once per model)."""
    started = time.monotonic()
    layout = mapper.layout
    space = Keyspace(client, mapper, "stats")
    out = ModelStats(model_name(mapper), mapper.prefix)
    out.reindexing = read_marker(client, mapper) is not None
    counts = dict.fromkeys(_KINDS, 0)
    fields = by_hash_field(mapper)
    samples: dict[str, _Reservoir] = {kind: _Reservoir(sample) for kind in _KINDS}
    ticker = Ticker(progress, out.model, "keys")
    ids_in_range = layout.all_ids_is_range
    for pattern, old in _patterns(layout)[: None if first else 2]:
        for keys in space.scan(pattern, batch):
            sized: list[bytes] = []
            for key in keys:
                kind = "old_layout" if old else _kind(layout.parse(key), fields, ids_in_range)
                counts[kind] = counts.get(kind, 0) + 1
                if kind in _CARD:
                    sized.append(key)
                samples.setdefault(kind, _Reservoir(sample)).offer(key)
            out.index_entries += _entries(client, layout, sized, fields)
            ticker.add(len(keys))
    ticker.finish()
    out.entities = counts.pop("entity")
    out.ids = _int(run(client, [(b"ZCARD", layout.all_ids)])[0])
    if mapper.expiring:
        out.expiring, out.expired = _expired(client, mapper)
    out.index_keys = {k: v for k, v in counts.items() if v}
    total = {**counts, "entity": out.entities}
    for kind, reservoir in samples.items():
        if reservoir.keys and total.get(kind):
            average, measured = _memory(client, reservoir.keys)
            out.memory_sampled += measured
            out.memory[kind] = int(average * total[kind])
    space.done()
    out.seconds = round(time.monotonic() - started, 3)
    return out


def _patterns(layout: KeyLayout) -> list[tuple[bytes, bool]]:
    """What to scan: the model's keys, then (when tagged) those of the layout before."""
    found = [(layout.entity_pattern, False), (layout.namespace_pattern, False)]
    return found + ([(layout.untagged().pattern, True)] if layout.tagged else [])


def _kind(parsed: ParsedKey, fields: dict[bytes, MappedField], all_ids_is_range: bool) -> str:
    """A key's kind for counting: an index of a field that has none is "other", and so is
    ``H#all`` on a model whose all-ids index is a range index (a leftover)."""
    if parsed.kind == "all" and all_ids_is_range:
        return "other"
    if parsed.kind in ("entity", "all", "guard", "expiry"):
        return parsed.kind
    if parsed.kind in ("tokens", "registry"):  # a sharded model's claim keys
        return "claims"
    field = fields.get(parsed.field or b"")
    if parsed.kind == "unique" and field is not None and field.unique:
        return "unique"
    if parsed.kind in ("eq", "range") and field is not None and field.index == parsed.kind:
        return parsed.kind
    return "other"


def _expired(client: Client, mapper: Mapper) -> tuple[int, int]:
    """Members of ``H#exp``, and those whose instant is past by the server's clock."""
    expiry = mapper.layout.expiry
    now, total = run(client, [now_command(mapper), (b"ZCARD", expiry)])
    if isinstance(now, ResponseError) or isinstance(total, ResponseError):
        return 0, 0  # not a sorted set: check reports the key
    return _int(total), _int(run(client, [(b"ZCOUNT", expiry, b"-inf", int(now))])[0])


def _entries(
    client: Client, layout: Any, keys: list[bytes], fields: dict[bytes, MappedField]
) -> int:
    """Entries of the equality, range and unique index keys (the all-ids set is counted
    apart). An expiring model's equality index is a sorted set (``ZCARD``)."""
    commands = []
    for key in keys:
        parsed = layout.parse(key)
        kind = parsed.kind
        if kind == "eq":
            field = fields.get(parsed.field or b"")
            commands.append((b"ZCARD" if field is not None and field.scored else b"SCARD", key))
        elif kind != "all":
            commands.append((_CARD[kind], key))
    return sum(_int(reply) for reply in run(client, commands))


def _memory(client: Client, keys: list[bytes]) -> tuple[float, int]:
    replies = run(client, [(b"MEMORY", b"USAGE", key) for key in keys])
    sizes = [int(r) for r in replies if r is not None and not isinstance(r, ResponseError)]
    return (sum(sizes) / len(sizes) if sizes else 0.0), len(sizes)


def _int(reply: Any) -> int:
    return 0 if reply is None or isinstance(reply, ResponseError) else int(reply)


class _Reservoir:
    """A uniform sample of at most ``size`` keys from a stream of unknown length."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.keys: list[bytes] = []
        self.seen = 0
        self.random = random.Random(0)

    def offer(self, key: bytes) -> None:
        self.seen += 1
        if len(self.keys) < self.size:
            self.keys.append(key)
            return
        slot = self.random.randrange(self.seen)
        if slot < self.size:
            self.keys[slot] = key


__all__ = ["DEFAULT_SAMPLE", "ModelStats", "StatsReport", "stats"]

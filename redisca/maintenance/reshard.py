"""reshard: move a model's data to the number of shards its mapping now declares.

``registry.mapped(shards=N)`` puts an entity in the shard of its id among ``N``; another
``N`` is another set of keys (``{P@N.k.s}``, or ``{P}`` for one shard: see
docs/keylayout.rst). Changing ``N`` for a model with data is done in this order:

1. change ``shards=`` in the model and deploy it everywhere: from then on every commit
   writes to the new layout, and no process writes to the old one;
2. run ``python -m redisca reshard MODULE:registry Model N`` (``N``: what the model
   declares, as a check that the right code is deployed). It scans every other layout
   of the model (one shard, or any other ``N``: a reshard interrupted half-way is
   resumed), and moves each entity hash it finds to its key in the new layout
   (``DUMP``, ``RESTORE`` without ``REPLACE``, then ``DEL``): a key the application has
   written there since is never overwritten. It then deletes what is left of the old
   layouts (their indexes, claims, guard stripes), and rebuilds the new layout's indexes
   with ``reindex`` (online: commits go on meanwhile).

Between steps 1 and the end of 2, an entity not moved yet is invisible to the
application (``get`` looks in the new layout), and one moved but not indexed yet is
found by ``get`` but not by queries. Running it again is safe and moves nothing more.
``check`` of a sharded model reports every key of its other layouts as ``old_layout``
(so before the reshard, and after one stopped half-way: none after it).

A model with a unique field moves the same way: its old layouts' claims (and claim
tokens and registrations) are deleted with their other keys, and the reindex claims each
value again for its holder, with the cross-shard protocol on a sharded model
(:mod:`~redisca.maintenance.shardclaims`). Until it has, a commit's unique check sees
only the claims of the new layout: a value an entity not yet claimed for holds can be
taken by another, and the reindex then reports the two as ``duplicate_unique`` and
leaves them for the user to settle.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from redis.exceptions import ResponseError

from ..conf import Client
from ..errors import MappingError
from ..mapping.keys import check_shards, head_shards
from ..mapping.mapper import Mapper
from .common import (
    Progress,
    Ticker,
    UnknownName,
    model_name,
    resolve_client,
    run,
    select_mappers,
    shard_views,
    show,
)
from .placement import Keyspace
from .problems import FollowedByReindex, PlainSummary, Problem
from .reindex import ReindexReport, reindex


@attrs.define
class ModelReshard(PlainSummary):
    """What a reshard did to one model."""

    model: str
    prefix: str
    shards: int
    #: Entity hashes moved to the new layout.
    moved: int = 0
    #: Entities found in the old layout and in the new one with the same hash (a run
    #: interrupted between its RESTORE and its DEL): the old copy was deleted.
    resumed: int = 0
    #: Entities left in the old layout: their key in the new one holds something else.
    kept: int = 0
    #: Keys of the old layouts deleted (indexes, claims, guard stripes).
    dropped: int = 0
    #: The shard counts whose keys were found (1: the unsharded layout).
    found_layouts: list[int] = attrs.field(factory=list)
    seconds: float = 0.0


@attrs.define
class ReshardReport(FollowedByReindex):
    """The move, the reindex that followed, and what could not be moved."""

    models: list[ModelReshard] = attrs.field(factory=list)
    problems: list[Problem] = attrs.field(factory=list)
    reindex: ReindexReport | None = None


def reshard(
    registry_or_classes: Any,
    model: Any,
    shards: int,
    client: Client | None = None,
    *,
    batch: int = 500,
    progress: Progress | None = None,
) -> ReshardReport:
    """Move ``model``'s data from every other shard count to the ``shards`` its mapping
    declares, then rebuild its indexes; see the module's docstring."""
    client = resolve_client(client)
    mappers = select_mappers(registry_or_classes, [model], sharded=True)
    if len(mappers) != 1:
        names = ", ".join(model_name(m) for m in mappers)
        raise UnknownName(f"{model!r} names {len(mappers)} models ({names}): name one")
    mapper = mappers[0]
    try:
        check_shards(shards, model_name(mapper))
    except MappingError as exc:
        raise UnknownName(str(exc)) from None
    if mapper.shards != shards:
        raise UnknownName(
            f"{model_name(mapper)} declares shards={mapper.shards}: reshard moves the data "
            f"to the layout the deployed code uses. Set shards={shards} in the model, deploy "
            f"it everywhere, then run reshard again"
        )
    report = ReshardReport()
    report.models.append(_Move(client, mapper, max(1, batch), progress, report).run())
    report.reindex = reindex([mapper.class_], client, batch=batch, progress=progress)
    report.problems += report.reindex.problems
    return report


class _Move:
    def __init__(
        self,
        client: Client,
        mapper: Mapper,
        batch: int,
        progress: Progress | None,
        report: ReshardReport,
    ) -> None:
        self.client, self.mapper, self.batch, self.report = client, mapper, batch, report
        self.prefix = mapper.prefix.encode()
        #: The heads of the new layout's shards: keys under them stay.
        self.heads = {layout.hashtag for layout in mapper.shard_layouts()}
        self.done = ModelReshard(model_name(mapper), mapper.prefix, mapper.shards)
        self.found: set[int] = set()
        self.ticker = Ticker(progress, self.done.model, "reshard")

    def run(self) -> ModelReshard:
        started = time.monotonic()
        space = Keyspace(self.client, shard_views(self.mapper)[0], "reshard")
        self.space = space
        for pattern in self.patterns():
            for keys in self.scan(pattern):
                self.entities([k for k in keys if self.old_entity(k) is not None])
        for pattern in self.patterns():
            for keys in self.scan(pattern):
                self.drop([k for k in keys if self.old_head(k) is not None])
        space.done()
        self.ticker.finish()
        self.done.found_layouts = sorted(self.found)
        self.done.seconds = round(time.monotonic() - started, 3)
        return self.done

    def patterns(self) -> list[bytes]:
        """The unsharded layout's keys, and every sharded layout's (``{P@`` then
        anything): those of the new layout are told apart by their head."""
        return [b"{" + self.prefix + b"}*", b"{" + self.prefix + b"@*"]

    def scan(self, pattern: bytes) -> Any:
        """Pages of keys: of one slot for the unsharded layout's (``{P}``), of every
        master for the sharded ones'."""
        yield from self.space.scan(pattern, self.batch)

    def old_head(self, key: bytes) -> bytes | None:
        """The key's head if it is one of an old layout of this model (else ``None``)."""
        found = head_shards(self.prefix, key)
        if found is None or found[0] in self.heads:
            return None
        self.found.add(found[1])
        return found[0]

    def old_entity(self, key: bytes) -> bytes | None:
        """The id of an old layout's entity hash (``{...}:<id>``), else ``None``."""
        head = self.old_head(key)
        if head is None or key[len(head) : len(head) + 1] != b":":
            return None
        return key[len(head) + 1 :]

    def entities(self, keys: list[bytes]) -> None:
        if not keys:
            return
        kinds = run(self.client, [(b"TYPE", key) for key in keys])
        hashes = [k for k, t in zip(keys, kinds, strict=True) if t in (b"hash", "hash")]
        dumps = run(self.client, [(b"DUMP", key) for key in hashes])
        moves = [(k, d) for k, d in zip(hashes, dumps, strict=True) if isinstance(d, bytes)]
        targets = [self.mapper.layout.entity_of(self.old_entity(k) or b"") for k, _ in moves]
        restored = run(
            self.client,
            [(b"RESTORE", t, 0, dump) for t, (_, dump) in zip(targets, moves, strict=True)],
        )
        busy = [
            (old, target, dump)
            for (old, dump), target, reply in zip(moves, targets, restored, strict=True)
            if isinstance(reply, ResponseError)
        ]
        gone = [
            old
            for (old, _), reply in zip(moves, restored, strict=True)
            if not isinstance(reply, ResponseError)
        ]
        self.done.moved += len(gone)
        gone += self.resumed(busy)
        if gone:
            self.companions(gone)
            run(self.client, [(b"DEL", key) for key in gone])
        self.ticker.add(len(hashes))

    def companions(self, moved: list[bytes]) -> None:
        """What goes with each entity moved, before its old hash is deleted: its
        collections' keys (``H#m:<field>:<id>``, restored unless the new key exists)
        and, on an expiring model, its instant (into the new shard's ``H#exp``: the
        reindex then scores its equality entries by it). An interrupted run leaves
        the old copies in place, and the next one moves them again."""
        mapper = self.mapper
        pairs = []
        for old in moved:
            head, ident = self.old_head(old) or b"", self.old_entity(old) or b""
            pairs += [
                (
                    head + b"#m:" + f.hash_field + b":" + ident,
                    mapper.layout.members(f.hash_field, ident),
                )
                for f in mapper.collections
            ]
        if pairs:
            dumps = run(self.client, [(b"DUMP", old) for old, _ in pairs])
            restores = [(b"RESTORE", new, 0, d) for (_, new), d in zip(pairs, dumps, strict=True)]
            _run_some(self.client, [c for c in restores if c[3]])
        if mapper.expiring:
            heads = [(self.old_head(k) or b"", self.old_entity(k) or b"") for k in moved]
            scores = run(self.client, [(b"ZSCORE", h + b"#exp", i) for h, i in heads])
            adds = [
                (b"ZADD", mapper.layout.expiry_of(i.decode()), _score(at), i)
                for (_, i), at in zip(heads, scores, strict=True)
                if at is not None
            ]
            _run_some(self.client, adds)

    def resumed(self, busy: list[tuple[bytes, bytes, bytes]]) -> list[bytes]:
        """Of the entities whose new key exists already, those it holds as they are in
        the old layout (a run interrupted between RESTORE and DEL): their old copy goes.
        The others stay, reported: the application wrote the new key since."""
        if not busy:
            return []
        now = run(self.client, [(b"DUMP", target) for _, target, _ in busy])
        gone = []
        for (old, target, dump), held in zip(busy, now, strict=True):
            if held == dump:
                gone.append(old)
                self.done.resumed += 1
            else:
                self.done.kept += 1
                detail = (
                    f"{show(target)} exists already and holds something else (written "
                    "since the new layout was deployed): compare the two, delete one, "
                    "and reshard again"
                )
                self.report.problems.append(
                    Problem("old_layout", self.done.model, show(old), None, detail)
                )
        return gone

    def drop(self, keys: list[bytes]) -> None:
        """What is left of the old layouts but their kept entities."""
        kept = {p.key for p in self.report.problems}
        keys = [k for k in keys if show(k) not in kept]
        if keys:
            run(self.client, [(b"UNLINK", key) for key in keys])
            self.done.dropped += len(keys)


def _score(reply: Any) -> Any:
    """A ``ZSCORE`` reply as ``ZADD`` takes it again: RESP3 gives a double (``inf`` too)."""
    return repr(reply) if isinstance(reply, float) else reply


def _run_some(client: Client, commands: list[Any]) -> None:
    """``commands`` in one round trip, none for none; an error reply raises, but a
    ``RESTORE`` onto a key that exists (moved by a run before this one)."""
    for reply in run(client, commands) if commands else []:
        if isinstance(reply, Exception) and not str(reply).startswith("BUSYKEY"):
            raise reply


__all__ = ["ModelReshard", "ReshardReport", "reshard"]

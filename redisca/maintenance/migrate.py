"""migrate: move data of the layout before hash tags into today's, while the app runs.

redisca 1.x, and redisca 2.0 before hash tags, named an entity ``P:<id>`` and
kept everything else in ``P:...`` (1.x's indexes) or ``P#...`` (2.0's). Today's
layout puts a hash tag first (``{P}:<id>``, see ``docs/keylayout.rst``), so that
one layout serves a single server and a Redis Cluster. A run, for each model:

1. moves every old entity hash to its new name: ``DUMP``, then ``RESTORE`` without
   ``REPLACE`` (so an entity the application created under the new name meanwhile
   is never overwritten: the old hash stays and is reported), then ``DEL`` of the
   old key. ``DUMP``/``RESTORE`` rather than ``RENAME`` because on a cluster the two
   names live in different slots;
2. deletes the old layout's index keys (1.x's sets, sorted sets and strings among
   the ``P:*`` keys, every ``P#*`` key of 2.0): nothing reads them any more;
3. rebuilds the model's indexes from the hashes with :func:`reindex` (online).

Running it again moves what is left and rebuilds again: it is idempotent. Stop
the writers of the old layout first (redisca 1.x code): a write to an old hash
between its ``DUMP`` and its ``DEL`` would be lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import attrs
from redis.exceptions import ResponseError

from ..conf import Client
from ..mapping.mapper import Mapper
from .common import (
    Progress,
    Ticker,
    model_name,
    resolve_client,
    run,
    select_mappers,
    show,
    type_of,
)
from .placement import Keyspace
from .problems import FollowedByReindex, PlainSummary, Problem
from .reindex import ReindexReport, reindex
from .untagged import fate


@attrs.define
class ModelMigration(PlainSummary):
    """What a run did to one model."""

    model: str
    prefix: str
    #: Entity hashes moved to their new names.
    moved: int = 0
    #: Old entity hashes left where they are: the new name holds an entity already.
    kept: int = 0
    #: Keys of the old layout's indexes deleted.
    dropped: int = 0
    seconds: float = 0.0


@attrs.define
class MigrateReport(FollowedByReindex):
    """The moves, the reindex that followed, and what could not be moved or indexed."""

    models: list[ModelMigration] = attrs.field(factory=list)
    problems: list[Problem] = attrs.field(factory=list)
    reindex: ReindexReport | None = None


def migrate(
    registry_or_classes: Any,
    client: Client | None = None,
    *,
    models: Iterable[Any] | None = None,
    batch: int = 500,
    progress: Progress | None = None,
) -> MigrateReport:
    """Move each model's data from the layout before hash tags (``P:<id>``) to today's
    (``{P}:<id>``), then rebuild its indexes; see the module's docstring."""
    client = resolve_client(client)
    report = MigrateReport()
    mappers = select_mappers(registry_or_classes, models)
    for mapper in mappers:
        report.models.append(_Move(client, mapper, max(1, batch), progress, report).run())
    classes = [m.class_ for m in mappers]
    report.reindex = reindex(classes, client, batch=batch, progress=progress)
    report.problems += report.reindex.problems
    return report


class _Move:
    def __init__(
        self,
        client: Client,
        mapper: Mapper,
        batch: int,
        progress: Progress | None,
        report: MigrateReport,
    ) -> None:
        self.client, self.mapper, self.batch, self.report = client, mapper, batch, report
        self.old = mapper.layout.untagged()
        self.done = ModelMigration(model_name(mapper), mapper.prefix)
        self.ticker = Ticker(progress, self.done.model, "migrate")

    def run(self) -> ModelMigration:
        started = time.monotonic()
        if self.mapper.layout.tagged:
            space = Keyspace(self.client, self.mapper, "migrate")
            for keys in space.scan(self.old.entity_pattern, self.batch):
                self._entities(keys)
            for keys in space.scan(self.old.namespace_pattern, self.batch):
                self._drop(keys)
            space.done()
        self.ticker.finish()
        self.done.seconds = round(time.monotonic() - started, 3)
        return self.done

    def _entities(self, keys: list[bytes]) -> None:
        kinds = run(self.client, [(b"TYPE", key) for key in keys])
        fates = [fate(self.old, k, type_of(t)) for k, t in zip(keys, kinds, strict=True)]
        hashes = [k for k, f in zip(keys, fates, strict=True) if f == "move"]
        self._drop([k for k, f in zip(keys, fates, strict=True) if f == "delete"])
        if not hashes:
            return
        dumps = run(self.client, [(b"DUMP", key) for key in hashes])
        moves = [(k, d) for k, d in zip(hashes, dumps, strict=True) if isinstance(d, bytes)]
        cut = self.old.entity_prefix_len()
        new = [self.mapper.layout.entity_of(key[cut:]) for key, _ in moves]
        restored = run(
            self.client, [(b"RESTORE", n, 0, dump) for n, (_, dump) in zip(new, moves, strict=True)]
        )
        gone = []
        for (old, _), target, reply in zip(moves, new, restored, strict=True):
            if isinstance(reply, ResponseError):
                self.done.kept += 1
                self.report.problems.append(self._kept(old, target, reply))
            else:
                gone.append(old)
        if gone:
            run(self.client, [(b"DEL", key) for key in gone])
        self.done.moved += len(gone)
        self.ticker.add(len(hashes))

    def _drop(self, keys: list[bytes]) -> None:
        if keys:
            run(self.client, [(b"DEL", key) for key in keys])
            self.done.dropped += len(keys)

    def _kept(self, old: bytes, target: bytes, reply: ResponseError) -> Problem:
        busy = "BUSYKEY" in str(reply)
        why = (
            f"{show(target)} exists already (written since the upgrade): compare the two and "
            f"delete one, then migrate again"
            if busy
            else f"RESTORE to {show(target)} answered {reply}"
        )
        return Problem("old_layout", self.done.model, show(old), None, why)


__all__ = ["MigrateReport", "ModelMigration", "migrate"]

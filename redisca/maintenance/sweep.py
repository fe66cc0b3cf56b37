"""sweep: remove the leftovers of expired entities, batch by batch, while the app runs.

An expired entity is gone for every reader from its instant on, but its hash, index
entries, unique claims, collection keys and ``H#exp`` member stay until swept (see
:mod:`redisca.session.sweep`). This walks each expiring model's ``H#exp`` from its
oldest instant: a batch of expired ids read in one step, then removed in one guarded
step that leaves alone any id re-created, changed, or no longer expired since the read.
Those are counted as ``skipped``, and a later sweep (or commit) takes them. Each batch
is two round trips, so the server is never busy for long.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import attrs
from redis.exceptions import NoScriptError

from ..conf import Client
from ..errors import OperationalError
from ..mapping.mapper import Mapper
from ..mapping.registry import Registry
from ..session import claims, executor, routing
from ..session import sweep as sweeping
from ..session.plan import Command
from .common import (
    MaintenanceError,
    Progress,
    Ticker,
    UnknownName,
    each_shard,
    model_name,
    resolve_client,
    run,
    select_mappers,
)
from .problems import Problem, ProblemReport

#: Times a batch is read again because a reindex started or ended meanwhile, at most.
MARKER_RETRIES = 8


@attrs.define
class ModelSweep:
    """What a sweep did to one model."""

    model: str
    prefix: str
    #: Expired entities removed, with everything they left.
    removed: int = 0
    #: Expired entities left: re-created or changed between the read and the removal.
    skipped: int = 0
    batches: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.removed / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "per_second": round(self.per_second, 1)}


@attrs.define
class SweepReport(ProblemReport):
    """``ok`` unless an expired entity could not be removed (its stored values cannot be
    indexed, or its id is not UTF-8): each is a problem, left in place."""

    problems: list[Problem] = attrs.field(factory=list)
    models: list[ModelSweep] = attrs.field(factory=list)


def sweep(
    registry_or_classes: Any,
    client: Client | None = None,
    *,
    models: Iterable[Any] | None = None,
    batch: int = 500,
    progress: Progress | None = None,
) -> SweepReport:
    """Remove every expired entity of the expiring models of a registry (or of the
    classes given; ``models`` narrows them), ``batch`` ids per step. Models that do not
    expire are left out (naming one is an error)."""
    client = resolve_client(client)
    report = SweepReport()
    size = max(1, batch)
    for mapper in _expiring(registry_or_classes, models):
        # A sharded model: each shard's H#exp swept on its own, the shards side by side.
        shards = each_shard(
            mapper,
            lambda _k, view, shown: _ModelSweep(client, view, size, shown, report).run(),
            progress,
        )
        report.models.append(_merged(shards))
    return report


def _merged(shards: list[ModelSweep]) -> ModelSweep:
    """A model's sweep from its shards' (the one of a model of one shard as it is)."""
    if len(shards) == 1:
        return shards[0]
    return attrs.evolve(
        shards[0],
        removed=sum(s.removed for s in shards),
        skipped=sum(s.skipped for s in shards),
        batches=sum(s.batches for s in shards),
        seconds=max(s.seconds for s in shards),
    )


def _expiring(registry_or_classes: Any, models: Iterable[Any] | None) -> list[Mapper]:
    everything = (
        list(registry_or_classes)
        if isinstance(registry_or_classes, Registry)
        else select_mappers(registry_or_classes, sharded=True)
    )
    chosen = [m for m in everything if m.expiring]
    if models is None:
        return select_mappers(chosen, sharded=True)
    try:
        return select_mappers(chosen, models, sharded=True)
    except UnknownName as exc:
        raise UnknownName(
            f"{exc} — sweep works on the expiring models (registry.mapped(ttl=...) or "
            "expiring=True)"
        ) from None


class _ModelSweep:
    def __init__(
        self,
        client: Client,
        mapper: Mapper,
        batch: int,
        progress: Progress | None,
        report: SweepReport,
    ) -> None:
        self.client = client
        self.mapper = mapper
        self.batch = batch
        self.report = report
        self.out = ModelSweep(model_name(mapper), mapper.prefix)
        self.ticker = Ticker(progress, self.out.model, "sweep")
        #: A sharded model's unique claims on a cluster are in their values' shards, out
        #: of a removal's reach: they are released after it (claims.vacate_held).
        self.claims = not (routing.is_cluster(client) and mapper.shards > 1 and mapper.uniques)

    def run(self) -> ModelSweep:
        started = time.monotonic()
        offset = 0  # ids this sweep leaves behind stay first in H#exp: skip past them
        restarts = 0
        while True:
            batch = self.read(offset)
            found = len(batch.expired) + len(batch.undecodable)
            if not found:
                break
            items, commands = self.sweepable(batch)
            removal = self.remove(batch, items, commands)
            if removal.marker_changed:  # a reindex started or ended: read the batch again
                restarts += 1
                if restarts > MARKER_RETRIES:
                    raise MaintenanceError(
                        f"{self.out.model}: its reindex marker kept changing during the sweep"
                    )
                continue
            self.out.batches += 1
            self.out.removed += removal.removed
            self.out.skipped += len(removal.skipped)
            offset += found - len(items) + len(removal.skipped)
            self.ticker.add(removal.removed)
            if found < self.batch:
                break
        self.ticker.finish()
        self.out.seconds = round(time.monotonic() - started, 3)
        return self.out

    def read(self, offset: int) -> sweeping.Batch:
        reply = _script(
            self.client,
            sweeping.read_command(self.mapper, self.batch, offset),
            sweeping.read_command(self.mapper, self.batch, offset, by_digest=False),
        )
        return sweeping.parse_batch(self.mapper, reply)

    def sweepable(
        self, batch: sweeping.Batch
    ) -> tuple[list[sweeping.Expired], list[Command] | None]:
        """The batch's entities whose removal can be computed, and their removal. The
        others (a stored value its codec cannot index, an id that is not UTF-8) are
        problems, left in place."""
        for raw in batch.undecodable:
            key = self.mapper.layout.expiry.decode(errors="replace")
            self.problem("undecodable", key, f"holds the id {raw[:60]!r}, which is not UTF-8")
        try:
            return list(batch.expired), sweeping.removal(
                self.mapper, list(batch.expired), batch.rebuild, claims=self.claims
            )
        except NotImplementedError:
            raise  # not the data's fault
        except Exception:  # one of them cannot be indexed: find which, one by one
            pass
        good = []
        for item in batch.expired:
            try:
                sweeping.removal(self.mapper, [item], batch.rebuild, claims=self.claims)
            except NotImplementedError:
                raise
            except Exception as exc:
                key = self.mapper.layout.entity(item.id).decode(errors="replace")
                self.problem("undecodable", key, f"expired, but cannot be swept: {exc}")
            else:
                good.append(item)
        return good, None

    def remove(
        self,
        batch: sweeping.Batch,
        items: list[sweeping.Expired],
        commands: list[Command] | None,
    ) -> sweeping.Removal:
        """The removal of ``items``; those that fail their re-check are left out and the
        others sent again (the script removes all of a batch or nothing)."""
        skipped: tuple[str, ...] = ()
        while items:
            keys, args = sweeping.removal_call(
                self.mapper, batch, items, commands, claims=self.claims
            )
            reply = _script(self.client, *sweeping.removal_calls(keys, args))
            removal = sweeping.parse_removal(reply)
            if removal.marker_changed or not removal.skipped:
                if not self.claims and not removal.marker_changed:
                    self.release(items)
                return attrs.evolve(removal, skipped=skipped)
            skipped += removal.skipped
            failed = set(removal.skipped)
            items, commands = [i for i in items if i.id not in failed], None
        return sweeping.Removal(0, skipped)

    def release(self, removed: list[sweeping.Expired]) -> None:
        """The claims of the unique values the removed entities held, released."""
        held = sweeping.claims_of(self.mapper, removed)
        if held:
            executor.drive(claims.vacate_held(self.client, self.mapper.whole, held))

    def problem(self, kind: str, key: str, detail: str) -> None:
        found = Problem(kind, self.out.model, key, None, detail)
        if found not in self.report.problems:  # a batch read again tells it again
            self.report.problems.append(found)


def _script(client: Client, by_digest: Command, whole: Command) -> Any:
    """A script's reply: sent by digest, and whole if the server does not know it."""
    reply = run(client, [by_digest])[0]
    if isinstance(reply, NoScriptError):
        reply = run(client, [whole])[0]
    if isinstance(reply, Exception):
        routing.check(reply, "a sweep")
        raise OperationalError(f"Redis could not run the sweep: {reply}", reply)
    return reply


__all__ = ["ModelSweep", "SweepReport", "sweep"]

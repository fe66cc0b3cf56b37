"""Problems that check and reindex report, and the snapshot reads that confirm them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import attrs

from ..session import executor, routing
from ..session.plan import Command

#: Every kind of problem, and what it means.
KINDS: dict[str, str] = {
    "wrong_type": "a key holds another Redis type than redisca writes there",
    "undecodable": "a stored value its field's codec cannot read, or an id that is not UTF-8",
    "missing_from_all": "an entity whose id is missing from the all-ids set",
    "stale_id": "an id in the all-ids set whose entity does not exist",
    "stale_expiry": "an id in an expiring model's expiry instants (`H#exp`) whose entity "
    "does not exist (once its instant passes, `sweep` removes it)",
    "missing_entry": "an entity's indexed value is missing from its index",
    "orphan_entry": "an index entry whose entity does not hold that value, or does not exist",
    "wrong_score": "a range index entry whose score is not its entity's value",
    "missing_unique": "an entity holds a unique value whose unique key does not exist",
    "wrong_owner": "a unique key names another id than the entity that holds the value",
    "dangling_unique": "a unique key whose owner does not hold the value, and nobody does",
    "duplicate_unique": "two entities hold the same unique value",
    "stale_token": "a sharded model's claim token (`H#o:<field>:<n>`) with no claim beside "
    "it in the unique stripe: left by a claimant that died",
    "stale_registration": "a sharded model's registration of a claim in flight "
    "(`H#c:<n>`) that outlived a commit (over `shardclaims.LINGER` seconds): left by a "
    "claimant that died between its steps",
    "missing_member_entry": "a member of an entity's indexed `Set` or `References` whose "
    "member index entry (`H#i:<field>:<member>`) does not name the entity",
    "stale_member_entry": "a member index entry naming an entity that does not hold that "
    "member (or does not exist)",
    "dangling_reference": "a reference field, or a member of a `References` set, naming an "
    "entity that does not exist (any "
    "`on_delete`; `reindex` reports it and leaves it: which entity was meant is the "
    "user's to decide)",
    "wrong_shard": "an entity of a sharded model in another shard than its id's (left by "
    "an interrupted `reshard`, or written by another program), where redisca never reads it",
    "stray_key": "a key in the model's namespace (today's or the one before hash tags) "
    "that the model does not use",
    "old_layout": "a key of an earlier layout: of the one before hash tags (`P:<id>`, "
    "`P#...`), which `migrate` moves or deletes, or an index of the one before redisca "
    "2.0, which `reindex` converts",
}


class Problem(NamedTuple):
    """One inconsistency: its kind (see :data:`~redisca.maintenance.KINDS`), the model's
    class name, the key where it shows, the attribute concerned (or ``None``), and what
    was found."""

    kind: str
    model: str
    key: str
    field: str | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class Snapshot:
    """Reads that all hold at one moment, on one connection.

    Each key is ``WATCH``-ed before it is read (in the same write), and an empty
    ``MULTI``/``EXEC`` at the end succeeds only if no watched key changed since:
    then every reply read is what Redis held at that ``EXEC``. A check confirms
    what it suspects this way, so a commit running at the same time cannot make
    it report a problem that is not there.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.watched: set[bytes] = set()

    def read(self, keys: Sequence[bytes], commands: Sequence[Command]) -> list[Any]:
        new = list(dict.fromkeys(k for k in keys if k not in self.watched))
        self.watched.update(new)
        before: list[Command] = [(b"WATCH", *new)] if new else []
        if not commands and not before:
            return []
        replies = executor.roundtrip(self.conn, [*before, *commands])
        for reply in replies:  # a cluster's refusal (the slot moved) is no data
            routing.check(reply, "a snapshot read")
        return replies[len(before) :]

    def holds(self) -> bool:
        """Whether nothing read changed: ends the snapshot (and its WATCH)."""
        return executor.transaction(self.conn, []) is not None


class ProblemReport:
    """What the reports of check and reindex share: a list of problems decides ``ok``.

    A mixin for their attrs classes, which define ``problems`` and ``models``.
    """

    problems: list[Problem]
    models: list[Any]

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data, for ``--json``."""
        return {
            "ok": self.ok,
            "models": [m.as_dict() for m in self.models],
            "problems": [p.as_dict() for p in self.problems],
        }


class PlainSummary:
    """A mixin for a report's attrs part that is plain data as it stands: its fields are
    its ``--json`` form."""

    __slots__ = ()

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(cast("attrs.AttrsInstance", self))


class FollowedByReindex(ProblemReport):
    """A report whose run ends with a reindex (migrate, reshard): the reindex's own report
    is nested in the ``--json`` form, or ``None`` when it did not run."""

    reindex: ProblemReport | None

    def as_dict(self) -> dict[str, Any]:
        done = super().as_dict()
        done["reindex"] = None if self.reindex is None else self.reindex.as_dict()
        return done


__all__ = ["KINDS", "FollowedByReindex", "PlainSummary", "Problem", "ProblemReport", "Snapshot"]

"""Commits during a reindex: the marker they read, the build keys they keep current.

A reindex (:mod:`redisca.maintenance.reindex`) builds a model's indexes into
new keys and then switches them in, in one atomic step. While it builds, the
model's *marker* ``H#x`` exists: a LIST holding the run's token, then what the
run rebuilds (hash field names, and ``#all`` for the all-ids set ``H#all`` of a
model without a range index: with one, its first range field is the all-ids index). Every
commit that changes index entries of the model applies each change to the
run's build key too, so a build key never falls behind the hash it was built
from. Two ways to learn of the marker, both inside the commit's own round trips:

- a commit that reads before ``MULTI`` anyway reads the marker in that same
  round trip, and ``WATCH``-es it: its ``EXEC`` fails if the marker appeared,
  changed or went away meanwhile, and the retry reads it again;
- a commit with nothing to read (inserts with ``hexid()`` ids and no unique
  field) sends ``WATCH H#x`` and ``LMOVE H#x H#x LEFT LEFT`` before its
  ``MULTI``, in the same write. ``LMOVE`` of a list onto itself leaves it as it
  is but counts as a write, so the commit's own ``EXEC`` fails exactly when the
  marker exists (or appears before ``EXEC``); it is then retried the first way.
  With no reindex running, it still commits in one round trip.

The executor remembers, per server, the markers it saw, so that the
commits that follow go straight to the first way until a read shows the
marker gone.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from typing import Any

import attrs

from ..mapping.keys import RUN_RE
from .plan import DELETE, INSERT, CommitPlan

#: The marker's member for the all-ids set ``H#all`` (hash field names never hold ``#``).
ALL_IDS = b"#all"

#: A value of a build unique stripe is released only if the entity releasing it owns
#: it there. KEYS: the build stripe. ARGV: the value, the releasing entity's id.
RELEASE_BUILT = b"""\
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


@attrs.frozen
class Rebuild:
    """One running reindex of one model, as its marker tells it."""

    run: bytes
    members: frozenset[bytes]

    def covers(self, member: bytes) -> bool:
        return member in self.members


def marker_value(run: bytes, members: Iterable[bytes]) -> list[bytes]:
    """The marker's list: the run's token first, then what the run rebuilds."""
    if not RUN_RE.fullmatch(run):
        raise ValueError(f"a reindex run token is lowercase hex, got {run!r}")
    return [run, *members]


def parse_marker(reply: Any) -> Rebuild | None:
    """``LRANGE H#x 0 -1`` → the run, or ``None`` when no reindex runs."""
    if not reply:
        return None
    run, *members = reply
    return Rebuild(bytes(run), frozenset(bytes(m) for m in members))


def markers_of(plan: CommitPlan) -> list[bytes]:
    """Markers of the models whose index entries the plan may change."""
    markers: dict[bytes, None] = {}
    for change in plan.changes:
        if change.layout.marker in markers:
            continue
        if change.op in (INSERT, DELETE) or (
            change.needs_read
            and (any(f.indexed for f in change.values) or any(f.indexed for f in change.members))
        ):
            markers[change.layout.marker] = None
    return list(markers)


def fence(markers: list[bytes]) -> list[tuple[bytes, ...]]:
    """Commands sent before ``MULTI`` that make ``EXEC`` fail while a marker exists."""
    if not markers:
        return []
    return [(b"WATCH", *markers), *((b"LMOVE", m, m, b"LEFT", b"LEFT") for m in markers)]


class Sightings:
    """Markers seen lately, per server: a hint, never needed for correctness."""

    def __init__(self) -> None:
        self._seen: set[tuple[Hashable, bytes]] = set()
        self._lock = threading.Lock()

    def any(self, server: Hashable, markers: list[bytes]) -> bool:
        return any((server, m) in self._seen for m in markers)

    def record(self, server: Hashable, marker: bytes, present: bool) -> None:
        with self._lock:
            if present:
                self._seen.add((server, marker))
            else:
                self._seen.discard((server, marker))


__all__ = [
    "ALL_IDS",
    "RELEASE_BUILT",
    "Rebuild",
    "Sightings",
    "fence",
    "marker_value",
    "markers_of",
    "parse_marker",
]

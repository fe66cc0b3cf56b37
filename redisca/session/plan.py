"""The commit plan: pure data, built without I/O and testable without Redis.

A plan lists entity changes (already validated and encoded) and the user's
own commands. :func:`collect_reads` says which keys the executor must
``WATCH`` and read before ``MULTI``; :mod:`redisca.session.emit` turns what
was read into the commands of the transaction.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..mapping.keys import VERSION_FIELD, KeyLayout
from ..mapping.mapper import MappedField, Mapper

Command = tuple[Any, ...]
#: A unique value's place: its field's stripe hash, and the value (index form) in it.
Slot = tuple[bytes, bytes]

INSERT = "insert"
UPDATE = "update"
DELETE = "delete"
#: ``EntityChange.expire``: remove the entity's expiry instant (it no longer expires).
CLEAR = -1


@attrs.define(eq=False)
class EntityChange:
    """One entity's part of a commit."""

    mapper: Mapper
    id: str
    op: str
    #: insert: every field's encoded value (None = absent); update: the changed fields.
    values: dict[MappedField, bytes | None] = attrs.field(factory=dict)
    #: Read the entity's current hash (and existence) before MULTI.
    needs_read: bool = False
    #: Whether the session had loaded the entity (decides StaleDataError vs NotFound).
    was_loaded: bool = True
    #: Version the session saw (versioned mappers only).
    expect_version: int | None = None
    #: Check (under WATCH) that the key is free; ids from ``hexid()`` are unique by
    #: construction and skip it.
    check_exists: bool = True
    #: The hash would hold no field afterwards (it needs a marker to keep existing).
    empty_after: bool = False
    #: An earlier commit of this change failed after EXEC was sent: it may be applied
    #: already. An insert then checks that its key is free or holds exactly what it
    #: writes; a versioned update accepts the version it would have made itself.
    in_doubt: bool = False
    #: An in-doubt insert: the value its guard stripe held before the attempt whose
    #: outcome is unknown, as ``(value,)``, or ``None`` if that attempt never read it.
    #: That attempt, if applied, moved the stripe; so an unmoved stripe means "not
    #: applied", and a moved one with the entity gone may be "applied, then deleted".
    guard_seen: tuple[bytes | None] | None = None
    #: Collection fields (``Set``, ``List``, ``References``) written with the change:
    #: ``(old, new)`` encoded members, a frozenset for a set and a tuple for a list;
    #: ``old`` is ``None`` when unknown (rewritten), ``new`` ``None`` on a delete.
    members: dict[MappedField, tuple[Any, Any]] = attrs.field(factory=dict)
    #: Expiry (expiring models only): ``0`` unchanged, else the time to live in ms
    #: from the commit's instant on the server, or :data:`CLEAR`.
    expire: int = 0
    #: The entity's key, built once (collect_reads, emit and finalize all use it).
    key: bytes = b""
    _guard: bytes | None = attrs.field(default=None, init=False)
    #: The key layout of the entity's shard (the model's own on a model of one shard):
    #: its hash, guard stripe and index entries are there.
    layout: KeyLayout = attrs.field(default=None, init=False)
    #: A sharded model's change on a cluster: its unique values are claimed and released
    #: outside its transaction (:mod:`~redisca.session.claims`), which checks and
    #: removes the registration of each claim's token, by field. ``None``: claimed in
    #: the transaction.
    tokens: dict[MappedField, bytes] | None = attrs.field(default=None, init=False)
    #: Such a change's old unique values (stored form) as its transaction read them:
    #: the claims to release once it committed.
    released: dict[MappedField, bytes] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        layout = self.mapper.layout
        if layout.shards > 1:
            layout = layout.for_id(self.id)
        self.layout = layout
        if not self.key:
            self.key = layout.entity(self.id)

    @property
    def guard(self) -> bytes:
        """The entity's guard stripe ``H#g:<n>``: watched instead of the entity's hash.
        Built on first use: plain updates never need it."""
        guard = self._guard
        if guard is None:
            guard = self._guard = self.layout.guard(self.id.encode())
        return guard

    @property
    def bumps_guard(self) -> bool:
        """Whether the commit increments the entity's guard stripe: it changes what a
        commit reads of the entity (existence, indexed fields, version). Plain updates of
        unindexed fields of unversioned entities do not."""
        if self.op != UPDATE or self.expire:
            return True
        if self.members and any(f.indexed for f in self.members):
            return True  # a delete reads the members whose index entries it removes
        mapper = self.mapper
        return self.needs_read and (mapper.versioned or not mapper.plain.issuperset(self.values))

    def verified_fields(self) -> list[bytes]:
        """Hash fields to read to tell whether an in-doubt change was applied."""
        if not self.in_doubt:
            return []
        fields = [f.hash_field for f in self.values]
        return [*fields, VERSION_FIELD] if self.mapper.versioned else fields

    def read_fields(self) -> list[MappedField]:
        """The indexed fields whose current values the commit must know: those whose
        old entries are found by value (an equality set, a unique stripe). A range
        entry is found by the id alone (``ZADD`` moves it, ``ZREM`` removes it), so
        its old score is not read."""
        fields = self.mapper.indexed if self.op == DELETE else self.values
        found = [f for f in fields if f.unique or (f.indexed and f.index != "range")]
        if self.expire and self.op == UPDATE:
            # A new instant: every equality entry of the entity is rescored (emit).
            found += [f for f in self.mapper.indexed if f.scored and f not in self.values]
        return found


@attrs.frozen
class CommitPlan:
    changes: tuple[EntityChange, ...] = ()
    commands: tuple[Command, ...] = ()
    #: On a cluster, the hash slot every key of the plan is in (its group's slot);
    #: ``None`` on one server.
    slot: int | None = None
    #: ``on_delete`` enforcement (:mod:`~redisca.session.integrity`): the referrer index
    #: sets of deleted entities, and the targets of new references, to read.
    referrers: tuple[Any, ...] = ()
    targets: tuple[Any, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.changes or self.commands)


@attrs.define
class Reads:
    """What to WATCH and read before MULTI.

    The watched keys never grow with the commit (Redis 7.0's WATCH costs time
    quadratic in the number of keys one connection watches): the stripes of
    unique values being claimed (at most 128 per unique field), the guard
    stripes of the entities whose state is read (at most 128 per model), and
    reindex markers. Entity hashes are read but not watched: every commit that
    changes what is read of an entity (inserts, deletes, updates of indexed
    fields or of a version) increments its guard stripe inside its
    ``MULTI``/``EXEC``, so a read made stale by another commit fails this
    commit's ``EXEC`` and it is retried. Values only released are not read:
    the release checks on the server that the stripe still names the entity
    (``RELEASE_OWNED``); a value an entity owns changes hands only when that
    entity changes, and its guard is watched.
    """

    exists: list[bytes] = attrs.field(factory=list)
    fields: dict[bytes, list[bytes]] = attrs.field(factory=dict)
    #: Unique values whose owner to read (``HGET`` of the stripe).
    owners: list[Slot] = attrs.field(factory=list)
    claims: set[Slot] = attrs.field(factory=set)
    #: Guard stripes of the entities read.
    guards: list[bytes] = attrs.field(factory=list)
    #: Guard stripes of inserted entities, whose counters are read (``GET``) so that a
    #: retry after an unknown outcome can tell "not applied" (see ``guard_seen``).
    counters: list[bytes] = attrs.field(factory=list)
    #: Reindex markers (``H#x``), watched and read: see :mod:`redisca.session.rebuild`.
    markers: list[bytes] = attrs.field(factory=list)
    #: Registrations of claims in flight (a sharded model's ``H#c:<n>``), watched; their
    #: fields are read with ``fields``.
    registry: list[bytes] = attrs.field(factory=list)
    #: Where each unique value read or claimed lives, by (field, stored value): worked
    #: out once here and reused by the emitter (``Observed.slots``).
    slots: dict[tuple[MappedField, bytes], Slot] = attrs.field(factory=dict)
    #: Referrer index sets of deleted entities (``on_delete``): read (``SMEMBERS``) and
    #: watched, so a referrer added concurrently fails the ``EXEC``.
    members: list[bytes] = attrs.field(factory=list)
    #: Indexed sets (``H#m:<field>:<id>``) of the entities whose sets change or that are
    #: deleted: read (``SMEMBERS``) so the commit moves their member index entries by
    #: what is stored. Not watched: the entity's guard stripe is (every commit changing
    #: an indexed set increments it).
    collections: list[bytes] = attrs.field(factory=list)
    #: Expiring models the commit writes, when it reads anyway: a batch of their expired
    #: entities is read with the other reads and swept in the transaction
    #: (:mod:`~redisca.session.sweep`, :data:`SWEEP_PER_COMMIT`). Adds no round trip.
    sweeps: list[Mapper] = attrs.field(factory=list)
    #: An expiring model's entities read: their instants (``expiry.READ``), by the
    #: model's ``H#exp``: id → entity key.
    expiry: dict[bytes, dict[str, bytes]] = attrs.field(factory=dict)
    #: Referrer index sets of an expiring referrer model (among ``members``): read
    #: without the expired referrers (``expiry.LIVE_MEMBERS``), by set: its ``H#exp``.
    live: dict[bytes, bytes] = attrs.field(factory=dict)
    #: An expiring model's change may claim unique values: one held by another entity
    #: may be free if that one expired (``executor._expired_owners``).
    takeover: bool = False

    def keys(self) -> list[bytes]:
        claimed = [stripe for stripe, value in self.owners if (stripe, value) in self.claims]
        return list(
            dict.fromkeys([*claimed, *self.guards, *self.markers, *self.registry, *self.members])
        )

    def __bool__(self) -> bool:
        return bool(
            self.exists
            or self.fields
            or self.owners
            or self.markers
            or self.members
            or self.collections
        )


@attrs.define
class Observed:
    """What the reads returned: the state of Redis the transaction is built on."""

    exists: dict[bytes, bool] = attrs.field(factory=dict)
    fields: dict[bytes, dict[bytes, bytes | None]] = attrs.field(factory=dict)
    owners: dict[Slot, str | None] = attrs.field(factory=dict)
    #: Guard counters read (``Reads.counters``): stripe → value.
    guards: dict[bytes, bytes | None] = attrs.field(factory=dict)
    #: Running reindexes by marker key (``redisca.session.rebuild.Rebuild``).
    rebuilds: dict[bytes, Any] = attrs.field(factory=dict)
    #: ``Reads.slots``, so the emitter does not work them out again.
    slots: dict[tuple[MappedField, bytes], Slot] = attrs.field(factory=dict)
    #: ``Reads.members``: index set → the ids in it.
    members: dict[bytes, set[str]] = attrs.field(factory=dict)
    #: Keys of the entities read that are expired (``Reads.expiry``): missing to the
    #: commit, though their hashes are still there.
    expired: set[bytes] = attrs.field(factory=set)
    #: What ``set_null`` removed: (referring field, referrer id, target id), so the
    #: session updates the referrers it holds once the commit is applied.
    nulled: list[tuple[MappedField, str, bytes]] = attrs.field(factory=list)
    #: ``Reads.collections``: set key → its members as stored.
    collections: dict[bytes, frozenset[bytes]] = attrs.field(factory=dict)
    #: ``Reads.sweeps``: each model's batch of expired entities (``sweep.Batch``).
    sweeps: dict[Mapper, Any] = attrs.field(factory=dict)

    def slot(self, field: MappedField, raw: bytes) -> Slot:
        found = self.slots.get((field, raw))
        return unique_key(field, raw) if found is None else found


def unique_key(field: MappedField, raw: bytes) -> Slot:
    """Where a unique field's stored value ``raw`` is claimed: (stripe, index form)."""
    value = field.index_key(raw)
    return field.mapper.layout.unique_stripe(field.hash_field, value), value


#: Expired entities a commit sweeps, at most, per expiring model it writes (when it reads
#: before its transaction): bounded work, taken from the oldest instants.
SWEEP_PER_COMMIT = 16


def collect_reads(plan: CommitPlan) -> Reads:
    """What to read, and WATCH: claimed unique values, new keys, entities to re-read."""
    reads = Reads()
    owners: dict[Slot, None] = {}
    guards: dict[bytes, None] = {}
    counters: dict[bytes, None] = {}
    slots = reads.slots

    def slot(field: MappedField, raw: bytes) -> Slot:  # unique_key, once per value
        found = slots.get((field, raw))
        if found is None:
            found = slots[(field, raw)] = unique_key(field, raw)
        return found

    # A delete reads the same fields of every entity of its model: worked out once each.
    deletes: dict[Mapper, tuple[list[bytes], list[MappedField]]] = {}
    registry: dict[bytes, None] = {}

    for change in plan.changes:
        key = change.key
        if change.tokens:
            _registrations(change, reads, registry)
        if change.op == INSERT:
            counters[change.guard] = None
            if change.check_exists:
                reads.exists.append(key)
                guards[change.guard] = None
            if change.in_doubt:
                reads.fields[key] = change.verified_fields()
            if change.mapper.expiring:
                if change.check_exists:
                    _leftovers(change, reads)
                reads.takeover = reads.takeover or bool(change.mapper.uniques)
            values = change.values
            for field in change.mapper.indexed:  # fewer than the fields: the unique ones
                raw = values.get(field)
                if field.unique and raw is not None and change.tokens is None:
                    claimed = slot(field, raw)
                    owners[claimed] = None
                    reads.claims.add(claimed)
            continue
        if not change.needs_read:
            continue
        if change.op != DELETE or change.mapper.versioned:
            # A delete needs no EXISTS: an entity gone meanwhile reads as no values,
            # and removing nothing from its indexes is what it needs (a versioned one
            # must tell "gone" from "changed": see emit's _check_current).
            reads.exists.append(key)
        guards[change.guard] = None
        if change.mapper.expiring and (change.op != DELETE or change.mapper.versioned):
            # (An unversioned delete removes what it finds, expired or not.)
            _read_expiry(reads, change.layout.expiry, change.id, key)
            reads.takeover = reads.takeover or bool(change.mapper.uniques)
        if change.members:
            reads.collections += unknown_members(change)
        if change.op == DELETE:
            found = deletes.get(change.mapper)
            if found is None:
                found = deletes[change.mapper] = _fields_read(change)
        else:
            found = _fields_read(change)
        hash_fields, uniques = found
        if hash_fields:
            reads.fields[key] = hash_fields  # never changed once made: shared by deletes
        if change.op == DELETE:
            continue
        for field in uniques:  # the new values claimed; old ones are released unread
            new = change.values.get(field)
            if new is not None and change.tokens is None:
                claimed = slot(field, new)
                owners[claimed] = None
                reads.claims.add(claimed)
    members: dict[bytes, None] = {}
    for found in plan.referrers:
        members.update(dict.fromkeys(found.sets))
        if found.field.mapper.expiring:  # expired referrers refer to nothing
            reads.live.update(zip(found.sets, found.expiries, strict=True))
    exists = dict.fromkeys(reads.exists)
    for target in plan.targets:
        exists[target.key] = None
        guards[target.guard] = None
        mapper = target.field.target_mapper()
        if mapper.expiring:
            ident = target.referrer.values[target.field].decode()
            _read_expiry(reads, mapper.layout.expiry_of(ident), ident, target.key)
    reads.exists = list(exists)
    reads.members = list(members)
    reads.owners = list(owners)
    reads.registry = list(registry)
    reads.guards = list(guards)
    reads.counters = list(counters)
    if reads:  # a round trip of reads goes out anyway: sweep with it
        # (A sharded model sweeps the shards the commit writes: a view per shard. One
        # with unique fields on a cluster (its changes carry claim tokens) does not: the
        # claims of what it would sweep are in other shards; `sweep` releases them.)
        views = dict.fromkeys(
            c.mapper.shard_view(c.id)
            for c in plan.changes
            if c.mapper.expiring and c.tokens is None
        )
        reads.sweeps = list(views)
    return reads


def _read_expiry(reads: Reads, key: bytes, ident: str, entity: bytes) -> None:
    """Read the instant of an entity of an expiring model (``H#exp`` ``key``)."""
    reads.expiry.setdefault(key, {})[ident] = entity


def _leftovers(change: EntityChange, reads: Reads) -> None:
    """An insert of an expiring model with an id of its choosing may find the hash of an
    expired entity of that id, not swept yet: the instant tells, and the indexed values
    read find the old entity's index entries, removed with the insert."""
    _read_expiry(reads, change.layout.expiry, change.id, change.key)
    fields = [f.hash_field for f in change.mapper.indexed if f.unique or f.index != "range"]
    if fields:
        reads.fields[change.key] = list(dict.fromkeys([*reads.fields.get(change.key, []), *fields]))
    ident = change.id.encode()
    reads.collections += [
        change.layout.members(f.hash_field, ident) for f in change.mapper.collections if f.indexed
    ]


def unknown_members(change: EntityChange) -> list[bytes]:
    """The keys of a change's indexed sets, read (under the WATCH of the entity's guard
    stripe) before MULTI: their member index entries are moved by what Redis holds when
    the commit runs, never by the session's snapshot, which another commit may have
    outdated (as for the fields, see :mod:`~redisca.session.emit`)."""
    ident = change.id.encode()
    return [
        change.layout.members(field.hash_field, ident)
        for field in change.members
        if field.indexed and field.collection == "set"
    ]


def registration(change: EntityChange, field: MappedField) -> tuple[bytes, bytes]:
    """Where a sharded model's claim in flight is registered: the key ``H#c:<n>`` in the
    entity's shard, and the field ``<field>:<id>`` holding its token."""
    ident = change.id.encode()
    return change.layout.registry(ident), field.hash_field + b":" + ident


def _registrations(change: EntityChange, reads: Reads, registry: dict[bytes, None]) -> None:
    """The registrations of a change's claims: read, and their keys watched."""
    for field in change.tokens or ():
        key, name = registration(change, field)
        reads.fields.setdefault(key, []).append(name)
        registry[key] = None


def _fields_read(change: EntityChange) -> tuple[list[bytes], list[MappedField]]:
    """The hash fields to read of a read change's entity, and its unique fields among
    them (whose owners to read)."""
    read_fields = change.read_fields()
    hash_fields = [f.hash_field for f in read_fields]
    if change.mapper.versioned:
        hash_fields.append(VERSION_FIELD)
    if change.in_doubt and change.op == UPDATE:
        hash_fields += change.verified_fields()
    return list(dict.fromkeys(hash_fields)), [f for f in read_fields if f.unique]


__all__ = [
    "DELETE",
    "INSERT",
    "UPDATE",
    "Command",
    "CommitPlan",
    "EntityChange",
    "Observed",
    "Reads",
    "Slot",
    "collect_reads",
    "registration",
    "unique_key",
    "unknown_members",
]

"""Emit: from a plan and what Redis holds now, the commands inside MULTI/EXEC.

Index removals come from the values read after WATCH, never from the
session's snapshot, so an index cannot drift when another client changed the
entity meanwhile. Unique stripes map each value to its owner's id: a claim
succeeds when the value is free, already ours, or released by its owner in
this same commit; a release removes only a value this entity owns. A range
index holds every entity, those without a value at score ``+inf``; so a model
with one keeps no ``H#all`` (its first range index is its all-ids index).
"""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import ConflictError, IntegrityError, NotFound, StaleDataError, UniqueViolation
from ..mapping.keys import EXISTS_FIELD, NO_VALUE, VERSION_FIELD, decode_version
from ..mapping.mapper import MappedField
from . import expiry, integrity
from .expiry import GUARDED_WRITE as GUARDED_WRITE_EXPIRING
from .expiry import SCORED_ADD
from .expiry import WRITE as WRITE_INSTANTS
from .plan import (
    CLEAR,
    INSERT,
    UPDATE,
    Command,
    CommitPlan,
    EntityChange,
    Observed,
    Slot,
    registration,
)
from .rebuild import ALL_IDS, RELEASE_BUILT, Rebuild

#: Writes to unwatched entities only if they still exist: a plain update racing a
#: delete must not leave a hash behind with just the updated fields, outside every
#: index. One call writes every plain update of a commit (a call per entity cost the
#: server about 3 µs each on Redis 7.0), and asks EXISTS of a thousand keys at a time
#: (``redis.call`` from Lua costs Redis 7.0 about as much as the command's own work).
#: KEYS: the entities; ARGV, per key in order: the number of field/value pairs, the
#: number of fields to remove, the pairs, the fields. Returns the positions (from 1) of
#: the keys that no longer existed.
GUARDED_WRITE = (
    b"""\
local gone = {}
local a = 1
local i, total = 1, #KEYS
while i <= total do
  local j = math.min(i + 999, total)
  -- One EXISTS of a thousand keys; each key alone only if one of them is gone.
  local all = redis.call('EXISTS', unpack(KEYS, i, j)) == j - i + 1
  for k = i, j do
    local key = KEYS[k]
    local n, r = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    a = a + 2
    if not all and redis.call('EXISTS', key) == 0 then
      gone[#gone + 1] = k
    else
      if n > 0 then redis.call('HSET', key, unpack(ARGV, a, a + 2 * n - 1)) end
      if r > 0 then
        redis.call('HDEL', key, unpack(ARGV, a + 2 * n, a + 2 * n + r - 1))
        if redis.call('EXISTS', key) == 0 then redis.call('HSET', key, '%s', '') end
      end
    end
    a = a + 2 * n + r
  end
  i = j + 1
end
return gone
"""
    % EXISTS_FIELD
)

#: Removes fields from a hash without ever removing the hash: another client's commit
#: may have removed the fields this session still sees, so only the server knows
#: whether these were the last ones (then the ``#e`` marker keeps the entity).
REMOVE_FIELDS = (
    b"""\
redis.call('HDEL', KEYS[1], unpack(ARGV))
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('HSET', KEYS[1], '%s', '') end
"""
    % EXISTS_FIELD
)


class ClaimRevoked(ConflictError):
    """A sharded model's unique claim was revoked between its claim and the entity's
    transaction: the session claims again and retries (see ``claims``)."""


#: Releases unique values only where the stripe still names the releasing entity, so
#: a release needs no read of the owner before ``MULTI``: one call for every release
#: of a commit whose owner was not read (a deleted entity's values, an old value of an
#: update). KEYS: the stripes; ARGV, per key in order: the value, the releasing id.
RELEASE_OWNED = b"""\
for i = 1, #KEYS do
  local value = ARGV[2 * i - 1]
  if redis.call('HGET', KEYS[i], value) == ARGV[2 * i] then redis.call('HDEL', KEYS[i], value) end
end
"""


def _merge(part: dict[tuple[bytes, bytes], list[Any]], name: bytes, key: bytes, args: Any) -> None:
    """Index writes commute within one commit (no entity appears twice in a plan), so
    all of one command on one key become one variadic command: a 10,000-user insert
    sends a ZADD per index instead of one per user."""
    found = part.get((name, key))
    if found is None:
        part[(name, key)] = list(args)
    else:
        found.extend(args)


@attrs.define
class _Emitter:
    """Collects a transaction's commands in four parts, sent in this order: entity
    deletes (one ``DEL``), entity writes, index removals, index additions. Removals
    before additions is what a value changing hands needs (an ``HDEL`` of the stripe
    before the ``HSET``); within each part the order does not matter, since no two
    changes of a plan touch one entity."""

    observed: Observed
    deleted: list[bytes] = attrs.field(factory=list)
    out: list[Command] = attrs.field(factory=list)
    removals: dict[tuple[bytes, bytes], list[Any]] = attrs.field(factory=dict)
    additions: dict[tuple[bytes, bytes], list[Any]] = attrs.field(factory=dict)
    #: Plain updates of unwatched entities: one GUARDED_WRITE call (keys, arguments).
    guarded: tuple[list[bytes], list[Any]] = attrs.field(factory=lambda: ([], []))
    #: Those of expiring models: one ``expiry.GUARDED_WRITE`` per ``H#exp`` (keys, ids,
    #: arguments).
    guarded_expiring: dict[bytes, tuple[list[bytes], list[str], list[Any]]] = attrs.field(
        factory=dict
    )
    claims: dict[Slot, tuple[EntityChange, MappedField, bytes]] = attrs.field(factory=dict)
    released: set[Slot] = attrs.field(factory=set)
    #: Releases whose owner was not read: one RELEASE_OWNED call (stripes, arguments).
    owned: tuple[list[bytes], list[Any]] = attrs.field(factory=lambda: ([], []))
    #: Build keys a running reindex gets written, by build directory: build key → live key.
    built: dict[bytes, dict[bytes, bytes]] = attrs.field(factory=dict)
    #: Expiry instants to set: one ``expiry.WRITE`` per ``H#exp`` (key → ttl, id, ...).
    expiring: dict[bytes, list[Any]] = attrs.field(factory=dict)
    #: Equality index entries of expiring models (sorted sets scored by the instants) to
    #: write or rescore: one ``expiry.SCORED_ADD`` per ``H#exp``, after the instants'
    #: writes and removals (``H#exp`` → index key → ids).
    scored: dict[bytes, dict[bytes, dict[str, None]]] = attrs.field(factory=dict)

    def add(self, change: EntityChange, member: bytes, name: bytes, key: bytes, *args: Any) -> None:
        """An index addition (``SADD``, ``ZADD``, a claim's ``HSET``) to a live key, and to
        its build key if a reindex is rebuilding ``member`` (a hash field, or ``#all``)."""
        # _merge, inlined: an insert makes one call per index of the entity.
        found = self.additions.get((name, key))
        if found is None:
            self.additions[(name, key)] = list(args)
        else:
            found.extend(args)
        if self.observed.rebuilds:
            built = self.build_key(change, member, key)
            if built is not None:
                _merge(self.additions, name, built, args)

    def remove(
        self, change: EntityChange, member: bytes, name: bytes, key: bytes, *args: Any
    ) -> None:
        """An index removal (``SREM``, ``ZREM``, a release's ``HDEL``), as :meth:`add`."""
        _merge(self.removals, name, key, args)
        if self.observed.rebuilds:
            built = self.build_key(change, member, key)
            if built is not None:
                _merge(self.removals, name, built, args)

    def commands(self) -> list[Command]:
        out: list[Command] = [(b"DEL", *self.deleted)] if self.deleted else []
        out += self.out
        keys, args = self.guarded
        if keys:
            out.append((b"EVAL", GUARDED_WRITE, len(keys), *keys, *args))
        for exp, (keys, ids, args) in self.guarded_expiring.items():
            out.append((b"EVAL", GUARDED_WRITE_EXPIRING, len(keys) + 1, exp, *keys, *ids, *args))
        out += [(name, key, *args) for (name, key), args in self.removals.items()]
        stripes, args = self.owned
        if stripes:  # a removal: before the claims' HSETs
            out.append((b"EVAL", RELEASE_OWNED, len(stripes), *stripes, *args))
        out += [(name, key, *args) for (name, key), args in self.additions.items()]
        out += [(b"EVAL", WRITE_INSTANTS, 1, key, *args) for key, args in self.expiring.items()]
        for exp, by_key in self.scored.items():
            counted: list[Any] = []
            for scored_ids in by_key.values():
                counted += (len(scored_ids), *scored_ids)
            out.append((b"EVAL", SCORED_ADD, len(by_key) + 1, exp, *by_key, *counted))
        return out

    def scored_add(self, change: EntityChange, member: bytes, key: bytes) -> None:
        """An equality index entry of an expiring model, scored by the entity's instant
        as ``H#exp`` holds it at ``EXEC`` (after this commit's own writes of it)."""
        by_key = self.scored.setdefault(change.layout.expiry, {})
        ids = by_key.get(key)
        if ids is None:
            by_key[key] = {change.id: None}
        else:
            ids[change.id] = None
        if self.observed.rebuilds:
            built = self.build_key(change, member, key)
            if built is not None:
                by_key.setdefault(built, {})[change.id] = None

    def rescore(self, change: EntityChange, current: dict[bytes, bytes | None]) -> None:
        """An expiring entity whose instant changes: each of its equality index entries
        rescored with the new instant, found by the values read under ``WATCH`` (or those
        the change writes)."""
        for field in change.mapper.indexed:
            if field.scored:
                raw = (
                    change.values[field]
                    if field in change.values
                    else current.get(field.hash_field)
                )
                if raw is not None:
                    self.scored_add(change, field.hash_field, _eq_key(change, field, raw))

    def expire(self, change: EntityChange) -> None:
        """A change's expiry: an instant set (after every removal, a cleared old one's
        ``ZREM`` among them), or removed."""
        if change.expire > 0:
            self.expiring.setdefault(change.layout.expiry, []).extend((change.expire, change.id))
        elif change.expire == CLEAR:
            _merge(self.removals, b"ZREM", change.layout.expiry, (change.id,))

    def build_key(self, change: EntityChange, member: bytes, live: bytes) -> bytes | None:
        if not self.observed.rebuilds:
            return None  # no reindex runs: every commit but those during one
        layout = change.layout
        run: Rebuild | None = self.observed.rebuilds.get(layout.marker)
        if run is None or not run.covers(member):
            return None
        built = layout.build(run.run, live)
        self.built.setdefault(layout.build_dir(run.run), {})[built] = live
        return built

    def index_add(self, change: EntityChange, field: MappedField, raw: bytes | None) -> None:
        """The entries of a field's new value (``None``: none, but a range index still
        holds the entity, at ``+inf``)."""
        index = field.index
        if index == "range":
            score = NO_VALUE if raw is None else repr(field.score(raw)).encode()
            self.add(change, field.hash_field, b"ZADD", _range_key(change, field), score, change.id)
        elif raw is None:
            return
        elif index == "eq":
            if field.scored:
                self.scored_add(change, field.hash_field, _eq_key(change, field, raw))
            else:
                self.add(change, field.hash_field, b"SADD", _eq_key(change, field, raw), change.id)
        if field.unique and raw is not None:
            if change.tokens is None:
                self.claim(change, field, raw)
            else:
                self.registered(change, field)

    def registered(self, change: EntityChange, field: MappedField) -> None:
        """A sharded model's claim, made in the value's shard before this transaction:
        its token must still be registered (watched), or it was revoked; the
        registration goes with the transaction (the entity holds the value now)."""
        token = change.tokens.get(field) if change.tokens else None
        key, name = registration(change, field)
        held = self.observed.fields.get(key, {}).get(name)
        if token is None or held != token:
            raise ClaimRevoked(
                f"{change.key.decode(errors='replace')}: its claim of a "
                f"{field.mapper.class_.__name__}.{field.name} value was revoked before "
                "the entity was written (a concurrent claimant proved it stale)"
            )
        _merge(self.removals, b"HDEL", key, (name,))

    def index_remove(self, change: EntityChange, field: MappedField, raw: bytes) -> None:
        """Drop the entries of a field's old value; a range entry is left to the ZADD
        of the new score (or to the delete's ZREM)."""
        if field.index == "eq":
            name = b"ZREM" if field.scored else b"SREM"
            self.remove(change, field.hash_field, name, _eq_key(change, field, raw), change.id)
        if field.unique and change.tokens is not None:
            change.released[field] = raw  # released after the commit (claims)
        elif field.unique:
            slot = self.observed.slot(field, raw)
            self.release(change, slot)
            if not self.observed.rebuilds:
                return
            # The build holds the owner the hashes say: release it by the value, whoever
            # the live stripe names.
            built = self.build_key(change, field.hash_field, slot[0])
            if built is not None:
                self.out.append((b"EVAL", RELEASE_BUILT, 1, built, slot[1], change.id))

    def claim(self, change: EntityChange, field: MappedField, raw: bytes) -> None:
        slot = self.observed.slot(field, raw)
        earlier = self.claims.get(slot)
        if earlier is not None and earlier[0].id != change.id:
            raise _violation(field, raw, earlier[0].id)
        self.claims[slot] = (change, field, raw)

    def release(self, change: EntityChange, slot: Slot) -> None:
        owner = self.observed.owners.get(slot, _UNREAD)
        if owner is _UNREAD:  # nobody in this commit claims it: the server checks
            stripes, args = self.owned
            stripes.append(slot[0])
            args += (slot[1], change.id)
        elif owner == change.id:
            _merge(self.removals, b"HDEL", slot[0], (slot[1],))
            self.released.add(slot)

    def settle_claims(self) -> None:
        # After every release: an HDEL must precede the HSET of a value changing hands.
        for slot, (change, field, raw) in self.claims.items():
            owner = self.observed.owners.get(slot)
            if owner is not None and owner != change.id and slot not in self.released:
                raise _violation(field, raw, owner)
            self.add(change, field.hash_field, b"HSET", slot[0], slot[1], change.id)

    def build_dirs(self) -> list[Command]:
        """Record the build keys written, so the reindex's switch finds every one."""
        return [
            (b"HSET", directory, *[k for pair in keys.items() for k in pair])
            for directory, keys in self.built.items()
        ]


def _eq_key(change: EntityChange, field: MappedField, raw: bytes) -> bytes:
    return change.layout.eq_index(field.hash_field, field.index_key(raw))


def _range_key(change: EntityChange, field: MappedField) -> bytes:
    return change.layout.range_index(field.hash_field)


def _violation(field: MappedField, raw: bytes, owner: str) -> UniqueViolation:
    value = field.decode(raw)
    name = f"{field.mapper.class_.__name__}.{field.name}"
    return UniqueViolation(
        f"{name} value {value!r} is already taken by id {owner!r}",
        field=field.name,
        value=value,
        owner=owner,
    )


def _check_current(change: EntityChange, observed: Observed) -> dict[bytes, bytes | None] | None:
    """The entity's current indexed values; None if it no longer exists."""
    key = change.key
    if not observed.exists.get(key, False) or key in observed.expired:
        return None
    current = observed.fields.get(key, {})
    # The version must be a number to compare it, or to HINCRBY it inside EXEC.
    if change.mapper.versioned and (change.was_loaded or change.op == UPDATE):
        stored = current.get(VERSION_FIELD)
        version = decode_version(stored, key)
        if (
            change.was_loaded
            and version != change.expect_version
            and not _applied_before(change, current)
        ):
            raise StaleDataError(
                f"{key.decode(errors='replace')} changed in Redis since it was loaded "
                f"(version {change.expect_version}, now {stored!r})"
            )
    return current


def _applied_before(change: EntityChange, current: dict[bytes, bytes | None]) -> bool:
    """Whether an in-doubt change is what Redis holds: the earlier attempt was applied.

    An insert: the hash holds exactly the inserted values. A versioned update: the
    version is one past the one loaded and the changed fields hold the new values.
    (Another client writing the very same values would pass too; the result is
    the same data either way.)
    """
    if not change.in_doubt:
        return False
    if change.op == INSERT:
        version = b"%d" % (change.expect_version or 1) if change.mapper.versioned else None
    elif change.op == UPDATE and change.mapper.versioned and change.expect_version is not None:
        version = b"%d" % (change.expect_version + 1)
    else:
        return False
    if version is not None and current.get(VERSION_FIELD) != version:
        return False
    return all(current.get(f.hash_field) == raw for f, raw in change.values.items())


class InDoubtInsert(IntegrityError):
    """An in-doubt insert whose entity is absent and whose guard stripe moved since."""


def _unmoved(change: EntityChange, observed: Observed) -> bool:
    """Whether the guard stripe still holds what it held before the attempt whose outcome
    is unknown: that attempt, had it been applied, would have moved it."""
    seen = change.guard_seen
    return (
        seen is not None
        and change.guard in observed.guards
        and (observed.guards[change.guard] == seen[0])
    )


def _emit_insert(em: _Emitter, change: EntityChange) -> None:
    key = change.key
    # An existing key written by the attempt whose outcome was unknown is no conflict:
    # writing the insert again changes nothing.
    exists = em.observed.exists.get(key, False)
    if exists and key in em.observed.expired:
        _remove_entity(em, change, em.observed.fields.get(key, {}))  # the old incarnation's
        exists = False
    if exists:
        if _applied_before(change, em.observed.fields.get(key, {})):
            # written by the attempt whose outcome was unknown, indexes and all; a
            # sharded model's claims made again for this attempt hold (their
            # registrations watched) and their registrations go, as after a write
            for field in change.tokens or ():
                em.registered(change, field)
            return
        doubt = " (a commit of it had an unknown outcome, and it changed since)"
        raise IntegrityError(
            f"{key.decode(errors='replace')} already exists in Redis"
            + (doubt if change.in_doubt else "")
        )
    if change.in_doubt and not _unmoved(change, em.observed):
        raise InDoubtInsert(
            f"{key.decode(errors='replace')}: a commit of it had an unknown outcome, and it "
            f"is not in Redis now, while commits touched its guard stripe "
            f"{change.guard.decode(errors='replace')} since: it may have been inserted and "
            "then deleted by another client, or never inserted, and redisca cannot tell "
            "which, so it does not insert it again. To insert it anyway, "
            "session.expunge(obj) and session.add(obj), then commit; to drop it, "
            "session.rollback()"
        )
    values = change.values
    hset: list[Any] = [b"HSET", key]
    for field, raw in values.items():
        if raw is not None:
            hset.append(field.hash_field)
            hset.append(raw)
    mapper = change.mapper
    if mapper.versioned:
        hset += (VERSION_FIELD, b"%d" % (change.expect_version or 1))
    if len(hset) == 2:
        hset += (EXISTS_FIELD, b"")
    em.out.append(tuple(hset))
    if not mapper.layout.all_ids_is_range:  # else the range index's ZADD adds the id
        em.add(change, ALL_IDS, b"ZADD", change.layout.all_ids, 0, change.id)
    index_add = em.index_add
    for field in mapper.indexed:
        index_add(change, field, values.get(field))


_UNREAD: Any = object()


def _emit_update(em: _Emitter, change: EntityChange) -> None:
    key = change.key
    written: list[Any] = []  # field, value, field, value, ...
    removed: list[bytes] = []
    for field, raw in change.values.items():
        if raw is None:
            removed.append(field.hash_field)
        else:
            written += (field.hash_field, raw)
    if change.empty_after:
        written += (EXISTS_FIELD, b"")
    if not change.needs_read:  # plain fields of a loaded entity: one guarded call for all
        if change.mapper.expiring:  # one per expiring model, which checks the instants
            keys, ids, args = em.guarded_expiring.setdefault(change.layout.expiry, ([], [], []))
            ids.append(change.id)
        else:
            keys, args = em.guarded
        keys.append(key)
        args += (len(written) // 2, len(removed), *written, *removed)
        return
    current = _check_current(change, em.observed)
    if current is None:
        name = key.decode(errors="replace")
        if change.was_loaded:
            raise StaleDataError(f"{name} was deleted from Redis since it was loaded")
        raise NotFound(f"{name} does not exist")
    if change.mapper.versioned and _applied_before(change, current):
        return  # the attempt whose outcome was unknown wrote it, version included
    if written:
        em.out.append((b"HSET", key, *written))
    if removed:
        em.out.append((b"EVAL", REMOVE_FIELDS, 1, key, *removed))
    if change.mapper.versioned:
        em.out.append((b"HINCRBY", key, VERSION_FIELD, 1))
    for field, new in change.values.items():
        if not field.indexed:
            continue
        old = current.get(field.hash_field, _UNREAD)  # a range field's is not read
        if old == new:
            if change.tokens and field in change.tokens:
                em.registered(change, field)  # held already: the registration goes
            continue
        if old is not None and old is not _UNREAD:
            em.index_remove(change, field, old)
        em.index_add(change, field, new)
    if change.expire:  # a new instant (or none): the entries it keeps, rescored
        em.rescore(change, current)


def _emit_delete(em: _Emitter, change: EntityChange) -> None:
    current: dict[bytes, bytes | None] | None
    if change.key in em.observed.expired:  # gone for readers; its leftovers go now
        current = em.observed.fields.get(change.key, {})
    elif change.key in em.observed.exists or change.mapper.versioned:
        current = _check_current(change, em.observed)
        if current is None:
            return  # already gone: nothing of it is left to remove
    else:  # not asked (see collect_reads): gone, its fields read as None
        current = em.observed.fields.get(change.key, {})
    _remove_entity(em, change, current)


def _remove_entity(em: _Emitter, change: EntityChange, current: dict[bytes, bytes | None]) -> None:
    """Remove an entity's hash, index entries and expiry instant (its collections go
    with its ``members``); ``current``: its indexed values as read."""
    em.deleted.append(change.key)
    if not change.mapper.layout.all_ids_is_range:  # else the range index's ZREM does
        em.remove(change, ALL_IDS, b"ZREM", change.layout.all_ids, change.id)
    for field in change.mapper.indexed:
        if field.index == "range":
            em.remove(change, field.hash_field, b"ZREM", _range_key(change, field), change.id)
        old = current.get(field.hash_field)
        if old is not None:
            em.index_remove(change, field, old)
    if change.mapper.expiring:
        _merge(em.removals, b"ZREM", change.layout.expiry, (change.id,))
    if change.op == INSERT:  # over an expired entity: its collections go too
        ident = change.id.encode()
        for field in change.mapper.collections:
            key = change.layout.members(field.hash_field, ident)
            em.deleted.append(key)
            for raw in em.observed.collections.get(key, ()) if field.indexed else ():
                em.index_remove(change, field, raw)


def _emit_members(em: _Emitter, change: EntityChange) -> None:
    """A change's collections (``H#m:<field>:<id>``): a set as a diff (``SREM``/``SADD``
    of the members that changed), a list rewritten (``DEL`` + ``RPUSH``), a deleted
    entity's removed; and the member indexes of indexed sets, by the same diff."""
    ident = change.id.encode()
    for field, (old, new) in change.members.items():
        key = change.layout.members(field.hash_field, ident)
        # An indexed set's members as read before MULTI (None: not read).
        stored = em.observed.collections.get(key) if field.indexed else None
        if old is None:  # never loaded
            old = stored
        if new is None:  # the entity is deleted
            em.deleted.append(key)
            added: Any = ()
            removed: Any = old or ()
            after: Any = frozenset()
        elif field.collection == "list" or old is None:
            em.out.append((b"DEL", key))
            if new:
                em.out.append((b"RPUSH" if field.collection == "list" else b"SADD", key, *new))
            added, removed = new, ()
            after = frozenset(new)
        else:
            added, removed = sorted(new - old), sorted(old - new)
            if removed:
                em.out.append((b"SREM", key, *removed))
            if added:
                em.out.append((b"SADD", key, *added))
            after = None if stored is None else (stored - set(removed)) | set(added)
        if field.indexed:
            if stored is not None and after is not None:
                # The diff of what the key holds before and after: the session's snapshot
                # may be older than what another commit wrote since.
                added, removed = sorted(after - stored), sorted(stored - after)
            for raw in removed:
                em.index_remove(change, field, raw)
            for raw in added:
                em.index_add(change, field, raw)


def emit(plan: CommitPlan, observed: Observed) -> list[Command]:
    """The transaction's commands; raises on conflicts."""
    em = _Emitter(observed)
    for change in plan.changes:
        if change.released:
            change.released.clear()  # an earlier attempt's
        if change.op == INSERT:
            _emit_insert(em, change)
        elif change.op == UPDATE:
            _emit_update(em, change)
        else:
            _emit_delete(em, change)
        if change.members:
            _emit_members(em, change)
        if change.expire:
            em.expire(change)
    em.settle_claims()
    nulled = (
        integrity.enforce(plan.changes, plan.referrers, plan.targets, observed)
        if plan.referrers or plan.targets
        else []
    )
    out = em.commands()
    out += nulled
    out += em.build_dirs()
    out += guard_bumps(plan)
    out += plan.commands
    return out


def guard_bumps(plan: CommitPlan) -> list[Command]:
    """One ``INCR`` per guard stripe of the entities whose read state the commit changes:
    it fails the ``EXEC`` of every other commit that read one of them meanwhile."""
    guards = dict.fromkeys(c.guard for c in plan.changes if c.bumps_guard)
    return [(b"INCR", guard) for guard in guards]


def vanished(commands: list[Command], replies: list[Any]) -> set[bytes]:
    """Keys of unwatched updates whose entity was gone (or expired) at EXEC (their write
    was skipped)."""
    gone: set[bytes] = set()
    for command, reply in zip(commands, replies, strict=False):
        if command[0] != b"EVAL" or not isinstance(reply, list):
            continue
        if command[1] is GUARDED_WRITE:
            gone.update(command[2 + position] for position in reply)
        elif command[1] is expiry.GUARDED_WRITE:  # its first key is H#exp
            gone.update(command[3 + position] for position in reply)
    return gone


__all__ = [
    "GUARDED_WRITE",
    "RELEASE_OWNED",
    "REMOVE_FIELDS",
    "ClaimRevoked",
    "InDoubtInsert",
    "emit",
    "guard_bumps",
    "vanished",
]

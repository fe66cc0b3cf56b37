"""Referential integrity of ``Reference(cls, on_delete=...)``, inside the commit.

Organizing a commit (no I/O) finds, per group, what the transaction must read:

* for every deleted entity, the equality index sets ``<referrer tag>#i:<field>:<id>`` of
  each field that refers to its model with an ``on_delete`` action
  (:meth:`~redisca.Registry.incoming`). They are read (``SMEMBERS``) and WATCHed: a
  concurrent commit adding a referrer changes the set, fails this commit's ``EXEC``,
  and the retry reads the referrer. ``restrict`` then refuses;
* for every new reference (insert, or the field changed) with an action, the target's
  existence (``EXISTS``) under a WATCH of its guard stripe, which every delete
  increments inside its ``MULTI``/``EXEC``: a target deleted concurrently fails this
  commit's ``EXEC`` and the retry finds it gone.

A reference to an entity deleted by the same commit is refused before anything is sent.
On a Redis Cluster the keys read must live in the slot of the group's transaction: a
referrer model in another slot (another hash tag) is refused with
:class:`~redisca.InvalidRequestError` (map both in one ``slot_group``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from ..errors import IntegrityError, InvalidRequestError
from ..mapping import instrument
from ..mapping.keys import EXISTS_FIELD
from ..mapping.mapper import MappedField, Mapper
from . import executor, expiry, routing
from .io import Steps
from .plan import DELETE, Command, EntityChange, Observed


@attrs.frozen
class Referrers:
    """A deleted entity's referrers through one field: the index sets to read (one per
    shard of the referrer model)."""

    field: MappedField
    target: EntityChange
    sets: tuple[bytes, ...]
    #: The ``H#exp`` of each set's shard (read only for an expiring referrer model).
    expiries: tuple[bytes, ...]


@attrs.frozen
class Target:
    """A new reference whose target must exist when the commit runs."""

    field: MappedField
    referrer: EntityChange
    key: bytes
    guard: bytes


def _name(field: MappedField) -> str:
    return f"{field.mapper.class_.__name__}.{field.name}"


def _same_slot(slot: int | None, layout: Any, field: MappedField, what: str) -> None:
    if slot is not None and routing.layout_slot(layout) != slot:
        raise InvalidRequestError(
            f"{_name(field)} (on_delete={field.on_delete!r}): {what} lives in another hash "
            "slot than the commit's transaction on this Redis Cluster; integrity is enforced "
            "only within one slot: map the referring and the referenced class in one "
            "slot_group"
        )


def plan_group(
    changes: Iterable[EntityChange],
    slot: int | None,
    deleted: set[bytes],
    inserted: set[bytes],
    incoming: dict[Mapper, list[MappedField]],
) -> tuple[tuple[Referrers, ...], tuple[Target, ...]]:
    """What one group's transaction reads to enforce ``on_delete`` (no I/O). ``deleted``
    and ``inserted``: the entity keys the whole commit deletes and inserts."""
    referrers: list[Referrers] = []
    targets: list[Target] = []
    for change in changes:
        mapper = change.mapper
        if change.op == DELETE:
            fields = incoming.get(mapper)
            if fields is None:
                fields = incoming[mapper] = mapper.registry.incoming(mapper)
            value = change.id.encode()
            for field in fields:
                layouts = field.mapper.layout.shard_layouts()
                for layout in layouts:
                    _same_slot(slot, layout, field, "its index")
                sets = tuple(lay.eq_index(field.hash_field, value) for lay in layouts)
                expiries = tuple(lay.expiry for lay in layouts)
                referrers.append(Referrers(field, change, sets, expiries))
            continue
        for field, raw in _new_references(change):
            target = _target(field, change, raw, slot, deleted, inserted)
            if target is not None:
                targets.append(target)
    return tuple(referrers), tuple(targets)


def _new_references(change: EntityChange) -> Iterable[tuple[MappedField, bytes]]:
    """The targets a change starts referring to through fields with an action: a
    ``Reference`` set or changed, the members a ``References`` set gains (all of them
    when the old ones are unknown)."""
    for field in change.mapper.references:
        if field.on_delete is not None and field in change.values:
            raw = change.values[field]
            if raw is not None:
                yield field, raw
    for field, (old, new) in change.members.items():
        if field.on_delete is not None and field.is_reference and new:
            for raw in sorted(new if old is None else new - old):
                yield field, raw


def _target(
    field: MappedField,
    change: EntityChange,
    raw: bytes,
    slot: int | None,
    deleted: set[bytes],
    inserted: set[bytes],
) -> Target | None:
    """The existence check of one new reference, ``None`` when the commit creates the
    target; refused when the commit deletes it."""
    ident = raw.decode()
    layout = field.target_mapper().layout.for_id(ident)
    key = layout.entity(ident)
    if key in deleted:
        raise IntegrityError(
            f"{change.key.decode()}: {_name(field)} refers to {key.decode()}, which "
            "this commit deletes",
            referrer=change.key.decode(),
            field=field.name,
            target=key.decode(),
        )
    if key in inserted:
        return None  # created by this very commit
    _same_slot(slot, layout, field, "its target")
    return Target(field, change, key, layout.guard(raw))


def _leaves(field: MappedField, other: EntityChange | None, value: bytes) -> bool:
    """Whether a referrer changed by the same commit stops referring to ``value``
    through ``field``: deleted, the reference changed, or the member removed."""
    if other is None:
        return False
    if other.op == DELETE:
        return True
    if field.collection is not None:
        new = other.members.get(field, (None, None))[1]
        return new is not None and value not in new
    return field in other.values and other.values[field] != value


def enforce(
    changes: Iterable[EntityChange],
    referrers: Iterable[Referrers],
    targets: Iterable[Target],
    observed: Observed,
) -> list[Command]:
    """Check what the reads found; the commands ``set_null`` adds. Raises
    :class:`~redisca.IntegrityError` (nothing is written) on a violation."""
    for new in targets:
        if not observed.exists.get(new.key, False) or new.key in observed.expired:
            referrer = new.referrer.key.decode()
            raise IntegrityError(
                f"{referrer}: {_name(new.field)} refers to {new.key.decode()}, which does "
                "not exist",
                referrer=referrer,
                field=new.field.name,
                target=new.key.decode(),
            )
    # Referrers that stop referring in this very commit: deleted, or the field changed.
    leaving: dict[tuple[Mapper, str], EntityChange] = {}
    for change in changes:
        leaving[change.mapper, change.id] = change
    out: list[Command] = []
    for found in referrers:
        field, target = found.field, found.target
        value = target.id.encode()
        for index in found.sets:
            for ident in sorted(observed.members.get(index, ())):
                if _leaves(field, leaving.get((field.mapper, ident)), value):
                    continue
                key = field.mapper.layout.for_id(ident).entity(ident).decode()
                if field.on_delete == "restrict":
                    raise IntegrityError(
                        f"cannot delete {target.key.decode()}: {key} refers to it "
                        f"({_name(field)}, on_delete='restrict')",
                        referrer=key,
                        field=field.name,
                        target=target.key.decode(),
                    )
                if field.on_delete == "set_null":
                    out += _set_null(field, ident, index, value)
                    observed.nulled.append((field, ident, value))
                else:
                    raise CascadeGrew(  # loaded before: one added since; loaded again
                        f"cannot delete {target.key.decode()}: {key} refers to it "
                        f"({_name(field)}, on_delete='cascade') and was added after the "
                        "cascade was loaded; commit again",
                        referrer=key,
                        field=field.name,
                        target=target.key.decode(),
                    )
    return out


#: Removes a field from an existing hash, leaving the existence marker if it was the last
#: one (the entity stays, with the reference unset); a missing hash stays missing.
SET_NULL = (
    b"""\
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('HSET', KEYS[1], '%s', '') end
end
"""
    % EXISTS_FIELD
)


def _set_null(field: MappedField, ident: str, index: bytes, value: bytes) -> list[Command]:
    """Remove the reference from a referrer: a ``Reference``'s hash field (the entity
    kept even if it was its last), or the deleted target's id from a ``References``
    set; its index entry; and its guard stripe bumped (its read state changed)."""
    layout = field.mapper.layout.for_id(ident)
    raw = ident.encode()
    if field.collection is not None:
        removal: Command = (b"SREM", layout.members(field.hash_field, raw), value)
    else:
        removal = (b"EVAL", SET_NULL, 1, layout.entity(ident), field.hash_field)
    # A Reference index of scored_indexes=True is a sorted set scored by the instants.
    unindex: Command = (b"ZREM" if field.scored else b"SREM", index, raw)
    return [removal, unindex, (b"INCR", layout.guard(raw))]


def settle_nulled(identity: Any, nulled: Iterable[tuple[MappedField, str, bytes]]) -> None:
    """After a commit that ran ``set_null``: the referrers loaded in the session hold
    what Redis now holds (their reference ``None``, the target gone from their set), as
    committed values, so a read does not return the deleted entity and the next commit
    does not write it back."""
    for field, ident, value in nulled:
        state = identity.lookup(field.mapper, ident)
        if state is None:
            continue
        obj, snapshot = state.obj, state.snapshot
        current = field.attribute.get_raw(obj)
        if field.collection is None:
            if current is not instrument.MISSING:
                field.attribute.set_raw(obj, None)
                snapshot[field] = None
            continue
        if current is not instrument.MISSING:
            for member in [m for m in current if field.encode(m) == value]:
                current.discard(member)
        old = snapshot.get(field)
        if old is not None:
            snapshot[field] = old - {value}


class CascadeGrew(IntegrityError):
    """A ``cascade`` referrer appeared after the commit loaded the referrers: the commit
    loads them again and retries (never seen by the user unless retries run out)."""


def cascade_steps(session: Any, retries: int) -> Steps[None]:
    """Mark for deletion, in ``session``, every ``cascade`` referrer of the entities it
    deletes, recursively: one round trip per level (every referrer index set of the
    level in one), none when no deleted class has a ``cascade`` referrer. An entity
    already deleted is not visited again, so cycles end."""
    incoming: dict[Mapper, list[MappedField]] = {}
    visited: set[bytes] = set()
    level = [s for s in session.states() if s.deleted]
    while level:
        reads: list[tuple[MappedField, bytes, bytes]] = []
        for state in level:
            visited.add(state.key)
            fields = incoming.get(state.mapper)
            if fields is None:
                found = state.mapper.registry.incoming(state.mapper)
                fields = incoming[state.mapper] = [f for f in found if f.on_delete == "cascade"]
            value = state.id.encode()
            for field in fields:
                for layout in field.mapper.layout.shard_layouts():
                    index = layout.eq_index(field.hash_field, value)
                    reads.append((field, index, layout.expiry))
        level = []
        by_client: dict[int, tuple[Any, list[tuple[MappedField, bytes, bytes]]]] = {}
        for read in reads:
            client = session.bind_for(read[0].mapper)
            by_client.setdefault(id(client), (client, []))[1].append(read)
        for client, wanted in by_client.values():
            replies = yield from executor.run_steps(
                client,
                [
                    # An expiring referrer's index: its live referrers (expired ones
                    # refer to nothing), read as the commit reads them.
                    expiry.live_members(index, instants)
                    if f.mapper.expiring
                    else (b"SMEMBERS", index)
                    for f, index, instants in wanted
                ],
            )
            for (field, _, _), members in zip(wanted, replies, strict=True):
                for member in sorted(members):
                    ident = member.decode() if isinstance(member, bytes) else member
                    obj = session.reference(field.mapper.class_, ident)
                    state = instrument.state_of(obj)
                    if state.deleted or state.key in visited:
                        continue
                    session.delete(obj)
                    level.append(state)


def keys_of(changes: Iterable[EntityChange], op: str) -> set[bytes]:
    return {c.key for c in changes if c.op == op}


__all__ = [
    "CascadeGrew",
    "Referrers",
    "Target",
    "cascade_steps",
    "enforce",
    "keys_of",
    "plan_group",
    "settle_nulled",
]

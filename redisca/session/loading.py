"""Loading: HGETALL replies into instances, without re-running validators.

Values read from Redis were valid when written, so hydration sets them
straight into the slots; a stored value its codec cannot read is a
:class:`~redisca.DecodeError` naming the key and field.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError, NotFound
from ..mapping import instrument
from ..mapping.instrument import IN_STEP, MISSING
from ..mapping.keys import VERSION_FIELD, decode_version
from ..mapping.mapper import MappedField, Mapper
from . import executor, expiry, gcpause, routing
from .io import Steps
from .plan import Command
from .state import InstanceState

if TYPE_CHECKING:
    from .identity import IdentityMap


def decode_field(field: MappedField, raw: bytes, key: bytes) -> Any:
    try:
        return field.decoder(raw)
    except Exception as exc:
        raise _decode_error(field, raw, key, exc) from None


def _decode_error(field: MappedField, raw: bytes, key: bytes, exc: Exception) -> DecodeError:
    name = key.decode(errors="replace")
    return DecodeError(
        f"{name}: field {field.hash_field.decode()!r} holds {raw[:60]!r}, which is not a "
        f"valid {field.codec.name if field.codec else 'id'} ({exc})",
        key=name,
        field=field.name,
    )


def python_value(identity: IdentityMap, field: MappedField, raw: bytes | None, key: bytes) -> Any:
    """A stored value as the attribute holds it (references become session instances)."""
    if raw is None:
        return None
    value = decode_field(field, raw, key)
    if field.is_reference:
        return identity.stub(field.target_mapper(), value)
    return value


def hydrate(
    identity: IdentityMap, state: InstanceState, raw: dict[bytes, bytes], *, overwrite: bool
) -> None:
    """Fill an instance from its hash; ``overwrite=False`` keeps values set in Python."""
    snapshot: dict[MappedField, bytes | None] = {}
    if overwrite:
        _fill(identity, state, raw, snapshot)
    else:
        _fill_missing(identity, state, raw, snapshot)
    version = raw.get(VERSION_FIELD)
    state.snapshot = snapshot
    if state.mapper.collections:
        fill_members(identity, state, raw, overwrite=overwrite)
    if overwrite:
        state.assigned = IN_STEP  # every field now holds what the snapshot says
    if version is None:
        state.version = None
    else:
        state.version = decode_version(version, state.mapper.key(state.id))  # type: ignore[arg-type]
    if state.mapper.expiring:
        state.expires = raw.get(expiry.INSTANT)  # type: ignore[assignment] # an int
    state.loaded = True
    state.persistent = True
    state.in_doubt = False


def _fill(
    identity: IdentityMap,
    state: InstanceState,
    raw: dict[bytes, bytes],
    snapshot: dict[MappedField, bytes | None],
) -> None:
    """Every field from the hash: a refresh, and the field-by-field rerun of a generated
    filler that failed (so the error names the key and the field)."""
    obj = state.obj
    for field, hash_field, store, decode, is_reference in state.mapper.loaders:
        enc = raw.get(hash_field)
        snapshot[field] = enc
        if enc is None:
            store(obj, None)
            continue
        try:
            value = decode(enc)
        except Exception as exc:
            raise _decode_error(field, enc, state.mapper.key(state.id), exc) from None  # type: ignore[arg-type]
        if is_reference:
            value = identity.stub(field.target_mapper(), value)  # the session's instance
        store(obj, value)


def _fill_missing(
    identity: IdentityMap,
    state: InstanceState,
    raw: dict[bytes, bytes],
    snapshot: dict[MappedField, bytes | None],
) -> None:
    """The fields not set in Python (a lazy load of an instance assigned to meanwhile)."""
    obj, key = state.obj, state.mapper.key(state.id)  # type: ignore[arg-type]
    for field in state.mapper.fields:
        enc = raw.get(field.hash_field)
        snapshot[field] = enc
        if field.attribute.get_raw(obj) is MISSING:
            field.attribute.store(obj, python_value(identity, field, enc, key))


#: Where a loaded hash dict carries a collection's reply (``MEMBERS + hash_field``):
#: hash field names hold no ``#``, so no hash field can be taken for one.
MEMBERS = b"#m:"


def member_reads(mapper: Mapper, ident: str) -> list[Command]:
    """The reads of an entity's collections (``SMEMBERS``, ``LRANGE``), sent in the
    pipeline that reads its hash: a collection costs no round trip of its own."""
    raw = ident.encode()
    return [
        (b"SMEMBERS", mapper.layout.members(f.hash_field, raw))
        if f.collection == "set"
        else (b"LRANGE", mapper.layout.members(f.hash_field, raw), 0, -1)
        for f in mapper.collections
    ]


def _with_members(
    client: Any, mapper: Mapper, ids: list[str], keys: list[bytes]
) -> Steps[list[dict[bytes, bytes]]]:
    """HGETALL of ``keys`` (the entities ``ids``) and their collections in one round trip;
    each found hash carries its collections' replies under ``MEMBERS`` + field. An
    expiring model's instants are read with them (:func:`unexpired`)."""
    # The instants first: an entity expired then is missing even if its id is reused
    # by the time its hash is read (the other way round, a new entity's instant could
    # make the old one's hash look alive).
    instants = _instant_groups(mapper, ids, range(len(ids))) if mapper.expiring else {}
    commands: list[Command] = [
        expiry.read_command(key, [ids[i] for i in at]) for key, at in instants.items()
    ]
    skip = len(commands)
    commands += [(b"HGETALL", key) for key in keys]
    for ident in ids:
        commands += member_reads(mapper, ident)
    replies = yield from executor.run_steps(client, commands)
    hashes = _hashes(replies[skip : skip + len(keys)], keys)
    rest = iter(replies[skip + len(keys) :])
    for raw in hashes:
        for field in mapper.collections:
            reply = next(rest)
            if raw:  # a missing entity has no collections either
                raw[MEMBERS + field.hash_field] = reply
    for (key, at), reply in zip(instants.items(), replies, strict=False):
        unexpired([hashes[i] for i in at], key, reply)
    return hashes


def _instant_groups(mapper: Mapper, ids: list[str], at: Iterable[int]) -> dict[bytes, list[int]]:
    """The positions ``at`` of entities of an expiring model by the ``H#exp`` holding their
    instants: one key for a model of one shard, a key per shard touched on a sharded model
    (one ``expiry.READ`` each)."""
    layout = mapper.layout
    if layout.shards == 1:
        return {layout.expiry: list(at)}
    groups: dict[bytes, list[int]] = {}
    for i in at:
        groups.setdefault(layout.expiry_of(ids[i]), []).append(i)
    return groups


def unexpired(hashes: list[dict[bytes, Any]], key: bytes, reply: Any) -> None:
    """Empty the hashes of expired entities (they load as missing), and give the others
    their instants (under ``expiry.INSTANT``), from ``expiry.READ``'s ``reply``."""
    for raw, at in zip(hashes, expiry.instants(reply, key, len(hashes)), strict=True):
        if at == 0:
            raw.clear()
        elif raw:
            raw[expiry.INSTANT] = at


def fill_members(
    identity: IdentityMap, state: InstanceState, raw: dict[bytes, Any], *, overwrite: bool
) -> None:
    """Collections from their replies in ``raw`` (those not read stay unloaded); the
    snapshot gets their encoded members, so in place changes are found by comparison.
    ``overwrite=False`` keeps a collection assigned in Python (its changes are then
    the difference with what Redis holds)."""
    obj, mapper = state.obj, state.mapper
    snapshot: dict[Any, Any] = state.snapshot
    for field in mapper.collections:
        reply = raw.get(MEMBERS + field.hash_field)
        if reply is None:
            continue
        key = field.mapper.layout.members(field.hash_field, state.id.encode())  # type: ignore[union-attr]
        if isinstance(reply, Exception):
            routing.check(reply, key.decode(errors="replace"))
            raise DecodeError(f"{key.decode(errors='replace')}: {reply}", key=key.decode())
        members = frozenset(reply) if field.collection == "set" else tuple(reply)
        snapshot[field] = members
        if not overwrite and field.attribute.get_raw(obj) is not MISSING:
            continue
        values = [python_value(identity, field, member, key) for member in members]
        field.attribute.store(obj, set(values) if field.collection == "set" else values)


def load_members_steps(
    identity: IdentityMap, client: Any, mapper: Mapper, objs: Iterable[Any]
) -> Steps[None]:
    """The collections of loaded instances whose collections were not read with them
    (a query's page: its script reads the hashes), in one more round trip for the
    whole page."""
    states = []
    for obj in objs:
        state = instrument.state_of(obj)
        if state is None or not state.persistent or state.id is None:
            continue
        if any(f.attribute.get_raw(obj) is MISSING for f in mapper.collections):
            states.append(state)
    if not states:
        return
    commands: list[Command] = []
    for state in states:
        commands += member_reads(mapper, state.id)
    replies = iter((yield from executor.run_steps(client, commands)))
    for state in states:
        raw = {MEMBERS + f.hash_field: next(replies) for f in mapper.collections}
        fill_members(identity, state, raw, overwrite=False)


def _hash(reply: Any, key: bytes) -> dict[bytes, bytes]:
    if isinstance(reply, Exception):
        name = key.decode(errors="replace")
        routing.check(reply, f"HGETALL {name}")
        raise DecodeError(f"{name} is not a hash: {reply}", key=name)
    return executor.hash_reply(reply)


def _fetch_keys(client: Any, keys: list[bytes]) -> list[dict[bytes, bytes]]:
    """HGETALL of every key in one round trip (empty dicts for missing keys)."""
    return _hashes(executor.run(client, [(b"HGETALL", key) for key in keys]), keys)


def fetch_keys_steps(client: Any, keys: list[bytes]) -> Steps[list[dict[bytes, bytes]]]:
    """:func:`_fetch_keys` as a protocol (:mod:`redisca.session.io`)."""
    replies = yield from executor.run_steps(client, [(b"HGETALL", key) for key in keys])
    return _hashes(replies, keys)


def _hashes(replies: list[Any], keys: list[bytes]) -> list[dict[bytes, bytes]]:
    """HGETALL replies as dicts (empty for missing keys)."""
    hashes = []
    for reply, key in zip(replies, keys, strict=True):
        if type(reply) is list:  # RESP2, inlined: once per loaded entity
            items = iter(reply)
            hashes.append(dict(zip(items, items, strict=True)))
        else:
            hashes.append(_hash(reply, key))
    return hashes


def fetch(client: Any, mapper: Mapper, ids: list[str]) -> list[dict[bytes, bytes]]:
    """The hashes of ``ids`` in one round trip (empty dicts for missing keys, and for
    expired entities)."""
    if mapper.collections or mapper.expiring:
        return executor.drive(_with_members(client, mapper, ids, mapper.layout.entities(ids)))
    return _fetch_keys(client, mapper.layout.entities(ids))


def fetch_steps(client: Any, mapper: Mapper, ids: list[str]) -> Steps[list[dict[bytes, bytes]]]:
    """:func:`fetch` as a protocol (:mod:`redisca.session.io`)."""
    if mapper.collections or mapper.expiring:
        return (yield from _with_members(client, mapper, ids, mapper.layout.entities(ids)))
    return (yield from fetch_keys_steps(client, mapper.layout.entities(ids)))


def wanted(
    identity: IdentityMap, mapper: Mapper, ids: Sequence[str | int]
) -> tuple[list[str], Callable[[str], InstanceState | None], list[str]]:
    """``get_many``'s ids checked, the lookup of their states, and the ids to load
    (those the session does not hold loaded or pending), each once."""
    coerce = mapper.lookup_id  # None names no entity: a ValidationError
    idents = [i if type(i) is str and i.isascii() else coerce(i) for i in ids]
    lookup = identity.table(mapper).get
    wanted = [
        ident
        for ident, state in zip(idents, map(lookup, idents), strict=True)
        if state is None or (state.persistent and not state.loaded)
    ]
    return idents, lookup, list(dict.fromkeys(wanted)) if wanted else wanted


def found(lookup: Callable[[str], InstanceState | None], idents: list[str]) -> list[Any]:
    """``get_many``'s result: pending instances count; deleted ones and keys Redis did
    not hold do not."""
    return [
        state.obj
        if state is not None and not state.deleted and (state.loaded or not state.persistent)
        else None
        for state in map(lookup, idents)
    ]


def load_ids(identity: IdentityMap, client: Any, mapper: Mapper, idents: list[str]) -> None:
    """Load these ids in one round trip: the loop of every ``get_many`` and query.

    An instance the session does not hold yet (nearly always) is built inline and
    filled by the mapper's generated filler; one it holds unloaded keeps what was
    set on it in Python. Missing keys load nothing.
    """
    install(identity, mapper, idents, fetch(client, mapper, idents))


def install(
    identity: IdentityMap, mapper: Mapper, idents: list[str], raws: list[dict[bytes, bytes]]
) -> None:
    """Build or fill the instances of ``idents`` from their hashes (empty: missing)."""
    table, tables = identity.table(mapper), identity.tables
    stub, ref, lookup = identity.stub, identity.ref, table.get
    cls, store_id, fill = mapper.class_, mapper.id_attribute.store, mapper.filler
    new, attach = object.__new__, instrument.attach
    expiring = mapper.expiring
    for ident, raw in zip(idents, raws, strict=True):
        if not raw:
            continue
        state = lookup(ident)  # filling a previous one may have made a stub for it
        if state is not None:
            hydrate(identity, state, raw, overwrite=False)
            continue
        obj = new(cls)
        store_id(obj, ident)
        try:
            snapshot = fill(obj, raw, tables, stub)
        except Exception:
            state = InstanceState(obj, mapper, ident)
            _fill(identity, state, raw, {})  # raises the DecodeError naming key and field
            raise
        state = InstanceState(obj, mapper, ident, snapshot, ref)
        if table.setdefault(ident, state) is not state:
            # It refers to itself: filling made a stub of it, which becomes the instance.
            hydrate(identity, table[ident], raw, overwrite=False)
            continue
        attach(obj, state)
        if mapper.collections:
            fill_members(identity, state, raw, overwrite=True)
        if expiring:
            state.expires = raw.get(expiry.INSTANT)  # type: ignore[assignment] # an int
        version = raw.get(VERSION_FIELD)
        if version is not None:
            state.version = decode_version(version, mapper.key(ident))


def from_hashes(
    identity: IdentityMap,
    mapper: Mapper,
    idents: list[str],
    replies: list[Any],
    instants: Sequence[int | None] | None = None,
) -> list[Any]:
    """Instances of ``idents`` from HGETALL replies read with them (a query's page),
    ``None`` where no hash was read. Instances the session holds loaded, pending or
    deleted stay as the session has them, as :meth:`Session.get_many` returns them.
    ``instants``: an expiring model's expiry instants (ms) of ``idents``, if read (else
    the instances' ``expires_at`` is ``None``)."""
    table = identity.table(mapper)
    lookup = table.get
    wanted, hashes = [], []
    for ident, reply in zip(idents, replies, strict=True):
        state = lookup(ident)
        if state is None or (state.persistent and not state.loaded):
            wanted.append(ident)
            if type(reply) is list:  # RESP2, inlined (the key is named only on an error)
                items = iter(reply)
                hashes.append(dict(zip(items, items, strict=True)))
            else:
                hashes.append(_hash(reply, mapper.key(ident)))
    if instants is not None:
        known = dict(zip(idents, instants, strict=True))
        for ident, raw in zip(wanted, hashes, strict=True):
            if raw and known[ident] is not None:
                raw[expiry.INSTANT] = known[ident]
    elif mapper.expiring:  # the query script read each hash's instant with it
        for raw in hashes:
            at = raw.get(expiry.INSTANT)
            if at is not None:
                raw[expiry.INSTANT] = int(float(at))
    if wanted:
        with gcpause.paused(len(wanted)):
            install(identity, mapper, wanted, hashes)
    return [
        None
        if state is None or state.deleted or not (state.loaded or not state.persistent)
        else state.obj
        for state in map(lookup, idents)
    ]


def load_states(
    identity: IdentityMap, client_for: Callable[[Mapper], Any], states: Iterable[InstanceState]
) -> None:
    """Load unloaded states, one round trip per server (``client_for`` names a class's
    client); missing keys stay unloaded."""
    executor.drive(load_states_steps(identity, client_for, states))


def load_states_steps(
    identity: IdentityMap, client_for: Callable[[Mapper], Any], states: Iterable[InstanceState]
) -> Steps[None]:
    """:func:`load_states` as a protocol (:mod:`redisca.session.io`)."""
    by_client: dict[int, list[InstanceState]] = defaultdict(list)
    for state in states:
        by_client[id(client_for(state.mapper))].append(state)
    for group in by_client.values():
        keys = [s.mapper.key(s.id) for s in group]  # type: ignore[arg-type]
        members = [m for s in group for m in member_reads(s.mapper, s.id)]  # type: ignore[arg-type]
        if members or any(s.mapper.expiring for s in group):
            replies = yield from _states_with_members(client_for(group[0].mapper), group, keys)
        else:
            replies = yield from fetch_keys_steps(client_for(group[0].mapper), keys)
        with gcpause.paused(len(group)):
            for state, raw in zip(group, replies, strict=True):
                if raw:
                    hydrate(identity, state, raw, overwrite=False)


def _states_with_members(
    client: Any, states: list[InstanceState], keys: list[bytes]
) -> Steps[list[dict[bytes, bytes]]]:
    """HGETALL of the states' keys and their collections' reads in one round trip, with
    the instants of the expiring models' entities (one ``expiry.READ`` per model)."""
    by_model: dict[Mapper, list[int]] = {}
    for i, state in enumerate(states):
        if state.mapper.expiring:
            by_model.setdefault(state.mapper, []).append(i)
    ids: list[str] = [state.id for state in states]  # type: ignore[misc]
    expiring: dict[bytes, list[int]] = {}
    for mapper, at in by_model.items():
        expiring.update(_instant_groups(mapper, ids, at))
    commands: list[Command] = [  # the instants first, as in _with_members
        expiry.read_command(key, [ids[i] for i in at]) for key, at in expiring.items()
    ]
    skip = len(commands)
    commands += [(b"HGETALL", key) for key in keys]
    for state in states:
        commands += member_reads(state.mapper, state.id)  # type: ignore[arg-type]
    replies = yield from executor.run_steps(client, commands)
    hashes = _hashes(replies[skip : skip + len(keys)], keys)
    rest = iter(replies[skip + len(keys) :])
    for state, raw in zip(states, hashes, strict=True):
        for field in state.mapper.collections:
            reply = next(rest)
            if raw:
                raw[MEMBERS + field.hash_field] = reply
    for (key, at), reply in zip(expiring.items(), replies, strict=False):
        unexpired([hashes[i] for i in at], key, reply)
    return hashes


def require(found: bool, state: InstanceState) -> None:
    if not found:
        raise NotFound(f"{state.key} does not exist in Redis")


__all__ = [
    "decode_field",
    "fetch",
    "fetch_keys_steps",
    "fetch_steps",
    "found",
    "from_hashes",
    "hydrate",
    "install",
    "load_ids",
    "load_members_steps",
    "load_states",
    "load_states_steps",
    "python_value",
    "require",
    "wanted",
]

"""check, reindex and stats of the unique claims of a sharded model.

A sharded model keeps a unique value's claim in the value's shard (``H#u:<field>:<n>``,
value → owner id; on a cluster beside it ``H#o:<field>:<n>``, value → the claim's
token) and its owner's hash in the owner's, with the registrations of claims in flight
(``H#c:<n>``) in the owner's shard too: the protocol of :mod:`redisca.session.claims`
(docs/guarantees.rst, "Unique values of a sharded model"). A task that walks one shard
at a time cannot compare the two, so the per-shard passes of check and reindex leave
these keys to this module, which walks every shard (in parallel, as
:func:`~redisca.maintenance.common.each_shard` does) and compares the whole model:

- each value held by an entity must be claimed for it (``missing_unique``,
  ``wrong_owner``), and by one entity only (``duplicate_unique``);
- each claim must name an entity holding the value (``dangling_unique``: a stale claim);
- a token with no claim beside it is ``stale_token``, a registration still there is
  ``stale_registration`` (a claimant that died between its steps).

No transaction spans two shards, so what one read finds may be a commit in flight
(registered, claimed, its entity not written yet). Each suspicion is read again after
:data:`LINGER` seconds and reported only if it is still there, the same: a commit takes
milliseconds between its steps. ``reindex`` repairs what is confirmed with the
protocol's own steps (:class:`~redisca.session.claims.Pending`): a stale claim is
proven stale in its owner's shard and then removed, a missing claim is claimed for the
holder and its registration removed while the holder still holds the value, tokens and
registrations left over are removed where they are unchanged. A value two entities
hold is reported and left (which one is meant is the user's to decide). On one server
every shard is on the server: each repair is one ``WATCH``/``MULTI``/``EXEC``.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs
from redis.exceptions import ResponseError

from ..conf import Client
from ..errors import ConflictError, RediscaError
from ..mapping.keys import UNIQUE_STRIPES
from ..mapping.mapper import MappedField, Mapper
from ..session import claims as protocol
from ..session import executor, expiry, routing
from ..session.io import Send, Steps
from ..session.plan import Command
from .common import each_shard, in_shard, model_name, run, show
from .placement import Keyspace
from .problems import Problem, Snapshot

#: Seconds a suspicion must last to be reported or repaired: a commit in flight goes
#: from its registration to its entity's transaction in far less.
LINGER = 1.0

T = TypeVar("T")

#: A claimed value: (hash field, index form of the value).
Value = tuple[bytes, bytes]

#: Most claims one pass of check or reindex holds in memory: every value's holders
#: (from every entity's hash) and claim. A model with more claims is walked in several
#: passes, each taking the values of every ``passes``-th stripe (``n % passes``) and
#: reading every entity's unique fields again, so memory stays bounded where time grows
#: by a walk of the entities per pass (at most :data:`~redisca.mapping.keys.
#: UNIQUE_STRIPES` passes).
PASS_CLAIMS = 1_000_000


@attrs.frozen
class Part:
    """The values one pass takes: those of the stripes ``n`` with ``n % passes == index``."""

    index: int = 0
    passes: int = 1

    def takes(self, stripe: int) -> bool:
        return stripe % self.passes == self.index

    def holds(self, value: bytes) -> bool:
        return self.passes == 1 or self.takes(zlib.crc32(value) % UNIQUE_STRIPES)


def covers(mapper: Mapper) -> bool:
    """Whether a model's unique claims are this module's (sharded, with a unique field)."""
    return mapper.shards > 1 and any(f.unique for f in mapper.indexed)


def owned_kind(kind: str) -> bool:
    """Whether a key kind (``KeyLayout.parse``) is a claim key, which the per-shard passes
    of a model :func:`covers` leave alone."""
    return kind in ("unique", "tokens", "registry")


@attrs.define
class Found:
    """What one read of every shard found."""

    #: value → the ids of the entities holding it (in their own shard).
    holders: dict[Value, list[str]] = attrs.field(factory=dict)
    #: value → the ids of expired entities holding it, not swept yet: a claim naming
    #: one is a leftover the sweep releases, no problem (an expiring model's).
    expired: dict[Value, list[str]] = attrs.field(factory=dict)
    #: value → (owner id, token or None), as the value's stripe holds it.
    claims: dict[Value, tuple[str, bytes | None]] = attrs.field(factory=dict)
    #: value → token, as the token stripe holds it.
    tokens: dict[Value, bytes] = attrs.field(factory=dict)
    #: (registration key, ``<field>:<id>``) → token.
    registrations: dict[tuple[bytes, bytes], bytes] = attrs.field(factory=dict)
    #: Claim keys of another type than a hash.
    wrong_types: list[bytes] = attrs.field(factory=list)

    def add(self, other: Found) -> None:
        for value, ids in other.holders.items():
            self.holders.setdefault(value, []).extend(ids)
        for value, ids in other.expired.items():
            self.expired.setdefault(value, []).extend(ids)
        self.claims.update(other.claims)
        self.tokens.update(other.tokens)
        self.registrations.update(other.registrations)
        self.wrong_types += other.wrong_types


@attrs.frozen
class Suspect:
    """A problem seen once: its kind and what it was seen with."""

    kind: str
    field: MappedField
    value: bytes = b""
    holders: tuple[str, ...] = ()
    owner: str | None = None
    token: bytes | None = None
    #: A registration's key and name.
    registration: tuple[bytes, bytes] | None = None


def verdict(
    holders: list[str], owner: str | None, token: bytes | None, expired: Iterable[str] = ()
) -> str | None:
    """The problem of one value, from who holds it (live entities; ``expired``: the
    expired ones, not swept yet) and what its shard holds for it."""
    if not holders and owner is not None and owner in expired:
        return None  # an expired entity's claim: a leftover the sweep releases
    if len(holders) > 1:
        return "duplicate_unique"
    if holders:
        if owner is None:
            return "missing_unique"
        return None if owner == holders[0] else "wrong_owner"
    if owner is not None:
        return "dangling_unique"
    return "stale_token" if token is not None else None


def gather(client: Client, mapper: Mapper, batch: int, part: Part | None = None) -> Found:
    """Every shard's holders, claims, tokens and registrations (shards in parallel): of
    the values ``part`` takes (all by default); the registrations in its first pass."""
    fields = [f for f in mapper.indexed if f.unique]
    taken = Part() if part is None else part

    def one(k: int, view: Mapper, progress: Any) -> Found:
        return _gather_shard(client, view, fields, batch, taken)

    found = Found()
    for shard in each_shard(mapper, one, None):
        found.add(shard)
    return found


def _gather_shard(
    client: Client, view: Mapper, fields: list[MappedField], batch: int, part: Part
) -> Found:
    found = Found()
    layout = view.layout
    space = Keyspace(client, view, "check")
    start = layout.entity_prefix_len()
    names = [f.hash_field for f in fields]
    try:
        for keys in space.scan(layout.entity_pattern, batch):
            replies = run(client, [(b"HMGET", key, *names) for key in keys])
            gone = _expired(client, view, [key[start:] for key in keys])
            for key, reply in zip(keys, replies, strict=True):
                ident = key[start:]
                if isinstance(reply, ResponseError) or not in_shard(view, ident):
                    continue  # the shard's own check reports it
                try:
                    holder = ident.decode()
                except UnicodeDecodeError:
                    continue
                into = found.expired if ident in gone else found.holders
                for field, raw in zip(fields, reply, strict=True):
                    value = _index_key(field, raw)
                    if value is not None and part.holds(value):
                        into.setdefault((field.hash_field, value), []).append(holder)
        stripes = [
            (f, k)
            for f in fields
            for n, k in enumerate(layout.unique_stripes(f.hash_field))
            if part.takes(n)
        ]
        tokens = [
            (f, k)
            for f in fields
            for n, k in enumerate(layout.claim_token_stripes(f.hash_field))
            if part.takes(n)
        ]
        registries = layout.registries() if part.index == 0 else []
        keys = [k for _, k in stripes] + [k for _, k in tokens] + registries
        replies = run(client, [(b"HGETALL", key) for key in keys])
    finally:
        space.done()
    at = 0
    for (field, key), reply in zip(stripes, replies, strict=False):
        at += 1
        if _bad(found, key, reply):
            continue
        for value, owner in executor.hash_reply(reply).items():
            found.claims[(field.hash_field, value)] = (show(owner), None)
    for (field, key), reply in zip(tokens, replies[at:], strict=False):
        at += 1
        if _bad(found, key, reply):
            continue
        for value, tok in executor.hash_reply(reply).items():
            found.tokens[(field.hash_field, value)] = tok
    for key, reply in zip(registries, replies[at:], strict=True):
        if _bad(found, key, reply):
            continue
        for name, tok in executor.hash_reply(reply).items():
            found.registrations[(key, name)] = tok
    for claimed, (named, _) in found.claims.items():
        found.claims[claimed] = (named, found.tokens.get(claimed))
    return found


def _expired(client: Client, view: Mapper, ids: list[bytes]) -> set[bytes]:
    """Of a shard's ``ids``, those expired by the server's clock (an expiring model's)."""
    if not view.expiring or not ids:
        return set()
    texts = [i.decode(errors="replace") for i in ids]
    key = view.layout.expiry
    reply = run(client, [expiry.read_command(key, texts)])[0]
    instants = expiry.instants(reply, key, len(ids))
    return {i for i, at in zip(ids, instants, strict=True) if at == 0}


def _bad(found: Found, key: bytes, reply: Any) -> bool:
    if isinstance(reply, ResponseError):
        found.wrong_types.append(key)
        return True
    return False


def _index_key(field: MappedField, raw: Any) -> bytes | None:
    if raw is None:
        return None
    try:
        return bytes(field.index_key(bytes(raw)))
    except Exception:
        return None  # undecodable: the shard's own check reports it


def suspects(mapper: Mapper, found: Found) -> list[Suspect]:
    """What one read of every shard shows wrong."""
    fields = {f.hash_field: f for f in mapper.indexed if f.unique}
    out = []
    for value in dict.fromkeys([*found.holders, *found.claims, *found.tokens]):
        holders = found.holders.get(value, [])
        owner, tok = found.claims.get(value, (None, found.tokens.get(value)))
        kind = verdict(holders, owner, tok, found.expired.get(value, ()))
        if kind is not None:
            out.append(Suspect(kind, fields[value[0]], value[1], tuple(holders), owner, tok))
    for (key, name), tok in found.registrations.items():
        field = fields.get(name.partition(b":")[0])
        if field is None:
            field = next(iter(fields.values()))
        out.append(Suspect("stale_registration", field, token=tok, registration=(key, name)))
    return out


def confirm(client: Client, mapper: Mapper, seen: list[Suspect]) -> list[Suspect]:
    """The suspects still there, the same, when read again after :data:`LINGER`."""
    if not seen:
        return []
    time.sleep(LINGER)
    commands: list[Command] = []
    for suspect in seen:
        commands += _reads(mapper, suspect)
    replies = iter(run(client, commands))
    out = []
    for suspect in seen:
        now = _reread(mapper, suspect, replies)
        if now == suspect:
            out.append(suspect)
    return out


def _candidates(suspect: Suspect) -> list[str]:
    ids = list(suspect.holders)
    if suspect.owner is not None and suspect.owner not in ids:
        ids.append(suspect.owner)
    return ids


def _reads(mapper: Mapper, suspect: Suspect) -> list[Command]:
    layout = mapper.layout
    if suspect.registration is not None:
        return [(b"HGET", *suspect.registration)]
    hf, value = suspect.field.hash_field, suspect.value
    reads: list[Command] = [
        (b"HGET", layout.unique_stripe(hf, value), value),
        (b"HGET", layout.claim_tokens(hf, value), value),
    ]
    for ident in _candidates(suspect):
        reads.append((b"HGET", layout.for_id(ident).entity(ident), hf))
        if mapper.expiring:
            reads.append(expiry.read_command(layout.expiry_of(ident), [ident]))
    return reads


def _reread(mapper: Mapper, suspect: Suspect, replies: Any) -> Suspect | None:
    """The suspect as the replies of its :func:`_reads` show it now (``None``: sound)."""
    if suspect.registration is not None:
        tok = next(replies)
        return suspect if tok is not None and bytes(tok) == suspect.token else None
    owner, tok = next(replies), next(replies)
    holders: list[str] = []
    expired: list[str] = []
    for ident in _candidates(suspect):
        raw = next(replies)
        gone = mapper.expiring and _gone(mapper, ident, next(replies))
        if not isinstance(raw, ResponseError) and _index_key(suspect.field, raw) == suspect.value:
            (expired if gone else holders).append(ident)
    if isinstance(owner, ResponseError) or isinstance(tok, ResponseError):
        return None
    owner_id = None if owner is None else show(bytes(owner))
    token = None if tok is None else bytes(tok)
    kind = verdict(holders, owner_id, token, expired)
    if kind is None:
        return None
    return attrs.evolve(suspect, kind=kind, holders=tuple(holders), owner=owner_id, token=token)


def _gone(mapper: Mapper, ident: str, reply: Any) -> bool:
    """Whether ``expiry.READ``'s ``reply`` shows ``ident`` expired (unreadable: no)."""
    try:
        return expiry.instants(reply, mapper.layout.expiry_of(ident), 1)[0] == 0
    except RediscaError:
        return False


def confirmed(client: Client, mapper: Mapper, batch: int) -> tuple[list[bytes], list[Suspect], int]:
    """Every shard read, in as many passes as :data:`PASS_CLAIMS` asks: the claim keys
    of a wrong type, what the shards show wrong that lasts :data:`LINGER` seconds, and
    how many claims name an expired entity that still holds the value (leftovers a
    sweep releases)."""
    passes = passes_for(client, mapper)
    wrong: list[bytes] = []
    still: list[Suspect] = []
    leftovers = 0
    for index in range(passes):
        found = gather(client, mapper, batch, Part(index, passes))
        wrong += found.wrong_types
        still += confirm(client, mapper, suspects(mapper, found))
        leftovers += sum(
            1
            for value, (owner, _) in found.claims.items()
            if not found.holders.get(value) and owner in found.expired.get(value, ())
        )
    return wrong, still, leftovers


def passes_for(client: Client, mapper: Mapper) -> int:
    """How many passes keep a pass within :data:`PASS_CLAIMS` claims (``HLEN`` of every
    stripe: the claims there now; a pass may hold more holders where values are held
    but not claimed, which check reports)."""
    keys = [
        k
        for layout in mapper.shard_layouts()
        for f in mapper.indexed
        if f.unique
        for k in layout.unique_stripes(f.hash_field)
    ]
    claims = sum(n for n in run(client, [(b"HLEN", k) for k in keys]) if isinstance(n, int))
    return max(1, min(UNIQUE_STRIPES, math.ceil(claims / max(1, PASS_CLAIMS))))


# -- check ------------------------------------------------------------------------------


def check(client: Client, mapper: Mapper, batch: int) -> tuple[list[Problem], int]:
    """The problems of a sharded model's unique claims (see the module's docstring),
    and its claims of expired entities not swept yet (no problem)."""
    wrong, still, leftovers = confirmed(client, mapper, batch)
    name = model_name(mapper)
    problems = [
        Problem("wrong_type", name, show(key), None, "a claim key that is not a hash")
        for key in wrong
    ]
    problems += [problem(mapper, s) for s in still]
    return sorted(problems, key=lambda p: (p.key, p.kind, p.detail)), leftovers


def problem(mapper: Mapper, suspect: Suspect) -> Problem:
    """A confirmed suspect as check reports it."""
    name = model_name(mapper)
    field, layout = suspect.field, mapper.layout
    if suspect.registration is not None:
        key, entry = suspect.registration
        detail = (
            f"{show(entry)} registers a claim in flight ({show(suspect.token or b'')}) that "
            f"lasted over {LINGER:g} s: a claimant that died between its steps"
        )
        return Problem("stale_registration", name, show(key), field.name, detail)
    value = suspect.value
    stripe = layout.unique_stripe(field.hash_field, value)
    holders = ", ".join(show(h.encode()) for h in suspect.holders)
    if suspect.kind == "duplicate_unique":
        detail = f"{holders} all hold the value; it names {suspect.owner}"
    elif suspect.kind == "missing_unique":
        detail = f"{holders} holds the value, the value's shard does not claim it"
    elif suspect.kind == "wrong_owner":
        detail = f"names {suspect.owner}, but {holders} holds the value"
    elif suspect.kind == "dangling_unique":
        detail = f"names {suspect.owner}, which does not hold the value (a stale claim)"
    else:
        stripe = layout.claim_tokens(field.hash_field, value)
        detail = "a claim's token with no claim beside it"
    return Problem(suspect.kind, name, show(stripe), field.name, f"value {show(value)!r}: {detail}")


# -- reindex ----------------------------------------------------------------------------


@attrs.define
class Repaired:
    """What :func:`repair` did: the repairs made, and the problems left."""

    repaired: int = 0
    problems: list[Problem] = attrs.field(factory=list)


def repair(client: Client, mapper: Mapper, batch: int) -> Repaired:
    """Repair what :func:`check` would report, each with the protocol's own steps."""
    _, still, _ = confirmed(client, mapper, batch)
    out = Repaired()
    cluster = routing.is_cluster(client)
    for suspect in still:
        if suspect.kind == "duplicate_unique":
            out.problems.append(problem(mapper, suspect))
            continue
        try:
            if cluster:
                done = _repair_on_cluster(client, mapper, suspect)
            else:
                done = _repair_on_server(client, mapper, suspect)
        except RediscaError as exc:  # changed meanwhile, or taken: check tells what is left
            found = problem(mapper, suspect)
            out.problems.append(found._replace(detail=f"{found.detail} (not repaired: {exc})"))
            continue
        out.repaired += done
    return out


def _repair_on_server(client: Client, mapper: Mapper, suspect: Suspect) -> int:
    """One server: the suspect read again under ``WATCH`` and repaired in one
    ``MULTI``/``EXEC`` if it is still the same; tried again when a commit touched what
    it watches (a stripe holds many values: a writer claiming another one is enough)."""
    return _retried(
        lambda: _repair_once_on_server(client, mapper, suspect),
        "the value's keys kept changing while reindex repaired its claim",
    )


def _retried(once: Callable[[], T | None], what: str) -> T:
    """``once()``'s result, asked again while it is ``None`` (a commit touched the keys
    it watches between its read and its ``EXEC``), up to the commits' number of tries;
    then :class:`~redisca.ConflictError` saying ``what``."""
    for _ in range(executor.DEFAULT_RETRIES + 1):
        done = once()
        if done is not None:
            return done
    raise ConflictError(what)


def _repair_once_on_server(client: Client, mapper: Mapper, suspect: Suspect) -> int | None:
    """One attempt: 1 repaired, 0 the suspect changed (nothing to repair), ``None``
    the ``EXEC`` refused."""
    layout = mapper.layout
    hf, value = suspect.field.hash_field, suspect.value
    stripe, tokens = layout.unique_stripe(hf, value), layout.claim_tokens(hf, value)
    with executor.connection(client) as conn:
        snap = Snapshot(conn)
        reads = _reads(mapper, suspect)
        replies = snap.read([c[1] for c in reads], reads)
        if _reread(mapper, suspect, iter(replies)) != suspect:
            executor.roundtrip(conn, [(b"UNWATCH",)])
            return 0
        writes: list[Command]
        if suspect.registration is not None:
            writes = [(b"HDEL", *suspect.registration)]
        elif suspect.kind in ("missing_unique", "wrong_owner"):
            writes = [(b"HSET", stripe, value, suspect.holders[0].encode())]
            writes += [(b"HDEL", tokens, value)] if suspect.token is not None else []
        elif suspect.kind == "dangling_unique":
            writes = [(b"HDEL", stripe, value), (b"HDEL", tokens, value)]
        else:
            writes = [(b"HDEL", tokens, value)]
        return None if executor.transaction(conn, writes) is None else 1


def _repair_on_cluster(client: Client, mapper: Mapper, suspect: Suspect) -> int:
    field, value = suspect.field, suspect.value
    if suspect.registration is not None:
        key, name = suspect.registration
        slot = routing.slot_of(key)
        return _if_unchanged(
            client, slot, [key], [(b"HGET", key, name)], [suspect.token], [(b"HDEL", key, name)]
        )
    layout = mapper.layout
    if suspect.kind == "stale_token":
        stripe, tokens = (
            layout.unique_stripe(field.hash_field, value),
            layout.claim_tokens(field.hash_field, value),
        )
        reads: list[Command] = [(b"HGET", stripe, value), (b"HGET", tokens, value)]
        return _if_unchanged(
            client,
            routing.slot_of(stripe),
            [stripe, tokens],
            reads,
            [None, suspect.token],
            [(b"HDEL", tokens, value)],
        )
    pending = protocol.Pending([])
    if suspect.kind == "dangling_unique":
        assert suspect.owner is not None
        gone = _claim(client, mapper, suspect.owner, field, value)
        executor.drive(pending.vacate(client, [gone]))
        return 1
    # missing_unique, wrong_owner: claim it for its holder, then end the claim in flight
    # as the holder's own transaction would have (its registration removed) while the
    # holder still holds the value; if it no longer does, take the claim down again.
    holder = suspect.holders[0]
    claim = _claim(client, mapper, holder, field, value)
    pending = protocol.Pending([claim])
    executor.drive(pending.claim())
    assert claim.token is not None
    if _settle(client, mapper, claim):
        return 1
    claim.token = None
    executor.drive(pending.vacate(client, [claim]))
    return 0


def _claim(client: Client, mapper: Mapper, ident: str, field: MappedField, value: bytes) -> Any:
    return protocol.standalone(client, mapper, ident, field, value, value)


def _settle(client: Client, mapper: Mapper, claim: Any) -> bool:
    """In the holder's shard: its registration of ``claim`` removed if the holder still
    holds the value (and the registration is still ours); whether it was."""
    layout = mapper.layout
    ident = claim.id.encode()
    key, name = protocol.registration(claim.field, claim.id)
    guard, entity = layout.guard(ident), layout.for_id(claim.id).entity(claim.id)

    def attempt(server: Any) -> Steps[bool | None]:
        got = yield Send(
            [
                (b"WATCH", guard, key),
                (b"HGET", entity, claim.field.hash_field),
                (b"HGET", key, name),
            ]
        )
        executor.check_watch(got[0])
        raw, registered = got[1], got[2]
        if registered is None or bytes(registered) != claim.token:
            yield Send([(b"UNWATCH",)])
            return True  # revoked: another claimant proved it stale; theirs now
        if _index_key(claim.field, raw) != claim.value:
            yield Send([(b"UNWATCH",)])
            return False
        done = yield from executor.transaction_steps([(b"HDEL", key, name)])
        return None if done is None else True

    slot = routing.slot_of(key)
    return _retried(
        lambda: executor.drive(executor.on_slot(client, slot, "a claim's repair", attempt)),
        "the holder kept changing while reindex claimed its value",
    )


def _if_unchanged(
    client: Client,
    slot: int,
    watch: list[bytes],
    reads: list[Command],
    expected: list[bytes | None],
    writes: list[Command],
) -> int:
    """``writes`` in one transaction on ``slot``'s master if ``reads`` still give
    ``expected`` (under ``WATCH``): 1 if they were applied, 0 if they changed. Tried
    again when a commit touched the watched keys without changing what was read (they
    hold other values' and entities' entries too)."""

    def attempt(server: Any) -> Steps[int | None]:
        got = yield Send([(b"WATCH", *watch), *reads])
        executor.check_watch(got[0])
        now = [None if r is None else bytes(r) for r in got[1:]]
        if now != expected:
            yield Send([(b"UNWATCH",)])
            return 0
        return None if (yield from executor.transaction_steps(writes)) is None else 1

    return _retried(
        lambda: executor.drive(executor.on_slot(client, slot, "a claim's repair", attempt)),
        "the claim's keys kept changing while reindex repaired it",
    )


# -- stats ------------------------------------------------------------------------------


def count(client: Client, mapper: Mapper) -> int:
    """The values claimed in every shard (``HLEN`` of each unique stripe)."""
    fields = [f.hash_field for f in mapper.indexed if f.unique]
    keys = [
        k for layout in mapper.shard_layouts() for f in fields for k in layout.unique_stripes(f)
    ]
    return sum(int(n) for n in run(client, [(b"HLEN", k) for k in keys]) if isinstance(n, int))


__all__ = ["LINGER", "check", "count", "covers", "owned_kind", "repair"]

"""Unique values of a sharded model on a cluster: claims in the value's own shard.

A sharded model keeps a unique value's claim in the shard of the value
(``H#u:<field>:<n>``: value → owner id), so a claim and its owner's hash may be in
two hash slots, which no ``MULTI``/``EXEC`` spans. The protocol (docs/guarantees.rst,
"Unique values of a sharded model") keeps "an entity holds a value only while the
value's claim names it" true at every instant, with three kinds of keys:

- the stripe ``H#u:<field>:<n>`` in the value's shard, value → owner id, and beside it
  ``H#o:<field>:<n>``, value → the claim's *token* (random, never reused);
- the *registration* ``H#c:<n>`` in the owner's shard, ``<field>:<id>`` → the token
  of the entity's claim in flight for that field (one at a time per entity and field).

A commit (1) registers a fresh token per value it claims, in the claimant's shard;
(2) claims each value in the value's shard (owner and token), if it is free, already
this claim's, or proven stale; (3) writes the entity in its shard, in a transaction
that watches the registration and removes it: if the registration no longer holds the
token, the claim was revoked and the commit claims again. A claim ``(O, t)`` is
*stale* when ``O``'s hash does not hold the value and ``t`` is not registered for
``O``: proven in ``O``'s shard by a transaction watching ``O``'s guard stripe and
registration, which also removes the registration of ``t`` (revoking a claim in flight:
its step 3 then fails). The claim is then taken over in the value's shard only if it
still holds ``(O, t)`` (watched). Tokens are never reused, so a revoked or finished
token never comes back. Releases (an entity's old values, a deleted entity's values)
follow the commit the same way: proven stale, then removed if unchanged; a release that
fails leaves a stale claim, which the next claimant proves and takes over.

On one server every shard is on the server, and a commit claims and writes in one
transaction, as for a model of one shard (no token, no registration).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import ConflictError, OperationalError, RediscaError, UniqueViolation
from ..mapping.keys import decode_id
from ..mapping.mapper import MappedField, Mapper
from . import executor, expiry, routing
from .emit import RELEASE_OWNED, ClaimRevoked
from .io import Parallel, Send, Steps
from .plan import DELETE, INSERT, UPDATE, Command, EntityChange

if TYPE_CHECKING:
    from .unitofwork import Group


def token() -> bytes:
    """A claim's token: 16 random hex digits, never reused."""
    return os.urandom(8).hex().encode()


@attrs.define(eq=False)
class Claim:
    """One value claimed (or released: ``token`` ``None``) by one entity."""

    client: Any
    change: EntityChange
    field: MappedField
    #: The value as stored, and its index form (lower case for an Email).
    raw: bytes
    value: bytes
    token: bytes | None = None

    @property
    def id(self) -> str:
        return self.change.id

    @property
    def stripe(self) -> bytes:
        return self.change.mapper.layout.unique_stripe(self.field.hash_field, self.value)

    @property
    def tokens_key(self) -> bytes:
        return self.change.mapper.layout.claim_tokens(self.field.hash_field, self.value)

    def value_slot(self) -> int:
        return routing.tag_slot(self.change.mapper.layout.for_value(self.value).hashtag)

    def owner_slot(self, owner: str) -> int:
        if owner == self.change.id:  # the claimant: its change knows its shard
            return routing.tag_slot(self.change.layout.hashtag)
        return routing.tag_slot(self.change.mapper.layout.for_id(owner).hashtag)


def registration(field: MappedField, owner: str) -> tuple[bytes, bytes]:
    """The registration key of ``owner`` (in its shard) and its field for ``field``."""
    ident = owner.encode()
    return field.mapper.layout.registry(ident), field.hash_field + b":" + ident


#: A claim as the value's shard holds it, proven stale (or the claimant's own): the
#: field, the value, the owner, the token.
Proof = tuple[bytes, bytes, str, "bytes | None"]


@attrs.define(eq=False)
class Pending:
    """The claims and releases of one commit's sharded models on a cluster."""

    claims: list[Claim]
    retries: int = executor.DEFAULT_RETRIES
    #: Claims proven stale (or held by their claimant), which may be taken over.
    proven: set[Proof] = attrs.field(factory=set)
    #: Those of them whose owner held the value (the claimant itself): never released.
    held: set[Proof] = attrs.field(factory=set)

    def claim(self, claims: list[Claim] | None = None) -> Steps[None]:
        """Steps 1 and 2: register fresh tokens, then claim in the values' shards.

        A lost reply here leaves at worst a claim in flight (taken over later): no
        entity was written, so the error's ``outcome_unknown`` is false."""
        try:
            yield from self._claim(self.claims if claims is None else claims)
        except OperationalError as exc:
            if not exc.outcome_unknown:
                raise
            raise OperationalError(
                f"{exc} (while claiming unique values in their shards: no entity was "
                "written; a claim made stays in flight until the next claimant takes it)",
                exc.orig,
            ) from exc

    def _claim(self, claims: list[Claim]) -> Steps[None]:
        for claim in claims:
            claim.token = token()
            claim.change.tokens[claim.field] = claim.token  # type: ignore[index]
        registering = []
        for client, slot, batch in _by_slot(claims, lambda c: c.owner_slot(c.id)):
            fields: dict[bytes, list[bytes]] = {}  # one HSET per registration key
            for claim in batch:
                key, name = registration(claim.field, claim.id)
                fields.setdefault(key, []).extend((name, claim.token))
            commands: list[Command] = [(b"HSET", key, *args) for key, args in fields.items()]
            registering.append(_atomic(client, slot, "a unique claim's registration", commands))
        yield from at_once(registering)
        yield from at_once(
            [
                self._claim_in(client, slot, batch)
                for client, slot, batch in _by_slot(claims, Claim.value_slot)
            ]
        )

    def abandon(self, groups: list[Group]) -> Steps[None]:
        """After a commit failed: remove the claims it made for ``groups`` (not
        committed, or of unknown outcome) where they are proven stale. Best effort, as
        :meth:`release`: a claim left is a stale claim in flight, taken over later."""
        changes = {id(change) for group in groups for change in group.changes}
        mine = [c for c in self.claims if id(c.change) in changes and c.token is not None]
        try:
            for client, slot, batch in _by_slot(mine, lambda c: c.owner_slot(c.id)):
                keys, args = [], []
                for claim in batch:  # our tokens' registrations, if still ours
                    key, name = registration(claim.field, claim.id)
                    keys.append(key)
                    args += [name, claim.token]
                unregister = [(b"EVAL", RELEASE_OWNED, len(keys), *keys, *args)]
                yield from _atomic(client, slot, "a unique claim's registration", unregister)
            for client, slot, batch in _by_slot(mine, Claim.value_slot):
                yield from self._vacate(client, slot, batch)
        except RediscaError:
            pass

    def vacate(self, client: Any, claims: list[Claim]) -> Steps[None]:
        """Remove the claims naming ``claims``' entities (their tokens ``None``: any
        token) where they are proven stale, as a release does: the repairs of
        ``reindex`` (:mod:`redisca.maintenance.shardclaims`) take down stale claims with
        it. Not best effort: a failure raises."""
        for _, slot, batch in _by_slot(claims, Claim.value_slot, client=client):
            yield from self._vacate(client, slot, batch)

    def reclaim(self, group: Group) -> Steps[None]:
        """After a revoked claim (step 3 failed): claim the group's values again."""
        changes = {id(change) for change in group.changes}
        yield from self.claim([c for c in self.claims if id(c.change) in changes])

    def release(self, group: Group) -> Steps[None]:
        """After the group committed: remove the claims of the values its entities let
        go, where they are proven stale. Best effort: what fails stays a stale claim,
        which the next claimant of the value proves and takes over."""
        mine = [
            Claim(group.client, change, field, raw, field.index_key(raw))
            for change in group.changes
            for field, raw in change.released.items()
        ]
        try:
            for client, slot, batch in _by_slot(mine, Claim.value_slot):
                yield from self._vacate(client, slot, batch)
        except RediscaError:
            pass  # a stale claim stays: see the docstring

    # -- the value's shard ---------------------------------------------------------

    def _claim_in(self, client: Any, slot: int, claims: list[Claim]) -> Steps[None]:
        take = functools.partial(self._take, claims)
        for _ in range(self.retries + 1):
            stale = yield from executor.on_slot(client, slot, "a unique claim", take)
            if stale is None:
                return
            if stale:
                yield from self._prove(client, stale, claiming=True)
        raise ConflictError(
            f"unique claims kept changing; gave up after {self.retries + 1} attempts"
        )

    def _take(self, claims: list[Claim], server: Any) -> Steps[list[Stale] | None]:
        """Claim what is free, ours or proven stale; the stale claims still to prove
        (``[]``: a watched key changed, try again; ``None``: done)."""
        held = yield from _read_claims(claims, watch=True)
        fields: dict[bytes, list[bytes]] = {}  # one HSET per stripe (and tokens key)
        stale: list[Stale] = []
        for claim, (owner, tok) in zip(claims, held, strict=True):
            if owner == claim.id and tok == claim.token:
                continue
            if owner is None or self._proven(claim, owner, tok):
                fields.setdefault(claim.stripe, []).extend((claim.value, claim.id.encode()))
                fields.setdefault(claim.tokens_key, []).extend((claim.value, claim.token))  # type: ignore[arg-type]
            else:
                stale.append((claim, owner, tok))
        writes: list[Command] = [(b"HSET", key, *args) for key, args in fields.items()]
        if stale or not writes:
            yield Send([(b"UNWATCH",)])
            return stale or None
        done = yield from executor.transaction_steps(writes)
        return None if done is not None else []

    def _vacate(self, client: Any, slot: int, releases: list[Claim]) -> Steps[None]:
        read = functools.partial(_read_only, releases)
        for _ in range(self.retries + 1):
            held = yield from executor.on_slot(client, slot, "a unique release", read)
            ours = [
                (r, o, t)
                for r, (o, t) in zip(releases, held, strict=True)
                if o == r.id and (r.token is None or t == r.token)  # an abandon: its own
            ]
            if not ours:
                return
            yield from self._prove(client, ours, claiming=False)
            gone = [(r, o, t) for r, o, t in ours if self._proven(r, o, t, released=True)]
            if not gone:
                return
            remove = functools.partial(_remove, gone)
            if (yield from executor.on_slot(client, slot, "a unique release", remove)):
                return

    def _proven(self, claim: Claim, owner: str, tok: Any, released: bool = False) -> bool:
        proof = (claim.field.hash_field, claim.value, owner, tok)
        return proof in self.proven and (not released or proof not in self.held)

    # -- the owner's shard ---------------------------------------------------------

    def _prove(self, client: Any, stale: list[Stale], claiming: bool) -> Steps[None]:
        """Prove claims stale in their owners' shards (revoking their registration), or
        raise :class:`~redisca.UniqueViolation` for one whose owner holds the value."""
        by_owner = _by_slot(stale, lambda item: item[0].owner_slot(item[1]), client=client)
        for _, slot, batch in by_owner:
            revoke = functools.partial(self._revoke, batch, claiming)
            for _ in range(self.retries + 1):
                if (yield from executor.on_slot(client, slot, "a unique claim's owner", revoke)):
                    break
            else:
                raise ConflictError(
                    f"unique claims' owners kept changing; gave up after {self.retries + 1} "
                    "attempts"
                )

    def _revoke(self, batch: list[Stale], claiming: bool, server: Any) -> Steps[bool]:
        """One attempt in an owner's shard: ``False`` when a watched key changed."""
        mapper = batch[0][0].change.mapper
        layout = mapper.layout
        watched: dict[bytes, None] = {}
        reads: list[Command] = []
        for claim, owner, _ in batch:
            key, name = registration(claim.field, owner)
            watched[layout.guard(owner.encode())] = None
            watched[key] = None
            reads += [(b"HGET", layout.entity(owner), claim.field.hash_field), (b"HGET", key, name)]
        # An expired owner holds nothing: its instant read with the rest (a change of it
        # moves the owner's guard stripe, watched).
        instants: dict[bytes, list[str]] = {}
        if mapper.expiring:
            for _, owner, _ in batch:
                instants.setdefault(layout.expiry_of(owner), []).append(owner)
        reads += [expiry.read_command(key, ids) for key, ids in instants.items()]
        got = yield Send([(b"WATCH", *watched), *reads])
        executor.check_watch(got[0])
        expired: set[str] = set()
        for (key, ids), reply in zip(instants.items(), got[1 + 2 * len(batch) :], strict=True):
            found = expiry.instants(reply, key, len(ids))
            expired.update(ident for ident, at in zip(ids, found, strict=True) if at == 0)
        kills: list[Command] = []
        for n, (claim, owner, tok) in enumerate(batch):
            raw, registered = _reply(got[1 + 2 * n]), _reply(got[2 + 2 * n])
            proof = (claim.field.hash_field, claim.value, owner, tok)
            if owner in expired:
                raw = None
            if raw is not None and claim.field.index_key(raw) == claim.value:
                if claiming and owner != claim.id:
                    yield Send([(b"UNWATCH",)])
                    raise _taken(claim, owner)
                self.held.add(proof)  # its owner, the claimant, holds it: ours to re-token
            elif tok is not None and registered == tok:
                kills.append((b"HDEL", *registration(claim.field, owner)))
            self.proven.add(proof)
        if not kills:
            yield Send([(b"UNWATCH",)])
            return True
        return (yield from executor.transaction_steps(kills)) is not None


#: A claim held by someone else: the claim (ours), its owner, its token.
Stale = tuple[Claim, str, Any]


def at_once(work: list[Steps[Any]]) -> Steps[list[Any]]:
    """Protocols on different shards, run in parallel when there are several
    (:class:`~redisca.session.io.Parallel`); each runs to its end, then a failure is
    raised: a cancellation first, then a :class:`~redisca.UniqueViolation` (the
    answer), else the first. Claims one of them made stay for ``abandon``."""
    if len(work) < 2:
        done = []
        for one in work:
            done.append((yield from one))
        return done
    outcomes = yield Parallel(work)
    failures = [value for ok, value in outcomes if not ok]
    if failures:
        # a cancellation first (it must reach the caller), then a taken value
        raise min(failures, key=lambda f: (isinstance(f, Exception), not _answer(f)))
    return [value for _, value in outcomes]


def _answer(error: BaseException) -> bool:
    return isinstance(error, UniqueViolation)


def _atomic(client: Any, slot: int, what: str, commands: list[Command]) -> Steps[None]:
    """``commands`` in one ``MULTI``/``EXEC`` on the master of ``slot``."""
    yield from executor.on_slot(
        client, slot, what, lambda server: executor.transaction_steps(commands)
    )


def _read_claims(claims: list[Claim], watch: bool = False) -> Steps[list[tuple[Any, Any]]]:
    """The (owner, token) each value's shard holds for the claims' values."""
    # One HMGET per stripe and per tokens key: the values of the claims in it.
    asked: dict[bytes, list[bytes]] = {}
    where: list[tuple[int, int, int, int]] = []  # per claim: (stripe, n), (tokens key, n)
    order: dict[bytes, int] = {}
    for claim in claims:
        at = []
        for key in (claim.stripe, claim.tokens_key):
            values = asked.get(key)
            if values is None:
                values = asked[key] = []
                order[key] = len(order)
            at += [order[key], len(values)]
            values.append(claim.value)
        where.append((at[0], at[1], at[2], at[3]))
    reads: list[Command] = [(b"HMGET", key, *values) for key, values in asked.items()]
    got = yield Send([(b"WATCH", *asked), *reads] if watch else reads)
    if watch:
        executor.check_watch(got[0])
        got = got[1:]
    replies = [_reply(reply) for reply in got]
    out = []
    for claim, (s, i, t, j) in zip(claims, where, strict=True):
        owner, tok = replies[s][i], replies[t][j]
        out.append((None if owner is None else decode_id(owner, claim.stripe), tok))
    return out


def _read_only(claims: list[Claim], server: Any) -> Steps[list[tuple[Any, Any]]]:
    return _read_claims(claims)


def _remove(gone: list[Stale], server: Any) -> Steps[bool]:
    """Remove released claims that still hold what was proven stale (watched)."""
    held = yield from _read_claims([g[0] for g in gone], watch=True)
    writes: list[Command] = []
    for (claim, owner, tok), now in zip(gone, held, strict=True):
        if now == (owner, tok):
            writes += [
                (b"HDEL", claim.stripe, claim.value),
                (b"HDEL", claim.tokens_key, claim.value),
            ]
    if not writes:
        yield Send([(b"UNWATCH",)])
        return True
    return (yield from executor.transaction_steps(writes)) is not None


def _reply(reply: Any) -> Any:
    if isinstance(reply, Exception):
        routing.check(reply, "a unique claim")
        raise OperationalError(f"Redis refused a unique claim's read: {reply}", reply)
    return reply


def _by_slot(
    items: Iterable[Any], slot_of: Callable[[Any], int], client: Any = None
) -> list[tuple[Any, int, list[Any]]]:
    """``items`` by client and slot: (client, slot, items), in the order first seen."""
    out: dict[tuple[int, int], tuple[Any, int, list[Any]]] = {}
    for item in items:
        owner = client if client is not None else item.client
        slot = slot_of(item)
        found = out.get((id(owner), slot))
        if found is None:
            out[(id(owner), slot)] = (owner, slot, [item])
        else:
            found[2].append(item)
    return list(out.values())


def _taken(claim: Claim, owner: str) -> UniqueViolation:
    field = claim.field
    name = f"{field.mapper.class_.__name__}.{field.name}"
    value = field.decode(claim.raw)
    return UniqueViolation(
        f"{name} value {value!r} is already taken by id {owner!r}",
        field=field.name,
        value=value,
        owner=owner,
    )


def prepare(groups: list[Group], retries: int) -> Pending | None:
    """The claims and releases of a commit's sharded models with unique fields on a
    cluster (``None`` when it has none); no I/O. Marks their changes (``tokens``), so
    the emitter leaves their unique stripes alone. Two pending objects claiming one
    value, and a value one object claims while another lets it go (a swap), raise
    :class:`~redisca.UniqueViolation` before anything is sent."""
    claims: list[Claim] = []
    releases: list[Claim] = []
    for group in groups:
        if not routing.is_cluster(group.client):
            continue
        for change, state in zip(group.changes, group.states, strict=True):
            mapper = change.mapper
            if mapper.shards == 1 or not any(f.unique for f in mapper.indexed):
                continue
            change.tokens = {}
            claims += _claims(group.client, change)
            releases += _releases(group.client, change, state.snapshot)
    if not claims and not releases:
        return None
    _refuse_collisions(claims, releases)
    return Pending(claims, retries)


def _claims(client: Any, change: EntityChange) -> list[Claim]:
    if change.op == INSERT:
        new = [(f, change.values.get(f)) for f in change.mapper.indexed if f.unique]
    elif change.op == UPDATE:
        new = [(f, raw) for f, raw in change.values.items() if f.unique]
    else:
        new = []
    return [Claim(client, change, f, raw, f.index_key(raw)) for f, raw in new if raw is not None]


def _releases(
    client: Any, change: EntityChange, snapshot: dict[MappedField, bytes | None]
) -> list[Claim]:
    """The values an update or a delete lets go, as the session last knew them (what
    is released is what its transaction reads: ``EntityChange.released``)."""
    out = []
    for field in change.mapper.indexed:
        old = snapshot.get(field)
        if old is None or not field.unique:
            continue
        if change.op == UPDATE:
            if field not in change.values:
                continue
            new = change.values[field]
            if new is not None and field.index_key(new) == field.index_key(old):
                continue
        elif change.op != DELETE:
            continue
        out.append(Claim(client, change, field, old, field.index_key(old)))
    return out


def _refuse_collisions(claims: list[Claim], releases: list[Claim]) -> None:
    first: dict[tuple[MappedField, bytes], Claim] = {}
    for claim in claims:
        earlier = first.setdefault((claim.field, claim.value), claim)
        if earlier is not claim and earlier.id != claim.id:
            raise _taken(claim, earlier.id)
    for release in releases:
        found = first.get((release.field, release.value))
        if found is None:
            continue
        claim = found
        if claim is not None and claim.id != release.id:
            error = _taken(claim, release.id)
            error.args = (
                f"{error.args[0]}, which lets it go in the same commit: on a cluster, the "
                "values of a sharded model are claimed before its entities change, so a "
                "value cannot change hands within one commit (a swap). Commit the release "
                "first, then the claim",
            )
            raise error


def vacate_held(
    client: Any, mapper: Mapper, held: list[tuple[str, MappedField, bytes]]
) -> Steps[None]:
    """Release the claims of values entities let go outside a commit (``held``: id,
    field, raw value; a sweep's removed entities): each where its value's shard still
    names the id and the claim is proven stale in the id's shard. A failure raises; a
    claim left is a stale claim, which the next claimant takes over."""
    releases = [standalone(client, mapper, i, f, raw, f.index_key(raw)) for i, f, raw in held]
    yield from Pending([]).vacate(client, releases)


def standalone(
    client: Any, mapper: Mapper, ident: str, field: MappedField, raw: bytes, value: bytes
) -> Claim:
    """A claim of ``ident``'s ``value`` made outside a commit (a sweep's release, a
    repair's claim): the protocol's steps need a change, and this one carries no tokens
    of a commit's own claims."""
    change = EntityChange(mapper, ident, UPDATE)
    change.tokens = {}
    return Claim(client, change, field, raw, value)


def execute(
    group: Group,
    retries: int,
    seen: dict[bytes, Any],
    wait: executor.Wait | None,
    pending: Pending | None,
) -> Steps[executor.Executed]:
    """The group's transaction (:func:`~redisca.session.executor.commit_steps`); when a
    claim of it was revoked meanwhile, its values are claimed again and it is tried
    again, up to ``retries`` times (then :class:`~redisca.ConflictError`)."""
    plan = group.plan()
    for attempt in range(retries + 1):
        try:
            return (yield from executor.commit_steps(group.client, plan, retries, seen, wait))
        except ClaimRevoked:
            if pending is None or attempt == retries:
                raise
            yield from pending.reclaim(group)
    raise AssertionError("unreachable")  # pragma: no cover

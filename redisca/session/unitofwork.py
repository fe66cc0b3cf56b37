"""The unit of work: organize a session's pending changes into plans, then finalize.

Stages, as in SQLAlchemy's flush: *organize* (cascade references, validate and
encode every change, so nothing reaches Redis if anything is invalid),
*collect* and *emit* (:mod:`~redisca.session.plan`, :mod:`~redisca.session.emit`),
execute (:mod:`~redisca.session.executor`), *finalize* (new snapshots).
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import InvalidRequestError, OperationalError, UniqueViolation
from ..mapping.instrument import IN_STEP, MISSING
from ..mapping.mapper import MappedField, Mapper
from . import claims, executor, expiry, integrity, routing
from .emit import vanished
from .io import Parallel, Steps
from .plan import DELETE, INSERT, UPDATE, Command, CommitPlan, EntityChange
from .state import InstanceState, member_changes, named

if TYPE_CHECKING:
    from .session import CommandResult, Session

#: A command queued with ``Session.add_command``: (client, command, result, slot).
Queued = tuple[Any, Command, "CommandResult", "int | None"]


@attrs.define(eq=False)
class Group:
    """Everything one commit sends to one server in one ``MULTI``/``EXEC``: on a
    cluster, to one hash slot (a slot group's)."""

    client: Any
    #: On a cluster client, the slot of every key of the group; ``None`` otherwise.
    slot: int | None = None
    changes: list[EntityChange] = attrs.field(factory=list)
    states: list[InstanceState] = attrs.field(factory=list)
    commands: list[Command] = attrs.field(factory=list)
    results: list[CommandResult] = attrs.field(factory=list)
    #: ``on_delete`` enforcement: see :mod:`~redisca.session.integrity`.
    referrers: tuple[integrity.Referrers, ...] = ()
    targets: tuple[integrity.Target, ...] = ()

    def plan(self) -> CommitPlan:
        return CommitPlan(
            tuple(self.changes), tuple(self.commands), self.slot, self.referrers, self.targets
        )


def target(client: Any, mapper: Mapper) -> tuple[Any, int | None]:
    """Where a model's changes commit: its client, and on a cluster its tag's slot
    (a sharded model's changes: see :func:`shard_target`)."""
    return client, routing.layout_slot(mapper.layout) if routing.is_cluster(client) else None


def shard_target(client: Any, change: EntityChange) -> tuple[Any, int | None]:
    """Where a change of a sharded model commits: on a cluster, its shard's slot (one
    ``MULTI``/``EXEC`` per shard touched; ``change.layout`` is its shard's); on one
    server, with the rest of the server's changes (every shard lives there, so one
    transaction holds them all)."""
    if not routing.is_cluster(client):
        return client, None
    return client, routing.tag_slot(change.layout.hashtag)


def cascade(
    states: Iterable[InstanceState],
    holds: Callable[[object], bool],
    add: Callable[[object], None],
) -> None:
    """Add (``add``) the targets of references assigned since their holders were
    added, unless the session ``holds`` them already.

    Each target is checked once, however many instances refer to it.
    """
    seen: set[int] = set()
    for state in states:
        mapper = state.mapper
        if state.deleted or not (mapper.references or mapper.reference_sets):
            continue
        assigned = state.assigned  # only references assigned since the snapshot are new
        if (
            assigned is not None
            and not mapper.reference_sets  # changed in place: no assignment tells
            and mapper.reference_names.isdisjoint(assigned)
        ):
            continue
        for target in referred(state):
            if id(target) in seen:
                continue
            seen.add(id(target))  # held by the referring instance: the id stays its own
            if not holds(target):
                add(target)


def referred(state: InstanceState) -> Iterator[Any]:
    """The entities an instance refers to: its references' targets and the members of
    its ``References`` sets (those loaded or assigned: nothing is loaded here; a member
    of the wrong type is left to the commit's check, which names the field)."""
    obj = state.obj
    for field in state.mapper.references:
        target = field.attribute.get_raw(obj)
        if target is not MISSING and target is not None:
            yield target
    for field in state.mapper.reference_sets:
        members = field.attribute.get_raw(obj)
        if members is not MISSING and members is not None:
            cls = field.target_mapper().class_
            yield from [m for m in members if isinstance(m, cls)]


def _check_identity(state: InstanceState) -> str:
    try:  # Mapper.identity, inlined: every change of a commit checks it
        ident = state.mapper.id_attribute.fetch(state.obj)
    except AttributeError:
        ident = None
    if ident != state.id:
        raise InvalidRequestError(
            f"{state.key}: an entity's id cannot change ({state.id!r} -> {ident!r}); "
            "delete it and add a new one"
        )
    return ident  # type: ignore[no-any-return]


def first_version() -> int:
    """The version a versioned entity starts at.

    Not 1: an entity deleted and created again must not repeat a version that a
    session which loaded the old one still expects, or its stale update would pass.
    Milliseconds since the epoch, shifted left 20 bits with 20 random bits below,
    fit HINCRBY's 64 bits for millennia and exceed any version a
    now-deleted entity could have reached unless it saw a million commits a millisecond.
    """
    return (time.time_ns() // 1_000_000) << 20 | secrets.randbits(20)


def _insert(state: InstanceState) -> EntityChange:
    ident = _check_identity(state)
    try:
        values = state.mapper.encoder(state.obj)  # every field, None where unset
    except Exception:
        values = _encode_each(state)  # raises the error naming class and field
    if state.mapper.versioned and state.version is None:
        # Kept on the state, so a retry of an in-doubt insert writes (and recognises)
        # the same version.
        state.version = first_version()
    change = EntityChange(
        state.mapper,
        ident,
        INSERT,
        values,
        check_exists=not state.generated_id or state.in_doubt,
        expect_version=state.version,
        in_doubt=state.in_doubt,
        guard_seen=state.doubt_guard if state.in_doubt else None,
    )
    if state.mapper.expiring:
        change.expire = state.expire or state.mapper.ttl_ms or 0
    if state.mapper.collections:
        change.members = member_changes(state)
    return change


def _encode_each(state: InstanceState) -> dict[MappedField, bytes | None]:
    """What the mapper's generated encoder returns, field by field."""
    values: dict[MappedField, bytes | None] = dict.fromkeys(state.mapper.fields)
    values.update(state.mapper.encode_set_fields(state.obj))
    return values


def _update(state: InstanceState) -> EntityChange | None:
    ident = _check_identity(state)
    values = state.changes()
    members = member_changes(state) if state.mapper.collections else None
    if not values and not members and not state.expire:
        return None
    mapper = state.mapper
    loaded = state.loaded
    # Only removed fields (None) can leave the hash empty.
    empty_after = (
        loaded
        and None in values.values()
        and all(v is None for v in {**state.snapshot, **values}.values())
    )
    # An update of plain fields of a loaded, unversioned entity reads nothing: the
    # common update, built with the fewest steps (arguments by position: the keywords
    # cost a tenth of the call).
    needs_read = not loaded or mapper.versioned or not mapper.plain.issuperset(values)
    # Collections written: read the entity's existence (and watch its guard), so that
    # no collection key outlives an entity deleted meanwhile.
    needs_read = needs_read or bool(members)
    # A change of expiry is refused if the entity expired (which takes reading its
    # instant): it would bring it back. (A plain update of an expired entity is skipped
    # at EXEC, as of a deleted one: see expiry.GUARDED_WRITE.)
    needs_read = needs_read or bool(state.expire)
    change = EntityChange(
        mapper,
        ident,
        UPDATE,
        values,
        needs_read,
        loaded,
        state.version,
        True,  # check_exists (unused by updates)
        empty_after,
        state.in_doubt,
    )
    if members:
        change.members = members
    if state.expire:
        change.expire = state.expire
    return change


def _delete(state: InstanceState) -> EntityChange:
    change = EntityChange(
        state.mapper,
        state.id,  # type: ignore[arg-type]
        DELETE,
        needs_read=True,
        was_loaded=state.loaded,
        expect_version=state.version,
    )
    snapshot: dict[Any, Any] = state.snapshot
    change.members = {f: (snapshot.get(f), None) for f in state.mapper.collections}
    return change


def organize(
    states: Iterable[InstanceState],
    commands: Sequence[Queued],
    client_for: Callable[[Mapper], Any],
) -> list[Group]:
    """Validate and encode every pending change of ``states`` (cascaded already), and
    the queued ``commands``, grouped by server (on a cluster, by server and slot;
    ``client_for`` names a class's client); no I/O.
    """
    groups: dict[tuple[int, int | None], Group] = {}
    binds: dict[Mapper, tuple[Any, int | None]] = {}  # bind_for walks the MRO: once each
    clients: dict[Mapper, Any] = {}  # a sharded model's client (its slot is per state)

    def group_for(client: Any, slot: int | None) -> Group:
        group = groups.get((id(client), slot))
        if group is None:
            group = groups[id(client), slot] = Group(client, slot)
        return group

    last_mapper: Mapper | None = None  # states come in runs of one mapper: its group
    group: Group | None = None
    claimed: dict[tuple[MappedField, bytes], InstanceState] = {}
    for state in states:
        if state.deleted:
            change = _delete(state)
        elif not state.persistent:
            change = _insert(state)
            if state.mapper.uniques:
                _claim(claimed, state, change)
        else:
            found = _update(state)
            if found is None:
                continue
            change = found
            if state.mapper.uniques:
                _claim(claimed, state, change)
        if state.mapper.shards > 1:
            client = clients.get(state.mapper)
            if client is None:
                client = clients[state.mapper] = client_for(state.mapper)
            group = group_for(*shard_target(client, change))
            last_mapper = None
        elif group is None or last_mapper is not state.mapper:
            where = binds.get(state.mapper)
            if where is None:
                where = binds[state.mapper] = target(client_for(state.mapper), state.mapper)
            group = group_for(*where)
            last_mapper = state.mapper
        group.changes.append(change)
        group.states.append(state)
    for client, command, result, slot in commands:
        group = group_for(client, slot)
        group.commands.append(command)
        group.results.append(result)
    _plan_integrity(list(groups.values()))
    return list(groups.values())


def _claim(
    claimed: dict[tuple[MappedField, bytes], InstanceState],
    state: InstanceState,
    change: EntityChange,
) -> None:
    """Note the unique values a change claims; two objects of one commit claiming one
    value raise :class:`~redisca.UniqueViolation` naming both, before anything is sent.
    (Redis would only tell which of them wrote first, and the error would then name an
    id Redis never held.) A value one object lets go and another takes is no claim of
    two: the emitter orders that swap."""
    for field in state.mapper.uniques:
        raw = change.values.get(field)
        if raw is None:
            continue
        earlier = claimed.setdefault((field, field.index_key(raw)), state)
        if earlier is not state and earlier.id != state.id:
            raise _claimed_twice(field, raw, earlier, state)


def _claimed_twice(
    field: MappedField, raw: bytes, first: InstanceState, second: InstanceState
) -> UniqueViolation:
    value = field.decode(raw)
    name = f"{field.mapper.class_.__name__}.{field.name}"

    def which(state: InstanceState) -> str:
        return f"{named(state)} ({'new' if not state.persistent else 'changed'})"

    return UniqueViolation(
        f"{name} value {value!r} is claimed by two objects of this commit, {which(first)} "
        f"and {which(second)}; a unique value has one owner: change one of them (nothing "
        "was sent)",
        field=field.name,
        value=value,
        owner=None,
        claimants=(first.obj, second.obj),
    )


def _plan_integrity(groups: list[Group]) -> None:
    """The ``on_delete`` reads of each group (none unless a class of the commit takes
    part in a reference with an action)."""
    incoming: dict[Mapper, list[MappedField]] = {}
    changes = [c for g in groups for c in g.changes]
    if not any(c.op == DELETE or c.mapper.refers_with_action for c in changes):
        return
    deleted = integrity.keys_of(changes, DELETE)
    inserted = integrity.keys_of(changes, INSERT)
    for group in groups:
        group.referrers, group.targets = integrity.plan_group(
            group.changes, group.slot, deleted, inserted, incoming
        )


def commit_steps(session: Session) -> Steps[None]:
    """A session's commit as a protocol (:mod:`redisca.session.io`), which the sync and
    async sessions both run: organize, then per group the executor's commit and
    finalize. A failure whose outcome is unknown (``outcome_unknown``: a lost
    ``EXEC`` reply, or a task cancelled after its ``EXEC`` went out) leaves the
    group's changes in doubt, verified by the next commit."""
    cascade(session.states(), session.__contains__, session.add)
    for attempt in range(session.retries + 1):
        try:
            yield from _organized_steps(session)
            return
        except integrity.CascadeGrew:
            if attempt == session.retries:
                raise


def _organized_steps(session: Session) -> Steps[None]:
    """Load the ``cascade`` referrers, organize, and run the groups: one after the
    other, but the shards of sharded models on a cluster side by side (:func:`batches`)."""
    yield from integrity.cascade_steps(session, session.retries)
    groups = organize(session.states(), session._commands, session.bind_for)
    forget = functools.partial(session.forget, deleted=True)
    # A sharded model's unique values on a cluster are claimed first (claims).
    pending = claims.prepare(groups, session.retries)
    left = list(groups)  # the groups not committed yet: a failure abandons their claims
    try:
        if pending is not None:
            yield from pending.claim()
        for batch in batches(groups):
            if len(batch) == 1:
                yield from _group_steps(session, batch[0], pending, forget)
                yield from _committed(batch[0], pending, left)
            else:
                yield from _batch_steps(session, batch, pending, forget, left)
    except Exception:
        if pending is not None:
            yield from pending.abandon(left)
        raise


def batches(groups: list[Group]) -> list[list[Group]]:
    """The groups in runs to send at once: each run of consecutive groups that are
    shards of sharded models on a cluster (each its own slot's transaction, with no
    ``on_delete`` work and no command of the user's: nothing in it waits for another
    group) is one batch; every other group is a batch of its own, in order."""
    out: list[list[Group]] = []
    for group in groups:
        if _side_by_side(group) and out and _side_by_side(out[-1][0]):
            out[-1].append(group)
        else:
            out.append([group])
    return out


def _side_by_side(group: Group) -> bool:
    return (
        group.slot is not None
        and not group.commands
        and not group.referrers
        and not group.targets
        and all(state.mapper.shards > 1 for state in group.states)
    )


def _committed(group: Group, pending: claims.Pending | None, left: list[Group]) -> Steps[None]:
    left.remove(group)
    if pending is not None:
        yield from pending.release(group)


def _batch_steps(
    session: Session,
    batch: list[Group],
    pending: claims.Pending | None,
    forget: Callable[[InstanceState], None],
    left: list[Group],
) -> Steps[None]:
    """Shards' transactions at once (threads, or ``asyncio.gather``), each run to its
    end; then, in order, each committed one is finalized and leaves ``left``, and each
    failed one stays pending (in doubt if its ``EXEC`` went out). Then the first
    failure is raised, a cancellation before any other."""
    seens: list[dict[bytes, Any]] = [{} for _ in batch]
    outcomes = yield Parallel(
        [
            claims.execute(group, session.retries, seen, session.wait, pending)
            for group, seen in zip(batch, seens, strict=True)
        ]
    )
    failures: list[BaseException] = []
    for group, seen, (ok, value) in zip(batch, seens, outcomes, strict=True):
        if ok:
            _finished(session, group, value, forget)
            yield from _committed(group, pending, left)
        else:
            if getattr(value, "outcome_unknown", False):
                in_doubt(group, seen)
            failures.append(value)
    if failures:
        raise min(failures, key=lambda failure: isinstance(failure, Exception))


def _group_steps(
    session: Session,
    group: Group,
    pending: claims.Pending | None,
    forget: Callable[[InstanceState], None],
) -> Steps[None]:
    """One group's transaction, then its finalize."""
    plan = group.plan()
    if not plan:
        return
    seen: dict[bytes, Any] = {}
    try:
        if pending is None:
            executed = yield from executor.commit_steps(
                group.client, plan, session.retries, seen, session.wait
            )
        else:
            executed = yield from claims.execute(
                group, session.retries, seen, session.wait, pending
            )
    except BaseException as exc:
        if getattr(exc, "outcome_unknown", False):
            in_doubt(group, seen)
        raise
    _finished(session, group, executed, forget)


def _finished(
    session: Session,
    group: Group,
    executed: executor.Executed,
    forget: Callable[[InstanceState], None],
) -> None:
    """After a group's ``EXEC``: its command results leave the queue, its states
    take what Redis now holds."""
    session._commands = [c for c in session._commands if c[2] not in group.results]
    try:
        finalize(group, executed, forget)
    finally:  # applied, even if a command of the user's failed inside it
        if executed.nulled:
            integrity.settle_nulled(session.identity_map, executed.nulled)


def in_doubt(group: Group, seen: dict[bytes, Any]) -> None:
    """After an unknown outcome: every change of the group may or may not be applied.
    An insert keeps the guard counter its attempt read, which tells the retry whether
    that attempt can have been applied."""
    for change, state in zip(group.changes, group.states, strict=True):
        state.in_doubt = True
        if change.op == INSERT:
            value = seen.get(change.guard, _UNREAD)
            state.doubt_guard = None if value is _UNREAD else (value,)


_UNREAD = object()


def finalize(
    group: Group, executed: executor.Executed, forget: Callable[[InstanceState], None]
) -> None:
    """After EXEC: snapshots become what Redis now holds.

    Deleted entities leave the session (``forget``), detached. So does an unwatched
    update's instance whose entity another client had deleted: it wrote nothing (the
    delete wins).
    """
    gone = vanished(executed.commands, executed.replies)
    instants: dict[tuple[bytes, str], int] | None = None  # expiry.written, once needed
    for change, state in zip(group.changes, group.states, strict=True):
        if change.op == DELETE or change.key in gone:
            forget(state)
            state.deleted = False
            state.version = None  # added again, it is a new entity with a new version
            continue
        state.snapshot.update(change.values)
        if change.members:
            snapshot: dict[Any, Any] = state.snapshot
            snapshot.update((f, new) for f, (_old, new) in change.members.items())
        state.assigned = IN_STEP  # what differed is written; the rest was equal
        state.in_doubt = False
        if change.expire:
            if instants is None:
                instants = expiry.written(executed.commands, executed.replies)
            state.expires = instants.get((change.layout.expiry, change.id))
            state.expire = 0
        if change.op == INSERT:
            state.loaded = True
            state.persistent = True
        elif state.mapper.versioned:
            state.version = (state.version or 0) + 1
    replies = executed.replies
    tail = replies[len(replies) - len(group.results) :] if group.results else []
    failed = []
    for result, reply in zip(group.results, tail, strict=True):
        result.value = executor.user_reply(group.client, result.command, reply)
        result.done = True
        if isinstance(reply, Exception):
            failed.append((result.command, reply))
    if failed:
        command, error = failed[0]
        raise OperationalError(
            f"your command {command!r} failed inside the commit ({error}); the rest of the "
            "commit, redisca's writes included, was applied",
            error,
        )


__all__ = ["Group", "cascade", "commit_steps", "finalize", "in_doubt", "organize", "referred"]

"""``Session.bulk_add``: any number of new entities, written in chunks that are each a commit.

Why not ``add_all()`` and one ``commit()``: one commit of a million entities holds the
server for its whole ``EXEC`` (seconds, while every other client waits) and the client
holds every instance, its state and its encoded values at once. Here one chunk at a
time is taken from the input (which may be a generator), validated, planned, executed
and finalized by the commit's own machinery (:func:`unitofwork.organize` on the chunk's
states, :func:`executor.execute_commit`, :func:`unitofwork.finalize`), so each chunk
keeps every guarantee of a commit. Written entities never enter the identity map: they
leave their chunk detached, as if added, committed and expunged, so what the client holds
is one chunk, however long the input.

A chunk of a sharded model on a cluster is one ``MULTI``/``EXEC`` per shard (a
transaction stays in one hash slot): its unique values are claimed first, in their
own shards (:mod:`~redisca.session.claims`), then the shards' transactions run in
parallel (:class:`~redisca.session.io.Parallel`: threads, or ``asyncio.gather``),
each with every guarantee of a commit. Such a chunk can fail in part:
:class:`~redisca.BulkAddError` then tells which objects are written, which are not
and which are in doubt, and an in-doubt object given to ``bulk_add`` again is
recognised if its transaction was applied (see ``_doubts``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any

from ..errors import (
    BulkAddError,
    BulkTransaction,
    IntegrityError,
    InvalidRequestError,
    OperationalError,
    RediscaError,
    UniqueViolation,
    ValidationError,
)
from ..ids import hexid
from ..mapping import instrument
from ..mapping.instrument import MISSING
from ..mapping.mapper import Mapper, mapper_of
from . import claims, executor, gcpause, routing, unitofwork
from .io import Parallel, Steps
from .state import InstanceState, detached_state, remember_detached

if TYPE_CHECKING:
    from .session import Session

#: ``progress(done, total)``: objects of the input written so far, and ``len()`` of the
#: input (``None`` when it has none, e.g. a generator).
Progress = Callable[[int, "int | None"], object]


def bulk_add(
    session: Session, objs: Iterable[object], chunk_size: int, progress: Progress | None
) -> int:
    """Insert ``objs`` chunk by chunk; returns how many were written (all of them)."""
    return executor.drive(bulk_steps(session, objs, chunk_size, progress))


def bulk_steps(
    session: Session, objs: Iterable[object], chunk_size: int, progress: Progress | None
) -> Steps[int]:
    """:func:`bulk_add` as a protocol (:mod:`redisca.session.io`): the async session's too."""
    if type(chunk_size) is not int or chunk_size < 1:
        raise ValidationError(f"bulk_add: chunk_size must be an int >= 1, not {chunk_size!r}")
    total = len(objs) if isinstance(objs, Sized) else None
    done = 0  # objects written: the index in the input of the chunk's first object
    for objects in _chunks(session, objs, chunk_size):
        chunk = _Chunk(objects)
        try:
            with gcpause.paused(len(objects)):
                yield from chunk.write(session)
        except RediscaError as exc:
            raise _failure(chunk, exc, done) from exc
        done += len(objects)
        del objects, chunk  # before the next chunk is drawn: one chunk in memory, not two
        if progress is not None:
            progress(done, total)
    return done


def _chunks(session: Session, objs: Iterable[object], size: int) -> Iterator[list[object]]:
    """The input in lists of at most ``size``; a list also ends where the server (on a
    cluster, the slot group, or the sharded model) changes, so that a chunk is one
    ``MULTI``/``EXEC`` (a sharded model's: one per shard), all written or none."""
    clients: dict[type, tuple[Any, Hashable] | None] = {}
    chunk: list[object] = []
    current = None
    for obj in objs:
        kind = type(obj)
        if kind not in clients:
            clients[kind] = _target(session, kind)
        client = clients[kind]
        if client is not None:  # an unmapped object stays in its chunk, which refuses it
            if chunk and client != current:
                yield chunk
                chunk = []
            current = client
        chunk.append(obj)
        if len(chunk) >= size:  # written before the next object is even asked for
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _target(session: Session, kind: type) -> tuple[Any, Hashable] | None:
    """Where objects of ``kind`` commit: their client (on a cluster, and slot; for a
    sharded model there, the model: its chunk is one transaction per shard). ``None``
    for a class that is not mapped: nowhere, and the validation of its chunk says so
    before the chunk is sent, whatever the servers."""
    mapper = kind.__dict__.get("__redisca_mapper__")
    if mapper is None:
        return None
    client = session.bind_for(kind)
    if _sharded(client, mapper):
        return client, mapper
    return unitofwork.target(client, mapper)


def _sharded(client: Any, mapper: Mapper) -> bool:
    """Whether a chunk of ``mapper``'s entities is one transaction per shard."""
    return mapper.shards > 1 and routing.is_cluster(client)


#: Objects whose transaction had an unknown outcome in a failed ``bulk_add`` (by
#: ``id()``): their id, and the guard counter the attempt read (``(value,)``, or
#: ``None`` if unread). Given to ``bulk_add`` again, such an object is inserted as an
#: in-doubt insert (``EntityChange.in_doubt``): recognised if the attempt was applied.
_doubts: dict[int, tuple[weakref.ref[Any], str, tuple[bytes | None] | None]] = {}


def _doubt(state: InstanceState) -> None:
    key = id(state.obj)
    try:
        ref = weakref.ref(state.obj, lambda _ref: _doubts.pop(key, None))
    except TypeError:  # no __weakref__: the retry finds the key taken, and says so
        return
    _doubts[key] = (ref, state.id, state.doubt_guard)  # type: ignore[assignment]


def _doubted(obj: object, ident: str) -> tuple[tuple[bytes | None] | None] | None:
    """``(guard,)`` if ``obj`` (of id ``ident``) is in doubt from a failed ``bulk_add``."""
    found = _doubts.get(id(obj))
    if found is None or found[0]() is not obj or found[1] != ident:
        return None
    return (found[2],)


class _Chunk:
    """One chunk of the input, its states (cascaded targets included) once prepared."""

    def __init__(self, objs: list[object]) -> None:
        self.objs = objs
        self.states: list[InstanceState] = []
        self.members: set[int] = set()  # id() of every object the chunk inserts
        self.keys: set[bytes] = set()
        #: The object being prepared: the one to blame when preparing fails.
        self.current: object = None
        #: How each transaction of the chunk ended, once it is sent.
        self.transactions: list[BulkTransaction] = []
        #: The errors of the chunk's failed transactions.
        self.errors: list[BaseException] = []

    def write(self, session: Session) -> Steps[None]:
        self.prepare(session)
        groups = unitofwork.organize(self.states, (), session.bind_for)  # nothing sent yet
        mapper = mapper_of(type(self.objs[0]))
        client = session.bind_for(mapper)
        if _sharded(client, mapper):
            yield from self.write_shards(session, mapper, groups)
            return
        # The input's own group last: a chunk's objects are all one server's (see
        # _chunks), and references must not be written before their targets.
        own = unitofwork.target(client, mapper)
        groups.sort(key=lambda group: group.client is own[0] and group.slot == own[1])
        for group in groups:
            mine = group.client is own[0] and group.slot == own[1]
            seen: dict[bytes, Any] = {}
            try:
                executed = yield from executor.commit_steps(
                    group.client, group.plan(), session.retries, seen, session.wait
                )
            except RediscaError as exc:
                if mine:
                    self.ended(group, None, exc, seen)
                raise
            self.done(group, executed, session)
            if mine:
                self.ended(group, None, None, seen)

    def write_shards(self, session: Session, mapper: Mapper, groups: list[Any]) -> Steps[None]:
        """A sharded model's chunk on a cluster: claims, then the referenced targets'
        transactions, then one transaction per shard, in parallel."""
        own = [g for g in groups if any(s.mapper is mapper for s in g.states)]
        others = [g for g in groups if not any(s.mapper is mapper for s in g.states)]
        pending = claims.prepare(groups, session.retries)
        try:
            if pending is not None:
                yield from pending.claim()
            for group in others:
                executed = yield from claims.execute(
                    group, session.retries, {}, session.wait, pending
                )
                self.done(group, executed, session)
        except Exception:
            for group in own:
                self.ended(group, mapper, None, None, sent=False)
            if pending is not None:
                yield from pending.abandon(groups)
            raise
        seens: list[dict[bytes, Any]] = [{} for _ in own]
        outcomes = yield Parallel(
            [
                self.shard_steps(session, group, pending, seen)
                for group, seen in zip(own, seens, strict=True)
            ]
        )
        failed = []
        for group, seen, (ok, value) in zip(own, seens, outcomes, strict=True):
            self.ended(group, mapper, None if ok else value, seen)
            if not ok:
                failed.append(group)
        if not failed:
            return
        if pending is not None:
            yield from pending.abandon(failed)
        errors = [e for e in self.errors if not isinstance(e, Exception)]  # a cancellation
        raise (errors or [_first(self.errors)])[0]

    def shard_steps(
        self,
        session: Session,
        group: Any,
        pending: claims.Pending | None,
        seen: dict[bytes, Any],
    ) -> Steps[None]:
        """One shard's transaction (run in parallel with the others), then its finalize."""
        executed = yield from claims.execute(group, session.retries, seen, session.wait, pending)
        self.done(group, executed, session)

    def done(self, group: Any, executed: executor.Executed, session: Session) -> None:
        """After a transaction: its objects leave detached, as if committed and expunged."""
        unitofwork.finalize(group, executed, session.forget)
        for state in group.states:
            _doubts.pop(id(state.obj), None)
            remember_detached(state, deleted=False)

    def ended(
        self,
        group: Any,
        mapper: Mapper | None,
        error: BaseException | None,
        seen: dict[bytes, Any] | None,
        sent: bool = True,
    ) -> None:
        """Note how a transaction of the chunk's own objects ended."""
        if error is None and sent:
            outcome = "written"
        elif sent and getattr(error, "outcome_unknown", False):
            outcome = "unknown"
            unitofwork.in_doubt(group, seen or {})
            for state in group.states:
                _doubt(state)
        else:
            outcome = "not written"
        if error is not None:
            self.errors.append(error)
        inputs = {id(obj) for obj in self.objs}
        entities = tuple(s.obj for s in group.states if id(s.obj) in inputs)
        shard = None
        if mapper is not None and entities:
            shard = mapper.shard_of(mapper.identity(entities[0]))  # type: ignore[arg-type]
        self.transactions.append(BulkTransaction(shard, entities, outcome))

    def fates(self) -> tuple[list[object], list[object], int]:
        """The chunk's objects not written, in doubt (input order), and how many are
        written: from its transactions, or none written if none was sent."""
        outcome: dict[int, str] = {}
        for transaction in self.transactions:
            for obj in transaction.entities:
                outcome[id(obj)] = transaction.outcome
        unwritten, doubtful, written = [], [], 0
        for obj in self.objs:
            fate = outcome.get(id(obj), "not written")
            if fate == "written":
                written += 1
            elif fate == "unknown":
                doubtful.append(obj)
            else:
                unwritten.append(obj)
        return unwritten, doubtful, written

    def prepare(self, session: Session) -> None:
        """A state per object, refusing any that is not new; then the save cascade."""
        for obj in self.objs:
            self.current = obj
            self.add(session, obj)
        position = 0
        while position < len(self.states):  # targets appended here are cascaded in turn
            state = self.states[position]
            position += 1
            for field in state.mapper.references:
                target = field.attribute.get_raw(state.obj)
                if target is MISSING or target is None or id(target) in self.members:
                    continue
                self.current = state.obj
                if not _in_redis(target, state.obj):
                    self.current = target
                    self.add(session, target)
        self.current = None

    def add(self, session: Session, obj: object) -> None:
        """What ``session.add`` does for a transient object, without tracking it."""
        if id(obj) in self.members:
            raise InvalidRequestError(f"{_describe(obj)} is given to bulk_add twice")
        state = instrument.state_of(obj)
        if state is not None:
            raise InvalidRequestError(
                f"{_describe(obj)} is {state.status} in a session: bulk_add inserts new "
                "objects only (commit that session, or expunge the object)"
            )
        mapper = mapper_of(type(obj))
        detached = detached_state(obj, mapper)
        if detached is not None and not detached[1]:
            raise InvalidRequestError(
                f"{_describe(obj)} is detached (Redis holds it): bulk_add inserts new "
                "entities only (use session.add() or merge() to change it)"
            )
        ident = mapper.identity(obj)
        generated = ident is None
        if ident is None:  # unique by construction: no key to compare
            ident = hexid()
            mapper.id_attribute.set_raw(obj, ident)
        else:
            self.check_key(session, mapper, ident)
        state = InstanceState(obj, mapper, ident)
        state.generated_id = generated
        doubt = None if generated else _doubted(obj, ident)
        if doubt is not None:  # its earlier transaction may be applied: verified
            state.in_doubt = True
            state.doubt_guard = doubt[0]
        self.states.append(state)
        self.members.add(id(obj))

    def check_key(self, session: Session, mapper: Mapper, ident: str) -> None:
        key = mapper.key(ident)
        if key in self.keys:
            raise IntegrityError(f"{key.decode()} is given to bulk_add twice in one chunk")
        existing = session.identity_map.lookup(mapper, ident)
        if existing is not None:
            raise IntegrityError(
                f"{key.decode()} is already in this session as another object "
                f"({existing.status}): bulk_add inserts new entities only"
            )
        self.keys.add(key)


def _in_redis(target: Any, referrer: object) -> bool:
    """Whether a reference's target is known to Redis (written as its id); False for a
    transient target (the chunk inserts it). A target pending in a session is refused:
    the chunk would refer to an entity Redis does not hold yet."""
    state = instrument.state_of(target)
    if state is not None:
        if not state.persistent:
            raise InvalidRequestError(
                f"{_describe(referrer)} refers to {_describe(target)}, pending in a session "
                "and not in Redis yet: commit that session before bulk_add"
            )
        return True
    detached = detached_state(target, mapper_of(type(target)))
    return detached is not None and not detached[1]


def _describe(obj: object) -> str:
    """A class and id, never the whole repr (it may be long)."""
    try:
        ident = mapper_of(type(obj)).identity(obj)
    except RediscaError:
        return f"{type(obj).__name__} object"
    return f"{type(obj).__name__}(id={ident!r})"


def _failure(chunk: _Chunk, exc: RediscaError, start: int) -> BulkAddError:
    """The error for a failed chunk whose first object is at ``start`` in the input
    (every object before it is written)."""
    unwritten, doubtful, written = chunk.fates()
    left = {id(obj) for obj in unwritten + doubtful}
    position = next((n for n, obj in enumerate(chunk.objs) if id(obj) in left), 0)
    first = chunk.objs[position]
    entity = chunk.current if chunk.current is not None else _culprit(chunk, exc)
    unknown = bool(doubtful) or (isinstance(exc, OperationalError) and exc.outcome_unknown)
    if written:
        fate = (
            f"wrote {written} of them ({len(chunk.transactions)} shard transactions), "
            f"{len(unwritten)} were not written and {len(doubtful)} may or may not have been"
        )
    elif unknown:
        fate = "may or may not have been written"
    else:
        fate = "was not written, nor any after it"
    about = f" (about {_describe(entity)})" if entity is not None else ""
    return BulkAddError(
        f"bulk_add wrote {start} objects; the chunk of {len(chunk.objs)} from index "
        f"{start}, {_describe(chunk.objs[0])} first, {fate}{about}: {exc}",
        error=exc,
        written=start + written,
        first_unwritten=first,
        entity=entity,
        outcome_unknown=unknown,
        unwritten=unwritten,
        in_doubt=doubtful,
        next_index=start + len(chunk.objs),
        transactions=chunk.transactions,
        index=start + position,
    )


def _first(errors: list[BaseException]) -> BaseException:
    """The error to report of a chunk's failed shard transactions: a refused value or
    key (the answer) before a lost connection (what it interrupted)."""
    for error in errors:
        if isinstance(error, IntegrityError):
            return error
    return errors[0]


def _culprit(chunk: _Chunk, exc: RediscaError) -> Any:
    """The chunk's object that an error raised by the commit machinery is about."""
    if isinstance(exc, UniqueViolation):
        return _claimant(chunk.states, exc)
    if isinstance(exc, ValidationError):
        for state in chunk.states:
            try:
                state.mapper.encode_set_fields(state.obj)
            except ValidationError:
                return state.obj
        return None
    if isinstance(exc, IntegrityError):  # a key that exists: its message starts with it
        message = str(exc)
        for state in chunk.states:
            if message.startswith(f"{state.key} "):
                return state.obj
    return None


def _claimant(states: list[InstanceState], exc: UniqueViolation) -> Any:
    """The object claiming the taken value: not its owner (the first claimant of two)."""
    claimants = []
    for state in states:
        field = state.mapper.by_name.get(exc.field)
        if field is None or not field.unique:
            continue
        value, taken = field.attribute.get_raw(state.obj), field.encode(exc.value)
        if value is MISSING or value is None or taken is None:
            continue
        raw = field.encode(value)
        if raw is not None and field.index_key(raw) == field.index_key(taken):
            claimants.append(state)
    others = [s for s in claimants if s.id != exc.owner]
    if exc.owner is None and len(claimants) > 1:
        others = claimants[1:]
    return others[0].obj if others else None


__all__ = ["Progress", "bulk_add"]

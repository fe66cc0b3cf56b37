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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any

from ..errors import (
    BulkAddError,
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
from . import executor, gcpause, routing, unitofwork
from .io import Steps
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
    done = 0
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
    cluster, the slot group) changes, so that a chunk is one ``MULTI``/``EXEC``, all
    written or none."""
    clients: dict[type, tuple[Any, int | None]] = {}
    chunk: list[object] = []
    current = None
    for obj in objs:
        kind = type(obj)
        client = clients.get(kind)
        if client is None:
            client = clients[kind] = _target(session, kind)
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


def _target(session: Session, kind: type) -> tuple[Any, int | None]:
    """Where objects of ``kind`` commit: their client (on a cluster, and slot)."""
    client = session.bind_for(kind)
    mapper = kind.__dict__.get("__redisca_mapper__")
    if mapper is not None and mapper.shards > 1 and routing.is_cluster(client):
        # A chunk is one MULTI/EXEC, all written or none; a sharded model's is one per
        # shard on a cluster, which BulkAddError's account of what was written is not.
        raise InvalidRequestError(
            f"bulk_add of {kind.__name__} ({mapper.shards} shards) on a cluster is not "
            "supported yet: add_all() and commit() in batches write it, one "
            "transaction per shard"
        )
    return (client, None) if mapper is None else unitofwork.target(client, mapper)


class _Chunk:
    """One chunk of the input, its states (cascaded targets included) once prepared."""

    def __init__(self, objs: list[object]) -> None:
        self.objs = objs
        self.states: list[InstanceState] = []
        self.members: set[int] = set()  # id() of every object the chunk inserts
        self.keys: set[bytes] = set()
        #: The object being prepared: the one to blame when preparing fails.
        self.current: object = None

    def write(self, session: Session) -> Steps[None]:
        self.prepare(session)
        groups = unitofwork.organize(self.states, (), session.bind_for)  # nothing sent yet
        # The input's own group last: a chunk's objects are all one server's (see
        # _chunks), and references must not be written before their targets.
        own = _target(session, type(self.objs[0]))
        groups.sort(key=lambda group: group.client is own[0] and group.slot == own[1])
        for group in groups:
            executed = yield from executor.commit_steps(
                group.client, group.plan(), session.retries, wait=session.wait
            )
            unitofwork.finalize(group, executed, session.forget)
            for state in group.states:
                remember_detached(state, deleted=False)

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


def _failure(chunk: _Chunk, exc: RediscaError, written: int) -> BulkAddError:
    first = chunk.objs[0]
    entity = chunk.current if chunk.current is not None else _culprit(chunk, exc)
    unknown = isinstance(exc, OperationalError) and exc.outcome_unknown
    fate = "may or may not have been written" if unknown else "was not written, nor any after it"
    about = f" (about {_describe(entity)})" if entity is not None else ""
    return BulkAddError(
        f"bulk_add wrote {written} objects; the chunk of {len(chunk.objs)} from index "
        f"{written}, {_describe(first)} first, {fate}{about}: {exc}",
        error=exc,
        written=written,
        first_unwritten=first,
        entity=entity,
        outcome_unknown=unknown,
    )


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

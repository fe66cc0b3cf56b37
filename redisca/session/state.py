"""Per-instance tracking state, kept by the session that owns the instance.

Status is derived, never stored (as in SQLAlchemy): whether a session holds
the state, whether Redis is known to hold the entity, and whether a delete
is pending decide between transient, pending, persistent, deleted, detached.
"""

from __future__ import annotations

import weakref
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import DetachedInstanceError, MissingLoadError, ValidationError
from ..mapping import instrument
from ..mapping.instrument import IN_STEP
from ..mapping.mapper import MappedField, Mapper, mapper_of

if TYPE_CHECKING:
    from .session import Session


_ABSENT: Any = object()  # unequal to any snapshot value (bytes or None)


class InstanceState:
    """What a session knows about one instance: identity, snapshot, status."""

    __slots__ = (
        "__weakref__",
        "_session",
        "assigned",
        "deleted",
        "doubt_guard",
        "expire",
        "expires",
        "generated_id",
        "id",
        "in_doubt",
        "loaded",
        "mapper",
        "obj",
        "persistent",
        "snapshot",
        "version",
    )

    def __init__(
        self,
        obj: Any,
        mapper: Mapper,
        id: str | None = None,
        snapshot: dict[MappedField, bytes | None] | None = None,
        session: weakref.ref[Session] | None = None,
    ) -> None:
        """A transient state; with a ``snapshot``, one just loaded from Redis.

        The loaded form sets every slot once, as loading builds many thousands of these.
        """
        #: The instance itself.
        self.obj = obj
        #: The :class:`~redisca.Mapper` of its class.
        self.mapper = mapper
        #: The id it is tracked under (``None`` until it has one).
        self.id = id
        self._session = session
        #: The version loaded or last committed, for ``versioned=True`` classes.
        self.version: int | None = None
        #: True while a delete is pending.
        self.deleted = False
        #: The id came from ``hexid()`` on add: unique by construction.
        self.generated_id = False
        #: A commit of this instance's changes failed after EXEC was sent: Redis may
        #: hold them already, so committing them again verifies (see emit).
        self.in_doubt = False
        #: An in-doubt insert: its guard stripe's value before that commit, as
        #: ``(value,)``, or ``None`` if unknown (see ``EntityChange.guard_seen``).
        self.doubt_guard: tuple[bytes | None] | None = None
        #: The expiry instant (ms since the epoch, by the server's clock) as last loaded
        #: or committed; ``None``: none (or a model that is not expiring).
        self.expires: int | None = None
        #: A pending ``session.expire``: ``0`` none, else the time to live in ms, or
        #: ``plan.CLEAR`` to remove the expiry.
        self.expire = 0
        if snapshot is None:
            #: Encoded values as last loaded from or written to Redis, per field.
            self.snapshot: dict[MappedField, bytes | None] = {}
            #: True once every field is known (loaded, inserted or refreshed).
            self.loaded = False
            #: True when Redis is known to hold this entity.
            self.persistent = False
            #: Names of the attributes assigned since the snapshot was last in step with
            #: the instance (loaded, committed, rolled back), so a commit encodes and
            #: compares only those (and fields whose values may be mutable). ``None``:
            #: unknown, every field is compared (pending, detached and re-added instances).
            self.assigned: set[str] | frozenset[str] | None = None
        else:
            self.snapshot = snapshot
            self.loaded = self.persistent = True
            self.assigned = IN_STEP

    def __repr__(self) -> str:
        return f"<InstanceState {self.mapper.class_.__name__} id={self.id!r} {self.status}>"

    @property
    def session(self) -> Session | None:
        """The session tracking the instance, or ``None`` (transient or detached)."""
        return self._session() if self._session is not None else None

    @property
    def status(self) -> str:
        """``transient``, ``pending``, ``persistent``, ``deleted`` or ``detached``."""
        if self.session is None:
            return "detached" if self.persistent else "transient"
        if self.deleted:
            return "deleted"
        return "persistent" if self.persistent else "pending"

    transient = property(lambda self: self.status == "transient", doc="status is transient")
    pending = property(lambda self: self.status == "pending", doc="status is pending")
    detached = property(lambda self: self.status == "detached", doc="status is detached")

    @property
    def is_persistent(self) -> bool:
        """status is persistent (:attr:`persistent` is also true for deleted and detached)."""
        return self.status == "persistent"

    @property
    def is_deleted(self) -> bool:
        """status is deleted: a delete is pending in a session."""
        return self.status == "deleted"

    @property
    def key(self) -> str | None:
        """The entity's Redis key (redisca 1.x's ``getkey()``)."""
        ident = self.id if self.id is not None else self.mapper.identity(self.obj)
        return None if ident is None else self.mapper.key(ident).decode()

    @property
    def expires_at(self) -> datetime | None:
        """When the entity expires (an aware UTC datetime), as last loaded or committed;
        ``None`` if it never expires. A pending ``session.expire`` shows once committed:
        the instant is taken by the server's clock inside the commit."""
        if self.expires is None:
            return None
        return datetime.fromtimestamp(self.expires / 1000, tz=UTC)

    @property
    def identity(self) -> str | None:
        """The id, as SQLAlchemy's ``inspect(obj).identity`` names it."""
        return self.id

    def load_missing(self, name: str) -> None:
        """Called by the attribute descriptor when an unset attribute is read."""
        session = self.session
        if session is None:
            raise DetachedInstanceError(
                f"{self.mapper.class_.__name__}.{name} is not loaded and the instance "
                "is not attached to a session"
            )
        collection = self.loaded and any(f.name == name for f in self.mapper.collections)
        if (self.loaded and not collection) or not self.persistent:
            raise AttributeError(f"{self.mapper.class_.__name__}.{name} has no value")
        if not session.lazy_loads:
            raise missing_load(self, name)
        session.refresh(self.obj, only_missing=True)

    def modified(self) -> bool:
        """Whether any field or collection differs from the snapshot (a collection
        holding an invalid element counts as changed: the commit will refuse it)."""
        if self.changes():
            return True
        if not self.mapper.collections:
            return False
        try:
            return bool(member_changes(self))
        except ValidationError:
            return True

    def changed_names(self) -> set[str]:
        """The names of the fields and collections that differ from the snapshot."""
        names = {field.name for field in self.changes()}
        if self.mapper.collections:
            try:
                names.update(field.name for field in member_changes(self))
            except ValidationError:
                names.update(field.name for field in self.mapper.collections)
        return names

    def changes(self) -> dict[MappedField, bytes | None]:
        """Encoded values that differ from the snapshot (set attributes only)."""
        # Every commit diffs every tracked instance: only what was assigned, one pass.
        snapshot, obj, assigned = self.snapshot, self.obj, self.assigned
        out: dict[MappedField, bytes | None] = {}
        mapper = self.mapper
        fields: Any = mapper.fields
        if assigned is not None and not mapper.mutable:
            if not assigned:
                return out
            if len(assigned) == 1:  # the usual update: one attribute, found by name
                (name,) = assigned
                one = mapper.by_name.get(name)
                fields = () if one is None else (one,)
            else:  # declaration order, so the hash fields go out in a stable order
                fields = [f for f in fields if f.name in assigned]
            assigned = None
        for field in fields:
            if assigned is not None and field.name not in assigned and not field.mutable:
                continue
            try:
                value = field.attribute.fetch(obj)
            except AttributeError:
                continue
            encoder = field.encoder  # the codec's own: one call, not MappedField.encode's two
            if value is None or encoder is None:
                encoded = field.encode(value)  # a reference's id, or None
            else:
                try:
                    encoded = encoder(value)
                except (ValidationError, UnicodeEncodeError):
                    encoded = field.encode(value)  # raises the error naming the field
            if snapshot.get(field, _ABSENT) != encoded:
                out[field] = encoded
        return out


def named(state: InstanceState) -> str:
    """An instance in a message: its class and id, ``User('a')`` (never loads)."""
    return f"{state.mapper.class_.__name__}({state.id!r})"


def encode_members(field: MappedField, value: Any) -> Any:
    """A collection's members as stored: a frozenset of encoded members for a set, a
    tuple for a list. Checks every element (``ValidationError`` naming the field)."""
    checked = field.coerce_collection(value)
    encoded = [field.encode(item) for item in checked]
    return frozenset(encoded) if field.collection == "set" else tuple(encoded)


def member_changes(state: InstanceState) -> dict[MappedField, tuple[Any, Any]]:
    """Collections that differ from the snapshot, as ``(old, new)`` encoded members
    (``old`` ``None``: not loaded, so unknown). Compared on every commit: in place
    mutations (``add``, ``append``, ``del``...) change no attribute."""
    out: dict[MappedField, tuple[Any, Any]] = {}
    snapshot: dict[Any, Any] = state.snapshot
    for field in state.mapper.collections:
        try:
            value = field.attribute.fetch(state.obj)
        except AttributeError:
            continue  # not loaded, not assigned: unchanged
        new = encode_members(field, value)
        old: Any
        if not state.persistent:
            old = frozenset() if field.collection == "set" else ()
        else:
            old = snapshot.get(field)
        if old != new:
            out[field] = (old, new)
    return out


class _Detached(NamedTuple):
    ref: weakref.ref[Any]
    id: str | None
    snapshot: dict[MappedField, bytes | None]
    loaded: bool
    version: int | None
    deleted: bool
    expires: int | None


#: What sessions knew of instances they let go of (expunged, closed, committed deletes),
#: kept while the instance lives: so ``inspect()`` can say "detached" and re-adding an
#: expunged instance makes it persistent again with its snapshot, not a new insert.
_detached: dict[int, _Detached] = {}


def missing_load(state: InstanceState, name: str) -> MissingLoadError:
    """The error for an unloaded attribute read under an ``AsyncSession``, naming the
    attribute and the awaited calls that load it."""
    cls = state.mapper.class_.__name__
    return MissingLoadError(
        f"{cls}.{name} of {state.key} is not loaded, and an AsyncSession never loads "
        "implicitly (it would be blocking I/O inside an attribute read): "
        f"`await session.load(obj)` or `await session.refresh(obj)` loads this {cls}; "
        "`await session.preload(objs, Model.reference)` loads the targets of a reference "
        f"of many instances at once (e.g. `await session.preload(users, User.company)`)"
    )


def remember_detached(state: InstanceState, *, deleted: bool) -> None:
    key = id(state.obj)
    try:
        ref = weakref.ref(state.obj, lambda _ref: _detached.pop(key, None))
    except TypeError:  # a class without __weakref__: nothing to remember it by
        return
    # Every expunged or closed instance makes a record: built with tuple.__new__ (the
    # NamedTuple constructor is Python code), sharing the snapshot (a state no session
    # holds is never changed again; detached_state copies it).
    _detached[key] = tuple.__new__(
        _Detached,
        (ref, state.id, state.snapshot, state.loaded, state.version, deleted, state.expires),
    )


def detached_state(obj: Any, mapper: Mapper) -> tuple[InstanceState, bool] | None:
    """A detached instance's state (not attached), and whether it was deleted."""
    record = _detached.get(id(obj))
    if record is None or record.ref() is not obj or mapper.identity(obj) != record.id:
        return None
    state = InstanceState(obj, mapper, record.id)
    state.snapshot = dict(record.snapshot)
    state.loaded = record.loaded
    state.version = record.version
    state.expires = record.expires
    state.persistent = True
    return state, record.deleted


def state_for(obj: Any) -> InstanceState:
    """The state a session tracks for ``obj``, else a detached or transient view of it."""
    state = instrument.state_of(obj)
    if state is not None:
        return state  # type: ignore[no-any-return]
    mapper = mapper_of(type(obj))
    detached = detached_state(obj, mapper)
    if detached is not None:
        return detached[0]
    return InstanceState(obj, mapper, mapper.identity(obj))


def forget_detached(obj: Any) -> None:
    _detached.pop(id(obj), None)


__all__ = [
    "InstanceState",
    "detached_state",
    "forget_detached",
    "named",
    "remember_detached",
    "state_for",
]

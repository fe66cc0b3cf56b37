"""Attribute instrumentation: the descriptors a mapper installs on a class.

attrs keeps generating ``__init__``, ``repr`` and ``eq``; those all go through
``object.__setattr__`` / ``getattr``, which find our data descriptor first. It
wraps the slot (or the instance ``__dict__``) so that

* reading the attribute on the class gives a query comparator (``User.age``),
* assigning a value checks and normalises it (``ValidationError`` early),
* reading an attribute that was never set asks the instance's state to load
  it (lazy references from ``session.reference()``).

States are found through a table keyed by ``id(obj)``: slotted attrs classes
have no room for a back pointer. An entry lives exactly as long as a session
tracks the object: the session attaches it when it starts tracking and detaches
it when it stops (``expunge``, ``close``, a committed delete, and the session's
own finalizer when it is dropped without ``close()``). The entry holds the state,
and so the object, so an id in the table always belongs to the object it was
attached for. (Earlier versions held weak references, swept now and then: one
weak reference per loaded instance cost more than the rest of the entry.)
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from ..errors import DetachedInstanceError
from .expressions import Comparator


class Loadable(Protocol):
    """What the table holds: the session layer's instance state."""

    obj: Any
    assigned: set[str] | frozenset[str] | None

    def load_missing(self, name: str) -> None: ...


#: A state's ``assigned`` when nothing was assigned since its snapshot: shared and
#: immutable, so loading thousands of instances allocates no set for each (the first
#: assignment replaces it with the attribute's shared one-name set, ``FieldAttribute.only``).
IN_STEP: frozenset[str] = frozenset()

_states: dict[int, Any] = {}


def attach(obj: object, state: Loadable) -> None:
    _states[id(obj)] = state


def detach(obj: object) -> None:
    _states.pop(id(obj), None)


def detach_states(states: Iterable[Loadable]) -> None:
    """Detach every state's object that is still attached to that state."""
    for state in states:
        key = id(state.obj)
        if _states.get(key) is state:
            del _states[key]


def state_of(obj: object) -> Any:
    """The tracking state of an instance, or ``None`` when no session tracks it."""
    return _states.get(id(obj))


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: Marks an attribute that holds no value yet (an unloaded reference).
MISSING: Any = _Missing()


class FieldAttribute(Comparator):
    """The data descriptor of one mapped attribute."""

    __slots__ = ("coerce", "fetch", "inner", "mapper", "name", "only", "owner", "store")

    def __init__(
        self, owner: type, name: str, inner: Any, coerce: Callable[[Any], Any], mapper: Any
    ) -> None:
        self.owner = owner
        self.name = name
        #: ``{name}``, made once: an instance in step with its snapshot that gets this
        #: attribute assigned records it without a new set (a set per assignment of a
        #: 10,000-user update set off garbage collections costing 0.4 µs a user).
        self.only = frozenset((name,))
        self.inner = inner  # the slot's member descriptor, or None for __dict__ classes
        self.coerce = coerce
        self.mapper = mapper
        #: Hot-path accessors (hydration, encoding): the slot's own functions when there
        #: is a slot. ``fetch`` raises AttributeError for an unset attribute.
        self.fetch: Callable[[Any], Any] = inner.__get__ if inner is not None else self._dict_get
        self.store: Callable[[Any, Any], None] = (
            inner.__set__ if inner is not None else self._dict_set
        )

    def __repr__(self) -> str:
        return f"{self.owner.__name__}.{self.name}"

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = self.get_raw(obj)
        if value is MISSING:
            state = state_of(obj)
            if state is None:
                # An unloaded stub whose session expunged it (or was dropped).
                raise DetachedInstanceError(
                    f"{type(obj).__name__}.{self.name} is not loaded and the instance "
                    "is not attached to a session"
                )
            state.load_missing(self.name)
            value = self.get_raw(obj)
            if value is MISSING:
                raise AttributeError(self.name)
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        self.store(obj, self.coerce(value))
        state = _states.get(id(obj))  # a tracked instance: note what changed
        if state is not None:
            assigned = state.assigned
            if assigned is IN_STEP:
                state.assigned = self.only
            elif assigned is not None and self.name not in assigned:
                state.assigned = assigned | self.only  # a new set: ``only`` is shared

    def __delete__(self, obj: Any) -> None:
        self.del_raw(obj)

    def get_raw(self, obj: Any) -> Any:
        """The stored Python value, or :data:`MISSING`; never loads."""
        try:
            return self.fetch(obj)
        except AttributeError:
            return MISSING

    def set_raw(self, obj: Any, value: Any) -> None:
        """Set without checks: for values decoded from Redis."""
        self.store(obj, value)

    def _dict_get(self, obj: Any) -> Any:
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None

    def _dict_set(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value

    def del_raw(self, obj: Any) -> None:
        if self.inner is not None:
            with contextlib.suppress(AttributeError):
                self.inner.__delete__(obj)
        else:
            obj.__dict__.pop(self.name, None)


def inner_descriptor(cls: type, name: str) -> Any:
    """The slot descriptor behind ``name``, or ``None`` when values live in ``__dict__``."""
    for klass in cls.__mro__:
        found = klass.__dict__.get(name)
        if found is None:
            continue
        if isinstance(found, FieldAttribute):
            return found.inner
        if isinstance(found, types.MemberDescriptorType):
            return found
    return None


class _NotLoaded:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<not loaded>"


#: What a mapped class's ``repr`` shows for an attribute that holds no value yet.
NOT_LOADED: Any = _NotLoaded()

_repring = threading.local()  # ids of the instances being repr'd: a cycle shows "..."


def generated_repr(cls: type) -> bool:
    """Whether ``cls``'s own ``__repr__`` is the one attrs generated (not the user's)."""
    method = cls.__dict__.get("__repr__")
    code = getattr(method, "__code__", None)
    return code is not None and code.co_filename.startswith("<attrs generated")


def install_repr(cls: type, attributes: list[tuple[str, FieldAttribute, Any]]) -> None:
    """Replace attrs' generated ``__repr__`` of a mapped class by one that never loads.

    attrs' reads each attribute through its descriptor: inside a session that loads an
    unloaded instance (a round trip per object printed), and on a detached one it
    raises, so a log line or a debugger could fail or talk to Redis. This one shows
    what the instance holds, ``<not loaded>`` for the rest, in attrs' format
    (``attributes``: name, descriptor, attrs' ``repr=`` of each shown attribute). A
    ``__repr__`` the user wrote is theirs and left alone."""
    if not generated_repr(cls):
        return
    shown = tuple(
        (name, attribute.get_raw, repr if formatter is True else formatter)
        for name, attribute, formatter in attributes
    )

    def __repr__(self: Any) -> str:
        active = getattr(_repring, "ids", None)
        if active is None:
            active = _repring.ids = set()
        if id(self) in active:
            return "..."
        active.add(id(self))
        try:
            parts = []
            for name, get_raw, formatter in shown:
                value = get_raw(self)
                shown_value = "<not loaded>" if value is MISSING else formatter(value)
                parts.append(f"{name}={shown_value}")
            return f"{type(self).__qualname__.rsplit('>.', 1)[-1]}({', '.join(parts)})"
        finally:
            active.discard(id(self))

    __repr__.__qualname__ = f"{cls.__qualname__}.__repr__"
    __repr__.__module__ = cls.__module__
    setattr(cls, "__repr__", __repr__)  # noqa: B010 (mypy refuses assigning a method)


class Attributes:
    """A mapped class's query attributes by name: ``redisca.inspect(User).attrs.age``.

    It is the same object as ``User.age``, typed for a type checker. A checker reads
    ``User.age`` as the attribute's annotation (``int``), so ``User.age >= 18`` is a
    ``bool`` to it and ``User.age.between(1, 9)`` an error, and mypy refuses class access
    to a slotted attribute outright. Here every name is a ``FieldAttribute``, whose
    operators are typed as the conditions and orderings they are, so typed code builds
    queries without casts or ``# type: ignore``, as ``attrs.fields(User).age`` does for
    attrs' own attributes.
    """

    __slots__ = ("_by_name", "_owner")

    def __init__(self, owner: type, by_name: dict[str, FieldAttribute]) -> None:
        self._owner = owner
        self._by_name = by_name

    def __getattr__(self, name: str) -> FieldAttribute:
        if name in Attributes.__slots__:  # unset: a copy being made (no recursion)
            raise AttributeError(name)
        try:
            return self._by_name[name]
        except KeyError:
            mapped = ", ".join(self._by_name)
            raise AttributeError(
                f"{self._owner.__name__} has no mapped attribute {name!r} (mapped: {mapped})",
                name=name,
                obj=self,
            ) from None

    def __getitem__(self, name: str) -> FieldAttribute:
        """``attrs["age"]``: for a name held in a variable (a KeyError if unmapped)."""
        return self._by_name[name]

    def __iter__(self) -> Iterator[FieldAttribute]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __dir__(self) -> list[str]:
        return [*self._by_name, *super().__dir__()]

    def __repr__(self) -> str:
        return f"<Attributes of {self._owner.__name__}: {', '.join(self._by_name)}>"


__all__ = [
    "IN_STEP",
    "MISSING",
    "NOT_LOADED",
    "Attributes",
    "FieldAttribute",
    "Loadable",
    "attach",
    "detach",
    "detach_states",
    "generated_repr",
    "inner_descriptor",
    "install_repr",
    "state_of",
]

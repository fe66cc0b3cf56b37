"""The identity map: within one session, one Redis key is one Python object.

It is its own object, not a part of :class:`~redisca.session.Session`, so that the
modules below the session (loading, bulk) take it as an argument: they find and
make instances through it, and never call back into the session.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..mapping import instrument
from ..mapping.instrument import IN_STEP
from ..mapping.mapper import Mapper
from .state import InstanceState

if TYPE_CHECKING:
    from .session import Session


class IdentityMap:
    """Per mapper, id → state: one table per class, so lookups by id need no
    ``(mapper, id)`` tuple, and loads look up thousands of ids at a time."""

    __slots__ = ("ref", "tables")

    def __init__(self, ref: weakref.ref[Session]) -> None:
        #: What every tracked state refers to its session by (one weak reference).
        self.ref = ref
        self.tables: dict[Mapper, dict[str, InstanceState]] = {}

    def __len__(self) -> int:
        return sum(map(len, self.tables.values()))

    def __bool__(self) -> bool:
        return any(self.tables.values())

    def __iter__(self) -> Iterator[InstanceState]:
        return iter(self.states())

    def states(self) -> list[InstanceState]:
        """Every state held, as a list the caller may keep (and change the map meanwhile)."""
        return [state for table in self.tables.values() for state in table.values()]

    def table(self, mapper: Mapper) -> dict[str, InstanceState]:
        """The table of one class (made on first use)."""
        table = self.tables.get(mapper)
        if table is None:
            table = self.tables[mapper] = {}
        return table

    def lookup(self, mapper: Mapper, ident: str) -> InstanceState | None:
        table = self.tables.get(mapper)
        return None if table is None else table.get(ident)

    def track(self, state: InstanceState) -> None:
        """Hold ``state`` (its id set), attached to its object and to the session."""
        self.table(state.mapper)[state.id] = state  # type: ignore[index]
        state._session = self.ref
        instrument.attach(state.obj, state)

    def discard(self, state: InstanceState) -> None:
        table = self.tables.get(state.mapper)
        if table is not None:
            table.pop(state.id, None)  # type: ignore[arg-type]

    def clear(self) -> None:
        self.tables.clear()

    def stub(self, mapper: Mapper, ident: str) -> Any:
        """The instance of ``ident``: the one held, else a new unloaded one (its first
        field read loads the hash). Loading makes one for every reference not held (a
        page of 10 users makes about 7 companies): ``track`` and ``Mapper.blank`` are
        inlined here."""
        table = self.tables.get(mapper)
        if table is None:
            table = self.tables[mapper] = {}
        state = table.get(ident)
        if state is None:
            obj = object.__new__(mapper.class_)
            mapper.id_attribute.store(obj, ident)
            state = InstanceState(obj, mapper, ident, None, self.ref)
            state.persistent = True
            state.assigned = IN_STEP  # nothing set, nothing in the snapshot: in step
            table[ident] = state
            instrument.attach(obj, state)
        return state.obj


__all__ = ["IdentityMap"]

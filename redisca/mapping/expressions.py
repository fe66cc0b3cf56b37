"""Query conditions and orderings built from class attributes (``User.age >= 18``).

They are plain data: the session's query compiler turns them into Redis
commands, so nothing here knows about Redis or sessions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ..errors import QueryError

if TYPE_CHECKING:
    from .instrument import FieldAttribute


@attrs.frozen
class Condition:
    """``attribute == value`` (``op="eq"``), a score range (``op="range"``) or a
    collection's member (``op="contains"``)."""

    attribute: FieldAttribute
    op: str
    value: Any = None
    low: Any = None
    high: Any = None
    low_inclusive: bool = True
    high_inclusive: bool = True


@attrs.frozen
class Ordering:
    attribute: FieldAttribute
    descending: bool = False


class Comparator:
    """Operators of a mapped class attribute; each returns a :class:`Condition`."""

    __slots__ = ()

    def __eq__(self, other: object) -> Condition:  # type: ignore[override]
        return Condition(self, "eq", other)  # type: ignore[arg-type]

    def __ne__(self, other: object) -> Condition:  # type: ignore[override]
        raise QueryError(f"{self}: '!=' cannot be answered from an index")

    __hash__ = object.__hash__

    def contains(self, member: Any) -> Condition:
        """A collection (``Set`` or ``References`` with ``index=True``) holding ``member``
        (for ``References``, an entity or its id): answered by the member's index."""
        return Condition(self, "contains", member)  # type: ignore[arg-type]

    def between(self, low: Any, high: Any) -> Condition:
        """Inclusive range, like SQL's BETWEEN."""
        return Condition(self, "range", low=low, high=high)  # type: ignore[arg-type]

    def __ge__(self, low: Any) -> Condition:
        return Condition(self, "range", low=low)  # type: ignore[arg-type]

    def __gt__(self, low: Any) -> Condition:
        return Condition(self, "range", low=low, low_inclusive=False)  # type: ignore[arg-type]

    def __le__(self, high: Any) -> Condition:
        return Condition(self, "range", high=high)  # type: ignore[arg-type]

    def __lt__(self, high: Any) -> Condition:
        return Condition(self, "range", high=high, high_inclusive=False)  # type: ignore[arg-type]

    def asc(self) -> Ordering:
        return Ordering(self)  # type: ignore[arg-type]

    def desc(self) -> Ordering:
        return Ordering(self, descending=True)  # type: ignore[arg-type]


__all__ = ["Comparator", "Condition", "Ordering"]

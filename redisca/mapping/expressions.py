"""Query conditions and orderings built from class attributes (``User.age >= 18``).

They are plain data: the session's query compiler turns them into Redis
commands, so nothing here knows about Redis or sessions.

Conditions combine with ``&`` (:class:`And`) and ``|`` (:class:`Or`), and
``Field.in_(values)`` is an :class:`Or` of equalities. None of them has a truth
value: ``bool(condition)`` raises :class:`TypeError`, because Python calls it
where a reader expects a combination, and the answer would silently drop a
condition (``User.a == x and User.b >= y`` is ``User.b >= y``, and
``t0 <= User.t <= t1`` is ``User.t <= t1``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import QueryError

if TYPE_CHECKING:
    from .instrument import FieldAttribute

#: The most AND-branches an expression may expand to (:func:`branches`): each branch
#: is one run of the query engine inside the query's script, so an OR costs the
#: server about what its branches cost alone.
MAX_BRANCHES = 64

_NO_BOOL = (
    "a query condition has no truth value: combine conditions with & (and), "
    "| (or), or pass several conditions to filter(); `and`, `or`, `not` and "
    "chained comparisons like `a <= User.x <= b` would drop one silently "
    "(write User.x.between(a, b) or (User.x >= a) & (User.x <= b))"
)


class Expression:
    """What ``filter()`` takes: a :class:`Condition`, or an :class:`And` / :class:`Or`
    of expressions. Combine with ``&`` and ``|``; never with ``and`` / ``or``."""

    __slots__ = ()

    def __bool__(self) -> bool:
        raise TypeError(_NO_BOOL)

    def __and__(self, other: object) -> And:
        if not isinstance(other, Expression):
            return NotImplemented
        return And(_flat(And, (self, other)))

    def __or__(self, other: object) -> Or:
        if not isinstance(other, Expression):
            return NotImplemented
        return Or(_flat(Or, (self, other)))

    def __invert__(self) -> Any:
        raise QueryError("NOT cannot be answered from an index: write the condition's complement")


def _flat(kind: type, parts: Iterable[Expression]) -> tuple[Expression, ...]:
    """``parts``, with those of ``kind`` replaced by their own parts: ``a & (b & c)``
    is one And of three (the same conditions, a shallower tree)."""
    out: list[Expression] = []
    for part in parts:
        if type(part) is kind:
            out += part.parts  # type: ignore[attr-defined]
        else:
            out.append(part)
    return tuple(out)


# ``attribute`` is compared and hashed by identity: a FieldAttribute's ``==`` builds a
# Condition (which refuses bool()), so attrs' generated __eq__ must never call it.
@attrs.frozen
class Condition(Expression):
    """``attribute == value`` (``op="eq"``), a score range (``op="range"``) or a
    collection's member (``op="contains"``)."""

    attribute: FieldAttribute = attrs.field(eq=id)
    op: str
    value: Any = None
    low: Any = None
    high: Any = None
    low_inclusive: bool = True
    high_inclusive: bool = True


@attrs.frozen
class And(Expression):
    """All of ``parts`` (``cond1 & cond2``; several ``filter()`` arguments too)."""

    parts: tuple[Expression, ...]


@attrs.frozen
class Or(Expression):
    """Any of ``parts`` (``cond1 | cond2``, ``Field.in_(values)``). No parts: nothing
    matches (``in_([])``)."""

    parts: tuple[Expression, ...]


@attrs.frozen
class Ordering:
    attribute: FieldAttribute = attrs.field(eq=id)
    descending: bool = False


def branches(expressions: Iterable[Expression]) -> list[tuple[Condition, ...]]:
    """The AND of ``expressions`` as a disjunction of AND-branches (disjunctive normal
    form): each branch a tuple of conditions, in the order written. No branch: nothing
    matches. More than :data:`MAX_BRANCHES` raises :class:`~redisca.QueryError` (an
    ``(a | b) & (c | d) & ...`` grows as the product of its ORs)."""
    result: list[tuple[Condition, ...]] = [()]
    for expression in expressions:
        result = _product(result, _dnf(expression))
    return result


def _dnf(expression: Expression) -> list[tuple[Condition, ...]]:
    if isinstance(expression, Condition):
        return [(expression,)]
    if isinstance(expression, And):
        return branches(expression.parts)
    if isinstance(expression, Or):
        out: list[tuple[Condition, ...]] = []
        for part in expression.parts:
            out += _dnf(part)
            _check_size(len(out))
        return out
    raise QueryError(f"filter() takes conditions like User.age >= 18, got {expression!r}")


def _product(
    left: list[tuple[Condition, ...]], right: list[tuple[Condition, ...]]
) -> list[tuple[Condition, ...]]:
    _check_size(len(left) * len(right))
    return [a + b for a in left for b in right]


def _check_size(n: int) -> None:
    if n > MAX_BRANCHES:
        raise QueryError(
            f"this condition expands to more than {MAX_BRANCHES} AND-branches once its ORs "
            "are distributed (each branch is a query of its own on the server): split it "
            "into several queries"
        )


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

    def in_(self, values: Iterable[Any]) -> Expression:
        """Any of ``values``: the OR of ``attribute == value`` for each (an empty
        collection matches nothing). Each value is checked as ``==`` checks it."""
        if isinstance(values, str | bytes) or not isinstance(values, Iterable):
            raise QueryError(f"{self}.in_() takes a collection of values, got {values!r}")
        parts = tuple(Condition(self, "eq", v) for v in values)  # type: ignore[arg-type]
        if len(parts) == 1:
            return parts[0]
        return Or(parts)

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


__all__ = [
    "MAX_BRANCHES",
    "And",
    "Comparator",
    "Condition",
    "Expression",
    "Or",
    "Ordering",
    "branches",
]

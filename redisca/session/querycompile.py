"""Query compilation: conditions → Redis commands, as pure data.

Equality conditions name sets, range conditions sorted sets; an AND is one
``ZINTERSTORE`` on the server (sets weigh 0, the ordering field weighs 1, so
scores are that field's values and ties fall back to the id). Extra range
fields are cut with ``ZRANGESTORE`` first. Offset and limit go to ``ZRANGE …
LIMIT``. Scratch keys are made and deleted inside one MULTI/EXEC, so no
other client ever sees them. Conditions on unique fields are answered by
their unique stripe (one ``HGET``) instead. A range index holds every entity
(those without a value at ``+inf``), so a range condition's window never
admits ``+inf``: an open upper bound is ``(+inf``.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from ..errors import QueryError, ValidationError
from ..mapping.codecs import FloatCodec, IntCodec
from ..mapping.expressions import Condition, Ordering
from ..mapping.mapper import MappedField, Mapper
from .plan import Command


@attrs.frozen
class Bound:
    score: float
    inclusive: bool = True

    def __attrs_post_init__(self) -> None:
        if math.isnan(self.score):  # Redis would take "nan" as no bound at all
            raise QueryError("NaN cannot bound a range: no value compares with it")

    def arg(self) -> bytes:
        text = "+inf" if self.score == float("inf") else repr(self.score)
        return (text if self.inclusive else "(" + text).encode()


LOWEST = Bound(float("-inf"))
HIGHEST = Bound(float("inf"))
#: The upper end of a condition's window: ``+inf`` is the score of "no value".
BELOW_NO_VALUE = Bound(float("inf"), inclusive=False)


@attrs.frozen
class Range:
    low: Bound = LOWEST
    high: Bound = HIGHEST

    def narrow(self, low: Bound | None, high: Bound | None) -> Range:
        new_low, new_high = self.low, self.high
        if low is not None and (low.score, not low.inclusive) > (
            new_low.score,
            not new_low.inclusive,
        ):
            new_low = low
        if high is not None and (high.score, high.inclusive) < (new_high.score, new_high.inclusive):
            new_high = high
        return Range(new_low, new_high)

    def contains(self, score: float) -> bool:
        low_ok = score > self.low.score or (self.low.inclusive and score == self.low.score)
        high_ok = score < self.high.score or (self.high.inclusive and score == self.high.score)
        return low_ok and high_ok


@attrs.frozen
class QueryPlan:
    """Commands of one round trip; ``reply`` is the index of the reply that answers."""

    commands: tuple[Command, ...]
    reply: int
    transactional: bool = False
    #: The reply is an unsorted set of ids: sort (and slice) in Python.
    sort_ids: bool = False


@attrs.frozen
class Filters:
    """Conditions sorted by the index that answers them."""

    #: (stripe, value) of each equality on a unique field.
    unique: tuple[tuple[bytes, bytes], ...] = ()
    eq: tuple[bytes, ...] = ()
    ranges: tuple[tuple[MappedField, Range], ...] = ()


def field_of(mapper: Mapper, attribute: Any) -> MappedField:
    field = mapper.by_name.get(getattr(attribute, "name", ""))
    if field is None or getattr(attribute, "mapper", None) is not mapper:
        raise QueryError(f"{attribute!r} is not an indexed attribute of {mapper.class_.__name__}")
    if not field.indexed:
        raise QueryError(f"{attribute!r} is not indexed: declare it with index=True to query it")
    return field


def _encode(field: MappedField, value: Any) -> bytes:
    """A query value in stored form (references: an instance or its id)."""
    try:
        if field.is_reference:
            if isinstance(value, str):
                return value.encode()
            raw = field.encode(field.coerce(value))
        else:
            raw = field.encode(field.codec.coerce(value))  # type: ignore[union-attr]
    except ValidationError as exc:
        raise QueryError(f"cannot compare {field.name} with {value!r}: {exc}") from None
    if raw is None:
        raise QueryError(f"{field.name} == None cannot be answered from an index")
    return raw


def _bound(field: MappedField, value: Any, inclusive: bool, *, low: bool) -> Bound | None:
    if value is None:
        return None
    if isinstance(field.codec, IntCodec | FloatCodec) and _is_real(value):
        if isinstance(value, int):
            return _int_bound(value, inclusive, low=low)
        return Bound(float(value), inclusive)  # age >= 29.5 is a fine bound for ints
    return Bound(field.score(_encode(field, value)), inclusive)


def _int_bound(value: int, inclusive: bool, *, low: bool) -> Bound:
    """An int as a bound on doubles, exact where no double equals it (beyond 2**53,
    beyond the float range): the nearest double on the side the bound lets through,
    included, admits exactly the doubles the int itself would."""
    try:
        score = float(value)
    except OverflowError:
        score = math.inf if value > 0 else -math.inf
    if score == value:
        return Bound(score, inclusive)
    if low and score < value:
        score = math.nextafter(score, math.inf)
    elif not low and score > value:
        score = math.nextafter(score, -math.inf)
    return Bound(score, True)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def sort_filters(mapper: Mapper, conditions: tuple[Condition, ...]) -> Filters:
    unique: list[tuple[bytes, bytes]] = []
    eq: list[bytes] = []
    condition = Range(LOWEST, BELOW_NO_VALUE)
    ranges: dict[MappedField, Range] = {}
    for cond in conditions:
        field = field_of(mapper, cond.attribute)
        if cond.op == "eq":
            raw = _encode(field, cond.value)
            key = field.index_key(raw)
            if field.unique:
                unique.append((mapper.layout.unique_stripe(field.hash_field, key), key))
            elif field.index == "eq":
                eq.append(mapper.layout.eq_index(field.hash_field, key))
            else:
                point = Bound(field.score(raw))
                ranges[field] = ranges.get(field, condition).narrow(point, point)
            continue
        if field.index != "range":
            raise QueryError(f"{cond.attribute!r} has an equality index: compare it with ==")
        low = _bound(field, cond.low, cond.low_inclusive, low=True)
        high = _bound(field, cond.high, cond.high_inclusive, low=False)
        ranges[field] = ranges.get(field, condition).narrow(low, high)
    return Filters(tuple(unique), tuple(eq), tuple(ranges.items()))


def order_field(mapper: Mapper, ordering: Ordering | None) -> MappedField | None:
    if ordering is None:
        return None
    field = field_of(mapper, ordering.attribute)
    if field.index != "range":
        raise QueryError(f"{ordering.attribute!r} has no range index to order by")
    return field


def compile_ids(
    mapper: Mapper,
    filters: Filters,
    ordering: Ordering | None,
    offset: int,
    limit: int | None,
    *,
    count: bool = False,
) -> QueryPlan:
    """The round trip that answers a query without unique conditions."""
    layout = mapper.layout
    by = order_field(mapper, ordering)
    ranges = dict(filters.ranges)
    if by is None and ranges:
        by = next(iter(ranges))
    paged = offset > 0 or limit is not None
    if by is None and not (paged and not count):
        return _set_plan(mapper, filters.eq, count)
    commands: list[Command] = []
    scratch: list[bytes] = []
    sources: list[tuple[bytes, int]] = []
    for field, window in ranges.items():
        if field is by:
            continue
        tmp = layout.scratch()
        scratch.append(tmp)
        key = layout.range_index(field.hash_field)
        commands.append((b"ZRANGESTORE", tmp, key, window.low.arg(), window.high.arg(), b"BYSCORE"))
        sources.append((tmp, 0))
    sources += [(key, 0) for key in filters.eq]
    window = ranges.get(by, Range()) if by is not None else Range()
    if by is not None:
        # Every entity is in it: those without a value sort last (score +inf).
        sources.append((layout.range_index(by.hash_field), 1))
    if not sources:
        sources.append((layout.all_ids, 1))  # every score is 0: id order
    if len(sources) == 1 and sources[0][1] == 1:
        final = sources[0][0]
    else:
        final = layout.scratch()
        scratch.append(final)
        keys = [key for key, _ in sources]
        weights = [weight for _, weight in sources]
        commands.append((b"ZINTERSTORE", final, len(keys), *keys, b"WEIGHTS", *weights))
    reply = len(commands)
    commands.append(_final(final, window, ordering, offset, limit, count))
    if scratch:
        commands.append((b"DEL", *scratch))
    return QueryPlan(tuple(commands), reply, transactional=bool(scratch))


def _final(
    key: bytes,
    window: Range,
    ordering: Ordering | None,
    offset: int,
    limit: int | None,
    count: bool,
) -> Command:
    low, high = window.low.arg(), window.high.arg()
    if count:
        return (b"ZCOUNT", key, low, high)
    command: list[Any] = [b"ZRANGE", key]
    if ordering is not None and ordering.descending:
        command += [high, low, b"BYSCORE", b"REV"]
    else:
        command += [low, high, b"BYSCORE"]
    if offset or limit is not None:
        command += [b"LIMIT", offset, -1 if limit is None else limit]
    return tuple(command)


def _set_plan(mapper: Mapper, eq: tuple[bytes, ...], count: bool) -> QueryPlan:
    """Equality-only queries with no paging: plain set commands, sorted by id in Python."""
    if not eq:
        if count:
            return QueryPlan(((b"ZCARD", mapper.layout.all_ids),), 0)
        return QueryPlan(((b"ZRANGE", mapper.layout.all_ids, 0, -1),), 0, sort_ids=True)
    keys = list(eq)
    if count and len(keys) == 1:
        return QueryPlan(((b"SCARD", keys[0]),), 0)
    if count:
        tmp = mapper.layout.scratch()
        return QueryPlan(((b"SINTERSTORE", tmp, *keys), (b"DEL", tmp)), 0, transactional=True)
    if len(keys) == 1:
        return QueryPlan(((b"SMEMBERS", keys[0]),), 0, sort_ids=True)
    return QueryPlan(((b"SINTER", *keys),), 0, sort_ids=True)


def membership_checks(
    mapper: Mapper, filters: Filters, ident: str
) -> tuple[list[Command], list[Range | None]]:
    """Commands that test one candidate id against the non-unique conditions."""
    commands: list[Command] = [(b"SISMEMBER", key, ident) for key in filters.eq]
    windows: list[Range | None] = [None] * len(commands)
    for field, window in filters.ranges:
        commands.append((b"ZSCORE", mapper.layout.range_index(field.hash_field), ident))
        windows.append(window)
    return commands, windows


__all__ = [
    "Bound",
    "Filters",
    "QueryPlan",
    "Range",
    "compile_ids",
    "membership_checks",
    "order_field",
    "sort_filters",
]

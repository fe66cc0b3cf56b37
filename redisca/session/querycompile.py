"""Query compilation: conditions → the query script's keys and arguments, as pure data.

Equality conditions become terms the script probes or fetches (an index set, a
unique value's stripe hash), range conditions a score window per field. One
range index orders the query (``order_by``'s field, else the first range
condition's, else the model's first range field: its *default order*; ``H#all``
in id order for a model without a range index) and its window becomes the
script's walk; the other windows are terms. Bounds are exact: ints beyond 2**53
and sub-second datetimes round to what stored values can equal, and no window
admits +inf, the score of a missing value. See :mod:`redisca.session.queryscript`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, ClassVar

import attrs

from ..errors import QueryError, ValidationError
from ..mapping.codecs import DateTimeCodec, FloatCodec, IntCodec
from ..mapping.expressions import Condition, Ordering
from ..mapping.keys import KeyLayout
from ..mapping.mapper import MappedField, Mapper


@attrs.frozen
class Bound:
    score: float
    inclusive: bool = True

    def __attrs_post_init__(self) -> None:
        if math.isnan(self.score):  # Redis would take "nan" as no bound at all
            raise QueryError("NaN cannot bound a range: no value compares with it")


LOWEST = Bound(float("-inf"))
HIGHEST = Bound(float("inf"))


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
class EqTerm:
    """An equality index set (``H#i:<field>:<value>``): the ids holding that value."""

    key: bytes
    kind: ClassVar[bytes] = b"e"
    key_type: ClassVar[bytes] = b"set"

    def encode(self, keys: list[bytes], args: list[bytes | int]) -> None:
        keys.append(self.key)


@attrs.frozen
class ScoredTerm:
    """An equality index of an expiring model (``H#i:<field>:<value>``): a sorted set
    of the ids holding that value, each scored by its expiry instant (``+inf``: none).
    The script counts and lists its live ids from the server's now (``ZCOUNT``,
    ``ZRANGEBYSCORE``) and probes one with ``ZSCORE``: an id it admits is live, so it
    needs no probe of ``H#exp``."""

    key: bytes
    kind: ClassVar[bytes] = b"x"
    key_type: ClassVar[bytes] = b"zset"

    def encode(self, keys: list[bytes], args: list[bytes | int]) -> None:
        keys.append(self.key)


@attrs.frozen
class UniqueTerm:
    """A unique value: its stripe hash and the value's index form (one owner or none)."""

    key: bytes
    value: bytes
    kind: ClassVar[bytes] = b"u"
    key_type: ClassVar[bytes] = b"hash"

    def encode(self, keys: list[bytes], args: list[bytes | int]) -> None:
        keys.append(self.key)
        args.append(self.value)


@attrs.frozen
class RangeTerm:
    """A score window of a range index (a field other than the one ordering the query)."""

    key: bytes
    window: Range
    kind: ClassVar[bytes] = b"r"
    key_type: ClassVar[bytes] = b"zset"

    def encode(self, keys: list[bytes], args: list[bytes | int]) -> None:
        keys.append(self.key)
        args.extend(window_args(self.window))


@attrs.frozen
class OwnerTerm:
    """One id the client names: the owner a unique value's claim gave, on a sharded
    model (the claim lives in the value's shard, the owner in its own: see
    :mod:`redisca.session.shardquery`). No key of its own."""

    id: bytes
    kind: ClassVar[bytes] = b"o"
    key_type: ClassVar[bytes] = b""

    def encode(self, keys: list[bytes], args: list[bytes | int]) -> None:
        args.append(self.id)


#: One condition as the script reads it: the script asks each term its size, its ids
#: and whether it holds an id. (An OR is several branches: :class:`Union`.)
Term = EqTerm | ScoredTerm | UniqueTerm | RangeTerm | OwnerTerm


@attrs.frozen
class Filters:
    """Conditions sorted by the index that answers them: terms for sets and unique
    values, and one window per range-indexed field (one of them may order the query)."""

    terms: tuple[Term, ...] = ()
    ranges: tuple[tuple[MappedField, Range], ...] = ()


@attrs.frozen
class ScriptCall:
    """The keys and arguments of one run of the query script (pure data)."""

    keys: tuple[bytes, ...]
    args: tuple[bytes | int, ...]
    #: The Redis type each key must have (to name a key another program overwrote).
    types: tuple[bytes, ...]
    #: A unique value among the conditions and no cursor: at most one id can match,
    #: which :data:`~redisca.session.queryscript.LOOKUP` answers without walking or
    #: sorting anything.
    lookup: bool = False
    #: Several AND-branches: :data:`~redisca.session.queryscript.UNION` runs the engine
    #: once per branch and merges their pages by (score, id), dropping duplicates.
    union: bool = False
    #: The model's entities may expire: the last key is ``H#exp`` and the scripts are
    #: the variants that skip expired ids (:data:`~redisca.session.queryscript.SCRIPT_X`).
    expiring: bool = False


@attrs.frozen
class Union:
    """An OR's AND-branches, each sorted as a query of its own. No branch: nothing
    matches (``in_([])``), answered without asking the server."""

    branches: tuple[Filters, ...]


#: A cursor as the script takes it: kind (``b""`` none, ``b"i"`` look the id's score
#: up, ``b"s"`` this score), score, id.
Cursor = tuple[bytes, bytes, bytes]
NO_CURSOR: Cursor = (b"", b"", b"")


def field_of(mapper: Mapper, attribute: Any) -> MappedField:
    name = getattr(attribute, "name", "")
    field = mapper.by_name.get(name) or next(
        (f for f in mapper.collections if f.name == name), None
    )
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
            raw = field.encode(field.coerce_one(value))
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
    if isinstance(field.codec, DateTimeCodec) and isinstance(value, datetime):
        return _seconds_bound(value, inclusive, low=low)
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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _seconds_bound(value: datetime, inclusive: bool, *, low: bool) -> Bound:
    """A datetime as a bound on stored whole seconds, agreeing with Python's comparison
    on them: a sub-second low bound rounds up, a high one down (naive means UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        delta = value - _EPOCH
    except OverflowError:
        raise QueryError(f"{value} is out of range in UTC") from None
    whole = delta.days * 86400 + delta.seconds  # floor: microseconds are >= 0
    if not delta.microseconds:
        return Bound(float(whole), inclusive)
    return Bound(float(whole + 1 if low else whole), True)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _point(field: MappedField, value: Any) -> Range:
    """``field == value`` on a range index: the window [value, value] (empty for an int
    no double equals, or a datetime with a fraction of a second no stored one has)."""
    _encode(field, value)  # the value's type is checked as for any equality
    return Range().narrow(
        _bound(field, value, True, low=True), _bound(field, value, True, low=False)
    )


def _comparable(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _check_between(cond: Condition) -> None:
    """``between(high, low)`` is a mistake, not an empty result."""
    if cond.low is None or cond.high is None:
        return
    try:
        inverted = _comparable(cond.low) > _comparable(cond.high)
    except TypeError:  # values the field refuses: its codec says so, naming the field
        return
    if inverted:
        raise QueryError(
            f"{cond.attribute!r}.between({cond.low!r}, {cond.high!r}): "
            "the low bound is above the high bound"
        )


#: The window of no condition (frozen: shared rather than built per condition).
_EVERYTHING = Range()


def sort_filters(
    mapper: Mapper, conditions: tuple[Condition, ...], layout: KeyLayout | None = None
) -> Filters:
    """The conditions as terms and windows, keyed in ``layout`` (a shard's, on a sharded
    model; the model's own by default). A unique value's stripe is always the model's
    claim, in the value's own shard."""
    terms: list[Term] = []
    ranges: dict[MappedField, Range] = {}
    if layout is None:  # a sharded model's filters checked (and kept) in shard 0's keys
        layout = mapper.layout.layout_of_shard(0)
    for cond in conditions:
        field = field_of(mapper, cond.attribute)
        if (cond.op == "contains") != (field.collection is not None):
            raise QueryError(
                f"{cond.attribute!r}: use .contains(value) on a collection, == on a field"
                if field.collection is not None
                else f"{cond.attribute!r} is not a collection: compare it with =="
            )
        if cond.op in ("eq", "contains"):
            if field.unique:
                value = field.index_key(_encode(field, cond.value))
                stripe = mapper.layout.unique_stripe(field.hash_field, value)
                terms.append(UniqueTerm(stripe, value))
            elif field.index == "eq":
                key = field.index_key(_encode(field, cond.value))
                eq_key = layout.eq_index(field.hash_field, key)
                terms.append(ScoredTerm(eq_key) if field.scored else EqTerm(eq_key))
            else:
                point = _point(field, cond.value)
                ranges[field] = ranges.get(field, _EVERYTHING).narrow(point.low, point.high)
            continue
        if field.index != "range":
            raise QueryError(f"{cond.attribute!r} has an equality index: compare it with ==")
        _check_between(cond)
        low = _bound(field, cond.low, cond.low_inclusive, low=True)
        high = _bound(field, cond.high, cond.high_inclusive, low=False)
        ranges[field] = ranges.get(field, _EVERYTHING).narrow(low, high)
    return Filters(tuple(terms), tuple(ranges.items()))


def unique_values(
    mapper: Mapper, conditions: tuple[Condition, ...]
) -> list[tuple[MappedField, bytes]]:
    """The unique fields the conditions compare with ``==``, and each value's index form
    (what its claim is keyed by)."""
    found = []
    for cond in conditions:
        field = field_of(mapper, cond.attribute)
        if cond.op == "eq" and field.unique:
            found.append((field, field.index_key(_encode(field, cond.value))))
    return found


def order_field(mapper: Mapper, ordering: Ordering | None) -> MappedField | None:
    if ordering is None:
        return None
    field = field_of(mapper, ordering.attribute)
    if field.index != "range":
        raise QueryError(f"{ordering.attribute!r} has no range index to order by")
    return field


def ordering_field(
    mapper: Mapper, filters: Filters, ordering: Ordering | None
) -> MappedField | None:
    """The field whose range index gives the order: ``order_by``'s, else the first
    range condition's, else the model's first range field (its index holds every
    entity: the model's all-ids index); ``None`` for id order (``H#all``), on a model
    without a range index."""
    by = order_field(mapper, ordering)
    if by is None:
        by = filters.ranges[0][0] if filters.ranges else mapper.default_order
    return by


def score_arg(score: float) -> bytes:
    """A score as Redis and the script both read it back exactly."""
    if math.isinf(score):
        return b"+inf" if score > 0 else b"-inf"
    return repr(score).encode()


def window_args(window: Range) -> list[bytes | int]:
    """low, low exclusive, high, high exclusive. A missing value's score is +inf, so
    the high end never admits +inf: an open range stops below it."""
    low, high = window.low, window.high
    high_open = not high.inclusive or high.score == math.inf
    return [score_arg(low.score), int(not low.inclusive), score_arg(high.score), int(high_open)]


def compile_query(
    mapper: Mapper,
    filters: Filters,
    by: MappedField | None,
    *,
    mode: bytes,
    descending: bool = False,
    offset: int = 0,
    limit: int | None = None,
    cursor: Cursor = NO_CURSOR,
    layout: KeyLayout | None = None,
) -> ScriptCall:
    """The script call that answers a query: ``mode`` is ``ids``, ``count`` or ``load``
    (``sids``, ``sload``: with each id's score in the ordering index, for merging the
    shards of a sharded model). ``layout``: the shard's, on a sharded model."""
    if layout is None:
        layout = mapper.layout
    # The ordering zset is the only key every query reads: H#all (scores all 0, so
    # positions are ranks) or a range index (positions are (score, id)).
    ordered = layout.all_ids if by is None else layout.range_index(by.hash_field)
    window: Range | None = None
    terms: tuple[Term, ...] = filters.terms
    if filters.ranges:
        extra: list[Term] = []
        for field, rng in filters.ranges:
            if field is by:
                window = rng
            else:
                extra.append(RangeTerm(layout.range_index(field.hash_field), rng))
        terms += tuple(extra)
    args: list[bytes | int] = [
        mode,
        offset,
        -1 if limit is None else limit,
        int(descending),
        int(by is not None),
        layout.entity_of(b""),
    ]
    # Every query compiles here (a lookup too): the common cases skip the generic work.
    if window is None:
        args += _NO_WINDOW
    else:
        args.append(1)
        args += window_args(window)
    args += cursor
    args.append(len(terms))
    if not terms:
        if mapper.expiring:
            return ScriptCall((ordered, layout.expiry), tuple(args), _ZSETS, expiring=True)
        return ScriptCall((ordered,), tuple(args), _ZSET)
    keys: list[bytes] = [ordered]
    types: list[bytes] = [b"zset"]
    unique = False
    for term in terms:
        args.append(term.kind)
        before = len(keys)
        term.encode(keys, args)
        types += [term.key_type] * (len(keys) - before)
        unique = unique or type(term) is UniqueTerm
    lookup = unique and cursor == NO_CURSOR
    if mapper.expiring:  # H#exp last, where the expiring scripts read it
        keys.append(layout.expiry)
        types.append(b"zset")
        return ScriptCall(tuple(keys), tuple(args), tuple(types), lookup, expiring=True)
    return ScriptCall(tuple(keys), tuple(args), tuple(types), lookup)


def compile_union(
    mapper: Mapper,
    union: Union,
    ordering: Ordering | None,
    *,
    mode: bytes,
    descending: bool = False,
    offset: int = 0,
    limit: int | None = None,
    cursor: Cursor = NO_CURSOR,
) -> ScriptCall:
    """The script call that answers an OR of several branches in one step: each branch
    is the call :func:`compile_query` makes for it alone, asking its first
    ``offset + limit`` ids (every id, for a count) in the query's order, which the
    union script merges by (score, id). All branches share one ordering index:
    ``order_by``'s, else the model's default order (the first range condition of each
    branch could differ). An expiring model's ``H#exp`` comes once, last."""
    by = union_ordering_field(mapper, ordering)
    need = None if limit is None or mode == b"count" else offset + limit
    keys: list[bytes] = []
    types: list[bytes] = []
    args: list[bytes | int] = [
        b"count" if mode == b"count" else mode,
        offset,
        -1 if limit is None else limit,
        int(descending),
        mapper.layout.entity_of(b""),
        len(union.branches),
    ]
    for filters in union.branches:
        call = compile_query(
            mapper, filters, by, mode=b"ids", descending=descending, limit=need, cursor=cursor
        )
        if call.expiring:  # each branch's H#exp: one, after every branch's keys
            keys += call.keys[:-1]
            types += call.types[:-1]
        else:
            keys += call.keys
            types += call.types
        args += call.args
    if mapper.expiring:
        keys.append(mapper.layout.expiry)
        types.append(b"zset")
    return ScriptCall(tuple(keys), tuple(args), tuple(types), union=True, expiring=mapper.expiring)


def union_ordering_field(mapper: Mapper, ordering: Ordering | None) -> MappedField | None:
    """The ordering index of an OR of several branches (see :func:`compile_union`)."""
    by = order_field(mapper, ordering)
    return mapper.default_order if by is None else by


#: ``restricted`` 0 and the window (-inf, +inf) as :func:`window_args` gives it.
_NO_WINDOW: tuple[bytes | int, ...] = (0, b"-inf", 0, b"+inf", 1)
_ZSET: tuple[bytes, ...] = (b"zset",)
_ZSETS: tuple[bytes, ...] = (b"zset", b"zset")


__all__ = [
    "NO_CURSOR",
    "Bound",
    "Cursor",
    "EqTerm",
    "Filters",
    "OwnerTerm",
    "Range",
    "RangeTerm",
    "ScoredTerm",
    "ScriptCall",
    "Term",
    "Union",
    "UniqueTerm",
    "compile_query",
    "compile_union",
    "order_field",
    "ordering_field",
    "score_arg",
    "sort_filters",
    "union_ordering_field",
    "unique_values",
    "window_args",
]

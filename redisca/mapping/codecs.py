"""Codecs: how one Python type is checked, stored and indexed.

A codec turns a value into the bytes kept in a hash field and back, and says
how that stored form is indexed: equality indexes use :meth:`Codec.index_key`
of the stored bytes, range indexes :meth:`Codec.score`. Both work from the
stored bytes alone, because a commit computes index removals from what Redis
holds *now*, not from Python objects.

Codecs are looked up by type (:func:`codec_for`): an exact match first, then
predicate factories: ``Enum`` subclasses, and ``X | None``, which stores as
``X`` (``None`` is no value: the field is absent from the hash).
"""

from __future__ import annotations

import enum
import math
import types
import typing
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from ..errors import ValidationError

#: Integers in a range index are sorted-set scores (doubles): beyond this they lose precision.
MAX_SAFE_SCORE = 2**53


def decode_int(raw: bytes, _int: Any = int) -> int:
    """An int as redisca (and redisca 1.x) writes it: ``-?(0|[1-9][0-9]*)``.

    ``int()`` alone also reads ``" 5 "``, ``"+5"``, ``"05"`` and ``"1_000"``; none of
    them is the text of the value it gives, so none is accepted. Digits without a
    leading zero are checked by ``bytes.isdigit`` (C); the rest by comparing the value's
    own text with the stored bytes. (About 100 ns more than ``int()`` per field: the
    Python call.)
    """
    if raw.isdigit() and (raw[0] != 48 or len(raw) == 1):  # 48 is b"0"
        return _int(raw)  # type: ignore[no-any-return]
    value: int = _int(raw)
    if b"%d" % value != raw:
        raise ValueError(f"not an integer as redisca writes it: {raw[:60]!r}")
    return value


class Codec:
    """Base codec: subclasses set ``types`` and override what differs."""

    #: The Python types the default :meth:`coerce` accepts.
    types: ClassVar[tuple[type, ...]] = ()
    #: What error messages call a value of this type.
    name: ClassVar[str] = "value"
    #: "range" codecs get a sorted-set index, the others an equality index.
    index_kind: ClassVar[str] = "eq"

    def coerce(self, value: Any) -> Any:
        """Check the type (and normalise) a value assigned in Python."""
        if not isinstance(value, self.types) or isinstance(value, bool) != (bool in self.types):
            raise ValidationError(f"expected {self.name}, got {type(value).__name__}", value=value)
        return value

    def encode(self, value: Any) -> bytes:
        """The bytes kept in the hash field for a coerced value."""
        raise NotImplementedError

    def decode(self, raw: bytes) -> Any:
        """The value of stored bytes; a ``ValueError`` for bytes it cannot read.

        redisca's codecs read back exactly the bytes their ``encode`` writes (and what
        redisca 1.x wrote), nothing looser: ``" 5 "`` or ``"1_000"`` in an int field is
        something else's write, reported rather than guessed at.
        """
        raise NotImplementedError

    def index_key(self, raw: bytes) -> bytes:
        """The part of an equality-index key that stands for this stored value."""
        return raw

    def score(self, raw: bytes) -> float:
        """The sorted-set score of a stored value (range codecs only)."""
        return float(raw)

    def check_indexable(self, value: Any) -> None:
        """Refuse values an index cannot hold exactly."""


class StrCodec(Codec):
    types = (str,)
    name = "str"

    def coerce(self, value: Any) -> Any:
        if type(value) is not str:  # the common case skips the generic check
            value = super().coerce(value)
        if not value.isascii():
            self.encode(value)  # refuse text UTF-8 cannot hold (lone surrogates) right away
        return value

    def encode(self, value: str) -> bytes:
        try:
            return value.encode()
        except UnicodeEncodeError as exc:
            raise ValidationError(f"string cannot be stored as UTF-8: {exc}", value=value) from None

    def decode(self, raw: bytes) -> str:
        return raw.decode()


class EmailCodec(StrCodec):
    name = "email address"

    def index_key(self, raw: bytes) -> bytes:
        # Addresses are stored as given; their index and uniqueness ignore case. Bytes
        # that are not UTF-8 (written by another program) pass through unchanged, so
        # deleting or checking such an entity still finds its keys.
        return raw.decode(errors="surrogateescape").lower().encode(errors="surrogateescape")


class BytesCodec(Codec):
    types = (bytes, bytearray, memoryview)
    name = "bytes"

    def coerce(self, value: Any) -> bytes:
        return bytes(super().coerce(value))

    def encode(self, value: bytes) -> bytes:
        return value

    def decode(self, raw: bytes) -> bytes:
        return raw


class IntCodec(Codec):
    types = (int,)
    name = "int"
    index_kind = "range"

    def coerce(self, value: Any) -> Any:
        if type(value) is not int:  # the common case skips the generic check
            value = super().coerce(value)
        if value.bit_length() > 64:
            self.encode(value)  # refuse ints too long to write as text right away
        return value

    def encode(self, value: int) -> bytes:
        try:
            return b"%d" % value
        except ValueError as exc:  # beyond sys.get_int_max_str_digits()
            raise ValidationError(f"integer too long to store: {exc}", value=value) from None

    def decode(self, raw: bytes) -> int:
        return decode_int(raw)

    def check_indexable(self, value: int) -> None:
        if abs(value) > MAX_SAFE_SCORE:
            raise ValidationError(f"indexed integers must lie within ±2**53, got {value}")


class FloatCodec(Codec):
    types = (float, int)
    name = "float"
    index_kind = "range"

    def coerce(self, value: Any) -> float:
        try:
            return float(super().coerce(value))
        except OverflowError:
            raise ValidationError(f"{value} is too large for a float", value=value) from None

    def encode(self, value: float) -> bytes:
        return repr(value).encode()

    def decode(self, raw: bytes) -> float:
        value = float(raw)
        if repr(value).encode() != raw:
            raise ValueError(f"not a float as redisca writes it: {raw[:60]!r}")
        return value

    def index_key(self, raw: bytes) -> bytes:
        # 0.0 and -0.0 are one value (they compare equal) with two spellings: a unique
        # field must see one key for both, as a query for either must find both.
        return b"0.0" if raw == b"-0.0" else raw

    def check_indexable(self, value: float) -> None:
        if not math.isfinite(value):  # a range index keeps +inf for "no value"
            raise ValidationError(
                f"NaN and ±inf cannot be stored in a range index (indexed floats must be "
                f"finite), got {value}"
            )


class BoolCodec(Codec):
    types = (bool,)
    name = "bool"

    def encode(self, value: bool) -> bytes:
        return b"1" if value else b"0"

    def decode(self, raw: bytes) -> bool:
        if raw == b"1":
            return True
        if raw == b"0":
            return False
        raise ValueError(f"not a stored bool: {raw!r}")


class DateTimeCodec(Codec):
    """Whole seconds since the epoch, UTC (redisca 1.x's format)."""

    types = (datetime,)
    name = "datetime"
    index_kind = "range"

    def coerce(self, value: Any) -> datetime:
        if type(value) is datetime and value.tzinfo is UTC and not value.microsecond:
            return value  # already what is stored: no two new datetimes per assignment
        moment: datetime = super().coerce(value)
        # Naive means UTC; precision is what the stored integer keeps.
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            return moment.astimezone(UTC).replace(microsecond=0)
        except OverflowError:
            raise ValidationError(f"{moment} is out of range in UTC", value=value) from None

    def encode(self, value: datetime) -> bytes:
        return b"%d" % int(value.timestamp())

    def decode(self, raw: bytes) -> datetime:
        return datetime.fromtimestamp(decode_int(raw), UTC)


class DateCodec(Codec):
    types = (date,)
    name = "date"
    index_kind = "range"

    def coerce(self, value: Any) -> date:
        if isinstance(value, datetime):
            raise ValidationError("expected date, got datetime", value=value)
        return typing.cast(date, super().coerce(value))

    def encode(self, value: date) -> bytes:
        return value.isoformat().encode()

    def decode(self, raw: bytes) -> date:
        value = date.fromisoformat(raw.decode())
        if value.isoformat().encode() != raw:  # 3.11 also reads "20240101", "2024-W01-1"
            raise ValueError(f"not a date as redisca writes it (YYYY-MM-DD): {raw[:60]!r}")
        return value

    def score(self, raw: bytes) -> float:
        return float(date.fromisoformat(raw.decode()).toordinal())


class DecimalCodec(Codec):
    types = (Decimal,)
    name = "Decimal"

    def encode(self, value: Decimal) -> bytes:
        return str(value).encode()

    def decode(self, raw: bytes) -> Decimal:
        try:
            value = Decimal(raw.decode())
        except InvalidOperation:
            raise ValueError(f"not a decimal: {raw[:60]!r}") from None
        if str(value).encode() != raw:  # Decimal() also reads " 5 ", "1_000", "5e0"
            raise ValueError(f"not a decimal as redisca writes it: {raw[:60]!r}")
        return value

    def index_key(self, raw: bytes) -> bytes:
        # Equal decimals share an index key ("1.10", "1.1"; "-0", "0"); the hash keeps the
        # value as given. Trailing zeros are stripped by hand: normalize() would round.
        try:
            value = Decimal(raw.decode())
        except (InvalidOperation, UnicodeDecodeError):
            return raw
        if not value.is_finite():
            return raw
        if value.is_zero():
            return b"0"
        sign, digits, exponent = value.as_tuple()
        exponent = int(exponent)  # finite: always an int
        while digits[-1] == 0:
            digits, exponent = digits[:-1], exponent + 1
        return str(Decimal((sign, digits, exponent))).encode()


class UUIDCodec(Codec):
    types = (uuid.UUID,)
    name = "UUID"

    def encode(self, value: uuid.UUID) -> bytes:
        return str(value).encode()

    def decode(self, raw: bytes) -> uuid.UUID:
        value = uuid.UUID(raw.decode())
        if str(value).encode() != raw:  # UUID() also reads braces, "urn:uuid:", capitals
            raise ValueError(f"not a UUID as redisca writes it: {raw[:60]!r}")
        return value


class EnumCodec(Codec):
    """Members are stored by name, which survives reordering and value changes."""

    name = "enum member"

    def __init__(self, enum_cls: type[enum.Enum]) -> None:
        self.enum_cls = enum_cls
        self.name = enum_cls.__name__  # type: ignore[misc]

    def coerce(self, value: Any) -> enum.Enum:
        if isinstance(value, self.enum_cls):
            return value
        raise ValidationError(f"expected a member of {self.name}, got {value!r}", value=value)

    def encode(self, value: enum.Enum) -> bytes:
        return value.name.encode()

    def decode(self, raw: bytes) -> enum.Enum:
        try:
            return self.enum_cls[raw.decode()]
        except KeyError:
            raise ValueError(f"{raw!r} is not a member of {self.name}") from None


_EXACT: dict[Any, Callable[[], Codec]] = {
    str: StrCodec,
    int: IntCodec,
    float: FloatCodec,
    bool: BoolCodec,
    datetime: DateTimeCodec,
    date: DateCodec,
    Decimal: DecimalCodec,
    uuid.UUID: UUIDCodec,
    bytes: BytesCodec,
}


def _is_optional(tp: Any) -> bool:
    return unwrap_optional(tp)[1]


def _optional_codec(tp: Any) -> Codec | None:
    # None is "no value" (the field is absent from the hash), so X | None stores as X.
    return codec_for(unwrap_optional(tp)[0])


_PREDICATES: list[tuple[Callable[[Any], bool], Callable[[Any], Codec | None]]] = [
    (lambda tp: isinstance(tp, type) and issubclass(tp, enum.Enum), EnumCodec),
    (_is_optional, _optional_codec),
]


def codec_for(tp: Any) -> Codec | None:
    """The codec of a (non-optional) type, or ``None`` if redisca cannot store it."""
    factory = _EXACT.get(tp)
    if factory is not None:
        return factory()
    for matches, make in _PREDICATES:
        if matches(tp):
            return make(tp)
    return None


def register_codec(tp: type, factory: Callable[[], Codec]) -> None:
    """Teach redisca to store a type of your own (exact type match)."""
    _EXACT[tp] = factory


#: C functions doing exactly what these codecs' ``encode``/``decode`` do, minus a Python
#: call: they run once per field per entity on every load and every commit. Exact types
#: only: a subclass may override either method.
_C_ENCODE: dict[type, Callable[[Any], bytes]] = {
    StrCodec: str.encode,
    EmailCodec: str.encode,
}


def _decode_timestamp(
    raw: bytes, _at: Any = datetime.fromtimestamp, _int: Any = decode_int, _utc: Any = UTC
) -> datetime:
    # DateTimeCodec.decode with its lookups bound once: a load runs it per entity.
    return _at(_int(raw), _utc)  # type: ignore[no-any-return]


_C_DECODE: dict[type, Callable[[bytes], Any]] = {
    StrCodec: bytes.decode,
    EmailCodec: bytes.decode,
    IntCodec: decode_int,
    DateTimeCodec: _decode_timestamp,
}


#: Codecs whose values are immutable (exact types: a subclass may coerce to anything).
_IMMUTABLE: set[type] = {
    StrCodec,
    EmailCodec,
    BytesCodec,
    IntCodec,
    FloatCodec,
    BoolCodec,
    DateTimeCodec,
    DateCodec,
    DecimalCodec,
    UUIDCodec,
    EnumCodec,
}


def holds_immutable(codec: Codec) -> bool:
    """Whether values of this codec cannot change in place (so only assignment changes
    a field): then a commit needs to compare the field only when it was assigned."""
    return type(codec) in _IMMUTABLE


def mark_immutable(codec_type: type[Codec]) -> None:
    """Declare a codec class's values immutable (for redisca's own codecs elsewhere)."""
    _IMMUTABLE.add(codec_type)


def encoder(codec: Codec) -> Callable[[Any], bytes]:
    """``codec.encode``, or a C function doing the same (may raise UnicodeEncodeError)."""
    return _C_ENCODE.get(type(codec), codec.encode)


def decoder(codec: Codec) -> Callable[[bytes], Any]:
    """``codec.decode``, or a faster function doing the same (a C one where there is one)."""
    return _C_DECODE.get(type(codec), codec.decode)


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; any other type → ``(type, False)``."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


__all__ = [
    "MAX_SAFE_SCORE",
    "BoolCodec",
    "BytesCodec",
    "Codec",
    "DateCodec",
    "DateTimeCodec",
    "DecimalCodec",
    "EmailCodec",
    "EnumCodec",
    "FloatCodec",
    "IntCodec",
    "StrCodec",
    "UUIDCodec",
    "codec_for",
    "decode_int",
    "register_codec",
    "unwrap_optional",
]

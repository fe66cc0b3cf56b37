"""Codecs: exact round trips (by hand and by hypothesis), indexability, scores, custom codecs,
and real-Redis round trips of every type through a Session, including unreadable values.
"""

import enum
import math
import struct
import typing
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from redisca import Float, Integer, Registry
from redisca import ValidationError as Invalid
from redisca.mapping import codecs
from redisca.mapping.codecs import codec_for, unwrap_optional


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Size(enum.Enum):
    S = 1
    L = 3
    LARGE = 3  # an alias: the canonical name is stored


def round_trip(tp, value):
    codec = codec_for(tp)
    raw = codec.encode(codec.coerce(value))
    assert isinstance(raw, bytes)
    return raw, codec.decode(raw)


# -- exact round trips ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "1.10",
        "-0",
        "0E-7",
        "NaN",
        "-NaN",
        "sNaN",
        "Infinity",
        "-Infinity",
        "1E+2",
        "1e-7",
        "123456789012345678901234567890.123456789",
        "-0.000",
        "7",
    ],
)
def test_decimal_round_trips_exactly(text):
    value = Decimal(text)
    back = round_trip(Decimal, value)[1]
    assert back.as_tuple() == value.as_tuple()  # digits, exponent and sign, NaN included
    assert str(back) == str(value)


def test_decimal_is_not_float_or_int():
    codec = codec_for(Decimal)
    for bad in (1.5, 1, "1.5"):
        with pytest.raises(Invalid):
            codec.coerce(bad)


def test_uuid_round_trips():
    for value in (uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.uuid4()):
        assert round_trip(uuid.UUID, value) == (str(value).encode(), value)


def test_enums_are_stored_by_name():
    assert round_trip(Color, Color.GREEN) == (b"GREEN", Color.GREEN)
    assert round_trip(Size, Size.L) == (b"L", Size.L)
    assert round_trip(Size, Size.LARGE) == (b"L", Size.L)  # an alias is the same member
    codec = codec_for(Color)
    assert codec.decode(b"RED") is Color.RED
    for raw in (b"red", b"PURPLE", b""):
        with pytest.raises(ValueError):
            codec.decode(raw)
    for bad in ("red", "RED", 1, Size.S):
        with pytest.raises(Invalid, match="Color"):
            codec.coerce(bad)


@pytest.mark.parametrize("value", [date(1, 1, 1), date(9999, 12, 31), date(2024, 2, 29)])
def test_date_round_trips(value):
    assert round_trip(date, value) == (value.isoformat().encode(), value)


def test_bool_round_trips_and_rejects_other_stored_values():
    assert round_trip(bool, True) == (b"1", True)
    assert round_trip(bool, False) == (b"0", False)
    for raw in (b"2", b"true", b"", b"01"):
        with pytest.raises(ValueError):
            codec_for(bool).decode(raw)


def bits(value):
    return struct.pack(">d", value)


@pytest.mark.parametrize(
    "value", [0.1, 1e308, -1e308, -0.0, 0.0, 5e-324, 1 / 3, float("inf"), float("-inf")]
)
def test_float_round_trips_bit_for_bit(value):
    back = round_trip(float, value)[1]
    assert type(back) is float and bits(back) == bits(value)


def test_float_nan_round_trips_when_not_indexed_and_ints_become_floats():
    back = round_trip(float, float("nan"))[1]
    assert math.isnan(back)
    back = round_trip(float, 3)[1]
    assert type(back) is float and back == 3.0


@pytest.mark.parametrize("value", [b"", b"\xff\xfe\x00\x80", bytes(range(256)), b"\xc3("])
def test_bytes_round_trip_even_when_not_utf8(value):
    assert round_trip(bytes, value) == (value, value)
    assert round_trip(bytes, bytearray(value))[1] == value


@pytest.mark.parametrize("value", ["", "héllo ✓ 🙂 日本", "a\nb\r\nc\t", "\x00", "'\"\\"])
def test_str_round_trips(value):
    assert round_trip(str, value) == (value.encode(), value)


def test_text_utf8_cannot_hold_is_refused_on_assignment():
    for codec in (codec_for(str), codecs.EmailCodec()):
        with pytest.raises(Invalid, match="UTF-8"):
            codec.coerce("a\ud800@b")


# -- DateTime ---------------------------------------------------------------------------------


def test_datetime_is_an_integer_utc_timestamp_loaded_aware_utc():
    codec = codec_for(datetime)
    moment = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert codec.encode(codec.coerce(moment)) == b"1700000000"
    naive = codec.coerce(datetime(2023, 11, 14, 22, 13, 20))  # naive is taken as UTC
    assert naive == moment and naive.tzinfo is UTC
    paris = datetime(2023, 11, 14, 23, 13, 20, 999999, tzinfo=timezone(timedelta(hours=1)))
    converted = codec.coerce(paris)  # same instant, in UTC, microseconds truncated
    assert converted == moment and converted.tzinfo is UTC and converted.microsecond == 0
    loaded = codec.decode(b"1700000000")
    assert loaded == moment and loaded.tzinfo is UTC
    assert codec.decode(b"-86400") == datetime(1969, 12, 31, tzinfo=UTC)
    assert codec.encode(codec.coerce(datetime(1, 1, 1))) == b"-62135596800"


def test_datetime_out_of_range_after_conversion_is_a_validation_error():
    codec = codec_for(datetime)
    with pytest.raises(Invalid):
        codec.coerce(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))))
    with pytest.raises(Invalid):
        codec.coerce(datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))))


# -- indexes: what can be indexed, index keys, scores ------------------------------------------


def test_indexed_integer_beyond_2_53_and_indexed_nan_are_refused():
    reg = Registry()

    @reg.mapped
    @attrs.define
    class Stat:
        rank: int = Integer(index=True, default=0)
        count: int = Integer(default=0)
        ratio: float = Float(index=True, default=0.0)
        raw: float = Float(default=0.0)
        id: str | None = None

    stat = Stat(rank=2**53, count=2**80, raw=float("nan"), ratio=1.7e308)
    for bad in (float("inf"), float("-inf")):
        with pytest.raises(Invalid, match=r"Stat\.ratio.*must be finite"):
            stat.ratio = bad
    stat.rank = -(2**53)
    for bad in (2**53 + 1, -(2**53) - 1, 2**64):
        with pytest.raises(Invalid, match=r"Stat\.rank") as info:
            stat.rank = bad
        assert info.value.field == "rank"
    with pytest.raises(Invalid, match=r"Stat\.ratio.*NaN"):
        stat.ratio = float("nan")
    with pytest.raises(Invalid, match=r"Stat\.ratio"):
        Stat(ratio=float("nan"))
    assert stat.rank == -(2**53) and math.isnan(stat.raw) and stat.count == 2**80


def test_huge_int_for_a_float_field_is_a_validation_error():
    with pytest.raises(Invalid):
        codec_for(float).coerce(2**1100)


def test_email_index_key_ignores_case_but_value_is_kept():
    codec = codecs.EmailCodec()
    assert codec.encode("Ann@Example.COM") == b"Ann@Example.COM"
    assert codec.index_key(b"Ann@Example.COM") == b"ann@example.com"
    assert codec.index_key(b"ANN@EXAMPLE.COM") == codec.index_key(b"ann@example.com")
    assert codec_for(str).index_key(b"Ann") == b"Ann"  # plain strings stay case-sensitive


def test_equal_decimals_share_an_index_key_and_different_ones_do_not():
    codec = codec_for(Decimal)
    key = lambda text: codec.index_key(codec.encode(Decimal(text)))  # noqa: E731
    assert key("1.10") == key("1.1") == key("1.100000")
    assert key("100") == key("1E+2") == key("100.00")
    assert key("0") == key("-0") == key("0.000") == key("0E+5")
    assert (
        len(
            {
                key(t)
                for t in (
                    "1.1",
                    "1.01",
                    "11",
                    "-1.1",
                    "1.1000000000000000000000000001",
                    "Infinity",
                    "-Infinity",
                )
            }
        )
        == 7
    )


def test_scores():
    assert codec_for(int).score(b"-42") == -42.0
    assert codec_for(float).score(b"-0.5") == -0.5
    assert codec_for(float).score(b"inf") == math.inf
    assert codec_for(datetime).score(b"1700000000") == 1700000000.0
    assert codec_for(date).score(b"2024-01-01") == date(2024, 1, 1).toordinal() == 738886
    assert {codec_for(t).index_kind for t in (int, float, datetime, date)} == {"range"}
    assert {codec_for(t).index_kind for t in (str, bool, Decimal, uuid.UUID, bytes, Color)} == {
        "eq"
    }


def test_codec_lookup_and_optional_unwrapping():
    assert codec_for(list) is None  # X | None: see the predicate test below
    assert type(codec_for(bool)) is codecs.BoolCodec  # exact lookup: bool is not int
    assert unwrap_optional(int | None) == (int, True)
    assert unwrap_optional(typing.Optional[date]) == (date, True)  # noqa: UP045
    assert unwrap_optional(int) == (int, False)
    assert unwrap_optional(int | str) == (int | str, False)
    assert unwrap_optional(int | str | None)[1] is False


# -- property tests ---------------------------------------------------------------------------


@given(st.text())
def test_prop_str(value):
    assert round_trip(str, value)[1] == value


@given(st.integers())
def test_prop_int(value):
    raw, back = round_trip(int, value)
    assert back == value and type(back) is int
    if abs(value) <= 2**53:
        assert codec_for(int).score(raw) == value


@given(st.floats())
def test_prop_float(value):
    back = round_trip(float, value)[1]
    assert bits(back) == bits(value) or (math.isnan(back) and math.isnan(value))


@given(st.decimals(allow_nan=True, allow_infinity=True))
def test_prop_decimal(value):
    assert round_trip(Decimal, value)[1].as_tuple() == value.as_tuple()


@given(st.decimals(allow_nan=False), st.decimals(allow_nan=False), st.integers(0, 30))
def test_prop_decimal_index_key_matches_equality(a, b, zeros):
    codec = codec_for(Decimal)
    key = lambda value: codec.index_key(codec.encode(value))  # noqa: E731
    assert (key(a) == key(b)) == (a == b)
    if a.is_finite():  # the same number written with more trailing zeros
        sign, digits, exponent = a.as_tuple()
        padded = Decimal((sign, digits + (0,) * zeros, exponent - zeros))
        assert padded == a and key(padded) == key(a)


@given(st.binary())
def test_prop_bytes(value):
    assert round_trip(bytes, value)[1] == value


@given(st.dates(), st.dates())
def test_prop_date_round_trip_and_score_order(a, b):
    raw_a, back = round_trip(date, a)
    raw_b = round_trip(date, b)[0]
    assert back == a
    score = codec_for(date).score
    assert (score(raw_a) < score(raw_b)) == (a < b)


OFFSETS = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none() | OFFSETS
    )
)
def test_prop_datetime(value):
    codec = codec_for(datetime)
    coerced = codec.coerce(value)
    as_utc = value if value.tzinfo else value.replace(tzinfo=UTC)
    assert coerced.tzinfo is UTC and coerced.microsecond == 0
    assert timedelta(0) <= as_utc - coerced < timedelta(seconds=1)
    raw = codec.encode(coerced)
    back = codec.decode(raw)
    assert back == coerced and back.tzinfo is UTC
    assert codec.score(raw) == coerced.timestamp()


def test_optional_types_find_their_inner_codec_by_predicate() -> None:
    import typing

    assert isinstance(codec_for(int | None), codecs.IntCodec)
    assert isinstance(codec_for(typing.Optional[Color]), codecs.EnumCodec)  # noqa: UP045
    assert codec_for(int | str) is None and codec_for(list[int]) is None

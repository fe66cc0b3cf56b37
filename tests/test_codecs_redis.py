"""Codecs against a real server: every type round-trips through a Session in both client
modes, stored formats are redisca 1.x's, custom codecs work end to end, and a stored value
its codec cannot read is a DecodeError naming the key and field.
"""

import enum
import math
import struct
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import attrs
import pytest
from helpers import as_str, unique_owner

import redisca
from redisca import DecodeError, Email, MappingError, Registry, Session
from redisca import ValidationError as Invalid


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Size(enum.Enum):
    S = 1
    L = 3


def bits(value):
    return struct.pack(">d", value)


# -- custom codecs ----------------------------------------------------------------------------


def test_register_codec_for_a_custom_type(r):
    @attrs.frozen
    class Money:
        cents: int
        currency: str

    class MoneyCodec(redisca.Codec):
        types = (Money,)
        name = "Money"

        def encode(self, value):
            return f"{value.currency}:{value.cents}".encode()

        def decode(self, raw):
            currency, cents = raw.decode().split(":")
            return Money(int(cents), currency)

    @attrs.define
    class Invoice:
        total: Money
        tip: Money | None = None
        id: str | None = None

    with pytest.raises(MappingError, match=r"Invoice\.total"):
        Registry().map(Invoice)  # not mappable before the codec is registered
    redisca.register_codec(Money, MoneyCodec)
    reg = Registry()
    reg.map(Invoice, prefix="inv")
    with pytest.raises(Invalid, match=r"Invoice\.tip"):
        Invoice(Money(1, "EUR"), tip=5)
    with Session(r) as session:
        session.add(Invoice(Money(1234, "EUR"), id="i1"))
        session.commit()
    assert as_str(r.hget("{inv}:i1", "total")) == "EUR:1234" and not r.hexists("{inv}:i1", "tip")
    with Session(r) as session:
        loaded = session.get(Invoice, "i1")
        assert loaded.total == Money(1234, "EUR") and loaded.tip is None


# -- through Redis ----------------------------------------------------------------------------

registry = Registry()


@registry.mapped(prefix="own")
@attrs.define
class Owner:
    name: str = ""
    id: str | None = None


@registry.mapped(prefix="every")
@attrs.define
class Every:
    text: str | None = None
    number: int | None = None
    real: float | None = None
    flag: bool | None = None
    moment: datetime | None = None
    day: date | None = None
    money: Decimal | None = None
    uid: uuid.UUID | None = None
    blob: bytes | None = None
    color: Color | None = None
    size: Size | None = None
    email: str | None = Email(default=None)
    owner: Owner | None = None
    id: str | None = None


VALUES = {
    "typical": dict(
        text="héllo ✓",
        number=42,
        real=0.1,
        flag=True,
        moment=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        day=date(2024, 2, 29),
        money=Decimal("1.10"),
        uid=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        blob=b"\x00\xff\xfe",
        color=Color.RED,
        size=Size.L,
        email="Ann@Example.COM",
        owner=Owner("Acme", id="o1"),
    ),
    "edge": dict(
        text="",
        number=-(2**70),
        real=-0.0,
        flag=False,
        moment=datetime(1960, 1, 1, tzinfo=UTC),
        day=date(1, 1, 1),
        money=Decimal("-0"),
        uid=uuid.UUID(int=0),
        blob=b"",
        color=Color.GREEN,
        size=Size.S,
        email="x@y",
    ),
    "extreme": dict(
        text="line\nbreak\r\n\t\x00 🙂 日本",
        number=2**63,
        real=1e308,
        moment=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        day=date(9999, 12, 31),
        money=Decimal("1E+2"),
        blob=bytes(range(256)),
    ),
    "special": dict(real=float("inf"), money=Decimal("-Infinity")),
}


def fresh(case):
    """The values of a case, with a new Owner object (a committed one would be reattached)."""
    values = dict(VALUES[case])
    if "owner" in values:
        values["owner"] = attrs.evolve(values["owner"])
    return values


@pytest.mark.parametrize("case", list(VALUES))
def test_every_type_round_trips_through_redis(r, case):
    original = Every(**fresh(case), id="e1")
    with Session(r) as session:
        session.add(original)
        session.commit()
    with Session(r) as session:
        loaded = session.get(Every, "e1")
        assert loaded is not original and loaded == original
        for name, value in attrs.asdict(original, recurse=False).items():
            if isinstance(value, float):
                assert bits(getattr(loaded, name)) == bits(value), name
            elif isinstance(value, Decimal):
                assert getattr(loaded, name).as_tuple() == value.as_tuple(), name
            elif name != "owner":
                assert type(getattr(loaded, name)) is type(value), name


def test_nan_values_round_trip_through_redis(r):
    with Session(r) as session:
        session.add(Every(real=float("nan"), money=Decimal("NaN"), id="n"))
        session.commit()
    with Session(r) as session:
        loaded = session.get(Every, "n")
        assert math.isnan(loaded.real) and loaded.money.is_nan() and loaded.text is None


def test_text_utf8_cannot_hold_is_refused_before_commit():
    assert Every(text="ok").text == "ok"
    with pytest.raises(Invalid, match=r"Every\.text"):
        Every(text="lone \udfff surrogate")
    with pytest.raises(Invalid, match=r"Every\.email"):
        Every(email="a\ud800@b")


def test_stored_formats(r):
    with Session(r) as session:
        session.add(Every(**fresh("typical"), id="e1"))
        session.commit()
    expected = {
        "text": "héllo ✓",
        "number": "42",
        "real": "0.1",
        "flag": "1",
        "moment": "1714979289",
        "day": "2024-02-29",
        "money": "1.10",
        "uid": "12345678-1234-5678-1234-567812345678",
        "color": "RED",
        "size": "L",
        "email": "Ann@Example.COM",
        "owner": "o1",
    }
    # (the blob is not UTF-8, so a decode_responses client cannot read it: HSTRLEN instead)
    assert [as_str(v) for v in r.hmget("{every}:e1", list(expected))] == list(expected.values())
    assert r.hlen("{every}:e1") == len(expected) + 1 and r.hstrlen("{every}:e1", "blob") == 3


GARBAGE = [
    ("text", b"\xff\xfe"),
    ("number", b"x"),
    ("number", b"1.5"),
    ("real", b"abc"),
    ("flag", b"2"),
    ("flag", b"true"),
    ("moment", b"yesterday"),
    ("moment", b"1.5"),
    ("day", b"2024-13-01"),
    ("money", b"abc"),
    ("uid", b"nope"),
    ("color", b"red"),
    ("color", b"PURPLE"),
    ("size", b"1"),
    ("email", b"\xc3"),
    ("owner", b"\xff"),
]


@pytest.mark.parametrize(("name", "garbage"), GARBAGE, ids=lambda x: repr(x)[:12])
def test_unreadable_stored_value_is_a_decode_error(r, name, garbage):
    with Session(r) as session:
        session.add(Every(**fresh("typical"), id="bad:1"))
        session.commit()
    r.hset("{every}:bad:1", name, garbage)
    with Session(r) as session, pytest.raises(DecodeError) as info:
        session.get(Every, "bad:1")
    assert info.value.key == "{every}:bad:1" and info.value.field == name
    assert "{every}:bad:1" in str(info.value) and repr(name) in str(info.value)
    with Session(r) as session, pytest.raises(DecodeError, match=r"\{every\}:bad:1"):
        getattr(session.reference(Every, "bad:1"), name)  # lazy load says the same


def test_key_of_the_wrong_type_is_a_decode_error(r):
    r.set("{every}:s", "a string, not a hash")
    with Session(r) as session, pytest.raises(DecodeError, match=r"\{every\}:s") as info:
        session.get(Every, "s")
    assert info.value.key == "{every}:s"


def test_equal_decimals_are_one_value_for_indexes_and_uniqueness(r):
    reg = Registry()

    @reg.mapped(prefix="prod")
    @attrs.define
    class Product:
        price: Decimal = redisca.Field(unique=True)
        color: Color = redisca.Field(index=True, default=Color.RED)
        id: str | None = None

    with Session(r) as session:
        session.add(Product(Decimal("1.10"), id="p1"))
        session.commit()
        session.add(Product(Decimal("1.1"), id="p2"))
        with pytest.raises(redisca.UniqueViolation) as info:
            session.commit()
        assert info.value.owner == "p1"
    assert as_str(r.hget("{prod}:p1", "price")) == "1.10"  # the hash keeps it as given
    assert unique_owner(r, "prod", "price", "1.1") == "p1" and not r.exists("{prod}:p2")
    assert {as_str(m) for m in r.smembers("{prod}#i:color:RED")} == {"p1"}  # enums by name
    with Session(r) as session:
        for query in (Decimal("1.1"), Decimal("1.100")):
            found = session.query(Product).filter(Product.price == query).one()
            assert found.id == "p1" and str(found.price) == "1.10"
        assert session.query(Product).filter(Product.color == Color.RED).ids() == ["p1"]

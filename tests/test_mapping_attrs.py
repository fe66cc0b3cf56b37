"""attrs keeps working on mapped classes (slots=True and slots=False), and every field
helper's rules raise ValidationError (a ValueError naming the field) on construction and on
assignment, before anything could reach Redis.
"""

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import attrs
import pytest

import redisca
from redisca import (
    Boolean,
    Date,
    DateTime,
    Email,
    Float,
    Integer,
    Reference,
    Registry,
    String,
    ValidationError,
)
from redisca.mapping.expressions import Condition, Ordering


def _even(instance, attribute, value):
    if value % 2:
        raise ValueError(f"{attribute.name} must be even")


def make_models(slots):
    reg = Registry()
    counter = iter(range(1000))

    @reg.mapped(prefix="co")
    @attrs.define(slots=slots)
    class Company:
        name: str = String(maxlen=10)
        id: str | None = None

    @reg.mapped(prefix="usr")
    @attrs.define(slots=slots)
    class User:
        name: str = String(minlen=2, maxlen=5)
        email: str = Email(field="eml", unique=True, default="a@b.c")
        age: int | None = Integer(minval=0, maxval=200, index=True, default=None)
        pairs: int = Integer(default=0, validator=_even)
        nick: str | None = attrs.field(
            default=None, validator=attrs.validators.optional(attrs.validators.max_len(3))
        )
        serial: int = Integer(new=lambda: next(counter))
        ticket: str = String(default=lambda: f"t{next(counter)}")
        company: Company | None = None
        joined: datetime = DateTime(new=lambda: datetime(2024, 1, 1, 12, 0, 0, 999))
        id: str | None = None

        def greeting(self):
            return f"hi {self.name}"

        @property
        def adult(self):
            return self.age is not None and self.age >= 18

    return Company, User


@pytest.fixture(params=[True, False], ids=["slots", "dict"])
def models(request):
    return make_models(request.param)


def test_init_repr_eq_and_methods(models):
    Company, User = models
    acme = Company("Acme", id="c1")
    user = User("Ann", age=30, company=acme, id=7)
    assert (user.name, user.email, user.age, user.company) == ("Ann", "a@b.c", 30, acme)
    assert user.id == "7"
    assert repr(user).startswith("User(name='Ann', email='a@b.c', age=30, pairs=0, nick=None")
    assert "id='7'" in repr(user)
    twin = attrs.evolve(user, serial=user.serial, ticket=user.ticket)
    assert twin == user and twin is not user
    assert user != attrs.evolve(user, age=31)
    assert user.greeting() == "hi Ann" and user.adult
    assert attrs.asdict(user, recurse=False)["company"] is acme
    assert [a.name for a in attrs.fields(User)][:3] == ["name", "email", "age"]
    if "__slots__" in User.__dict__:
        assert not hasattr(user, "__dict__")
    else:
        assert user.__dict__["name"] == "Ann"  # values live in the instance dict


def test_defaults_and_factories(models):
    _, User = models
    first, second = User("Ann"), User("Bob")
    assert second.serial == first.serial + 2  # new= callable is a factory, called per instance
    assert (first.ticket, second.ticket) == (f"t{first.serial + 1}", f"t{second.serial + 1}")
    assert first.joined == datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)  # coerced by DateTime
    assert (first.age, first.company, first.id) == (None, None, None)
    assert User("Cy", serial=99).serial == 99
    with pytest.raises(TypeError, match="not both"):
        Integer(default=1, new=2)


def test_attrs_validators_still_run(models):
    _, User = models
    with pytest.raises(ValueError, match="pairs must be even"):
        User("Ann", pairs=3)
    user = User("Ann", pairs=2)
    with pytest.raises(ValueError, match="pairs must be even"):
        user.pairs = 5
    assert user.pairs == 2
    with pytest.raises(ValueError):
        user.nick = "toolong"
    user.nick = "abc"
    with pytest.raises(ValueError, match="pairs must be even"):
        attrs.evolve(user, pairs=1)
    with pytest.raises(ValidationError, match=r"User\.name"):
        attrs.evolve(user, name="x")


def test_class_attribute_access_gives_comparators(models):
    Company, User = models
    assert isinstance(User.age >= 3, Condition)
    cond = User.age >= 3
    assert (cond.op, cond.low, cond.high) == ("range", 3, None)
    assert (User.age < 5).high_inclusive is False
    assert (User.age.between(1, 2).low, User.age.between(1, 2).high) == (1, 2)
    eq = User.email == "x@y.z"
    assert isinstance(eq, Condition) and (eq.op, eq.value) == ("eq", "x@y.z")
    assert eq.attribute is User.email
    assert isinstance(User.age.desc(), Ordering) and User.age.desc().descending
    assert isinstance(User.company == Company("A"), Condition)
    assert isinstance(User.id == "1", Condition)
    assert {User.age: 1}[User.age] == 1  # still hashable


def test_ids_are_strings(models):
    _, User = models
    user = User("Ann", id=12)
    assert user.id == "12" and type(user.id) is str
    user.id = 5
    assert user.id == "5"
    for bad in (True, 1.5, b"1", uuid.UUID(int=1)):
        with pytest.raises(ValidationError, match=r"User\.id") as info:
            user.id = bad
        assert info.value.field == "id"
    assert user.id == "5"
    assert redisca.inspect(user).key == "{usr}:5"


def test_assignment_is_checked_and_normalised(models):
    _, User = models
    user = User("Ann")
    user.joined = datetime(2024, 6, 1, 10, 0, 0, 123456)  # naive: UTC, whole seconds
    assert user.joined == datetime(2024, 6, 1, 10, 0, 0, tzinfo=UTC)
    assert user.joined.tzinfo is UTC
    with pytest.raises(ValidationError, match=r"User\.company") as info:
        user.company = "c1"
    assert info.value.field == "company" and user.company is None
    with pytest.raises(ValidationError, match=r"User\.company"):
        User("Ann", company=User("Bob"))


# -- each helper's rules ---------------------------------------------------------------------

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def make_record(slots):
    reg = Registry()

    @reg.mapped(prefix="co")
    @attrs.define(slots=slots)
    class Company:
        id: str | None = None

    @reg.mapped(prefix="rec")
    @attrs.define(slots=slots)
    class Record:
        name: str = String(minlen=2, maxlen=5, default="abc")
        email: str = Email(default="a@b.c")
        count: int = Integer(minval=0, maxval=200, default=0)
        big: int = Integer(default=0)
        ratio: float = Float(minval=-1.0, maxval=1.0, default=0.0)
        flag: bool = Boolean(default=False)
        when: datetime = DateTime(default=NOW)
        day: date = Date(default=date(2024, 1, 1))
        company: Company | None = Reference(Company, default=None)
        id: str | None = None

    return Company, Record


RECORDS = {slots: make_record(slots) for slots in (True, False)}
SELF = object()  # stands for "another Record" in the table below

BAD = [
    ("name", "a", "below the minimum"),
    ("name", "abcdef", "above the maximum"),
    ("name", 5, "expected str"),
    ("name", None, "cannot be None"),
    ("email", "no-at-sign", "not an email"),
    ("email", "a@b@c", "not an email"),
    ("email", "a b@c.d", "not an email"),
    ("email", "", "not an email"),
    ("email", b"a@b.c", "expected"),
    ("count", -1, "below the minimum"),
    ("count", 201, "above the maximum"),
    ("count", True, "expected int"),
    ("count", "3", "expected int"),
    ("count", 3.0, "expected int"),
    ("count", None, "cannot be None"),
    ("big", False, "expected int"),
    ("ratio", 1.5, "above the maximum"),
    ("ratio", -1.01, "below the minimum"),
    ("ratio", "0.5", "expected float"),
    ("ratio", True, "expected float"),
    ("ratio", Decimal("0.5"), "expected float"),
    ("flag", 1, "expected bool"),
    ("flag", "true", "expected bool"),
    ("flag", None, "cannot be None"),
    ("when", date(2024, 1, 1), "expected datetime"),
    ("when", "2024-01-01T00:00:00", "expected datetime"),
    ("when", 1700000000, "expected datetime"),
    ("day", datetime(2024, 1, 1), "datetime"),
    ("day", "2024-01-01", "expected date"),
    ("company", "c1", "expected a Company"),
    ("company", SELF, "expected a Company"),
]


@pytest.mark.parametrize("slots", [True, False], ids=["slots", "dict"])
@pytest.mark.parametrize(("name", "bad", "message"), BAD, ids=lambda x: repr(x)[:20])
def test_invalid_values_raise_validation_error(slots, name, bad, message):
    _, Record = RECORDS[slots]
    if bad is SELF:
        bad = Record()
    with pytest.raises(ValidationError, match=rf"Record\.{name}: .*{message}") as info:
        Record(**{name: bad})
    assert isinstance(info.value, ValueError)
    assert info.value.field == name
    record = Record()
    before = getattr(record, name)
    with pytest.raises(ValidationError, match=rf"Record\.{name}: .*{message}") as info:
        setattr(record, name, bad)
    assert info.value.field == name
    assert getattr(record, name) == before  # a refused value leaves the attribute alone


@pytest.mark.parametrize("slots", [True, False], ids=["slots", "dict"])
def test_valid_values_at_the_limits_and_normalisation(slots):
    Company, Record = RECORDS[slots]
    record = Record(name="ab", count=200, ratio=-1.0, big=2**80, email="Ann@Example.COM")
    record.name = "abcde"
    record.count = 0
    record.ratio = 1  # an int is a float here
    assert type(record.ratio) is float and record.ratio == 1.0
    assert record.email == "Ann@Example.COM"  # stored as given
    record.when = datetime(2024, 5, 6, 9, 8, 9, 999999, tzinfo=timezone(timedelta(hours=2)))
    assert record.when == NOW and record.when.tzinfo is UTC
    record.day = date(2000, 2, 29)
    record.company = Company(id="c1")
    record.flag = True
    assert (record.name, record.count, record.flag, record.company.id) == ("abcde", 0, True, "c1")

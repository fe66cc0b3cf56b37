"""Mapping: Registry.mapped / Registry.map, inference from annotations, and attrs kept intact.

Every class is mapped in a registry made for its test (or module), so prefixes never clash.
"""

import dataclasses
import enum
import sys
import types
import typing
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import attrs
import pytest

import redisca
from redisca import Email, Integer, MappingError, Reference, Registry, String, ValidationError
from redisca.mapping import codecs
from redisca.mapping.expressions import Condition


def klass(name="Thing", *, slots=True, **attributes):
    """A plain attrs class (``id`` last, default None) for the error cases."""
    attributes.setdefault("id", attrs.field(default=None))
    attributes["id"] = attributes.pop("id")
    return attrs.make_class(name, attributes, slots=slots)


def test_mapped_with_and_without_arguments():
    reg = Registry()

    @attrs.define
    class BlogPost:
        title: str = ""
        id: str | None = None

    @reg.mapped()
    @attrs.define
    class Tag:
        id: str | None = None

    @reg.mapped(prefix="usr", id="code", versioned=True)
    @attrs.define
    class Member:
        code: str | None = None

    assert reg.mapped(BlogPost) is BlogPost  # bare decorator, class returned unchanged
    assert redisca.inspect(BlogPost).prefix == "blogpost"  # lowercased class name
    assert redisca.inspect(BlogPost(id="7")).key == "{blogpost}:7"
    assert redisca.inspect(Tag).prefix == "tag"
    mapper = redisca.inspect(Member)
    assert (mapper.prefix, mapper.id_attr, mapper.versioned) == ("usr", "code", True)
    assert redisca.inspect(Member(code="x")).key == "{usr}:x"
    assert len(reg) == 3 and mapper in list(reg)


@pytest.mark.parametrize("prefix", ["", "a:b", "a#b", "a b", "{a}", "a*", "ü", "a\n"])
def test_invalid_prefix_is_a_mapping_error(prefix):
    with pytest.raises(MappingError, match="Thing") as info:
        Registry().mapped(prefix=prefix)(klass())
    assert isinstance(info.value, TypeError)


def test_valid_prefix_characters_and_default_prefix_is_checked_too():
    reg = Registry()
    assert reg.map(klass("Ok"), prefix="A.b-c_9").layout.entity("1") == b"{A.b-c_9}:1"
    with pytest.raises(MappingError, match="Ünï"):
        reg.map(klass("Ünï"))  # the default prefix "ünï" is not [A-Za-z0-9_.-]+


@pytest.mark.parametrize("name", ["a:b", "#v", "#e", "a b", "{x}", "é"])
def test_invalid_hash_field_name_is_a_mapping_error(name):
    with pytest.raises(MappingError, match=r"Thing\.title"):
        Registry().map(klass(title=String(field=name, type=str)))


def test_two_attributes_in_one_hash_field_is_a_mapping_error():
    cls = klass(a=String(field="x", type=str), b=String(field="x", type=str))
    with pytest.raises(MappingError, match=r"Thing\.b.*'x'"):
        Registry().map(cls)


def test_duplicate_prefix_and_mapping_twice():
    reg = Registry()
    first, second = reg.mapped(prefix="p")(klass("First")), klass("Second")
    with pytest.raises(MappingError, match="First"):
        reg.mapped(prefix="p")(second)
    assert Registry().map(second, prefix="p").prefix == "p"  # another registry, another namespace
    for registry in (reg, Registry()):
        with pytest.raises(MappingError, match="already mapped"):
            registry.map(first, prefix="other")


def test_non_attrs_classes_are_refused():
    class Plain:
        id = None

    @dataclasses.dataclass
    class Data:
        id: str | None = None

    for cls in (Plain, Data):
        with pytest.raises(MappingError, match=cls.__name__):
            Registry().map(cls)
    with pytest.raises(MappingError, match="Plain is not mapped"):
        redisca.inspect(Plain)


def test_missing_id_attribute_is_a_mapping_error():
    no_id = attrs.make_class("NoId", {"name": attrs.field(type=str, default="")})
    with pytest.raises(MappingError, match=r"NoId.*'id'"):
        Registry().map(no_id)
    with pytest.raises(MappingError, match=r"NoId.*'pk'"):
        Registry().map(no_id, id="pk")


class Unmapped:
    pass


@attrs.define
class UnmappedAttrs:
    id: str | None = None


@pytest.mark.parametrize(
    "annotation",
    [
        list[int],
        dict,
        object,
        int | str,
        Unmapped,
        UnmappedAttrs,
        UnmappedAttrs | None,
        typing.Any,
        int | str | None,
        tuple,
        None,
    ],
    ids=repr,
)
def test_unmappable_annotation_names_class_and_attribute(annotation):
    cls = klass("Odd", stuff=attrs.field(type=annotation, default=None))
    with pytest.raises(MappingError, match=r"Odd\.stuff"):
        Registry().map(cls)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mood(enum.StrEnum):
    HAPPY = "happy"


NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ID = lambda x: getattr(x, "__name__", "")  # noqa: E731
INFERRED = [
    (str, "text", codecs.StrCodec),
    (int, 42, codecs.IntCodec),
    (float, 1.5, codecs.FloatCodec),
    (bool, True, codecs.BoolCodec),
    (datetime, NOW, codecs.DateTimeCodec),
    (date, date(2024, 5, 6), codecs.DateCodec),
    (Decimal, Decimal("1.10"), codecs.DecimalCodec),
    (uuid.UUID, uuid.UUID(int=7), codecs.UUIDCodec),
    (bytes, b"\xff\x00", codecs.BytesCodec),
    (Color, Color.RED, codecs.EnumCodec),
    (Level, Level.HIGH, codecs.EnumCodec),
    (Mood, Mood.HAPPY, codecs.EnumCodec),
]


def _single(annotation, **field_kwargs):
    cls = klass("Single", value=attrs.field(type=annotation, **field_kwargs))
    return cls, Registry().map(cls).by_name["value"]


@pytest.mark.parametrize(("tp", "value", "codec"), INFERRED, ids=ID)
def test_inference_from_plain_annotation(tp, value, codec):
    cls, field = _single(tp)
    assert type(field.codec) is codec and not field.nullable and not field.indexed
    assert field.hash_field == b"value"
    obj = cls(value=value, id="1")
    assert obj.value == value
    assert field.decode(field.encode(obj.value)) == value
    with pytest.raises(ValidationError, match=r"Single\.value.*None") as info:
        obj.value = None
    assert info.value.field == "value" and obj.value == value
    with pytest.raises(ValidationError):
        cls(value=object(), id="1")


@pytest.mark.parametrize("wrap", ["pipe", "optional", "reversed"])
@pytest.mark.parametrize(("tp", "value", "codec"), INFERRED, ids=ID)
def test_inference_from_optional_annotation(tp, value, codec, wrap):
    annotation = {
        "pipe": tp | None,
        "optional": typing.Optional[tp],  # noqa: UP045 - the spelling under test
        "reversed": None | tp,
    }[wrap]
    cls, field = _single(annotation, default=None)
    assert type(field.codec) is codec and field.nullable
    obj = cls(id="1")
    assert obj.value is None
    obj.value = value
    assert obj.value == value
    obj.value = None
    assert obj.value is None


def test_none_default_makes_a_helper_field_nullable():
    @attrs.define
    class Thing:
        size: int | None = Integer()
        label: str = String(default=None)
        id: str | None = None

    mapper = Registry().map(Thing)
    assert mapper.by_name["label"].nullable and mapper.by_name["size"].nullable
    assert Thing(size=None).label is None


def test_annotation_of_another_mapped_class_is_a_reference():
    reg = Registry()

    @reg.mapped(prefix="co")
    @attrs.define
    class Company:
        name: str = ""
        id: str | None = None

    @reg.mapped(prefix="usr")
    @attrs.define
    class Person:
        employer: Company | None = None
        boss_company: Company = attrs.field(factory=Company)
        id: str | None = None

    employer = redisca.inspect(Person).by_name["employer"]
    assert employer.is_reference and employer.nullable and not employer.indexed
    assert employer.target_mapper() is redisca.inspect(Company)
    assert not redisca.inspect(Person).by_name["boss_company"].nullable
    acme = Company("Acme", id="c1")
    person = Person(employer=acme)
    assert person.employer is acme
    assert employer.encode(acme) == b"c1"
    with pytest.raises(ValidationError, match=r"Person\.employer") as info:
        person.employer = "c1"  # ids are not entities
    assert info.value.field == "employer"
    with pytest.raises(ValidationError, match=r"Person\.boss_company.*None"):
        person.boss_company = None


def test_reference_by_name_allows_self_reference_and_cycles():
    reg = Registry()

    @reg.mapped
    @attrs.define
    class Node:
        parent: typing.Any = Reference("Node", default=None)
        peer: typing.Any = Reference("Peer", index=True, default=None)
        id: str | None = None

    @reg.mapped
    @attrs.define
    class Peer:
        node: Node | None = None
        id: str | None = None

    fields = redisca.inspect(Node).by_name
    assert fields["parent"].target_mapper() is redisca.inspect(Node)
    assert fields["peer"].target_mapper() is redisca.inspect(Peer)
    assert fields["peer"].index == "eq"
    root = Node(id="root")
    child = Node(parent=root, peer=Peer(node=root, id="p"), id="child")
    assert child.parent is root and child.peer.node is root
    with pytest.raises(ValidationError, match=r"Node\.peer"):
        child.peer = root


def test_an_annotation_of_the_class_itself_is_a_self_reference():
    reg = Registry()

    @reg.mapped
    @attrs.define
    class Folder:
        name: str = ""
        parent: "Folder | None" = None  # the class names itself (quoted: not defined yet)
        id: str | None = None

    parent = redisca.inspect(Folder).by_name["parent"]
    assert parent.is_reference and parent.target_mapper() is redisca.inspect(Folder)
    root = Folder("root", id="r")
    assert Folder("docs", parent=root).parent is root
    with pytest.raises(ValidationError, match=r"Folder\.parent"):
        Folder("x", parent="r")  # type: ignore[arg-type]


FUTURE_SOURCE = """
from __future__ import annotations

import enum
import typing
from datetime import date, datetime
from decimal import Decimal
from typing import Optional

import attrs

from redisca import Registry, Email

registry = Registry()


class Shade(enum.Enum):
    DARK = 1
    LIGHT = 2


@registry.mapped(prefix="own")
@attrs.define
class Owner:
    name: str
    email: str = Email(unique=True, default="a@b.c")
    id: str | None = None


@registry.mapped(prefix="pet")
@attrs.define(slots=False)
class Pet:
    name: str
    born: date | None = None
    seen: Optional[datetime] = None
    weight: Optional[Decimal] = None
    shade: Shade = Shade.DARK
    legs: "int" = 4
    owner: Owner | None = None
    best_friend: typing.Optional[Owner] = None
    id: str | None = None
"""


@pytest.fixture
def future_module():
    """A small module of its own, with ``from __future__ import annotations``."""
    module = types.ModuleType("redisca_test_future_models")
    sys.modules[module.__name__] = module
    try:
        exec(compile(FUTURE_SOURCE, "<future models>", "exec"), module.__dict__)
        yield module
    finally:
        del sys.modules[module.__name__]


def test_string_annotations_are_resolved(future_module):
    m = future_module
    assert isinstance(attrs.fields(m.Pet).born.type, str)  # really string annotations
    fields = redisca.inspect(m.Pet).by_name
    expected = {
        "name": (codecs.StrCodec, False),
        "born": (codecs.DateCodec, True),
        "seen": (codecs.DateTimeCodec, True),
        "weight": (codecs.DecimalCodec, True),
        "shade": (codecs.EnumCodec, False),
        "legs": (codecs.IntCodec, False),
    }
    for name, (codec, nullable) in expected.items():
        assert (type(fields[name].codec), fields[name].nullable) == (codec, nullable), name
    assert fields["shade"].codec.enum_cls is m.Shade
    for name in ("owner", "best_friend"):
        assert fields[name].is_reference and fields[name].nullable
        assert fields[name].target_mapper() is redisca.inspect(m.Owner)
    assert redisca.inspect(m.Owner).by_name["email"].unique
    pet = m.Pet("Rex", born=date(2020, 1, 2), owner=m.Owner("Ann"))
    assert pet.owner.name == "Ann" and pet.legs == 4
    with pytest.raises(ValidationError, match=r"Pet\.legs"):
        pet.legs = "four"


def test_unresolvable_string_annotation_names_class_and_attribute():
    @attrs.define
    class Broken:
        thing: "NoSuchType | None" = None  # noqa: F821 - unresolvable on purpose
        id: str | None = None

    with pytest.raises(MappingError, match=r"Broken\.thing"):
        Registry().map(Broken)


def test_string_annotation_naming_a_class_of_the_registry():
    reg = Registry()

    @reg.mapped
    @attrs.define
    class Target:
        id: str | None = None

    @attrs.define
    class Source:
        target: "Target | None" = None
        id: str | None = None

    field = reg.map(Source).by_name["target"]
    assert field.is_reference and field.target_mapper().class_ is Target


def test_imperative_map_of_a_class_you_do_not_own():
    @attrs.define
    class ThirdParty:  # imagine it comes from a library: no redisca helper in sight
        email: str
        age: int = 0
        nickname: str | None = None
        id: str | None = None

    reg = Registry()
    mapper = reg.map(
        ThirdParty,
        prefix="ext",
        fields={"email": Email(field="eml", unique=True), "age": Integer(minval=0, index=True)},
    )
    assert mapper is redisca.inspect(ThirdParty) and mapper.prefix == "ext"
    email, age = mapper.by_name["email"], mapper.by_name["age"]
    assert type(email.codec) is codecs.EmailCodec and email.unique and email.hash_field == b"eml"
    assert age.index == "range" and type(mapper.by_name["nickname"].codec) is codecs.StrCodec
    obj = ThirdParty("ann@example.com", id=3)
    assert (obj.age, obj.id) == (0, "3")
    with pytest.raises(ValidationError, match=r"ThirdParty\.email"):
        ThirdParty("not an address")
    with pytest.raises(ValidationError, match=r"ThirdParty\.age"):
        obj.age = -1
    assert isinstance(ThirdParty.age >= 1, Condition)


def test_imperative_map_rejects_unknown_names_and_non_helpers():
    @attrs.define
    class ThirdParty:
        email: str = ""
        id: str | None = None

    with pytest.raises(MappingError, match="nope"):
        Registry().map(ThirdParty, fields={"nope": Email()})
    with pytest.raises(MappingError, match=r"ThirdParty\.email"):
        Registry().map(ThirdParty, fields={"email": attrs.field()})
    assert "__redisca_mapper__" not in ThirdParty.__dict__  # failed mappings leave no trace

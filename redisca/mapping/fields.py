"""Declarative field helpers.

Each helper returns an ordinary ``attrs.field(...)`` whose metadata carries a
:class:`FieldSpec` under the ``"redisca"`` key, so the class stays a plain attrs
class: ``__init__``, ``repr``, ``eq`` and user validators are attrs' own. The
mapper reads the spec when the class is mapped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

from ..errors import MappingError, ValidationError
from .codecs import (
    BoolCodec,
    Codec,
    DateCodec,
    DateTimeCodec,
    EmailCodec,
    FloatCodec,
    IntCodec,
    StrCodec,
    codec_for,
)

#: The key under ``attrs.field(metadata=...)`` where redisca keeps a field's spec.
METADATA_KEY = "redisca"

Check = Callable[[Any], None]


@attrs.frozen
class FieldSpec:
    """What a helper says about one attribute.

    ``reference`` set: a Reference. ``codec`` and ``reference`` both ``None``: the codec
    (or target) comes from the annotation.
    """

    codec: Codec | None = None
    field: str | None = None
    index: bool = False
    unique: bool = False
    checks: tuple[Check, ...] = ()
    reference: type | str | None = None
    #: ``"set"`` or ``"list"`` for a collection field (``Set``, ``List``, ``References``):
    #: ``codec`` (or ``reference``) is then its elements'.
    collection: str | None = None
    #: A reference's action when its target is deleted (see :data:`ON_DELETE`).
    on_delete: str | None = None


#: The ``on_delete=`` values of a reference; ``None`` is no action.
ON_DELETE = ("restrict", "cascade", "set_null")


def spec(
    codec: Codec | None,
    field: str | None,
    index: bool,
    unique: bool,
    checks: tuple[Check, ...] = (),
    reference: type | str | None = None,
) -> FieldSpec:
    """A helper's spec; ``unique`` implies an index."""
    return FieldSpec(codec, field, index or unique, unique, checks, reference)


def spec_of(attribute: Any) -> FieldSpec | None:
    """The spec of an ``attrs.Attribute`` (or of a helper's return value)."""
    metadata = getattr(attribute, "metadata", None)
    if metadata is None:
        return None
    spec = metadata.get(METADATA_KEY)
    return spec if isinstance(spec, FieldSpec) else None


def _default(default: Any, new: Any) -> Any:
    if new is not attrs.NOTHING:
        if default is not attrs.NOTHING:
            raise TypeError("give default= or new= (its redisca 1.x name), not both")
        default = new
    if callable(default) and not isinstance(default, type):
        return attrs.Factory(default)
    return default


def make_field(
    field_spec: FieldSpec,
    *,
    default: Any = attrs.NOTHING,
    new: Any = attrs.NOTHING,
    **field_kwargs: Any,
) -> Any:
    """Wrap a spec in ``attrs.field``; extra keyword arguments go to attrs."""
    metadata = dict(field_kwargs.pop("metadata", None) or {})
    metadata[METADATA_KEY] = field_spec
    return attrs.field(default=_default(default, new), metadata=metadata, **field_kwargs)


def _bounds_check(what: str, low: Any, high: Any, measure: Callable[[Any], Any]) -> Check:
    def check(value: Any) -> None:
        size = measure(value)
        if size != size:  # NaN: no comparison holds, so no bound would refuse it
            raise ValidationError(f"{what} NaN lies outside any bounds", value=value)
        if low is not None and size < low:
            raise ValidationError(f"{what} {size!r} is below the minimum {low!r}", value=value)
        if high is not None and size > high:
            raise ValidationError(f"{what} {size!r} is above the maximum {high!r}", value=value)

    return check


def _checks(what: str, low: Any, high: Any, measure: Callable[[Any], Any]) -> tuple[Check, ...]:
    if low is None and high is None:
        return ()
    return (_bounds_check(what, low, high, measure),)


def _identity(value: Any) -> Any:
    return value


def Field(
    *, field: str | None = None, index: bool = False, unique: bool = False, **kwargs: Any
) -> Any:
    """Any storable type, taken from the annotation (``tier: Tier = Field(index=True)``).

    For options on attributes that have no dedicated helper: Enum, Decimal, UUID, bytes,
    or a type with a registered codec. The index kind follows the type (range for numbers
    and dates, equality otherwise).
    """
    return make_field(spec(None, field, index, unique), **kwargs)


def String(
    *,
    minlen: int | None = None,
    maxlen: int | None = None,
    field: str | None = None,
    index: bool = False,
    unique: bool = False,
    **kwargs: Any,
) -> Any:
    """A text attribute; ``minlen``/``maxlen`` count characters."""
    checks = _checks("length", minlen, maxlen, len)
    return make_field(spec(StrCodec(), field, index, unique, checks), **kwargs)


_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")


def _check_email(value: str) -> None:
    if not _EMAIL_RE.fullmatch(value):
        raise ValidationError(f"{value!r} is not an email address", value=value)


def Email(
    *, field: str | None = None, index: bool = False, unique: bool = False, **kwargs: Any
) -> Any:
    """An email address, stored as given; its index and uniqueness ignore case."""
    return make_field(spec(EmailCodec(), field, index, unique, (_check_email,)), **kwargs)


def Integer(
    *,
    minval: int | None = None,
    maxval: int | None = None,
    field: str | None = None,
    index: bool = False,
    unique: bool = False,
    **kwargs: Any,
) -> Any:
    """An int; indexed ints get a range index (a sorted set)."""
    checks = _checks("value", minval, maxval, _identity)
    return make_field(spec(IntCodec(), field, index, unique, checks), **kwargs)


def Float(
    *,
    minval: float | None = None,
    maxval: float | None = None,
    field: str | None = None,
    index: bool = False,
    unique: bool = False,
    **kwargs: Any,
) -> Any:
    """A float (ints are accepted and stored as floats); range-indexed when indexed."""
    checks = _checks("value", minval, maxval, _identity)
    return make_field(spec(FloatCodec(), field, index, unique, checks), **kwargs)


def Boolean(
    *, field: str | None = None, index: bool = False, unique: bool = False, **kwargs: Any
) -> Any:
    """A bool, stored as ``1``/``0``."""
    return make_field(spec(BoolCodec(), field, index, unique), **kwargs)


def DateTime(
    *, field: str | None = None, index: bool = False, unique: bool = False, **kwargs: Any
) -> Any:
    """An aware UTC datetime stored as whole seconds; naive values are taken as UTC."""
    return make_field(spec(DateTimeCodec(), field, index, unique), **kwargs)


def Date(
    *, field: str | None = None, index: bool = False, unique: bool = False, **kwargs: Any
) -> Any:
    """A calendar date, stored as ISO text; range-indexed by its ordinal."""
    return make_field(spec(DateCodec(), field, index, unique), **kwargs)


def Reference(
    target: type | str,
    *,
    field: str | None = None,
    index: bool = False,
    unique: bool = False,
    on_delete: str | None = None,
    **kwargs: Any,
) -> Any:
    """Another mapped entity, stored as its id; ``target`` may be a class name.

    ``on_delete`` says what a commit deleting the target does with the referrers:
    ``"restrict"`` refuses, ``"cascade"`` deletes them, ``"set_null"`` clears the field,
    ``None`` (default) nothing. Any value but ``None`` needs ``index=True``: the commit
    finds the referrers through that index.
    """
    _check_on_delete("Reference", on_delete)
    made = spec(None, field, index, unique, (), target)
    return make_field(attrs.evolve(made, on_delete=on_delete), **kwargs)


def _check_on_delete(helper: str, on_delete: str | None) -> None:
    if on_delete is not None and on_delete not in ON_DELETE:
        raise MappingError(
            f"{helper}(on_delete={on_delete!r}): expected one of {ON_DELETE} or None"
        )


def _collection(
    kind: str,
    element: Any,
    field: str | None,
    index: bool,
    kwargs: dict[str, Any],
    on_delete: str | None = None,
) -> Any:
    if kind == "list" and index:
        raise TypeError("index=True is for Set and References, not List")
    if "on_delete" in kwargs:  # Set and List hold values, not entities
        raise TypeError("on_delete= is for Reference and References, which hold entities")
    if isinstance(element, Codec):
        codec, target = element, None
    elif kind == "refs":
        codec, target = None, element
    else:
        codec = codec_for(element)
        if codec is None:
            raise TypeError(f"no codec stores {element!r}: register one, or use References")
        target = None
    factory = list if kind == "list" else set
    if "default" in kwargs or "new" in kwargs:
        raise TypeError("a collection's default is always an empty one")
    field_spec = FieldSpec(
        codec, field, index, False, (), target, "list" if kind == "list" else "set", on_delete
    )
    return make_field(field_spec, default=attrs.Factory(factory), **kwargs)


def Set(element: Any, *, field: str | None = None, index: bool = False, **kwargs: Any) -> Any:
    """A set of scalars (``tags: set[str] = Set(str, index=True)``), stored in its own Redis
    set beside the entity. Never ``None``: it starts empty, and assigning ``None`` raises
    ``ValidationError``. ``index=True`` keeps an equality index per member, so
    ``filter(Post.tags.contains("redis"))`` is one query."""
    return _collection("set", element, field, index, kwargs)


def List(element: Any, *, field: str | None = None, **kwargs: Any) -> Any:
    """A list of scalars (``scores: list[int] = List(int)``), stored in its own Redis list
    beside the entity. Never ``None``: it starts empty; assigning ``None`` raises."""
    return _collection("list", element, field, False, kwargs)


def References(
    target: type | str,
    *,
    field: str | None = None,
    index: bool = False,
    on_delete: str | None = None,
    **kwargs: Any,
) -> Any:
    """A set of other entities (many-to-many: ``tags: set[Tag] = References(Tag)``), stored
    as their ids in a Redis set beside the entity; ``index=True`` keeps the reverse index
    ("posts of tag t": ``filter(Post.tags.contains(t))``).

    ``on_delete`` as for :func:`Reference`, per member: deleting a tag is refused while a
    post holds it (``"restrict"``), deletes the posts holding it (``"cascade"``), or
    removes it from their sets (``"set_null"``). It needs ``index=True``: the reverse
    index is where the commit finds the holders."""
    _check_on_delete("References", on_delete)
    return _collection("refs", target, field, index, kwargs, on_delete)


__all__ = [
    "METADATA_KEY",
    "Boolean",
    "Date",
    "DateTime",
    "Email",
    "Field",
    "FieldSpec",
    "Float",
    "Integer",
    "List",
    "Reference",
    "References",
    "Set",
    "String",
    "make_field",
    "spec",
    "spec_of",
]

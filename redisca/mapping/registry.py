"""The registry: maps attrs classes, declaratively or imperatively.

``@registry.mapped`` reads each attribute's :class:`~redisca.mapping.fields.FieldSpec`
(from a field helper) or infers one from the annotation, then builds a
:class:`~redisca.mapping.mapper.Mapper` and instruments the class.
"""

from __future__ import annotations

import sys
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, TypeVar, overload

import attrs

from ..errors import MappingError
from .codecs import codec_for, unwrap_optional
from .fields import FieldSpec, spec_of
from .keys import check_name, check_shards
from .mapper import MappedField, Mapper
from .ttl import ttl_ms

T = TypeVar("T", bound=type)


class Registry:
    """A namespace of mapped classes: prefixes are unique within it."""

    def __init__(self) -> None:
        self._mappers: dict[type, Mapper] = {}
        self._by_prefix: dict[str, Mapper] = {}
        #: Classes defined and mapped again (see :func:`_redefines`): old class -> new.
        self._replaced: dict[type, type] = {}

    def __iter__(self) -> Iterator[Mapper]:
        return iter(list(self._mappers.values()))

    def __len__(self) -> int:
        return len(self._mappers)

    @overload
    def mapped(self, cls: T, /) -> T: ...

    @overload
    def mapped(
        self,
        *,
        prefix: str | None = None,
        id: str = "id",
        versioned: bool = False,
        slot_group: str | None = None,
        shards: int = 1,
        ttl: float | timedelta | None = None,
        expiring: bool | None = None,
        scored_indexes: bool = False,
    ) -> Callable[[T], T]: ...

    def mapped(  # type: ignore[misc]
        self,
        cls: T | None = None,
        /,
        *,
        prefix: str | None = None,
        id: str = "id",
        versioned: bool = False,
        slot_group: str | None = None,
        shards: int = 1,
        ttl: float | timedelta | None = None,
        expiring: bool | None = None,
        scored_indexes: bool = False,
    ) -> T | Callable[[T], T]:
        """Class decorator (use it above ``@attrs.define``); returns the class unchanged.

        ``slot_group``: models of one group keep their keys in one Redis Cluster hash
        slot, so one commit writes them in one ``MULTI``/``EXEC`` on a cluster too.
        ``shards``: spread the model's entities (and their index entries) over this many
        hash slots, so its data and writes grow with a cluster (see the Key layout page).
        ``ttl``: new entities expire this long (seconds, or a timedelta) after the commit
        that adds them. ``expiring``: whether entities of the model may expire at all
        (default: whether a ``ttl`` is given); ``session.expire`` works on such models
        only, since their reads are the ones that consult the expiry instants.
        ``scored_indexes``: an expiring model's equality indexes become sorted sets
        scored by each entity's instant, so a value's live entities are counted in
        O(log N) however many expired ones wait for a sweep, at some memory per entry
        (default: sets, whose expired members a query finds in ``H#exp``; see the
        Expiry page)."""

        def decorate(klass: T) -> T:
            self.map(
                klass,
                prefix=prefix,
                id=id,
                versioned=versioned,
                slot_group=slot_group,
                shards=shards,
                ttl=ttl,
                expiring=expiring,
                scored_indexes=scored_indexes,
            )
            return klass

        return decorate(cls) if cls is not None else decorate

    def map(
        self,
        cls: type,
        *,
        prefix: str | None = None,
        id: str = "id",
        versioned: bool = False,
        fields: Mapping[str, Any] | None = None,
        slot_group: str | None = None,
        shards: int = 1,
        ttl: float | timedelta | None = None,
        expiring: bool | None = None,
        scored_indexes: bool = False,
    ) -> Mapper:
        """Map a class imperatively; ``fields`` gives helpers for attributes you can't edit."""
        name = cls.__name__
        if not attrs.has(cls):
            raise MappingError(f"{name} is not an attrs class: decorate it with @attrs.define")
        if "__redisca_mapper__" in cls.__dict__:
            raise MappingError(f"{name} is already mapped")
        prefix = check_name("prefix", prefix if prefix is not None else name.lower(), name)
        earlier = self._by_prefix.get(prefix)
        if earlier is not None and not _redefines(cls, earlier.class_):
            other = earlier.class_.__name__
            raise MappingError(f"{name}: prefix {prefix!r} is already used by {other}")
        if slot_group is not None:
            check_name("slot_group", slot_group, name)
        check_shards(shards, name)
        if slot_group is not None and shards > 1:
            raise MappingError(
                f"{name}: a model of a slot group shares the group's one slot, so it "
                f"cannot have shards={shards}"
            )
        ttl_ms, expiring = _expiry_options(name, ttl, expiring, scored_indexes)
        mapper = Mapper(self, cls, prefix, id, versioned, slot_group, shards)
        mapper.ttl_ms, mapper.expiring = ttl_ms, expiring
        mapper.scored_indexes = scored_indexes
        mapper.set_fields(self._build_fields(mapper, dict(fields or {})))
        mapper.instrument()
        if earlier is not None:
            self._replace(earlier, mapper)
        self._mappers[cls] = mapper
        self._by_prefix[prefix] = mapper
        return mapper

    def _replace(self, earlier: Mapper, mapper: Mapper) -> None:
        """Forget the mapper of a class defined again (see :func:`_redefines`), with a
        warning: references to it now resolve to the new class (by name, and by the old
        class object)."""
        where = f"{mapper.class_.__module__}.{mapper.class_.__qualname__}"
        warnings.warn(
            f"redisca: {where} is mapped again with prefix {mapper.prefix!r}; the new "
            "class replaces the earlier one in this registry",
            stacklevel=4,  # the user's @registry.mapped line
        )
        del self._mappers[earlier.class_]
        del self._by_prefix[earlier.prefix]
        self._replaced[earlier.class_] = mapper.class_
        for other in self._mappers.values():
            other.forget_target(earlier)

    def resolve(self, target: type | str) -> Mapper:
        """The mapper of a class, or of a class named ``target`` in this registry."""
        if isinstance(target, str):
            for mapper in self._mappers.values():
                if target in (mapper.class_.__name__, mapper.class_.__qualname__):
                    return mapper
            raise MappingError(f"no class named {target!r} is mapped in this registry")
        while target in self._replaced:  # a class defined again: its latest version
            target = self._replaced[target]
        try:
            return self._mappers[target]
        except KeyError:
            raise MappingError(f"{target.__name__} is not mapped in this registry") from None

    def incoming(self, target: Mapper) -> list[MappedField]:
        """The reference fields, of every mapped class, that point at ``target``'s class
        with an ``on_delete`` action: what a commit deleting a ``target`` entity must read
        (and WATCH) to enforce it. Resolved now, since targets may be mapped late."""
        found = []
        for mapper in self._mappers.values():
            for field in (*mapper.references, *mapper.collections):
                if (
                    field.on_delete is not None
                    and field.is_reference
                    and field.target_mapper() is target
                ):
                    found.append(field)
        return found

    def _build_fields(self, mapper: Mapper, overrides: dict[str, Any]) -> list[MappedField]:
        cls = mapper.class_
        attributes = attrs.fields(cls)
        names = {a.name for a in attributes}
        if mapper.id_attr not in names:
            raise MappingError(f"{cls.__name__} has no attribute {mapper.id_attr!r} for its id")
        unknown = set(overrides) - names
        if unknown:
            raise MappingError(f"{cls.__name__} has no attributes {sorted(unknown)}")
        fields: list[MappedField] = []
        hash_fields: dict[str, str] = {}
        for attribute in attributes:
            if attribute.name == mapper.id_attr:
                continue
            field = self._build_field(mapper, attribute, overrides.get(attribute.name))
            stored = field.hash_field.decode()
            if stored in hash_fields:
                raise MappingError(
                    f"{cls.__name__}.{attribute.name}: hash field {stored!r} is already "
                    f"used by {hash_fields[stored]}"
                )
            hash_fields[stored] = attribute.name
            fields.append(field)
        return fields

    def _build_field(self, mapper: Mapper, attribute: Any, override: Any) -> MappedField:
        cls, name = mapper.class_, attribute.name
        spec = spec_of(override) if override is not None else spec_of(attribute)
        if override is not None and spec is None:
            raise MappingError(f"{cls.__name__}.{name}: fields= takes redisca field helpers")
        annotation = _annotation(cls, attribute, self)
        if isinstance(annotation, str):
            inner, optional = None, "None" in annotation
        else:
            inner, optional = unwrap_optional(annotation)
        kind = _collection_kind(inner)
        if kind is not None or (spec is not None and spec.collection is not None):
            return self._build_collection(mapper, attribute, spec, annotation, inner, kind)
        if spec is None:
            spec = self._infer(cls, name, annotation, inner)
        elif not _agrees(spec, inner):
            raise MappingError(
                f"{cls.__name__}.{name}: the annotation {annotation!r} and the field helper "
                f"disagree: it holds {_holds(spec)} values; annotate it with that type"
            )
        elif spec.codec is None and spec.reference is None:
            # A generic Field(): its options, with codec or target from the annotation.
            inferred = self._infer(cls, name, annotation, inner)
            spec = attrs.evolve(spec, codec=inferred.codec, reference=inferred.reference)
        hash_field = check_name("field name", spec.field or name, f"{cls.__name__}.{name}")
        if spec.on_delete is not None and not spec.index:
            # The commit finds a target's referrers through the field's equality index.
            raise MappingError(
                f"{cls.__name__}.{name}: on_delete={spec.on_delete!r} needs index=True "
                "(the commit finds the referrers through the index)"
            )
        if spec.on_delete is not None and spec.unique:
            # A unique reference keeps a unique stripe, not the equality set the commit
            # reads (and WATCHes) to find the referrers.
            raise MappingError(
                f"{cls.__name__}.{name}: on_delete={spec.on_delete!r} is not supported on a "
                "unique reference; use index=True"
            )
        return MappedField(
            mapper,
            name,
            hash_field,
            spec.codec,
            nullable=optional or attribute.default is None,
            index=spec.index,
            unique=spec.unique,
            checks=spec.checks,
            target=spec.reference,
            on_delete=spec.on_delete,
        )

    def _build_collection(
        self,
        mapper: Mapper,
        attribute: Any,
        spec: FieldSpec | None,
        annotation: Any,
        inner: Any,
        kind: str | None,
    ) -> MappedField:
        """A ``Set``, ``List`` or ``References`` field, from its helper or inferred from a
        ``set[T]`` / ``list[T]`` annotation (``set[Model]``: references)."""
        cls, name = mapper.class_, attribute.name
        optional = not isinstance(annotation, str) and inner is not annotation
        if attribute.default is None or optional:
            raise MappingError(
                f"{cls.__name__}.{name}: a collection is never None (empty instead): drop "
                "the None default or the Optional, e.g. tags: set[str] = attrs.Factory(set)"
            )
        element = typing.get_args(inner)[0] if kind is not None and typing.get_args(inner) else None
        if spec is None or (spec.codec is None and spec.reference is None):
            if element is None:
                raise MappingError(
                    f"{cls.__name__}.{name}: cannot map annotation {annotation!r}; "
                    "name the element type (set[str], list[int], set[Tag])"
                )
            inferred = self._infer(cls, name, annotation, element)
            index = spec.index if spec is not None else False
            stored = spec.field if spec is not None else None
            spec = FieldSpec(inferred.codec, stored, index, False, (), inferred.reference, kind)
        if spec.collection is None:
            if spec.codec is not None or spec.reference is not None:
                helper = "References" if spec.reference is not None else kind.title()  # type: ignore[union-attr]
                raise MappingError(
                    f"{cls.__name__}.{name}: the annotation {annotation!r} and the field helper "
                    f"disagree: the annotation is a collection, the helper holds one value "
                    f"(use {helper}(...))"
                )
            spec = attrs.evolve(spec, collection=kind)
        if kind is not None and kind != spec.collection:
            raise MappingError(
                f"{cls.__name__}.{name}: the annotation {annotation!r} and the field helper "
                f"disagree: it holds a {spec.collection}"
            )
        if spec.collection == "list" and spec.codec is None:
            raise MappingError(f"{cls.__name__}.{name}: a list of entities is not supported")
        if element is not None and not _agrees(spec, element):
            raise MappingError(
                f"{cls.__name__}.{name}: the annotation {annotation!r} and the field helper "
                f"disagree: it holds {_holds(spec)} values"
            )
        if spec.unique:
            raise MappingError(f"{cls.__name__}.{name}: a collection cannot be unique")
        if spec.on_delete is not None and not spec.index:
            raise MappingError(
                f"{cls.__name__}.{name}: on_delete={spec.on_delete!r} needs index=True "
                "(the commit finds the entities holding a target through the index)"
            )
        hash_field = check_name("field name", spec.field or name, f"{cls.__name__}.{name}")
        mapped = MappedField(
            mapper,
            name,
            hash_field,
            spec.codec,
            nullable=False,
            index=spec.index,
            unique=False,
            target=spec.reference,
            collection=spec.collection,
            on_delete=spec.on_delete,
        )
        if mapped.index is not None:
            mapped.index = "eq"  # one set of ids per member value, whatever the codec
            mapped.indexed = True
        return mapped

    def _infer(self, cls: type, name: str, annotation: Any, inner: Any) -> FieldSpec:
        if annotation is None or isinstance(annotation, str):
            raise MappingError(
                f"{cls.__name__}.{name}: cannot map annotation {annotation!r}; "
                "annotate it with a type or use a field helper"
            )
        codec = codec_for(inner)
        if codec is not None:
            return FieldSpec(codec)
        if isinstance(inner, type) and (
            inner in self._mappers or inner in self._replaced or inner is cls
        ):
            return FieldSpec(reference=inner)  # another mapped class, or this one
        raise MappingError(
            f"{cls.__name__}.{name}: cannot map annotation {annotation!r}; "
            "use a field helper or register a codec"
        )


def _collection_kind(annotation: Any) -> str | None:
    """``"set"`` for ``set[T]`` (or ``frozenset[T]``, ``set``), ``"list"`` for ``list[T]``."""
    origin = typing.get_origin(annotation) or annotation
    if origin in (set, frozenset):
        return "set"
    if origin is list:
        return "list"
    return None


def _redefines(cls: type, old: type) -> bool:
    """Whether ``cls`` is ``old`` defined again: a REPL, a notebook cell or a reloaded
    module runs the class statement anew, and the new class, of the same module and
    qualified name, asks for the prefix the old one holds. It takes the old one's place.
    (Under another prefix it is one more model, as any class is.)"""
    return cls.__qualname__ == old.__qualname__ and cls.__module__ == old.__module__


#: Annotations a value of a type satisfies besides its own classes: PEP 484's numeric tower.
_PROMOTIONS: dict[type, tuple[type, ...]] = {int: (float, complex), float: (complex,)}


def _holds(spec: FieldSpec) -> str:
    if spec.codec is not None:
        return spec.codec.types[0].__name__
    target = spec.reference
    return target if isinstance(target, str) else getattr(target, "__name__", repr(target))


def _agrees(spec: FieldSpec, annotation: Any) -> bool:
    """Whether what a helper stores can be what the annotation (``X | None`` unwrapped)
    says; ``when: datetime = Integer()`` cannot. Only what can be judged is refused: an
    annotation left as a string, a typing construct, a codec without ``types``."""
    if spec.codec is not None:
        held = spec.codec.types[:1]  # the first is the type its values have
    elif isinstance(spec.reference, type):
        held = (spec.reference,)
    else:
        return True  # a target named by a string, or Field(): taken from the annotation
    if not held or annotation is None or annotation is typing.Any or annotation is object:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_agrees(spec, member) for member in typing.get_args(annotation))
    annotation = typing.get_origin(annotation) or annotation  # list[str] -> list
    if not isinstance(annotation, type):
        return True  # a TypeVar, NewType, Literal, ...: not judged
    value_type = held[0]
    return issubclass(value_type, annotation) or annotation in _PROMOTIONS.get(value_type, ())


def _annotation(cls: type, attribute: Any, registry: Registry) -> Any:
    """The attribute's type, resolving string annotations where possible."""
    tp = attribute.type
    if not isinstance(tp, str):
        return tp
    namespace: dict[str, Any] = {m.class_.__name__: m.class_ for m in registry}
    module = sys.modules.get(cls.__module__)
    if module is not None:
        namespace.update(vars(module))
    namespace[cls.__name__] = cls
    try:
        # Annotations are code of the mapped class's own module; a quoted annotation under
        # ``from __future__ import annotations`` is a string of a string: evaluate it again.
        value: Any = tp
        for _ in range(3):
            value = eval(value, namespace)
            if not isinstance(value, str):
                break
        return value
    except Exception:
        try:
            return typing.get_type_hints(cls).get(attribute.name, tp)
        except Exception:
            return tp


def _expiry_options(
    name: str, ttl: object, expiring: bool | None, scored: object
) -> tuple[int | None, bool]:
    """``mapped(ttl=, expiring=, scored_indexes=)`` checked: the default TTL in ms, and
    whether the model's entities may expire."""
    ms = None if ttl is None else ttl_ms(ttl, f"{name}: ttl", mapping=True)
    if expiring is None:
        expiring = ms is not None
    if not isinstance(expiring, bool):
        raise MappingError(f"{name}: expiring= takes True or False, not {expiring!r}")
    if ms is not None and not expiring:
        raise MappingError(f"{name}: ttl={ttl!r} with expiring=False contradict each other")
    if not isinstance(scored, bool):
        raise MappingError(f"{name}: scored_indexes= takes True or False, not {scored!r}")
    if scored and not expiring:
        raise MappingError(
            f"{name}: scored_indexes=True scores entries by expiry instants: it needs "
            "ttl= or expiring=True"
        )
    return ms, expiring


__all__ = ["Registry"]

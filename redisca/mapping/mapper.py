"""The mapper: everything redisca knows about one mapped class.

Built once at mapping time (fields, codecs, key layout, hash field names as
bytes) so that encoding, diffing and hydration do no lookups on the hot path.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import MappingError, ValidationError
from .codecs import Codec, decoder, encoder, holds_immutable
from .generated import Encoder, Filler, build_encoder, build_filler
from .instrument import MISSING, Attributes, FieldAttribute, inner_descriptor, install_repr
from .keys import KeyLayout, model_layout

if TYPE_CHECKING:
    from .registry import Registry


class MappedField:
    """One mapped attribute (the identity attribute is not one)."""

    __slots__ = (
        "_target_mapper",
        "_validators",
        "attribute",
        "checks",
        "codec",
        "collection",
        "decoder",
        "encoder",
        "hash_field",
        "index",
        "indexed",
        "is_reference",
        "mapper",
        "mutable",
        "name",
        "nullable",
        "on_delete",
        "target",
        "unique",
    )

    def __init__(
        self,
        mapper: Mapper,
        name: str,
        hash_field: str,
        codec: Codec | None,
        *,
        nullable: bool,
        index: bool,
        unique: bool,
        checks: tuple[Any, ...] = (),
        target: type | str | None = None,
        collection: str | None = None,
        on_delete: str | None = None,
    ) -> None:
        #: The :class:`Mapper` of the class the attribute belongs to.
        self.mapper = mapper
        #: The attribute name.
        self.name = name
        #: The hash field it is stored in (``field=``), as bytes.
        self.hash_field = hash_field.encode()
        #: Its :class:`~redisca.Codec`; ``None`` for a reference.
        self.codec = codec
        #: Stored bytes → Python value (a reference's is its target's id).
        self.decoder: Any = bytes.decode if codec is None else decoder(codec)
        #: Python value → stored bytes (``None`` for a reference: see :meth:`encode`).
        self.encoder: Any = None if codec is None else encoder(codec)
        #: Whether it accepts ``None`` (optional annotation or ``None`` default).
        self.nullable = nullable
        #: Whether values are unique (``unique=True``).
        self.unique = unique
        #: Extra checks of assigned values (``minlen``, ``maxval``, ...).
        self.checks = checks
        #: A reference's target class, or its name; ``None`` for other fields.
        self.target = target
        #: A reference's ``on_delete`` action ("restrict", "cascade", "set_null"), or ``None``.
        self.on_delete = on_delete
        kind = "eq" if codec is None else codec.index_kind
        #: "eq", "range" or None; unique fields of equality type need no set of their own.
        self.index: str | None = (None if unique and kind == "eq" else kind) if index else None
        #: Whether commits maintain index entries for it (an index or a unique key).
        self.indexed: bool = self.index is not None or unique
        #: Whether it holds another entity (stored as that entity's id).
        self.is_reference: bool = codec is None
        #: Whether its values may change in place (a codec not known to hold immutable
        #: values): such fields are compared on every commit, assigned or not.
        self.mutable: bool = codec is not None and not holds_immutable(codec)
        #: ``"set"`` or ``"list"`` for a collection field (``Set``, ``List``,
        #: ``References``), stored in a key of its own (``H#m:<field>:<id>``), not in the
        #: entity's hash; codec, target, encode and decode are then its elements'.
        self.collection = collection
        if collection is not None:
            self.nullable = False  # never None: empty instead (see coerce)
            self.mutable = True  # changed in place: compared with its snapshot
        self._target_mapper: Mapper | None = None
        self.attribute: FieldAttribute = None  # type: ignore[assignment]
        # What coerce() runs after the codec: the checks, then the codec's index check
        # where it has one (the base one accepts everything: not called per assignment).
        validators = list(checks)
        overrides = codec is not None and type(codec).check_indexable is not Codec.check_indexable
        if overrides and self.index is not None:
            validators.append(codec.check_indexable)  # type: ignore[union-attr]
        self._validators: tuple[Callable[[Any], None], ...] = tuple(validators)

    @property
    def scored(self) -> bool:
        """Whether its equality index keys are sorted sets scored by each entity's expiry
        instant (``+inf``: none), not sets: a field with an equality index of a model
        mapped with ``scored_indexes=True`` (a collection's member index stays a set). A
        query then counts and lists the live ids of a value in one command (``ZCOUNT``,
        ``ZRANGEBYSCORE`` from the server's now), with no probe of ``H#exp`` per id, however
        many expired ids wait for a sweep; a set costs less memory per entry, and its
        expired ids are found in ``H#exp`` (the smaller side of the two is probed)."""
        return self.index == "eq" and self.collection is None and self.mapper.scored_indexes

    def __repr__(self) -> str:
        return f"<MappedField {self.mapper.class_.__name__}.{self.name}>"

    def target_mapper(self) -> Mapper:
        """The referenced class's mapper, resolved on first use (it may be mapped later)."""
        if self._target_mapper is None:
            self._target_mapper = self.mapper.registry.resolve(self.target)  # type: ignore[arg-type]
        return self._target_mapper

    def coerce(self, value: Any) -> Any:
        """Check a value assigned in Python; raise ``ValidationError`` naming the field."""
        if self.collection is not None:
            return self.coerce_collection(value)
        return self.coerce_one(value)

    def coerce_collection(self, value: Any) -> Any:
        """A collection assigned (or checked before a commit): a new ``set`` or ``list``
        of checked elements. ``None`` is refused rather than taken as empty, so that
        ``post.tags = None`` cannot silently delete every tag: assign ``set()``. A string
        is refused too (it is iterable, but never meant as a collection of its
        characters)."""
        if value is None:
            raise self._invalid("a collection is never None: assign an empty one", None)
        if isinstance(value, (str, bytes, dict)):
            raise self._invalid(f"expected a {self.collection}, got {value!r:.60}", value)
        try:
            items = list(value)
        except TypeError:
            raise self._invalid(f"expected a {self.collection}, got {value!r:.60}", value) from None
        checked = [self.coerce_one(item) for item in items]
        if self.collection == "list":
            return checked
        try:
            return set(checked)
        except TypeError as exc:  # attrs' eq=True makes instances unhashable
            raise self._invalid(
                f"set members must be hashable ({exc}): map the target with "
                "@attrs.define(eq=False) (identity, as the session's identity map has it)",
                value,
            ) from None

    def coerce_one(self, value: Any) -> Any:
        """Check one value (a collection's element); raise ``ValidationError``."""
        if value is None:
            if self.nullable:
                return None
            raise self._invalid("cannot be None", None)
        try:
            if self.codec is None:
                target = self.target_mapper().class_
                if not isinstance(value, target):
                    if isinstance(value, str | int) and not isinstance(value, bool):
                        # An id where the entity goes: say how to refer to it by id.
                        raise ValidationError(
                            f"expected a {target.__name__}, got the id-like {value!r}: to "
                            f"refer to a stored {target.__name__} by its id, assign "
                            f"session.reference({target.__name__}, {value!r}) (no round trip)"
                        )
                    raise ValidationError(f"expected a {target.__name__}, got {value!r}")
                if type(value) is not target:
                    _check_not_a_mapped_subclass(target, type(value))
                return value
            value = self.codec.coerce(value)
            for check in self._validators:
                check(value)
        except ValidationError as exc:
            raise self._invalid(str(exc), value) from None
        return value

    def _invalid(self, message: str, value: Any) -> ValidationError:
        owner = self.mapper.class_.__name__
        return ValidationError(f"{owner}.{self.name}: {message}", field=self.name, value=value)

    def encode(self, value: Any) -> bytes | None:
        if value is None:
            return None
        if self.codec is None:
            ident = self.target_mapper().identity(value)
            if ident is None:
                raise self._invalid("refers to an entity that has no id yet", value)
            return ident.encode()
        try:
            return self.encoder(value)  # type: ignore[no-any-return]
        except ValidationError as exc:
            raise self._invalid(str(exc), value) from None
        except UnicodeEncodeError as exc:  # str.encode, standing in for StrCodec.encode
            raise self._invalid(f"string cannot be stored as UTF-8: {exc}", value) from None

    def decode(self, raw: bytes) -> Any:
        """Stored bytes → Python value (a reference decodes to the target's id)."""
        return self.decoder(raw)

    def index_key(self, raw: bytes) -> bytes:
        return raw if self.codec is None else self.codec.index_key(raw)

    def score(self, raw: bytes) -> float:
        return self.codec.score(raw)  # type: ignore[union-attr]


class Mapper:
    """Fields, codecs and key layout of one mapped class."""

    def __init__(
        self,
        registry: Registry,
        cls: type,
        prefix: str,
        id_attr: str,
        versioned: bool,
        slot_group: str | None = None,
        shards: int = 1,
    ) -> None:
        #: The :class:`~redisca.Registry` that mapped the class.
        self.registry = registry
        #: The mapped class.
        self.class_: type[Any] = cls
        #: The key prefix (redisca 1.x's ``getprefix()``).
        self.prefix = prefix
        #: The Redis Cluster slot group (``registry.mapped(slot_group=...)``), or ``None``:
        #: the model is a group of its own.
        self.slot_group = slot_group
        #: How many shards (hash slots) the model's entities are spread over
        #: (``registry.mapped(shards=N)``; 1: all in one).
        self.shards = shards
        #: Builds every key name of the class (see the Key layout page); built again
        #: by set_fields, once the range fields that decide the all-ids key are known.
        #: A ``ShardedLayout`` (redisca.mapping.keys) when ``shards`` > 1.
        self.layout = model_layout(prefix, None, slot_group, shards)
        #: The name of the identity attribute.
        self.id_attr = id_attr
        #: Whether commits check a version counter (optimistic locking).
        self.versioned = versioned
        #: Whether the model's entities may expire (``registry.mapped(ttl=...)`` or
        #: ``expiring=True``): its reads consult the expiry instants ``H#exp``.
        self.expiring = False
        #: The time to live of new entities in milliseconds (``mapped(ttl=...)``), or None.
        self.ttl_ms: int | None = None
        #: Whether an expiring model's equality indexes are sorted sets scored by the
        #: instants (``mapped(scored_indexes=True)``), not sets: see ``MappedField.scored``.
        self.scored_indexes = False
        #: The mapped attributes, in declaration order (the id is not one).
        self.fields: tuple[MappedField, ...] = ()
        #: The mapped attributes by attribute name.
        self.by_name: dict[str, MappedField] = {}
        #: The attributes with an index or a unique key.
        self.indexed: tuple[MappedField, ...] = ()
        #: The attributes with ``unique=True``.
        self.uniques: tuple[MappedField, ...] = ()
        #: The attributes without an index or a unique key (an update of only these
        #: reads nothing before its commit).
        self.plain: frozenset[MappedField] = frozenset()
        #: The collection attributes (``Set``, ``List``, ``References``): not in
        #: ``fields``, as they are not stored in the entity's hash.
        self.collections: tuple[MappedField, ...] = ()
        #: The reference attributes, and their names.
        self.references: tuple[MappedField, ...] = ()
        self.reference_names: frozenset[str] = frozenset()
        self.refers_with_action = False
        self.reference_sets: tuple[MappedField, ...] = ()
        #: Whether any field's values may change in place (see MappedField.mutable).
        self.mutable = False
        #: The first range-indexed field (declaration order), or ``None``: its index
        #: holds every entity, so it is the model's all-ids index (no ``H#all``) and
        #: gives the order of queries with no order and no range condition.
        self.default_order: MappedField | None = None
        self.id_attribute: FieldAttribute = None  # type: ignore[assignment]
        #: The class's query attributes by name, typed for a type checker
        #: (``redisca.inspect(User).attrs.age >= 18``): the id, the fields, the
        #: collections (see :class:`~redisca.mapping.instrument.Attributes`).
        self.attrs = Attributes(cls, {})
        self._filler: Filler | None = None
        self._encoder: Encoder | None = None

    def __repr__(self) -> str:
        return f"<Mapper {self.class_.__name__} prefix={self.prefix!r}>"

    def set_fields(self, fields: list[MappedField]) -> None:
        """Set the mapped attributes and the lookups derived from them (at mapping time)."""
        self.collections = tuple(f for f in fields if f.collection is not None)
        fields = [f for f in fields if f.collection is None]
        self.fields = tuple(fields)
        self.by_name = {f.name: f for f in fields}
        self.indexed = tuple(f for f in fields if f.indexed)
        self.uniques = tuple(f for f in fields if f.unique)
        self.plain = frozenset(f for f in fields if not f.indexed)
        self.references = tuple(f for f in fields if f.is_reference)
        self.reference_names = frozenset(f.name for f in self.references)
        #: Whether a ``Reference`` or ``References`` of the class has an ``on_delete``
        #: action: its new targets are checked by the commit.
        #: The ``References`` collections: their members are added with their holder.
        self.reference_sets = tuple(f for f in self.collections if f.is_reference)
        self.refers_with_action = any(
            f.on_delete is not None for f in (*self.references, *self.collections)
        )
        self.mutable = any(f.mutable for f in fields)
        self.default_order = next((f for f in fields if f.index == "range"), None)
        # The first range field's index is the all-ids index: the layout depends on it.
        ids_field = None if self.default_order is None else self.default_order.hash_field
        self.layout = model_layout(self.prefix, ids_field, self.slot_group, self.shards)

    def instrument(self) -> None:
        """Install a descriptor per mapped attribute (and on the identity attribute)."""
        cls = self.class_
        for field in (*self.fields, *self.collections):
            inner = inner_descriptor(cls, field.name)
            field.attribute = FieldAttribute(cls, field.name, inner, field.coerce, self)
            setattr(cls, field.name, field.attribute)
        inner = inner_descriptor(cls, self.id_attr)
        self.id_attribute = FieldAttribute(cls, self.id_attr, inner, self._coerce_id, self)
        setattr(cls, self.id_attr, self.id_attribute)
        cls.__redisca_mapper__ = self
        attributes = {self.id_attr: self.id_attribute}
        attributes.update((f.name, f.attribute) for f in (*self.fields, *self.collections))
        self.attrs = Attributes(cls, attributes)
        install_repr(
            cls, [(a.name, attributes[a.name], a.repr) for a in attrs.fields(cls) if a.repr]
        )
        #: What loading needs of each field, looked up once: field, hash field, slot
        #: setter, decoder, whether it is a reference.
        self.loaders: tuple[tuple[MappedField, bytes, Any, Any, bool], ...] = tuple(
            (f, f.hash_field, f.attribute.store, f.decoder, f.is_reference) for f in self.fields
        )
        self._filler = None
        self._encoder = None

    def forget_target(self, earlier: Mapper) -> None:
        """A referenced class was mapped again: resolve its references anew (and rebuild
        the generated filler, which holds the target's mapper as a constant)."""
        for field in self.references:
            if field._target_mapper is earlier:
                field._target_mapper = None
                self._filler = None
                self._encoder = None

    @property
    def encoder(self) -> Encoder:
        """Every field's stored bytes as one generated function: an insert's values."""
        if self._encoder is not None:
            return self._encoder
        encoder, complete = build_encoder(self)
        if complete:
            self._encoder = encoder
        return encoder

    @property
    def filler(self) -> Filler:
        """``loaders`` as one generated function: what a fresh load runs per entity."""
        if self._filler is not None:
            return self._filler
        filler, complete = build_filler(self)
        if complete:
            self._filler = filler
        return filler

    def _coerce_id(self, value: Any) -> str | None:
        if value is None:
            return value
        if isinstance(value, str):
            if not value.isascii():
                self._check_id_text(value)
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return str(value)
            except ValueError as exc:  # beyond sys.get_int_max_str_digits() (4300 digits)
                raise ValidationError(
                    f"{self.class_.__name__}.{self.id_attr}: integer id too long: {exc}",
                    field=self.id_attr,
                    value=value,
                ) from None
        raise ValidationError(
            f"{self.class_.__name__}.{self.id_attr}: ids are str (or int), got {value!r}",
            field=self.id_attr,
            value=value,
        )

    def lookup_id(self, value: Any) -> str:
        """An id given to find an entity (``get``, ``reference``...): checked as the id
        attribute checks it, except that ``None`` names no entity and is refused (on an
        instance, ``None`` means "give it a ``hexid()`` when added"). redisca 1.x took
        ``User(None)`` as the empty id ``""``, which is still an id: ask for ``""``."""
        if value is None:
            raise ValidationError(
                f"{self.class_.__name__}.{self.id_attr}: None names no entity (redisca 1.x's "
                'User(None) was the empty id: pass "" for that)',
                field=self.id_attr,
                value=value,
            )
        ident = self._coerce_id(value)
        assert ident is not None  # only None gives None
        return ident

    def _check_id_text(self, value: str) -> None:
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValidationError(
                f"{self.class_.__name__}.{self.id_attr}: an id must be text UTF-8 can hold: {exc}",
                field=self.id_attr,
                value=value,
            ) from None

    @property
    def subclasses(self) -> list[type]:
        """The mapped subclasses of the class in its registry, direct and indirect, in
        the order they were mapped (redisca 1.x's ``inheritors()``). Each has its own
        prefix, keys and indexes: a query of this class returns none of them."""
        return [
            m.class_
            for m in self.registry
            if m.class_ is not self.class_ and issubclass(m.class_, self.class_)
        ]

    @property
    def field_names(self) -> list[str]:
        """The names of the mapped attributes."""
        return [f.name for f in self.fields]

    def identity(self, obj: Any) -> str | None:
        """The id of an instance, ``None`` if it has none yet."""
        ident = self.id_attribute.get_raw(obj)
        return None if ident is MISSING else ident

    def key(self, ident: str) -> bytes:
        """The entity key of an id: ``{<prefix>}:<id>`` (see the Key layout page)."""
        return self.layout.entity(ident)

    def key_for(self, id: str | int) -> str:
        """The Redis key of any id of this class, as ``inspect(obj).key`` gives it
        (an int id is its decimal string, as everywhere)."""
        return self.layout.entity(self.lookup_id(id)).decode()

    def shard_of(self, id: str | int) -> int:
        """The shard (0 to ``shards - 1``) holding the entity ``id``: see the Key layout
        page; always 0 for a model of one shard."""
        return self.layout.shard_of(self.lookup_id(id))

    def shard_layout(self, shard: int) -> KeyLayout:
        """The key layout of one shard (the model's own layout when it has one shard)."""
        return self.layout.layout_of_shard(shard)

    def shard_layouts(self) -> list[KeyLayout]:
        """Every shard's key layout, in shard order: where queries and maintenance look."""
        return self.layout.shard_layouts()

    def shard_views(self) -> list[Mapper]:
        """The mapper once per shard, each with its shard's key layout (``[self]`` for a
        model of one shard, and for a view): code written for a model of one slot runs
        on a view as on that model, for the keys of the shard's entities (an entity's
        unique claims are in its values' shards, not its own). Made once, on first use."""
        views: list[Mapper] | None = self.__dict__.get("_shard_views")
        if views is None:
            views = [self] if self.shards == 1 else [self._view(k) for k in range(self.shards)]
            self._shard_views = views
        return views

    def shard_view(self, id: str) -> Mapper:
        """The view of the shard holding the entity ``id`` (see :meth:`shard_views`)."""
        views = self.shard_views()
        return views[0] if len(views) == 1 else views[self.layout.shard_of(id)]

    @property
    def whole(self) -> Mapper:
        """The model's own mapper: ``self``, or the one a shard view was made from
        (what a unique claim, in its value's shard, needs)."""
        found: Mapper = self.__dict__.get("_whole", self)
        return found

    def _view(self, shard: int) -> Mapper:
        view = copy.copy(self)
        view.layout = self.layout.layout_of_shard(shard)
        view._shard_views = [view]
        view.__dict__["_whole"] = self
        return view

    def blank(self, ident: str) -> Any:
        """An instance with only its id set, without running ``__init__``."""
        obj = object.__new__(self.class_)
        self.id_attribute.store(obj, ident)
        return obj

    def encode_set_fields(self, obj: Any) -> dict[MappedField, bytes | None]:
        """Encoded values of every attribute that holds a value (unset ones are skipped)."""
        out: dict[MappedField, bytes | None] = {}
        for field in self.fields:
            try:
                value = field.attribute.fetch(obj)
            except AttributeError:
                continue
            out[field] = field.encode(value)
        return out


def _check_not_a_mapped_subclass(target: type, cls: type) -> None:
    """A reference stores only the id, and the target class's keys are where a load looks
    for it: an entity of a mapped subclass lives under its own prefix, so the reference
    would load as a missing base entity (``NotFound``). Refused when assigned instead."""
    sub = cls.__dict__.get("__redisca_mapper__")
    if sub is None:
        return
    raise ValidationError(
        f"expected a {target.__name__}, got a {cls.__name__}: {cls.__name__} is mapped on "
        f"its own (prefix {sub.prefix!r}) and a reference to {target.__name__} stores only "
        f"the id, which it looks up among {target.__name__} entities; refer to it with a "
        f"Reference({cls.__name__}) field"
    )


def mapper_of(cls: type) -> Mapper:
    """The mapper of a mapped class (not of its unmapped subclasses)."""
    if not isinstance(cls, type):
        # Most often arguments in the wrong order: session.get("01a…", User).
        raise MappingError(
            f"expected a mapped class, got {type(cls).__name__} {cls!r:.60}: the class "
            "comes first, as in session.get(User, id)"
        )
    mapper = cls.__dict__.get("__redisca_mapper__")
    if mapper is None:
        raise MappingError(f"{cls.__name__} is not mapped: decorate it with registry.mapped")
    return mapper  # type: ignore[no-any-return]


__all__ = ["MappedField", "Mapper", "mapper_of"]

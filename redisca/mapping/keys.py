"""The key layout: the one place that builds Redis key names.

Every key of a model starts with its head ``H``: ``{P}`` for a model of prefix
``P``, or ``{G}P`` for a model of slot group ``G``. The braces are a Redis Cluster
hash tag that comes first in every key, so only the tag decides a key's slot:
no id or value can move a key, all keys of a model (of a slot group) share one
slot, and the same names serve a single server and a cluster. Prefixes and group
names hold none of ``{}:#``, so the head ends at the first ``:`` or ``#`` after
the ``}``. Entity hashes continue with ``:`` (``H:<id>``), everything redisca
keeps beside them with ``#`` (``H#all``, ``H#i:<field>:<value>``, ``H#r:<field>``,
the unique stripes ``H#u:<field>:<n>``, the guard stripes ``H#g:<n>``, and while a
reindex runs ``H#x``, ``H#b:<run>`` and ``H#b:<run>:<index key without H#>``; a model
that may expire its entities keeps ``H#exp``, its entities' expiry instants;
``H#t:<token>`` is reserved for the query scratch keys of earlier versions).
Field names hold no ``:``, so the value is the whole remainder of an index key.
No id or value can make two things share a key. A model with a range index keeps
no ``H#all``: its first range field's index holds every id. The layout before the
hash tags (``P:<id>``, ``P#...``: redisca 1.x's and 2.0 development builds') is
:meth:`KeyLayout.untagged`, which ``python -m redisca migrate`` reads. See
``docs/keylayout.rst``.
"""

from __future__ import annotations

import binascii
import functools
import os
import re
import zlib
from collections.abc import Callable
from typing import NamedTuple

from ..errors import DecodeError, InvalidRequestError, MappingError
from .codecs import decode_int

NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_FIELD_RE = re.compile(rb"[A-Za-z0-9_.\-]+")
#: A reindex run's token: it names the run's build keys, so it holds no ``:``.
RUN_RE = re.compile(rb"[0-9a-f]+")

#: A unique field's values are spread over this many hashes ``H#u:<field>:<n>``
#: (value → owner id), ``n = crc32(value) % UNIQUE_STRIPES``: a key per stripe, not
#: per value, and a commit watches at most this many keys per unique field.
UNIQUE_STRIPES = 128
#: Entities are spread over this many guard counters ``H#g:<n>``,
#: ``n = crc32(id) % GUARD_STRIPES``: commits watch the stripes of the entities they
#: read and bump those of the entities whose index entries they change.
GUARD_STRIPES = 128
#: The range-index score of an entity whose field holds no value: it sorts last.
NO_VALUE = b"+inf"
#: Stripe numbers as written in key names: decimal, no leading zero.
_STRIPE_RE = re.compile(rb"0|[1-9][0-9]{0,2}")

#: Most shards a model may have (``registry.mapped(shards=N)``): each shard is a hash
#: slot of its own that a query visits, and 1,024 slots is already more than the masters
#: of any cluster that redisca's users run.
MAX_SHARDS = 1024
#: Redis Cluster's number of hash slots.
SLOTS = 16384
#: In the tag of a sharded model, between its prefix and its shard's numbers. No prefix
#: or group name holds it, so a shard's tag never equals another model's tag.
SHARD_MARK = b"@"

#: Hash fields redisca keeps for itself start with ``#``: user fields cannot.
VERSION_FIELD = b"#v"
#: Keeps a hash alive when an entity has no field set (Redis drops empty hashes).
EXISTS_FIELD = b"#e"


def decode_id(raw: bytes, key: bytes) -> str:
    """An id read from ``key`` (an index or unique key): ids are UTF-8 text."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        name = key.decode(errors="replace")
        raise DecodeError(
            f"{name} holds {raw[:60]!r}, which is not an id (ids are UTF-8 text)", key=name
        ) from None


def decode_version(raw: bytes | None, key: bytes) -> int | None:
    """The version counter (``#v``) of a versioned entity's hash."""
    if raw is None:
        return None
    try:
        return decode_int(raw)  # HINCRBY's text; int() alone would read " 5 " too
    except ValueError:
        name = key.decode(errors="replace")
        raise DecodeError(
            f"{name}: field '#v' holds {raw[:60]!r}, which is not a version number",
            key=name,
            field="#v",
        ) from None


def shard_of(raw: bytes, shards: int) -> int:
    """The shard of an id (UTF-8) or of a unique value (index form) among ``shards``:
    ``(crc32(raw) >> 7) % shards``. Stable: it depends on the bytes and ``shards`` only.
    The low 7 bits of the CRC pick a unique or guard stripe (``% 128``); the shard takes
    the bits above them, so every shard uses every stripe (``crc32 % shards`` with 16
    shards would leave each shard 8 of its 128 stripes)."""
    return (zlib.crc32(raw) >> 7) % shards


def key_slot(key: bytes) -> int:
    """Redis Cluster's hash slot of a key with no ``{`` (a tag's text): CRC16-CCITT
    (XModem, ``binascii.crc_hqx`` from 0) modulo 16,384, as ``CLUSTER KEYSLOT`` says."""
    return binascii.crc_hqx(key, 0) % SLOTS


@functools.cache
def shard_tag(tag: str, shards: int, shard: int) -> bytes:
    """The hash tag's text of shard ``shard`` of a model whose unsharded tag is ``tag``:
    ``<tag>@<shards>.<shard>.<s>``, ``s`` the smallest number from 0 whose tag hashes
    near the middle of the shard's own slice of the 16,384 slots (slice ``k`` is
    ``[k*16384//N, (k+1)*16384//N)``; near: within a quarter of the slice, at most 32
    slots, of its middle slot). The slices are equal, as the masters' slot ranges of a
    cluster made by ``redis-cli --cluster create`` (and :class:`EmbeddedCluster`) are,
    so the shards spread over the masters of such a cluster evenly (a master of M gets
    N/M shards, give or take one). Worked out once per shard and cached."""
    low, high = shard * SLOTS // shards, (shard + 1) * SLOTS // shards
    middle = (low + high) // 2
    reach = min((high - low) // 4, 32)
    start = b"%s@%d.%d." % (tag.encode(), shards, shard)
    s = 0
    while abs(key_slot(start + b"%d" % s) - middle) > reach:
        s += 1
    return start + b"%d" % s


def head_shards(prefix: bytes, key: bytes) -> tuple[bytes, int] | None:
    """The head of a key of the model of ``prefix`` (no slot group) and the shard count
    of the layout it is a key of: 1 for ``{P}...``, ``N`` for ``{P@N.k.s}...``; ``None``
    for a key of neither (another model's, the layout before hash tags). What
    ``reshard`` moves, and ``check`` reports, when the count is not the model's."""
    end = key.find(b"}")
    if not key.startswith(b"{") or end < 0:
        return None
    head = key[: end + 1]
    inner = head[1:-1]
    if inner == prefix:
        return head, 1
    name, at, rest = inner.partition(SHARD_MARK)
    parts = rest.split(b".")
    if name != prefix or not at or len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return head, int(parts[0])


def check_shards(shards: object, owner: str) -> int:
    """Refuse a shard count that is not an int from 1 to :data:`MAX_SHARDS`."""
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise MappingError(f"{owner}: shards must be an int from 1 to {MAX_SHARDS}, got {shards!r}")
    return shards


def check_name(kind: str, name: str, owner: str) -> str:
    """Refuse a prefix or field name that could blur the key layout."""
    if not NAME_RE.fullmatch(name):
        raise MappingError(
            f"{owner}: {kind} {name!r} must match [A-Za-z0-9_.-]+ "
            "(no ':' '#' '{' '}' or spaces), so keys stay unambiguous"
        )
    return name


class KeyLayout:
    """Key names of one model, built from bytes so ids and values need no escaping."""

    __slots__ = (
        "_all",
        "_all_ids",
        "_build",
        "_entity",
        "_eq",
        "_expiry",
        "_guard",
        "_marker",
        "_members",
        "_namespace",
        "_range",
        "_registry",
        "_tmp",
        "_tokens",
        "_unique",
        "group",
        "head",
        "ids_field",
        "prefix",
        "shard",
        "shards",
        "tag",
    )

    def __init__(
        self,
        prefix: str,
        ids_field: bytes | None = None,
        group: str | None = None,
        *,
        tagged: bool = True,
        shards: int = 1,
        shard: int | None = None,
    ) -> None:
        """``ids_field``: the hash field of the model's first range-indexed field, if it
        has one. Its range index holds every entity already (``+inf`` without a value),
        so it is the model's all-ids index too, and ``H#all`` is not kept. ``group``:
        the model's slot group (``None``: the model is a group of its own). ``tagged``
        false gives the layout before hash tags (see :meth:`untagged`). ``shards`` and
        ``shard``: one shard's layout of a model of ``shards`` shards (see
        :class:`ShardedLayout`, the layout of the whole model)."""
        self.prefix = prefix
        self.group = group
        self.ids_field = ids_field
        #: How many shards the model has (1: unsharded), and which one this layout is
        #: (``None`` for the layout of a whole model).
        self.shards = shards
        self.shard = shard
        #: The hash tag's text: every key of the layout hashes to the slot of this.
        self.tag = (prefix if group is None else group).encode()
        if shard is not None:
            self.tag = shard_tag(prefix, shards, shard)
        if not tagged:
            p = prefix.encode()
        elif group is None:
            p = b"{" + self.tag + b"}"
        else:
            p = b"{" + self.tag + b"}" + prefix.encode()
        #: What every key of the model starts with, up to its ``:`` or ``#``.
        self.head = p
        self._entity = p + b":"
        self._all = p + b"#all"
        self._eq = p + b"#i:"
        self._range = p + b"#r:"
        self._all_ids = self._all if ids_field is None else self._range + ids_field
        self._unique = p + b"#u:"
        self._tmp = p + b"#t:"
        self._guard = p + b"#g:"
        self._tokens = p + b"#o:"
        self._registry = p + b"#c:"
        self._namespace = p + b"#"
        self._marker = p + b"#x"
        self._build = p + b"#b:"
        self._members = p + b"#m:"
        self._expiry = p + b"#exp"

    # -- shards (``registry.mapped(shards=N)``) -----------------------------------

    def for_id(self, id: str) -> KeyLayout:
        """The layout of the shard holding the entity ``id`` (this one, unsharded)."""
        return self

    def for_value(self, value: bytes) -> KeyLayout:
        """The layout of the shard holding a unique value's claim (index form)."""
        return self

    def shard_of(self, id: str) -> int:
        """The shard number of an id (0 on a model of one shard)."""
        return 0 if self.shard is None else self.shard

    def layout_of_shard(self, shard: int) -> KeyLayout:
        """The layout of shard ``shard`` (of an unsharded model: itself, shard 0)."""
        if shard != self.shard_of(""):
            raise IndexError(f"{self.prefix}: no shard {shard}")
        return self

    def shard_layouts(self) -> list[KeyLayout]:
        """Every shard's layout, in shard order (unsharded: this one alone)."""
        return [self]

    def untagged(self) -> KeyLayout:
        """The same model's layout before hash tags: ``P:<id>``, ``P#...``, its bare
        prefix as the head (for a model of a slot group too: groups came with tags)."""
        return KeyLayout(self.prefix, self.ids_field, tagged=False)

    @property
    def tagged(self) -> bool:
        return self.head != self.prefix.encode()

    @property
    def hashtag(self) -> bytes:
        """``{tag}``: a key name that hashes to the slot of every key of the layout."""
        return b"{" + self.tag + b"}"

    def entity(self, id: str) -> bytes:
        return self._entity + id.encode()

    def entities(self, ids: list[str]) -> list[bytes]:
        """The entity keys of many ids (a bulk load's keys, built in one comprehension)."""
        prefix = self._entity
        return [prefix + id.encode() for id in ids]

    def entity_of(self, id: bytes) -> bytes:
        """The entity key of an id as Redis returns it (a set member, a unique key's value)."""
        return self._entity + id

    @property
    def all_ids(self) -> bytes:
        """The sorted set holding every id of the model: the first range field's index
        ``H#r:<field>`` when the model has one, else ``H#all`` (every score 0)."""
        return self._all_ids

    @property
    def all_ids_is_range(self) -> bool:
        """Whether the all-ids index is a range index: then ``H#all`` is not written, and
        the commands that keep the range index keep every id too."""
        return self._all_ids != self._all

    @property
    def all_set(self) -> bytes:
        """``H#all``, the all-ids sorted set of a model without a range index; on a model
        with one, a leftover of the layout before (``check`` reports, ``reindex`` deletes it)."""
        return self._all

    def eq_index(self, field: bytes, value: bytes) -> bytes:
        return self._eq + field + b":" + value

    def members(self, field: bytes, id: bytes) -> bytes:
        """``H#m:<field>:<id>``: the members of one entity's collection field (a Redis set
        or list), beside the entity's hash under the same hash tag so that the entity and
        its collections commit in one MULTI/EXEC on a cluster too."""
        return self._members + field + b":" + id

    def range_index(self, field: bytes) -> bytes:
        return self._range + field

    @property
    def expiry(self) -> bytes:
        """``H#exp``: the sorted set id → expiry instant (milliseconds since the epoch, by
        the server's clock) of the model's entities that have one. An entity whose instant
        has passed is gone for every reader, even while its hash and index entries wait for
        a sweep: this one key is what readers consult, and what sweeps walk."""
        return self._expiry

    def expiry_of(self, id: str) -> bytes:
        """The :attr:`expiry` key that holds the instant of the entity ``id``: the one of
        its shard on a sharded model."""
        return self._expiry

    def unique_stripe(self, field: bytes, value: bytes) -> bytes:
        """The hash that maps a unique field's ``value`` (index form) to its owner's id."""
        return self._unique + field + b":%d" % (zlib.crc32(value) % UNIQUE_STRIPES)

    def claim_tokens(self, field: bytes, value: bytes) -> bytes:
        """A sharded model's ``H#o:<field>:<n>``, beside the unique stripe ``H#u:<field>:<n>``
        of the same ``n``: value → the token of the claim the stripe holds for it (see
        the unique protocol in ``docs/guarantees.rst``)."""
        return self._tokens + field + b":%d" % (zlib.crc32(value) % UNIQUE_STRIPES)

    def registry(self, id: bytes) -> bytes:
        """A sharded model's ``H#c:<n>`` (``n`` the guard stripe's number of the id):
        ``<field>:<id>`` → the token of the entity's claim in flight for that field."""
        return self._registry + b"%d" % (zlib.crc32(id) % GUARD_STRIPES)

    def guard(self, id: bytes) -> bytes:
        """The guard counter of the entity ``id`` (UTF-8): bumped by every commit that
        inserts or deletes it or changes its indexed fields or version."""
        return self._guard + b"%d" % (zlib.crc32(id) % GUARD_STRIPES)

    def scratch(self) -> bytes:
        """A fresh key for one query's intermediate results."""
        return self._tmp + os.urandom(12).hex().encode()

    def entity_prefix_len(self) -> int:
        return len(self._entity)

    # -- reindex (redisca.maintenance) ---------------------------------------

    @property
    def marker(self) -> bytes:
        """``H#x``: exists while a reindex rebuilds this model's indexes."""
        return self._marker

    def build_dir(self, run: bytes) -> bytes:
        """``H#b:<run>``: the run's build keys and the live key each one replaces."""
        return self._build + _run(run)

    def build(self, run: bytes, live: bytes) -> bytes:
        """The key a reindex run builds to replace the live index key ``live``."""
        return self.builder(run)(live)

    def builder(self, run: bytes) -> Callable[[bytes], bytes]:
        """:meth:`build` for one run, its token checked once (a reindex builds many keys)."""
        start = self._build + _run(run) + b":"
        cut = len(self._namespace)

        def build(live: bytes) -> bytes:
            if self.parse(live).kind not in INDEX_KINDS:
                raise ValueError(f"{live!r} is not an index key of prefix {self.prefix!r}")
            return start + live[cut:]

        return build

    # -- reading keys back (check, stats) ------------------------------------

    @property
    def entity_pattern(self) -> bytes:
        """``SCAN MATCH`` pattern of the entity keys (prefixes hold no glob characters)."""
        return self._entity + b"*"

    @property
    def namespace_pattern(self) -> bytes:
        """``SCAN MATCH`` pattern of every other key of the model."""
        return self._namespace + b"*"

    @property
    def pattern(self) -> bytes:
        """``SCAN MATCH`` pattern of every key of the model, entities and the rest
        (``H[:#]*``): one scan where :attr:`entity_pattern` and
        :attr:`namespace_pattern` take two."""
        return self.head + b"[:#]*"

    def unique_stripes(self, field: bytes) -> list[bytes]:
        """Every stripe key of one unique field, in stripe order."""
        return [self._unique + field + b":%d" % n for n in range(UNIQUE_STRIPES)]

    def claim_token_stripes(self, field: bytes) -> list[bytes]:
        """Every ``H#o:<field>:<n>`` of one unique field (a sharded model's claim tokens,
        beside :meth:`unique_stripes`), in stripe order."""
        return [self._tokens + field + b":%d" % n for n in range(UNIQUE_STRIPES)]

    def registries(self) -> list[bytes]:
        """Every ``H#c:<n>`` (a sharded model's registrations of claims in flight)."""
        return [self._registry + b"%d" % n for n in range(GUARD_STRIPES)]

    def parse(self, key: bytes) -> ParsedKey:
        """What a key of this model is; the left inverse of the builders above."""
        if key.startswith(self._entity):
            return ParsedKey("entity", value=key[len(self._entity) :])
        if not key.startswith(self._namespace):
            return ParsedKey("foreign")
        if key == self._all:
            return ParsedKey("all")
        if key == self._marker:
            return ParsedKey("marker")
        if key == self._expiry:
            return ParsedKey("expiry")
        for kind, start in (
            ("eq", self._eq),
            ("unique", self._unique),
            ("tokens", self._tokens),
        ):
            if key.startswith(start):
                field, colon, value = key[len(start) :].partition(b":")
                if not colon or not _FIELD_RE.fullmatch(field):
                    return ParsedKey("unknown")
                if kind != "eq" and not _stripe(value, UNIQUE_STRIPES):
                    if kind == "tokens":
                        return ParsedKey("unknown")
                    kind = "old_unique"  # a key per value, as redisca wrote before 2.0
                return ParsedKey(kind, field, value)
        if key.startswith(self._members):
            field, colon, id = key[len(self._members) :].partition(b":")
            if not colon or not _FIELD_RE.fullmatch(field):
                return ParsedKey("unknown")
            return ParsedKey("members", field, id)
        for kind, start in (("guard", self._guard), ("registry", self._registry)):
            if key.startswith(start):
                stripe = key[len(start) :]
                if _stripe(stripe, GUARD_STRIPES):
                    return ParsedKey(kind, value=stripe)
                return ParsedKey("unknown")
        if key.startswith(self._range):
            field = key[len(self._range) :]
            return ParsedKey("range", field) if _FIELD_RE.fullmatch(field) else ParsedKey("unknown")
        if key.startswith(self._tmp):
            return ParsedKey("scratch", value=key[len(self._tmp) :])
        if key.startswith(self._build):
            run, colon, rest = key[len(self._build) :].partition(b":")
            if RUN_RE.fullmatch(run):
                if not colon:
                    return ParsedKey("build_dir", run=run)
                live = self._namespace + rest
                if self.parse(live).kind in INDEX_KINDS:
                    return ParsedKey("build", value=live, run=run)
        return ParsedKey("unknown")


class ShardedLayout(KeyLayout):
    """The layout of a whole model of ``shards`` > 1 shards (``registry.mapped(shards=N)``).

    Shard ``k`` has a layout of its own (:meth:`layout_of_shard`), a :class:`KeyLayout`
    whose tag is :func:`shard_tag`: an entity's hash, its guard stripe and its index
    entries are in the shard of its id (:func:`shard_of` of the id's UTF-8), a unique
    value's claim in the shard of the value (:func:`shard_of` of its index form).
    This layout builds the keys found by an id or a value (:meth:`entity`,
    :meth:`guard`, :meth:`unique_stripe`) in the right shard; keys that exist once per
    shard (the indexes, the all-ids index, the reindex marker, scan patterns) have no
    single name here and raise :class:`~redisca.InvalidRequestError`: ask the shard's
    layout.
    """

    __slots__ = ("_layouts",)

    def __init__(self, prefix: str, ids_field: bytes | None, shards: int) -> None:
        super().__init__(prefix, ids_field, shards=shards)
        self._layouts: list[KeyLayout | None] = [None] * shards

    def __repr__(self) -> str:
        return f"<ShardedLayout {self.prefix!r} shards={self.shards}>"

    def layout_of_shard(self, shard: int) -> KeyLayout:
        found = self._layouts[shard]  # an IndexError beyond the last shard
        if found is None:
            if shard < 0:
                raise IndexError(f"{self.prefix}: no shard {shard}")
            found = self._layouts[shard] = KeyLayout(
                self.prefix, self.ids_field, shards=self.shards, shard=shard
            )
        return found

    def shard_layouts(self) -> list[KeyLayout]:
        return [self.layout_of_shard(k) for k in range(self.shards)]

    def shard_of(self, id: str) -> int:
        return shard_of(id.encode(), self.shards)

    def for_id(self, id: str) -> KeyLayout:
        return self.layout_of_shard(shard_of(id.encode(), self.shards))

    def for_value(self, value: bytes) -> KeyLayout:
        return self.layout_of_shard(shard_of(value, self.shards))

    def entity(self, id: str) -> bytes:
        raw = id.encode()
        return self.layout_of_shard(shard_of(raw, self.shards))._entity + raw

    def entities(self, ids: list[str]) -> list[bytes]:
        return [self.entity(id) for id in ids]

    def entity_of(self, id: bytes) -> bytes:
        return self.layout_of_shard(shard_of(id, self.shards))._entity + id

    def guard(self, id: bytes) -> bytes:
        return self.layout_of_shard(shard_of(id, self.shards)).guard(id)

    def members(self, field: bytes, id: bytes) -> bytes:
        return self.layout_of_shard(shard_of(id, self.shards)).members(field, id)

    def registry(self, id: bytes) -> bytes:
        return self.layout_of_shard(shard_of(id, self.shards)).registry(id)

    def claim_tokens(self, field: bytes, value: bytes) -> bytes:
        return self.for_value(value).claim_tokens(field, value)

    def expiry_of(self, id: str) -> bytes:
        return self.layout_of_shard(shard_of(id.encode(), self.shards))._expiry

    def unique_stripe(self, field: bytes, value: bytes) -> bytes:
        return self.for_value(value).unique_stripe(field, value)

    def untagged(self) -> KeyLayout:
        return KeyLayout(self.prefix, self.ids_field, tagged=False)

    def _per_shard(self, what: str) -> InvalidRequestError:
        return InvalidRequestError(
            f"{self.prefix} has {self.shards} shards, each with its own {what}: ask a "
            "shard's layout (layout.layout_of_shard(k), layout.shard_layouts())"
        )

    @property
    def hashtag(self) -> bytes:
        raise self._per_shard("hash tag")

    @property
    def all_ids(self) -> bytes:
        raise self._per_shard("all-ids index")

    @property
    def all_set(self) -> bytes:
        raise self._per_shard("all-ids set")

    def eq_index(self, field: bytes, value: bytes) -> bytes:
        raise self._per_shard("equality index")

    def range_index(self, field: bytes) -> bytes:
        raise self._per_shard("range index")

    def unique_stripes(self, field: bytes) -> list[bytes]:
        raise self._per_shard("unique stripes")

    def scratch(self) -> bytes:
        raise self._per_shard("scratch keys")

    def entity_prefix_len(self) -> int:
        raise self._per_shard("entity key prefix")

    @property
    def marker(self) -> bytes:
        raise self._per_shard("reindex marker")

    @property
    def expiry(self) -> bytes:
        raise self._per_shard("expiry instants")

    def build_dir(self, run: bytes) -> bytes:
        raise self._per_shard("build keys")

    def builder(self, run: bytes) -> Callable[[bytes], bytes]:
        raise self._per_shard("build keys")

    @property
    def entity_pattern(self) -> bytes:
        raise self._per_shard("keys")

    @property
    def namespace_pattern(self) -> bytes:
        raise self._per_shard("keys")

    @property
    def pattern(self) -> bytes:
        raise self._per_shard("keys")

    def parse(self, key: bytes) -> ParsedKey:
        raise self._per_shard("keys")


def model_layout(
    prefix: str, ids_field: bytes | None = None, group: str | None = None, shards: int = 1
) -> KeyLayout:
    """The layout of a model: :class:`KeyLayout`, or :class:`ShardedLayout` when it has
    more than one shard (a model of a slot group has one: see ``Registry.map``)."""
    if shards == 1:
        return KeyLayout(prefix, ids_field, group)
    return ShardedLayout(prefix, ids_field, shards)


#: Kinds of the live index keys a reindex rebuilds.
INDEX_KINDS = frozenset({"all", "eq", "range", "unique"})


class ParsedKey(NamedTuple):
    """A key's kind (``entity``, ``all``, ``eq``, ``range``, ``unique`` (a stripe),
    ``tokens`` (a sharded model's claim tokens of a stripe), ``guard``, ``registry`` (a
    sharded model's claims in flight), ``members`` (a collection field of the entity
    whose id is the value), ``scratch``, ``marker``, ``expiry``, ``build``,
    ``build_dir``, ``old_unique`` (a unique key of the layout before 2.0, a key per
    value), ``unknown`` in the model's namespace, or ``foreign``), with its field, its
    value (an entity's id, an index's value, a stripe's number, the live key a build
    key replaces) and a build key's run. A stripe name is also what an old unique key
    of a value such as ``7`` was: only its Redis type (hash, not string) tells them
    apart."""

    kind: str
    field: bytes | None = None
    value: bytes | None = None
    run: bytes | None = None


def _stripe(text: bytes, stripes: int) -> bool:
    return bool(_STRIPE_RE.fullmatch(text)) and int(text) < stripes


def _run(run: bytes) -> bytes:
    if not RUN_RE.fullmatch(run):
        raise ValueError(f"a reindex run token is lowercase hex, got {run!r}")
    return run


__all__ = [
    "EXISTS_FIELD",
    "GUARD_STRIPES",
    "INDEX_KINDS",
    "MAX_SHARDS",
    "NAME_RE",
    "NO_VALUE",
    "RUN_RE",
    "SHARD_MARK",
    "SLOTS",
    "UNIQUE_STRIPES",
    "VERSION_FIELD",
    "KeyLayout",
    "ParsedKey",
    "ShardedLayout",
    "check_name",
    "check_shards",
    "head_shards",
    "key_slot",
    "model_layout",
    "shard_of",
    "shard_tag",
]

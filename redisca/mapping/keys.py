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
reindex runs ``H#x``, ``H#b:<run>`` and ``H#b:<run>:<index key without H#>``;
``H#t:<token>`` is reserved for the query scratch keys of earlier versions).
Field names hold no ``:``, so the value is the whole remainder of an index key.
No id or value can make two things share a key. A model with a range index keeps
no ``H#all``: its first range field's index holds every id. The layout before the
hash tags (``P:<id>``, ``P#...``: redisca 1.x's and 2.0 development builds') is
:meth:`KeyLayout.untagged`, which ``python -m redisca migrate`` reads. See
``docs/keylayout.rst``.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable
from typing import NamedTuple

from ..errors import DecodeError, MappingError
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
        "_guard",
        "_marker",
        "_namespace",
        "_range",
        "_tmp",
        "_unique",
        "group",
        "head",
        "ids_field",
        "prefix",
        "tag",
    )

    def __init__(
        self,
        prefix: str,
        ids_field: bytes | None = None,
        group: str | None = None,
        *,
        tagged: bool = True,
    ) -> None:
        """``ids_field``: the hash field of the model's first range-indexed field, if it
        has one. Its range index holds every entity already (``+inf`` without a value),
        so it is the model's all-ids index too, and ``H#all`` is not kept. ``group``:
        the model's slot group (``None``: the model is a group of its own). ``tagged``
        false gives the layout before hash tags (see :meth:`untagged`)."""
        self.prefix = prefix
        self.group = group
        self.ids_field = ids_field
        #: The hash tag's text: every key of the layout hashes to the slot of this.
        self.tag = (prefix if group is None else group).encode()
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
        self._namespace = p + b"#"
        self._marker = p + b"#x"
        self._build = p + b"#b:"

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

    def range_index(self, field: bytes) -> bytes:
        return self._range + field

    def unique_stripe(self, field: bytes, value: bytes) -> bytes:
        """The hash that maps a unique field's ``value`` (index form) to its owner's id."""
        return self._unique + field + b":%d" % (zlib.crc32(value) % UNIQUE_STRIPES)

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
        for kind, start in (("eq", self._eq), ("unique", self._unique)):
            if key.startswith(start):
                field, colon, value = key[len(start) :].partition(b":")
                if not colon or not _FIELD_RE.fullmatch(field):
                    return ParsedKey("unknown")
                if kind == "unique" and not _stripe(value, UNIQUE_STRIPES):
                    kind = "old_unique"  # a key per value, as redisca wrote before 2.0
                return ParsedKey(kind, field, value)
        if key.startswith(self._guard):
            stripe = key[len(self._guard) :]
            if _stripe(stripe, GUARD_STRIPES):
                return ParsedKey("guard", value=stripe)
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


#: Kinds of the live index keys a reindex rebuilds.
INDEX_KINDS = frozenset({"all", "eq", "range", "unique"})


class ParsedKey(NamedTuple):
    """A key's kind (``entity``, ``all``, ``eq``, ``range``, ``unique`` (a stripe),
    ``guard``, ``scratch``, ``marker``, ``build``, ``build_dir``, ``old_unique`` (a
    unique key of the layout before 2.0, a key per value), ``unknown`` in the model's
    namespace, or ``foreign``), with its field, its value (an entity's id, an index's
    value, a stripe's number, the live key a build key replaces) and a build key's run.
    A stripe name is also what an old unique key of a value such as ``7`` was: only its
    Redis type (hash, not string) tells them apart."""

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
    "NAME_RE",
    "NO_VALUE",
    "RUN_RE",
    "UNIQUE_STRIPES",
    "VERSION_FIELD",
    "KeyLayout",
    "ParsedKey",
    "check_name",
]

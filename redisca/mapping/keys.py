"""The key layout: the one place that builds Redis key names.

Every key of a model starts with its prefix ``P``, which holds neither ``:``
nor ``#``; so the first of those characters ends the prefix. Entity hashes
continue with ``:`` (``P:<id>``), everything redisca keeps beside them with
``#`` (``P#all``, ``P#i:<field>:<value>``, ``P#r:<field>``, ``P#u:<field>:<value>``,
``P#t:<token>``, and while a reindex runs ``P#x``, ``P#b:<run>`` and
``P#b:<run>:<index key without P#>``). Field names hold no ``:``, so the value
is the whole remainder of an index key. No id or value can make two things
share a key. See ``docs/keylayout.rst``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import NamedTuple

from ..errors import DecodeError, MappingError
from .codecs import decode_int

NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_FIELD_RE = re.compile(rb"[A-Za-z0-9_.\-]+")
#: A reindex run's token: it names the run's build keys, so it holds no ``:``.
RUN_RE = re.compile(rb"[0-9a-f]+")

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
        "_build",
        "_entity",
        "_eq",
        "_marker",
        "_namespace",
        "_range",
        "_tmp",
        "_unique",
        "prefix",
    )

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        p = prefix.encode()
        self._entity = p + b":"
        self._all = p + b"#all"
        self._eq = p + b"#i:"
        self._range = p + b"#r:"
        self._unique = p + b"#u:"
        self._tmp = p + b"#t:"
        self._namespace = p + b"#"
        self._marker = p + b"#x"
        self._build = p + b"#b:"

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
        return self._all

    def eq_index(self, field: bytes, value: bytes) -> bytes:
        return self._eq + field + b":" + value

    def range_index(self, field: bytes) -> bytes:
        return self._range + field

    def unique(self, field: bytes, value: bytes) -> bytes:
        return self._unique + field + b":" + value

    def scratch(self) -> bytes:
        """A fresh key for one query's intermediate results."""
        return self._tmp + os.urandom(12).hex().encode()

    def entity_prefix_len(self) -> int:
        return len(self._entity)

    # -- reindex (redisca.maintenance) ---------------------------------------

    @property
    def marker(self) -> bytes:
        """``P#x``: exists while a reindex rebuilds this model's indexes."""
        return self._marker

    def build_dir(self, run: bytes) -> bytes:
        """``P#b:<run>``: the run's build keys and the live key each one replaces."""
        return self._build + _run(run)

    def build(self, run: bytes, live: bytes) -> bytes:
        """The key a reindex run builds to replace the live index key ``live``."""
        return self.builder(run)(live)

    def builder(self, run: bytes) -> Callable[[bytes], bytes]:
        """:meth:`build` for one run, its token checked once (a reindex builds many keys)."""
        start = self._build + _run(run) + b":"
        cut = len(self._namespace)
        kinds = (self._all, self._eq, self._range, self._unique)

        def build(live: bytes) -> bytes:
            if not live.startswith(kinds) or (live.startswith(self._all) and live != self._all):
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

    def unique_pattern(self, field: bytes) -> bytes:
        """``SCAN MATCH`` pattern of one field's unique keys (field names hold no glob)."""
        return self._unique + field + b":*"

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
                if colon and _FIELD_RE.fullmatch(field):
                    return ParsedKey(kind, field, value)
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
    """A key's kind (``entity``, ``all``, ``eq``, ``range``, ``unique``, ``scratch``,
    ``marker``, ``build``, ``build_dir``, ``unknown`` in the model's namespace, or
    ``foreign``), with its field, its value (an entity's id, an index's value, the live
    key a build key replaces) and a build key's run."""

    kind: str
    field: bytes | None = None
    value: bytes | None = None
    run: bytes | None = None


def _run(run: bytes) -> bytes:
    if not RUN_RE.fullmatch(run):
        raise ValueError(f"a reindex run token is lowercase hex, got {run!r}")
    return run


__all__ = [
    "EXISTS_FIELD",
    "INDEX_KINDS",
    "NAME_RE",
    "RUN_RE",
    "VERSION_FIELD",
    "KeyLayout",
    "ParsedKey",
    "check_name",
]

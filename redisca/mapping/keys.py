"""The key layout: the one place that builds Redis key names.

Every key of a model starts with its prefix ``P``, which holds neither ``:``
nor ``#``; so the first of those characters ends the prefix. Entity hashes
continue with ``:`` (``P:<id>``), everything redisca keeps beside them with
``#`` (``P#all``, ``P#i:<field>:<value>``, ``P#r:<field>``, ``P#u:<field>:<value>``,
``P#t:<token>``). Field names hold no ``:``, so the value is the whole
remainder of an index key. No id or value can make two things share a key.
See ``docs/keylayout.rst``.
"""

from __future__ import annotations

import os
import re

from ..errors import MappingError

NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")

#: Hash fields redisca keeps for itself start with ``#``: user fields cannot.
VERSION_FIELD = b"#v"
#: Keeps a hash alive when an entity has no field set (Redis drops empty hashes).
EXISTS_FIELD = b"#e"


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

    __slots__ = ("_all", "_entity", "_eq", "_range", "_tmp", "_unique", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        p = prefix.encode()
        self._entity = p + b":"
        self._all = p + b"#all"
        self._eq = p + b"#i:"
        self._range = p + b"#r:"
        self._unique = p + b"#u:"
        self._tmp = p + b"#t:"

    def entity(self, id: str) -> bytes:
        return self._entity + id.encode()

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


__all__ = ["EXISTS_FIELD", "NAME_RE", "VERSION_FIELD", "KeyLayout", "check_name"]

"""The layout before hash tags: what ``migrate`` does to each of its keys.

Before hash tags, redisca named an entity ``P:<id>`` and kept its indexes among
the ``P:*`` keys (redisca 1.x: sets, sorted sets, strings) or under ``P#*`` (2.0
development builds); :meth:`~redisca.mapping.keys.KeyLayout.untagged` names them.
``migrate`` moves and deletes them, ``check`` reports each one by what ``migrate``
would do to it, and ``stats`` counts them: the one rule lives here.
"""

from __future__ import annotations

from ..mapping.keys import KeyLayout

#: Types of the keys redisca 1.x kept beside its hashes in ``P:*`` (its indexes).
OLD_INDEX_TYPES = frozenset({b"set", b"zset", b"string"})


def fate(old: KeyLayout, key: bytes, kind: bytes) -> str | None:
    """What ``migrate`` does to ``key`` of the untagged layout ``old``, given its
    ``TYPE``: ``"move"`` (an entity hash), ``"delete"`` (an old index key: 1.x's
    sets, sorted sets and strings among the ``P:*`` keys, any ``P#*`` key), or
    ``None`` (it leaves it: gone, or a type redisca never wrote there)."""
    if kind == b"none":
        return None
    if old.parse(key).kind == "entity":
        if kind == b"hash":
            return "move"
        return "delete" if kind in OLD_INDEX_TYPES else None
    return "delete"


__all__ = ["OLD_INDEX_TYPES", "fate"]

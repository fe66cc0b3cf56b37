"""A read-only set of instances compared by identity (attrs instances may be unhashable)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class IdentitySet:
    """``session.new`` / ``dirty`` / ``deleted``: membership by ``is``, not ``==``."""

    __slots__ = ("_members",)

    def __init__(self, objects: Iterable[Any] = ()) -> None:
        self._members = {id(obj): obj for obj in objects}

    def __contains__(self, obj: object) -> bool:
        return self._members.get(id(obj)) is obj

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._members.values()))

    def __len__(self) -> int:
        return len(self._members)

    def __bool__(self) -> bool:
        return bool(self._members)

    def __repr__(self) -> str:
        return f"IdentitySet({list(self._members.values())!r})"


__all__ = ["IdentitySet"]

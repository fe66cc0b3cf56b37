"""``redisca.inspect``: the mapper of a class, the tracking state of an instance."""

from __future__ import annotations

from typing import Any, overload

from .mapping.mapper import Mapper, mapper_of
from .session.state import InstanceState, state_for


@overload
def inspect(subject: type) -> Mapper: ...  # type: ignore[overload-overlap]


@overload
def inspect(subject: object) -> InstanceState: ...


def inspect(subject: Any) -> Mapper | InstanceState:
    """``inspect(User).prefix``; ``inspect(user).key`` / ``.status`` (1.x's getprefix/getkey)."""
    if isinstance(subject, type):
        return mapper_of(subject)
    return state_for(subject)


__all__ = ["inspect"]

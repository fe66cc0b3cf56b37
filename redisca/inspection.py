"""``redisca.inspect``: the mapper of a class, the tracking state of an instance."""

from __future__ import annotations

from typing import Any, overload

from .mapping.instrument import state_of
from .mapping.mapper import Mapper, mapper_of
from .session.state import InstanceState, detached_state


@overload
def inspect(subject: type) -> Mapper: ...  # type: ignore[overload-overlap]


@overload
def inspect(subject: object) -> InstanceState: ...


def inspect(subject: Any) -> Mapper | InstanceState:
    """``inspect(User).prefix``; ``inspect(user).key`` / ``.status`` (1.x's getprefix/getkey)."""
    if isinstance(subject, type):
        return mapper_of(subject)
    state = state_of(subject)
    if state is not None:
        return state  # type: ignore[no-any-return]
    mapper = mapper_of(type(subject))
    detached = detached_state(subject, mapper)
    if detached is not None:
        return detached[0]
    return InstanceState(subject, mapper, mapper.identity(subject))


__all__ = ["inspect"]

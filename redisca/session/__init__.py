"""Session layer: instance state, identity map, unit of work, plan, executor, queries."""

from .executor import DEFAULT_RETRIES
from .query import Query
from .session import CommandResult, Session
from .state import InstanceState

__all__ = ["DEFAULT_RETRIES", "CommandResult", "InstanceState", "Query", "Session"]

"""redisca 2: a unit-of-work object mapper for Redis.

Map attrs classes with a :class:`Registry`, work with them through a
:class:`Session`, and commit every change in one ``MULTI``/``EXEC``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import conf
from .errors import (
    BulkAddError,
    BulkTransaction,
    ClusterNodeError,
    ConflictError,
    DecodeError,
    DetachedInstanceError,
    IntegrityError,
    InvalidRequestError,
    MappingError,
    MissingLoadError,
    MultipleResultsFound,
    NotFound,
    OperationalError,
    QueryError,
    RediscaError,
    StaleDataError,
    UncommittedChangesWarning,
    UniqueViolation,
    ValidationError,
)
from .ids import hexid, intid
from .inspection import inspect
from .lowlevel import Hash, Key
from .mapping import (
    METADATA_KEY,
    Boolean,
    Codec,
    Date,
    DateTime,
    Email,
    Field,
    Float,
    Integer,
    List,
    MappedField,
    Mapper,
    MD5Pass,
    Password,
    PasswordHash,
    Reference,
    References,
    Registry,
    Set,
    String,
    register_codec,
)
from .session import CommandResult, InstanceState, Query, Session

if TYPE_CHECKING:
    from .flask import FlaskRedisca as FlaskRedisca

__version__ = "2.0.0.dev0"


def __getattr__(name: str) -> Any:
    """``redisca.FlaskRedisca`` (redisca 1.x's import) imports Flask on first use only,
    so ``import redisca`` works without Flask installed."""
    if name == "FlaskRedisca":
        from .flask import FlaskRedisca

        return FlaskRedisca
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "METADATA_KEY",
    "Boolean",
    "BulkAddError",
    "BulkTransaction",
    "ClusterNodeError",
    "Codec",
    "CommandResult",
    "ConflictError",
    "Date",
    "DateTime",
    "DecodeError",
    "DetachedInstanceError",
    "Email",
    "Field",
    "Float",
    "Hash",
    "InstanceState",
    "Integer",
    "IntegrityError",
    "InvalidRequestError",
    "Key",
    "List",
    "MD5Pass",
    "MappedField",
    "Mapper",
    "MappingError",
    "MissingLoadError",
    "MultipleResultsFound",
    "NotFound",
    "OperationalError",
    "Password",
    "PasswordHash",
    "Query",
    "QueryError",
    "RediscaError",
    "Reference",
    "References",
    "Registry",
    "Session",
    "Set",
    "StaleDataError",
    "String",
    "UncommittedChangesWarning",
    "UniqueViolation",
    "ValidationError",
    "conf",
    "hexid",
    "inspect",
    "intid",
    "register_codec",
]

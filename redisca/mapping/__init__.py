"""Mapping layer: registry, mappers, field helpers, codecs and the key layout.

Nothing here imports the session layer or talks to Redis.
"""

from .codecs import Codec, codec_for, register_codec
from .expressions import And, Condition, Expression, Or, Ordering
from .fields import (
    METADATA_KEY,
    Boolean,
    Date,
    DateTime,
    Email,
    Field,
    FieldSpec,
    Float,
    Integer,
    List,
    Reference,
    References,
    Set,
    String,
)
from .keys import KeyLayout
from .mapper import MappedField, Mapper, mapper_of
from .passwords import MD5Pass, Password, PasswordHash
from .registry import Registry

__all__ = [
    "METADATA_KEY",
    "And",
    "Boolean",
    "Codec",
    "Condition",
    "Date",
    "DateTime",
    "Email",
    "Expression",
    "Field",
    "FieldSpec",
    "Float",
    "Integer",
    "KeyLayout",
    "List",
    "MD5Pass",
    "MappedField",
    "Mapper",
    "Or",
    "Ordering",
    "Password",
    "PasswordHash",
    "Reference",
    "References",
    "Registry",
    "Set",
    "String",
    "codec_for",
    "mapper_of",
    "register_codec",
]

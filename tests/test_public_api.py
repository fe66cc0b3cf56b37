"""The names users write against (the contract's) are all there, with their kinds."""

from __future__ import annotations

import builtins

import pytest

import redisca

HELPERS = [
    "String",
    "Email",
    "Integer",
    "Float",
    "Boolean",
    "DateTime",
    "Date",
    "Reference",
    "MD5Pass",
    "Password",
    "Field",
]
ERRORS = {
    "RediscaError": Exception,
    "MappingError": TypeError,
    "ValidationError": ValueError,
    "DecodeError": ValueError,
    "NotFound": LookupError,
    "MultipleResultsFound": LookupError,
    "QueryError": ValueError,
    "IntegrityError": redisca.RediscaError,
    "UniqueViolation": redisca.IntegrityError,
    "ConflictError": redisca.RediscaError,
    "StaleDataError": redisca.ConflictError,
    "OperationalError": redisca.RediscaError,
    "ClusterNodeError": redisca.OperationalError,
}


@pytest.mark.parametrize("name", HELPERS)
def test_field_helpers_are_callables(name: str) -> None:
    assert callable(getattr(redisca, name))


@pytest.mark.parametrize(("name", "base"), ERRORS.items())
def test_one_exception_family(name: str, base: type) -> None:
    error = getattr(redisca, name)
    assert issubclass(error, redisca.RediscaError) and issubclass(error, base)
    assert name in redisca.__all__


def test_core_names() -> None:
    for name in ("Registry", "Session", "Query", "Key", "Hash", "inspect", "hexid", "intid"):
        assert callable(getattr(redisca, name)), name
    assert redisca.conf.db is None or hasattr(redisca.conf.db, "execute_command")
    assert isinstance(redisca.hexid(), str) and isinstance(redisca.intid(), int)


def test_errors_do_not_shadow_builtins() -> None:
    assert not set(redisca.__all__) & set(dir(builtins))

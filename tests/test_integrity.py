"""Referential integrity of ``Reference(cls, on_delete=...)``: the mapping rules."""

from __future__ import annotations

import attrs
import pytest

import redisca
from redisca import MappingError, Reference, Registry, String

registry = Registry()


@registry.mapped(prefix="ico")
@attrs.define
class Company:
    name: str = String()
    id: str | None = None


@registry.mapped(prefix="iusr")
@attrs.define
class User:
    name: str = String()
    company: Company | None = Reference(Company, index=True, on_delete="restrict", default=None)
    id: str | None = None


@registry.mapped(prefix="ipost")
@attrs.define
class Post:
    title: str = String()
    author: User | None = Reference(User, index=True, on_delete="cascade", default=None)
    editor: User | None = Reference(User, index=True, default=None)
    id: str | None = None


def test_on_delete_needs_an_index() -> None:
    other = Registry()
    with pytest.raises(MappingError, match="needs index=True"):

        @other.mapped(prefix="bad")
        @attrs.define
        class Bad:
            company: Company | None = Reference(Company, on_delete="cascade", default=None)
            id: str | None = None


def test_on_delete_value_is_checked() -> None:
    with pytest.raises(MappingError, match="on_delete='nothing'"):
        Reference(Company, index=True, on_delete="nothing")


def test_incoming_references_per_target_mapper() -> None:
    company, user = registry.resolve(Company), registry.resolve(User)
    assert [f.name for f in registry.incoming(company)] == ["company"]
    # Post.editor has no on_delete: the commit has nothing to enforce for it.
    assert [(f.mapper.class_, f.name) for f in registry.incoming(user)] == [(Post, "author")]
    assert registry.resolve(User).fields[1].on_delete == "restrict"


def test_integrity_error_is_a_value_error_and_exported() -> None:
    assert issubclass(redisca.IntegrityError, ValueError)
    assert issubclass(redisca.UniqueViolation, redisca.IntegrityError)
    exc = redisca.IntegrityError("x", referrer="iusr:u1", field="company", target="ico:c1")
    assert (exc.referrer, exc.field, exc.target) == ("iusr:u1", "company", "ico:c1")

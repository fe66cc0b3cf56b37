"""The contract's example models, shared by test modules (``from models import ...``).

They live in their own registry; a test module needing other classes maps them
in a registry of its own, so prefixes never clash.
"""

from __future__ import annotations

from datetime import UTC, datetime

import attrs

from redisca import DateTime, Email, Integer, Reference, Registry, String

registry = Registry()


@registry.mapped(prefix="co")
@attrs.define
class Company:
    name: str = String(index=True, unique=True, maxlen=100)
    id: str | None = None


@registry.mapped(prefix="usr")
@attrs.define
class User:
    email: str = Email(field="eml", index=True, unique=True)
    age: int | None = Integer(minval=0, maxval=200, index=True, default=None)
    created: datetime = DateTime(new=lambda: datetime.now(UTC))
    company: Company | None = Reference(Company, index=True, default=None)
    nickname: str | None = None
    id: str | None = None


__all__ = ["Company", "User", "registry"]

"""Query code as a strictly typed application writes it: mypy checks this module in CI
(``files`` in setup.cfg's ``[mypy]``) and ``test_typed_queries.py`` runs it on Redis.

``User.age >= 18`` is a ``bool`` to a type checker, and class access to a slotted
attribute is an error to mypy; ``redisca.inspect(Member).attrs`` gives the same
attributes typed as what they are, so none of this needs a cast or an ignore.
"""

from __future__ import annotations

import attrs

import redisca
from redisca import Integer, Registry, Session, Set, String

registry = Registry()


@registry.mapped(prefix="tq")
@attrs.define
class Member:
    name: str = String(index=True)
    age: int | None = Integer(index=True, default=None)
    tags: set[str] = Set(str, index=True)
    id: str | None = None


#: The typed handle, made once per module as one would in an application.
M = redisca.inspect(Member).attrs


def oldest(session: Session, limit: int) -> list[Member]:
    return session.query(Member).filter(M.age >= 18).order_by(M.age.desc()).limit(limit).all()


def named(session: Session, name: str) -> Member | None:
    return session.query(Member).filter(M.name == name).first()


def aged_between(session: Session, low: int, high: int) -> int:
    return session.query(Member).filter(M.age.between(low, high)).count()


def young_or_tagged(session: Session, tag: str) -> list[str]:
    members = session.query(Member).filter((M.age < 18) | M.tags.contains(tag)).all()
    return sorted(m.name for m in members)


def among(session: Session, names: list[str]) -> list[Member]:
    return session.query(Member).filter(M.name.in_(names), M.age > 0).order_by(M.age).all()


def by_id(session: Session, ident: str) -> Member:
    return session.query(Member).filter(M.id == ident).one()

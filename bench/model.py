"""The benchmark's entities and the data set both sides write.

``User`` has every kind of field the issue asks for: a unique ``Email`` (its key
``usr#u:eml:<address>``), a range-indexed ``age`` (``usr#r:age``), a plain
``name``, a ``DateTime`` and an indexed reference to a ``Company``
(``usr#i:company:<id>``).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import attrs

from redisca import DateTime, Email, Integer, Reference, Registry, String, inspect

registry = Registry()


@registry.mapped(prefix="co")
@attrs.define
class Company:
    name: str = String(index=True, unique=True)
    id: str | None = None


@registry.mapped(prefix="usr")
@attrs.define
class User:
    email: str = Email(field="eml", unique=True)
    age: int | None = Integer(minval=0, maxval=200, index=True, default=None)
    name: str = String(default="")
    created: datetime = DateTime(new=lambda: datetime.now(UTC))
    company: Company | None = Reference(Company, index=True, default=None)
    id: str | None = None


#: ``User``'s query attributes, typed for mypy (``U.age.between(1, 9)``).
U = inspect(User).attrs

COMPANIES = 10
START = datetime(2024, 1, 1, tzinfo=UTC)


class Row(NamedTuple):
    """One user's values, as an application would hold them before saving."""

    email: str
    age: int
    name: str
    created: datetime
    company: str  # the company's id

    def hset(self, key: bytes) -> tuple[bytes, ...]:
        """The HSET of this user's hash as a hand-written pipeline sends it (both baselines)."""
        return (
            b"HSET",
            key,
            b"eml",
            self.email.encode(),
            b"age",
            b"%d" % self.age,
            b"name",
            self.name.encode(),
            b"created",
            b"%d" % int(self.created.timestamp()),
            b"company",
            self.company.encode(),
        )


class DataSet(NamedTuple):
    rows: Collection[Row]
    #: Emails looked up by the find-by-unique phase.
    lookups: list[str]
    #: (low, high) ages of the range phase's queries.
    windows: list[tuple[int, int]]
    #: Values written by the update phases, one per row.
    new_names: list[str]
    new_ages: list[int]


def company_ids() -> list[str]:
    return [f"c{i}" for i in range(COMPANIES)]


def iter_rows(n: int, rnd: random.Random) -> Iterator[Row]:
    """The rows one by one (a bulk load of a million needs no list of them)."""
    companies = company_ids()
    for i in range(n):
        yield Row(
            f"User{i}@Example.com",
            rnd.randrange(100),
            f"name {i}",
            START + timedelta(seconds=i),
            companies[i % COMPANIES],
        )


def dataset(n: int, *, lookups: int = 1000, queries: int = 100, seed: int = 1) -> DataSet:
    """The same values for both sides and every round (a fixed seed)."""
    rnd = random.Random(seed)
    rows = list(iter_rows(n, rnd))
    found = [rows[i].email for i in (rnd.randrange(n) for _ in range(lookups))]
    windows = []
    for _ in range(queries):
        low = rnd.randrange(90)
        windows.append((low, low + 10))
    return DataSet(
        rows,
        found,
        windows,
        [f"renamed {i}" for i in range(n)],
        [(row.age + 1) % 100 for row in rows],
    )


class LazyRows:
    """``n`` rows made as they are read: a million-user load holds none of them."""

    def __init__(self, n: int, seed: int = 1) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Row]:
        return iter_rows(self.n, random.Random(self.seed))

    def __contains__(self, row: object) -> bool:
        return any(row == r for r in self)

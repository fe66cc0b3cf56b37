"""migrate: data of the layout before hash tags (redisca 1.x's ``P:<id>`` hashes and
index keys, 2.0 development builds' ``P#...`` indexes) moves to ``{P}:<id>``, indexes are
rebuilt, nothing the application wrote since is overwritten, and a second run is a no-op.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import as_str, assert_indexes_consistent
from models import Company, User, registry

import redisca
from redisca import Session
from redisca.maintenance import check, migrate

TESTS = Path(__file__).parent


@pytest.fixture
def r(make_client: Any) -> redis.Redis:
    client: redis.Redis = make_client()
    client.flushall()
    return client


def old_data(r: redis.Redis) -> None:
    """Two users and a company as the layout before hash tags held them: 1.x's index
    keys among the ``P:*`` keys, and 2.0 development builds' ``P#...`` keys."""
    r.hset("usr:1", mapping={"eml": "Ann@x.org", "age": "33", "company": "acme"})
    r.hset("usr:a{b}:c", mapping={"eml": "bob@x.org", "age": "40"})  # braces in the id
    r.hset("co:acme", mapping={"name": "Acme"})
    r.sadd("usr:eml:ann@x.org", "1")  # 1.x's equality index, in the entities' namespace
    r.zadd("usr:age", {"1": 33, "a{b}:c": 40})  # 1.x's range index
    r.zadd("usr#r:age", {"1": 33})  # a 2.0 development build's index
    r.hset("usr#u:eml:7", "ann@x.org", "1")


def test_old_hashes_move_indexes_are_rebuilt_and_nothing_old_is_left(r: redis.Redis) -> None:
    old_data(r)
    report = migrate(registry, r)
    assert report.ok, report.problems
    done = {m.prefix: (m.moved, m.kept, m.dropped) for m in report.models}
    assert done["usr"] == (2, 0, 4) and done["co"] == (1, 0, 0)
    names = {as_str(k) for k in r.scan_iter(count=1000)}
    assert not [k for k in names if not k.startswith("{")], names  # every key is tagged
    assert as_str(r.hget("{usr}:a{b}:c", "eml")) == "bob@x.org"
    assert check(registry, r).ok
    for mapper in (redisca.inspect(User), redisca.inspect(Company)):
        assert_indexes_consistent(r, mapper)
    with Session(r) as s:
        ann = s.query(User).filter(User.email == "ann@X.org").one()
        assert ann.id == "1" and ann.company.name == "Acme"
        assert [u.id for u in s.query(User).order_by(User.age)] == ["1", "a{b}:c"]
    again = migrate(registry, r)
    assert again.ok and sum(m.moved + m.dropped for m in again.models) == 0


def test_an_entity_written_under_the_new_name_is_never_overwritten(r: redis.Redis) -> None:
    old_data(r)
    with Session(r) as s:  # the upgraded application made user 1 before the migration
        s.add(User("new@x.org", age=1, id="1"))
        s.commit()
    report = migrate(registry, r)
    assert [p.kind for p in report.problems] == ["old_layout"]
    problem = report.problems[0]
    assert problem.key == "usr:1" and "{usr}:1 exists already" in problem.detail
    assert next(m for m in report.models if m.prefix == "usr").kept == 1
    assert as_str(r.hget("{usr}:1", "eml")) == "new@x.org"  # kept as the application wrote it
    assert as_str(r.hget("usr:1", "eml")) == "Ann@x.org"  # the old one waits for a decision
    with Session(r) as s:
        assert s.query(User).filter(User.email == "new@x.org").one().id == "1"


def test_the_command_line_migrates_with_json_output(r: redis.Redis, redis_url: str) -> None:
    old_data(r)
    env = {**os.environ, "PYTHONPATH": str(TESTS), "REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "redisca", "migrate", "models:registry", "--json"],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and {m["prefix"]: m["moved"] for m in report["models"]} == {
        "co": 1,
        "usr": 2,
    }
    assert report["reindex"]["ok"]
    assert r.exists("{usr}:1") and not r.exists("usr:1")

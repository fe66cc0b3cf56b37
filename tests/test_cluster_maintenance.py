"""Maintenance tasks and the low-level API on a real 3-master cluster.

``stats``, ``check``, ``reindex`` and ``migrate`` SCAN the master serving each model's
slot (tagged keys) or every master (the layout before hash tags); the test models'
slots are on three different masters. A slot being migrated is refused for the model
whose slot it is, covered for the old layout's scans (docs/cluster.rst, Maintenance).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
from clusterhelpers import migrate_slot, model_slot, node_client
from models import Company, User, registry
from redis.cluster import RedisCluster
from redis.crc import key_slot
from test_check import CASES, kinds, seed

import redisca
from redisca import ClusterNodeError, Hash, Key, Registry, Session, String
from redisca.cli import FAILED, OK, PROBLEMS
from redisca.embedded import EmbeddedCluster, EmbeddedServer
from redisca.maintenance import MaintenanceError, check, migrate, reindex, stats
from redisca.maintenance.placement import pattern_slot

TESTS = Path(__file__).parent

notes = Registry()


@notes.mapped(prefix="post")
@attrs.define
class Note:
    """A model on the third master (User's and Company's are on the other two)."""

    title: str = String(index=True)
    id: str | None = None


MODELS = (Company, User, Note)


@pytest.fixture(params=["bytes-resp3", "str-resp2"])
def rc(request: pytest.FixtureRequest, cluster: EmbeddedCluster) -> Iterator[RedisCluster]:
    mode = {"bytes-resp3": {"protocol": 3}, "str-resp2": {"decode_responses": True, "protocol": 2}}
    client = cluster.client(**mode[request.param])
    yield client
    client.close()


@pytest.fixture
def rc1(cluster: EmbeddedCluster) -> Iterator[RedisCluster]:
    """One client mode, for the slower tests."""
    client = cluster.client()
    yield client
    client.close()


def _seed_notes(client: Any, n: int) -> None:
    with Session(client) as s:
        s.add_all(Note(f"t{i % 7}", id=f"n{i}") for i in range(n))
        s.commit()


def test_the_models_are_on_three_masters(cluster: EmbeddedCluster) -> None:
    assert len({cluster.node_for_slot(model_slot(cls)).port for cls in MODELS}) == 3


def test_a_pattern_names_one_slot_only_when_its_tag_is_literal() -> None:
    assert pattern_slot(b"{usr}:*") == key_slot(b"{usr}")
    assert pattern_slot(b"{g}usr[:#]*") == key_slot(b"{g}")
    for pattern in (b"usr:*", b"usr[:#]*", b"{*}:*", b"{}:*", b"{usr:*", b"[{]usr}:*"):
        assert pattern_slot(pattern) is None, pattern


# -- stats ------------------------------------------------------------------------------


def test_stats_counts_every_entity_as_on_one_server(
    rc: RedisCluster, redis_server: EmbeddedServer
) -> None:
    single = redis_server.client()
    single.flushall()
    for client in (rc, single):
        seed(client, 40)
        _seed_notes(client, 25)
    on_cluster = stats(MODELS, rc).as_dict()["models"]
    on_one = stats(MODELS, single).as_dict()["models"]
    single.flushall()
    single.close()
    shape = ("model", "entities", "ids", "index_keys", "index_entries", "reindexing")
    assert [{k: m[k] for k in shape} for m in on_cluster] == [
        {k: m[k] for k in shape} for m in on_one
    ]
    assert [(m["entities"], m["ids"]) for m in on_cluster] == [(1, 1), (40, 40), (25, 25)]
    assert all(m["memory_total"] > 0 for m in on_cluster)


def test_a_plain_client_on_a_cluster_node_is_refused(cluster: EmbeddedCluster) -> None:
    """Each node holds a third of the data: a task on one node alone would count a
    third (or none), so it is refused before it reads anything."""
    client = cluster.client()
    seed(client, 5)
    client.close()
    node = cluster.node_for_slot(model_slot(User))  # even the node serving the model
    with node_client(node) as plain:
        for task in (stats, check, reindex, migrate):
            with pytest.raises(ClusterNodeError, match="cluster node"):
                task(registry, plain)
        assert not plain.exists("{usr}#x")  # no reindex marker left


# -- check ------------------------------------------------------------------------------


@pytest.mark.parametrize(("corrupt", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_finds_each_problem_on_the_cluster(
    rc1: RedisCluster, corrupt: Callable[[Any], Any], expected: list[tuple[str, str, str | None]]
) -> None:
    seed(rc1)
    corrupt(rc1)
    report = check(registry, rc1)
    assert kinds(report.problems) == sorted(expected)


def test_check_is_clean_after_commits(rc: RedisCluster) -> None:
    seed(rc, 30)
    _seed_notes(rc, 30)
    with Session(rc) as s:
        users = s.query(User).all()
        for user in users[:10]:
            user.age = (user.age or 0) + 100
            user.email = f"again-{user.id}@x.org"
        for user in users[10:15]:
            s.delete(user)
        s.delete(s.get(Note, "n3"))
        s.commit()
    report = check([*registry, *notes], rc)
    assert report.ok, report.problems
    assert [m.entities for m in report.models] == [1, 25, 29]


# -- reindex ----------------------------------------------------------------------------


def _users(client: Any, n: int) -> None:
    with Session(client) as s:
        acme = Company("acme", id="c1")
        s.add_all(User(f"u{i}@x.org", age=i % 200, company=acme, id=str(i)) for i in range(n))
        s.commit()


def test_reindex_while_a_thread_commits_then_check_is_clean(rc1: RedisCluster) -> None:
    _users(rc1, 1500)
    rc1.delete("{usr}#r:age", "{co}#all")  # something to rebuild
    stop = threading.Event()
    errors: list[BaseException] = []
    commits = [0]

    def writer() -> None:
        rng = random.Random(7)
        try:
            while not stop.is_set():
                with Session(rc1) as s:
                    user = s.get(User, str(rng.randrange(1500)))
                    if user is None:
                        continue
                    user.age = rng.randrange(200)
                    if rng.random() < 0.3:
                        user.email = f"w{commits[0]}@x.org"
                    if rng.random() < 0.1:
                        s.add(User(f"new{commits[0]}@x.org", age=1))
                    s.commit()
                commits[0] += 1
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    reports = []
    deadline = time.monotonic() + 60
    try:  # reindex again until the runs overlapped 20 commits (a fast server ends a run
        # of 1,500 users before a slowed writer commits that often)
        while not reports or (commits[0] <= 20 and time.monotonic() < deadline and not errors):
            reports.append(reindex(registry, rc1, batch=50))
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert all(report.ok for report in reports), [r.problems for r in reports]
    assert commits[0] > 20, "the writer kept committing during the reindex"
    assert check(registry, rc1).ok
    with Session(rc1) as s:
        assert s.query(User).count() == stats(User, rc1).models[0].entities


def test_reindex_scripts_stay_in_the_models_slot(
    cluster: EmbeddedCluster, rc1: RedisCluster
) -> None:
    """The build keys, the marker and the switch are all in the model's slot: after a
    run, no key of the model exists on any other master."""
    seed(rc1, 50)
    report = reindex(registry, rc1)
    assert report.ok and all(m.renamed for m in report.models)
    for node in cluster.masters:
        with node_client(node) as plain:
            keys = {k.decode() for k in plain.scan_iter(count=1000)}
        for cls in (User, Company):
            tagged = {k for k in keys if k.startswith(redisca.inspect(cls).layout.head.decode())}
            if node is not cluster.node_for_slot(model_slot(cls)):
                assert not tagged


# -- migrate ----------------------------------------------------------------------------


def _old_users(client: Any, n: int) -> None:
    """Users in the layout before hash tags (``usr:<id>``), spread over every slot."""
    for i in range(n):
        client.hset(f"usr:{i}", mapping={"eml": f"old{i}@x.org", "age": str(i % 90)})
    client.sadd("usr:eml:old1@x.org", "1")  # 1.x's index keys, elsewhere again
    client.zadd("usr:age", {"1": 1})
    client.hset("co:acme", mapping={"name": "Acme"})


def test_migrate_old_data_spread_over_every_master(
    cluster: EmbeddedCluster, rc1: RedisCluster
) -> None:
    _old_users(rc1, 200)
    assert len({cluster.node_for_key(f"usr:{i}").port for i in range(200)}) == 3
    counted = {m.model: m for m in stats(registry, rc1).models}
    assert counted["User"].index_keys["old_layout"] == 202
    assert {p.kind for p in check(registry, rc1).problems} == {"old_layout"}

    report = migrate(registry, rc1)
    assert report.ok, report.problems
    done = {m.model: (m.moved, m.kept, m.dropped) for m in report.models}
    assert done == {"Company": (1, 0, 0), "User": (200, 0, 2)}
    for node in cluster.masters:
        with node_client(node) as plain:
            assert not [k for k in plain.scan_iter(count=1000) if not k.startswith(b"{")]
    assert check(registry, rc1).ok
    with Session(rc1) as s:
        assert s.query(User).count() == 200
        assert s.query(User).filter(User.email == "old7@x.org").one().id == "7"
    again = migrate(registry, rc1)
    assert again.ok and sum(m.moved + m.dropped for m in again.models) == 0


# -- a slot being migrated ----------------------------------------------------------------


@contextmanager
def _migrating(
    cluster: EmbeddedCluster, slot: int, move: list[bytes] | None = None
) -> Iterator[tuple[EmbeddedServer, EmbeddedServer]]:
    """``slot`` MIGRATING from its master to another (IMPORTING there), ``move``'s keys
    moved already; stable on its master again afterwards, with those keys moved back
    (as ``clusterhelpers.slot_moved(finish=False)`` ends; this one chooses the keys)."""
    src = cluster.node_for_slot(slot)
    dst = next(n for n in cluster.masters if n is not src)
    with node_client(src) as s, node_client(dst) as d:
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(src))
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(dst))
        if move:
            s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *move)
        try:
            yield src, dst
        finally:  # the source owns the slot again, then takes the moved keys back
            s.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
            back = d.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10_000)
            if back:
                d.execute_command("MIGRATE", "127.0.0.1", src.port, "", 0, 5000, "KEYS", *back)
            d.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


def test_a_task_on_a_model_whose_slot_is_migrating_is_refused(
    cluster: EmbeddedCluster, rc1: RedisCluster
) -> None:
    seed(rc1, 20)
    slot = model_slot(User)
    with _migrating(cluster, slot, [b"{usr}:3", b"{usr}:4"]) as (src, dst):
        for task in (stats, check, reindex):
            with pytest.raises(MaintenanceError) as info:
                task(User, rc1)
            message = str(info.value)
            assert f"slot {slot} is being migrated" in message
            assert f"{src.port} -> 127.0.0.1:{dst.port}" in message
        assert not rc1.exists("{usr}#x")  # the refused reindex left no marker
        # another model's tasks run: Company's slot is not moving
        assert check(Company, rc1).ok
        assert stats(Company, rc1).models[0].entities == 1
    assert check(registry, rc1).ok


def test_the_old_layout_in_a_migrating_slot_is_covered(
    cluster: EmbeddedCluster, rc1: RedisCluster
) -> None:
    """Old keys are scanned on every master, a migration's source before its target: an
    old hash already moved to the importing node is found, migrated and counted."""
    _old_users(rc1, 30)
    key = b"usr:5"
    with _migrating(cluster, key_slot(key), [key]):
        counted = next(m for m in stats(User, rc1).models)
        assert counted.index_keys["old_layout"] == 32
        found = {p.key for p in check(User, rc1).problems}
        assert "usr:5" in found and len(found) == 32
        report = migrate(User, rc1)
        assert report.ok, report.problems
        assert report.models[0].moved == 30
    assert check(User, rc1).ok
    with Session(rc1) as s:
        assert s.get(User, "5").email == "old5@x.org"


def test_a_migration_starting_during_a_task_is_refused_at_its_end(
    cluster: EmbeddedCluster, rc1: RedisCluster
) -> None:
    """The slot map is read when a task starts and when it ends: the model's slot
    starting to migrate meanwhile voids the result."""
    seed(rc1, 20)
    slot = model_slot(User)
    started: list[Any] = []

    def progress(model: str, phase: str, done: int, total: int | None) -> None:
        if phase == "entities" and not started:
            started.append(_migrating(cluster, slot))
            started[0].__enter__()

    try:
        with pytest.raises(MaintenanceError, match=f"slot {slot} is being migrated"):
            check(User, rc1, progress=progress)
    finally:
        started[0].__exit__(None, None, None)
    assert check(User, rc1).ok


def test_a_slot_moving_during_an_old_layout_scan_is_refused(
    cluster: EmbeddedCluster, rc1: RedisCluster
) -> None:
    """A slot that starts migrating while every master is scanned for the old layout
    was not planned for: the pass is refused (keys may have been missed)."""
    seed(rc1, 5)
    other = key_slot(b"usr:1")
    started: list[Any] = []

    def progress(model: str, phase: str, done: int, total: int | None) -> None:
        if phase == "old layout" and not started:
            started.append(_migrating(cluster, other))
            started[0].__enter__()

    try:
        with pytest.raises(MaintenanceError, match="the slot map changed"):
            check(User, rc1, progress=progress)
    finally:
        started[0].__exit__(None, None, None)


# -- Key and Hash ---------------------------------------------------------------------------


def test_key_and_hash_on_the_cluster(cluster: EmbeddedCluster, rc: RedisCluster) -> None:
    names = [f"h{i}" for i in range(30)]
    assert len({cluster.node_for_key(n).port for n in names}) == 3
    for name in names:
        h = Hash(name, rc)
        h["a"], h["n"] = "x", 5
        h.save()
        assert Key(name, rc).exists()
    for name in names:
        h = Hash(name, rc)
        assert dict(h) == (
            {"a": "x", "n": "5"} if rc.get_encoder().decode_responses else {"a": b"x", "n": b"5"}
        )
        del h["a"]
        h["b"] = 1.5
        h.save()
        assert rc.hgetall(name) in ({"n": "5", "b": "1.5"}, {b"n": b"5", b"b": b"1.5"})
        assert Hash(name, rc).delete() and not Key(name, rc).exists()
        assert not Key(name, rc).delete()


def test_hash_save_follows_a_moved_slot(cluster: EmbeddedCluster, rc1: RedisCluster) -> None:
    h = Hash("{moving}h", rc1)
    h["a"] = "1"
    h.save()
    slot = key_slot(b"{moving}h")
    src = cluster.node_for_slot(slot)
    dst = next(n for n in cluster.masters if n is not src)
    migrate_slot(cluster, slot, src, dst, finish=True)  # the client's slot map is stale now
    try:
        h["b"] = "2"
        h.save()
        with node_client(dst) as plain:
            assert plain.hgetall("{moving}h") == {b"a": b"1", b"b": b"2"}
    finally:
        migrate_slot(cluster, slot, dst, src, finish=True)


# -- the command line -------------------------------------------------------------------------


def _cli(*args: str, url: str, cluster: str = "--cluster") -> subprocess.CompletedProcess[str]:
    paths = [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    env.pop("REDIS_URL", None)
    env.pop("REDISCA_CLUSTER", None)
    command = [sys.executable, "-m", "redisca", *args, "--url", url, cluster]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_the_command_line_on_the_cluster(cluster: EmbeddedCluster, rc1: RedisCluster) -> None:
    _old_users(rc1, 40)
    seed_more = 10
    with Session(rc1) as s:
        s.add_all(User(f"new{i}@x.org", age=i) for i in range(seed_more))
        s.commit()

    done = _cli("check", "models:registry", "--json", url=cluster.url)
    assert done.returncode == PROBLEMS, done.stderr
    assert {p["kind"] for p in json.loads(done.stdout)["problems"]} == {"old_layout"}

    done = _cli("migrate", "models:registry", "--json", url=cluster.url)
    assert done.returncode == OK, done.stderr
    moved = {m["model"]: m["moved"] for m in json.loads(done.stdout)["models"]}
    assert moved == {"Company": 1, "User": 40}

    done = _cli("stats", "models:registry", "--json", url=cluster.url)
    assert done.returncode == OK, done.stderr
    counted = {m["model"]: m["entities"] for m in json.loads(done.stdout)["models"]}
    assert counted == {"Company": 1, "User": 40 + seed_more}

    rc1.delete("{usr}#r:age")
    done = _cli("reindex", "models:registry", url=cluster.url)
    assert done.returncode == OK, done.stderr
    done = _cli("check", "models:registry", url=cluster.url)
    assert done.returncode == OK, done.stdout + done.stderr
    assert "ok: no problem found" in done.stdout

    for task in ("check", "stats", "reindex", "migrate"):  # one node, as a plain client
        done = _cli(task, "models:registry", url=cluster.url, cluster="--no-cluster")
        assert done.returncode == FAILED, (task, done.stdout, done.stderr)
        assert "cluster node" in done.stderr and "--cluster" in done.stderr


def test_the_command_line_refuses_a_migrating_slot(
    cluster: EmbeddedCluster, rc1: RedisCluster
) -> None:
    seed(rc1, 3)
    slot = model_slot(User)
    with _migrating(cluster, slot):
        done = _cli("check", "models:registry", url=cluster.url)
        assert done.returncode == FAILED, done.stdout + done.stderr
        assert f"slot {slot} is being migrated" in done.stderr

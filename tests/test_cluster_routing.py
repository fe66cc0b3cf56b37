"""The routing executor on a real 3-master cluster: commits, loads and queries of models
in three slots on three masters, refusals (MOVED, ASK, TRYAGAIN, CROSSSLOT) never letting
an EXEC through unwatched, and a plain client on a cluster node told so clearly.

A concurrent write is made between a commit's reads and its ``MULTI`` by a connection
class of the test's own (a real second client writes; nothing is mocked): a commit whose
``WATCH`` did not hold would overwrite it unnoticed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
import redis
from clusterhelpers import migrate_slot, model_slot, node_client, slot_moved
from helpers import CountingConnection, RoundTripCounter, counting_client, sent_commands
from redis.cluster import RedisCluster
from redis.crc import key_slot

import redisca
from redisca import ClusterNodeError, Email, Integer, Reference, Registry, Session, String
from redisca.embedded import EmbeddedCluster, EmbeddedServer
from redisca.session import executor, routing
from redisca.session.plan import DELETE, CommitPlan, EntityChange

registry = Registry()


@registry.mapped(prefix="org")
@attrs.define
class Company:
    name: str = String(index=True, unique=True)
    id: str | None = None


@registry.mapped(prefix="usr")
@attrs.define
class User:
    email: str = Email(index=True, unique=True)
    age: int | None = Integer(index=True, default=None)
    company: Company | None = Reference(Company, index=True, default=None)
    id: str | None = None


@registry.mapped(prefix="post")
@attrs.define
class Post:
    title: str = String(index=True)
    author: User | None = Reference(User, index=True, default=None)
    likes: int = Integer(default=0)
    id: str | None = None


@registry.mapped(prefix="tag")
@attrs.define
class Tag:
    """In another slot than Post's, on the same master."""

    label: str = String(index=True)
    id: str | None = None


@registry.mapped(prefix="inv", slot_group="shop")
@attrs.define
class Invoice:
    number: str = String(index=True, unique=True)
    id: str | None = None


@registry.mapped(prefix="line", slot_group="shop")
@attrs.define
class Line:
    invoice: Invoice | None = Reference(Invoice, index=True, default=None)
    amount: int = Integer(index=True, default=0)
    id: str | None = None


MODELS = (Company, Post, User)


# -- a cluster client whose connections count, and can be made to wait ---------


class _Traffic:
    """What the cluster client's connections wrote, and a hook run once before the
    next write holding ``MULTI`` (the concurrent writer)."""

    def __init__(self) -> None:
        self.counter = RoundTripCounter()
        self.writes: list[tuple[int, int, list[list[bytes]]]] = []  # (port, conn, commands)
        self.before_multi: Callable[[], None] | None = None
        self.lock = threading.Lock()


def _counting_cluster(cluster: EmbeddedCluster, traffic: _Traffic, **kwargs: Any) -> RedisCluster:
    class Connection(CountingConnection):
        def __init__(self, *args: Any, **kw: Any) -> None:
            kw.pop("counter", None)
            super().__init__(*args, counter=traffic.counter, **kw)

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            commands = sent_commands(command)
            hook = traffic.before_multi
            if hook is not None and any(c[0].upper() == b"MULTI" for c in commands):
                traffic.before_multi = None
                hook()
            with traffic.lock:
                traffic.writes.append((self.port, id(self), commands))
            super().send_packed_command(command, check_health)

    # Only from_url hands connection_class to the node pools (redis-py 5.0 to 8.x).
    client = RedisCluster.from_url(cluster.url, connection_class=Connection, **kwargs)
    client.ping(target_nodes=RedisCluster.PRIMARIES)  # connected: handshakes not counted
    traffic.counter.reset()
    traffic.writes.clear()
    return client


@pytest.fixture(params=["bytes-resp3", "str-resp2"])
def mode(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "bytes-resp3":
        return {"decode_responses": False, "protocol": 3}
    return {"decode_responses": True, "protocol": 2}


@pytest.fixture
def traffic() -> _Traffic:
    return _Traffic()


@pytest.fixture
def rc(cluster: EmbeddedCluster, traffic: _Traffic, mode: dict[str, Any]) -> Iterator[RedisCluster]:
    client = _counting_cluster(cluster, traffic, **mode)
    yield client
    client.close()


def _node_keys(cluster: EmbeddedCluster) -> dict[int, set[bytes]]:
    """Every master's keys (port -> keys), read from the nodes themselves."""
    out: dict[int, set[bytes]] = {}
    for node in cluster.masters:
        with node_client(node) as client:
            out[node.port] = set(client.scan_iter(count=1000))
    return out


# -- the executor's own commands, routed (hand-made tagged keys) ----------------------


def _tag_on(cluster: EmbeddedCluster, node: EmbeddedServer, avoid: int = -1) -> str:
    """A hash tag whose slot ``node`` serves (and is not ``avoid``)."""
    for i in range(100_000):
        slot = key_slot(f"{{t{i}}}".encode())
        if slot != avoid and cluster.node_for_slot(slot) is node:
            return f"t{i}"
    raise AssertionError("unreachable")


def test_refusals_are_told_apart(cluster: EmbeddedCluster) -> None:
    here, there = cluster.masters[0], cluster.masters[1]
    key = "{" + _tag_on(cluster, there) + "}k"
    with node_client(here) as client:
        replies = executor.run(client, [(b"GET", key.encode()), (b"MGET", b"{a}1", b"{b}1")])
    found = routing.refusal(replies[0])
    assert found is not None and found.kind == "MOVED"
    assert found.slot == key_slot(key.encode()) and found.address == ("127.0.0.1", there.port)
    assert routing.refusal(replies[1]) is not None
    assert routing.refusal(replies[1]).kind == "CROSSSLOT"  # type: ignore[union-attr]
    for text, kind in (
        ("TRYAGAIN Multiple keys request during rehashing of slot", "TRYAGAIN"),
        ("CLUSTERDOWN The cluster is down", "CLUSTERDOWN"),
        ("ASK 3999 127.0.0.1:6381", "ASK"),
    ):  # redis-py 5's plain connections give these as bare ResponseErrors
        assert routing.refusal(redis.ResponseError(text)).kind == kind  # type: ignore[union-attr]
    assert routing.refusal(redis.ResponseError("WRONGTYPE Operation against a key")) is None
    assert routing.refusal(b"MOVED 1 x:1") is None  # a value, not an error


def test_run_is_one_round_trip_per_master_with_replies_in_order(
    cluster: EmbeddedCluster, rc: RedisCluster, traffic: _Traffic
) -> None:
    tags = [_tag_on(cluster, node) for node in cluster.masters]
    keys = [f"{{{tag}}}:{i}".encode() for i in range(4) for tag in tags]
    for key in keys:
        rc.set(key, key)
    traffic.counter.reset()
    commands = [(b"GET", key) for key in keys] + [(b"GET", b"{" + tags[0].encode() + b"}:none")]
    assert executor.run(rc, commands) == [*keys, None]
    assert traffic.counter.round_trips == 3
    with pytest.raises(redisca.InvalidRequestError, match="names no key"):
        executor.run(rc, [(b"PING",)])


def test_run_follows_a_moved_slot_and_asks_during_a_migration(
    cluster: EmbeddedCluster, rc: RedisCluster
) -> None:
    tag = _tag_on(cluster, cluster.masters[0])
    keys = [f"{{{tag}}}:{i}".encode() for i in range(5)]
    for key in keys:
        rc.set(key, key)
    commands = [(b"GET", key) for key in keys]
    assert executor.run(rc, commands) == keys  # the client's slot map is loaded
    with slot_moved(cluster, key_slot(keys[0])):
        assert executor.run(rc, commands) == keys  # MOVED: map read again, sent again
    assert executor.run(rc, commands) == keys  # moved back: MOVED again
    with slot_moved(cluster, key_slot(keys[0]), finish=False):
        assert executor.run(rc, commands) == keys  # one key moved: ASK, then ASKING


# -- the whole round: three models, three masters --------------------------------


def test_the_models_live_in_three_slots_on_three_masters(cluster: EmbeddedCluster) -> None:
    masters = {cluster.node_for_slot(model_slot(cls)).port for cls in MODELS}
    assert len(masters) == 3, "the test's models must land on different masters"


def test_commit_load_and_query_across_three_masters(
    cluster: EmbeddedCluster, rc: RedisCluster, traffic: _Traffic
) -> None:
    s = Session(rc)
    acme = Company(name="acme")
    ann = User(email="ann@example.com", age=30, company=acme)
    post = Post(title="hello", author=ann)
    s.add(post)  # the save cascade adds ann and acme
    traffic.counter.reset()
    s.commit()
    # One MULTI/EXEC per slot group, each on its master: reads + MULTI/EXEC at most.
    by_port: dict[int, int] = {}
    for port, _, _ in traffic.writes:
        by_port[port] = by_port.get(port, 0) + 1
    assert len(by_port) == 3 and max(by_port.values()) <= 2, by_port
    assert traffic.counter.round_trips <= 6
    keys = _node_keys(cluster)
    for cls, obj in ((Company, acme), (User, ann), (Post, post)):
        key = redisca.inspect(cls).layout.entity(obj.id)
        port = cluster.node_for_slot(model_slot(cls)).port
        assert key in keys[port], (cls, key, port)
        # every key of the model is on its master, in its slot
        owned = {k for k in keys[port] if key_slot(k) == model_slot(cls)}
        assert key in owned

    fresh = Session(rc)
    traffic.counter.reset()
    got = fresh.get(User, ann.id)
    assert traffic.counter.round_trips == 1
    assert got is not None and got.email == "ann@example.com" and got.company.id == acme.id
    traffic.counter.reset()
    many = fresh.get_many(Post, [post.id, "missing"])
    assert traffic.counter.round_trips == 1
    assert many[0] is not None and many[0].title == "hello" and many[1] is None
    traffic.counter.reset()
    fresh.preload([got], User.company)  # another master: one round trip there
    assert traffic.counter.round_trips == 1
    assert got.company.name == "acme"

    traffic.counter.reset()
    assert [u.id for u in fresh.query(User).filter(User.email == "ann@example.com")] == [ann.id]
    assert fresh.query(Post).filter(Post.author == ann).count() == 1
    assert fresh.query(Company).filter(Company.name == "acme").one().id == acme.id
    assert traffic.counter.round_trips <= 3

    # updates and deletes, each group on its own master
    got.age = 31
    many[0].likes = 5
    fresh.delete(fresh.get(Company, acme.id))
    fresh.commit()
    check = Session(rc)
    assert check.get(User, ann.id).age == 31
    assert check.get(Post, post.id).likes == 5
    assert check.get(Company, acme.id) is None
    assert check.query(Company).count() == 0
    assert check.query(User).filter(User.age == 31).count() == 1


def test_a_unique_value_taken_on_the_cluster_is_refused(rc: RedisCluster) -> None:
    s = Session(rc)
    s.add(User(email="dup@example.com"))
    s.commit()
    other = Session(rc)
    other.add(User(email="dup@example.com"))
    with pytest.raises(redisca.UniqueViolation):
        other.commit()


def test_bulk_add_on_the_cluster(rc: RedisCluster) -> None:
    s = Session(rc)
    companies = [Company(name=f"c{i}") for i in range(30)]
    users = [User(email=f"u{i}@example.com", company=companies[i % 30]) for i in range(60)]
    assert s.bulk_add(users, chunk_size=25) == 60
    fresh = Session(rc)
    assert fresh.query(User).count() == 60
    assert fresh.query(Company).count() == 30


def test_a_slot_group_commits_in_one_transaction(
    cluster: EmbeddedCluster, rc: RedisCluster, traffic: _Traffic
) -> None:
    assert model_slot(Invoice) == model_slot(Line) == key_slot(b"{shop}")
    s = Session(rc)
    invoice = Invoice(number="A-1")
    s.add_all([Line(invoice=invoice, amount=i) for i in range(3)])
    traffic.writes.clear()
    s.commit()
    multis = [cs for _, _, cs in traffic.writes if any(c[0] == b"MULTI" for c in cs)]
    assert len(multis) == 1, "both models of the group in one MULTI/EXEC"
    fresh = Session(rc)
    assert fresh.query(Line).filter(Line.invoice == invoice).count() == 3
    assert fresh.query(Invoice).filter(Invoice.number == "A-1").one().id == invoice.id


# -- the user's own commands -------------------------------------------------------


def test_add_command_in_its_groups_slot(cluster: EmbeddedCluster, rc: RedisCluster) -> None:
    s = Session(rc)
    user = User(email="cmd@example.com")
    s.add(user)
    tag = redisca.inspect(User).layout.tag.decode()
    counted = s.add_command("INCR", "{" + tag + "}:counter", bind=User)
    alone = s.add_command("SET", "{elsewhere}:x", "1")  # no bind: its own slot group
    kind = s.add_command("OBJECT ENCODING", "{" + tag + "}:counter", bind=User)  # key 2nd
    s.commit()
    assert counted.done and counted.value == 1
    assert kind.value in ("int", b"int")
    assert alone.done
    assert rc.get("{elsewhere}:x") in (b"1", "1")


def test_add_command_with_a_subcommand_finds_its_key(rc: RedisCluster) -> None:
    """redis-py's key finder knows subcommands (OBJECT ENCODING, MEMORY USAGE) by a str
    name only; the bytes redisca queues must still route by their key."""
    rc.set("{sub}count", 7)
    s = Session(rc)
    kind = s.add_command("OBJECT ENCODING", "{sub}count")  # two words, as redis-py splits
    usage = s.add_command("MEMORY", "USAGE", b"{sub}count")
    s.commit()
    assert kind.value in (b"int", "int") and usage.value > 0


def test_add_command_outside_the_slot_is_refused_when_queued(rc: RedisCluster) -> None:
    s = Session(rc)
    with pytest.raises(redisca.ValidationError, match="slot"):
        s.add_command("SET", "not-tagged", "1", bind=User)
    with pytest.raises(redisca.ValidationError, match="slot"):
        s.add_command("MSET", "{a}x", "1", "{b}y", "2")
    with pytest.raises(redisca.ValidationError, match="names no key"):
        s.add_command("PING")
    assert s.queued_commands() == []


def test_a_plan_spanning_slots_is_refused_before_anything_is_sent(
    rc: RedisCluster, traffic: _Traffic
) -> None:
    changes = tuple(
        EntityChange(redisca.inspect(cls), "x", DELETE, needs_read=True) for cls in (User, Post)
    )
    traffic.counter.reset()
    with pytest.raises(redisca.InvalidRequestError, match="hash slots"):
        executor.execute_commit(rc, CommitPlan(changes))
    assert traffic.counter.round_trips == 0


# -- refusals never let EXEC through unwatched --------------------------------------


def _claim(client: redis.Redis | RedisCluster, email: str, owner: str) -> None:
    """Another program's commit of the same unique value (its own session)."""
    s = Session(client)
    s.add(User(id=owner, email=email))
    s.commit()


def test_a_moved_slot_is_followed_and_the_watch_still_holds(
    cluster: EmbeddedCluster, rc: RedisCluster, traffic: _Traffic
) -> None:
    """The client's slot map is stale: its WATCH goes to the old master and is refused
    (MOVED). The commit follows to the new master, watches there, and a write made
    between its reads and its MULTI is detected: exactly one owner of the email."""
    Session(rc).get(User, "warm-up")  # the slot map is loaded and will be stale
    other = cluster.client()
    with slot_moved(cluster, model_slot(User)):
        s = Session(rc)
        s.add(User(email="race@example.com"))
        traffic.before_multi = lambda: _claim(other, "race@example.com", "rival")
        traffic.writes.clear()
        with pytest.raises(redisca.UniqueViolation) as info:
            s.commit()
        assert info.value.owner == "rival"
        watched = {port for port, _, cs in traffic.writes if any(c[0] == b"WATCH" for c in cs)}
        assert len(watched) == 2, "the first WATCH went to the old master"
        _assert_no_multi_on_the_refused_master(traffic, cluster, model_slot(User))
        owners = Session(other).query(User).filter(User.email == "race@example.com").all()
        assert [u.id for u in owners] == ["rival"]
    other.close()


def _assert_no_multi_on_the_refused_master(
    traffic: _Traffic, cluster: EmbeddedCluster, slot: int
) -> None:
    serving = cluster.node_for_slot(slot).port
    for port, _, commands in traffic.writes:
        if port != serving:  # the master that refused the WATCH never saw a MULTI
            assert not any(c[0].upper() in (b"MULTI", b"EXEC") for c in commands), commands


def test_a_slot_moved_between_reads_and_exec_is_rerouted_and_applied_once(
    cluster: EmbeddedCluster, rc: RedisCluster, traffic: _Traffic
) -> None:
    """The slot moves after the commit's WATCH and reads, before its MULTI/EXEC: that
    transaction is refused (MOVED, EXECABORT) or fails its WATCH, nothing of it applied;
    the commit is sent again to the new master and applied once."""
    seed = Session(rc)
    user = User(email="mover@example.com", age=1)
    seed.add(user)
    seed.commit()
    slot = model_slot(User)
    src = cluster.node_for_slot(slot)
    dst = next(n for n in cluster.masters if n is not src)
    s = Session(rc)
    s.get(User, user.id).age = 2  # an indexed field: WATCH and reads, then MULTI/EXEC
    applied = s.add_command("INCR", "{usr}applied", bind=User)
    traffic.before_multi = lambda: migrate_slot(cluster, slot, src, dst, finish=True)
    try:
        s.commit()
        assert cluster.node_for_slot(slot) is dst
        assert applied.value == 1 and rc.get("{usr}applied") in (b"1", "1")
        fresh = Session(rc)
        assert fresh.get(User, user.id).age == 2
        assert fresh.query(User).filter(User.age == 2).count() == 1
        assert fresh.query(User).filter(User.age == 1).count() == 0
    finally:
        if cluster.node_for_slot(slot) is not src:
            migrate_slot(cluster, slot, dst, src, finish=True)


def test_a_half_migrated_slot_waits_then_follows(
    cluster: EmbeddedCluster, rc: RedisCluster, traffic: _Traffic
) -> None:
    """While the slot is MIGRATING with one key moved, WATCH of several keys answers
    TRYAGAIN (or ASK): the commit waits and retries; once the move ends (MOVED) it
    commits on the new master, still watched."""
    seed = Session(rc)
    users = [User(email=f"m{i}@example.com") for i in range(20)]
    seed.add_all(users)
    seed.commit()
    other = cluster.client()
    with slot_moved(cluster, model_slot(User), finish=False) as finish:
        s = Session(rc)
        loaded = s.get(users[0].__class__, users[0].id)  # ASK or served: read either way
        assert loaded is not None
        loaded.email = "taken-late@example.com"
        timer = threading.Timer(0.1, finish)
        timer.start()
        traffic.before_multi = lambda: _claim(other, "taken-late@example.com", "rival")
        traffic.writes.clear()
        try:
            with pytest.raises(redisca.UniqueViolation):
                s.commit()
        finally:
            timer.join()
        refusals = [c for _, _, commands in traffic.writes for c in commands if c[0] == b"WATCH"]
        assert len(refusals) >= 2, "the first tries were refused and retried"
        fresh = Session(rc)
        assert fresh.get(User, users[0].id).email == users[0].email
        assert fresh.query(User).filter(User.email == "taken-late@example.com").one().id == (
            "rival"
        )
        assert fresh.query(User).count() == 21
    other.close()


def test_reads_follow_ask_during_a_migration(cluster: EmbeddedCluster, rc: RedisCluster) -> None:
    seed = Session(rc)
    users = [User(email=f"a{i}@example.com") for i in range(10)]
    seed.add_all(users)
    seed.commit()
    with slot_moved(cluster, model_slot(User), finish=False):
        s = Session(rc)
        got = s.get_many(User, [u.id for u in users])
        assert [u.id for u in got] == [u.id for u in users]  # moved or not: all read


# -- a plain client on a cluster node -------------------------------------------------


@pytest.fixture
def plain(cluster: EmbeddedCluster) -> Iterator[redis.Redis]:
    """A plain client on the master that serves neither User nor Company."""
    busy = {cluster.node_for_slot(model_slot(cls)).port for cls in (User, Company)}
    node = next(n for n in cluster.masters if n.port not in busy)
    client = node_client(node)
    yield client
    client.close()


def test_a_plain_client_on_a_cluster_node_gets_a_clear_error(
    cluster: EmbeddedCluster, rc: RedisCluster, plain: redis.Redis
) -> None:
    s = Session(rc)
    ann = User(email="ann@example.com")
    s.add(ann)
    s.commit()
    p = Session(plain)
    for action in (
        lambda: p.get(User, ann.id),
        lambda: p.get_many(User, [ann.id]),
        lambda: p.query(User).filter(User.email == "ann@example.com").all(),
        lambda: p.query(User).count(),
        lambda: p.query(User).filter(User.email == "ann@example.com").first(),
    ):
        with pytest.raises(ClusterNodeError, match="RedisCluster"):
            action()
    p.add(User(email="bob@example.com"))
    with pytest.raises(ClusterNodeError, match="cluster node"):
        p.commit()
    p.rollback()
    p.add(Company(name="acme"))  # MULTI/EXEC alone: refused at EXEC, nothing applied
    with pytest.raises(ClusterNodeError):
        p.commit()
    assert Session(rc).query(User).count() == 1
    assert Session(rc).query(Company).count() == 0


def test_a_plain_client_committing_two_slots_on_its_node_gets_the_error(
    cluster: EmbeddedCluster,
) -> None:
    """Two models whose slots the node serves: CROSSSLOT, never a partial commit."""
    node = cluster.node_for_slot(model_slot(Post))
    here = next(  # a key of another slot that this node serves too
        k
        for k in (f"k{i}" for i in range(10_000))
        if key_slot(k.encode()) != model_slot(Post) and cluster.node_for_key(k) is node
    )
    with node_client(node) as client:
        s = Session(client)
        ok = Post(title="t")
        s.add(ok)
        s.commit()  # one slot, served here: a plain client works on its own node
        late = Post(title="u")
        s.add(late)
        s.add_command("SET", here, "1")
        with pytest.raises(ClusterNodeError, match="CROSSSLOT"):
            s.commit()
        entity = redisca.inspect(Post).layout.entity
        assert client.exists(entity(ok.id)) == 1
        assert client.exists(entity(late.id)) == 0
        assert client.exists(here) == 0


def test_a_refused_watch_is_never_followed_by_multi(cluster: EmbeddedCluster) -> None:
    """A plain client on the master of Post and Tag (two slots): a commit changing an
    indexed field of both watches keys of two slots, which Redis refuses (CROSSSLOT)
    while the reads that follow it succeed. Nothing more is sent on that connection."""
    node = cluster.node_for_slot(model_slot(Post))
    assert cluster.node_for_slot(model_slot(Tag)) is node and model_slot(Tag) != model_slot(Post)
    counted = counting_client(node.url, plain=True)
    try:
        seed = Session(counted.client)
        post, tag = Post(title="a"), Tag(label="x")
        seed.add(post)
        seed.commit()  # one slot each: a plain client works on its own node
        seed.add(tag)
        seed.commit()
        s = Session(counted.client)
        s.get(Post, post.id).title = "b"
        s.get(Tag, tag.id).label = "y"
        counted.reset()
        with pytest.raises(ClusterNodeError, match="CROSSSLOT"):
            s.commit()
        assert counted.watches, "the commit watched"
        assert counted.round_trips == 1, "nothing after the refused WATCH + reads"
        fresh = Session(counted.client)
        assert fresh.get(Post, post.id).title == "a"
        assert fresh.get(Tag, tag.id).label == "x"
    finally:
        counted.close()


def test_a_plain_client_on_a_cluster_node_is_told_so(
    cluster: EmbeddedCluster, rc: RedisCluster
) -> None:
    """Loads and a commit through a plain client on a master that does not serve the
    entity: a ClusterNodeError naming the fix, never a missing entity or a data error."""
    key = redisca.inspect(User).layout.entity("ann")
    rc.hset(key, mapping={"email": "ann@example.com"})
    node = next(n for n in cluster.masters if n is not cluster.node_for_key(key))
    with node_client(node) as client:
        s = Session(client)
        with pytest.raises(ClusterNodeError, match="RedisCluster"):
            s.get(User, "ann")
        with pytest.raises(ClusterNodeError, match="cluster node"):
            s.get_many(User, ["ann", "bob"])
        s.add(User(id="bob", email="bob@example.com"))
        with pytest.raises(ClusterNodeError):
            s.commit()
    assert rc.exists(redisca.inspect(User).layout.entity("bob")) == 0


def test_key_and_hash_on_the_cluster(cluster: EmbeddedCluster, rc: RedisCluster) -> None:
    """``Hash.save`` is one MULTI/EXEC through redisca's executor (redis-py 5's cluster
    client has no transactions); loads and ``Key`` use the client's own commands."""
    h = redisca.Hash("{acct}:1", rc)
    h["name"], h["n"] = "ann", 5
    h.save()
    assert redisca.Key("{acct}:1", rc).exists()
    again = redisca.Hash("{acct}:1", rc)
    assert dict(again) == (
        {"name": "ann", "n": "5"} if _decodes(rc) else {"name": b"ann", "n": b"5"}
    )
    del again["n"]
    again.save()
    assert rc.hgetall("{acct}:1") in ({"name": "ann"}, {b"name": b"ann"})
    assert again.delete() and not redisca.Key("{acct}:1", rc).exists()


def _decodes(client: RedisCluster) -> bool:
    return bool(client.get_encoder().decode_responses)


def _race(clients: list[RedisCluster], email: str) -> list[str]:
    """Both clients claim ``email`` at once (a barrier before their commits)."""
    barrier = threading.Barrier(len(clients))
    outcomes: list[str] = []

    def claim(client: RedisCluster, who: str) -> None:
        s = Session(client)
        s.add(User(id=who + email, email=email))
        barrier.wait()
        try:
            s.commit()
            outcomes.append("won")
        except redisca.UniqueViolation:
            outcomes.append("lost")

    threads = [threading.Thread(target=claim, args=(c, f"w{i}")) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_two_writers_claiming_one_email_on_the_cluster_one_wins(
    cluster: EmbeddedCluster,
) -> None:
    clients = [cluster.client(), cluster.client()]
    try:
        for round_ in range(15):
            email = f"race{round_}@example.com"
            assert sorted(_race(clients, email)) == ["lost", "won"]
            owners = Session(clients[0]).query(User).filter(User.email == email).all()
            assert len(owners) == 1
    finally:
        for client in clients:
            client.close()

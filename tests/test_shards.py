"""Sharded models (``registry.mapped(shards=N)``): the layout (a shard per id, claims in
the value's shard, tags spread evenly over the slots), and commits on one server and on a
3-master cluster (one ``MULTI``/``EXEC`` per shard touched), checked from raw Redis."""

from __future__ import annotations

import zlib

import attrs
import pytest
from redis.crc import key_slot as redis_key_slot

import redisca
from redisca import Integer, InvalidRequestError, MappingError, Registry, Session, String
from redisca.maintenance import MaintenanceError, check, migrate, sweep
from redisca.mapping.keys import (
    MAX_SHARDS,
    SLOTS,
    KeyLayout,
    ShardedLayout,
    key_slot,
    shard_of,
    shard_tag,
)

registry = Registry()


@registry.mapped(prefix="usr", shards=16)
@attrs.define
class User:
    name: str = String(index=True)
    age: int | None = Integer(index=True, default=None)
    note: str | None = String(default=None)
    id: str | None = None


@registry.mapped(prefix="tag", shards=4)
@attrs.define
class Tag:
    label: str = String(index=True)
    id: str | None = None


@registry.mapped(prefix="one", shards=1)
@attrs.define
class One:
    name: str = String(index=True)
    id: str | None = None


# -- the layout -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, MAX_SHARDS + 1, 2.0, "2", True, None])
def test_shards_must_be_an_int_from_1_to_the_maximum(bad):
    with pytest.raises(MappingError, match="shards must be an int from 1 to 1024"):

        @Registry().mapped(shards=bad)
        @attrs.define
        class Bad:
            id: str | None = None


def test_a_slot_group_cannot_be_sharded():
    with pytest.raises(MappingError, match=r"slot group.*cannot have shards=2"):

        @Registry().mapped(slot_group="g", shards=2)
        @attrs.define
        class Bad:
            id: str | None = None


def test_one_shard_is_the_unsharded_layout_exactly():
    layout = redisca.inspect(One).layout
    assert type(layout) is KeyLayout and layout.shards == 1
    assert layout.entity("a") == b"{one}:a" and layout.hashtag == b"{one}"
    assert redisca.inspect(One).shard_of("anything") == 0
    assert redisca.inspect(One).shard_layouts() == [layout]
    assert redisca.inspect(One).shard_layout(0) is layout


def test_the_shard_of_an_id_is_stable():
    """``(crc32(id) >> 7) % N``: pinned values, so a change of the function (which would
    strand every sharded entity) fails here."""
    assert [shard_of(i.encode(), 16) for i in ("ann", "bob", "01h", "", "7")] == [4, 2, 4, 0, 5]
    for ident in ("ann", "bob", "x{y}", "ünï", ""):
        assert shard_of(ident.encode(), 16) == (zlib.crc32(ident.encode()) >> 7) % 16
    mapper = redisca.inspect(User)
    assert mapper.shard_of("ann") == 4 and mapper.shard_of(7) == shard_of(b"7", 16)
    ids = [f"id{n}" for n in range(16000)]
    counts = [0] * 16
    for ident in ids:
        counts[mapper.shard_of(ident)] += 1
    assert min(counts) > 900 and max(counts) < 1100  # about 1,000 each


def test_shard_tags_are_pinned_and_hash_near_the_middle_of_their_slice():
    assert [shard_tag("usr", 16, k) for k in range(4)] == [
        b"usr@16.0.17", b"usr@16.1.2", b"usr@16.2.420", b"usr@16.3.261",
    ]  # fmt: skip
    for shards in (2, 3, 5, 16, 64, 1024):
        slots = [key_slot(shard_tag("usr", shards, k)) for k in range(shards)]
        assert len(set(slots)) == shards
        for k, slot in enumerate(slots):
            low, high = k * SLOTS // shards, (k + 1) * SLOTS // shards
            assert low <= slot < high
            assert slot == redis_key_slot(b"{" + shard_tag("usr", shards, k) + b"}:x")


def _ranges(masters):
    """The slot ranges ``redis-cli --cluster create`` gives ``masters`` masters."""
    per = SLOTS / masters
    starts = [round(m * per) for m in range(masters)]
    return [(s, (starts[m + 1] if m + 1 < masters else SLOTS) - 1) for m, s in enumerate(starts)]


@pytest.mark.parametrize("masters", [3, 6])
@pytest.mark.parametrize("shards", [3, 6, 8, 16, 64, 100, 1024])
def test_shards_spread_evenly_over_the_standard_master_ranges(masters, shards):
    counts = [0] * masters
    for k in range(shards):
        slot = key_slot(shard_tag("usr", shards, k))
        counts[next(m for m, (lo, hi) in enumerate(_ranges(masters)) if lo <= slot <= hi)] += 1
    assert max(counts) - min(counts) <= 1, counts


def test_keys_of_a_sharded_model():
    mapper = redisca.inspect(User)
    layout = mapper.layout
    assert isinstance(layout, ShardedLayout) and layout.shards == 16
    ann = mapper.shard_layout(4)
    assert ann.tag == b"usr@16.4.63" and ann.shard == 4
    assert layout.entity("ann") == b"{usr@16.4.63}:ann" == ann.entity("ann")
    assert layout.entities(["ann", "7"]) == [ann.entity("ann"), mapper.shard_layout(5).entity("7")]
    assert layout.entity_of(b"ann") == ann.entity("ann")
    assert mapper.key_for("ann") == "{usr@16.4.63}:ann"
    assert (
        layout.guard(b"ann")
        == ann.guard(b"ann")
        == b"{usr@16.4.63}#g:%d" % (zlib.crc32(b"ann") % 128)
    )
    # A unique value's claim is in the value's shard, whoever owns it.
    value_shard = shard_of(b"ann@x", 16)
    assert layout.unique_stripe(b"eml", b"ann@x") == mapper.shard_layout(value_shard).unique_stripe(
        b"eml", b"ann@x"
    )
    assert [s.shard for s in mapper.shard_layouts()] == list(range(16))
    assert mapper.shard_layout(4) is ann  # built once
    # What exists once per shard has no single name on the model's layout.
    for what in ("all_ids", "hashtag", "marker", "pattern"):
        with pytest.raises(InvalidRequestError, match="usr has 16 shards"):
            getattr(layout, what)
    with pytest.raises(InvalidRequestError, match="equality index"):
        layout.eq_index(b"name", b"x")
    with pytest.raises(IndexError):
        mapper.shard_layout(16)


def test_the_clusters_own_keyslot_agrees_with_the_shard_tags(redis_cluster):
    """``CLUSTER KEYSLOT`` on a real node: every key of a shard hashes to its tag's slot,
    whatever braces the id or the value holds, and shards land on every master."""
    node = redis_cluster.masters[0].client()
    try:
        mapper = redisca.inspect(User)
        homes = set()
        for k, layout in enumerate(mapper.shard_layouts()):
            home = int(node.execute_command("CLUSTER", "KEYSLOT", layout.hashtag))
            assert home == key_slot(layout.tag)
            homes.add(home)
            for text in ("a{b}", "{}", "}{", ""):
                raw = text.encode()
                keys = [
                    layout.entity(text), layout.eq_index(b"name", raw), layout.all_ids,
                    layout.range_index(b"age"), layout.guard(raw), layout.marker,
                    layout.unique_stripe(b"eml", raw),
                ]  # fmt: skip
                slots = {int(node.execute_command("CLUSTER", "KEYSLOT", key)) for key in keys}
                assert slots == {home}, (k, text)
        masters = {redis_cluster.node_for_slot(slot).port for slot in homes}
        assert len(homes) == 16 and len(masters) == 3
    finally:
        node.close()


# -- commits ----------------------------------------------------------------------------


def _users(n):
    return [User(name=f"n{i % 7}", age=i % 50, id=f"u{i}") for i in range(n)]


def _assert_each_in_its_shard(raw, ids):
    """From raw Redis: each entity's hash, its index entries and its guard are in the
    shard of its id, and nowhere else."""
    mapper = redisca.inspect(User)
    for ident in ids:
        layout = mapper.shard_layout(mapper.shard_of(ident))
        assert raw.exists(layout.entity(ident)), ident
        name = raw.hget(layout.entity(ident), "name")
        assert raw.sismember(layout.eq_index(b"name", name), ident)
        assert raw.zscore(layout.range_index(b"age"), ident) is not None
        for other in mapper.shard_layouts():
            if other is not layout:
                assert not raw.exists(other.entity(ident))
                assert raw.zscore(other.range_index(b"age"), ident) is None


def test_commits_of_a_sharded_model_on_one_server(redis_server):
    raw = redis_server.client()
    raw.flushall()
    try:
        with Session(raw) as session:
            session.add_all(_users(200))
            session.commit()
        _assert_each_in_its_shard(raw, [f"u{i}" for i in range(200)])
        with Session(raw) as session:
            users = session.get_many(User, [f"u{i}" for i in range(200)])
            assert [u.age for u in users] == [i % 50 for i in range(200)]
            for u in users[:50]:
                u.name = "moved"
                u.note = "n"
            session.delete(users[199])
            session.commit()
        _assert_each_in_its_shard(raw, [f"u{i}" for i in range(199)])
        mapper = redisca.inspect(User)
        moved = set()
        for layout in mapper.shard_layouts():
            moved |= {m.decode() for m in raw.smembers(layout.eq_index(b"name", b"moved"))}
        assert moved == {f"u{i}" for i in range(50)}
        assert not raw.exists(mapper.layout.entity("u199"))
        assert sum(raw.zcard(s.range_index(b"age")) for s in mapper.shard_layouts()) == 199
    finally:
        raw.close()


def test_a_commit_is_one_transaction_per_shard_on_a_cluster(cluster):
    client = cluster.client()
    sent = []
    try:
        with Session(client) as session:
            users = _users(300)
            session.add_all(users)
            session.commit()
        _assert_each_in_its_shard(client, [u.id for u in users])
        # Each shard's data is on the master of its slot.
        mapper = redisca.inspect(User)
        for layout in mapper.shard_layouts():
            node = cluster.node_for_slot(key_slot(layout.tag))
            with node.client() as direct:
                assert direct.zcard(layout.range_index(b"age")) == sum(
                    1 for u in users if mapper.shard_of(u.id) == layout.shard
                )
        with Session(client) as session:
            a, b = session.get_many(User, ["u1", "u2"])
            assert mapper.shard_of("u1") != mapper.shard_of("u2")
            a.name, b.name = "x", "y"
            from redisca.session import unitofwork

            groups = unitofwork.organize(session.states(), [], session.bind_for)
            sent = sorted(g.slot for g in groups)
            session.commit()
        assert sent == sorted(
            key_slot(mapper.shard_layout(mapper.shard_of(i)).tag) for i in ("u1", "u2")
        )
        with Session(client) as session:
            assert session.get(User, "u1").name == "x" and session.get(User, "u2").name == "y"
    finally:
        client.close()


def test_maintenance_tasks_refuse_what_they_do_not_cover_clearly(redis_server):
    """check, reindex and stats cover sharded models (tests/test_shard_maintenance.py),
    with a unique field too (tests/test_shard_claims_maintenance.py); sweep passes over
    them when they do not expire (tests/test_shard_expiry.py sweeps one that does);
    migrate refuses every sharded model."""
    raw = redis_server.client()
    try:
        assert sweep([Account], raw).models == []
        with pytest.raises(MaintenanceError, match="User has 16 shards: migrate"):
            migrate([User], raw)
        assert check([One, User, Tag], raw).ok
    finally:
        raw.close()


@registry.mapped(prefix="acct", shards=8)
@attrs.define
class Account:
    email: str = String(unique=True)
    id: str | None = None


def test_unique_fields_of_a_sharded_model_commit_on_one_server(redis_server):
    """On one server every shard is there, and a commit is one transaction: claims in
    the value's shard and the owner's hash in another change together."""
    raw = redis_server.client()
    raw.flushall()
    try:
        with Session(raw) as session:
            session.add_all([Account(email=f"e{i}", id=f"a{i}") for i in range(40)])
            session.commit()
        mapper = redisca.inspect(Account)
        for i in range(40):
            stripe = mapper.layout.unique_stripe(b"email", b"e%d" % i)
            assert stripe.startswith(b"{" + mapper.layout.for_value(b"e%d" % i).tag + b"}#u:")
            assert raw.hget(stripe, f"e{i}") == b"a%d" % i
        with Session(raw) as session:
            session.add(Account(email="e3", id="other"))
            with pytest.raises(redisca.UniqueViolation):
                session.commit()
        with Session(raw) as session:  # a swap between shards: one transaction here
            a, b = session.get_many(Account, ["a1", "a2"])
            a.email, b.email = b.email, a.email
            session.commit()
        assert raw.hget(mapper.layout.unique_stripe(b"email", b"e1"), "e1") == b"a2"
    finally:
        raw.close()


def _claims_of(raw, field=b"email"):
    """From raw Redis: value -> owner of every claim of Account, and value -> the id of
    every entity whose hash holds it (the owners, as the hashes say)."""
    mapper = redisca.inspect(Account)
    claims, holders = {}, {}
    for layout in mapper.shard_layouts():
        for stripe in layout.unique_stripes(field):
            for value, owner in raw.hgetall(stripe).items():
                claims[bytes(value)] = bytes(owner).decode()
        for key in raw.scan_iter(match=layout.entity_pattern, count=1000):
            value = raw.hget(key, field)
            ident = bytes(key)[len(layout.entity("")) :].decode()
            if value is not None:
                assert bytes(value) not in holders, (value, holders.get(bytes(value)), ident)
                holders[bytes(value)] = ident
    return claims, holders


def assert_one_owner_each(raw):
    """No value with two owners: each value some hash holds is held by one entity only,
    and its claim names that entity."""
    claims, holders = _claims_of(raw)
    for value, ident in holders.items():
        assert claims.get(value) == ident, (value, ident, claims.get(value))


def test_unique_values_of_a_sharded_model_on_a_cluster(cluster):
    client = cluster.client()
    mapper = redisca.inspect(Account)
    try:
        with Session(client) as session:
            session.add_all([Account(email=f"e{i}", id=f"a{i}") for i in range(40)])
            session.commit()
        claims, holders = _claims_of(client)
        assert claims == holders == {b"e%d" % i: f"a{i}" for i in range(40)}
        crossing = [
            i
            for i in range(40)
            if mapper.shard_of(f"a{i}") != mapper.layout.for_value(b"e%d" % i).shard
        ]
        assert len(crossing) > 30  # most claims are in another shard than their owner
        with Session(client) as session:
            session.add(Account(email="e3", id="other"))
            with pytest.raises(redisca.UniqueViolation) as caught:
                session.commit()
            assert caught.value.owner == "a3" and caught.value.value == "e3"
            assert session.new
        assert not client.exists(mapper.layout.entity("other"))
        with Session(client) as session:  # a change of value, and a delete, release
            a1, a2 = session.get_many(Account, ["a1", "a2"])
            a1.email = "new1"
            session.delete(a2)
            session.commit()
        claims, holders = _claims_of(client)
        assert claims.get(b"new1") == "a1" and b"e1" not in claims and b"e2" not in claims
        assert claims == holders
        with Session(client) as session:  # the released values are free again
            session.add_all([Account(email="e1", id="b1"), Account(email="e2", id="b2")])
            session.commit()
        assert_one_owner_each(client)
        registrations = [  # no claim left in flight
            k
            for layout in mapper.shard_layouts()
            for k in client.scan_iter(match=layout.head + b"#c:*")
        ]
        assert registrations == []
    finally:
        client.close()


def test_a_swap_between_shards_is_refused_before_anything_is_sent(cluster):
    client = cluster.client()
    try:
        with Session(client) as session:
            session.add_all([Account(email="x", id="a1"), Account(email="y", id="a2")])
            session.commit()
        before = {k: client.dump(k) for k in client.scan_iter()}
        with Session(client) as session:
            a1, a2 = session.get_many(Account, ["a1", "a2"])
            a1.email, a2.email = a2.email, a1.email
            with pytest.raises(redisca.UniqueViolation, match="a swap"):
                session.commit()
            assert session.dirty
        assert {k: client.dump(k) for k in client.scan_iter()} == before  # nothing written
        with Session(client) as session:  # in three commits it works
            a1, a2 = session.get_many(Account, ["a1", "a2"])
            a1.email = "z"
            session.commit()
            a2.email = "x"
            session.commit()
            a1.email = "y"
            session.commit()
        assert {k: client.dump(k) for k in client.scan_iter()} != before
        claims, holders = _claims_of(client)
        assert claims == holders == {b"y": "a1", b"x": "a2"}
    finally:
        client.close()


def test_a_commit_sends_its_shards_transactions_at_once(cluster, monkeypatch):
    """The shards a commit touches on a cluster are written side by side (one
    ``Parallel`` request of one transaction per shard); a group of a model of one shard
    between them ends the run, and goes alone, in the session's order."""
    from redisca.session import executor, unitofwork

    client = cluster.client()
    ran: list[int] = []
    original = executor._parallel

    def spy(steps):
        ran.append(len(steps))
        return original(steps)

    monkeypatch.setattr(executor, "_parallel", spy)
    mapper = redisca.inspect(User)
    try:
        users = [User(name="n", age=i, id=f"p{i}") for i in range(40)]
        touched = {mapper.shard_of(u.id) for u in users}
        with Session(client) as session:
            session.add_all(users)
            session.commit()
        assert ran == [len(touched)]
        ran.clear()
        with Session(client) as session:  # runs of shards, a one-shard model between
            session.add_all([User(name="a", age=1, id="q1"), User(name="b", age=2, id="q2")])
            session.add(One(name="x", id="o1"))
            session.add_all([Tag(label=f"t{i}", id=f"t{i}") for i in range(12)])
            groups = unitofwork.organize(session.states(), (), session.bind_for)
            sizes = [len(batch) for batch in unitofwork.batches(groups)]
            assert sizes[1] == 1 and sum(sizes) == len(groups)
            assert [type(g.states[0].obj) for g in unitofwork.batches(groups)[1]] == [One]
            session.commit()
        assert ran == [n for n in sizes if n > 1]
        with Session(client) as session:
            assert session.query(User).count() == 42 and session.query(Tag).count() == 12
            assert session.get(One, "o1") is not None
        _assert_each_in_its_shard(client, [u.id for u in users] + ["q1", "q2"])
    finally:
        client.close()


def test_a_commit_over_several_shards_fails_part_way_and_the_retry_commits_the_rest(
    cluster, monkeypatch
):
    """The shards' transactions go out at once; the connection of one of them dies (the
    third ``EXEC`` to go out: before it is sent, then after it ran): every other shard
    commits and leaves the session, that shard's changes stay pending,
    ``outcome_unknown`` says whether it may have been applied, and committing again
    writes it once."""
    from redisca.session import executor

    client = cluster.client()
    mapper = redisca.inspect(User)
    try:
        for when in ("before", "after"):
            users = [User(name="n", age=i, id=f"{when}{i}") for i in range(40)]
            shards = {mapper.shard_of(u.id) for u in users}
            assert len(shards) > 5
            original, seen = executor.roundtrip, []

            def roundtrip(conn, commands, when=when, original=original, seen=seen, **kw):
                if any(c[0] == b"EXEC" for c in commands):
                    seen.append(1)
                    if len(seen) == 3:
                        if when == "after":
                            original(conn, commands, **kw)
                        conn.disconnect()
                        lost = ConnectionError("killed by the test")
                        raise redisca.OperationalError(
                            "lost", lost, outcome_unknown=when == "after"
                        )
                return original(conn, commands, **kw)

            monkeypatch.setattr(executor, "roundtrip", roundtrip)
            with Session(client) as session:
                session.add_all(users)
                with pytest.raises(redisca.OperationalError) as caught:
                    session.commit()
                assert caught.value.outcome_unknown == (when == "after")
                monkeypatch.undo()
                stored = [u.id for u in users if client.exists(mapper.layout.entity(u.id))]
                committed = {mapper.shard_of(i) for i in stored}
                assert len(committed) == len(shards) - (0 if when == "after" else 1)
                assert {u.id for u in users if mapper.shard_of(u.id) in committed} == set(
                    stored
                )  # whole shards
                pending = {u.id for u in session.new}
                (failed,) = {mapper.shard_of(i) for i in pending}  # that shard's, all of them
                assert pending == {u.id for u in users if mapper.shard_of(u.id) == failed}
                assert (failed in committed) == (when == "after")
                session.commit()
            assert all(client.exists(mapper.layout.entity(u.id)) for u in users)
            _assert_each_in_its_shard(client, [u.id for u in users])
    finally:
        client.close()


def test_bulk_add_of_a_sharded_model(redis_server, cluster):
    """On one server a chunk is one transaction, as for any model; on a cluster a
    sharded model's chunk is one per shard (tests/test_bulk_shards.py has the rest)."""
    raw = redis_server.client()
    raw.flushall()
    try:
        with Session(raw) as session:
            assert session.bulk_add((_users(500)), chunk_size=100) == 500
        _assert_each_in_its_shard(raw, [f"u{i}" for i in range(500)])
    finally:
        raw.close()
    client = cluster.client()
    try:
        with Session(client) as session:
            assert session.bulk_add(_users(500), chunk_size=100) == 500
        _assert_each_in_its_shard(client, [f"u{i}" for i in range(500)])
        assert check([User], client).ok
    finally:
        client.close()


def test_two_pending_objects_claiming_one_value_across_shards(cluster):
    client = cluster.client()
    mapper = redisca.inspect(Account)
    try:
        with Session(client) as session:
            a, b = Account(email="same", id="a1"), Account(email="same", id="a7")
            assert mapper.shard_of("a1") != mapper.shard_of("a7")
            session.add_all([a, b])
            with pytest.raises(redisca.UniqueViolation) as caught:
                session.commit()
            assert caught.value.owner is None  # neither owns it (contract: Modeling)
            assert caught.value.claimants == (a, b)
            assert session.new
        assert client.dbsize() == 0
    finally:
        client.close()

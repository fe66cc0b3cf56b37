"""Collection fields: ``Set``, ``List`` and ``References``, each in its own key
``H#m:<field>:<id>`` beside the entity, loaded with it, written with its commit as a diff."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import redis
from helpers import Counted, dump_keyspace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redisca
from redisca import Session
from redisca.session import unitofwork
from redisca.session.emit import emit
from redisca.session.plan import Observed

#: Each test runs with the sync Session and with an AsyncSession (conftest: driver).
pytestmark = pytest.mark.usefixtures("driver")

reg = redisca.Registry()


@reg.mapped(prefix="ctag")
@attrs.define(eq=False)  # set members are hashed: entities by identity
class Tag:
    name: str = ""
    id: str | None = None


@reg.mapped(prefix="cpost")
@attrs.define
class Post:
    title: str = ""
    id: str | None = None
    tags: set[str] = redisca.Set(str, index=True)
    scores: list[int] = redisca.List(int)
    labels: set[Tag] = redisca.References(Tag, index=True)
    words: set[str] = attrs.Factory(set)  # inferred, not indexed


POSTS = redisca.inspect(Post)


def members_key(field: str, ident: str) -> bytes:
    return POSTS.layout.members(field.encode(), ident.encode())


def as_bytes(values: object) -> set[bytes]:
    return {v if isinstance(v, bytes) else v.encode() for v in values}  # type: ignore[attr-defined]


def test_helpers_and_inference_map_collections() -> None:
    by_name = {f.name: f for f in POSTS.collections}
    assert [(n, f.collection, f.index) for n, f in by_name.items()] == [
        ("tags", "set", "eq"),
        ("scores", "list", None),
        ("labels", "set", "eq"),
        ("words", "set", None),
    ]
    assert by_name["labels"].target is Tag and by_name["labels"].is_reference
    assert "tags" not in POSTS.by_name  # not a hash field
    assert Post().tags == set() and Post().scores == []  # empty, never None
    reg2 = redisca.Registry()

    @reg2.mapped(prefix="inf")
    @attrs.define
    class Inferred:
        id: str | None = None
        nums: list[int] = attrs.Factory(list)
        refs: set[Inferred] = attrs.Factory(set)

    found = {f.name: (f.collection, f.target) for f in redisca.inspect(Inferred).collections}
    assert found == {"nums": ("list", None), "refs": ("set", Inferred)}


def test_key_kind_m_is_next_to_the_entity() -> None:
    assert members_key("tags", "p1") == b"{cpost}#m:tags:p1"
    assert POSTS.layout.parse(b"{cpost}#m:tags:a:b")[:3] == ("members", b"tags", b"a:b")


def test_none_is_refused_and_elements_are_checked() -> None:
    post = Post()
    with pytest.raises(redisca.ValidationError, match="never None"):
        post.tags = None  # type: ignore[assignment]
    with pytest.raises(redisca.ValidationError, match=r"Post\.scores"):
        post.scores = [1, "x"]  # type: ignore[list-item]
    post.scores = (3, 1)  # type: ignore[assignment]
    assert post.scores == [3, 1]


def test_insert_load_round_trips_and_mutation_diff(r: redis.Redis, counted: Counted) -> None:
    s = Session(r)
    tag = Tag("redis", id="t1")
    s.add(tag)
    s.add(Post("hello", id="p1", tags={"a", "b"}, scores=[3, 1, 3], labels={tag}))
    s.commit()
    assert as_bytes(r.smembers(members_key("tags", "p1"))) == {b"a", b"b"}
    assert [int(x) for x in r.lrange(members_key("scores", "p1"), 0, -1)] == [3, 1, 3]
    assert as_bytes(r.smembers(members_key("labels", "p1"))) == {b"t1"}
    assert not r.exists(members_key("words", "p1"))  # empty: no key
    assert as_bytes(r.smembers(POSTS.layout.eq_index(b"tags", b"a"))) == {b"p1"}
    assert as_bytes(r.smembers(POSTS.layout.eq_index(b"labels", b"t1"))) == {b"p1"}

    s2 = Session(counted.client)
    counted.reset()
    post = s2.get(Post, "p1")
    assert counted.round_trips == 1  # the hash and its collections: one pipeline
    assert post is not None
    assert post.tags == {"a", "b"} and post.scores == [3, 1, 3] and post.words == set()
    (label,) = post.labels
    assert label.id == "t1"
    assert not s2.is_modified(post)
    post.tags.add("c")
    post.tags.discard("a")
    assert s2.is_modified(post)
    state = s2.state(post) if hasattr(s2, "state") else None
    assert state is not None
    (change,) = [c for g in unitofwork.organize([state], [], lambda m: r) for c in g.changes]
    observed = Observed(exists={change.key: True}, fields={change.key: {}})
    commands = emit(unitofwork.Group(r, None, [change], [state]).plan(), observed)
    assert (b"SREM", members_key("tags", "p1"), b"a") in commands
    assert (b"SADD", members_key("tags", "p1"), b"c") in commands
    assert (b"SREM", POSTS.layout.eq_index(b"tags", b"a"), "p1") in commands
    assert (b"SADD", POSTS.layout.eq_index(b"tags", b"c"), "p1") in commands
    assert not [c for c in commands if c[0] in (b"HSET", b"RPUSH", b"DEL")]
    s2.commit()
    assert as_bytes(r.smembers(members_key("tags", "p1"))) == {b"b", b"c"}
    assert not r.exists(POSTS.layout.eq_index(b"tags", b"a"))
    assert as_bytes(r.smembers(POSTS.layout.eq_index(b"tags", b"c"))) == {b"p1"}
    assert not s2.is_modified(post)

    post.scores.append(7)
    del post.scores[0]
    s2.commit()
    assert [int(x) for x in r.lrange(members_key("scores", "p1"), 0, -1)] == [1, 3, 7]


def test_delete_removes_collection_keys_and_entries(r: redis.Redis) -> None:
    s = Session(r)
    s.add(Post("x", id="p2", tags={"a"}, scores=[1], words={"w"}))
    s.commit()
    s2 = Session(r)
    post = s2.get(Post, "p2")
    s2.delete(post)
    s2.commit()
    assert not [k for k in r.keys("{cpost}*") if b"#g:" not in as_bytes([k]).pop()]


def test_deleting_an_unloaded_stub_removes_its_member_index_entries(r: redis.Redis) -> None:
    s = Session(r)
    tag = Tag("t", id="st")
    s.add(Post("x", id="d1", tags={"a", "b"}, scores=[1], labels={tag}))
    s.add(Post("y", id="d2", tags={"a"}))
    s.commit()
    s2 = Session(r)
    s2.delete(s2.reference(Post, "d1"))  # never loaded: its members are read by the commit
    s2.commit()
    left = {k for k in as_bytes(r.keys("{cpost}*")) if b"#g:" not in k}
    assert left == {
        POSTS.layout.entity("d2"),
        POSTS.layout.all_ids,
        members_key("tags", "d2"),
        b"{cpost}#i:tags:a",
    }
    assert as_bytes(r.smembers(b"{cpost}#i:tags:a")) == {b"d2"}


def test_assigning_a_whole_set_on_a_stub_moves_its_member_index_entries(
    r: redis.Redis,
) -> None:
    s = Session(r)
    s.add(Post("x", id="w1", tags={"a", "b"}))
    s.commit()
    s2 = Session(r)
    stub = s2.reference(Post, "w1")
    stub.tags = {"b", "c"}  # assigned, not loaded: the old members are unknown
    s2.commit()
    assert as_bytes(r.smembers(members_key("tags", "w1"))) == {b"b", b"c"}
    assert not r.exists(POSTS.layout.eq_index(b"tags", b"a"))
    assert as_bytes(r.smembers(POSTS.layout.eq_index(b"tags", b"c"))) == {b"w1"}
    assert [p.id for p in Session(r).query(Post).filter(Post.tags.contains("a")).all()] == []


def test_validation_error_sends_nothing(r: redis.Redis) -> None:
    s = Session(r)
    s.add(Post("x", id="p3", tags={"a"}))
    s.commit()
    before = dump_keyspace(r)
    post = s.get(Post, "p3")
    post.scores.append("not an int")  # type: ignore[arg-type]
    with pytest.raises(redisca.ValidationError, match=r"Post\.scores"):
        s.commit()
    assert dump_keyspace(r) == before


def test_query_results_load_their_collections(r: redis.Redis) -> None:
    s = Session(r)
    s.add(Post("q", id="p4", tags={"z"}, scores=[5]))
    s.commit()
    s2 = Session(r)
    (post,) = s2.query(Post).all()
    assert post.tags == {"z"} and post.scores == [5]
    assert not s2.is_modified(post)


@pytest.mark.parametrize("default", [None, attrs.NOTHING])
def test_a_collection_may_not_be_optional(default: object) -> None:
    annotation = set[str] | None if default is attrs.NOTHING else set[str]
    cls = attrs.make_class(
        "Opt",
        {
            "id": attrs.field(default=None),
            "tags": attrs.field(
                type=annotation, default=default if default is None else attrs.Factory(set)
            ),
        },
    )
    with pytest.raises(redisca.MappingError, match=r"Opt\.tags: a collection is never None"):
        redisca.Registry().map(cls)


def test_contains_queries_the_member_index(r: redis.Redis, counted: Counted) -> None:
    s = Session(r)
    t1, t2 = Tag("a", id="ta"), Tag("b", id="tb")
    s.add_all([t1, t2])
    s.add(Post("one", id="q1", tags={"x", "y"}, labels={t1}))
    s.add(Post("two", id="q2", tags={"y"}, labels={t1, t2}))
    s.add(Post("three", id="q3"))
    s.commit()
    s2 = Session(counted.client)
    counted.reset()
    found = s2.query(Post).filter(Post.tags.contains("y")).all()
    assert sorted(p.id for p in found) == ["q1", "q2"]
    assert counted.round_trips == 2  # the query script, then the page's collections
    assert [p.id for p in s2.query(Post).filter(Post.tags.contains("x")).all()] == ["q1"]
    assert sorted(p.id for p in s2.query(Post).filter(Post.labels.contains(t1)).all()) == [
        "q1",
        "q2",
    ]
    assert [p.id for p in s2.query(Post).filter(Post.labels.contains("tb")).all()] == ["q2"]
    with pytest.raises(redisca.QueryError, match="contains"):
        s2.query(Post).filter(Post.tags == "y").all()
    with pytest.raises(redisca.QueryError, match="not indexed"):
        s2.query(Post).filter(Post.words.contains("w")).all()


def test_check_finds_nothing_wrong_with_collections(r: redis.Redis) -> None:
    from redisca.maintenance import check

    s = Session(r)
    tag = Tag("a", id="ca")
    s.add(tag)
    s.add(Post("one", id="k1", tags={"x"}, scores=[1, 2], labels={tag}, words={"w"}))
    s.commit()
    report = check(reg, r)
    assert report.ok, report.problems


MEMBER_CASES = [
    (
        "a member missing from its member index",
        lambda r: r.srem("{cpost}#i:tags:x", "k1"),
        [("missing_member_entry", "{cpost}#i:tags:x", "tags")],
    ),
    (
        "a reference member missing from its reverse index",
        lambda r: r.srem("{cpost}#i:labels:ca", "k1"),
        [("missing_member_entry", "{cpost}#i:labels:ca", "labels")],
    ),
    (
        "a member index entry of an entity that lacks the member",
        lambda r: r.sadd("{cpost}#i:tags:y", "k1"),
        [("stale_member_entry", "{cpost}#i:tags:y", "tags")],
    ),
    (
        "a member index entry of an entity that does not exist",
        lambda r: r.sadd("{cpost}#i:tags:x", "gone"),
        [("stale_member_entry", "{cpost}#i:tags:x", "tags")],
    ),
    (
        "a References member whose entity does not exist (index kept consistent)",
        lambda r: r.delete("{ctag}:ca"),
        [
            ("dangling_reference", "{cpost}:k1", "labels"),
            ("stale_id", "{ctag}#all", None),
        ],
    ),
    (
        "an entry left by deleting the hash and members without the index",
        lambda r: r.delete("{cpost}:k2", "{cpost}#m:tags:k2"),
        [
            ("stale_id", "{cpost}#all", None),
            ("stale_member_entry", "{cpost}#i:tags:x", "tags"),
            ("stale_member_entry", "{cpost}#i:tags:z", "tags"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("corrupt", "expected"), [c[1:] for c in MEMBER_CASES], ids=[c[0] for c in MEMBER_CASES]
)
def test_check_finds_member_index_problems_and_reindex_repairs_them(
    r: redis.Redis, corrupt: Any, expected: list[tuple[str, str, str | None]]
) -> None:
    from redisca.maintenance import KINDS, check, reindex

    s = Session(r)
    tag = Tag("a", id="ca")
    s.add(tag)
    s.add(Post("one", id="k1", tags={"x"}, labels={tag}))
    s.add(Post("two", id="k2", tags={"x", "z"}))
    s.commit()
    corrupt(r)
    report = check(reg, r)
    found = sorted((p.kind, p.key, p.field) for p in report.problems)
    assert found == sorted(expected)
    assert all(p.kind in KINDS and p.detail for p in report.problems)
    reindex(reg, r)
    left = [p.kind for p in check(reg, r).problems]  # a dangling reference is the user's
    assert left == [kind for kind, _, _ in expected if kind == "dangling_reference"]
    assert "k1" in Session(r).query(Post).filter(Post.tags.contains("x")).ids()
    assert [p.id for p in Session(r).query(Post).filter(Post.labels.contains("ca"))] == ["k1"]


def test_collection_commits_during_a_reindex_are_in_the_switched_member_indexes(
    r: redis.Redis,
) -> None:
    """A commit that changes only a set (not its entity's hash) during a run must mirror
    into the run's build keys, or the switch would drop its entries."""
    from redisca.maintenance import check, reindex

    with Session(r) as s:
        s.add_all(Post(f"p{i}", id=f"r{i:02}", tags={"old"}) for i in range(30))
        s.commit()
    done: list[str] = []

    def meanwhile(model: str, phase: str, count: int, total: int | None) -> None:
        if model != "Post" or phase != "entities" or count == 0 or done:
            return
        done.append(model)
        with Session(r) as s:
            for ident in ("r00", "r29"):  # one page is built already, one not yet
                post = s.get(Post, ident)
                assert post is not None
                post.tags.discard("old")
                post.tags.add("new")
            s.commit()
            s.delete(s.reference(Post, "r15"))
            s.commit()

    report = reindex(reg, r, batch=5, progress=meanwhile)
    assert report.ok and done == ["Post"]
    assert check(reg, r).ok
    with Session(r) as s:
        assert sorted(s.query(Post).filter(Post.tags.contains("new")).ids()) == ["r00", "r29"]
        assert s.query(Post).filter(Post.tags.contains("old")).count() == 27


def test_a_full_reindex_keeps_member_indexes(r: redis.Redis) -> None:
    from redisca.maintenance import reindex

    s = Session(r)
    s.add(Post("one", id="ri1", tags={"x"}))
    s.commit()
    reindex(reg, r)
    assert as_bytes(r.smembers(POSTS.layout.eq_index(b"tags", b"x"))) == {b"ri1"}
    assert [p.id for p in Session(r).query(Post).filter(Post.tags.contains("x")).all()] == ["ri1"]


def test_a_stub_loads_its_collections_with_its_hash(r: redis.Redis, counted: Counted) -> None:
    s = Session(r)
    s.add(Post("lazy", id="l1", tags={"t"}, scores=[2]))
    s.commit()
    s2 = Session(counted.client)
    stub = s2.reference(Post, "l1")
    counted.reset()
    assert stub.tags == {"t"}
    assert counted.round_trips == 1
    assert stub.scores == [2] and stub.title == "lazy"
    assert counted.round_trips == 1
    assert not list(s2.dirty)
    stub.scores += [4]
    assert list(s2.dirty) == [stub]
    s2.commit()
    assert [int(x) for x in r.lrange(members_key("scores", "l1"), 0, -1)] == [2, 4]


@reg.mapped(prefix="spost", shards=4)
@attrs.define
class ShardedPost:
    id: str | None = None
    tags: set[str] = redisca.Set(str, index=True)


def test_a_sharded_models_collections_are_in_the_shard_of_the_id(r: redis.Redis) -> None:
    layout = redisca.inspect(ShardedPost).layout
    s = Session(r)
    for n in range(6):
        s.add(ShardedPost(id=f"s{n}", tags={"common", f"own{n}"}))
    s.commit()
    for n in range(6):
        shard = layout.for_id(f"s{n}")
        key = layout.members(b"tags", f"s{n}".encode())
        assert key == shard.members(b"tags", f"s{n}".encode())
        assert as_bytes(r.smembers(key)) == {b"common", f"own{n}".encode()}
    s2 = Session(r)
    found = s2.query(ShardedPost).filter(ShardedPost.tags.contains("common")).all()
    assert sorted(p.id for p in found) == [f"s{n}" for n in range(6)]
    assert [p.tags for p in found if p.id == "s3"] == [{"common", "own3"}]


def test_references_members_are_added_with_their_holder(r: redis.Redis) -> None:
    """As a reference's target is: adding a post adds its new labels, and a label added
    in place to a stored post is added by the commit."""
    s = Session(r)
    first = Tag("first", id="af")
    post = Post("x", id="a1", labels={first})
    s.add(post)
    assert first in s
    s.commit()
    later = Tag("later", id="al")
    post.labels.add(later)  # in place: no assignment, found by the commit's cascade
    s.commit()
    assert r.exists(redisca.inspect(Tag).key_for("al"))
    assert as_bytes(r.smembers(members_key("labels", "a1"))) == {b"af", b"al"}
    s.close()


def test_a_delete_from_a_stale_snapshot_removes_the_members_stored_now(r: redis.Redis) -> None:
    """The session loaded {x}; another commit re-tagged the post {y} since. The delete
    must remove the member index entries of what the members key holds when it runs
    (``y``), not of the snapshot (``x``): index entries follow Redis, as for fields."""
    with Session(r) as s:
        s.add(Post(title="p", tags={"x"}, id="1"))
        s.commit()
    with Session(r) as a, Session(r) as b:
        stale = a.get(Post, "1")
        assert stale is not None and stale.tags == {"x"}
        fresh = b.get(Post, "1")
        fresh.tags = {"y"}
        b.commit()
        a.delete(stale)
        a.commit()
    assert r.exists(POSTS.layout.eq_index(b"tags", b"y")) == 0
    assert r.exists(members_key("tags", "1")) == 0


def test_an_update_from_a_stale_snapshot_moves_the_entries_of_what_is_stored(
    r: redis.Redis,
) -> None:
    """Both sessions loaded {x, y}; one discards ``y`` and commits, the other (stale)
    discards ``x`` and adds ``z``: the members key ends {z}, and the member index holds
    exactly the members stored."""
    with Session(r) as s:
        s.add(Post(title="p", tags={"x", "y"}, id="1"))
        s.commit()
    with Session(r) as a, Session(r) as b:
        stale, fresh = a.get(Post, "1"), b.get(Post, "1")
        fresh.tags.discard("y")
        b.commit()
        stale.tags.discard("x")
        stale.tags.add("z")
        a.commit()
    assert as_bytes(r.smembers(members_key("tags", "1"))) == {b"z"}
    for tag in (b"x", b"y", b"z"):
        held = as_bytes(r.smembers(POSTS.layout.eq_index(b"tags", tag)))
        assert held == ({b"1"} if tag == b"z" else set()), tag


# -- contains against a Python model -------------------------------------------------

TAGS = ("a", "b", "c", "d")
LABELS = ("l1", "l2", "l3")


@st.composite
def contains_trees(draw: Any) -> Any:
    """("tags"|"labels", member), or ("and"|"or", [trees]) of them."""
    leaf = st.tuples(st.just("tags"), st.sampled_from(TAGS)) | st.tuples(
        st.just("labels"), st.sampled_from(LABELS)
    )
    return draw(
        st.recursive(
            leaf,
            lambda inner: st.tuples(
                st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3)
            ),
            max_leaves=5,
        )
    )


def contains_holds(row: dict[str, set[str]], tree: Any) -> bool:
    if tree[0] == "and":
        return all(contains_holds(row, t) for t in tree[1])
    if tree[0] == "or":
        return any(contains_holds(row, t) for t in tree[1])
    return tree[1] in row[tree[0]]


def contains_expression(session: Session, tree: Any) -> Any:
    if tree[0] in ("and", "or"):
        parts = [contains_expression(session, t) for t in tree[1]]
        out = parts[0]
        for part in parts[1:]:
            out = out & part if tree[0] == "and" else out | part
        return out
    if tree[0] == "labels":  # by instance or by id, both documented
        return Post.labels.contains(session.reference(Tag, tree[1]) if tree[1] == "l1" else tree[1])
    return Post.tags.contains(tree[1])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_contains_agrees_with_a_model(r: redis.Redis, data: Any) -> None:
    """``contains`` on a Set and on References, alone and under ``&`` / ``|``, with offset,
    limit and count, as a Python model answers it (ids in id order: no range index)."""
    r.flushdb()
    ids = data.draw(st.lists(st.sampled_from(["p1", "p2", "p3", "p4", "p5"]), unique=True))
    rows = {
        i: {
            "tags": data.draw(st.sets(st.sampled_from(TAGS))),
            "labels": data.draw(st.sets(st.sampled_from(LABELS))),
        }
        for i in ids
    }
    with Session(r) as s:
        tags = {name: Tag(name, id=name) for name in LABELS}
        s.add_all(tags.values())
        for i, row in rows.items():
            s.add(Post(i, id=i, tags=set(row["tags"]), labels={tags[n] for n in row["labels"]}))
        s.commit()
    # then changed in place, so that the indexes are the diff's, not only the insert's
    with Session(r) as s:
        for i in data.draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []:
            post = s.get(Post, i)
            tag, label = data.draw(st.sampled_from(TAGS)), data.draw(st.sampled_from(LABELS))
            if tag in post.tags:
                post.tags.discard(tag)
                rows[i]["tags"].discard(tag)
            else:
                post.tags.add(tag)
                rows[i]["tags"].add(tag)
            if label in rows[i]["labels"]:
                post.labels = {t for t in post.labels if t.id != label}
                rows[i]["labels"].discard(label)
            else:
                post.labels.add(s.reference(Tag, label))
                rows[i]["labels"].add(label)
        s.commit()
    with Session(r) as s:
        for _ in range(3):
            tree = data.draw(contains_trees())
            offset, limit = data.draw(st.integers(0, 3)), data.draw(st.none() | st.integers(0, 3))
            found = sorted(i for i, row in rows.items() if contains_holds(row, tree))
            query = s.query(Post).filter(contains_expression(s, tree))
            assert query.count() == len(found), tree
            end = None if limit is None else offset + limit
            page = query.offset(offset).limit(limit)
            assert page.ids() == found[offset:end], (tree, offset, limit)
            got = page.all()
            assert [p.id for p in got] == found[offset:end]
            for post in got:
                assert post.tags == rows[post.id]["tags"]
                assert {t.id for t in post.labels} == rows[post.id]["labels"]

"""Referential integrity of ``Reference(cls, on_delete=...)`` and
``References(cls, on_delete=...)``: mapping rules, and each mode enforced inside the
commit."""

from __future__ import annotations

import multiprocessing
import random
from typing import Any

import attrs
import pytest
import redis
from helpers import Counted, connect, connection_kwargs

import redisca
from redisca import (
    IntegrityError,
    MappingError,
    Reference,
    References,
    Registry,
    Session,
    String,
)

registry = Registry()


@registry.mapped(prefix="ico")
@attrs.define
class Company:
    name: str = String()
    id: str | None = None


@registry.mapped(prefix="iusr")
@attrs.define
class User:
    name: str = String()
    company: Company | None = Reference(Company, index=True, on_delete="restrict", default=None)
    id: str | None = None


@registry.mapped(prefix="ipost")
@attrs.define
class Post:
    title: str = String()
    author: User | None = Reference(User, index=True, on_delete="cascade", default=None)
    editor: User | None = Reference(User, index=True, default=None)
    id: str | None = None


@registry.mapped(prefix="itag")
@attrs.define
class Tag:
    name: str = String()
    company: Company | None = Reference(Company, index=True, on_delete="set_null", default=None)
    id: str | None = None


@registry.mapped(prefix="inode")
@attrs.define
class Node:
    name: str = String(unique=True)
    parent: Node | None = Reference("Node", index=True, on_delete="cascade", default=None)
    id: str | None = None


@registry.mapped(prefix="ilabel")
@attrs.define(eq=False)
class Label:
    name: str = String()
    id: str | None = None


@registry.mapped(prefix="iart")
@attrs.define(eq=False)
class Article:
    """Labels are labels: deleting one takes it off the articles."""

    title: str = String()
    labels: set[Label] = References(Label, index=True, on_delete="set_null")
    id: str | None = None


@registry.mapped(prefix="ipin")
@attrs.define(eq=False)
class Pin:
    """A pinned label cannot be deleted."""

    labels: set[Label] = References(Label, index=True, on_delete="restrict")
    id: str | None = None


@registry.mapped(prefix="ibundle")
@attrs.define(eq=False)
class Bundle:
    """A bundle lives and dies with each of its labels."""

    labels: set[Label] = References(Label, index=True, on_delete="cascade")
    id: str | None = None


def test_on_delete_needs_an_index() -> None:
    other = Registry()
    with pytest.raises(MappingError, match="needs index=True"):

        @other.mapped(prefix="bad")
        @attrs.define
        class Bad:
            company: Company | None = Reference(Company, on_delete="cascade", default=None)
            id: str | None = None


def test_on_delete_is_refused_on_a_unique_reference() -> None:
    other = Registry()
    with pytest.raises(MappingError, match="unique reference"):

        @other.mapped(prefix="bad2")
        @attrs.define
        class Bad:
            company: Company | None = Reference(Company, unique=True, on_delete="restrict")
            id: str | None = None


def test_on_delete_value_is_checked() -> None:
    with pytest.raises(MappingError, match="on_delete='nothing'"):
        Reference(Company, index=True, on_delete="nothing")
    with pytest.raises(MappingError, match=r"References\(on_delete='nothing'\)"):
        References(Company, index=True, on_delete="nothing")


def test_on_delete_is_for_references_only() -> None:
    with pytest.raises(TypeError, match="on_delete= is for Reference and References"):
        redisca.Set(str, index=True, on_delete="cascade")


def test_references_on_delete_needs_an_index() -> None:
    other = Registry()
    with pytest.raises(MappingError, match="needs index=True"):

        @other.mapped(prefix="bad3")
        @attrs.define(eq=False)
        class Bad:
            labels: set[Label] = References(Label, on_delete="set_null")
            id: str | None = None


def test_incoming_includes_references_collections() -> None:
    found = [
        (f.mapper.class_, f.name, f.on_delete) for f in registry.incoming(registry.resolve(Label))
    ]
    assert found == [
        (Article, "labels", "set_null"),
        (Pin, "labels", "restrict"),
        (Bundle, "labels", "cascade"),
    ]


def test_incoming_references_per_target_mapper() -> None:
    company, user = registry.resolve(Company), registry.resolve(User)
    assert [(f.mapper.class_, f.name) for f in registry.incoming(company)] == [
        (User, "company"),
        (Tag, "company"),
    ]
    # Post.editor has no on_delete: the commit has nothing to enforce for it.
    assert [(f.mapper.class_, f.name) for f in registry.incoming(user)] == [(Post, "author")]
    assert registry.resolve(User).fields[1].on_delete == "restrict"


def test_integrity_error_is_a_value_error_and_exported() -> None:
    assert issubclass(redisca.IntegrityError, ValueError)
    assert issubclass(redisca.UniqueViolation, redisca.IntegrityError)
    exc = redisca.IntegrityError("x", referrer="u", field="company", target="c")
    assert (exc.referrer, exc.field, exc.target) == ("u", "company", "c")


def key(cls: type, ident: str) -> str:
    return redisca.inspect(cls).key_for(ident)


def index(cls: type, field: str, value: str) -> bytes:
    return registry.resolve(cls).layout.eq_index(field.encode(), value.encode())


def raw(value: bytes | str | None) -> bytes | None:
    """A reply as bytes, whatever the client's decode_responses."""
    return value.encode() if isinstance(value, str) else value


def seed(r: redis.Redis) -> None:
    with Session(r) as s:
        acme = Company(name="acme", id="acme")
        s.add_all([acme, Company(name="free", id="free")])
        s.add(User(name="ann", company=acme, id="ann"))
        s.add(Tag(name="t", company=acme, id="t1"))
        s.commit()


def test_restrict_refuses_naming_a_referrer_and_writes_nothing(r: redis.Redis) -> None:
    seed(r)
    before = {k: r.type(k) for k in r.keys("*")}
    s = Session(r)
    s.delete(s.get(Company, "acme"))
    with pytest.raises(IntegrityError, match="ann refers to it") as info:
        s.commit()
    assert info.value.referrer == key(User, "ann") and info.value.field == "company"
    assert {k: r.type(k) for k in r.keys("*")} == before
    assert r.exists(key(Company, "acme"))
    # The session can go on: the referrer moves away, and the delete then passes.
    s2 = Session(r)
    s2.get(User, "ann").company = s2.reference(Company, "free")
    s2.delete(s2.get(Company, "acme"))
    s2.commit()
    assert not r.exists(key(Company, "acme"))
    assert raw(r.hget(key(User, "ann"), "company")) == b"free"
    assert not r.exists(index(User, "company", "acme"))


def test_restrict_passes_when_the_referrer_is_deleted_too(r: redis.Redis) -> None:
    seed(r)
    with Session(r) as s:
        s.delete(s.get(Company, "acme"))
        s.delete(s.get(User, "ann"))
        s.commit()
    assert not r.exists(key(Company, "acme")) and not r.exists(key(User, "ann"))


def test_set_null_removes_the_field_and_its_index_entry(r: redis.Redis) -> None:
    seed(r)
    with Session(r) as s:
        s.delete(s.get(User, "ann"))  # the restrict referrer goes too
        s.delete(s.get(Company, "acme"))
        s.commit()
    assert r.exists(key(Tag, "t1"))
    assert raw(r.hget(key(Tag, "t1"), "company")) is None
    assert raw(r.hget(key(Tag, "t1"), "name")) == b"t"
    assert not r.exists(index(Tag, "company", "acme"))
    with Session(r) as s:
        assert s.get(Tag, "t1").company is None


def test_set_null_keeps_a_referrer_whose_only_field_it_was(r: redis.Redis) -> None:
    seed(r)
    r.hdel(key(Tag, "t1"), "name")  # the reference is its only stored field
    with Session(r) as s:
        s.delete(s.get(User, "ann"))
        s.delete(s.get(Company, "acme"))
        s.commit()
    assert r.exists(key(Tag, "t1"))
    with Session(r) as s:
        tag = s.get(Tag, "t1")
        assert tag is not None and tag.company is None


def test_new_referrer_to_a_target_deleted_in_the_same_commit(r: redis.Redis) -> None:
    seed(r)
    s = Session(r)
    acme = s.get(Company, "acme")
    s.delete(s.get(User, "ann"))
    s.delete(acme)
    s.add(User(name="bob", company=s.reference(Company, "acme"), id="bob"))
    with pytest.raises(IntegrityError, match="this commit deletes"):
        s.commit()
    assert (
        r.exists(key(Company, "acme"))
        and r.exists(key(User, "ann"))
        and not r.exists(key(User, "bob"))
    )
    assert not r.exists(index(User, "company", "acme")) or {
        raw(m) for m in r.smembers(index(User, "company", "acme"))
    } == {b"ann"}


def test_new_referrer_to_a_missing_target(r: redis.Redis) -> None:
    seed(r)
    s = Session(r)
    s.add(User(name="bob", company=s.reference(Company, "nope"), id="bob"))
    with pytest.raises(IntegrityError, match="does not exist") as info:
        s.commit()
    assert info.value.target == key(Company, "nope")
    assert not r.exists(key(User, "bob")) and not r.exists(index(User, "company", "nope"))
    # on_delete=None keeps today's behaviour: the dangling reference is written.
    with Session(r) as s:
        s.add(Post(title="p", editor=s.reference(User, "ghost"), id="p1"))
        s.commit()
    assert raw(r.hget(key(Post, "p1"), "editor")) == b"ghost"


def test_referrer_and_target_new_in_one_commit(r: redis.Redis) -> None:
    with Session(r) as s:
        s.add(User(name="cy", company=Company(name="new", id="new"), id="cy"))
        s.commit()
    assert r.exists(key(Company, "new")) and {
        raw(m) for m in r.smembers(index(User, "company", "new"))
    } == {b"cy"}


def test_costs(r: redis.Redis, counted: Counted) -> None:
    seed(r)
    s = Session(counted.client)
    company = s.get(Company, "free")
    counted.reset()
    s.delete(company)
    s.commit()
    # One read round trip (WATCH + reads, the referrer sets included), one MULTI/EXEC.
    assert counted.round_trips == 2
    s.add(User(name="dee", company=s.reference(Company, "acme"), id="dee"))
    counted.reset()
    s.commit()
    assert counted.round_trips == 2


def test_cascade_deletes_referrers_with_their_index_entries(r: redis.Redis) -> None:
    seed(r)
    with Session(r) as s:
        ann = s.get(User, "ann")
        s.add_all(Post(title=f"p{n}", author=ann, id=f"p{n}") for n in range(3))
        s.add(Post(title="kept", editor=ann, id="k"))  # on_delete=None: left dangling
        s.commit()
    with Session(r) as s:
        s.delete(s.get(User, "ann"))
        s.commit()
    assert not any(r.exists(key(Post, f"p{n}")) for n in range(3))
    assert not r.exists(key(User, "ann"))
    assert not r.exists(index(Post, "author", "ann"))
    assert r.exists(key(Post, "k")) and raw(r.hget(key(Post, "k"), "editor")) == b"ann"


def test_cascade_recursion_with_a_cycle(r: redis.Redis, counted: Counted) -> None:
    with Session(r) as s:
        a = Node(name="a", id="a")
        b = Node(name="b", parent=a, id="b")
        c = Node(name="c", parent=b, id="c")
        s.add_all([a, b, c, Node(name="other", id="o")])
        s.commit()
        a.parent = c  # a -> c -> b -> a
        s.commit()
    s = Session(counted.client)
    node = s.reference(Node, "b")
    counted.reset()
    s.delete(node)
    s.commit()
    # Three cascade levels (b, then c, then a, whose referrer b is deleted already),
    # one round trip each, then the commit's two.
    assert counted.round_trips == 3 + 2
    assert not any(r.exists(index(Node, "parent", n)) for n in "abc")
    assert not any(r.exists(key(Node, n)) for n in "abc")
    with Session(r) as s:  # their unique values were released
        s.add(Node(name="a", id="a2"))
        s.commit()


# -- a race: processes delete targets while others add referrers ---------------------

TARGETS = 12
ROUNDS = 30


#: Each race: (target class, referrer class, referring field).
RACES: dict[str, tuple[type, type, str]] = {
    "restrict": (Company, User, "company"),
    "cascade": (User, Post, "author"),
    "references-restrict": (Label, Pin, "labels"),
    "references-cascade": (Label, Bundle, "labels"),
}


def new_referrer(s: Session, how: str, ident: str, name: str) -> Any:
    target = s.reference(RACES[how][0], ident)
    if how == "restrict":
        return User(name="u", company=target, id=name)
    if how == "cascade":
        return Post(title="p", author=target, id=name)
    return RACES[how][1](labels={target}, id=name)


def race_worker(url: str, kwargs: dict[str, Any], how: str, role: str, seed: int, out: Any) -> None:
    """``role`` "delete": deletes random targets; "add": adds referrers to random
    targets, through the field ``how`` names in :data:`RACES`. Each round's outcome goes
    to ``out``."""
    rng = random.Random(seed)
    client = connect(url, **kwargs)
    target_cls, referrer_cls, field = RACES[how]
    for n in range(ROUNDS):
        s = Session(client)
        ident = f"t{rng.randrange(TARGETS)}"
        try:
            if role == "delete":
                found = s.get(target_cls, ident)
                if found is None:  # created again: the race goes on for the whole run
                    s.add(target_cls(name="again", id=ident))
                    s.commit()
                    out.put(("absent", None))
                    continue
                if how.endswith("restrict"):  # its referrers now; more may come before commit
                    for member in client.smembers(index(referrer_cls, field, ident)):
                        s.delete(s.reference(referrer_cls, raw(member).decode()))  # type: ignore[union-attr]
                s.delete(found)
            else:
                s.add(new_referrer(s, how, ident, f"r{seed}-{n}"))
            s.commit()
            out.put((f"{role}d", None))
        except IntegrityError as exc:
            out.put(("refused", str(exc)))
        except Exception as exc:  # reported: the test fails with it
            out.put(("error", repr(exc)))
    client.close()


@pytest.mark.parametrize("how", list(RACES))
def test_race_deletes_and_new_referrers_never_dangle(
    r: redis.Redis, redis_url: str, how: str
) -> None:
    kwargs = connection_kwargs(r)
    mode = {
        "decode_responses": kwargs.get("decode_responses", False),
        "protocol": kwargs["protocol"],
    }
    target_cls, referrer_cls, field = RACES[how]
    with Session(r) as s:
        s.add_all(target_cls(name="t", id=f"t{n}") for n in range(TARGETS))
        s.commit()
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    roles = ["delete", "add", "delete", "add"]
    workers = [
        context.Process(target=race_worker, args=(redis_url, mode, how, role, w, out))
        for w, role in enumerate(roles)
    ]
    for process in workers:
        process.start()
    try:
        results = [out.get(timeout=120) for _ in range(len(roles) * ROUNDS)]
    finally:
        for process in workers:
            process.join(timeout=60)
    assert [p.exitcode for p in workers] == [0] * len(roles)
    outcomes = [row[0] for row in results]
    assert "error" not in outcomes, [row for row in results if row[0] == "error"]
    assert outcomes.count("deleted") > 0 and outcomes.count("addd") > 0, results
    # From raw Redis: every referrer's target exists.
    layout = registry.resolve(referrer_cls).layout
    dangling = []
    referrers = 0
    scanned = 0
    for k in r.scan_iter(match=layout.entity_pattern):
        scanned += 1
        if how.startswith("references"):
            ident = raw(k)[layout.entity_prefix_len() :]  # type: ignore[index]
            values = [raw(m) for m in r.smembers(layout.members(field.encode(), ident))]
        else:
            values = [raw(r.hget(k, field))]
        for value in values:
            if value is None:
                continue
            referrers += 1
            if not r.exists(key(target_cls, value.decode())):
                dangling.append((k, value))
    assert dangling == []
    print(
        f"\nrace {how}: deleted={outcomes.count('deleted')} added={outcomes.count('addd')} "
        f"refused={outcomes.count('refused')} absent={outcomes.count('absent')} "
        f"referrers left={referrers} of {scanned} keys scanned"
    )


def test_check_reports_dangling_references_and_reindex_leaves_them(r: redis.Redis) -> None:
    from redisca.maintenance import check, reindex

    seed(r)
    with Session(r) as s:
        s.add(Post(title="p", editor=s.reference(User, "ghost"), id="p1"))  # on_delete=None
        s.commit()
    r.delete(key(Company, "free"))  # nobody refers to it: no problem
    found = [(p.kind, p.key, p.field) for p in check(registry, r).problems]
    assert ("dangling_reference", key(Post, "p1"), "editor") in found
    assert {kind for kind, _, _ in found} == {"dangling_reference", "stale_id"}
    reindex(registry, r)
    assert raw(r.hget(key(Post, "p1"), "editor")) == b"ghost"
    after = [(p.kind, p.key, p.field) for p in check(registry, r).problems]
    assert after == [("dangling_reference", key(Post, "p1"), "editor")]


# -- References(cls, on_delete=...) ------------------------------------------------------


def members(r: redis.Redis, cls: type, field: str, ident: str) -> set[bytes | None]:
    """The ids in one entity's ``References`` set, read from Redis."""
    found = r.smembers(registry.resolve(cls).layout.members(field.encode(), ident.encode()))
    return {raw(m) for m in found}  # type: ignore[union-attr]


def seed_labels(r: redis.Redis) -> None:
    with Session(r) as s:
        a, b = Label(name="a", id="a"), Label(name="b", id="b")
        s.add_all([a, b, Label(name="c", id="c")])
        s.add(Article(title="x", labels={a, b}, id="x"))
        s.add(Article(title="y", labels={a}, id="y"))
        s.commit()


def test_references_set_null_removes_the_member_and_its_index_entry(r: redis.Redis) -> None:
    seed_labels(r)
    with Session(r) as s:
        s.delete(s.get(Label, "a"))
        s.commit()
    assert members(r, Article, "labels", "x") == {b"b"}
    assert members(r, Article, "labels", "y") == set()  # its last member: the key went
    assert r.exists(key(Article, "x")) and r.exists(key(Article, "y"))
    assert not r.exists(index(Article, "labels", "a"))
    assert {raw(m) for m in r.smembers(index(Article, "labels", "b"))} == {b"x"}
    with Session(r) as s:
        assert {t.id for t in s.get(Article, "x").labels} == {"b"}


def test_references_set_null_updates_referrers_loaded_in_the_session(r: redis.Redis) -> None:
    seed_labels(r)
    with Session(r) as s:
        x, y = s.get(Article, "x"), s.get(Article, "y")
        s.delete(s.get(Label, "a"))
        s.commit()
        assert {t.id for t in x.labels} == {"b"} and y.labels == set()
        assert not s.dirty and not s.is_modified(x)
        x.title = "x2"  # a later commit must not write the deleted label back
        s.commit()
    assert members(r, Article, "labels", "x") == {b"b"}
    assert not r.exists(index(Article, "labels", "a"))


def test_set_null_updates_a_reference_loaded_in_the_session(r: redis.Redis) -> None:
    seed(r)
    with Session(r) as s:
        tag = s.get(Tag, "t1")
        assert tag.company is not None
        s.delete(s.get(User, "ann"))
        s.delete(s.get(Company, "acme"))
        s.commit()
        assert tag.company is None  # not the deleted company
        assert not s.dirty
        tag.name = "t2"
        s.commit()
    assert raw(r.hget(key(Tag, "t1"), "company")) is None
    assert not r.exists(index(Tag, "company", "acme"))


def test_references_set_null_keeps_a_member_added_by_the_same_commit(r: redis.Redis) -> None:
    seed_labels(r)
    with Session(r) as s:
        x = s.get(Article, "x")
        x.labels.discard(s.get(Label, "a"))  # moved away in the same commit: no set_null
        x.labels.add(s.get(Label, "c"))
        s.delete(s.get(Label, "a"))
        s.commit()
        assert {t.id for t in x.labels} == {"b", "c"}
    assert members(r, Article, "labels", "x") == {b"b", b"c"}
    assert members(r, Article, "labels", "y") == set()


def test_references_restrict_refuses_then_passes_once_removed(r: redis.Redis) -> None:
    seed_labels(r)
    with Session(r) as s:
        s.add(Pin(labels={s.get(Label, "c")}, id="p"))
        s.commit()
    before = {k: r.type(k) for k in r.keys("*")}
    s = Session(r)
    s.delete(s.get(Label, "c"))
    with pytest.raises(IntegrityError, match=r"Pin\.labels, on_delete='restrict'") as info:
        s.commit()
    assert info.value.referrer == key(Pin, "p") and info.value.field == "labels"
    assert {k: r.type(k) for k in r.keys("*")} == before
    s.rollback()
    pin = s.get(Pin, "p")
    pin.labels.clear()
    s.delete(s.get(Label, "c"))
    s.commit()
    assert not r.exists(key(Label, "c")) and not r.exists(index(Pin, "labels", "c"))


def test_references_cascade_deletes_the_holders(r: redis.Redis) -> None:
    seed_labels(r)
    with Session(r) as s:
        s.add(Bundle(labels={s.get(Label, "b"), s.get(Label, "c")}, id="bu"))
        s.commit()
    with Session(r) as s:
        s.delete(s.reference(Label, "c"))
        s.commit()
    assert not r.exists(key(Bundle, "bu"))
    assert members(r, Bundle, "labels", "bu") == set()
    assert not r.exists(index(Bundle, "labels", "b"))  # its other label's entry too
    assert not r.exists(index(Bundle, "labels", "c"))
    assert r.exists(key(Label, "b"))


def test_references_new_member_must_exist(r: redis.Redis) -> None:
    seed_labels(r)
    s = Session(r)
    x = s.get(Article, "x")
    x.labels.add(s.reference(Label, "nope"))
    with pytest.raises(IntegrityError, match="does not exist") as info:
        s.commit()
    assert info.value.target == key(Label, "nope") and info.value.field == "labels"
    assert members(r, Article, "labels", "x") == {b"a", b"b"}
    s.rollback()
    x = s.get(Article, "x")
    c = s.get(Label, "c")
    x.labels.add(c)
    s.delete(c)
    with pytest.raises(IntegrityError, match="this commit deletes"):
        s.commit()
    s.rollback()
    s.close()
    assert r.exists(key(Label, "c"))
    assert members(r, Article, "labels", "x") == {b"a", b"b"}

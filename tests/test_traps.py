"""The traps of issue 14: repr that loads or raises, changes dropped without a word,
two pending claims of one unique value, ``None`` ids, an id where a reference goes,
and mapped subclasses."""

from __future__ import annotations

import asyncio
import gc
import warnings

import attrs
import pytest
import redis
import redis.asyncio
from helpers import Counted

import redisca
from redisca import Integer, Reference, Registry, Session, String

registry = Registry()


@registry.mapped(prefix="tr.usr")
@attrs.define
class Writer:
    name: str = String(unique=True)
    bio: str | None = None
    id: str | None = None


@registry.mapped(prefix="tr.post")
@attrs.define
class Note:
    title: str = String(index=True)
    author: Writer | None = Reference(Writer, index=True, default=None)
    secret: str = attrs.field(default="hidden", repr=False)
    shout: str = attrs.field(default="x", repr=lambda v: v.upper())
    id: str | None = None


@registry.mapped(prefix="tr.own")
@attrs.define
class Custom:
    name: str = String()
    id: str | None = None

    def __repr__(self) -> str:
        return "mine"


def _stored(r: redis.Redis) -> None:
    with Session(r) as s:
        ann = Writer("ann", id="a")
        s.add_all([ann, Note("hello", author=ann, id="p1")])
        s.commit()


# -- 1. repr never loads, never raises -------------------------------------------------


def test_repr_of_every_state_never_loads_nor_raises(r: redis.Redis, counted: Counted) -> None:
    _stored(r)
    transient = Note("t", id="n1")
    assert repr(transient) == "Note(title='t', author=None, shout=X, id='n1')"
    s = Session(counted.client)
    s.add(transient)  # pending
    assert repr(transient) == "Note(title='t', author=None, shout=X, id='n1')"
    stub = s.reference(Note, "p1")  # persistent, nothing loaded
    counted.reset()
    unloaded = "title=<not loaded>, author=<not loaded>, shout=<not loaded>"
    assert repr(stub) == f"Note({unloaded}, id='p1')"
    assert counted.round_trips == 0
    assert not redisca.inspect(stub).loaded
    loaded = s.get(Note, "p1")  # loaded; its author is a stub
    assert loaded is stub
    counted.reset()
    shown = repr(loaded)
    author = "Writer(name=<not loaded>, bio=<not loaded>, id='a')"
    assert shown == f"Note(title='hello', author={author}, shout=X, id='p1')"
    assert counted.round_trips == 0
    s.unload(loaded)  # unloaded again: not loaded, not loading
    counted.reset()
    assert "title=<not loaded>" in repr(loaded)
    assert counted.round_trips == 0
    s.delete(loaded)  # deleted (pending delete)
    assert repr(loaded).startswith("Note(title=<not loaded>")
    s.commit()  # deleted and committed: detached
    counted.reset()
    assert redisca.inspect(loaded).status == "detached"
    assert repr(loaded).startswith("Note(title=<not loaded>")
    other = s.reference(Writer, "a")
    s.close()  # detached after close, unloaded
    assert repr(other) == "Writer(name=<not loaded>, bio=<not loaded>, id='a')"
    with pytest.raises(redisca.DetachedInstanceError):
        _ = other.name  # reading it still raises: repr only shows
    assert counted.round_trips == 0


def test_repr_of_a_cycle_and_a_user_repr(r: redis.Redis) -> None:
    reg = Registry()

    @reg.mapped(prefix="tr.node")
    @attrs.define
    class Node:
        parent: Node | None = Reference("Node", default=None)
        id: str | None = None

    a = Node(id="a")
    b = Node(parent=a, id="b")
    a.parent = b
    assert repr(a) == "Node(parent=Node(parent=..., id='b'), id='a')"
    assert repr(Custom("x")) == "mine"  # the user's own __repr__ is left alone


def test_asdict_of_a_detached_instance(r: redis.Redis) -> None:
    """``attrs.asdict`` reads through the attributes: what is loaded is given, an
    unloaded attribute of a detached instance still raises (documented)."""
    _stored(r)
    with Session(r) as s:
        note = s.get(Note, "p1")
    assert attrs.asdict(note, recurse=False)["title"] == "hello"
    with pytest.raises(redisca.DetachedInstanceError):
        attrs.asdict(note)  # its author was never loaded
    with Session(r) as s:
        note = s.get(Note, "p1")
        s.preload([note], Note.author)
    assert attrs.asdict(note)["author"] == {"name": "ann", "bio": None, "id": "a"}


# -- 2. closing with pending changes warns -------------------------------------------


def _async_client(r: redis.Redis) -> redis.asyncio.Redis:
    pool = r.connection_pool.connection_kwargs
    names = ("host", "port", "db", "decode_responses", "protocol")
    return redis.asyncio.Redis(**{k: pool[k] for k in names if k in pool})


def test_closing_with_pending_changes_warns_naming_them(r: redis.Redis) -> None:
    _stored(r)
    s = Session(r)
    s.add(Writer("bea", id="b"))  # new
    note = s.get(Note, "p1")
    note.title = "changed"  # dirty
    s.delete(s.get(Writer, "a"))  # deleted
    s.add_command("INCR", "tr.counter")
    s.get(Writer, "nobody")  # loaded and unchanged things are not named
    with pytest.warns(redisca.UncommittedChangesWarning) as caught:
        s.close()
    assert len(caught) == 1
    message = str(caught[0].message)
    named = message.split("4 pending: ")[1].split(" (commit()")[0].split(", ")
    assert sorted(named) == [
        "Note('p1') dirty",
        "Writer('a') deleted",
        "Writer('b') new",
        "command 'INCR'",
    ]
    assert caught[0].filename == __file__  # points at the close() call, not into redisca
    assert not r.exists("tr.counter")
    leaving = pytest.warns(redisca.UncommittedChangesWarning, match=r"1 pending: Writer\('c'\)")
    with leaving, Session(r) as s:
        s.add(Writer("cat", id="c"))


def test_no_warning_after_commit_rollback_or_an_exception(r: redis.Redis) -> None:
    _stored(r)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Session(r) as s:
            s.add(Writer("dan", id="d"))
            s.commit()
        with Session(r) as s:
            s.add(Writer("eve", id="e"))
            s.get(Note, "p1").title = "again"
            s.rollback()
        with pytest.raises(KeyError), Session(r) as s:  # the exception says it
            s.add(Writer("fay", id="f"))
            raise KeyError("boom")
        s = Session(r)
        s.get(Note, "p1").title = "hello"  # assigned its loaded value: nothing to write
        s.close()
    assert not r.exists(redisca.inspect(Writer).key_for("f"))


def test_a_session_dropped_with_pending_changes_warns(r: redis.Redis) -> None:
    s = Session(r)
    s.add(Writer("gus", id="g"))
    with pytest.warns(redisca.UncommittedChangesWarning, match=r"garbage collected.*Writer\('g'\)"):
        del s
        gc.collect()


def test_the_flask_warning_is_the_core_one() -> None:
    pytest.importorskip("flask")
    from redisca.flask import UncommittedChangesWarning

    assert UncommittedChangesWarning is redisca.UncommittedChangesWarning
    assert issubclass(UncommittedChangesWarning, RuntimeWarning)


def test_async_session_close_warns_too(r: redis.Redis) -> None:
    from redisca.asyncio import AsyncSession

    async def main() -> None:
        client = _async_client(r)
        try:
            with pytest.warns(redisca.UncommittedChangesWarning, match=r"Writer\('h'\) new"):
                async with AsyncSession(client) as s:
                    s.add(Writer("hal", id="h"))
            s = AsyncSession(client)
            s.add(Writer("ida", id="i"))
            with pytest.warns(redisca.UncommittedChangesWarning) as caught:
                await s.close()
            assert caught[0].filename == __file__
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with pytest.raises(KeyError):
                    async with AsyncSession(client) as s:
                        s.add(Writer("jo", id="j"))
                        raise KeyError("boom")
        finally:
            await client.aclose()

    asyncio.run(main())


# -- 3. two pending claims of one unique value ---------------------------------------


def test_two_pending_claims_of_one_value_are_refused_before_anything_is_sent(
    counted: Counted,
) -> None:
    s = Session(counted.client)
    first, second = Writer("intro"), Writer("intro")
    s.add_all([first, second])
    counted.reset()
    with pytest.raises(redisca.UniqueViolation) as info:
        s.commit()
    assert counted.round_trips == 0 and counted.commands == 0  # nothing sent
    exc = info.value
    assert exc.owner is None and exc.owner_id is None
    assert (exc.field, exc.value) == ("name", "intro")
    assert exc.claimants == (first, second)
    message = str(exc)
    assert f"Writer({first.id!r}) (new)" in message and f"Writer({second.id!r}) (new)" in message
    assert "already taken" not in message
    assert list(s.new) == [first, second]  # still pending: fix one and commit again
    second.name = "outro"
    s.commit()
    assert (
        counted.client.hget(
            redisca.inspect(Writer).layout.unique_stripe(b"name", b"intro"), b"intro"
        )
        is not None
    )
    # A persistent entity taking a value a new one claims: the same, both named.
    third = Writer("intro2")
    s.add(third)
    first.name = "intro2"
    counted.reset()
    with pytest.raises(
        redisca.UniqueViolation,
        match=r"\(changed\) and Writer.*\(new\)|"
        r"\(new\) and Writer.*\(changed\)",
    ) as info:
        s.commit()
    assert counted.commands == 0 and info.value.owner is None
    s.rollback()
    # A swap is no double claim: one lets the value go, the other takes it.
    first.name, second.name = second.name, first.name
    s.commit()
    s.close()
    with Session(counted.client) as check:
        assert check.get(Writer, first.id).name == "outro"  # type: ignore[union-attr]
        assert check.get(Writer, second.id).name == "intro"  # type: ignore[union-attr]


def test_bulk_add_names_the_second_claimant(r: redis.Redis) -> None:
    with Session(r) as s:
        objs = [Writer("w1"), Writer("w2"), Writer("w1")]
        with pytest.raises(redisca.BulkAddError) as info:
            s.bulk_add(objs)
    assert info.value.entity is objs[2] and info.value.written == 0
    assert isinstance(info.value.error, redisca.UniqueViolation)
    assert info.value.error.owner is None
    assert r.dbsize() == 0


# -- 4. None ids ----------------------------------------------------------------------


def test_none_ids_are_refused_by_reference_get_and_get_many(r: redis.Redis) -> None:
    from redisca.asyncio import AsyncSession

    with Session(r) as s:
        for call in (
            lambda: s.reference(Writer, None),  # type: ignore[arg-type]
            lambda: s.get(Writer, None),  # type: ignore[arg-type]
            lambda: s.get_many(Writer, ["a", None]),  # type: ignore[list-item]
        ):
            with pytest.raises(redisca.ValidationError, match="None names no entity"):
                call()

    async def main() -> None:
        client = _async_client(r)
        try:
            async with AsyncSession(client) as s:
                with pytest.raises(redisca.ValidationError, match="None names no entity"):
                    s.reference(Writer, None)  # type: ignore[arg-type]
                with pytest.raises(redisca.ValidationError, match="None names no entity"):
                    await s.get(Writer, None)  # type: ignore[arg-type]
                with pytest.raises(redisca.ValidationError, match="None names no entity"):
                    await s.get_many(Writer, ["a", None])  # type: ignore[list-item]
        finally:
            await client.aclose()

    asyncio.run(main())


# -- 5. an id where a reference goes ----------------------------------------------------


def test_an_id_assigned_to_a_reference_says_to_use_session_reference(r: redis.Redis) -> None:
    with pytest.raises(redisca.ValidationError, match=r"session\.reference\(Writer, '01a'\)"):
        Note("t", author="01a")  # type: ignore[arg-type]
    note = Note("t")
    with pytest.raises(redisca.ValidationError, match=r"session\.reference\(Writer, 7\)") as e:
        note.author = 7  # type: ignore[assignment]
    assert e.value.field == "author"
    assert note.author is None
    with Session(r) as s:
        note.author = s.reference(Writer, "01a")  # the way it says
        assert note.author.id == "01a"
    assert r.dbsize() == 0


# -- 6. inheritance -------------------------------------------------------------------


def test_a_mapped_subclass_of_a_mapped_class(r: redis.Redis) -> None:
    reg = Registry()

    @reg.mapped(prefix="tr.person")
    @attrs.define
    class Person:
        name: str = String(index=True)
        nick: str | None = None
        id: str | None = None

    @reg.mapped(prefix="tr.admin")
    @attrs.define(kw_only=True)  # fields after Person's defaulted ones need kw_only
    class Admin(Person):
        level: int = Integer(index=True)

    @reg.mapped(prefix="tr.root")
    @attrs.define(kw_only=True)
    class Root(Admin):
        shell: str = String(default="sh")

    assert redisca.inspect(Person).subclasses == [Admin, Root]
    assert redisca.inspect(Admin).subclasses == [Root]
    assert redisca.inspect(Root).subclasses == []
    assert redisca.inspect(Admin).field_names == ["name", "nick", "level"]
    with Session(r) as s:
        s.add_all([Person(name="ann", id="p"), Admin(name="ann", level=3, id="a")])
        s.add(Root(name="ann", level=9, id="r"))
        s.commit()
    with Session(r) as s:
        assert [p.id for p in s.query(Person).filter(Person.name == "ann")] == ["p"]
        admins = s.query(Admin).filter(Admin.level >= 1).all()
        assert [(type(a), a.id, a.level) for a in admins] == [(Admin, "a", 3)]
        root = s.get(Root, "r")
        assert root is not None and (root.name, root.level, root.shell) == ("ann", 9, "sh")
        assert s.get(Person, "a") is None  # an Admin is not stored as a Person
        assert repr(root) == "Root(name='ann', nick=None, id='r', level=9, shell='sh')"


def test_a_reference_to_the_base_refuses_a_mapped_subclass_instance(r: redis.Redis) -> None:
    """A reference stores the id alone and loads it among the base's entities, where a
    subclass entity is not: accepting one wrote a reference that loaded as ``NotFound``
    (or, with an ``on_delete``, was refused as "does not exist")."""
    reg = Registry()

    @reg.mapped(prefix="tr.acct")
    @attrs.define(eq=False)
    class Account:
        name: str = String()
        id: str | None = None

    @reg.mapped(prefix="tr.staff")
    @attrs.define(eq=False, kw_only=True)
    class Staff(Account):
        level: int = 1

    @reg.mapped(prefix="tr.memo")
    @attrs.define(eq=False)
    class Memo:
        owner: Account | None = Reference(Account, index=True, default=None)
        readers: set[Account] = redisca.References(Account)
        id: str | None = None

    staff = Staff(name="root", id="s")
    with pytest.raises(redisca.ValidationError, match=r"got a Staff: .*Reference\(Staff\)"):
        Memo(owner=staff)
    memo = Memo(owner=Account(name="ann", id="a"))
    with pytest.raises(redisca.ValidationError, match="got a Staff"):
        memo.readers = {staff}
    memo.readers.add(staff)  # in place: checked before the commit sends anything
    with Session(r) as s:
        s.add(memo)
        with pytest.raises(redisca.ValidationError, match="got a Staff"):
            s.commit()
        s.rollback()
    assert r.keys("{tr.memo}*") == []

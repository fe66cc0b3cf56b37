"""``Session.bulk_add``: chunks that are each one commit, failures that say how far it got.

Every test runs on the suite's real server; the chunking tests read what the client
actually wrote (``helpers.sent_commands``), so a chunk's one ``MULTI``/``EXEC`` and its
round trips are counted, not assumed.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import redis
from helpers import (
    CountingConnection,
    as_str,
    assert_indexes_consistent,
    connection_kwargs,
    dump_keyspace,
    sent_commands,
)
from models import Company, User
from models import registry as models_registry

import redisca
from redisca import BulkAddError, Registry, Session
from redisca.maintenance import check

registry = Registry()


class Note:
    """A mutable value: it can become unencodable after it was validated."""

    def __init__(self, text: str) -> None:
        self.text = text


class NoteCodec(redisca.Codec):
    types = (Note,)
    name = "Note"

    def encode(self, value: Any) -> bytes:
        return value.text.encode()  # a lone surrogate fails here, with the field's name

    def decode(self, raw: bytes) -> Note:
        return Note(raw.decode())


redisca.register_codec(Note, NoteCodec)


@registry.mapped(prefix="bkpost")
@attrs.define
class Post:
    title: str
    note: Note = attrs.field(factory=lambda: Note(""))
    id: str | None = None


class Recording(CountingConnection):
    """Keeps every command written, in order, with the write it went out in."""

    log: list[tuple[int, list[bytes]]]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        write = self.counter.round_trips
        self.log.extend((write, c) for c in sent_commands(command))
        super().send_packed_command(command, check_health)


@pytest.fixture
def recorded(r: redis.Redis, redis_url: str) -> Iterator[tuple[redis.Redis, list[Any]]]:
    """A client in ``r``'s mode whose commands are logged as ``(write number, command)``."""
    log: list[tuple[int, list[bytes]]] = []
    kwargs = connection_kwargs(r)
    connection_class = type("Rec", (Recording,), {"log": log})
    client = redis.Redis.from_url(
        redis_url,
        connection_class=connection_class,
        decode_responses=kwargs.get("decode_responses", False),
        protocol=kwargs.get("protocol"),
    )
    client.ping()
    log.clear()
    yield client, log
    client.close()


def key(obj_or_cls: Any, ident: str | None = None) -> bytes:
    """An entity's key, as the mapper builds it (the layout is the mapper's business)."""
    if ident is None:
        return redisca.inspect(type(obj_or_cls)).key(obj_or_cls.id)  # type: ignore[no-any-return]
    return redisca.inspect(obj_or_cls).key(ident)  # type: ignore[no-any-return]


def keys_of(r: redis.Redis, cls: type) -> list[bytes]:
    pattern = redisca.inspect(cls).layout.entity("") + b"*"
    return sorted(k if isinstance(k, bytes) else k.encode() for k in r.scan_iter(match=pattern))


def users(n: int, start: int = 0, **values: Any) -> list[User]:
    return [User(email=f"u{i}@x.org", age=i % 100, **values) for i in range(start, start + n)]


def emails(r: redis.Redis) -> list[str]:
    """The email of every stored user, read in one round trip."""
    pipe = r.pipeline(transaction=False)
    for name in keys_of(r, User):
        pipe.hget(name, "eml")
    return [as_str(value) for value in pipe.execute()]


def stored_emails(r: redis.Redis) -> set[str]:
    return set(emails(r))


def assert_consistent(r: redis.Redis) -> None:
    for cls in (User, Company):
        assert_indexes_consistent(r, redisca.inspect(cls))
    report = check(models_registry, r)
    assert report.ok, report.problems


@pytest.mark.single_server(
    reason="logs one server's connection; a cluster's chunks: tests/test_bulk_shards.py"
)
def test_each_chunk_is_one_multi_exec_in_two_round_trips(recorded: Any) -> None:
    client, log = recorded
    objs = users(12)
    assert Session(client).bulk_add(objs, chunk_size=5) == 12
    written = {key(u) for u in objs}
    names = [c[0].upper() for _, c in log]
    assert names.count(b"MULTI") == names.count(b"EXEC") == 3
    # each chunk's MULTI ... EXEC holds exactly its own entities' hashes
    chunks, inside = [], None
    for _, command in log:
        name = command[0].upper()
        if name == b"MULTI":
            inside = []
        elif name == b"EXEC":
            chunks.append(inside)
            inside = None
        elif inside is not None and name == b"HSET" and command[1] in written:
            inside.append(command[1])
    assert chunks == [[key(u) for u in objs[i : i + 5]] for i in (0, 5, 10)]
    # a unique email: WATCH and read, then MULTI/EXEC; two writes per chunk, as commit()
    assert len({write for write, _ in log}) == 6
    assert stored_emails(client) == {f"u{i}@x.org" for i in range(12)}
    assert_consistent(client)


def test_progress_after_each_chunk_with_the_total_when_known(r: redis.Redis) -> None:
    calls: list[tuple[int, int | None]] = []
    Session(r).bulk_add(users(12), chunk_size=5, progress=lambda *a: calls.append(a))
    assert calls == [(5, 12), (10, 12), (12, 12)]
    calls.clear()
    Session(r).bulk_add(
        (u for u in users(7, 20)), chunk_size=3, progress=lambda *a: calls.append(a)
    )
    assert calls == [(3, None), (6, None), (7, None)]
    calls.clear()
    assert Session(r).bulk_add([], progress=lambda *a: calls.append(a)) == 0
    assert calls == []


def test_a_unique_violation_in_chunk_3_names_the_entity_and_keeps_chunks_1_and_2(
    r: redis.Redis,
) -> None:
    with Session(r) as s:
        owner = User(email="taken@x.org")
        s.add(owner)
        s.commit()
    objs = users(15)
    objs[12].email = "TAKEN@x.org"  # Email uniqueness ignores case
    calls: list[tuple[int, int | None]] = []
    with pytest.raises(BulkAddError) as info:
        Session(r).bulk_add(objs, chunk_size=5, progress=lambda *a: calls.append(a))
    error = info.value
    assert isinstance(error.error, redisca.UniqueViolation)
    assert error.__cause__ is error.error and error.error.owner == owner.id
    assert error.written == error.index == 10
    assert error.first_unwritten is objs[10] and error.entity is objs[12]
    assert f"User(id={objs[12].id!r})" in str(error) and "from index 10" in str(error)
    assert calls == [(5, 15), (10, 15)]
    assert stored_emails(r) == {"taken@x.org"} | {f"u{i}@x.org" for i in range(10)}
    assert_consistent(r)
    # written objects left detached; the failed chunk's are transient and can go again
    assert all(redisca.inspect(u).detached for u in objs[:10])
    assert all(redisca.inspect(u).transient for u in objs[10:])
    objs[12].email = "u12@x.org"
    assert Session(r).bulk_add(objs[error.index :], chunk_size=5) == 5
    assert stored_emails(r) == {"taken@x.org"} | {f"u{i}@x.org" for i in range(15)}
    assert_consistent(r)


def test_two_objects_of_one_chunk_claiming_one_value(r: redis.Redis) -> None:
    objs = users(6)
    objs[4].email = "u2@X.org"
    with pytest.raises(BulkAddError) as info:
        Session(r).bulk_add(objs, chunk_size=3)
    assert isinstance(info.value.error, redisca.UniqueViolation)
    assert info.value.written == 3 and info.value.entity is objs[4]
    assert stored_emails(r) == {"u0@x.org", "u1@x.org", "u2@x.org"}


def test_an_existing_key_stops_its_chunk(r: redis.Redis) -> None:
    with Session(r) as s:
        s.add(User(email="old@x.org", id="u7"))
        s.commit()
    objs = [User(email=f"u{i}@x.org", id=f"u{i}") for i in range(10)]
    with pytest.raises(BulkAddError) as info:
        Session(r).bulk_add(objs, chunk_size=4)
    error = info.value
    assert type(error.error) is redisca.IntegrityError
    assert error.written == 4 and error.first_unwritten is objs[4] and error.entity is objs[7]
    assert keys_of(r, User) == sorted(key(User, i) for i in ("u0", "u1", "u2", "u3", "u7"))
    assert as_str(r.hget(key(User, "u7"), "eml")) == "old@x.org"
    assert_consistent(r)


@pytest.mark.single_server(
    reason="logs one server's connection; a cluster's chunks: tests/test_bulk_shards.py"
)
def test_invalid_data_in_a_later_chunk_is_refused_before_that_chunk_is_sent(
    recorded: Any,
) -> None:
    client, log = recorded
    posts = [Post(f"p{i}", Note(f"n{i}"), id=f"p{i}") for i in range(9)]
    posts[6].note.text = "\ud800"  # changed in place: no assignment validated it
    with pytest.raises(BulkAddError) as info:
        Session(client).bulk_add(posts, chunk_size=3)
    error = info.value
    assert isinstance(error.error, redisca.ValidationError) and error.error.field == "note"
    assert error.written == 6 and error.first_unwritten is posts[6] and error.entity is posts[6]
    names = [c[0].upper() for _, c in log]
    assert names.count(b"EXEC") == 2  # chunks 1 and 2; chunk 3 sent nothing at all
    assert not any(c[1:2] == [key(posts[6])] for _, c in log)
    assert keys_of(client, Post) == sorted(key(p) for p in posts[:6])


def test_a_generator_is_drawn_one_chunk_at_a_time(r: redis.Redis) -> None:
    """Neither the input's objects nor their states outlive their chunk, and nothing
    enters the identity map: the client holds one chunk, however long the input."""
    alive = most = 0
    session = Session(r)

    def freed() -> None:
        nonlocal alive
        alive -= 1

    def generate(n: int) -> Iterator[User]:
        nonlocal alive, most
        for i in range(n):
            user = User(email=f"g{i}@x.org", age=i % 50)
            weakref.finalize(user, freed)
            alive += 1
            most = max(most, alive)
            assert not session.states()
            yield user

    gc.collect()
    assert session.bulk_add(generate(1200), chunk_size=200) == 1200
    assert most <= 201  # this chunk, and the object the generator is making
    assert not session.states()
    assert len(stored_emails(r)) == 1200
    assert_consistent(r)


def test_written_objects_leave_detached_and_come_back_persistent(r: redis.Redis) -> None:
    objs = users(3)
    session = Session(r)
    session.bulk_add(objs)
    assert not list(session) and all(u not in session for u in objs)
    assert all(redisca.inspect(u).detached for u in objs)
    session.add(objs[1])  # persistent again: a change is an update, not an insert
    objs[1].age = 77
    session.commit()
    assert as_str(r.hget(key(objs[1]), "age")) == "77"
    assert_consistent(r)


def test_a_shared_transient_reference_is_inserted_once_with_its_first_referrer(
    r: redis.Redis,
) -> None:
    acme = Company(name="Acme")
    objs = users(7, company=acme)
    assert Session(r).bulk_add(objs, chunk_size=3) == 7
    assert redisca.inspect(acme).detached
    assert as_str(r.hget(key(acme), "name")) == "Acme"
    assert {as_str(r.hget(key(u), "company")) for u in objs} == {acme.id}
    assert_consistent(r)


def test_objects_that_are_not_new_are_refused_before_their_chunk(r: redis.Redis) -> None:
    session = Session(r)
    pending = User(email="pending@x.org")
    session.add(pending)
    stored = User(email="stored@x.org")
    with Session(r) as other:
        other.add(stored)
        other.commit()  # stored is detached now
    twin = User(email="twin@x.org", id="twin")
    cases: list[tuple[list[Any], str]] = [
        ([pending], "pending in a session"),
        ([stored], "detached"),
        ([twin, twin], "given to bulk_add twice"),
        (
            [twin, User(email="twin2@x.org", id="twin")],
            "twin is given to bulk_add twice in one",
        ),
        ([User(email="r@x.org", company=_pending_company(session))], "commit that session"),
        ([object()], "object is not mapped"),
    ]
    before = dump_keyspace(r)
    for objs, message in cases:
        with pytest.raises(BulkAddError, match=message) as info:
            session.bulk_add([User(email="first@x.org", id="first"), *objs], chunk_size=10)
        assert info.value.written == 0 and info.value.first_unwritten.id == "first"
        assert info.value.entity is objs[-1]
        assert dump_keyspace(r) == before
    kept = User(email="kept@x.org", id="kept")
    session.add(kept)
    with pytest.raises(BulkAddError, match="already in this session as another object"):
        session.bulk_add([User(email="k2@x.org", id="kept")])
    assert dump_keyspace(r) == before
    assert pending in session.new  # the session's own pending changes are untouched


def _pending_company(session: Session) -> Company:
    company = Company(name="Pending Inc")
    session.add(company)
    return company


@pytest.mark.parametrize("bad", [0, -1, "5", 2.5, True])
def test_a_bad_chunk_size_is_refused(r: redis.Redis, bad: Any) -> None:
    with pytest.raises(redisca.ValidationError, match="chunk_size"):
        Session(r).bulk_add(users(2), chunk_size=bad)
    assert dump_keyspace(r) == {}


def test_a_chunk_ends_where_the_server_changes(r: redis.Redis, make_client: Any) -> None:
    """Objects bound to different clients go in different chunks: a chunk is one
    MULTI/EXEC, so it is written whole or not at all."""
    kwargs = connection_kwargs(r)
    other = make_client(decode_responses=kwargs["decode_responses"], protocol=kwargs["protocol"])
    calls: list[tuple[int, int | None]] = []
    session = Session(r, binds={Company: other})
    objs: list[Any] = [*users(2), Company(name="A"), Company(name="B"), *users(1, 2)]
    session.bulk_add(objs, chunk_size=10, progress=lambda *a: calls.append(a))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert_consistent(r)


def test_concurrent_commits_during_a_bulk_add_keep_uniques_and_indexes(
    r: redis.Redis, make_client: Any
) -> None:
    """A writer claims emails the bulk load also wants, and moves ages, meanwhile.

    Whoever commits a value first owns it; the other is refused. The bulk load goes on
    from where it stopped, without the entity that lost. At the end every email has one
    owner, and ``check`` finds the indexes exactly as the hashes call for.
    """
    kwargs = connection_kwargs(r)
    mode = {"decode_responses": kwargs["decode_responses"], "protocol": kwargs["protocol"]}
    wanted = [User(email=f"c{i}@x.org", age=i % 90) for i in range(1000)]
    started, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        session = Session(make_client(**mode))
        mine: list[User] = []
        i = 0
        try:
            while not done.is_set():
                i += 1
                # from the end down: the bulk load, going up, meets some of these
                user = User(email=f"c{999 - (i * 7) % 1000}@x.org", age=i % 200)
                session.add(user)
                try:
                    session.commit()
                    mine.append(user)
                    started.set()
                except redisca.UniqueViolation:
                    session.expunge(user)
                except redisca.ConflictError:  # the bulk load kept winning: try again
                    session.rollback()
                for old in mine[-3:]:
                    old.age = (old.age or 0) % 199 + 1
                try:
                    session.commit()
                except redisca.ConflictError:
                    session.rollback()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    started.wait(10)
    lost = []
    remaining: list[User] = wanted
    try:
        while remaining:
            try:
                Session(r).bulk_add(remaining, chunk_size=100)
                remaining = []
            except BulkAddError as exc:
                rest = remaining[exc.index :]
                if isinstance(exc.error, redisca.ConflictError):
                    remaining = rest  # the writer kept winning the race: go on
                    continue
                assert isinstance(exc.error, redisca.UniqueViolation), exc
                assert exc.entity is not None
                lost.append(exc.entity)
                remaining = [u for u in rest if u is not exc.entity]
                for u in remaining:  # the unwritten keep the ids they were given
                    assert redisca.inspect(u).transient
    finally:
        done.set()
        thread.join()
    assert not errors, errors
    assert lost  # the writer did win some values
    stored = emails(r)
    assert len(stored) == len(set(stored))
    assert {u.email for u in wanted if u not in lost} <= set(stored)
    assert_consistent(r)

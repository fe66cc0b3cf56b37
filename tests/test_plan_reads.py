"""collect_reads, case by case: which hash fields, existence checks and unique owners a
commit plan reads before MULTI. Pure data: no Redis, no session.

Each test pins one decision of :func:`redisca.session.plan.collect_reads` that the rest of
the suite leaves free (found by mutation testing: the suite passed with it changed).
"""

from __future__ import annotations

from typing import Any

import attrs
from helpers import guard_key, stripe_key

import redisca
from redisca import Email, Integer, Registry
from redisca.session.plan import DELETE, INSERT, UPDATE, CommitPlan, EntityChange, collect_reads

registry = Registry()


@registry.mapped(prefix="prd")
@attrs.define
class Member:
    email: str = Email(field="eml", unique=True)
    age: int | None = Integer(index=True, default=None)
    nickname: str | None = None
    id: str | None = None


@registry.mapped(prefix="prdv", versioned=True)
@attrs.define
class Note:
    title: str | None = None
    id: str | None = None


MM = redisca.inspect(Member)
NM = redisca.inspect(Note)


def change(op: str, ident: str = "m1", mapper: Any = MM, **kw: Any) -> EntityChange:
    """A change of ``mapper``'s entity ``ident``; ``values`` by field name."""
    values = {mapper.by_name[n]: raw for n, raw in kw.pop("values", {}).items()}
    kw.setdefault("needs_read", op != INSERT)
    return EntityChange(mapper, ident, op, values, **kw)


def test_an_in_doubt_insert_reads_the_fields_it_wrote() -> None:
    # Whether the earlier attempt was applied is told by the hash holding what it wrote.
    insert = change(
        INSERT, values={"email": b"a@x.com", "age": b"3", "nickname": None}, in_doubt=True
    )
    reads = collect_reads(CommitPlan((insert,)))
    assert reads.fields == {b"{prd}:m1": [b"eml", b"age", b"nickname"]}
    assert reads.exists == [b"{prd}:m1"]


def test_an_insert_does_not_stop_the_reads_of_the_changes_after_it() -> None:
    insert = change(INSERT, "m1", values={"email": b"a@x.com"})
    update = change(UPDATE, "m2", values={"age": b"4"})
    reads = collect_reads(CommitPlan((insert, update)))
    assert reads.exists == [b"{prd}:m1", b"{prd}:m2"]
    assert reads.fields == {}  # a range entry moves by id: the old age is not read
    assert reads.guards == [guard_key("prd", "m1"), guard_key("prd", "m2")]


def test_a_change_that_reads_nothing_does_not_stop_the_changes_after_it() -> None:
    # An update of an unindexed field of a loaded, unversioned entity needs no read.
    blind = change(UPDATE, "m1", values={"nickname": b"al"}, needs_read=False)
    delete = change(DELETE, "m2")
    reads = collect_reads(CommitPlan((blind, delete)))
    assert reads.exists == []  # a delete asks no EXISTS (test_plan.test_delete)
    assert reads.guards == [guard_key("prd", "m2")]
    assert reads.fields == {b"{prd}:m2": [b"eml"]}
    assert reads.owners == []  # its email is released where the stripe names it


def test_a_non_unique_field_does_not_stop_the_unique_claims_after_it() -> None:
    update = change(UPDATE, values={"age": b"5", "email": b"New@X.com"})
    reads = collect_reads(CommitPlan((update,)))
    claimed = (stripe_key("prd", "eml", "new@x.com"), b"new@x.com")
    assert reads.claims == {claimed}
    assert reads.owners == [claimed]
    assert reads.keys() == [claimed[0], guard_key("prd", "m1")]


def test_an_in_doubt_update_reads_its_changed_fields() -> None:
    # nickname is not indexed: only the doubt makes the commit read it back.
    update = change(UPDATE, values={"nickname": b"al"}, in_doubt=True)
    assert collect_reads(CommitPlan((update,))).fields == {b"{prd}:m1": [b"nickname"]}
    sure = change(UPDATE, values={"nickname": b"al"})
    assert collect_reads(CommitPlan((sure,))).fields == {}


def test_an_in_doubt_versioned_update_reads_its_fields_and_version_once() -> None:
    update = change(UPDATE, "n1", NM, values={"title": b"t"}, expect_version=2, in_doubt=True)
    assert collect_reads(CommitPlan((update,))).fields == {b"{prdv}:n1": [b"#v", b"title"]}


def test_an_update_to_none_claims_nothing() -> None:
    # Removing a unique value releases the old one (unread) and claims no new one.
    update = change(UPDATE, values={"email": None})
    reads = collect_reads(CommitPlan((update,)))
    assert reads.claims == set()
    assert reads.owners == []
    assert reads.fields == {b"{prd}:m1": [b"eml"]}
    assert reads.keys() == [guard_key("prd", "m1")]  # a value only released is not watched

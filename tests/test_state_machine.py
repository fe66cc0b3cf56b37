"""Model-based test: several sessions on separate clients against a model of Redis.

A hypothesis ``RuleBasedStateMachine`` drives three sessions (bytes over RESP3,
str over RESP2, bytes over RESP2) through adds (with colliding ids and unique
values), lazy references, changes of plain, equality-indexed, range-indexed and
unique fields (to ``None`` too), deletes, commits, rollbacks, refreshes,
expunges and queries. Beside them runs a model: what Redis must hold (per the
docs: diff-based writes, the delete wins over a plain update, versioned
entities refuse stale writes, an entity deleted and created again included) and
what each session holds (snapshot, pending values, status). Every step checks
each session's ``new``/``dirty``/``deleted`` against the model; every commit
checks that Redis holds exactly the model's entities, that the indexes match
the hashes (``tests/helpers`` and ``redisca.maintenance.check``), and that a
battery of queries (equality, ranges with offset and limit, counts, ``all()``,
ascending and descending orders, ``|`` and ``in_()``) answers as the model does; every rollback
checks that Redis still holds the model's entities. A commit the model says
must fail must raise the predicted error, change no key, and leave the
session's pending changes as they were.

Beside them, three models of collections and referential integrity (``Target``, ``Rel``
with an indexed ``Set``, a ``List``, a ``References`` and one ``Reference`` per
``on_delete`` mode, ``Leaf`` cascading from ``Rel``) are changed by rules of their own, each
in a fresh session: inserts (a reference to a missing entity refused), deletes (restrict
refuses and writes nothing, cascade follows the chain, set_null clears), in-place
mutations, and a change interleaved with another session's deletes. After each of their
commits every key of those models is compared with the model's, no reference dangles in
the raw hashes, and ``contains`` (alone, with ``&`` and ``|``) answers as the model does.

Beside them, an expiring model (``Token``: mapped with ``ttl=``, a unique, an
equality-indexed, a range-indexed and a plain field) has rules of its own, each in a
fresh session: inserts (ids of expired tokens taken again, ``session.expire`` with a
ttl or ``None``), changes (codes claimed from expired holders, refused from live ones),
``session.expire`` on live tokens, deletes (of expired ones through a reference too),
tokens expiring (a raw ``ZADD`` of an instant long past, so the wall clock never
decides), a loaded token expiring under its session (an indexed change or an ``expire``
refused as stale, a plain one skipped), a code claimed at once from a holder that just
expired, and ``maintenance.sweep``. Live instants are an hour or two away. After each of
them (nothing else writes the model) no reader sees an expired token: ``get`` and
``get_many`` of every id, a battery of queries and counts answer with the live ones,
``expires_at`` as loaded is the ``H#exp`` score, Redis holds the live tokens' values,
and ``check`` finds no problem (leftovers of expired ones are no drift).

Profiles (environment variable ``REDISCA_HYPOTHESIS_PROFILE``):

``ci`` (default)
    200 examples of up to 50 steps, derandomized: every run replays the same
    examples, so a failure reproduces as it is.
``deep``
    random examples, 5000 by default (``REDISCA_HYPOTHESIS_EXAMPLES=n`` to change),
    up to 60 steps each; a failure prints the ``@reproduce_failure`` blob::

        REDISCA_HYPOTHESIS_PROFILE=deep python -m pytest -s tests/test_state_machine.py

``--hypothesis-seed=N`` fixes the seed of a deep run.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncdriver
import attrs
import pytest
import redis
from helpers import (
    CLUSTER,
    assert_indexes_consistent,
    connect,
    dump_keyspace,
    set_instants,
    without_guards,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import redisca
from redisca import Email, Float, Integer, Reference, Registry, Session, String

try:  # the maintenance package's check, once it exists; the test helper in any case
    from redisca.maintenance import check as maintenance_check
except ImportError:  # pragma: no cover - until redisca.maintenance lands
    maintenance_check = None
from redisca.maintenance import sweep as maintenance_sweep
from redisca.mapping import expressions

registry = Registry()

#: The model predicts all or nothing of a commit over both classes. A cluster commits
#: one transaction per hash slot (all or nothing within one, like one server per
#: server of ``binds``), so in cluster mode both classes share a slot group: the machine
#: then checks what a cluster promises, on a cluster.
GROUP = "sm" if CLUSTER else None


@registry.mapped(prefix="smi", slot_group=GROUP)
@attrs.define
class Item:
    email: str | None = Email(unique=True, default=None)
    color: str | None = String(index=True, default=None)
    rank: int | None = Integer(index=True, default=None)
    score: float | None = Float(index=True, default=None)
    note: str | None = None
    id: str | None = None


@registry.mapped(prefix="smv", versioned=True, slot_group=GROUP)
@attrs.define
class Doc:
    email: str | None = Email(unique=True, default=None)
    color: str | None = String(index=True, default=None)
    rank: int | None = Integer(index=True, default=None)
    score: float | None = Float(index=True, default=None)
    note: str | None = None
    id: str | None = None


# Collections and referential integrity: a target, its referrers (one reference per
# ``on_delete`` mode, an indexed set and a list beside them) and theirs (a cascade chain
# Target -> Rel -> Leaf, and a restrict on the middle link). Changed by rules of their
# own, each in a fresh session, and checked key by key against ``Sessions.rel``.


@registry.mapped(prefix="smt", slot_group=GROUP)
@attrs.define(eq=False)
class Target:
    name: str | None = None
    id: str | None = None


@registry.mapped(prefix="smr", slot_group=GROUP)
@attrs.define(eq=False)
class Rel:
    tags: set[str] = redisca.Set(str, index=True)
    nums: list[int] = attrs.Factory(list)  # inferred: List(int)
    links: set[Target] = redisca.References(Target, index=True)  # no on_delete: may dangle
    hard: Target | None = Reference(Target, index=True, on_delete="restrict", default=None)
    owner: Target | None = Reference(Target, index=True, on_delete="cascade", default=None)
    soft: Target | None = Reference(Target, index=True, on_delete="set_null", default=None)
    id: str | None = None


@registry.mapped(prefix="sml", slot_group=GROUP)
@attrs.define(eq=False)
class Leaf:
    parent: Rel | None = Reference(Rel, index=True, on_delete="cascade", default=None)
    pin: Rel | None = Reference(Rel, index=True, on_delete="restrict", default=None)
    id: str | None = None


# Expiry: a model whose entities live an hour unless told otherwise. "Live" is always
# far in the future and "expired" always in the past (a raw ZADD of a small instant in
# ``H#exp``), so the wall clock never decides an outcome. Changed by rules of its own,
# each in a fresh session, and checked after each of them against ``Sessions.tok``.


@registry.mapped(prefix="sme", slot_group=GROUP, ttl=3600)
@attrs.define
class Token:
    code: str | None = String(unique=True, default=None)
    owner: str | None = String(index=True, default=None)
    rank: int | None = Integer(index=True, default=None)
    note: str | None = None
    id: str | None = None


CLASSES = (Item, Doc)
FIELDS = ("email", "color", "rank", "score", "note")
INDEXED = frozenset(FIELDS) - {"note"}
RANGED = ("rank", "score")
IDS = ("1", "2", "3", "4", "5")
# Emails collide ignoring case: a@, A@ and a@X share one unique key.
VALUES: dict[str, tuple[Any, ...]] = {
    "email": (None, "a@x.org", "A@x.org", "a@X.ORG", "b@x.org", "B@x.org", "c@x.org"),
    "color": (None, "red", "blue", "Red", ""),
    "rank": (None, -3, 0, 1, 2, 7),
    "score": (None, -1.5, 0.0, 2.25, 7.0),
    "note": (None, "", "x", "y z"),
}
BOUNDS = {"rank": (-4, -3, 0, 0.5, 1, 2, 7, 8), "score": (-2.0, -1.5, 0, 1, 2.25, 7.0)}
MODES = (
    {"decode_responses": False, "protocol": 3},
    {"decode_responses": True, "protocol": 2},
    {"decode_responses": False, "protocol": 2},
)


def values_of(field_name: str) -> st.SearchStrategy[Any]:
    """None half of the time: entities with one field left, or none, are the edge cases."""
    return st.none() | st.sampled_from(VALUES[field_name][1:])


def fields_of(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in FIELDS}


def email_key(value: str) -> str:
    return value.lower()


# -- the model -----------------------------------------------------------------------------


_incarnations = iter(range(1, 1 << 62))


@dataclass
class Row:
    """An entity as Redis must hold it.

    ``version`` counts the commits of one incarnation (each insert starts a new one);
    what redisca stores in ``#v`` is its own business, but it must differ for every
    (incarnation, version), or a stale write could pass (``check_entities``).
    """

    fields: dict[str, Any]
    version: int | None
    incarnation: int = field(default_factory=lambda: next(_incarnations))


@dataclass
class Tracked:
    """An instance as its session must hold it."""

    obj: Any
    cls: type
    id: str
    snap: dict[str, Any] = field(default_factory=dict)  # last loaded or written values
    vals: dict[str, Any] = field(default_factory=dict)  # attributes set on the object
    loaded: bool = False
    persistent: bool = False
    deleted: bool = False
    version: int | None = None
    incarnation: int | None = None

    def diff(self) -> dict[str, Any]:
        return {k: v for k, v in self.vals.items() if k not in self.snap or self.snap[k] != v}

    def hydrate(self, row: Row, *, overwrite: bool) -> None:
        self.snap = dict(row.fields)
        self.vals = dict(row.fields) if overwrite else {**row.fields, **self.vals}
        self.loaded = self.persistent = True
        self.version = row.version
        self.incarnation = row.incarnation


DB = dict[type, dict[str, Row]]


@dataclass
class Outcome:
    """What the model says a commit does: the errors it may raise, or its effects."""

    errors: set[type] = field(default_factory=set)
    vanished: list[Tracked] = field(default_factory=list)  # plain updates the delete beat


def predict_commit(db: DB, tracked: list[Tracked]) -> Outcome:
    """The documented commit protocol, applied to the model (docs/session.rst)."""
    out = Outcome()
    claims: dict[tuple[type, str], str] = {}
    released: set[tuple[type, str]] = set()

    def claim(t: Tracked, value: str) -> None:
        key = (t.cls, email_key(value))
        if claims.setdefault(key, t.id) != t.id:
            out.errors.add(redisca.UniqueViolation)

    for t in tracked:
        rows = db[t.cls]
        row = rows.get(t.id)
        versioned = t.cls is Doc
        stale = (
            versioned
            and t.loaded
            and row is not None
            and (row.version != t.version or row.incarnation != t.incarnation)
        )
        if t.deleted:
            if row is None:
                continue  # already gone: nothing to do
            if stale:
                out.errors.add(redisca.StaleDataError)
            if row.fields["email"] is not None:
                released.add((t.cls, email_key(row.fields["email"])))
        elif not t.persistent:
            if row is not None:
                out.errors.add(redisca.IntegrityError)
            if t.vals["email"] is not None:
                claim(t, t.vals["email"])
        else:
            diff = t.diff()
            if not diff:
                continue
            if not (not t.loaded or versioned or INDEXED & diff.keys()):
                if row is None:
                    out.vanished.append(t)
                continue
            if row is None:
                out.errors.add(redisca.StaleDataError if t.loaded else redisca.NotFound)
                continue
            if stale:
                out.errors.add(redisca.StaleDataError)
            if "email" in diff and diff["email"] != row.fields["email"]:
                if row.fields["email"] is not None:
                    released.add((t.cls, email_key(row.fields["email"])))
                if diff["email"] is not None:
                    claim(t, diff["email"])
    for (cls, key), ident in claims.items():
        owner = owner_of(db, cls, key)
        if owner is not None and owner != ident and (cls, key) not in released:
            out.errors.add(redisca.UniqueViolation)
    return out


def apply_commit(db: DB, tracked: list[Tracked], outcome: Outcome) -> list[Tracked]:
    """Apply a successful commit to the model; returns the instances that leave the session."""
    gone = list(outcome.vanished)
    for t in tracked:
        rows = db[t.cls]
        versioned = t.cls is Doc
        if t.deleted:
            rows.pop(t.id, None)
            gone.append(t)
        elif not t.persistent:
            rows[t.id] = Row(dict(t.vals), 1 if versioned else None)
            t.snap, t.loaded, t.persistent = dict(t.vals), True, True
            t.version = 1 if versioned else None
            t.incarnation = rows[t.id].incarnation
        elif t not in outcome.vanished and (diff := t.diff()):
            row = rows[t.id]
            row.fields.update(diff)
            t.snap.update(diff)
            if versioned:
                row.version = (row.version or 0) + 1
                t.version = (t.version or 0) + 1
    return gone


def owner_of(db: DB, cls: type, key: str) -> str | None:
    owners = [i for i, row in db[cls].items() if _lower(row.fields["email"]) == key]
    assert len(owners) <= 1, f"the model itself has two owners of {key}: {owners}"
    return owners[0] if owners else None


def _lower(value: str | None) -> str | None:
    return None if value is None else email_key(value)


# -- collections and references in the model -----------------------------------------------

REL_CLASSES = (Target, Rel, Leaf)
REL_IDS = ("1", "2", "3")
TAGS = ("a", "b", "c")
NUMS = st.integers(-2, 5)
#: Each referring class's references: field -> (target class, on_delete).
LINKS: dict[type, dict[str, tuple[type, str]]] = {
    Rel: {"hard": (Target, "restrict"), "owner": (Target, "cascade"), "soft": (Target, "set_null")},
    Leaf: {"parent": (Rel, "cascade"), "pin": (Rel, "restrict")},
}
#: A row of ``Sessions.rel``: references as target ids, ``tags`` a set, ``nums`` a list.
RelRow = dict[str, Any]
RelDB = dict[type, dict[str, RelRow]]
Key = tuple[type, str]


def rel_fields(cls: type) -> tuple[str, ...]:
    if cls is Target:
        return ("name",)
    return ("tags", "nums", "links", *LINKS[cls]) if cls is Rel else tuple(LINKS[cls])


def rel_row(obj: Any) -> RelRow:
    """An instance's values as the model holds them."""
    out: RelRow = {}
    for name in rel_fields(type(obj)):
        value = getattr(obj, name)
        if name in LINKS.get(type(obj), {}):
            value = None if value is None else value.id
        elif name == "tags":
            value = set(value)
        elif name == "links":
            value = {target.id for target in value}
        elif name == "nums":
            value = list(value)
        out[name] = value
    return out


@st.composite
def rel_rows(draw: Any, cls: type, known: RelDB | None = None) -> RelRow:
    """A row; its references to ``known`` entities mostly, when given (else any id)."""
    row: RelRow = {}
    for name in rel_fields(cls):
        if name == "name":
            row[name] = draw(st.none() | st.sampled_from(("x", "")))
        elif name == "tags":
            row[name] = draw(st.sets(st.sampled_from(TAGS)))
        elif name == "links":
            row[name] = draw(st.sets(st.sampled_from(REL_IDS), max_size=2))
        elif name == "nums":
            row[name] = draw(st.lists(NUMS, max_size=3))
        else:
            stored = sorted(known[LINKS[cls][name][0]]) if known is not None else []
            pick = st.sampled_from(stored) if stored else st.nothing()
            row[name] = draw(st.none() | pick | pick | st.sampled_from(REL_IDS))
    return row


def dangling(rel: RelDB, cls: type, row: RelRow, new: set[Key], gone: set[Key]) -> bool:
    """Whether ``row`` refers to an entity neither stored (and kept) nor new: the commit
    must refuse it (every reference here has an ``on_delete``)."""
    for name, (target, _mode) in LINKS.get(cls, {}).items():
        ident = row.get(name)
        if ident is None:
            continue
        key = (target, ident)
        if key in gone or (ident not in rel[target] and key not in new):
            return True
    return False


def cascade(rel: RelDB, picked: set[Key]) -> tuple[set[Key], bool]:
    """What deleting ``picked`` deletes (cascades followed to the end), and whether a
    ``restrict`` referrer that is not deleted refuses the commit."""
    doomed = set(picked)
    grew = True
    while grew:
        grew = False
        for cls, links in LINKS.items():
            for ident, row in rel[cls].items():
                if (cls, ident) in doomed:
                    continue
                if any(
                    mode == "cascade" and (target, row[name]) in doomed
                    for name, (target, mode) in links.items()
                ):
                    doomed.add((cls, ident))
                    grew = True
    refused = any(
        mode == "restrict" and (cls, ident) not in doomed and (target, row[name]) in doomed
        for cls, links in LINKS.items()
        for ident, row in rel[cls].items()
        for name, (target, mode) in links.items()
    )
    return doomed, refused


def apply_deletes(rel: RelDB, doomed: set[Key]) -> None:
    for cls, ident in doomed:
        rel[cls].pop(ident, None)
    for cls, links in LINKS.items():
        for row in rel[cls].values():
            for name, (target, mode) in links.items():
                if mode == "set_null" and (target, row[name]) in doomed:
                    row[name] = None


# -- expiry in the model ----------------------------------------------------------------

TOK_IDS = ("1", "2", "3", "4")
TOK_FIELDS = ("code", "owner", "rank", "note")
TOK_VALUES: dict[str, tuple[Any, ...]] = {
    "code": ("a", "b", "c"),
    "owner": ("ann", "bob", ""),
    "rank": (-1, 0, 3),
    "note": ("", "x"),
}
HOUR = 3600
#: What ``session.expire`` is given, beside the model's own ttl: far from now either way.
TTLS = (HOUR, 2 * HOUR, None)
#: An instant long past (ms since the epoch): an entity whose ``H#exp`` score it is, is
#: expired (never 0, which a score could be by mistake).
PAST = 1000


@st.composite
def tok_rows(draw: Any, codes: tuple[str, ...] = ()) -> dict[str, Any]:
    """Values of a ``Token``; its ``code`` drawn mostly from ``codes`` when given (the
    values expired entities held, to be claimed again)."""
    row = {name: draw(st.none() | st.sampled_from(TOK_VALUES[name])) for name in TOK_FIELDS}
    if codes and draw(st.booleans()):
        row["code"] = draw(st.sampled_from(codes))
    return row


def tok_unique(rows: dict[str, dict[str, Any]]) -> bool:
    """Whether no two live entities hold one code: the commit leading to ``rows`` (all
    the live entities after it) passes its unique checks exactly then."""
    codes = [row["code"] for row in rows.values() if row["code"] is not None]
    return len(codes) == len(set(codes))


def tok_fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in TOK_FIELDS}


def tok_stored(stored: dict[bytes, bytes]) -> dict[str, Any]:
    user = {k.decode(): v.decode() for k, v in stored.items() if not k.startswith(b"#")}
    assert set(user) <= set(TOK_FIELDS), user
    row: dict[str, Any] = {name: user.get(name) for name in TOK_FIELDS}
    if row["rank"] is not None:
        row["rank"] = int(row["rank"])
    return row


def instant_of(obj: Any) -> int | None:
    """``inspect(obj).expires_at`` in ms since the epoch (the unit of ``H#exp``)."""
    at = redisca.inspect(obj).expires_at
    if at is None:
        return None
    assert at.tzinfo is not None and at.utcoffset() == timedelta(0), at
    return round(at.timestamp() * 1000)


def server_ms(r: Any) -> int:
    """The server's clock (in cluster mode, a master's), in ms."""
    if CLUSTER:
        node = r.get_default_node()
        seconds, micros = r.get_redis_connection(node).time()
    else:
        seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def tok_battery() -> Iterator[QuerySpec]:
    """Queries asked after every step of the expiry rules: each index, each plan."""
    yield QuerySpec(Token)
    for name in ("code", "owner", "rank"):
        for value in TOK_VALUES[name]:
            yield QuerySpec(Token, (Cond(name, "eq", value),))
    yield QuerySpec(Token, (Cond("rank", "ge", 0),))
    yield QuerySpec(Token, (Cond("rank", "between", -1, 0),), offset=1)
    yield QuerySpec(Token, order=("rank", True), limit=2)
    yield QuerySpec(Token, order=("rank", False), offset=1, limit=2)
    yield QuerySpec(Token, (Cond("owner", "eq", "ann"), Cond("rank", "lt", 3)), ("rank", True))
    yield QuerySpec(Token, (AnyOf((Cond("code", "eq", "a"), Cond("owner", "eq", "bob"))),))
    yield QuerySpec(Token, (In("code", ("b", "c")),), order=("rank", False), limit=1)


# -- queries on the model ------------------------------------------------------------------


@dataclass(frozen=True)
class Cond:
    name: str
    op: str  # eq, ge, gt, le, lt, between
    a: Any
    b: Any = None

    def build(self, cls: type) -> Any:
        attr = getattr(cls, self.name)
        ops: dict[str, Callable[[], Any]] = {
            "eq": lambda: attr == self.a,
            "ge": lambda: attr >= self.a,
            "gt": lambda: attr > self.a,
            "le": lambda: attr <= self.a,
            "lt": lambda: attr < self.a,
            "between": lambda: attr.between(self.a, self.b),
        }
        return ops[self.op]()

    def holds(self, fields: dict[str, Any]) -> bool:
        value = fields[self.name]
        if value is None:
            return False
        if self.op == "eq":
            if self.name == "email":
                return bool(email_key(value) == email_key(self.a))
            return bool(value == self.a)
        checks = {
            "ge": lambda: value >= self.a,
            "gt": lambda: value > self.a,
            "le": lambda: value <= self.a,
            "lt": lambda: value < self.a,
            "between": lambda: self.a <= value <= self.b,
        }
        return bool(checks[self.op]())


@dataclass(frozen=True)
class In:
    """``Field.in_(values)``: an OR of equalities (none: matches nothing)."""

    name: str
    values: tuple[Any, ...]

    def build(self, cls: type) -> Any:
        return getattr(cls, self.name).in_(list(self.values))

    def holds(self, fields: dict[str, Any]) -> bool:
        return any(Cond(self.name, "eq", v).holds(fields) for v in self.values)

    def branches(self) -> list[list[Cond]]:
        return [[Cond(self.name, "eq", v)] for v in self.values]


@dataclass(frozen=True)
class AnyOf:
    """``a | b | ...``, each part a condition, an ``In`` or an AND of conditions."""

    parts: tuple[Any, ...]

    def build(self, cls: type) -> Any:
        built = [part_build(p, cls) for p in self.parts]
        out = built[0]
        for part in built[1:]:
            out = out | part
        return out

    def holds(self, fields: dict[str, Any]) -> bool:
        return any(part_holds(p, fields) for p in self.parts)

    def branches(self) -> list[list[Cond]]:
        return [b for p in self.parts for b in part_branches(p)]


def part_build(part: Any, cls: type) -> Any:
    if isinstance(part, tuple):  # an AND
        built = [p.build(cls) for p in part]
        out = built[0]
        for p in built[1:]:
            out = out & p
        return out
    return part.build(cls)


def part_holds(part: Any, fields: dict[str, Any]) -> bool:
    if isinstance(part, tuple):
        return all(p.holds(fields) for p in part)
    return bool(part.holds(fields))


def part_branches(part: Any) -> list[list[Cond]]:
    """The AND-branches (disjunctive normal form) of a filter part, in order."""
    if isinstance(part, tuple):
        out: list[list[Cond]] = [[]]
        for p in part:
            out = [a + b for a in out for b in part_branches(p)]
        return out
    if isinstance(part, Cond):
        return [[part]]
    return list(part.branches())


@dataclass(frozen=True)
class QuerySpec:
    cls: type
    conds: tuple[Any, ...] = ()  # Cond, In, AnyOf: ANDed
    order: tuple[str, bool] | None = None  # (field, descending)
    offset: int = 0
    limit: int | None = None

    def build(self, session: Session) -> Any:
        query = session.query(self.cls).filter(*[part_build(c, self.cls) for c in self.conds])
        if self.order is not None:
            attr = getattr(self.cls, self.order[0])
            query = query.order_by(attr.desc() if self.order[1] else attr)
        if self.offset:
            query = query.offset(self.offset)
        if self.limit is not None:
            query = query.limit(self.limit)
        return query

    def expected(self, db: DB) -> list[str]:
        rows = db[self.cls]
        ids = [i for i, row in rows.items() if part_holds(self.conds, row.fields)]
        by = self.order[0] if self.order else None
        branches = part_branches(self.conds)
        if by is None and len(branches) == 1:  # one branch: its first range condition's
            by = next((c.name for c in branches[0] if c.name in RANGED), None)
        if by is None:  # the default order: the first range field's, else id order
            default = redisca.inspect(self.cls).default_order
            by = None if default is None else default.name
        if by is None:
            ordered = sorted(ids)
        else:
            # Ascending by the field, ties by id, entities without a value last (+inf);
            # a descending order is the exact reverse.
            def key(i: str) -> tuple[float, str]:
                value = rows[i].fields[by]
                return (math.inf if value is None else float(value), i)

            ordered = sorted(ids, key=key, reverse=bool(self.order and self.order[1]))
        end = None if self.limit is None else self.offset + self.limit
        return ordered[self.offset : end]


def conditions() -> st.SearchStrategy[Cond]:
    eq = st.one_of(
        *[
            st.builds(Cond, st.just(name), st.just("eq"), st.sampled_from(VALUES[name][1:]))
            for name in INDEXED
        ]
    )
    ranged = st.one_of(
        *[
            st.builds(
                Cond,
                st.just(name),
                st.sampled_from(("ge", "gt", "le", "lt", "between")),
                st.sampled_from(BOUNDS[name]),
                st.sampled_from(BOUNDS[name]),
            )
            for name in RANGED
        ]
    )
    return st.one_of(eq, ranged.map(_ordered_between))


def in_conditions() -> st.SearchStrategy[In]:
    return st.one_of(
        *[
            st.builds(
                In,
                st.just(name),
                st.lists(st.sampled_from(VALUES[name][1:]), max_size=3).map(tuple),
            )
            for name in INDEXED
        ]
    )


def filter_parts() -> st.SearchStrategy[Any]:
    """A condition, an ``in_``, or an OR of two or three of them (or of ANDs of two)."""
    simple = conditions() | in_conditions()
    part = simple | st.tuples(simple, simple)
    return simple | st.builds(AnyOf, st.lists(part, min_size=2, max_size=3).map(tuple))


def _ordered_between(cond: Cond) -> Cond:
    """between(high, low) is refused (a QueryError): draw the bounds in order."""
    if cond.op != "between" or cond.a <= cond.b:
        return cond
    return Cond(cond.name, cond.op, cond.b, cond.a)


def _expands_within_limit(spec: QuerySpec) -> bool:
    """Whether the filter's ORs, distributed, stay within the library's branch limit: a
    bigger one is refused with a QueryError before anything is sent (tested in
    test_expressions.py), which is not what this machine checks. Three ORs of an ``in_`` of
    three drawn values and two more parts can reach 75 branches."""
    try:
        expressions.branches([part_build(c, spec.cls) for c in spec.conds])
    except redisca.QueryError:
        return False
    return True


queries = st.builds(
    QuerySpec,
    st.sampled_from(CLASSES),
    st.lists(filter_parts(), max_size=3).map(tuple),
    st.none() | st.tuples(st.sampled_from(RANGED), st.booleans()),
    st.integers(0, 3),
    st.none() | st.integers(0, 4),
).filter(_expands_within_limit)


def battery(db: DB, cls: type) -> Iterator[QuerySpec]:
    """Queries run after every commit: each index, each kind of plan.

    (The ``query`` rule draws any combination; these are the ones always asked.)
    """
    yield QuerySpec(cls)
    rows = list(db[cls].values())
    for name in INDEXED:
        stored = [row.fields[name] for row in rows if row.fields[name] is not None]
        yield QuerySpec(cls, (Cond(name, "eq", stored[0] if stored else VALUES[name][1]),))
    for name in RANGED:
        for desc in (False, True):
            yield QuerySpec(cls, order=(name, desc), offset=1, limit=3)
    yield QuerySpec(cls, (Cond("rank", "between", 0, 2),), offset=1, limit=2)
    yield QuerySpec(cls, (Cond("score", "lt", 3),), order=("rank", True))
    yield QuerySpec(cls, (Cond("color", "eq", "red"), Cond("rank", "ge", 0)), ("score", True))
    yield QuerySpec(cls, (Cond("email", "eq", "A@x.org"), Cond("rank", "gt", -5)))
    # OR and IN: several branches come in the order_by's order, else the model's default
    either = AnyOf((Cond("color", "eq", "red"), (Cond("rank", "ge", 1), Cond("score", "lt", 7))))
    yield QuerySpec(cls, (either,), offset=1, limit=2)
    yield QuerySpec(cls, (either,), order=("score", True))
    yield QuerySpec(cls, (In("color", ("red", "blue", "")),), order=("rank", False), limit=3)
    yield QuerySpec(cls, (In("email", ("a@X.ORG", "b@x.org")), Cond("rank", "ge", 0)))
    yield QuerySpec(
        cls, (In("rank", (0, 7)), AnyOf((In("score", (7.0,)), Cond("color", "eq", "blue"))))
    )
    yield QuerySpec(cls, (In("rank", (2,)),), offset=1)  # one value: an equality
    yield QuerySpec(cls, (In("color", ()),))  # none: nothing


# -- the machine ---------------------------------------------------------------------------


class Figures:
    examples = 0
    steps = 0
    commits = 0
    refused = 0
    queries = 0
    expiry_checks = 0
    takeovers = 0  # commits claiming a code an expired token's leftovers held


#: The URL of the server (in cluster mode, of a node of the cluster), set by the test
#: before the machine runs (hypothesis builds machines itself).
SERVER: list[str] = []


class Sessions(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        url = SERVER[0]
        self.clients = [connect(url, **mode) for mode in MODES]
        self.raw = connect(url, decode_responses=False)
        self.raw.flushall()  # on a cluster, every master
        # the last one an AsyncSession (through the suites' blocking facade), alongside
        # sync sessions on the same data
        self.sessions = [Session(client) for client in self.clients[:-1]]
        self.sessions.append(asyncdriver.Driven(self.clients[-1]))
        self.db: DB = {cls: {} for cls in CLASSES}
        self.versions: dict[tuple[type, str], tuple[dict[Any, int], dict[int, Any]]] = {}
        # per session, in the order the session tracks them
        self.tracked: list[dict[tuple[type, str], Tracked]] = [{} for _ in self.sessions]
        self.rel: RelDB = {cls: {} for cls in REL_CLASSES}
        # expiry: the live tokens' values and instants (ms, None: never), and the values
        # the expired ones held (their leftovers may be in Redis until swept)
        self.tok: dict[str, dict[str, Any]] = {}
        self.tok_at: dict[str, int | None] = {}
        self.tok_dead: dict[str, dict[str, Any]] = {}
        Figures.examples += 1

    def teardown(self) -> None:
        for client in [*self.clients, self.raw]:
            client.close()

    # -- helpers ---------------------------------------------------------------------

    def pick(self, data: st.DataObject, s: int, live: bool = True) -> Tracked | None:
        choices = [t for t in self.tracked[s].values() if not (live and t.deleted)]
        if not choices:
            return None
        return data.draw(st.sampled_from(choices))

    def model_get(self, s: int, cls: type, ident: str) -> Tracked | None:
        """What ``session.get`` does, in the model."""
        t = self.tracked[s].get((cls, ident))
        row = self.db[cls].get(ident)
        if t is not None and (t.loaded or not t.persistent):
            return None if t.deleted else t
        if row is None:
            return None
        if t is None:
            t = Tracked(obj=None, cls=cls, id=ident)
            self.tracked[s][(cls, ident)] = t
        t.hydrate(row, overwrite=False)
        return None if t.deleted else t  # loaded, but a pending delete hides it

    def forget(self, s: int, t: Tracked) -> None:
        del self.tracked[s][(t.cls, t.id)]

    # -- rules: building up pending changes -------------------------------------------

    @initialize(data=st.data())
    def seed(self, data: st.DataObject) -> None:
        """A few committed entities to start from, some of them versioned."""
        session = Session(self.raw)
        for cls in CLASSES:
            for ident in data.draw(st.sets(st.sampled_from(IDS), max_size=3)):
                values = {name: data.draw(values_of(name)) for name in FIELDS}
                if values["email"] is not None and owner_of(
                    self.db, cls, email_key(values["email"])
                ):
                    values["email"] = None
                session.add(cls(**values, id=ident))
                self.db[cls][ident] = Row(values, 1 if cls is Doc else None)
        session.commit()
        self.check_redis()

    @rule(
        s=st.integers(0, len(MODES) - 1),
        cls=st.sampled_from(CLASSES),
        ident=st.none() | st.sampled_from(IDS),
        data=st.data(),
    )
    def add(self, s: int, cls: type, ident: str | None, data: st.DataObject) -> None:
        values = {name: data.draw(values_of(name), label=name) for name in FIELDS}
        obj = cls(**values, id=ident)
        session = self.sessions[s]
        if ident is not None and (cls, ident) in self.tracked[s]:
            with pytest.raises(redisca.IntegrityError):
                session.add(obj)  # another object of the same key is in the session
            return
        session.add(obj)
        assert obj.id is not None
        self.tracked[s][(cls, obj.id)] = Tracked(obj, cls, obj.id, vals=values)
        if data.draw(st.booleans(), label="commit now"):
            self.commit(s, then_rollback=data.draw(st.booleans(), label="then rollback"))

    @rule(
        s=st.integers(0, len(MODES) - 1), cls=st.sampled_from(CLASSES), ident=st.sampled_from(IDS)
    )
    def get(self, s: int, cls: type, ident: str) -> None:
        before = self.tracked[s].get((cls, ident))
        expected = self.model_get(s, cls, ident)
        got = self.sessions[s].get(cls, ident)
        if expected is None:
            assert got is None
            return
        assert got is not None
        if before is not None:
            assert got is before.obj  # the identity map
        expected.obj = got
        assert fields_of(got) == expected.vals

    @rule(
        s=st.integers(0, len(MODES) - 1), cls=st.sampled_from(CLASSES), ident=st.sampled_from(IDS)
    )
    def reference(self, s: int, cls: type, ident: str) -> None:
        obj = self.sessions[s].reference(cls, ident)
        t = self.tracked[s].get((cls, ident))
        if t is not None:
            assert obj is t.obj
            return
        self.tracked[s][(cls, ident)] = Tracked(obj, cls, ident, persistent=True)

    @rule(s=st.integers(0, len(MODES) - 1), data=st.data())
    def change(self, s: int, data: st.DataObject) -> None:
        t = self.pick(data, s)
        if t is None:
            return
        name = data.draw(st.sampled_from(FIELDS), label="field")
        value = data.draw(values_of(name), label="value")
        setattr(t.obj, name, value)
        t.vals[name] = value
        if data.draw(st.booleans(), label="commit now"):
            self.commit(s, then_rollback=data.draw(st.booleans(), label="then rollback"))

    @rule(s=st.integers(0, len(MODES) - 1), data=st.data())
    def read_unloaded(self, s: int, data: st.DataObject) -> None:
        """The first read of an unset field of a reference loads the hash (or NotFound)."""
        stubs = [t for t in self.tracked[s].values() if not t.loaded and t.persistent]
        unset = [(t, n) for t in stubs for n in FIELDS if n not in t.vals]
        if not unset:
            return
        t, name = data.draw(st.sampled_from(unset))
        row = self.db[t.cls].get(t.id)
        if row is None:
            with pytest.raises(redisca.NotFound):
                getattr(t.obj, name)
            return
        assert getattr(t.obj, name) == row.fields[name]
        t.hydrate(row, overwrite=False)

    @rule(s=st.integers(0, len(MODES) - 1), data=st.data())
    def delete(self, s: int, data: st.DataObject) -> None:
        t = self.pick(data, s)
        if t is None:
            return
        self.sessions[s].delete(t.obj)
        if t.persistent:
            t.deleted = True
        else:
            self.forget(s, t)  # a pending insert is simply dropped

    @rule(s=st.integers(0, len(MODES) - 1), data=st.data())
    def undelete(self, s: int, data: st.DataObject) -> None:
        deleted = [t for t in self.tracked[s].values() if t.deleted]
        if not deleted:
            return
        t = data.draw(st.sampled_from(deleted))
        self.sessions[s].add(t.obj)
        t.deleted = False

    @rule(s=st.integers(0, len(MODES) - 1), data=st.data())
    def refresh(self, s: int, data: st.DataObject) -> None:
        t = self.pick(data, s)
        if t is None:
            return
        row = self.db[t.cls].get(t.id)
        if row is None:
            with pytest.raises(redisca.NotFound):
                self.sessions[s].refresh(t.obj)
            return
        self.sessions[s].refresh(t.obj)
        t.hydrate(row, overwrite=True)
        assert fields_of(t.obj) == t.vals

    @rule(s=st.integers(0, len(MODES) - 1), data=st.data(), everything=st.booleans())
    def expunge(self, s: int, data: st.DataObject, everything: bool) -> None:
        if everything:
            self.sessions[s].expunge_all()
            self.tracked[s].clear()
            return
        t = self.pick(data, s, live=False)
        if t is not None:
            self.sessions[s].expunge(t.obj)
            self.forget(s, t)
            assert t.obj not in self.sessions[s]

    # -- rules: commit, rollback, queries -------------------------------------------------

    @rule(s=st.integers(0, len(MODES) - 1), then_rollback=st.booleans())
    def commit(self, s: int, then_rollback: bool) -> None:
        session = self.sessions[s]
        tracked = list(self.tracked[s].values())
        outcome = predict_commit(self.db, tracked)
        if outcome.errors:
            before = dump_keyspace(self.raw)
            with pytest.raises(redisca.RediscaError) as info:
                session.commit()
            assert type(info.value) in outcome.errors, (info.value, outcome.errors)
            assert dump_keyspace(self.raw) == before  # nothing written
            Figures.refused += 1
            self.check_session(s)  # every pending change is still there
            if then_rollback:
                self.rollback(s)
            return
        pending = [t for t in tracked if t.deleted or not t.persistent or t.diff()]
        session.commit()
        if not pending:
            return  # nothing to write, nothing was sent
        Figures.commits += 1
        for t in apply_commit(self.db, tracked, outcome):
            self.forget(s, t)
            assert t.obj not in session
        self.check_redis()

    @rule()
    def commit_all(self) -> None:
        """Every session commits in turn: the later ones meet what the earlier wrote."""
        for s in range(len(self.sessions)):
            self.commit(s, then_rollback=True)

    @rule(s=st.integers(0, len(MODES) - 1), chunk=st.integers(1, 3), data=st.data())
    def bulk_add(self, s: int, chunk: int, data: st.DataObject) -> None:
        """A bulk load in its own session: each chunk a commit the model predicts, up to
        the first the model refuses (written: the chunks before it, nothing of it)."""
        cls = data.draw(st.sampled_from(CLASSES), label="class")
        some = st.none() | st.sampled_from(IDS)  # ids of one's own distinct, hexids any number
        ids = data.draw(st.lists(some, max_size=6, unique_by=lambda i: i or object()))
        objs = [cls(**{n: data.draw(values_of(n), label=n) for n in FIELDS}, id=i) for i in ids]
        try:
            Session(self.clients[s]).bulk_add(objs, chunk_size=chunk)
            failed = None
        except redisca.BulkAddError as exc:
            failed = exc
        for start in range(0, len(objs), chunk):
            part = [Tracked(o, cls, o.id, vals=fields_of(o)) for o in objs[start : start + chunk]]
            outcome = predict_commit(self.db, part)
            if outcome.errors:
                assert failed is not None and type(failed.error) in outcome.errors, failed
                assert failed.written == start and failed.first_unwritten is objs[start]
                Figures.refused += 1
                break
            apply_commit(self.db, part, outcome)
            Figures.commits += 1
        else:
            assert failed is None, failed
        self.check_redis()

    @rule(s=st.integers(0, len(MODES) - 1))
    def rollback(self, s: int) -> None:
        self.sessions[s].rollback()
        for t in list(self.tracked[s].values()):
            if not t.persistent:
                self.forget(s, t)
            else:
                t.deleted = False
                t.vals = dict(t.snap)
        self.check_entities()  # a rollback sends nothing

    @rule(s=st.integers(0, len(MODES) - 1), spec=queries)
    def query(self, s: int, spec: QuerySpec) -> None:
        """A query in a working session: ids from Redis, instances as the session has them."""
        Figures.queries += 1
        query = spec.build(self.sessions[s])
        expected = spec.expected(self.db)
        assert query.ids() == expected, spec
        assert query.count() == len(expected), spec
        found = query.all()
        visible = [t for i in expected if (t := self.model_get(s, spec.cls, i)) is not None]
        assert [obj.id for obj in found] == [t.id for t in visible], spec
        for obj, t in zip(found, visible, strict=True):
            if t.obj is not None:
                assert obj is t.obj
            t.obj = obj
            assert fields_of(obj) == t.vals

    # -- rules: collections and referential integrity (each in a fresh session) ---------

    def rel_session(self, data: st.DataObject) -> Session:
        return Session(self.clients[data.draw(st.integers(0, len(self.clients) - 1))])

    def rel_build(self, session: Session, cls: type, ident: str, row: RelRow, new: dict) -> Any:
        """An instance of ``row``; a reference to an entity new in the commit is that object."""
        values = dict(row)
        for name, (target, _mode) in LINKS.get(cls, {}).items():
            ref = values[name]
            if ref is not None:
                values[name] = new.get((target, ref)) or session.reference(target, ref)
        if "links" in values:
            values["links"] = {
                new.get((Target, i)) or session.reference(Target, i) for i in row["links"]
            }
        return cls(**values, id=ident)

    def rel_commit(self, session: Session, refused: bool) -> None:
        """Commit; a refused commit raises ``IntegrityError`` and writes nothing."""
        if refused:
            before = dump_keyspace(self.raw)
            with pytest.raises(redisca.IntegrityError):
                session.commit()
            assert dump_keyspace(self.raw) == before
            Figures.refused += 1
            session.rollback()
            return
        session.commit()
        Figures.commits += 1

    @initialize(data=st.data())
    def rel_seed(self, data: st.DataObject) -> None:
        session = Session(self.raw)
        new: dict[Key, Any] = {}
        for cls in REL_CLASSES:
            for ident in data.draw(st.sets(st.sampled_from(REL_IDS), max_size=3)):
                row = data.draw(rel_rows(cls, self.rel))
                if dangling(self.rel, cls, row, set(new), set()):
                    row.update(dict.fromkeys(LINKS[cls]))
                new[(cls, ident)] = obj = self.rel_build(session, cls, ident, row, new)
                session.add(obj)
                self.rel[cls][ident] = row
        session.commit()
        self.check_rel()

    @rule(data=st.data())
    def rel_add(self, data: st.DataObject) -> None:
        """New entities, some referring to others new in the same commit; a reference to
        a missing entity, or an id taken, refuses the commit."""
        session = self.rel_session(data)
        keys = data.draw(
            st.lists(st.tuples(st.sampled_from(REL_CLASSES), st.sampled_from(REL_IDS)), max_size=3)
        )
        keys = sorted(set(keys), key=lambda k: (REL_CLASSES.index(k[0]), k[1]))
        rows = {key: data.draw(rel_rows(key[0], self.rel)) for key in keys}
        new: dict[Key, Any] = {}
        for (cls, ident), row in rows.items():
            new[(cls, ident)] = obj = self.rel_build(session, cls, ident, row, new)
            session.add(obj)
        refused = any(
            ident in self.rel[cls] or dangling(self.rel, cls, row, set(new), set())
            for (cls, ident), row in rows.items()
        )
        self.rel_commit(session, refused)
        if not refused:
            for (cls, ident), row in rows.items():
                self.rel[cls][ident] = row
        self.check_rel()

    @rule(data=st.data())
    def rel_delete(self, data: st.DataObject) -> None:
        """Deletes: restrict refuses, cascade follows (Target -> Rel -> Leaf), set_null
        clears; maybe with a new referrer to what the commit deletes (refused)."""
        stored = [(cls, i) for cls in REL_CLASSES for i in sorted(self.rel[cls])]
        if not stored:
            return
        picked = data.draw(st.lists(st.sampled_from(stored), min_size=1, max_size=2, unique=True))
        session = self.rel_session(data)
        for cls, ident in picked:
            session.delete(session.get(cls, ident))
        doomed, refused = cascade(self.rel, set(picked))
        free = [(c, i) for c in (Rel, Leaf) for i in REL_IDS if i not in self.rel[c]]
        if free and data.draw(st.booleans(), label="with a new referrer"):
            cls, ident = data.draw(st.sampled_from(free))
            row = data.draw(rel_rows(cls, self.rel))
            session.add(self.rel_build(session, cls, ident, row, {}))
            refused = refused or dangling(self.rel, cls, row, set(), doomed)
            new_row: tuple[Key, RelRow] | None = ((cls, ident), row)
        else:
            new_row = None
        self.rel_commit(session, refused)
        if not refused:
            apply_deletes(self.rel, doomed)
            if new_row is not None:
                (cls, ident), row = new_row
                self.rel[cls][ident] = row
        self.check_rel()

    @rule(data=st.data())
    def rel_mutate(self, data: st.DataObject) -> None:
        """In-place changes of a loaded entity's collections and references, committed
        once or twice in one session: each commit writes exactly the diff."""
        stored = [(cls, i) for cls in REL_CLASSES for i in sorted(self.rel[cls])]
        if not stored:
            return
        cls, ident = data.draw(st.sampled_from(stored))
        session = self.rel_session(data)
        obj = session.get(cls, ident)
        assert obj is not None and rel_row(obj) == self.rel[cls][ident]
        for _ in range(data.draw(st.integers(1, 2), label="commits")):
            row = {k: copy.copy(v) for k, v in self.rel[cls][ident].items()}
            for _ in range(data.draw(st.integers(1, 4), label="changes")):
                self.rel_change(data, session, obj, row)
            assert rel_row(obj) == row
            changed = {k for k in LINKS.get(cls, {}) if row[k] != self.rel[cls][ident][k]}
            refused = dangling(self.rel, cls, {k: row[k] for k in changed}, set(), set())
            assert session.is_modified(obj) == (row != self.rel[cls][ident])
            self.rel_commit(session, refused)
            if refused:
                return
            self.rel[cls][ident] = row
            assert not session.is_modified(obj)
            self.check_rel()

    @rule(data=st.data())
    def rel_interleaved(self, data: st.DataObject) -> None:
        """A session changes a loaded entity while another commits deletes (cascades and
        set_null included): an entity deleted meanwhile refuses a change of its
        references or collections (``StaleDataError``), a plain field's update vanishes
        (the delete wins); otherwise the diff lands on what the other commit left."""
        stored = [(cls, i) for cls in REL_CLASSES for i in sorted(self.rel[cls])]
        if not stored:
            return
        cls, ident = data.draw(st.sampled_from(stored))
        session = self.rel_session(data)
        obj = session.get(cls, ident)
        loaded = {k: copy.copy(v) for k, v in self.rel[cls][ident].items()}
        row = {k: copy.copy(v) for k, v in loaded.items()}
        for _ in range(data.draw(st.integers(1, 3), label="changes")):
            self.rel_change(data, session, obj, row)
        self.rel_delete(data)  # another session's commit
        changed = {k: row[k] for k in row if row[k] != loaded[k]}
        current = self.rel[cls].get(ident)
        if current is None and changed and cls is not Target:
            before = dump_keyspace(self.raw)
            with pytest.raises(redisca.StaleDataError):
                session.commit()
            assert dump_keyspace(self.raw) == before
            Figures.refused += 1
            session.rollback()
        elif current is None:
            before = dump_keyspace(self.raw)
            session.commit()  # nothing, or a plain update the delete beat
            assert without_guards(dump_keyspace(self.raw)) == without_guards(before)
        else:
            self.rel_commit(session, dangling(self.rel, cls, changed, set(), set()))
            if not dangling(self.rel, cls, changed, set(), set()):
                current.update(changed)
        self.check_rel()

    def rel_change(self, data: st.DataObject, session: Session, obj: Any, row: RelRow) -> None:
        cls = type(obj)
        ops = ["name"] if cls is Target else list(LINKS[cls])
        if cls is Rel:
            ops += ["add", "discard", "ior", "clear", "assign", "append", "del", "empty"]
            ops += ["link", "unlink"]
            ops += ["none"]
        op = data.draw(st.sampled_from(ops), label="change")
        if op == "name":
            row["name"] = obj.name = data.draw(st.none() | st.sampled_from(("x", "y")))
        elif op in LINKS.get(cls, {}):
            target = LINKS[cls][op][0]
            ref = data.draw(st.none() | st.sampled_from(REL_IDS))
            setattr(obj, op, None if ref is None else session.reference(target, ref))
            row[op] = ref
        elif op in ("add", "discard"):
            tag = data.draw(st.sampled_from(TAGS))
            getattr(obj.tags, op)(tag)
            getattr(row["tags"], op)(tag)
        elif op == "ior":
            more = data.draw(st.sets(st.sampled_from(TAGS)))
            obj.tags |= more
            row["tags"] |= more
        elif op == "clear":
            obj.tags.clear()
            obj.nums.clear()
            row["tags"].clear()
            row["nums"].clear()
        elif op == "assign":
            row["tags"] = data.draw(st.sets(st.sampled_from(TAGS)))
            row["nums"] = data.draw(st.lists(NUMS, max_size=3))
            obj.tags, obj.nums = set(row["tags"]), list(row["nums"])
        elif op in ("link", "unlink"):
            ref = data.draw(st.sampled_from(REL_IDS))
            target = session.reference(Target, ref)
            if op == "link":
                obj.links.add(target)
                row["links"].add(ref)
            else:
                obj.links.discard(target)
                row["links"].discard(ref)
        elif op == "append":
            n = data.draw(NUMS)
            obj.nums.append(n)
            row["nums"].append(n)
        elif op == "del" and row["nums"]:
            del obj.nums[0]
            del row["nums"][0]
        elif op == "empty":  # empty, never None
            obj.tags, obj.nums = set(), []
            row["tags"], row["nums"] = set(), []
        elif op == "none":
            name = data.draw(st.sampled_from(("tags", "nums")))
            with pytest.raises(redisca.ValidationError):
                setattr(obj, name, None)
            assert getattr(obj, name) == row[name]  # unchanged

    # -- rules: expiry (each in a fresh session) ---------------------------------------

    def tok_session(self, data: st.DataObject | int) -> Any:
        """A session on one of the clients; on the last, an ``AsyncSession`` (driven)."""
        if isinstance(data, int):
            k = data % len(self.clients)
        else:
            k = data.draw(st.integers(0, len(self.clients) - 1), label="client")
        client = self.clients[k]
        return asyncdriver.Driven(client) if k == len(self.clients) - 1 else Session(client)

    def tok_ids(self) -> st.SearchStrategy[str]:
        """Ids of expired tokens half of the time (their leftovers may be in Redis)."""
        dead = sorted(self.tok_dead)
        pick = st.sampled_from(TOK_IDS)
        return st.sampled_from(dead) | pick if dead else pick

    def dead_codes(self) -> tuple[str, ...]:
        return tuple(sorted({r["code"] for r in self.tok_dead.values() if r["code"]}))

    def held_by_leftovers(self) -> set[str]:
        """The codes whose unique claim an expired token's leftovers still hold."""
        layout = redisca.inspect(Token).layout
        return {
            r["code"]
            for i, r in self.tok_dead.items()
            if r["code"] is not None and self.raw.exists(layout.entity(i))
        }

    def tok_commit(self, session: Any, errors: set[type]) -> bool:
        """Commit; a commit the model refuses raises one of ``errors`` and writes nothing."""
        if errors:
            before = dump_keyspace(self.raw)
            with pytest.raises(redisca.RediscaError) as info:
                session.commit()
            assert type(info.value) in errors, (info.value, errors)
            assert dump_keyspace(self.raw) == before
            Figures.refused += 1
            session.rollback()
            return False
        session.commit()
        Figures.commits += 1
        return True

    def tok_instant(self, obj: Any, ttl: float | None, before: int, after: int) -> int | None:
        """The instant a commit between the server's ``before`` and ``after`` gave
        ``obj``: ``ttl`` after the commit's own now, in ``H#exp`` and in ``expires_at``."""
        score = self.raw.zscore(redisca.inspect(Token).layout.expiry, obj.id)
        if ttl is None:
            assert score is None and instant_of(obj) is None, (obj.id, score)
            return None
        assert score is not None, obj.id
        assert before + ttl * 1000 <= score <= after + ttl * 1000, (before, score, after)
        assert instant_of(obj) == int(score), (obj.id, instant_of(obj), score)
        return int(score)

    def tok_forget(self, ident: str) -> None:
        self.tok.pop(ident, None)
        self.tok_at.pop(ident, None)

    @rule(data=st.data())
    def tok_add(self, data: st.DataObject) -> None:
        """New tokens, their ids often expired ones' (an insert over an expired id
        succeeds), their codes often what expired tokens held (free to claim), each with
        the model's ttl or one ``session.expire`` gives (``None``: never). An id or a code
        a live token has refuses the commit."""
        ids = data.draw(st.lists(self.tok_ids(), min_size=1, max_size=2, unique=True))
        session = self.tok_session(data)
        objs, rows, told = {}, {}, {}
        for ident in ids:
            rows[ident] = data.draw(tok_rows(self.dead_codes()), label="values")
            objs[ident] = obj = Token(**rows[ident], id=ident)
            session.add(obj)
            if data.draw(st.booleans(), label="expire"):
                told[ident] = data.draw(st.sampled_from(TTLS), label="ttl")
                session.expire(obj, told[ident])
        errors: set[type] = set()
        if any(i in self.tok for i in ids):
            errors.add(redisca.IntegrityError)
        if not tok_unique({**{i: r for i, r in self.tok.items() if i not in ids}, **rows}):
            errors.add(redisca.UniqueViolation)
        before = server_ms(self.raw)
        held = self.held_by_leftovers()
        if self.tok_commit(session, errors):
            Figures.takeovers += bool(held & {r["code"] for r in rows.values()})
            after = server_ms(self.raw)
            for ident, obj in objs.items():
                self.tok[ident] = rows[ident]
                self.tok_dead.pop(ident, None)  # its leftovers went with the insert
                self.tok_at[ident] = self.tok_instant(obj, told.get(ident, HOUR), before, after)
        self.check_tok()

    def tok_edit(self, data: st.DataObject, *, fields: bool, expire: bool | None) -> None:
        """Loaded live tokens changed in one commit: fields (``fields``), a new instant or
        none (``expire``; ``None``: maybe)."""
        live = sorted(self.tok)
        if not live:
            return
        picked = data.draw(st.lists(st.sampled_from(live), min_size=1, max_size=2, unique=True))
        session = self.tok_session(data)
        objs, rows, told = {}, {}, {}
        codes = self.dead_codes()
        for ident in picked:
            objs[ident] = obj = session.get(Token, ident)
            assert obj is not None and tok_fields(obj) == self.tok[ident], ident
            assert instant_of(obj) == self.tok_at[ident], ident
            rows[ident] = row = dict(self.tok[ident])
            names = (
                data.draw(st.sets(st.sampled_from(TOK_FIELDS)), label="fields") if fields else ()
            )
            for name in names:
                values = st.none() | st.sampled_from(TOK_VALUES[name])
                if name == "code" and codes:
                    values = values | st.sampled_from(codes)
                row[name] = data.draw(values, label=name)
                setattr(obj, name, row[name])
            if expire or (expire is None and data.draw(st.booleans(), label="expire")):
                told[ident] = data.draw(st.sampled_from(TTLS), label="ttl")
                session.expire(obj, told[ident])
        ok = tok_unique({**self.tok, **rows})
        before = server_ms(self.raw)
        held = self.held_by_leftovers()
        if self.tok_commit(session, set() if ok else {redisca.UniqueViolation}):
            Figures.takeovers += bool(held & {r["code"] for r in rows.values()})
            after = server_ms(self.raw)
            for ident, obj in objs.items():
                self.tok[ident] = rows[ident]
                if ident in told:
                    self.tok_at[ident] = self.tok_instant(obj, told[ident], before, after)
                assert instant_of(obj) == self.tok_at[ident], ident
        self.check_tok()

    @rule(data=st.data())
    def tok_change(self, data: st.DataObject) -> None:
        """Changes of one or two live tokens (codes swapped, released, claimed from an
        expired holder, or refused while a live one holds them), maybe with new instants."""
        self.tok_edit(data, fields=True, expire=None)

    @rule(data=st.data())
    def tok_extend(self, data: st.DataObject) -> None:
        """``session.expire`` on live tokens, committed: their instants move (extended,
        shortened, still far away) or go (``None``: never)."""
        self.tok_edit(data, fields=False, expire=True)

    @rule(data=st.data(), by_reference=st.booleans())
    def tok_delete(self, data: st.DataObject, by_reference: bool) -> None:
        """A live token deleted (loaded, or through a reference), or an expired one through
        a reference: nothing of it is left in Redis after the commit."""
        known = sorted(self.tok) + sorted(self.tok_dead)
        if not known:
            return
        ident = data.draw(st.sampled_from(known), label="id")
        session = self.tok_session(data)
        if ident in self.tok and not by_reference:
            obj = session.get(Token, ident)
            assert obj is not None
        else:
            obj = session.reference(Token, ident)
        session.delete(obj)
        self.tok_commit(session, set())
        self.tok_forget(ident)
        self.tok_dead.pop(ident, None)
        layout = redisca.inspect(Token).layout
        assert not self.raw.exists(layout.entity(ident)), ident
        assert self.raw.zscore(layout.expiry, ident) is None, ident
        self.check_tok()

    @rule(data=st.data())
    def tok_expire_now(self, data: st.DataObject) -> None:
        """A live token's instant passes (a raw ``ZADD`` of an instant long past; one that
        never expired gets one): gone for every reader at once, leftovers in Redis."""
        if not self.tok:
            return
        self.tok_expire(data.draw(st.sampled_from(sorted(self.tok)), label="id"))
        self.check_tok()

    def tok_expire(self, ident: str) -> None:
        set_instants(self.raw, Token, {ident: PAST})  # H#exp and the eq entries it scores
        self.tok_dead[ident] = self.tok[ident]
        self.tok_forget(ident)

    @rule(data=st.data(), by_change=st.booleans())
    def tok_claim(self, data: st.DataObject, by_change: bool) -> None:
        """A live token holding a code expires, and at once a commit claims the code its
        leftovers still hold: a new token (maybe with the expired one's id) or a live one
        changed. It must pass, taking the claim over."""
        holders = sorted(i for i, row in self.tok.items() if row["code"] is not None)
        if not holders:
            return
        holder = data.draw(st.sampled_from(holders), label="holder")
        code = self.tok[holder]["code"]
        self.tok_expire(holder)
        session = self.tok_session(data)
        if by_change and self.tok:
            ident = data.draw(st.sampled_from(sorted(self.tok)), label="claimer")
            obj = session.get(Token, ident)
            assert obj is not None
            obj.code = code
        else:
            ident = data.draw(st.sampled_from([i for i in TOK_IDS if i not in self.tok]))
            obj = Token(**{**data.draw(tok_rows(), label="values"), "code": code}, id=ident)
            session.add(obj)
        row = tok_fields(obj)
        before = server_ms(self.raw)
        self.tok_commit(session, set())
        Figures.takeovers += 1
        if ident not in self.tok:
            self.tok_at[ident] = self.tok_instant(obj, HOUR, before, server_ms(self.raw))
        self.tok[ident] = row
        self.tok_dead.pop(ident, None)
        self.check_tok()

    @rule(data=st.data(), kind=st.sampled_from(("indexed", "plain", "expire", "delete")))
    def tok_stale(self, data: st.DataObject, kind: str) -> None:
        """A session loads a live token, which then expires: a change of an indexed field,
        or an ``expire``, is refused (``StaleDataError``); a plain field's update is
        skipped and the instance leaves the session (as after a delete); a delete
        removes its leftovers."""
        if not self.tok:
            return
        ident = data.draw(st.sampled_from(sorted(self.tok)), label="id")
        session = self.tok_session(data)
        obj = session.get(Token, ident)
        assert obj is not None
        set_instants(self.raw, Token, {ident: PAST})  # H#exp and the eq entries it scores
        self.tok_dead[ident] = self.tok[ident]
        self.tok_forget(ident)
        if kind == "indexed":
            name = data.draw(st.sampled_from(("owner", "rank")), label="field")
            other = [v for v in (None, *TOK_VALUES[name]) if v != getattr(obj, name)]
            setattr(obj, name, data.draw(st.sampled_from(other), label="value"))
            self.tok_commit(session, {redisca.StaleDataError})
        elif kind == "expire":
            session.expire(obj, data.draw(st.sampled_from(TTLS), label="ttl"))
            self.tok_commit(session, {redisca.StaleDataError})
        elif kind == "plain":
            obj.note = "y" if obj.note != "y" else None
            before = without_guards(dump_keyspace(self.raw))
            self.tok_commit(session, set())
            assert obj not in session
            assert without_guards(dump_keyspace(self.raw)) == before
        else:
            session.delete(obj)
            self.tok_commit(session, set())
            self.tok_dead.pop(ident)
            assert not self.raw.exists(redisca.inspect(Token).layout.entity(ident))
        self.check_tok()

    @rule()
    def tok_sweep(self) -> None:
        """``maintenance.sweep`` removes every expired token's leftovers, and only those."""
        layout = redisca.inspect(Token).layout
        left = [i for i in self.tok_dead if self.raw.exists(layout.entity(i))]
        report = maintenance_sweep([Token], self.raw)
        assert report.ok, report.problems
        assert [m.removed for m in report.models] == [len(left)], (report.models, left)
        for ident in self.tok_dead:
            assert not self.raw.exists(layout.entity(ident)), ident
            assert self.raw.zscore(layout.expiry, ident) is None, ident
        self.check_tok()

    # -- checks ------------------------------------------------------------------------

    @invariant()
    def sessions_match_the_model(self) -> None:
        Figures.steps += 1
        for s in range(len(self.sessions)):
            self.check_session(s)

    def check_session(self, s: int) -> None:
        session, tracked = self.sessions[s], self.tracked[s].values()

        def ids(objs: Any) -> set[int]:
            return {id(o) for o in objs}

        assert ids(session) == ids(t.obj for t in tracked)
        assert ids(session.new) == ids(t.obj for t in tracked if not t.persistent)
        assert ids(session.deleted) == ids(t.obj for t in tracked if t.deleted)
        dirty = [t.obj for t in tracked if t.persistent and not t.deleted and t.diff()]
        assert ids(session.dirty) == ids(dirty)
        for t in tracked:
            if t.loaded or not t.persistent:
                assert fields_of(t.obj) == t.vals

    def check_rel(self) -> None:
        """Redis holds exactly the model's collections and references, key by key; no
        reference dangles (read from the raw hashes); a fresh session loads the model and
        ``contains`` (alone, with ``|``, with ``&``) finds the model's entities."""
        keyspace = dump_keyspace(self.raw)
        for cls in REL_CLASSES:
            layout = redisca.inspect(cls).layout
            expected = expected_rel_keys(layout, cls, self.rel[cls])
            actual = {
                k: without_marks(v)
                for k, v in keyspace.items()
                if k.startswith(layout.entity("")[:-1]) and b"#g:" not in k
            }
            assert actual == expected, (cls.__name__, self.rel[cls])
        for cls, links in LINKS.items():
            layout = redisca.inspect(cls).layout
            for ident in self.rel[cls]:
                stored = self.raw.hgetall(layout.entity(ident))
                for name, (target, _mode) in links.items():
                    ref = stored.get(name.encode())
                    if ref is not None:
                        assert self.raw.exists(redisca.inspect(target).layout.entity(ref.decode()))
        if maintenance_check is not None:
            # ``links`` has no on_delete: its members may dangle, and check reports each
            # one (dangling_reference) and nothing else.
            report = maintenance_check(list(REL_CLASSES), self.raw)
            targets = self.rel[Target]
            dangling = {
                (ident, member)
                for ident, row in self.rel[Rel].items()
                for member in row["links"]
                if member not in targets
            }
            reported = {(p.key, p.field) for p in report.problems if p.kind == "dangling_reference"}
            rel_layout = redisca.inspect(Rel).layout
            assert reported == {(rel_layout.entity(i).decode(), "links") for i, _ in dangling}
            assert [p for p in report.problems if p.kind != "dangling_reference"] == []
        observer = Session(self.clients[Figures.steps % len(self.clients)])
        for cls in REL_CLASSES:
            found = observer.query(cls).all()
            assert {o.id: rel_row(o) for o in found} == self.rel[cls], cls.__name__
        rows = self.rel[Rel]

        def having(tag: str) -> set[str]:
            return {i for i, row in rows.items() if tag in row["tags"]}

        query = observer.query(Rel)
        for tag in TAGS:
            assert query.filter(Rel.tags.contains(tag)).ids() == sorted(having(tag))
        for ref in REL_IDS:  # by id; by instance in test_collections
            linked = sorted(i for i, row in rows.items() if ref in row["links"])
            assert query.filter(Rel.links.contains(ref)).ids() == linked
        either = query.filter(Rel.tags.contains("a") | Rel.tags.contains("b"))
        assert either.ids() == sorted(having("a") | having("b"))
        assert either.count() == len(having("a") | having("b"))
        both = query.filter(Rel.tags.contains("a") & Rel.tags.contains("c"))
        assert both.ids() == sorted(having("a") & having("c"))
        owned = {i for i, row in rows.items() if row["owner"] == "1"}
        mixed = query.filter(
            (Rel.tags.contains("b") & (Rel.owner == observer.reference(Target, "1")))
            | Rel.tags.contains("c")
        )
        assert mixed.ids() == sorted((having("b") & owned) | having("c"))

    def check_tok(self) -> None:
        """No reader sees an expired token: ``get`` and ``get_many`` of every id, queries
        and counts answer with the live tokens only, instants as loaded are their
        ``H#exp`` scores; Redis holds the live tokens' values, and of an expired one at
        most leftovers with their past instant; ``check`` finds no problem (leftovers are
        not drift)."""
        Figures.expiry_checks += 1
        observer = self.tok_session(Figures.expiry_checks)
        db: DB = {Token: {i: Row(row, None) for i, row in self.tok.items()}}
        for spec in tok_battery():
            expected = spec.expected(db)
            query = spec.build(observer)
            assert query.ids() == expected, spec
            assert query.count() == len(expected), spec
        found = observer.query(Token).all()  # its instants: test_query_loads_expires_at
        assert {o.id: tok_fields(o) for o in found} == self.tok
        one, many = (self.tok_session(Figures.expiry_checks + k) for k in (1, 2))
        for ident, listed in zip(TOK_IDS, many.get_many(Token, TOK_IDS), strict=True):
            for obj in (one.get(Token, ident), listed):
                if ident not in self.tok:
                    assert obj is None, ident
                    continue
                assert obj is not None and tok_fields(obj) == self.tok[ident], ident
                assert instant_of(obj) == self.tok_at[ident], ident
        layout = redisca.inspect(Token).layout
        pipe = self.raw.pipeline(transaction=False)
        for ident in TOK_IDS:
            pipe.hgetall(layout.entity(ident))
            pipe.zscore(layout.expiry, ident)
        replies = pipe.execute()
        now = server_ms(self.raw)
        for ident, stored, score in zip(TOK_IDS, replies[::2], replies[1::2], strict=True):
            if ident in self.tok:
                assert tok_stored(stored) == self.tok[ident], ident
                assert score == self.tok_at[ident], (ident, score)
            else:  # nothing, or what an expired token left
                assert not stored or (score is not None and score <= now), (ident, score)
        if maintenance_check is not None:
            report = maintenance_check([Token], self.raw)
            assert report.ok, report.problems

    def check_version(self, cls: type, ident: str, row: Row, stored: int) -> None:
        """One stored ``#v`` per model version of an entity, none shared with another."""
        token = (row.incarnation, row.version)
        by_token, by_stored = self.versions.setdefault((cls, ident), ({}, {}))
        assert by_token.setdefault(token, stored) == stored, (ident, token, stored)
        assert by_stored.setdefault(stored, token) == token, (ident, token, stored)

    def check_redis(self) -> None:
        """Redis holds the model's entities, the indexes match, queries answer the model."""
        self.check_entities()
        for cls in CLASSES:
            assert_indexes_consistent(self.raw, redisca.inspect(cls))
        if maintenance_check is not None:
            report = maintenance_check(list(CLASSES), self.raw)
            assert report.ok, report.problems
        observer = Session(self.clients[Figures.examples % len(self.clients)])
        for cls in CLASSES:
            for spec in battery(self.db, cls):
                expected = spec.expected(self.db)
                query = spec.build(observer)
                assert query.ids() == expected, spec
                assert query.count() == len(expected), spec
        found = observer.query(Item).all()
        assert {o.id: fields_of(o) for o in found} == {
            i: row.fields for i, row in self.db[Item].items()
        }

    def check_entities(self) -> None:
        """Redis holds exactly the model's entities, field by field (and versions)."""
        for cls in CLASSES:
            mapper = redisca.inspect(cls)
            rows = self.db[cls]
            keys = sorted(self.raw.scan_iter(match=mapper.layout.entity("") + b"*"))
            assert keys == sorted(mapper.layout.entity(i) for i in rows)
            pipe = self.raw.pipeline(transaction=False)
            for ident in rows:
                pipe.hgetall(mapper.layout.entity(ident))
            for (ident, row), stored in zip(rows.items(), pipe.execute(), strict=True):
                assert stored_fields(stored) == row.fields, ident
                if cls is Doc:
                    self.check_version(cls, ident, row, int(stored[b"#v"]))


def without_marks(dumped: tuple[str, Any]) -> tuple[str, Any]:
    """A dumped hash without redisca's own ``#`` fields (the marker of an empty one)."""
    kind, value = dumped
    if kind == "hash":
        return kind, {k: v for k, v in value.items() if not k.startswith(b"#")}
    return kind, value


def expected_rel_keys(layout: Any, cls: type, rows: dict[str, RelRow]) -> dict[bytes, Any]:
    """Every key of one of the integrity models as ``dump_keyspace`` shows it (guards
    aside): hashes of the references as stored ids, ``#all``, the equality sets of the
    references and of each tag, the collections' own keys (none when empty)."""
    out: dict[bytes, Any] = {}
    indexed: dict[bytes, set[bytes]] = {}
    for ident, row in rows.items():
        bid = ident.encode()
        stored = {
            k.encode(): str(v).encode()
            for k, v in row.items()
            if k not in ("tags", "nums", "links")
        }
        out[layout.entity(ident)] = ("hash", {k: v for k, v in stored.items() if v != b"None"})
        for name in LINKS.get(cls, {}):
            if row[name] is not None:
                indexed.setdefault(layout.eq_index(name.encode(), row[name].encode()), set()).add(
                    bid
                )
        for name in ("tags", "links"):
            for member in row.get(name, ()):
                indexed.setdefault(layout.eq_index(name.encode(), member.encode()), set()).add(bid)
            if row.get(name):
                out[layout.members(name.encode(), bid)] = (
                    "set",
                    frozenset(m.encode() for m in row[name]),
                )
        if row.get("nums"):
            out[layout.members(b"nums", bid)] = ("list", [str(n).encode() for n in row["nums"]])
    out.update({k: ("set", frozenset(v)) for k, v in indexed.items()})
    if rows:
        out[layout.all_ids] = ("zset", dict.fromkeys((i.encode() for i in rows), 0.0))
    return out


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "email": bytes.decode,
    "color": bytes.decode,
    "note": bytes.decode,
    "rank": int,
    "score": float,
}


def stored_fields(stored: dict[bytes, bytes]) -> dict[str, Any]:
    user = {k.decode(): v for k, v in stored.items() if not k.startswith(b"#")}
    assert set(user) <= set(FIELDS), user
    return {name: DECODERS[name](user[name]) if name in user else None for name in FIELDS}


# -- running it --------------------------------------------------------------------------

PROFILES = {
    "ci": settings(
        max_examples=int(os.environ.get("REDISCA_HYPOTHESIS_EXAMPLES", "200")),
        stateful_step_count=50,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    ),
    "deep": settings(
        max_examples=int(os.environ.get("REDISCA_HYPOTHESIS_EXAMPLES", "5000")),
        stateful_step_count=60,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    ),
}


def test_sessions_against_the_model(redis_url: str) -> None:
    profile = os.environ.get("REDISCA_HYPOTHESIS_PROFILE", "ci")
    SERVER[:] = [redis_url]
    Figures.examples = Figures.steps = Figures.commits = Figures.refused = Figures.queries = 0
    Figures.expiry_checks = Figures.takeovers = 0
    try:
        with asyncdriver.loops():
            run_state_machine_as_test(Sessions, settings=PROFILES[profile])
    finally:
        SERVER.clear()
        with connect(redis_url) as client:
            client.flushall()
    print(
        f"\nstate machine ({profile}): {Figures.examples} examples, {Figures.steps} steps, "
        f"{Figures.commits} commits, {Figures.refused} refused as predicted, "
        f"{Figures.queries} random queries, {Figures.expiry_checks} expiry checks, "
        f"{Figures.takeovers} codes taken over from expired holders"
    )
    assert Figures.commits > Figures.examples and Figures.refused > 0
    assert Figures.expiry_checks > Figures.examples


__all__ = ["Doc", "Item", "Token", "registry"]


# -- what the model found (regression tests of the bugs it found, now fixed) ----------------


def test_clearing_the_last_fields_keeps_the_entity(r: redis.Redis) -> None:
    seeding = Session(r)
    seeding.add(Item(color="red", note="x", id="1"))
    seeding.commit()
    ours, theirs = Session(r), Session(r)
    mine = ours.get(Item, "1")
    other = theirs.get(Item, "1")
    assert mine is not None and other is not None
    other.color = None
    theirs.commit()
    mine.note = None  # the session still sees color="red": the hash looks non-empty to it
    ours.commit()
    assert Session(r).get(Item, "1") == Item(id="1")
    assert_indexes_consistent(r, redisca.inspect(Item))


def test_query_loads_expires_at(r: redis.Redis) -> None:
    seeding = Session(r)
    seeding.add(Token(code="a", id="1"))
    seeding.commit()
    stored = r.zscore(redisca.inspect(Token).layout.expiry, "1")
    assert stored is not None
    assert instant_of(Session(r).get(Token, "1")) == int(stored)
    reader = Session(r)
    (found,) = reader.query(Token).all()
    assert instant_of(found) == int(stored)  # not None: it expires in an hour
    (first,) = reader.query(Token).filter(Token.code == "a").all()  # the unique lookup
    assert first is found
    other = Session(r)
    (again,) = other.query(Token).filter(Token.code.in_(["a", "b"])).all()  # a union
    assert instant_of(again) == int(stored)
    reader.close()
    other.close()


def test_versioned_entity_recreated_since_load_is_stale(r: redis.Redis) -> None:
    seeding = Session(r)
    seeding.add(Doc(note="first", id="1"))
    seeding.commit()
    ours = Session(r)
    mine = ours.get(Doc, "1")
    assert mine is not None
    theirs = Session(r)
    theirs.delete(theirs.get(Doc, "1"))
    theirs.commit()
    theirs.add(Doc(note="second", id="1"))
    theirs.commit()
    mine.note = "an edit of the first"
    with pytest.raises(redisca.StaleDataError):
        ours.commit()

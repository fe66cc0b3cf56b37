"""Concurrency soak: processes race over a few ids and emails; every acknowledged write holds.

Four processes (spawned, each with its own client: bytes over RESP3 and str over
RESP2 in turn) commit random inserts, updates and deletes of one to three
entities at a time, over six ids of two models (one versioned) and emails that
collide ignoring case, for ``REDISCA_SOAK_SECONDS`` (default 12) seconds.
Every commit also runs ``INCR`` of a sequence key inside its ``MULTI``/``EXEC``
(``session.add_command``): the reply orders the acknowledged commits as Redis
applied them. Each process records what each acknowledged commit wrote: the
whole entity for an insert, only the changed fields for an update (redisca
writes the diff), the delete, and whether a plain update found its entity
deleted (the delete wins). Afterwards, replaying the acknowledged commits in
that order must give exactly what Redis holds, and along the way: no insert of
an existing entity, no indexed or versioned update of a missing one, no email
held by two entities, no versioned write based on a stale version. The indexes
must match the hashes and each unique key must name the entity holding it.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections import Counter
from typing import Any

import attrs
import pytest
import redis
from helpers import CLUSTER, assert_indexes_consistent, connect, head, stripe_key

import redisca
from redisca import Email, Integer, Registry, Session, String

try:  # the maintenance package's check, once it exists; the test helper in any case
    from redisca.maintenance import check as maintenance_check
except ImportError:  # pragma: no cover - until redisca.maintenance lands
    maintenance_check = None

registry = Registry()

#: A commit is checked as one transaction with its ``INCR`` of :data:`SEQ`. A cluster
#: commits one transaction per hash slot, so in cluster mode both models and the
#: sequence key share one slot group (all or nothing within it): the soak then checks
#: what a cluster promises, on a cluster.
GROUP = "soak" if CLUSTER else None


@registry.mapped(prefix="sk", slot_group=GROUP)
@attrs.define
class Account:
    email: str | None = Email(unique=True, default=None)
    color: str | None = String(index=True, default=None)
    rank: int | None = Integer(index=True, default=None)
    note: str | None = None
    id: str | None = None


@registry.mapped(prefix="skv", versioned=True, slot_group=GROUP)
@attrs.define
class Ledger:
    email: str | None = Email(unique=True, default=None)
    color: str | None = String(index=True, default=None)
    rank: int | None = Integer(index=True, default=None)
    note: str | None = None
    id: str | None = None


CLASSES = {"Account": Account, "Ledger": Ledger}
FIELDS = ("email", "color", "rank", "note")
INDEXED = frozenset({"email", "color", "rank"})
IDS = tuple(str(i) for i in range(6))
VALUES: dict[str, tuple[Any, ...]] = {
    "email": (None, "a@x.org", "A@x.org", "b@x.org", "B@X.org", "c@x.org", "d@x.org"),
    "color": (None, "red", "blue", "green"),
    "rank": (None, 0, 1, 2, 3),
    "note": (None, "", "n1", "n2", "n3"),
}
SEQ = "{soak}seq" if CLUSTER else "soak:seq"  # on a cluster, in the models' slot
WORKERS = 4
SECONDS = float(os.environ.get("REDISCA_SOAK_SECONDS", "12"))
MODES = ({"decode_responses": False, "protocol": 3}, {"decode_responses": True, "protocol": 2})
EXPECTED_REFUSALS = (redisca.IntegrityError, redisca.ConflictError, redisca.NotFound)


def fields_of(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in FIELDS}


def lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


# -- the workers ---------------------------------------------------------------------------


def plan_one(rnd: random.Random, s: Session, cls: type, ident: str) -> dict[str, Any]:
    """Stage one random change in ``s``; returns what it will write if acknowledged."""
    obj = s.get(cls, ident)
    if obj is None:
        values = {name: rnd.choice(VALUES[name]) for name in FIELDS}
        obj = cls(**values, id=ident)
        s.add(obj)
        return {"op": "insert", "values": values, "obj": obj}
    version = redisca.inspect(obj).version
    if rnd.random() < 0.2:
        s.delete(obj)
        return {"op": "delete", "version": version, "obj": obj}
    loaded = fields_of(obj)
    for name in rnd.sample(FIELDS, rnd.randint(1, 3)):
        setattr(obj, name, rnd.choice(VALUES[name]))
    written = {k: v for k, v in fields_of(obj).items() if v != loaded[k]}
    return {"op": "update", "values": written, "version": version, "obj": obj}


def soak_worker(url: str, mode: dict[str, Any], worker: int, start: Any, out: Any) -> None:
    client = connect(url, **mode)  # on the cluster in cluster mode (the env is inherited)
    rnd = random.Random(worker)
    records: list[tuple[int, int, list[dict[str, Any]]]] = []
    tally: Counter[str] = Counter()
    start.wait(timeout=120)
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        s = Session(client)
        picked = rnd.sample([(c, i) for c in CLASSES for i in IDS], rnd.choice((1, 1, 1, 2, 3)))
        try:
            ops = [{"cls": c, "id": i, **plan_one(rnd, s, CLASSES[c], i)} for c, i in picked]
            seq = s.add_command("INCR", SEQ)
            s.commit()
        except EXPECTED_REFUSALS as exc:
            tally[type(exc).__name__] += 1
            continue
        except Exception as exc:  # reported, so the test fails with it
            tally[f"unexpected {exc!r}"] += 1
            continue
        for op in ops:
            obj = op.pop("obj")
            # A plain update whose entity another process deleted wrote nothing.
            op["vanished"] = op["op"] == "update" and obj not in s
            op["after"] = redisca.inspect(obj).version  # the version the commit left
        records.append((int(seq.value), worker, ops))
        tally["acknowledged"] += 1
    client.close()
    out.put((worker, records, dict(tally)))


# -- replaying what was acknowledged -------------------------------------------------------


class Replay:
    """The acknowledged commits applied in Redis's order: what Redis must hold."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.versions: dict[tuple[str, str], int] = {}
        self.problems: list[str] = []

    def apply(self, seq: int, ops: list[dict[str, Any]]) -> None:
        for op in ops:
            key = (op["cls"], op["id"])
            getattr(self, op["op"])(seq, key, op)
        self.check_unique(seq)

    def insert(self, seq: int, key: tuple[str, str], op: dict[str, Any]) -> None:
        if key in self.rows:
            self.problems.append(f"#{seq}: insert of existing {key}")
        self.rows[key] = dict(op["values"])
        self.versions[key] = op["after"]

    def update(self, seq: int, key: tuple[str, str], op: dict[str, Any]) -> None:
        row = self.rows.get(key)
        if not op["values"]:
            return  # nothing changed: nothing was sent for it
        plain = not (INDEXED & op["values"].keys()) and key[0] == "Account"
        if op["vanished"]:
            if row is not None or not plain:
                self.problems.append(f"#{seq}: update of {key} skipped, yet it exists")
            return
        if row is None:
            self.problems.append(f"#{seq}: acknowledged update of missing {key}")
            return
        self.check_version(seq, key, op)
        row.update(op["values"])
        if key[0] == "Ledger":
            self.versions[key] = op["after"]

    def delete(self, seq: int, key: tuple[str, str], op: dict[str, Any]) -> None:
        if key in self.rows:
            self.check_version(seq, key, op)
        self.rows.pop(key, None)
        self.versions.pop(key, None)

    def check_version(self, seq: int, key: tuple[str, str], op: dict[str, Any]) -> None:
        if key[0] == "Ledger" and self.versions[key] != op["version"]:
            self.problems.append(
                f"#{seq}: {key} written from version {op['version']}, "
                f"Redis had {self.versions[key]} (a lost update)"
            )

    def check_unique(self, seq: int) -> None:
        for cls in CLASSES:
            emails = [lower(r["email"]) for (c, _), r in self.rows.items() if c == cls]
            taken = [e for e in emails if e is not None]
            if len(taken) != len(set(taken)):
                self.problems.append(f"#{seq}: an email of {cls} has two owners: {taken}")


def stored_state(raw: redis.Redis) -> dict[tuple[str, str], dict[str, Any]]:
    decode = {"email": bytes.decode, "color": bytes.decode, "note": bytes.decode, "rank": int}
    state = {}
    for name, cls in CLASSES.items():
        layout = redisca.inspect(cls).layout
        for key in raw.scan_iter(match=layout.entity("") + b"*"):
            stored = raw.hgetall(key)
            ident = key[len(layout.entity("")) :].decode()
            state[(name, ident)] = {
                f: decode[f](stored[f.encode()]) if f.encode() in stored else None for f in FIELDS
            }
    return state


def check_unique_keys(raw: redis.Redis, state: dict[tuple[str, str], dict[str, Any]]) -> None:
    for name, cls in CLASSES.items():
        prefix = redisca.inspect(cls).prefix
        owners = {
            (key, value): owner.decode()
            for key in raw.scan_iter(match=head(prefix, GROUP) + b"#u:email:*")
            for value, owner in raw.hgetall(key).items()
        }
        expected = {
            (stripe_key(prefix, "email", email, GROUP), email.encode()): ident
            for (c, ident), row in state.items()
            if c == name and (email := lower(row["email"])) is not None
        }
        assert owners == expected


@pytest.mark.slow
def test_soak_acknowledged_commits_hold(redis_url: str) -> None:
    raw = connect(redis_url)
    raw.flushall()  # on a cluster, every master
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    workers = [
        context.Process(target=soak_worker, args=(redis_url, MODES[w % len(MODES)], w, start, out))
        for w in range(WORKERS)
    ]
    for process in workers:
        process.start()
    start.set()
    try:
        results = [out.get(timeout=SECONDS + 120) for _ in workers]
    finally:
        for process in workers:
            process.join(timeout=60)
    assert [p.exitcode for p in workers] == [0] * WORKERS
    tally: Counter[str] = Counter()
    commits: list[tuple[int, int, list[dict[str, Any]]]] = []
    for _, records, counts in results:
        tally.update(counts)
        commits += records
    assert not [k for k in tally if k.startswith("unexpected")], tally
    commits.sort(key=lambda record: record[0])
    seqs = [record[0] for record in commits]
    assert len(set(seqs)) == len(seqs) and seqs[-1] == int(raw.get(SEQ))  # type: ignore[arg-type]
    replay = Replay()
    for seq, _worker, ops in commits:
        replay.apply(seq, ops)
    assert replay.problems == []
    state = stored_state(raw)
    assert state == replay.rows
    for cls in CLASSES.values():
        assert_indexes_consistent(raw, redisca.inspect(cls))
    if maintenance_check is not None:
        report = maintenance_check(list(CLASSES.values()), raw)
        assert report.ok, report.problems
    check_unique_keys(raw, state)
    layout = redisca.inspect(Ledger).layout
    for (name, ident), version in replay.versions.items():
        if name == "Ledger":
            assert int(raw.hget(layout.entity(ident), "#v")) == version  # type: ignore[arg-type]
    entities = sum(len(ops) for _, _, ops in commits)
    print(
        f"\nsoak: {len(commits)} commits acknowledged and verified ({entities} entity "
        f"writes), refused: { {k: v for k, v in tally.items() if k != 'acknowledged'} }, "
        f"{len(state)} entities at the end"
    )
    assert tally["acknowledged"] == len(commits) > 100
    raw.flushall()
    raw.close()

"""check, reindex and stats of a sharded model's unique claims (maintenance/shardclaims.py).

For every fault of the unique protocol (the connection killed before or after each step,
test_shard_uniques.CASES), with no clean-up by the failed commit (as if its process died):
``check`` reports what raw Redis shows left, ``reindex`` repairs it, ``check`` is then
clean and no value has two owners. Problems written by hand (a missing, wrong, dangling
or duplicated claim, a stray token or registration) on one server and on a cluster; a
commit in flight is not reported; ``stats`` counts the claims.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import server_or_cluster
from test_shard_uniques import (
    CASES,
    VALUES,
    Account,
    Fault,
    _act,
    _setup,
    assert_one_owner_each,
    ghost_claim,
    race_step,
)

import redisca
from redisca import OperationalError, Session, maintenance
from redisca.embedded import EmbeddedCluster
from redisca.maintenance import shardclaims
from redisca.session import claims

MAPPER = redisca.inspect(Account)
LAYOUT = MAPPER.layout


def _b(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def raw_kinds(raw: Any) -> set[str]:
    """What raw Redis shows wrong with the claims of ``Account.email``, by an oracle of its
    own: every shard's hashes, stripes, tokens and registrations read with plain HGETALL."""
    held: dict[bytes, list[str]] = {}
    claimed: dict[bytes, str] = {}
    tokens: dict[bytes, bytes] = {}
    kinds: set[str] = set()
    for layout in MAPPER.shard_layouts():
        for stripe in layout.unique_stripes(b"email"):
            claimed.update({_b(v): _b(o).decode() for v, o in raw.hgetall(stripe).items()})
        for stripe in layout.claim_token_stripes(b"email"):
            tokens.update({_b(v): _b(t) for v, t in raw.hgetall(stripe).items()})
        for key in layout.registries():
            if raw.hlen(key):
                kinds.add("stale_registration")
        for key in raw.scan_iter(match=layout.entity_pattern, count=1000):
            value = raw.hget(key, b"email")
            if value is not None:
                ident = _b(key)[len(layout.entity("")) :].decode()
                held.setdefault(_b(value).lower(), []).append(ident)
    for value in {*held, *claimed, *tokens}:
        found = shardclaims.verdict(held.get(value, []), claimed.get(value), tokens.get(value))
        if found is not None:
            kinds.add(found)
    return kinds


def kinds_of(report: Any) -> set[str]:
    return {p.kind for p in report.problems}


@pytest.fixture(autouse=True)
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shardclaims, "LINGER", 0.2)


@pytest.fixture(params=["one server", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from server_or_cluster(request)


def _dead(self: Any, *args: Any) -> Any:  # the failed commit's process died: no clean-up
    yield from ()


@pytest.mark.parametrize(("scenario", "step", "when"), CASES, ids=["-".join(c) for c in CASES])
def test_after_each_fault_check_reports_and_reindex_repairs_what_remains(
    cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch, scenario: str, step: str, when: str
) -> None:
    client = cluster.client()
    try:
        _setup(client, scenario)
        monkeypatch.setattr(claims.Pending, "abandon", _dead)
        fault = Fault(step, when)
        fault.install(monkeypatch)
        session = Session(client)
        try:
            _act(session, scenario)
            failed = False
        except OperationalError:
            failed = True
        assert fault.fired and failed == (step != "release")
        monkeypatch.undo()
        monkeypatch.setattr(shardclaims, "LINGER", 0.2)
        session.close()
        left = raw_kinds(client)
        assert left <= {"dangling_unique", "stale_registration"}, left
        report = maintenance.check(Account, client)
        assert kinds_of(report) == left, report.problems
        fixed = maintenance.reindex(Account, client)
        assert fixed.ok, fixed.problems
        assert (fixed.models[0].claims_repaired > 0) == bool(report.problems)
        assert raw_kinds(client) == set()
        assert maintenance.check(Account, client).ok
        assert_one_owner_each(client)
    finally:
        client.close()


def test_some_faults_leave_each_kind() -> None:
    """The cases above are not all clean: the protocol's leftovers are exercised."""
    steps = {(s, st) for s, st, _ in CASES}
    assert ("insert", "claim") in steps and ("update", "release") in steps
    assert len(CASES) == 26


def _commit(client: Any, *accounts: Account) -> None:
    with Session(client) as session:
        session.add_all(accounts)
        session.commit()


def test_sound_claims_check_clean_on_one_server_and_a_cluster(client: Any) -> None:
    _commit(client, *(Account(email=f"u{i}@x.org", nick=f"n{i}", id=f"a{i}") for i in range(60)))
    with Session(client) as session:
        a = session.get(Account, "a1")
        a.email = "moved@x.org"
        session.delete(session.get(Account, "a2"))
        session.commit()
    report = maintenance.check(Account, client)
    assert report.ok, report.problems
    assert not shardclaims.suspects(MAPPER, shardclaims.gather(client, MAPPER, 50))
    stats = maintenance.stats(Account, client)
    assert stats.models[0].claims == 59 * 2
    assert stats.models[0].entities == 59


def _hurt(raw: Any) -> None:
    """Every kind of claim problem, written by hand."""
    stripe = LAYOUT.unique_stripe
    tokens = LAYOUT.claim_tokens
    raw.hdel(stripe(b"email", b"u1@x.org"), b"u1@x.org")  # missing_unique
    raw.hset(stripe(b"email", b"u2@x.org"), b"u2@x.org", b"a9")  # wrong_owner
    raw.hset(stripe(b"email", b"gone@x.org"), b"gone@x.org", b"a3")  # dangling_unique
    raw.hset(tokens(b"email", b"tok@x.org"), b"tok@x.org", b"0123456789abcdef")  # stale_token
    raw.hset(LAYOUT.registry(b"a4"), b"email:a4", b"fedcba9876543210")  # stale_registration
    raw.hset(LAYOUT.for_id("a5").entity("a5"), b"email", b"U6@x.org")  # duplicate_unique


def test_every_kind_is_reported_and_repaired_but_duplicates(client: Any) -> None:
    _commit(client, *(Account(email=f"u{i}@x.org", id=f"a{i}") for i in range(10)))
    _hurt(client)
    expected = {
        "missing_unique",
        "wrong_owner",
        "dangling_unique",
        "stale_token",
        "stale_registration",
        "duplicate_unique",
    }
    assert raw_kinds(client) == expected
    report = maintenance.check(Account, client)
    assert kinds_of(report) == expected, report.problems
    keys = {p.key for p in report.problems}
    assert not [p for p in report.problems if p.kind == "stray_key"]
    assert all("#u:" in k or "#o:" in k or "#c:" in k for k in keys), keys
    claim_keys = maintenance.stats(Account, client).models[0].index_keys["claims"]
    assert claim_keys >= 2  # token stripes (every claim's on a cluster), the registration
    fixed = maintenance.reindex(Account, client, fields=["email"])  # the claims alone
    assert fixed.models[0].rebuilt == ["email"]
    assert kinds_of(fixed) == {"duplicate_unique"}
    assert fixed.models[0].claims_repaired == 6  # u5@x.org too: a5 let it go
    again = maintenance.check(Account, client)
    assert kinds_of(again) == {"duplicate_unique"}
    client.hset(LAYOUT.for_id("a5").entity("a5"), b"email", b"u5@x.org")  # the user decides
    assert kinds_of(maintenance.check(Account, client)) == {"missing_unique"}  # u5@x.org's
    assert maintenance.reindex(Account, client).ok
    assert maintenance.check(Account, client).ok
    held, claimed = raw_owners(client)
    assert held == claimed


def test_several_passes_find_and_repair_what_one_pass_does(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more claims than ``PASS_CLAIMS``, check and reindex walk the model in passes,
    each holding the values of some stripes only: the problems are the same as in one
    pass, and so are the repairs."""
    _commit(client, *(Account(email=f"u{i}@x.org", id=f"a{i}") for i in range(30)))
    _hurt(client)
    one_pass = maintenance.check(Account, client).problems
    assert shardclaims.passes_for(client, MAPPER) == 1
    monkeypatch.setattr(shardclaims, "PASS_CLAIMS", 4)
    passes = shardclaims.passes_for(client, MAPPER)
    assert passes >= 7  # about 30 claims, 4 a pass
    held: list[int] = []
    gather = shardclaims.gather

    def spy(*args: Any) -> Any:
        found = gather(*args)
        held.append(len(found.holders))
        return found

    monkeypatch.setattr(shardclaims, "gather", spy)
    several = maintenance.check(Account, client).problems
    assert sorted(several) == sorted(one_pass)
    assert len(held) == passes and sum(held) >= 29 and max(held) < 15
    fixed = maintenance.reindex(Account, client, fields=["email"])
    assert kinds_of(fixed) == {"duplicate_unique"}
    assert fixed.models[0].claims_repaired == 6
    assert kinds_of(maintenance.check(Account, client)) == {"duplicate_unique"}


def raw_owners(raw: Any) -> tuple[dict[bytes, str], dict[bytes, str]]:
    held: dict[bytes, str] = {}
    claimed: dict[bytes, str] = {}
    for layout in MAPPER.shard_layouts():
        for stripe in layout.unique_stripes(b"email"):
            claimed.update({_b(v): _b(o).decode() for v, o in raw.hgetall(stripe).items()})
        for key in raw.scan_iter(match=layout.entity_pattern, count=1000):
            value = raw.hget(key, b"email")
            if value is not None:
                held[_b(value).lower()] = _b(key)[len(layout.entity("")) :].decode()
    return held, claimed


def test_a_commit_in_flight_is_not_reported(
    cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check runs while a commit has registered and claimed, its entity not written yet:
    what it sees lasts less than LINGER, so it reports nothing."""
    monkeypatch.setattr(shardclaims, "LINGER", 1.0)
    client = cluster.client()
    reports: list[Any] = []
    seen: list[Any] = []
    try:
        checking = threading.Thread(
            target=lambda: reports.append(maintenance.check(Account, cluster.client()))
        )
        original = shardclaims.suspects

        suspected = threading.Event()

        def spy(mapper: Any, found: Any) -> Any:
            out = original(mapper, found)
            seen.extend(out)
            suspected.set()
            return out

        monkeypatch.setattr(shardclaims, "suspects", spy)

        def start_check() -> None:
            checking.start()
            assert suspected.wait(30)  # it has read the shards while this commit waited

        fault = Fault("entity", "before", hooked=start_check)
        fault.install(monkeypatch)
        _commit(client, Account(email="v@x.org", id="a1"))
        checking.join()
        assert fault.fired
        assert {s.kind for s in seen} == {"dangling_unique", "stale_registration"}
        assert reports and reports[0].ok, reports[0].problems
    finally:
        client.close()


def test_sweep_passes_over_a_sharded_model_which_cannot_expire(client: Any) -> None:
    """A sharded model has no ttl (the mapping refuses both), so sweep has nothing of it
    to walk; naming it is the error of naming any model that does not expire. (reshard of
    such a model: tests/test_shard_reshard.py.)"""
    assert maintenance.sweep(Account, client).models == []
    with pytest.raises(maintenance.UnknownName, match="expiring models"):
        maintenance.sweep(Account, client, models=["Account"])


def test_reindex_while_commits_race_leaves_one_owner_each(cluster: EmbeddedCluster) -> None:
    """A writer claims, moves, swaps and deletes values (test_shard_uniques.race_step)
    while reindex repairs stale claims of the same values, again and again: its repairs
    go through the protocol, so once the writer is done raw Redis shows no value with two
    owners, and check is clean. (Raw reads during the race would not be one instant.)"""
    client = cluster.client()
    outcomes: list[str] = []
    try:
        for n, value in enumerate(VALUES[:3]):
            ghost_claim(client, value.encode(), f"ghost{n}", registered=n % 2 == 0)

        def writer() -> None:
            rng = random.Random(5)
            for _ in range(150):
                outcomes.append(race_step(client, rng)[1])

        racing = threading.Thread(target=writer)
        racing.start()
        runs = 0
        while racing.is_alive() or runs < 2:
            fixed = maintenance.reindex(Account, client)
            runs += 1
            assert all("not repaired" in p.detail for p in fixed.problems), fixed.problems
        racing.join()
        assert not [o for o in outcomes if o.startswith("error")], outcomes
        assert "ok" in outcomes
        maintenance.reindex(Account, client)
        report = maintenance.check(Account, client)
        assert report.ok, report.problems
        assert_one_owner_each(client)
    finally:
        client.close()

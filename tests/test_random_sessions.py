"""Three sessions take random turns over a few ids and emails; the indexes must hold.

A fixed-seed random walk (deterministic, so a failure reproduces) through add, get,
reference, field changes (plain, indexed, unique, references, None), delete, commit,
rollback and expunge. After every commit the indexes must match the hashes exactly.
It found the partial hash a plain update could leave behind when another session had
deleted the entity; the model-based tests of the reliability work go further.
Each refusal must be one the operation can meet (EXPECTED_REFUSALS): counting any
RediscaError as a refusal once hid a commit that stopped saving new references.
"""

from __future__ import annotations

import collections
import random

import pytest
import redis
from helpers import assert_indexes_consistent
from models import Company, User

import redisca
from redisca import Session

EMAILS = [f"e{i}@x.org" for i in range(5)]
IDS = [str(i) for i in range(8)]
AGES = [None, 1, 2, 3]


def _change(rnd: random.Random, s: Session, user: User) -> None:
    pick = rnd.random()
    if pick < 0.3:
        user.email = rnd.choice(EMAILS)
    elif pick < 0.6:
        user.age = rnd.choice(AGES)
    elif pick < 0.8:
        user.nickname = rnd.choice([None, "a", "b"])
    else:
        user.company = rnd.choice(
            [None, Company(f"c{rnd.randint(0, 3)}"), s.reference(Company, "c-fixed")]
        )


def _pick(rnd: random.Random) -> str:
    """The next operation's name."""
    op = rnd.random()
    for bound, name in ((0.25, "add"), (0.5, "change"), (0.6, "delete"), (0.85, "commit")):
        if op < bound:
            return name
    return "rollback" if op < 0.95 else "expunge"


def _step(op: str, rnd: random.Random, s: Session) -> None:
    """Do ``op`` (a name from :func:`_pick`) in ``s``."""
    if op == "add":
        s.add(User(rnd.choice(EMAILS), age=rnd.choice(AGES), id=rnd.choice(IDS)))
    elif op == "change":
        ident = rnd.choice(IDS)
        user = s.get(User, ident) if rnd.random() < 0.7 else s.reference(User, ident)
        if user is not None:
            _change(rnd, s, user)
    elif op == "delete":
        user = s.get(User, rnd.choice(IDS))
        if user is not None:
            s.delete(user)
    elif op == "commit":
        s.commit()
    elif op == "rollback":
        s.rollback()
    else:
        s.expunge_all()


#: The refusals each operation may meet, by exact class and message. Anything else (a
#: ValidationError from a reference the commit did not save, a bug's exception) fails.
EXPECTED_REFUSALS: dict[str, list[tuple[type[Exception], str]]] = {
    # an id another object of the session already holds
    "add": [(redisca.IntegrityError, "already in this session as another object")],
    "commit": [
        (redisca.UniqueViolation, "is already taken by id"),  # another session has it
        # two objects of this session claim one value: refused before anything is sent
        (redisca.UniqueViolation, "is claimed by two objects of this commit"),
        (redisca.IntegrityError, "already exists in Redis"),  # a new id another created
        (redisca.NotFound, "does not exist"),  # a reference()'s key, deleted or never there
        (redisca.StaleDataError, "was deleted from Redis since it was loaded"),
    ],
}


def _expected(op: str, exc: Exception) -> bool:
    return any(
        type(exc) is kind and text in str(exc) for kind, text in EXPECTED_REFUSALS.get(op, [])
    )


# Seeds whose walks include a plain update racing a delete (they failed before the fix).
@pytest.mark.parametrize("seed", [18, 23, 34])
def test_random_sessions_keep_indexes_consistent(r: redis.Redis, seed: int) -> None:
    rnd = random.Random(seed)
    sessions = [Session(r) for _ in range(3)]
    commits = 0
    refusals: collections.Counter[tuple[str, str]] = collections.Counter()
    for _ in range(700):
        s = rnd.choice(sessions)
        op = _pick(rnd)
        try:
            _step(op, rnd, s)
        except Exception as exc:
            # Only the refusals this operation can meet; the session must stay usable.
            assert _expected(op, exc), f"{op}: {exc!r}"
            refusals[(op, type(exc).__name__)] += 1
            s.rollback()
            continue
        if op == "commit":
            commits += 1
            assert_indexes_consistent(r, redisca.inspect(User))
            assert_indexes_consistent(r, redisca.inspect(Company))
    # The walk really exercised both outcomes, and each kind of refusal.
    assert commits > 50 and sum(refusals.values()) > 10, refusals
    assert {kind for _, kind in refusals} >= {"IntegrityError", "UniqueViolation", "NotFound"}

"""Bulk loads and commits pause the cyclic garbage collector, and always restore it."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest
import redis
from models import User

from redisca import Session
from redisca.session.gcpause import BULK, paused


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_a_bulk_operation_pauses_the_collector_and_restores_it() -> None:
    gc.enable()
    with paused(BULK):
        assert not gc.isenabled()
    assert gc.isenabled()
    with paused(BULK - 1):
        assert gc.isenabled()  # small operations leave it alone


def test_nested_and_failing_pauses_restore_it_once_at_the_end() -> None:
    gc.enable()
    with pytest.raises(ZeroDivisionError), paused(BULK):
        with paused(BULK):
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still runs
        1 / 0  # noqa: B018
    assert gc.isenabled()


def test_a_collector_the_application_disabled_stays_disabled() -> None:
    gc.disable()
    with paused(BULK):
        pass
    assert not gc.isenabled()


def test_overlapping_pauses_in_threads_end_with_the_last() -> None:
    gc.enable()
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with paused(BULK):
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    with paused(BULK):
        thread.start()
        assert inside.wait(10)
    assert not gc.isenabled()  # the thread's pause is still running
    release.set()
    thread.join(10)
    assert gc.isenabled()


def test_sessions_leave_the_collector_on(r: redis.Redis) -> None:
    gc.enable()
    with Session(r) as s:
        s.add_all([User(email=f"u{i}@example.com", age=i % 100) for i in range(BULK)])
        s.commit()
        assert gc.isenabled()
        ids = [state.id for state in s.states()]
    with Session(r) as s:
        assert len([u for u in s.get_many(User, ids) if u is not None]) == BULK
        assert gc.isenabled()
    assert gc.isenabled()

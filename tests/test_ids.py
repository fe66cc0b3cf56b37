"""Ids must never collide (they become Redis keys) and should sort by time."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
import string
import threading
import time

import pytest

from redisca import ids
from redisca.ids import hexid, intid, split_id

N = 5_000


def _make_ids(n: int) -> list[int]:
    return [intid() for _ in range(n)]


def _token(_: object = None) -> int:
    return split_id(intid()).token


def test_consecutive_ids_strictly_increase() -> None:
    values = [intid() if i % 2 else int(hexid(), 16) for i in range(1000)]
    assert all(a < b for a, b in itertools.pairwise(values))


def test_hexids_sort_like_their_numbers() -> None:
    hexes = [hexid() for _ in range(1000)]
    assert sorted(hexes) == hexes
    assert [int(h, 16) for h in hexes] == sorted(int(h, 16) for h in hexes)


def test_hexid_is_fixed_width_lowercase_hex() -> None:
    for value in (hexid() for _ in range(100)):
        assert len(value) == ids.HEX_WIDTH == 26
        assert set(value) <= set(string.hexdigits.lower())
        assert re.fullmatch(r"0[0-9a-f]{25}", value)  # 48-bit time: leading zero


def test_ids_carry_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    parts = split_id(hexid())
    after = time.time_ns() // 1_000_000
    assert before <= parts.ms <= after
    assert split_id(intid()).token == parts.token


def test_unique_across_threads() -> None:
    results: list[list[int]] = [[] for _ in range(8)]

    def work(slot: list[int]) -> None:
        slot.extend(_make_ids(N))

    threads = [threading.Thread(target=work, args=(slot,)) for slot in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [v for slot in results for v in slot]
    assert len(set(everything)) == 8 * N
    for slot in results:
        assert slot == sorted(slot)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_unique_across_processes(method: str) -> None:
    context = multiprocessing.get_context(method)
    # One fresh process per batch, so each batch has its own token.
    with context.Pool(4, maxtasksperchild=1) as pool:
        batches = pool.map(_make_ids, [N] * 4, chunksize=1)
    mine = _make_ids(N)
    everything = [v for batch in [*batches, mine] for v in batch]
    assert len(set(everything)) == 5 * N
    tokens = {split_id(batch[0]).token for batch in [*batches, mine]}
    assert len(tokens) == 5


def test_fork_renews_the_token() -> None:
    parent = _token()
    context = multiprocessing.get_context("fork")
    with context.Pool(3) as pool:
        children = pool.map(_token, range(3), chunksize=1)
    assert parent not in children
    assert _token() == parent


def test_fork_with_os_fork_renews_the_token() -> None:
    parent = _token()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report the token, then leave without pytest's clean-up
        try:
            os.write(write_end, str(_token()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = int(pipe.read())
    os.waitpid(pid, 0)
    assert child != parent


def test_clock_going_backwards_keeps_order(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10_000_000, 9_000_000, 8_000_000, 10_000_000, 10_000_001])
    monkeypatch.setattr(ids, "_now_ms", lambda: next(clock))
    monkeypatch.setattr(ids, "_generator", ids._Generator())
    values = [intid() for _ in range(5)]
    assert values == sorted(set(values))
    assert [split_id(v).ms for v in values] == [10_000_000] * 4 + [10_000_001]


def test_counter_overflow_borrows_the_next_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_now_ms", lambda: 5_000_000)
    generator = ids._Generator()
    monkeypatch.setattr(ids, "_generator", generator)
    first = intid()
    generator.counter = (1 << ids.COUNTER_BITS) - 2
    values = [first, intid(), intid(), intid()]
    assert values == sorted(set(values))
    assert [split_id(v)[::2] for v in values] == [
        (5_000_000, 0),
        (5_000_000, (1 << 24) - 1),
        (5_000_001, 0),
        (5_000_001, 1),
    ]

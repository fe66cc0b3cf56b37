"""Queries of a sharded model (``registry.mapped(shards=N)``): scatter, then merge.

Each shard has its own indexes (its entities' entries only), so a query runs the query
script once per shard, all sent together: one round trip on one server, one per master
on a cluster (:func:`redisca.session.queryscript.run_many`). Each shard answers with at
most ``offset + limit`` ids in the query's order, with their scores in the ordering index
(``sids``/``sload`` modes); the client merges them by (score, id), the order one shard
gives, then cuts the page. Counts are summed. So the results equal one shard's, and a
page costs every shard ``offset + limit`` entries: a deep offset is paid N times over,
which :meth:`Query.after` (keyset pagination) avoids, each shard starting after the
cursor's (score, id).

A unique value's claim lives in the value's shard, its owner in the owner's: a query
with one reads the claim first (one round trip), then asks the owner's shard alone, and
keeps the owner only if its hash, read in that step, still holds the value (a claim left
behind by a commit that failed part-way names an entity that does not hold it).

Each shard's answer is taken at one instant, but not the same instant for all: a commit
that touches several shards (one ``MULTI``/``EXEC`` per shard on a cluster) can be seen
applied in one shard and not yet in another (docs/guarantees.rst).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from ..errors import QueryError
from ..mapping.expressions import Condition
from ..mapping.keys import KeyLayout
from ..mapping.mapper import MappedField, Mapper
from . import executor, queryscript, routing
from .io import Steps
from .querycompile import (
    Cursor,
    OwnerTerm,
    ScriptCall,
    UniqueTerm,
    compile_query,
    sort_filters,
    unique_values,
)


def run_steps(
    client: Any,
    mapper: Mapper,
    conditions: tuple[Condition, ...],
    by: MappedField | None,
    *,
    mode: bytes,
    descending: bool,
    offset: int,
    limit: int | None,
    cursor: Cursor,
) -> Steps[tuple[Any, ScriptCall]]:
    """The reply one shard's script would give for the whole model (``[ids, hashes,
    work]``, or ``[count, work]``), and a representative call (its keys name the
    indexes in an error message). A protocol (:mod:`redisca.session.io`): the sync and
    async queries both run it."""
    cursor = yield from _resolved(client, mapper, by, cursor)
    layouts = mapper.shard_layouts()
    if any(type(t) is UniqueTerm for t in sort_filters(mapper, conditions, layouts[0]).terms):
        return (
            yield from _by_owner(
                client, mapper, conditions, by, mode, descending, offset, limit, cursor
            )
        )
    need = None if limit is None else offset + limit
    call = _first_call(mapper, conditions, by, mode, descending, need, cursor)
    tags = [layout.hashtag for layout in layouts]
    replies, skipped = None, -1
    if PER_NODE:
        replies, skipped = yield from _per_node(client, call, tags, mode, descending, offset, need)
    if replies is None:
        calls = [call] + [_moved(call, tags[0], tag) for tag in tags[1:]]
        replies = yield from queryscript.run_many_steps(client, calls)
    if mode == b"count":
        total = sum(int(r[0]) for r in replies)
        work = sum(int(r[1]) for r in replies)
        return [_cut(total, offset, limit), work], call
    work = sum(int(r[2]) for r in replies)
    done = max(skipped, 0)  # rows the nodes skipped already
    start, stop = offset - done, None if need is None else need - done
    if len(replies) == 1:  # one node merged every shard: its reply is in order already
        ids, hashes = replies[0][0], replies[0][1] or [None] * len(replies[0][0])
        return [ids[start:stop], hashes[start:stop], work], call
    page = _merged(replies, skipped >= 0 or by is not None, descending, start, stop)
    return [[row[1] for row in page], [row[2] for row in page], work], call


#: Run a query of a sharded model once per node (:data:`~redisca.session.queryscript.
#: NODES`), not once per shard; ``False``: shard by shard, as the fallback does (the
#: tests and the benchmark compare both).
PER_NODE = True


def _per_node(
    client: Any,
    call: ScriptCall,
    tags: list[bytes],
    mode: bytes,
    descending: bool,
    offset: int,
    need: int | None,
) -> Steps[tuple[list[Any] | None, int]]:
    """The shards' answers as one reply per node (the shards' runs merged there, the
    node's first ``need`` rows' hashes read in the same step), and how many leading
    rows of the merged order the nodes skipped already (-1: not run). One node (one
    server, or one master serving every shard) skips the offset itself; several give
    their first ``need`` each and the client merges them. ``None`` when a node failed
    its call: then the query asks shard by shard. ``call`` is the first shard's,
    ``tags`` every shard's hash tag: a node's call is its first shard's call and the
    tags of the others (:data:`~redisca.session.queryscript.NODES`)."""
    try:
        groups = routing.by_node(client, [routing.tag_slot(tag) for tag in tags])
    except routing.Redirected:  # a slot not covered (yet): the shard path waits for it
        return None, -1
    skip = offset if len(groups) == 1 and mode != b"count" else 0
    take = None if need is None else need - skip
    node_calls = []
    for group in groups:
        head = call if group[0] == 0 else _moved(call, tags[0], tags[group[0]])
        node_calls.append(
            queryscript.nodes_call(head, [tags[i] for i in group], mode, skip, take, descending)
        )
    replies = yield from queryscript.run_nodes_steps(client, node_calls)
    return replies, (skip if replies is not None else -1)


def _first_call(
    mapper: Mapper,
    conditions: tuple[Condition, ...],
    by: MappedField | None,
    mode: bytes,
    descending: bool,
    need: int | None,
    cursor: Cursor,
) -> ScriptCall:
    """The first shard's script call, asking for its first ``need`` ids (with their
    scores when a range index orders the query and ids are asked for); every other
    shard's is this one :func:`_moved` to its tag."""
    if by is not None and mode != b"count":
        mode = b"s" + mode
    first = mapper.shard_layouts()[0]
    return compile_query(
        mapper,
        sort_filters(mapper, conditions, first),
        by,
        mode=mode,
        descending=descending,
        limit=need,
        cursor=cursor,
        layout=first,
    )


def _moved(call: ScriptCall, head: bytes, other: bytes) -> ScriptCall:
    """Shard 0's call for another shard: the calls differ only in the head of every key
    and of the entity prefix (``args[5]``), which are built the same way from the
    shard's tag (``mapping/keys.py``), so this costs a few µs where compiling again
    costs tens. The per-node path needs it for the first shard of each node alone (the
    node's script makes the others' keys from their tags the same way); the shard path
    for every shard."""
    cut = len(head)
    keys = tuple(other + key[cut:] for key in call.keys)
    args = list(call.args)
    args[5] = other + args[5][cut:]  # type: ignore[index]
    return ScriptCall(keys, tuple(args), call.types, call.lookup, expiring=call.expiring)


def _merged(
    replies: list[Any], scored: bool, descending: bool, offset: int, need: int | None
) -> list[tuple[float, bytes, Any]]:
    """The page of the shards' replies merged by (score, id), as one shard orders."""
    merged = heapq.merge(
        *(_rows(r, scored) for r in replies),
        key=_score_id if scored else _id,
        reverse=descending,
    )
    return list(itertools.islice(merged, offset, need))


def _rows(reply: Any, scored: bool) -> list[tuple[float, bytes, Any]]:
    """One shard's page as (score, id, hash) rows, in its order."""
    ids, hashes = reply[0], reply[1]
    scores = reply[3] if scored else [0] * len(ids)
    if not hashes:
        hashes = [None] * len(ids)
    return [(float(s), i, h) for s, i, h in zip(scores, ids, hashes, strict=True)]


def _score_id(row: tuple[float, bytes, Any]) -> tuple[float, bytes]:
    return row[0], row[1]


def _id(row: tuple[float, bytes, Any]) -> bytes:
    return row[1]


def _cut(n: int, offset: int, limit: int | None) -> int:
    n = max(0, n - offset)
    return n if limit is None else min(n, limit)


def _resolved(client: Any, mapper: Mapper, by: MappedField | None, cursor: Cursor) -> Steps[Cursor]:
    """``after(id)``'s position as (score, id): the id's score lives in its own shard
    only, and every shard needs it (one round trip; an instance the session read
    needs none)."""
    kind, _, ident = cursor
    if kind != b"i" or by is None:
        return cursor
    layout = mapper.layout.for_id(ident.decode())
    command = (b"ZSCORE", layout.range_index(by.hash_field), ident)
    score = (yield from executor.run_steps(client, [command]))[0]
    if score is None:
        raise QueryError("after(): that id is not in the query's ordering index")
    if isinstance(score, Exception):
        raise QueryError(f"after(): cannot read the id's position: {score}")
    return (b"s", b"%r" % float(score), ident)


def _by_owner(
    client: Any,
    mapper: Mapper,
    conditions: tuple[Condition, ...],
    by: MappedField | None,
    mode: bytes,
    descending: bool,
    offset: int,
    limit: int | None,
    cursor: Cursor,
) -> Steps[tuple[Any, ScriptCall]]:
    """A query with a unique value: the claims read first, then the owner's shard."""
    values = unique_values(mapper, conditions)
    stripes = [(b"HGET", mapper.layout.unique_stripe(f.hash_field, v), v) for f, v in values]
    owners = set((yield from executor.run_steps(client, stripes)))
    owner = owners.pop() if len(owners) == 1 else None
    layout = None if owner is None else mapper.layout.for_id(_text(owner))
    if owner is None or layout is None or isinstance(owner, Exception):
        call = ScriptCall((stripes[0][1],), (), (b"hash",))
        return ([0, 1] if mode == b"count" else [[], [], 1]), call
    call = _owner_call(mapper, conditions, by, layout, owner, descending, cursor)
    ids, hashes, work = (yield from queryscript.run_many_steps(client, [call]))[0][:3]
    held = ids and _holds(executor.hash_reply(hashes[0]), values)
    n = _cut(1 if held else 0, offset, limit)
    if mode == b"count":
        return [n, work + 1], call
    if not n:
        return [[], [], work + 1], call
    return [ids, hashes if mode == b"load" else [], work + 1], call


def _owner_call(
    mapper: Mapper,
    conditions: tuple[Condition, ...],
    by: MappedField | None,
    layout: KeyLayout,
    owner: bytes,
    descending: bool,
    cursor: Cursor,
) -> ScriptCall:
    """The owner's shard's script call: the unique terms replaced by the owner's id,
    always ``load`` (its hash proves it holds the values)."""
    filters = sort_filters(mapper, conditions, layout)
    terms = tuple(t for t in filters.terms if type(t) is not UniqueTerm)
    filters = type(filters)((OwnerTerm(owner), *terms), filters.ranges)
    return compile_query(
        mapper, filters, by, mode=b"load", descending=descending, cursor=cursor, layout=layout
    )


def _holds(stored: dict[Any, Any], values: list[tuple[MappedField, bytes]]) -> bool:
    """Whether the owner's hash holds every unique value it was found by."""
    for field, value in values:
        raw = stored.get(field.hash_field)
        if raw is None:
            raw = stored.get(field.hash_field.decode())
        if raw is None:
            return False
        if isinstance(raw, str):
            raw = raw.encode()
        if field.index_key(raw) != value:
            return False
    return True


def _text(owner: Any) -> str:
    return owner.decode() if isinstance(owner, bytes) else str(owner)


__all__ = ["PER_NODE", "run_steps"]

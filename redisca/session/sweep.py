"""Sweeping expired entities: pure functions, built without I/O (like plan and emit).

An entity of an expiring model is *expired* once its instant in ``H#exp`` is at or
before the server's clock: readers treat it as gone at once, while its hash, index
entries, unique claims, collection keys and ``H#exp`` member wait here. A sweep is two
commands, sent by whoever sweeps (``python -m redisca sweep``, or a commit):

1. :data:`READ`, read-only, keyed on ``H#exp``: up to ``limit`` expired ids (by the
   server's ``TIME``), each with its hash and its collections' members, and the model's
   reindex marker, in one step;
2. :data:`REMOVE`, with every key it touches declared: only if every id is still
   expired *at run time* and its hash and collections still hold what step 1 read (a
   writer may have re-created an id, or a reindex started, in between), the commands a
   commit deleting those entities would send, computed by the commit's own emitter
   (:mod:`redisca.session.emit`) from what step 1 read. So the entries removed are
   exactly the ones the commit would remove; a unique value is released only where its
   stripe still names the id (another entity may have claimed it since the expiry); the
   guard stripes are bumped, so commits that read the entities meanwhile fail their
   ``EXEC``; and the ``H#exp`` members go with them. All or nothing, so that one entity's
   index writes may share a variadic command with the others' as in a commit: when an
   id fails its re-check, nothing is removed and the reply names the ids that failed;
   the sweeper sends the removal again without them (a later sweep takes them).

Each command's keys share the model's hash tag, so both run on one cluster node. Both
are sent by digest first (:data:`READ_SHA`, :data:`REMOVE_SHA`), whole when the server
does not know them yet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import attrs

from ..errors import InvalidRequestError, RediscaError
from ..mapping.mapper import MappedField, Mapper
from . import emit
from .plan import DELETE, Command, CommitPlan, EntityChange, Observed
from .rebuild import RELEASE_BUILT, Rebuild, parse_marker

#: KEYS: ``H#exp``, the reindex marker ``H#x``. ARGV: limit, offset (ids skipped by an
#: earlier batch of this sweep), the entity key prefix ``H:``, the collections' key
#: prefix ``H#m:``, then per collection field its hash field and ``set`` or ``list``.
#: Returns the server's now (ms), the marker's list, then per expired id (oldest instant
#: first) ``{id, HGETALL, members of each collection in ARGV order}``. Reads only.
READ = b"""\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now),
  'LIMIT', tonumber(ARGV[2]), tonumber(ARGV[1]))
local out = {now, redis.call('LRANGE', KEYS[2], 0, -1)}
for _, id in ipairs(ids) do
  local item = {id, redis.call('HGETALL', ARGV[3] .. id)}
  for j = 5, #ARGV, 2 do
    local key = ARGV[4] .. ARGV[j] .. ':' .. id
    if ARGV[j + 1] == 'list' then
      item[#item + 1] = redis.call('LRANGE', key, 0, -1)
    else
      item[#item + 1] = redis.call('SMEMBERS', key)
    end
  end
  out[#out + 1] = item
end
return out
"""

#: The conditional release of a unique value (``RELEASE_OWNED``, ``RELEASE_BUILT``),
#: as one operation of :data:`REMOVE`: ``HDEL`` only if the stripe names the id.
RELEASE_OP = b"HDELIF"

#: KEYS: ``H#exp``, ``H#x``, then every key the removal touches. ARGV: the reindex run
#: the batch was read under (empty: none), the number of ids, then per id: the id, its
#: entity key's position in KEYS, the number of hash fields read and the field/value
#: pairs, the number of collections and per collection its key's position, ``set`` or
#: ``list``, the number of members and the members; then the number of operations of the
#: whole removal and each one (name, number of keys, number of arguments, the keys'
#: positions, the arguments). All or nothing: returns ``{removed}`` when every id passed
#: its re-check and all was removed, ``{0, failed id...}`` when some did not (nothing was
#: done: send it again without them), ``{-1}`` when the reindex marker changed since the
#: read (nothing was done: read again).
REMOVE = b"""\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if (redis.call('LINDEX', KEYS[2], 0) or '') ~= ARGV[1] then return {-1} end
local a = 3
local function num() a = a + 1; return tonumber(ARGV[a - 1]) end
local failed = {0}
local ids = tonumber(ARGV[2])
for _ = 1, ids do
  local id = ARGV[a]; a = a + 1
  local key = KEYS[num()]
  local score = redis.call('ZSCORE', KEYS[1], id)
  local ok = score and tonumber(score) <= now
  local nf = num()
  if ok then
    local held = redis.call('HGETALL', key)
    if #held ~= 2 * nf then ok = false end
    local want = {}
    for i = a, a + 2 * nf - 1, 2 do want[ARGV[i]] = ARGV[i + 1] end
    for i = 1, #held, 2 do
      if ok and want[held[i]] ~= held[i + 1] then ok = false end
    end
  end
  a = a + 2 * nf
  for _ = 1, num() do
    local coll = KEYS[num()]
    local list = ARGV[a] == 'list'
    a = a + 1
    local n = num()
    if ok then
      local held
      if list then
        held = redis.call('LRANGE', coll, 0, -1)
      else
        held = redis.call('SMEMBERS', coll)
      end
      if #held ~= n then ok = false end
      local want = {}
      for i = 1, n do want[ARGV[a + i - 1]] = i end
      for i, member in ipairs(held) do
        if ok and (want[member] == nil or (list and ARGV[a + i - 1] ~= member)) then ok = false end
      end
    end
    a = a + n
  end
  if not ok then failed[#failed + 1] = id end
end
if #failed > 1 then return failed end
for _ = 1, num() do
  local name, nk, na = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local args = {}
  for i = 0, nk - 1 do args[#args + 1] = KEYS[tonumber(ARGV[a + i])] end
  for i = nk, nk + na - 1 do args[#args + 1] = ARGV[a + i] end
  if name == 'HDELIF' then
    if redis.call('HGET', args[1], args[2]) == args[3] then redis.call('HDEL', args[1], args[2]) end
  else
    redis.call(name, unpack(args))
  end
  a = a + nk + na
end
return {ids}
"""


#: The server's clock in milliseconds since the epoch, the one expiry instants are on.
#: KEYS: a key of the model, which routes the call to the model's node.
NOW = b"""\
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


def now_command(mapper: Mapper) -> Command:
    """:data:`NOW` as a command, routed to the node of ``mapper``'s ``H#exp``."""
    return (b"EVAL", NOW, 1, mapper.layout.expiry)


def expired_ids(scores: Any, now_ms: Any) -> list[bool]:
    """Which of ``ZMSCORE H#exp``'s scores are expired at ``now_ms`` (score <= now)."""
    now = int(now_ms)
    return [score is not None and float(score) <= now for score in scores]


def _digest(script: bytes) -> bytes:
    return hashlib.sha1(script).hexdigest().encode()


READ_SHA = _digest(READ)
REMOVE_SHA = _digest(REMOVE)


@attrs.frozen
class Expired:
    """One expired entity as :data:`READ` found it: what its removal is computed from."""

    id: str
    #: Its hash (empty: an ``H#exp`` member whose hash is missing).
    fields: dict[bytes, bytes]
    #: Each collection's members as read: a frozenset for a set, a tuple for a list.
    members: dict[MappedField, Any]


@attrs.frozen
class Batch:
    """A batch of expired entities of one model, and the state it was read in."""

    now_ms: int
    #: The reindex running when it was read (its build keys are kept current too).
    rebuild: Rebuild | None
    expired: tuple[Expired, ...]
    #: Ids that are not UTF-8 text (no entity of redisca's has one): never removed.
    undecodable: tuple[bytes, ...] = ()


@attrs.frozen
class Removal:
    """:data:`REMOVE`'s reply: how many were removed; or the ids that failed their
    re-check (changed since the read, or no longer expired: nothing was removed), or
    that the reindex marker changed (nothing was removed either)."""

    removed: int
    skipped: tuple[str, ...]
    marker_changed: bool = False


def read_call(mapper: Mapper, limit: int, offset: int = 0) -> tuple[list[bytes], list[Any]]:
    """The keys and arguments of :data:`READ` for a batch of at most ``limit`` ids,
    after skipping the first ``offset`` expired ones."""
    _expiring(mapper)
    layout = mapper.layout
    args: list[Any] = [limit, offset, layout.entity(""), layout.members(b"", b"")[:-1]]
    for field in mapper.collections:
        args += (field.hash_field, b"list" if field.collection == "list" else b"set")
    return [layout.expiry, layout.marker], args


def read_command(mapper: Mapper, limit: int, offset: int = 0, *, by_digest: bool = True) -> Command:
    """:data:`READ` as a command: ``EVALSHA`` (or the whole ``EVAL``)."""
    keys, args = read_call(mapper, limit, offset)
    if by_digest:
        return (b"EVALSHA", READ_SHA, len(keys), *keys, *args)
    return (b"EVAL", READ, len(keys), *keys, *args)


def parse_batch(mapper: Mapper, reply: Any) -> Batch:
    """:data:`READ`'s reply as a :class:`Batch`."""
    now, marker, *items = reply
    expired: list[Expired] = []
    undecodable: list[bytes] = []
    for raw_id, hash_reply, *collections in items:
        try:
            ident = bytes(raw_id).decode()
        except UnicodeDecodeError:
            undecodable.append(bytes(raw_id))
            continue
        members: dict[MappedField, Any] = {}
        for field, got in zip(mapper.collections, collections, strict=True):
            values = [bytes(m) for m in got]
            members[field] = tuple(values) if field.collection == "list" else frozenset(values)
        fields = {bytes(k): bytes(v) for k, v in _pairs(hash_reply)}
        expired.append(Expired(ident, fields, members))
    return Batch(int(now), parse_marker(marker), tuple(expired), tuple(undecodable))


def removal(
    mapper: Mapper, items: list[Expired], rebuild: Rebuild | None = None, *, claims: bool = True
) -> list[Command]:
    """The commands a commit deleting ``items``' entities sends, given what was read of
    them, as the commit's emitter builds them (see :mod:`redisca.session.emit`): their
    hashes and collection keys, their index entries (and those of their collections'
    members), the releases of the unique values a stripe still names them for, the build
    keys of a running reindex, their guard stripes' ``INCR``, the ``ZREM`` of their
    ``H#exp`` members. Raises what the emitter raises on a value it cannot index.
    ``claims=False``: the unique values' claims are left alone, as a commit on a cluster
    leaves a sharded model's (they are in the values' shards: :func:`claims_of`)."""
    changes = []
    observed = Observed()
    if rebuild is not None:
        observed.rebuilds[mapper.layout.marker] = rebuild
    for item in items:
        change = EntityChange(mapper, item.id, DELETE, needs_read=True, was_loaded=False)
        if not claims:
            change.tokens = {}  # the emitter leaves their stripes to the claim protocol
        change.members = {field: (members, None) for field, members in item.members.items()}
        observed.exists[change.key] = True
        observed.fields[change.key] = dict(item.fields)
        changes.append(change)
    em = emit._Emitter(observed)
    for change in changes:
        emit._emit_delete(em, change)
        if change.members:
            emit._emit_members(em, change)
    em.settle_claims()
    # (The emitter's delete of an expiring entity removes its H#exp member too.)
    return [*em.commands(), *em.build_dirs(), *emit.guard_bumps(CommitPlan(tuple(changes)))]


def claims_of(mapper: Mapper, items: Iterable[Expired]) -> list[tuple[str, MappedField, bytes]]:
    """The unique values ``items`` held, as stored: (id, field, raw value). A swept
    entity of a sharded model on a cluster lets them go after its removal, with the
    claim protocol's release (:meth:`redisca.session.claims.Pending.vacate`)."""
    return [
        (item.id, field, raw)
        for item in items
        for field in mapper.uniques
        for raw in (item.fields.get(field.hash_field),)
        if raw is not None
    ]


def batch_or_none(mapper: Mapper, reply: Any) -> Batch | None:
    """:data:`READ`'s reply inside a commit's reads as a :class:`Batch`, or ``None`` when
    Redis refused it (an ``H#exp`` holding another type, say): a commit sweeps only as
    an extra, and never fails for it (``check`` reports such a key)."""
    if isinstance(reply, Exception):
        return None
    try:
        return parse_batch(mapper, reply)
    except (ValueError, TypeError):
        return None


def with_removals(
    commands: list[Command], users: int, plan: CommitPlan, observed: Observed
) -> list[Command]:
    """A commit's transaction with :data:`REMOVE` of the batches its reads found
    (``observed.sweeps``), placed before the user's own ``users`` commands (whose
    replies are the last). Entities the commit writes itself are left out: it removes
    an expired one's leftovers on its own. A removal that cannot be computed (a value
    the emitter cannot index) is left for ``python -m redisca sweep``, which reports it."""
    touched = {change.key for change in plan.changes}
    removals: list[Command] = []
    for mapper, batch in observed.sweeps.items():
        items = [i for i in batch.expired if mapper.layout.entity(i.id) not in touched]
        if not items:
            continue
        try:
            keys, args = removal_call(mapper, batch, items)
        except (RediscaError, NotImplementedError):
            continue
        removals.append((b"EVAL", REMOVE, len(keys), *keys, *args))
    if not removals:
        return commands
    cut = len(commands) - users
    return [*commands[:cut], *removals, *commands[cut:]]


def is_removal(command: Command) -> bool:
    """Whether ``command`` is a :data:`REMOVE` sent whole (as :func:`with_removals` does)."""
    return len(command) > 1 and command[0] == b"EVAL" and command[1] is REMOVE


class _Keys:
    """The removal's KEYS, each once, by position (from 1, as Lua counts)."""

    def __init__(self, first: list[bytes]) -> None:
        self.keys: list[bytes] = []
        self.at: dict[bytes, int] = {}
        for key in first:
            self(key)

    def __call__(self, key: bytes) -> int:
        found = self.at.get(key)
        if found is None:
            self.keys.append(key)
            found = self.at[key] = len(self.keys)
        return found


def removal_call(
    mapper: Mapper,
    batch: Batch,
    items: list[Expired] | None = None,
    commands: list[Command] | None = None,
    *,
    claims: bool = True,
) -> tuple[list[bytes], list[Any]]:
    """The keys and arguments of :data:`REMOVE` for ``items`` (default: the batch's), the
    removal computed by :func:`removal` under the batch's reindex run (``commands``: that
    removal, if computed already)."""
    layout = mapper.layout
    keys = _Keys([layout.expiry, layout.marker])
    items = list(batch.expired) if items is None else items
    if commands is None:
        commands = removal(mapper, items, batch.rebuild, claims=claims)
    args: list[Any] = [batch.rebuild.run if batch.rebuild is not None else b"", len(items)]
    for item in items:
        args += (item.id.encode(), keys(layout.entity(item.id)), len(item.fields))
        for pair in item.fields.items():
            args += pair
        args.append(len(item.members))
        for field, members in item.members.items():
            key = layout.members(field.hash_field, item.id.encode())
            kind = b"list" if field.collection == "list" else b"set"
            args += (keys(key), kind, len(members), *members)
    ops = [op for command in commands for op in _ops(command)]
    args.append(len(ops))
    for name, op_keys, op_args in ops:
        args += (name, len(op_keys), len(op_args), *(keys(k) for k in op_keys), *op_args)
    return keys.keys, args


def removal_command(
    mapper: Mapper, batch: Batch, items: list[Expired] | None = None, *, by_digest: bool = True
) -> Command:
    """:data:`REMOVE` as a command: ``EVALSHA`` (or the whole ``EVAL``)."""
    keys, args = removal_call(mapper, batch, items)
    if by_digest:
        return (b"EVALSHA", REMOVE_SHA, len(keys), *keys, *args)
    return (b"EVAL", REMOVE, len(keys), *keys, *args)


def removal_calls(keys: list[bytes], args: list[Any]) -> tuple[Command, Command]:
    """:data:`REMOVE` with :func:`removal_call`'s keys and arguments, by digest and whole
    (a sweeper sends the second when the server does not know the script yet)."""
    return (
        (b"EVALSHA", REMOVE_SHA, len(keys), *keys, *args),
        (b"EVAL", REMOVE, len(keys), *keys, *args),
    )


def parse_removal(reply: Any) -> Removal:
    """:data:`REMOVE`'s reply as a :class:`Removal`."""
    first, *skipped = reply
    if int(first) < 0:
        return Removal(0, (), marker_changed=True)
    return Removal(int(first), tuple(bytes(s).decode() for s in skipped))


#: Commands whose every argument is a key; the others the emitter sends have one key,
#: first.
_ALL_KEYS = frozenset({b"DEL", b"UNLINK"})
_ONE_KEY = frozenset({b"ZREM", b"SREM", b"HDEL", b"HSET", b"INCR", b"ZADD", b"SADD"})


def _ops(command: Command) -> list[tuple[bytes, list[bytes], list[Any]]]:
    """One emitted command as :data:`REMOVE`'s operations (name, keys, arguments):
    a release script becomes one conditional ``HDEL`` per value."""
    name = command[0]
    if name == b"EVAL" and command[1] in (emit.RELEASE_OWNED, RELEASE_BUILT):
        n = int(command[2])
        stripes, rest = command[3 : 3 + n], command[3 + n :]
        if command[1] is RELEASE_BUILT:  # one build stripe: value, id
            return [(RELEASE_OP, [stripes[0]], [rest[0], rest[1]])]
        return [
            (RELEASE_OP, [stripe], [rest[2 * i], rest[2 * i + 1]])
            for i, stripe in enumerate(stripes)
        ]
    if name in _ALL_KEYS:
        return [(name, list(command[1:]), [])]
    if name in _ONE_KEY:
        return [(name, [command[1]], list(command[2:]))]
    # A command the emitter learned since: the script must learn it too.
    raise NotImplementedError(f"a sweep cannot run {name!r} inside its script")


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    if isinstance(reply, dict):
        return list(reply.items())
    items = iter(reply)
    return list(zip(items, items, strict=True))


def _expiring(mapper: Mapper) -> None:
    if not mapper.expiring:
        raise InvalidRequestError(
            f"{mapper.class_.__name__} is not an expiring model (registry.mapped(ttl=...) "
            "or expiring=True): it has nothing to sweep"
        )


__all__ = [
    "NOW",
    "READ",
    "READ_SHA",
    "RELEASE_OP",
    "REMOVE",
    "REMOVE_SHA",
    "Batch",
    "Expired",
    "Removal",
    "batch_or_none",
    "expired_ids",
    "is_removal",
    "now_command",
    "parse_batch",
    "parse_removal",
    "read_call",
    "read_command",
    "removal",
    "removal_call",
    "removal_calls",
    "removal_command",
    "with_removals",
]

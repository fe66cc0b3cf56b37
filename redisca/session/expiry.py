"""Logical expiry: the scripts and helpers that read and write ``H#exp``.

An entity of an expiring model (``registry.mapped(ttl=...)`` or ``expiring=True``)
whose instant in ``H#exp`` is at or before the server's clock is *expired*: every
reader treats it as missing from that instant, while its hash and index entries stay
until a sweep (or an insert reusing its id, or a delete) removes them, since their
values are what finds the index entries to remove. So nothing uses Redis's own
``EXPIRE``, and every instant is taken and compared on the server: the clients' clocks
never count. Models that are not expiring never reach this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import DecodeError
from ..mapping.keys import EXISTS_FIELD
from . import routing
from .plan import CLEAR, Command

#: Read-only: the server's clock and the instants of some ids, for a load or a commit's
#: read step to tell which are expired. KEYS: ``H#exp``; ARGV: the ids. Returns the
#: clock (ms since the epoch), then each id's instant (``nil`` where it has none).
READ = b"""\
local t = redis.call('TIME')
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
for i = 1, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  out[i + 1] = score and tonumber(score) or false
end
return out
"""

#: Inside a commit's ``MULTI``: each id expires its time to live after the server's
#: clock. KEYS: ``H#exp``; ARGV: pairs of time to live (ms) and id. Returns the
#: instants written, so the session learns them without another round trip.
WRITE = b"""\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #ARGV, 2 do
  local at = now + tonumber(ARGV[i])
  redis.call('ZADD', KEYS[1], at, ARGV[i + 1])
  out[#out + 1] = at
end
return out
"""

#: ``emit.GUARDED_WRITE`` for an expiring model's plain updates: an entity expired at
#: ``EXEC`` counts as gone (its write is skipped, as for one deleted meanwhile).
#: KEYS: ``H#exp``, then the entities; ARGV: their ids, then per entity in order the
#: number of field/value pairs, the number of fields to remove, the pairs, the fields.
#: Returns the positions (from 1, among the entities) of those gone.
GUARDED_WRITE = (
    b"""\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = {}
local a = #KEYS
for k = 2, #KEYS do
  local key = KEYS[k]
  local n, r = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local at = redis.call('ZSCORE', KEYS[1], ARGV[k - 1])
  if redis.call('EXISTS', key) == 0 or (at and tonumber(at) <= now) then
    gone[#gone + 1] = k - 1
  else
    if n > 0 then redis.call('HSET', key, unpack(ARGV, a, a + 2 * n - 1)) end
    if r > 0 then
      redis.call('HDEL', key, unpack(ARGV, a + 2 * n, a + 2 * n + r - 1))
      if redis.call('EXISTS', key) == 0 then redis.call('HSET', key, '%s', '') end
    end
  end
  a = a + 2 * n + r
end
return gone
"""
    % EXISTS_FIELD
)

#: Inside a commit's ``MULTI``, after :data:`WRITE` and every removal of an instant: the
#: equality index entries of an expiring model (sorted sets, see
#: ``MappedField.scored``) written, or rescored, with each entity's instant as
#: ``H#exp`` holds it then (``+inf``: none), so a query counts a value's live ids with
#: one ``ZCOUNT``. One ``ZMSCORE`` and one ``ZADD`` per 512 ids. KEYS: ``H#exp``, then
#: the index keys; ARGV: per index key in order, the number of ids, then the ids.
SCORED_ADD = b"""\
local a = 1
for k = 2, #KEYS do
  local n = tonumber(ARGV[a])
  a = a + 1
  for i = a, a + n - 1, 512 do
    local j = math.min(a + n - 1, i + 511)
    local s = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, i, j))
    local args = {}
    for x = i, j do
      args[#args + 1] = s[x - i + 1] or '+inf'
      args[#args + 1] = ARGV[x]
    end
    redis.call('ZADD', KEYS[k], unpack(args))
  end
  a = a + n
end
"""

#: A referrer index's members without the expired ones (a commit deleting their
#: target reads it: an expired referrer refers to nothing, so it never stops the
#: delete, nor is it nulled). KEYS: the index, the referrer model's ``H#exp``. A
#: ``Reference``'s index of a model of ``scored_indexes=True`` is scored by the
#: instants (one ``ZRANGEBYSCORE``); a set (the default layout, and a ``References``
#: member index) has its ids each probed in ``H#exp``.
LIVE_MEMBERS = b"""\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('TYPE', KEYS[1])['ok'] == 'zset' then
  return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now), '+inf')
end
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local at = redis.call('ZSCORE', KEYS[2], id)
  if not at or tonumber(at) > now then out[#out + 1] = id end
end
return out
"""

#: Where a loaded hash dict carries the entity's expiry instant (ms): hash field names
#: hold no ``#``, so no hash field can be taken for it (as ``loading.MEMBERS``).
INSTANT = b"#exp"


def read_command(key: bytes, ids: Sequence[str]) -> Command:
    """The :data:`READ` of ``ids``' instants in ``key`` (a model's ``H#exp``)."""
    return (b"EVAL", READ, 1, key, *ids)


def live_members(key: bytes, expiry: bytes) -> Command:
    """:data:`LIVE_MEMBERS` of the referrer index set ``key``."""
    return (b"EVAL", LIVE_MEMBERS, 2, key, expiry)


def instants(reply: Any, key: bytes, count: int) -> list[int | None]:
    """:data:`READ`'s reply as the instants of its ids, ``0`` where expired (at or before
    the server's clock) and ``None`` where none is set."""
    if isinstance(reply, Exception) or not isinstance(reply, list) or len(reply) != count + 1:
        name = key.decode(errors="replace")
        if isinstance(reply, Exception):
            routing.check(reply, name)
        raise DecodeError(f"{name} does not hold expiry instants: {reply!r}", key=name)
    now = int(reply[0])
    return [None if at is None else (0 if int(at) <= now else int(at)) for at in reply[1:]]


def written(commands: list[Command], replies: list[Any]) -> dict[tuple[bytes, str], int]:
    """The instants a commit's :data:`WRITE` calls set, by (``H#exp``, id)."""
    found: dict[tuple[bytes, str], int] = {}
    for command, reply in zip(commands, replies, strict=False):
        if command[0] == b"EVAL" and command[1] is WRITE and isinstance(reply, list):
            ids = command[5::2]
            for ident, at in zip(ids, reply, strict=False):
                found[(command[3], ident)] = int(at)
    return found


__all__ = [
    "CLEAR",
    "GUARDED_WRITE",
    "INSTANT",
    "LIVE_MEMBERS",
    "READ",
    "SCORED_ADD",
    "WRITE",
    "instants",
    "live_members",
    "read_command",
    "written",
]

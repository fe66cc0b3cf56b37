"""The query engine: one Lua script answers a query in one atomic step.

It reads the indexes in place (no scratch keys) and chooses, from counts that
cost O(1) or O(log N), between two ways to find a page:

(a) walk the ordering index (a field's range index, or ``H#all`` for id order on
    a model without one)
    in order, in batches, probing every other condition for each id, until
    offset + limit ids matched;
(b) fetch the smallest candidate set (an equality set, the owner of a unique
    value, a score window of another range index), probe the other conditions,
    sort the survivors by their rank in the ordering index, slice.

(b) runs at once when a walk is expected to read more than m ids (matches lie
about window / m apart); otherwise (a) runs with a budget of m ids and hands over
to (b) when it runs out, so a page costs O(min(page / selectivity, m log m)) for
a smallest candidate set of m, and at most about 2m whatever the data. Positions are ranks of the
ordering index, so the order is always (score, id) and descending is its exact
reverse. For ``load`` it returns the page's hashes read in the same step, so no
loaded entity contradicts the filter that found it.

A query with a unique value among its conditions runs :data:`LOOKUP`, a short script of
its own. Another shape is answered at the top of this one, before the engine's functions
are built (building them costs Redis 7.0 about 5 µs a run): SLICE, a window of the
ordering index and nothing else, with an offset of at most :data:`SLICE_OFFSET` (one
``ZRANGEBYSCORE … LIMIT`` instead of ZCARD, two ZCOUNTs and a ZRANGE). It returns what
the engine returns.

A model whose entities may expire runs variants of the three scripts (:data:`SCRIPT_X`,
:data:`UNION_X`, :data:`LOOKUP_X`, made from them by replacing pieces, so every other
model's scripts stay byte for byte what they were): ``H#exp`` is their last key, and an
id whose instant there is <= the server's now (``TIME``) matches nothing and counts for
nothing, at one probe per id that matches the conditions (no SLICE shortcut); a count
subtracts expired ids where they are fewer than the candidates.

Every query replies with the number of index entries it read (``work``), which
the tests bound. The script only reads; it is sent with ``EVALSHA`` and, when
the server does not know it yet, once with ``EVAL``.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from typing import Any

from redis.exceptions import NoScriptError

from ..errors import OperationalError, QueryError
from . import executor, routing
from .io import Steps
from .plan import Command
from .querycompile import ScriptCall

#: Ids walked per ZRANGE at least (a selective filter needs many per match).
MIN_BATCH = 32
#: And at most, so one step never copies a large part of an index at once.
MAX_BATCH = 512

#: The deepest offset the SLICE shape skips with ``ZRANGEBYSCORE ... LIMIT`` (which
#: walks the skipped entries); deeper ones find their first rank with ``ZCOUNT``.
SLICE_OFFSET = 64

#: Replies the script raises for a cursor whose id is in no index.
AFTER_MISSING = "REDISCA-AFTER"

#: A score as Redis writes it (``inf``, ``-inf`` or a number) as a Lua number: both
#: scripts read scores and window bounds with it.
_NUM = b"""
local function num(s)
  if s == 'inf' or s == '+inf' then return math.huge end
  if s == '-inf' then return -math.huge end
  return tonumber(s)
end
"""

SCRIPT = (
    b"""
-- redisca query engine (see redisca/session/queryscript.py).
-- KEYS: [1] ordering zset, then each term's keys.
-- ARGV: mode ('ids', 'load', 'count'; 'sids', 'sload': with scores), offset,
--       limit (-1: none), desc (0/1),
--       byscore (1: the ordering zset is a range index; 0: H#all, every score 0),
--       entity key prefix,
--       window of the ordering zset: restricted (0/1), low, low excl, high, high excl,
--       cursor: kind ('' none, 'i' id only, 's' score and id), score, id,
--       number of terms, then each term: kind and its arguments.

-- SLICE, answered before anything else is built (each run of the script pays for every
-- closure and table it makes: about 5 us of Redis 7.0's time): the ordering range index,
-- in a window or whole (-inf to +inf: missing values last), and no other term is one
-- ZRANGEBYSCORE, which steps over the offset's entries one by one (a deep offset goes by
-- rank below). It gives what the engine gives, work included.
if ARGV[12] == '' and ARGV[15] == '0' and ARGV[5] == '1'
    and ARGV[1] ~= 'count' and tonumber(ARGV[2]) <= """
    + str(SLICE_OFFSET).encode()
    + b""" then
  local mode, offset, limit = ARGV[1], ARGV[2], ARGV[3]
  local scored = string.sub(mode, 1, 1) == 's'
  if scored then mode = string.sub(mode, 2) end
  local lo, hi = '-inf', '+inf'
  if ARGV[7] == '1' then
    lo = (ARGV[9] == '1' and '(' or '') .. ARGV[8]
    hi = (ARGV[11] == '1' and '(' or '') .. ARGV[10]
  end
  local ids, scores = {}, {}
  if limit ~= '0' then
    local cmd, a, b = 'ZRANGEBYSCORE', lo, hi
    if ARGV[4] == '1' then cmd, a, b = 'ZREVRANGEBYSCORE', hi, lo end
    local found
    if scored then
      found = redis.call(cmd, KEYS[1], a, b, 'WITHSCORES', 'LIMIT', offset, limit)
    else
      found = redis.call(cmd, KEYS[1], a, b, 'LIMIT', offset, limit)
    end
    if scored then  -- id, score, id, score...
      for i = 1, #found, 2 do
        ids[#ids + 1] = found[i]
        scores[#scores + 1] = found[i + 1]
      end
    else
      ids = found
    end
  end
  local hashes = {}
  if mode == 'load' then
    for i, id in ipairs(ids) do hashes[i] = redis.pcall('HGETALL', ARGV[6] .. id) end
  end
  if scored then return {ids, hashes, #ids, scores} end
  return {ids, hashes, #ids}
end

local MIN_BATCH, MAX_BATCH = """
    + str(MIN_BATCH).encode()
    + b", "
    + str(MAX_BATCH).encode()
    + b"""
local work = 0
local ki, ai = 2, 1
local function key() local k = KEYS[ki]; ki = ki + 1; return k end
local function arg() local a = ARGV[ai]; ai = ai + 1; return a end

"""
    + _NUM
    + b"""

-- Byte order (Lua's '<' on strings follows the server's locale).
local function lt(a, b)
  if a == b then return false end
  local n = math.min(#a, #b)
  local i = 1
  while i + 7 <= n and string.sub(a, i, i + 7) == string.sub(b, i, i + 7) do i = i + 8 end
  while i <= n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
    i = i + 1
  end
  return #a < #b
end

local function window()
  local lo, lx, hi, hx = arg(), arg() == '1', arg(), arg() == '1'
  return {lo = num(lo), lx = lx, hi = num(hi), hx = hx, lostr = lo,
          loarg = (lx and '(' or '') .. lo, hiarg = (hx and '(' or '') .. hi}
end

local function inside(w, s)
  if s < w.lo or (s == w.lo and w.lx) then return false end
  if s > w.hi or (s == w.hi and w.hx) then return false end
  return true
end

-- Each kind of term: how to read it, its size, its ids, and a test of one id.
local kinds = {}
kinds.e = {  -- an equality index set
  parse = function(t) t.key = key() end,
  size = function(t) return redis.call('SCARD', t.key) end,
  fetch = function(t) return redis.call('SMEMBERS', t.key) end,
  probe = function(t, id) return redis.call('SISMEMBER', t.key, id) == 1 end,
}
kinds.u = {  -- a unique value: its stripe hash and the value
  parse = function(t) t.key = key(); t.value = arg() end,
  size = function(t)
    t.owner = redis.call('HGET', t.key, t.value)
    if t.owner then return 1 end
    return 0
  end,
  fetch = function(t) return {t.owner} end,
  probe = function(t, id) return t.owner == id end,
}
kinds.o = {  -- one id the client names (a unique value's owner on a sharded model)
  parse = function(t) t.owner = arg() end,
  size = function(t) return 1 end,
  fetch = function(t) return {t.owner} end,
  probe = function(t, id) return t.owner == id end,
}
kinds.r = {  -- a score window of a range index
  parse = function(t) t.key = key(); t.w = window() end,
  size = function(t) return redis.call('ZCOUNT', t.key, t.w.loarg, t.w.hiarg) end,
  fetch = function(t) return redis.call('ZRANGEBYSCORE', t.key, t.w.loarg, t.w.hiarg) end,
  probe = function(t, id)
    local s = redis.call('ZSCORE', t.key, id)
    return s and inside(t.w, num(s))
  end,
}

local okey = KEYS[1]
local mode, offset, limit = arg(), tonumber(arg()), tonumber(arg())
-- 'sids', 'sload': the ids' scores too (a sharded model's shards are merged by them)
local scored = string.sub(mode, 1, 1) == 's'
if scored then mode = string.sub(mode, 2) end
local desc, byscore, prefix = arg() == '1', arg() == '1', arg()
local restricted = arg() == '1'
local ow = window()
local ckind, cscore, cid = arg(), arg(), arg()
local terms = {}
for i = 1, tonumber(arg()) do
  local t = {kind = arg()}
  kinds[t.kind].parse(t)
  terms[i] = t
end

local function reply(ids)
  if mode == 'count' then return {ids, work} end
  local hashes = {}
  if mode == 'load' then
    -- pcall: a key that is no hash fails as a DecodeError naming it, not the query
    for i, id in ipairs(ids) do hashes[i] = redis.pcall('HGETALL', prefix .. id) end
  end
  if scored then
    local scores = {}
    for i, id in ipairs(ids) do scores[i] = redis.call('ZSCORE', okey, id) end
    return {ids, hashes, work, scores}
  end
  return {ids, hashes, work}
end
local function empty()
  if mode == 'count' then return reply(0) end
  return reply({})
end

if limit == 0 then return empty() end
local need = nil
if limit >= 0 then need = offset + limit end

-- The ranks [first, last] of the ordering zset that the query may return.
local first, last = 0, redis.call('ZCARD', okey) - 1
if restricted then
  first = redis.call('ZCOUNT', okey, '-inf', (ow.lx and '' or '(') .. ow.lostr)
  last = redis.call('ZCOUNT', okey, '-inf', ow.hiarg) - 1
end

-- Members below (score, id) in the ordering zset, and whether it is one of them.
local function position(score, id)
  local s = redis.call('ZSCORE', okey, id)
  if s and num(s) == num(score) then return redis.call('ZRANK', okey, id), true end
  local lo = redis.call('ZCOUNT', okey, '-inf', '(' .. score)
  local hi = redis.call('ZCOUNT', okey, '-inf', score)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local m = redis.call('ZRANGE', okey, mid, mid)[1]
    work = work + 1
    if lt(m, id) then lo = mid + 1 else hi = mid end
  end
  return lo, false
end

local cnum = nil
if ckind ~= '' then
  if ckind == 'i' then
    cscore = redis.call('ZSCORE', okey, cid)
    if not cscore then return redis.error_reply('"""
    + AFTER_MISSING.encode()
    + b"""') end
  end
  cnum = num(cscore)
  local below, member = position(cscore, cid)
  if desc then
    last = math.min(last, below - 1)
  else
    if member then below = below + 1 end
    first = math.max(first, below)
  end
end
if first > last then return empty() end
local wsize = last - first + 1

-- The terms' sizes: the smallest set drives strategy (b) and bounds (a).
local m, best = nil, nil
for _, t in ipairs(terms) do
  t.n = kinds[t.kind].size(t)
  if m == nil or t.n < m then m, best = t.n, t end
end
if m == 0 then return empty() end
table.sort(terms, function(x, y) return x.n < y.n end)  -- fail fast: selective first

local function matches(id, skip)
  for _, t in ipairs(terms) do
    if t ~= skip then
      work = work + 1
      if not kinds[t.kind].probe(t, id) then return false end
    end
  end
  return true
end

-- No term: the page is a slice of the ordering zset, read by rank.
if m == nil then
  if mode == 'count' then
    local n = math.max(0, wsize - offset)
    if limit >= 0 then n = math.min(n, limit) end
    return reply(n)
  end
  local size = wsize - offset
  if limit >= 0 then size = math.min(size, limit) end
  if size <= 0 then return empty() end
  local a = first + offset
  if desc then a = last - offset - size + 1 end
  local ids = redis.call('ZRANGE', okey, a, a + size - 1)
  if desc then
    local rev = {}
    for i = #ids, 1, -1 do rev[#rev + 1] = ids[i] end
    ids = rev
  end
  work = work + #ids
  return reply(ids)
end

-- (a) Walk the ordering zset in order, at most `budget` ids; nil when it runs out.
local function walk(budget)
  local matched, out = 0, {}
  local pos, left, spent = first, wsize, 0
  if desc then pos = last end
  while left > 0 do
    local batch = MAX_BATCH
    if need then batch = math.max(MIN_BATCH, math.min(MAX_BATCH, 2 * (need - matched))) end
    batch = math.min(batch, left)
    if budget then
      if spent >= budget then return nil end
      batch = math.min(batch, budget - spent)
    end
    local ids, a, b, step
    if desc then
      ids = redis.call('ZRANGE', okey, pos - batch + 1, pos)
      pos = pos - batch
      a, b, step = #ids, 1, -1
    else
      ids = redis.call('ZRANGE', okey, pos, pos + batch - 1)
      pos = pos + batch
      a, b, step = 1, #ids, 1
    end
    work = work + #ids
    spent, left = spent + batch, left - batch
    for i = a, b, step do
      local id = ids[i]
      if matches(id, nil) then
        matched = matched + 1
        if matched > offset and mode ~= 'count' then out[#out + 1] = id end
        if need and matched >= need then return out, matched end
      end
    end
  end
  return out, matched
end

-- (b) The smallest set's ids that pass the other terms and lie in the window, after
-- the cursor, sorted: by score in a field's index (ZSCORE, O(1); ties by id), by rank
-- in H#all (id order). A count with neither window nor cursor needs no position.
local function after_cursor(s, id)
  if ckind == '' then return true end
  if desc then return s < cnum or (s == cnum and lt(id, cid)) end
  return s > cnum or (s == cnum and lt(cid, id))
end
local function gather()
  local ids = kinds[best.kind].fetch(best)
  work = work + #ids
  local bare = mode == 'count' and not restricted and ckind == ''
  local keep, key = {}, {}
  for _, id in ipairs(ids) do
    if matches(id, best) then
      if bare then
        keep[#keep + 1] = id
      elseif byscore then
        local s = redis.call('ZSCORE', okey, id)
        work = work + 1
        if s then
          s = num(s)
          if (not restricted or inside(ow, s)) and after_cursor(s, id) then
            keep[#keep + 1] = id
            key[id] = s
          end
        end
      else
        local r = redis.call('ZRANK', okey, id)
        work = work + 1
        if r and r >= first and r <= last then
          keep[#keep + 1] = id
          key[id] = r
        end
      end
    end
  end
  if mode == 'count' then return keep, #keep end
  -- Sort the distinct keys with Lua's own '<' on numbers (no Lua comparator: several
  -- times faster), then the ids of each key by byte order where several share it.
  local groups, keys = {}, {}
  for _, id in ipairs(keep) do
    local k = key[id]
    local g = groups[k]
    if not g then
      g = {}
      groups[k] = g
      keys[#keys + 1] = k
    end
    g[#g + 1] = id
  end
  table.sort(keys)
  local stop = #keep
  if need then stop = math.min(stop, need) end
  local out, seen = {}, 0
  local from, to, step = 1, #keys, 1
  if desc then from, to, step = #keys, 1, -1 end
  for i = from, to, step do
    local g = groups[keys[i]]
    if #g > 1 then
      if desc then table.sort(g, function(x, y) return lt(y, x) end) else table.sort(g, lt) end
    end
    for _, id in ipairs(g) do
      seen = seen + 1
      if seen > stop then return out, #keep end
      if seen > offset then out[#out + 1] = id end
    end
  end
  return out, #keep
end

-- One term, no window, no cursor: its size is the count.
if mode == 'count' and #terms == 1 and not restricted and ckind == '' then
  local n = math.max(0, m - offset)
  if limit >= 0 then n = math.min(n, limit) end
  return reply(n)
end

local out, matched
-- (b) at once when a walk would expect to read more than m ids: matches lie about
-- wsize / m apart, and the page needs `need` of them.
if m < wsize and (need == nil or need * wsize >= m * m) then
  out, matched = gather()
else
  local budget = nil
  if m < wsize then budget = m end
  out, matched = walk(budget)
  if out == nil then out, matched = gather() end
end
if mode == 'count' then
  local n = math.max(0, matched - offset)
  if limit >= 0 then n = math.min(n, limit) end
  return reply(n)
end
return reply(out)
"""
)
SHA = hashlib.sha1(SCRIPT).hexdigest().encode()


def _part(text: bytes, start: bytes, end: bytes | None) -> bytes:
    """The piece of ``text`` from ``start`` up to ``end`` (each found exactly once)."""
    assert text.count(start) == 1, start
    piece = text[text.index(start) :]
    if end is None:
        return piece
    assert piece.count(end) == 1, end
    return piece[: piece.index(end)]


def _union(script: bytes, title: bytes) -> bytes:
    """The union script built from an engine's ``script`` (see :data:`UNION`)."""
    prelude = _part(script, b"local MIN_BATCH", b"local okey = KEYS[1]")
    parse = _part(script, b"local okey = KEYS[1]", b"local function reply(ids)")
    engine = _part(script, b"if limit == 0 then return empty() end", None)
    return (
        title
        + prelude.replace(b"local ki, ai = 2, 1", b"local ki, ai = 1, 1", 1)
        + b"""
local function branch()
"""
        + parse.replace(b"local okey = KEYS[1]", b"local okey = key()", 1)
        + b"""
-- A branch's page: its ids, in order, and their scores in the ordering index.
local function reply(ids)
  local scores = {}
  for i, id in ipairs(ids) do scores[i] = redis.call('ZSCORE', okey, id) end
  return ids, scores
end
local function empty() return {}, {} end

"""
        + engine
        + b"""end

local mode, offset, limit = arg(), tonumber(arg()), tonumber(arg())
local desc, prefix, nb = arg() == '1', arg(), tonumber(arg())
if limit == 0 then
  if mode == 'count' then return {0, work} end
  return {{}, {}, work}
end
local rows, seen = {}, {}
for _ = 1, nb do
  local ids, scores = branch()
  if ids.err then return ids end  -- an after() id in no index
  for i, id in ipairs(ids) do
    if not seen[id] then
      seen[id] = true
      rows[#rows + 1] = {num(scores[i]), id}
    end
  end
end
if mode == 'count' then
  local n = math.max(0, #rows - offset)
  if limit >= 0 then n = math.min(n, limit) end
  return {n, work}
end
-- (score, id) ascending, or its exact reverse: the order of one branch's pages.
table.sort(rows, function(x, y)
  if x[1] ~= y[1] then
    if desc then return x[1] > y[1] end
    return x[1] < y[1]
  end
  if desc then return lt(y[2], x[2]) end
  return lt(x[2], y[2])
end)
local stop = #rows
if limit >= 0 then stop = math.min(stop, offset + limit) end
local out, hashes = {}, {}
for i = offset + 1, stop do out[#out + 1] = rows[i][2] end
if mode == 'load' then
  for i, id in ipairs(out) do hashes[i] = redis.pcall('HGETALL', prefix .. id) end
end
return {out, hashes, work}
"""
    )


#: The script for an OR of several AND-branches (:func:`~redisca.session.querycompile.
#: compile_union`): the engine above, made a function run once per branch, each branch
#: giving its first ``offset + limit`` ids (all of them for a count) in the query's order
#: with their scores in the shared ordering index; then the union, without duplicates,
#: sorted by (score, id), cut to the page, and the page's hashes read, all in the same
#: atomic step as one branch's query. So a page costs the branches' pages and a count
#: the branches' candidate sets (each branch finds them as it would alone), and nothing
#: is written. KEYS: each branch's keys in turn. ARGV: mode (``ids``, ``load``,
#: ``count``), offset, limit (-1: none), desc, entity key prefix, number of branches,
#: then each branch's arguments as the engine takes them (mode ``ids``, offset 0).
UNION = _union(
    SCRIPT,
    b"-- redisca query engine, OR of several branches (see redisca/session/queryscript.py).\n",
)
UNION_SHA = hashlib.sha1(UNION).hexdigest().encode()

#: The script for a query with a unique value among its conditions (and no cursor):
#: at most one id can match, so it reads the owner, probes the other conditions and
#: the ordering window, and replies as the engine does. The same KEYS and ARGV as
#: :data:`SCRIPT`. Why a second script: on Redis 7.0 the engine's setup (its
#: functions and tables, made on every call) cost a lookup by e-mail about 17 µs of
#: server time, twice what the lookup itself needs.
LOOKUP = (
    b"""
-- redisca query engine, lookup by a unique value (see redisca/session/queryscript.py).
-- KEYS and ARGV as the engine's script reads them (its header), read in the same order.

-- The unique value alone, no window (a find: filter(User.email == e).one()): answered
-- before the general form's functions and tables are made, which cost Redis 7.0 about
-- 2.5 us a run (a quarter of the lookup). The same replies and work as below.
if ARGV[15] == '1' and ARGV[16] == 'u' and ARGV[7] == '0' then
  local mode = ARGV[1]
  local owner = redis.call('HGET', KEYS[2], ARGV[17])
  if not owner then
    if mode == 'count' then return {0, 0} end
    return {{}, {}, 0}
  end
  local n = 0
  if redis.call('ZSCORE', KEYS[1], owner) then n = 1 end
  n = math.max(0, n - tonumber(ARGV[2]))
  local limit = tonumber(ARGV[3])
  if limit >= 0 then n = math.min(n, limit) end
  if mode == 'count' then return {n, 2} end
  if n == 0 then return {{}, {}, 2} end
  local hashes = {}
  if mode == 'load' then hashes[1] = redis.pcall('HGETALL', ARGV[6] .. owner) end
  return {{owner}, hashes, 2}
end

local ai = 1
local function arg() local a = ARGV[ai]; ai = ai + 1; return a end
"""
    + _NUM
    + b"""
local function window() return {num(arg()), arg() == '1', num(arg()), arg() == '1'} end
local function inside(s, w)
  if s < w[1] or (s == w[1] and w[2]) then return false end
  if s > w[3] or (s == w[3] and w[4]) then return false end
  return true
end
local okey = KEYS[1]
local mode, offset, limit = arg(), tonumber(arg()), tonumber(arg())
arg(); arg()  -- desc, byscore: one id has no order
local prefix = arg()
local restricted = arg() == '1'
local ow = window()
arg(); arg(); arg()  -- the cursor: none (a query with one runs the engine's script)
local work, id, ok = 0, nil, true
local probes = {}
local ki = 2
for _ = 1, tonumber(arg()) do
  local kind = arg()
  if kind == 'u' then
    local owner = redis.call('HGET', KEYS[ki], arg())
    if not owner or (id and owner ~= id) then ok = false end
    if ok then id = owner end
  elseif kind == 'e' then
    probes[#probes + 1] = {KEYS[ki]}
  else
    probes[#probes + 1] = {KEYS[ki], window()}
  end
  ki = ki + 1
end
if ok then
  work = 1
  for _, p in ipairs(probes) do
    work = work + 1
    if p[2] == nil then
      ok = redis.call('SISMEMBER', p[1], id) == 1
    else
      local s = redis.call('ZSCORE', p[1], id)
      ok = s and inside(num(s), p[2])
    end
    if not ok then break end
  end
end
if ok then  -- in the ordering index, and in its window if the query has one
  local s = redis.call('ZSCORE', okey, id)
  work = work + 1
  ok = s and (not restricted or inside(num(s), ow))
end
local n = 0
if ok then n = 1 end
n = math.max(0, n - offset)
if limit >= 0 then n = math.min(n, limit) end
if mode == 'count' then return {n, work} end
if n == 0 then return {{}, {}, work} end
local hashes = {}
if mode == 'load' then hashes[1] = redis.pcall('HGETALL', prefix .. id) end
return {{id}, hashes, work}
"""
)
LOOKUP_SHA = hashlib.sha1(LOOKUP).hexdigest().encode()


def _swap(text: bytes, old: bytes, new: bytes) -> bytes:
    """``text`` with its one ``old`` replaced by ``new`` (checked when the module loads,
    so an edit of the engine that moves a piece fails at import, not in a query)."""
    assert text.count(old) == 1, old
    return text.replace(old, new, 1)


def _nodes(script: bytes) -> bytes:
    """The per-node script built from the engine's ``script`` (see :data:`NODES`)."""
    prelude = _part(script, b"local MIN_BATCH", b"local okey = KEYS[1]")
    parse = _part(script, b"local okey = KEYS[1]", b"local function reply(ids)")
    engine = _part(script, b"if limit == 0 then return empty() end", None)
    prelude = _swap(
        prelude,
        b"local function key() local k = KEYS[ki]; ki = ki + 1; return k end",
        b"local K = KEYS  -- the keys of the shard being read: KEYS, or made from them\n"
        b"local function key() local k = K[ki]; ki = ki + 1; return k end",
    )
    prelude = _swap(
        prelude,
        b"local function arg() local a = ARGV[ai]; ai = ai + 1; return a end",
        b"-- Every shard reads the first shard's arguments, its own entity prefix P in\n"
        b"-- place of the one at PAT, and OFF, LIM in place of its offset and limit\n"
        b"-- (PAT - 4, PAT - 3) when they are set (a round of the merge's: see below).\n"
        b"local PAT, P, OFF, LIM = 0, nil, nil, nil\n"
        b"local function arg()\n"
        b"  local a = ARGV[ai]\n"
        b"  if ai == PAT then\n"
        b"    a = P\n"
        b"  elseif OFF and ai == PAT - 4 then\n"
        b"    a = OFF\n"
        b"  elseif OFF and ai == PAT - 3 then\n"
        b"    a = LIM\n"
        b"  end\n"
        b"  ai = ai + 1\n"
        b"  return a\n"
        b"end",
    )
    # Byte order, 8 bytes per two string.byte calls instead of two a byte (ties of a
    # merge compare ids: most of its cost).
    names = ", ".join(f"{{0}}{k}" for k in range(1, 9))
    tests = "".join(
        f"    if a{k} ~= b{k} then\n"
        f"      if a{k} == nil or b{k} == nil then return #a < #b end\n"
        f"      return a{k} < b{k}\n"
        f"    end\n"
        for k in range(1, 9)
    )
    prelude = _swap(
        prelude,
        b"""  while i <= n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
    i = i + 1
  end
  return #a < #b
""",
        (
            f"  while i <= n do\n"
            f"    local {names.format('a')} = string.byte(a, i, i + 7)\n"
            f"    local {names.format('b')} = string.byte(b, i, i + 7)\n"
            + tests
            + "    i = i + 8\n  end\n  return #a < #b\n"
        ).encode(),
    )
    # No term: the slice by rank read with its scores (one command, not a ZMSCORE more).
    engine = _swap(
        engine,
        b"""  local ids = redis.call('ZRANGE', okey, a, a + size - 1)
  if desc then
    local rev = {}
    for i = #ids, 1, -1 do rev[#rev + 1] = ids[i] end
    ids = rev
  end
  work = work + #ids
  return reply(ids)
""",
        b"""  local found = redis.call('ZRANGE', okey, a, a + size - 1, 'WITHSCORES')
  local ids, raw, nums = {}, {}, {}
  local from, to, step = 1, #found - 1, 2
  if desc then from, to, step = #found - 1, 1, -2 end
  for i = from, to, step do
    local n = #ids + 1
    ids[n] = found[i]
    raw[n] = byscore and found[i + 1] or '0'
    nums[n] = num(raw[n])
  end
  work = work + #ids
  return ids, raw, nums, prefix
""",
    )
    return (
        b"-- redisca query engine, the shards one node serves "
        b"(see redisca/session/queryscript.py).\n"
        + prelude
        + b"""
-- A window's entries from rank `from` on, at most `size` of them (a negative size: all),
-- with their scores: by rank when the window is the whole index (the same entries,
-- fewer arguments to convert: about a microsecond a shard on Redis 7.0).
local function slice(okey, desc, lo, hi, from, size)
  if tonumber(size) == 0 then return {} end
  if lo == '-inf' and hi == '+inf' then
    local last = -1
    if tonumber(size) > 0 then last = from + size - 1 end
    return redis.call(desc and 'ZREVRANGE' or 'ZRANGE', okey, from, last, 'WITHSCORES')
  end
  if desc then
    return redis.call('ZREVRANGEBYSCORE', okey, hi, lo, 'WITHSCORES', 'LIMIT', from, size)
  end
  return redis.call('ZRANGEBYSCORE', okey, lo, hi, 'WITHSCORES', 'LIMIT', from, size)
end

-- One shard's first ids in its order, their scores (as Redis writes them, and as
-- numbers) and its entity key prefix; a count for mode 'count'.
local function branch()
  -- SLICE, as the engine's script answers it: a window of the ordering range index (or
  -- all of it), no term, no cursor: one ZRANGEBYSCORE, before any of the engine's
  -- functions and tables are made (their cost, paid per shard, is most of a page's).
  local b = ai
  local o1, o2 = ARGV[b + 1], ARGV[b + 2]  -- the shard's offset and limit
  if OFF then o1, o2 = OFF, LIM end
  if ARGV[b + 11] == '' and ARGV[b + 14] == '0' and ARGV[b + 4] == '1'
      and ARGV[b] ~= 'count' then
    local lo, hi = '-inf', '+inf'
    if ARGV[b + 6] == '1' then
      lo = (ARGV[b + 8] == '1' and '(' or '') .. ARGV[b + 7]
      hi = (ARGV[b + 10] == '1' and '(' or '') .. ARGV[b + 9]
    end
    local okey, prefix = K[ki], P
    ai, ki = b + 15, ki + 1
    local ids, raw, nums = {}, {}, {}
    if o2 == '0' then return ids, raw, nums, prefix end
    local sdesc = ARGV[b + 3] == '1'
    local found = slice(okey, sdesc, lo, hi, o1, o2)
    for i = 1, #found - 1, 2 do
      local n = #ids + 1
      ids[n], raw[n], nums[n] = found[i], found[i + 1], num(found[i + 1])
    end
    work = work + #ids
    return ids, raw, nums, prefix
  end
  -- A keyset page (a cursor's score and id), no term, no window. Mostly one command:
  -- the entries from the cursor's score on, by score, with room for SLACK ties of that
  -- score that the cursor's id is past (dropped here, byte order). More such ties than
  -- that: the cursor placed as the engine's position() places it (its rank, or a
  -- binary search among its score's ties), then one ZRANGE WITHSCORES by rank.
  if ARGV[b + 11] == 's' and ARGV[b + 14] == '0' and ARGV[b + 4] == '1'
      and ARGV[b + 6] == '0' and ARGV[b] ~= 'count' then
    local okey, prefix = K[ki], P
    local offset, limit = tonumber(o1), tonumber(o2)
    local desc, cscore, cid = ARGV[b + 3] == '1', ARGV[b + 12], ARGV[b + 13]
    ai, ki = b + 15, ki + 1
    local ids, raw, nums = {}, {}, {}
    if limit == 0 then return ids, raw, nums, prefix end
    if limit > 0 then
      local SLACK, want, cnum = 8, offset + limit, num(cscore)
      local from, far = cscore, '+inf'
      if cnum == math.huge then from = '+inf' elseif cnum == -math.huge then from = '-inf' end
      local cmd = 'ZRANGEBYSCORE'
      if desc then cmd, far = 'ZREVRANGEBYSCORE', '-inf' end
      local found = redis.call(cmd, okey, from, far, 'WITHSCORES', 'LIMIT', 0, want + SLACK)
      local n, past = #found / 2, 0
      while past < n do
        local m, sc = found[2 * past + 1], num(found[2 * past + 2])
        if sc ~= cnum then break end
        if desc then
          if lt(m, cid) then break end
        elseif lt(cid, m) then
          break
        end
        past = past + 1
      end
      if past <= SLACK or n < want + SLACK then
        local stop = math.min(n, past + want)
        for i = past + offset + 1, stop do
          local k = #ids + 1
          ids[k], raw[k], nums[k] = found[2 * i - 1], found[2 * i], num(found[2 * i])
        end
        work = work + #ids
        return ids, raw, nums, prefix
      end
      work = work + n
    end
    local below, member
    local s = redis.call('ZSCORE', okey, cid)
    if s and num(s) == num(cscore) then
      below, member = redis.call('ZRANK', okey, cid), true
    else
      local lo = redis.call('ZCOUNT', okey, '-inf', '(' .. cscore)
      local hi = redis.call('ZCOUNT', okey, '-inf', cscore)
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        local m = redis.call('ZRANGE', okey, mid, mid)[1]
        work = work + 1
        if lt(m, cid) then lo = mid + 1 else hi = mid end
      end
      below, member = lo, false
    end
    local found = {}
    if desc then
      local top = below - 1 - offset
      if top >= 0 then
        local bottom = 0
        if limit > 0 then bottom = math.max(0, top - limit + 1) end
        found = redis.call('ZRANGE', okey, bottom, top, 'WITHSCORES')
      end
    else
      if member then below = below + 1 end
      local a = below + offset
      local z = -1
      if limit > 0 then z = a + limit - 1 end
      found = redis.call('ZRANGE', okey, a, z, 'WITHSCORES')
    end
    local from, to, step = 1, #found - 1, 2
    if desc then from, to, step = #found - 1, 1, -2 end
    for i = from, to, step do
      local n = #ids + 1
      ids[n], raw[n], nums[n] = found[i], found[i + 1], num(found[i + 1])
    end
    work = work + #ids
    return ids, raw, nums, prefix
  end
"""
        + parse.replace(b"local okey = KEYS[1]", b"local okey = key()", 1)
        + b"""
local function reply(ids)
  if mode == 'count' then return ids end
  local raw, nums = {}, {}
  for a = 1, #ids, 512 do  -- one ZMSCORE per 512 ids, not a ZSCORE each
    local b = math.min(#ids, a + 511)
    local s = {}
    if byscore then s = redis.call('ZMSCORE', okey, unpack(ids, a, b)) end
    for i = a, b do
      raw[i] = s[i - a + 1] or '0'
      nums[i] = num(raw[i])
    end
  end
  return ids, raw, nums, prefix
end
local function empty()
  if mode == 'count' then return reply(0) end
  return reply({})
end

"""
        + engine
        + b"""end

local mode, skip, take = arg(), tonumber(arg()), tonumber(arg())
local desc, ns, nk, head = arg() == '1', tonumber(arg()), tonumber(arg()), tonumber(arg())
local tags = {}
for s = 2, ns do tags[s] = arg() end
local first = ai  -- the first shard's engine arguments, which every shard reads
PAT = first + 5
local prefix1 = ARGV[PAT]
local total, runs = 0, {}
-- Make the shard s the one branch() reads: its keys, its entity prefix (and, for an
-- expiring model, its H#exp).
local function enter(s)
  if s > 1 then  -- undeclared: the client sends only shards whose slot this node serves
    local tag = tags[s]
    K = {}
    for j = 1, nk do K[j] = tag .. string.sub(KEYS[j], head + 1) end
    P = tag .. string.sub(prefix1, head + 1)
  else
    K, P = KEYS, prefix1
  end
  ki, ai = 1, first
end
-- A page (a limit, several shards) whose shards answer with a window or a keyset page
-- (no term): each shard gives its first k of the page's `stop` rows, k = stop / shards
-- + 3, not all `stop`; the merge asks a shard for more only when the page uses up the
-- k it gave (a page of 10 over 16 shards: 48 rows read, not 160, and a shard asked
-- again in about one page of three). A shard's answer with a term costs more to start
-- again than it saves: it gives `stop` rows at once.
local stop = math.huge
if take >= 0 then stop = skip + take end
local k = stop
if take > 0 and ns > 1 and mode ~= 'count' and ARGV[first + 14] == '0'
    and ARGV[first + 4] == '1' and (ARGV[first + 11] == ''
    or (ARGV[first + 11] == 's' and ARGV[first + 6] == '0')) then
  k = math.floor(stop / ns) + 3
end
if k < stop then OFF, LIM = '0', tostring(k) end
for s = 1, ns do
  enter(s)
  local ids, raw, nums, prefix = branch()
  if type(ids) == 'table' and ids.err then return ids end  -- an after() id in no index
  if mode == 'count' then
    total = total + ids
  elseif #ids > 0 then
    runs[#runs + 1] = {s = s, open = k < stop and #ids >= k, ids = ids, raw = raw, nums = nums,
      prefix = prefix, at = 1}
  end
end
if mode == 'count' then return {total, work} end

-- The run whose next row comes first: by (score, id), or its exact reverse; nil for
-- none (a run that is nil or used up loses).
local function ahead(a, b)
  if a == nil or a.at > #a.ids then return b end
  if b == nil or b.at > #b.ids then return a end
  local x, y = a.nums[a.at], b.nums[b.at]
  if x ~= y then
    if desc == (x > y) then return a end
    return b
  end
  if desc then
    if lt(b.ids[b.at], a.ids[a.at]) then return a end
  elseif lt(a.ids[a.at], b.ids[b.at]) then
    return a
  end
  return b
end
-- The k-way merge, a tournament: leaves W..2W-1 hold the runs, each inner node the
-- winner of its two children, so taking a row and replaying its leaf's path to the
-- root costs log2(P) comparisons (a comparison of tied scores compares ids byte by
-- byte, in Lua: the merge's main cost). A first round's run that the page uses up while
-- it may hold more is asked for the rest of the page there and then, before its path is
-- replayed: its leaf is only on that path.
local W = 1
while W < #runs do W = W * 2 end
local tree = {}
local function at(node)
  if node >= W then return runs[node - W + 1] end
  return tree[node]
end
for node = W - 1, 1, -1 do tree[node] = ahead(at(2 * node), at(2 * node + 1)) end
if W == 1 then tree[1] = runs[1] end
local leaf = {}
for r, run in ipairs(runs) do leaf[run] = W + r - 1 end
local ids, scores, prefixes, n = {}, {}, {}, 0
while n < stop do
  local run = tree[1]
  if run == nil or run.at > #run.ids then break end
  n = n + 1
  if n > skip then
    ids[#ids + 1] = run.ids[run.at]
    scores[#scores + 1] = run.raw[run.at]
    prefixes[#prefixes + 1] = run.prefix
  end
  run.at = run.at + 1
  if run.open and run.at > #run.ids and n < stop then
    run.open = false
    enter(run.s)
    OFF, LIM = tostring(#run.ids), tostring(stop - n)
    local more, raw, nums = branch()
    if type(more) == 'table' and more.err then return more end
    for i = 1, #more do
      local m = #run.ids + 1
      run.ids[m], run.raw[m], run.nums[m] = more[i], raw[i], nums[i]
    end
  end
  local node = math.floor(leaf[run] / 2)
  while node >= 1 do
    tree[node] = ahead(at(2 * node), at(2 * node + 1))
    node = math.floor(node / 2)
  end
end
local hashes = {}
if mode == 'load' then
  for i, id in ipairs(ids) do hashes[i] = redis.pcall('HGETALL', prefixes[i] .. id) end
end
return {ids, hashes, work, scores}
"""
    )


#: The script for the shards of a sharded model that one node serves (all of them on one
#: server): the engine above, made a function run once per shard, each shard giving its
#: first ``skip + take`` ids in the query's order with their scores in its ordering index
#: (a count: its count); then a k-way merge of the shards' runs by (score, id), cut to
#: ``[skip, skip + take)``, and only those ids' hashes read, all in one atomic step of
#: the node. A page with no term reads fewer: each shard's first ``(skip + take) //
#: shards + 3`` ids, and the rest of the page from a shard only when the merge uses up
#: what it gave (most of a page's cost on a node is reading and merging rows). Counts
#: are summed. So a page of 16 shards costs one script run per node, not per shard.
#: KEYS: the first shard's keys (they route the call). ARGV: mode (``ids``, ``load``,
#: ``count``), skip, take (-1: none), desc, number of shards, keys per shard, the length
#: of the first shard's hash tag, each other shard's hash tag, then the first shard's
#: engine arguments. The shards' calls differ only in the tag that
#: heads every key and the entity prefix (``mapping/keys.py`` builds them all so), so
#: each other shard's are made here from the first's: a shard costs the call its tag,
#: not its keys and arguments. The other shards' keys are not declared: Redis 7.0
#: refuses declared keys of several slots in one call (allow-cross-slot-keys or not),
#: and a script may read undeclared keys of slots its node serves (6.2, 7.0, Valkey).
NODES = _nodes(SCRIPT)
NODES_SHA = hashlib.sha1(NODES).hexdigest().encode()


# -- Expiring models -------------------------------------------------------------------
#
# A model mapped with ``ttl=``/``expiring=True`` runs variants of the three scripts: the
# same KEYS and ARGV plus one last key, H#exp (expiry instants in ms by the server's
# clock). An id whose instant is <= the server's now (TIME, read once per run) is
# absent: it matches no condition and counts for nothing. The variants are made from the
# scripts above by replacing pieces, so the other models' scripts stay as they were,
# byte for byte (the same digest, commands and cost).

#: The server's now in ms, and whether an id is live (one ZSCORE of H#exp, counted in
#: ``work``). Put where the engine's helpers are made (once per run, union included).
_LIVE = b"""-- Expiry: KEYS' last is H#exp; an id whose instant is <= now (ms) is absent.
local xkey = KEYS[#KEYS]
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local nowarg = string.format('%d', now)
-- Expired ids not yet swept: none (one ZCOUNT, O(log N)) and every probe is skipped.
local nexp = redis.call('ZCOUNT', xkey, '-inf', nowarg)
-- A scored term among the conditions (kind 'x'): every id it admits is live already.
local xlive = false
local function live(id)
  if xlive or nexp == 0 then return true end
  work = work + 1
  local s = redis.call('ZSCORE', xkey, id)
  return not s or num(s) > now
end
-- Whether each of ids is live: one ZMSCORE per 512 ids, where a walk or a candidate set
-- has no other term to probe (a redis.call per id costs Redis several times more).
local function alive(ids)
  local up = {}
  for a = 1, #ids, 512 do
    local b = math.min(#ids, a + 511)
    local s = redis.call('ZMSCORE', xkey, unpack(ids, a, b))
    for i = a, b do up[i] = not s[i - a + 1] or num(s[i - a + 1]) > now end
    work = work + b - a + 1
  end
  return up
end

"""

#: No term: with nothing expired, the engine's own slice by rank. Else a page is a walk
#: that skips expired ids; a count is the window's size less its expired ids, found from
#: the smaller side: H#exp's expired ids (each placed by ZRANK) when fewer than the
#: window, else the walk probes the window.
#: A count of the whole model is ZCARD - ZCOUNT: every id of H#exp is an entity, so in
#: the ordering index (a commit writes both, a sweep removes both).
_NO_TERM_X = b"""-- No term, expiring model: a count subtracts the window's expired ids when they
-- are fewer than it; a page, and any other count, walks (below), skipping them.
if m == nil and mode == 'count' then
  local n = nil
  local e = nexp
  if not restricted and ckind == '' then
    n = wsize - e
  elseif e < wsize then
    n = wsize
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', xkey, '-inf', nowarg)) do
      work = work + 1
      local r = redis.call('ZRANK', okey, id)
      if r and r >= first and r <= last then n = n - 1 end
    end
  end
  if n then
    n = math.max(0, n - offset)
    if limit >= 0 then n = math.min(n, limit) end
    return reply(n)
  end
end

"""


#: SLICE for an expiring model: the window's first offset + limit ids (at most
#: :data:`MAX_BATCH`), answered at once when none of them has expired (one ``ZMSCORE``),
#: else by the engine, which skips expired ids. So a page of a model whose entities are
#: live costs one ``ZRANGEBYSCORE`` and one ``ZMSCORE`` more than a slice.
_SLICE_X = (
    b"""-- SLICE, expiring model: the window's first offset + limit ids, when none has expired
-- (else the engine below skips the expired ones).
if ARGV[12] == '' and ARGV[15] == '0' and ARGV[5] == '1' and ARGV[1] ~= 'count'
    and string.sub(ARGV[1], 1, 1) ~= 's' and tonumber(ARGV[3]) > 0
    and tonumber(ARGV[2]) + tonumber(ARGV[3]) <= """
    + str(MAX_BATCH).encode()
    + b""" then
  local lo, hi = '-inf', '+inf'
  if ARGV[7] == '1' then
    lo = (ARGV[9] == '1' and '(' or '') .. ARGV[8]
    hi = (ARGV[11] == '1' and '(' or '') .. ARGV[10]
  end
  local cmd, a, b = 'ZRANGEBYSCORE', lo, hi
  if ARGV[4] == '1' then cmd, a, b = 'ZREVRANGEBYSCORE', hi, lo end
  local offset = tonumber(ARGV[2])
  local found = redis.call(cmd, KEYS[1], a, b, 'LIMIT', 0, offset + tonumber(ARGV[3]))
  local live = true
  if #found > 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local s = redis.call('ZMSCORE', KEYS[#KEYS], unpack(found))
    for i = 1, #found do
      if s[i] and tonumber(s[i]) <= now then
        live = false
        break
      end
    end
  end
  if live then
    local ids, hashes = {}, {}
    for i = offset + 1, #found do ids[#ids + 1] = found[i] end
    if ARGV[1] == 'load' then
      for i, id in ipairs(ids) do hashes[i] = redis.pcall('HGETALL', ARGV[6] .. id) end
    end
    return {ids, hashes, 2 * #found}
  end
end

"""
)


#: The term of an expiring model's equality index (``querycompile.ScoredTerm``): a sorted
#: set scored by each id's instant, so its live ids are those scored above now. A query
#: with one needs no probe of ``H#exp`` (``xlive``): an eq count is one ``ZCOUNT``.
_SCORED_KIND = b"""kinds.x = {  -- an expiring model's equality index, scored by the instants
  parse = function(t) t.key = key(); xlive = true end,
  size = function(t) return redis.call('ZCOUNT', t.key, '(' .. nowarg, '+inf') end,
  fetch = function(t) return redis.call('ZRANGEBYSCORE', t.key, '(' .. nowarg, '+inf') end,
  probe = function(t, id)
    local s = redis.call('ZSCORE', t.key, id)
    return s and num(s) > now
  end,
}

"""


def _expiring_engine(script: bytes) -> bytes:
    """The engine's script for an expiring model: SLICE only where no id of the page or
    its offset has expired (:data:`_SLICE_X`), every candidate probed for expiry last
    (after the terms, so only ids matching them pay for it) unless a scored equality
    term (:data:`_SCORED_KIND`) admits only live ids, and the no-term and one-term
    counts computed from the smaller of the candidates and H#exp's expired ids."""
    text = _swap(script, b"-- redisca query engine (", b"-- redisca query engine, expiring model (")
    text = _swap(text, _part(text, b"-- SLICE, answered before", b"local MIN_BATCH"), _SLICE_X)
    text = _swap(text, b"-- Byte order (Lua's", _LIVE + b"-- Byte order (Lua's")
    text = _swap(text, b"local okey = KEYS[1]\n", _SCORED_KIND + b"local okey = KEYS[1]\n")
    text = _swap(text, b"local terms = {}\n", b"local terms = {}\nxlive = false  -- per branch\n")
    text = _swap(
        text,
        b"      if not kinds[t.kind].probe(t, id) then return false end\n"
        b"    end\n  end\n  return true\nend\n",
        b"      if not kinds[t.kind].probe(t, id) then return false end\n"
        b"    end\n  end\n  return live(id)\nend\n",
    )
    by_rank = _part(text, b"-- No term: the page is a slice", b"-- (a) Walk the ordering zset")
    text = _swap(
        text,
        by_rank,
        _swap(by_rank, b"if m == nil then\n", b"if m == nil and nexp == 0 then\n") + _NO_TERM_X,
    )
    text = _swap(
        text,
        b"    for i = a, b, step do\n      local id = ids[i]\n      if matches(id, nil) then\n",
        b"    local up = m == nil and alive(ids)  -- no term: the batch probed at once\n"
        b"    for i = a, b, step do\n      local id = ids[i]\n"
        b"      if (up and up[i]) or (not up and matches(id, nil)) then\n",
    )
    text = _swap(
        text,
        b"  local keep, key = {}, {}\n  for _, id in ipairs(ids) do\n"
        b"    if matches(id, best) then\n",
        b"  local keep, key = {}, {}\n"
        b"  local up = #terms == 1 and nexp > 0 and not xlive and alive(ids)  -- at once\n"
        b"  for i, id in ipairs(ids) do\n"
        b"    if (up and up[i]) or (not up and matches(id, best)) then\n",
    )
    text = _swap(
        text,
        b"-- One term, no window, no cursor: its size is the count.\n"
        b"if mode == 'count' and #terms == 1 and not restricted and ckind == '' then\n"
        b"  local n = math.max(0, m - offset)\n",
        b"-- One term, no window, no cursor: its size less its expired ids, when H#exp has\n"
        b"-- fewer expired ids than it has ids (else gather() probes each of its ids).\n"
        b"-- A scored term's size is its live count already.\n"
        b"if mode == 'count' and #terms == 1 and not restricted and ckind == ''\n"
        b"    and (xlive or nexp < m) then\n"
        b"  local n = m\n"
        b"  if not xlive then\n"
        b"    for _, id in ipairs(redis.call('ZRANGEBYSCORE', xkey, '-inf', nowarg)) do\n"
        b"      work = work + 1\n"
        b"      if kinds[best.kind].probe(best, id) then n = n - 1 end\n"
        b"    end\n"
        b"  end\n"
        b"  n = math.max(0, n - offset)\n",
    )
    return _swap(
        text,
        b"if m < wsize and (need == nil or need * wsize >= m * m) then\n",
        b"if m == nil then\n"
        b"  out, matched = walk(nil)\n"
        b"elseif m < wsize and (need == nil or need * wsize >= m * m) then\n",
    )


def _expiring_lookup(script: bytes) -> bytes:
    """The lookup script for an expiring model: the owner found must be live too (one
    more ZSCORE, counted in ``work``)."""
    text = _swap(
        script,
        b"-- redisca query engine, lookup by a unique value (",
        b"-- redisca query engine, lookup by a unique value, expiring model (",
    )
    text = _swap(
        text,
        b"-- The unique value alone,",
        b"""-- Expiry: KEYS' last is H#exp; an id whose instant is <= now (ms) is absent.
local function live(id)
  local t = redis.call('TIME')
  local s = redis.call('ZSCORE', KEYS[#KEYS], id)
  return not s or tonumber(s) > tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- An equality index scored by the instants (kind 'x'): the id is in it, live.
local function scored(key, id)
  local t = redis.call('TIME')
  local s = redis.call('ZSCORE', key, id)
  return s ~= false and (s == 'inf' or
    tonumber(s) > tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end

-- The unique value alone,""",
    )
    text = _swap(
        text,
        b"  if redis.call('ZSCORE', KEYS[1], owner) then n = 1 end\n",
        b"  if redis.call('ZSCORE', KEYS[1], owner) and live(owner) then n = 1 end\n",
    )
    text = _swap(text, b"return {n, 2} end", b"return {n, 3} end")
    text = _swap(text, b"return {{}, {}, 2} end", b"return {{}, {}, 3} end")
    text = _swap(text, b"return {{owner}, hashes, 2}", b"return {{owner}, hashes, 3}")
    text = _swap(
        text,
        b"  elseif kind == 'e' then\n",
        b"  elseif kind == 'x' then\n    probes[#probes + 1] = {KEYS[ki], false}\n"
        b"  elseif kind == 'e' then\n",
    )
    text = _swap(
        text,
        b"    if p[2] == nil then\n",
        b"    if p[2] == false then\n      ok = scored(p[1], id)\n    elseif p[2] == nil then\n",
    )
    return _swap(
        text,
        b"local n = 0\nif ok then n = 1 end\n",
        b"if ok then\n  work = work + 1\n  ok = live(id)\nend\nlocal n = 0\nif ok then n = 1 end\n",
    )


#: Reads a page's hash with its instant: an entity loaded by a query knows when it
#: expires, as one loaded by ``get`` does (``loading.from_hashes`` reads the pair back).
_HGETALL_X = b"""local function hgetall_x(prefix, id)
  local h = redis.pcall('HGETALL', prefix .. id)
  if type(h) == 'table' and h[1] then
    local s = redis.call('ZSCORE', KEYS[#KEYS], id)
    if s then h[#h + 1] = '#exp'; h[#h + 1] = s end
  end
  return h
end
"""
_HGETALL_CALL = re.compile(rb"redis\.pcall\('HGETALL', ([A-Za-z0-9_\[\]]+) \.\. ([a-z]+)\)")


def _with_instants(script: bytes) -> bytes:
    """An expiring model's script whose loads return each hash with its instant, under
    the reserved field ``#exp`` (user fields hold no ``#``); H#exp is its last key."""
    title, newline, rest = script.partition(b"\n")
    rest, found = _HGETALL_CALL.subn(rb"hgetall_x(\1, \2)", rest)
    assert found and b"'HGETALL'" not in rest, "a load the instants do not reach"
    return title + newline + _HGETALL_X + rest


_ENGINE_X = _expiring_engine(SCRIPT)
#: :data:`SCRIPT` for a model whose entities may expire (KEYS: then H#exp, last).
SCRIPT_X = _with_instants(_ENGINE_X)
SHA_X = hashlib.sha1(SCRIPT_X).hexdigest().encode()
#: :data:`UNION` for a model whose entities may expire (KEYS: then H#exp once, last).
UNION_X = _with_instants(
    _union(
        _ENGINE_X,
        b"-- redisca query engine, OR of several branches, expiring model "
        b"(see redisca/session/queryscript.py).\n",
    )
)
UNION_X_SHA = hashlib.sha1(UNION_X).hexdigest().encode()
#: :data:`LOOKUP` for a model whose entities may expire (KEYS: then H#exp, last).
LOOKUP_X = _with_instants(_expiring_lookup(LOOKUP))
LOOKUP_X_SHA = hashlib.sha1(LOOKUP_X).hexdigest().encode()


#: The per-node SLICE's read of a shard's window (:data:`NODES`)...
_SLICE_READ = b"""\
    local found = slice(okey, sdesc, lo, hi, o1, o2)
    for i = 1, #found - 1, 2 do
      local n = #ids + 1
      ids[n], raw[n], nums[n] = found[i], found[i + 1], num(found[i + 1])
    end
"""
#: ... and an expiring shard's (:data:`NODES_X`): the same command where the shard has no
#: expired id; else the window read in chunks (twice as many ids as the page needs, then
#: doubling up to 512), each chunk's instants in one ZMSCORE, until the page has its
#: offset + limit live ids. A shard whose expired ids are not swept yet costs a page a
#: ZMSCORE, not the engine's walk.
_SLICE_READ_X = b"""\
    if nexp == 0 then
      local found = slice(okey, sdesc, lo, hi, o1, o2)
      for i = 1, #found - 1, 2 do
        local n = #ids + 1
        ids[n], raw[n], nums[n] = found[i], found[i + 1], num(found[i + 1])
      end
    else
      local skip, want = tonumber(o1), tonumber(o2)
      local from, size, live = 0, 512, 0
      if want >= 0 then size = math.min(512, math.max(16, 2 * (skip + want))) end
      while true do
        local found = slice(okey, sdesc, lo, hi, from, size)
        local n = #found / 2
        if n == 0 then break end
        local members = {}
        for i = 1, n do members[i] = found[2 * i - 1] end
        local s = redis.call('ZMSCORE', xkey, unpack(members))
        work = work + n
        for i = 1, n do
          if (want < 0 or #ids < want) and (not s[i] or num(s[i]) > now) then
            live = live + 1
            if live > skip then
              local k = #ids + 1
              ids[k], raw[k], nums[k] = found[2 * i - 1], found[2 * i], num(found[2 * i])
            end
          end
        end
        if (want >= 0 and #ids >= want) or n < size then break end
        from, size = from + n, math.min(512, size * 2)
      end
    end
"""


def _nodes_expiring(text: bytes) -> bytes:
    """:data:`NODES` made from the expiring engine: each shard's ``H#exp`` is its last
    key, so the engine's ``xkey`` and its count of expired ids ``nexp`` are set again
    for every shard (the server's now is read once, for all of them); a shard's slice
    skips its expired ids (:data:`_SLICE_READ_X`), its keyset fast path is taken only
    when it has none (else the engine skips them); and each id of the page is read
    with its instant from its own shard's ``H#exp``."""
    text = _swap(
        text,
        b"-- redisca query engine, the shards one node serves ",
        b"-- redisca query engine, the shards one node serves, expiring model ",
    )
    keyset = (
        b"  if ARGV[b + 11] == 's' and ARGV[b + 14] == '0' and ARGV[b + 4] == '1'\n"
        b"      and ARGV[b + 6] == '0' and ARGV[b] ~= 'count' then\n"
    )
    text = _swap(text, keyset, keyset.replace(b" then\n", b" and nexp == 0 then\n"))
    text = _swap(text, _SLICE_READ, _SLICE_READ_X)
    text = _swap(
        text,
        b"  ki, ai = 1, first\n",
        b"  xkey = K[nk]\n"
        b"  nexp = redis.call('ZCOUNT', xkey, '-inf', nowarg)\n"
        b"  ki, ai = 1, first\n",
    )
    text = _swap(
        text,
        b"prefix = prefix, at = 1}",
        b"prefix = prefix, at = 1, xkey = xkey}",
    )
    text = _swap(
        text,
        b"    prefixes[#prefixes + 1] = run.prefix\n",
        b"    prefixes[#prefixes + 1] = run.prefix\n    xkeys[#xkeys + 1] = run.xkey\n",
    )
    text = _swap(
        text,
        b"local ids, scores, prefixes, n = {}, {}, {}, 0\n",
        b"local ids, scores, prefixes, n = {}, {}, {}, 0\nlocal xkeys = {}\n",
    )
    return _swap(
        text,
        b"  for i, id in ipairs(ids) do hashes[i] = redis.pcall('HGETALL', prefixes[i] .. id)"
        b" end\n",
        b"  for i, id in ipairs(ids) do\n"
        b"    local h = redis.pcall('HGETALL', prefixes[i] .. id)\n"
        b"    if type(h) == 'table' and h[1] then\n"
        b"      local s = redis.call('ZSCORE', xkeys[i], id)\n"
        b"      if s then h[#h + 1] = '#exp'; h[#h + 1] = s end\n"
        b"    end\n"
        b"    hashes[i] = h\n"
        b"  end\n",
    )


#: :data:`NODES` for a sharded model whose entities may expire (each shard's keys end
#: with its ``H#exp``).
NODES_X = _nodes_expiring(_nodes(_ENGINE_X))
NODES_X_SHA = hashlib.sha1(NODES_X).hexdigest().encode()


#: Per connection pool, the scripts its server has run: the others are sent with
#: EVAL at once, so a first query is one round trip too.
_KNOWN: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()


def run(client: Any, call: ScriptCall) -> Any:
    """:func:`run_steps` with blocking I/O. Its common case (one server, the script
    known there, no error) is sent here without the protocol's generators, which cost
    every lookup a few percent; anything else continues in :func:`run_steps` from the
    reply this got."""
    if routing.is_cluster(client):
        return executor.drive(run_steps(client, call))
    sha, by_digest, _, known = _commands(client, call)
    if sha not in known:
        return executor.drive(run_steps(client, call))
    reply = executor.run(client, [by_digest])[0]
    if not isinstance(reply, Exception):
        return reply
    return executor.drive(run_steps(client, call, reply))


_UNSENT: Any = object()


def run_steps(client: Any, call: ScriptCall, sent: Any = _UNSENT) -> Steps[Any]:
    """The script's reply, in one round trip (two after the server forgot the script).

    An error reply raises :class:`~redisca.OperationalError`, naming the index keys of
    the wrong type (another program's data) found in one more round trip. A protocol
    (:mod:`redisca.session.io`): the sync and async queries both run it. ``sent``: the
    reply to the script sent by digest already (:func:`run`)."""
    sha, by_digest, whole, known = _commands(client, call)
    if sha in known:
        if sent is _UNSENT:
            sent = (yield from executor.run_steps(client, [by_digest]))[0]
        reply = sent
        if not isinstance(reply, Exception):  # the common case: no generator for errors
            return reply
        if not isinstance(reply, NoScriptError):
            return (yield from _failed(client, reply, call))
    reply = (yield from executor.run_steps(client, [whole]))[0]
    known.add(sha)
    if not isinstance(reply, Exception):
        return reply
    return (yield from _failed(client, reply, call))


def _commands(client: Any, call: ScriptCall) -> tuple[bytes, Command, Command, set[bytes]]:
    """The script's digest, the call by digest and whole, and the scripts the server
    that runs it is known to have."""
    keys, args = call.keys, call.args
    if call.expiring and call.union:
        sha = UNION_X_SHA
        by_digest = (b"EVALSHA", UNION_X_SHA, len(keys), *keys, *args)
        whole = (b"EVAL", UNION_X, len(keys), *keys, *args)
    elif call.expiring and call.lookup:
        sha = LOOKUP_X_SHA
        by_digest = (b"EVALSHA", LOOKUP_X_SHA, len(keys), *keys, *args)
        whole = (b"EVAL", LOOKUP_X, len(keys), *keys, *args)
    elif call.expiring:
        sha = SHA_X
        by_digest = (b"EVALSHA", SHA_X, len(keys), *keys, *args)
        whole = (b"EVAL", SCRIPT_X, len(keys), *keys, *args)
    elif call.union:
        sha = UNION_SHA
        by_digest = (b"EVALSHA", UNION_SHA, len(keys), *keys, *args)
        whole = (b"EVAL", UNION, len(keys), *keys, *args)
    elif call.lookup:
        sha = LOOKUP_SHA
        by_digest = (b"EVALSHA", LOOKUP_SHA, len(keys), *keys, *args)
        whole = (b"EVAL", LOOKUP, len(keys), *keys, *args)
    else:
        sha = SHA
        by_digest = (b"EVALSHA", SHA, len(keys), *keys, *args)
        whole = (b"EVAL", SCRIPT, len(keys), *keys, *args)
    pool = routing.pool(client, routing.slot_of(keys[0])) if routing.is_cluster(client) else None
    pool = client.connection_pool if pool is None else pool
    return sha, by_digest, whole, _known(client, pool)


def run_many(client: Any, calls: list[ScriptCall]) -> list[Any]:
    """:func:`run_many_steps` with blocking I/O."""
    return executor.drive(run_many_steps(client, calls))


def run_many_steps(client: Any, calls: list[ScriptCall]) -> Steps[list[Any]]:
    """The replies of several script calls (a sharded model's shards), sent together:
    one round trip on one server, one per master on a cluster (two where a server had
    forgotten the script). Each reply is checked as :func:`run_steps` checks its one."""
    prepared = [_commands(client, c) for c in calls]
    commands = [by_digest if sha in known else whole for sha, by_digest, whole, known in prepared]
    replies = yield from executor.run_steps(client, commands)
    again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if again:
        resent = yield from executor.run_steps(client, [prepared[i][2] for i in again])
        for i, reply in zip(again, resent, strict=True):
            replies[i] = reply
    for sha, _, _, known in prepared:
        known.add(sha)
    for reply, call in zip(replies, calls, strict=True):
        if isinstance(reply, Exception):
            yield from _failed(client, reply, call)  # raises
    return replies


def nodes_call(
    first: ScriptCall,
    tags: list[bytes],
    mode: bytes,
    skip: int,
    take: int | None,
    descending: bool,
) -> ScriptCall:
    """One :data:`NODES` call for shards one node serves: ``first`` the engine's call of
    the first of them (asking for its first ``skip + take`` ids), ``tags`` their hash
    tags, the first one's first (each the head of its shard's keys and entity prefix)."""
    shard_mode = b"count" if mode == b"count" else b"ids"
    args: list[bytes | int] = [
        mode,
        skip,
        -1 if take is None else take,
        int(descending),
        len(tags),
        len(first.keys),
        len(tags[0]),
        *tags[1:],
        shard_mode,
        *first.args[1:],
    ]
    return ScriptCall(first.keys, tuple(args), first.types, expiring=first.expiring)


def run_nodes_steps(client: Any, calls: list[ScriptCall]) -> Steps[list[Any] | None]:
    """The replies of :data:`NODES` calls (one per node), sent together, or ``None``
    when any node refused or failed its call, or a hash of its page: a slot moved or
    moving, a key of a shard the node no longer serves, a wrong type. The caller then
    asks shard by shard (:func:`run_many_steps`), which follows the cluster's redirects
    and names the error. A server that had forgotten the script is sent it whole."""
    cluster = routing.is_cluster(client)
    try:
        knowns = [
            _known(
                client,
                routing.pool(client, routing.slot_of(c.keys[0]))
                if cluster
                else client.connection_pool,
            )
            for c in calls
        ]
        commands = [
            _nodes_command(c, _nodes_sha(c) in k) for c, k in zip(calls, knowns, strict=True)
        ]
        replies = yield from executor.run_steps(client, commands)
        again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if again:
            resent = yield from executor.run_steps(
                client, [_nodes_command(calls[i], False) for i in again]
            )
            for i, reply in zip(again, resent, strict=True):
                replies[i] = reply
    except (OperationalError, routing.Redirected):
        return None
    for call, known in zip(calls, knowns, strict=True):
        known.add(_nodes_sha(call))
    if any(isinstance(reply, Exception) for reply in replies):
        return None
    for reply in replies:  # a hash that failed to load (a key moved off a migrating slot)
        if len(reply) > 2 and any(isinstance(h, Exception) for h in reply[1]):
            return None
    return replies


def _nodes_command(call: ScriptCall, sha_known: bool) -> tuple[Any, ...]:
    keys, args = call.keys, call.args
    if call.expiring:
        if sha_known:
            return (b"EVALSHA", NODES_X_SHA, len(keys), *keys, *args)
        return (b"EVAL", NODES_X, len(keys), *keys, *args)
    if sha_known:
        return (b"EVALSHA", NODES_SHA, len(keys), *keys, *args)
    return (b"EVAL", NODES, len(keys), *keys, *args)


def _nodes_sha(call: ScriptCall) -> bytes:
    return NODES_X_SHA if call.expiring else NODES_SHA


def _known(client: Any, pool: Any) -> set[bytes]:
    """The scripts the server of ``pool`` has run (a set to add to)."""
    try:
        known = _KNOWN.get(pool)
        return _KNOWN.setdefault(pool, set()) if known is None else known
    except TypeError:  # a redis.asyncio cluster node: no weak references, known by name
        return _KNOWN_NODES.setdefault(client, {}).setdefault(pool.name, set())


_KNOWN_NODES: weakref.WeakKeyDictionary[Any, dict[str, set[bytes]]] = weakref.WeakKeyDictionary()


def _failed(client: Any, reply: Exception, call: ScriptCall) -> Steps[Any]:
    """Raise the error a failed script call means (a cluster's refusal, an ``after()``
    id not in the index, index keys of the wrong type)."""
    routing.check(reply, "the query's script")
    if str(reply).startswith(AFTER_MISSING):
        raise QueryError("after(): that id is not in the query's ordering index")
    wrong = (yield from _wrong_types(client, call)) if "WRONGTYPE" in str(reply) else []
    where = f" ({', '.join(wrong)}: not the type redisca keeps there)" if wrong else ""
    raise OperationalError(f"Redis could not run the query{where}: {reply}", reply)


def _wrong_types(client: Any, call: ScriptCall) -> Steps[list[str]]:
    """The call's index keys that exist with another type than their kind's."""
    types = yield from executor.run_steps(client, [(b"TYPE", key) for key in call.keys])
    return [
        key.decode(errors="replace")[:200]
        for key, want, have in zip(call.keys, call.types, types, strict=True)
        if have not in (want, b"none", want.decode(), "none")
    ]


__all__ = [
    "LOOKUP",
    "LOOKUP_SHA",
    "LOOKUP_X",
    "LOOKUP_X_SHA",
    "MAX_BATCH",
    "MIN_BATCH",
    "NODES",
    "NODES_SHA",
    "SCRIPT",
    "SCRIPT_X",
    "SHA",
    "SHA_X",
    "SLICE_OFFSET",
    "UNION",
    "UNION_SHA",
    "UNION_X",
    "UNION_X_SHA",
    "nodes_call",
    "run",
    "run_many",
    "run_many_steps",
    "run_nodes_steps",
    "run_steps",
]

"""reindex: rebuild a model's indexes from its hashes while the application commits.

A run, per model (docs/operations.rst tells why this leaves no window in which a
query answers from half-built indexes; ``H`` is the model's head, ``{P}`` or
``{G}P``: see docs/keylayout.rst):

1. *start*: create the marker ``H#x`` (the run's token, then what it rebuilds),
   only if no other run's marker exists. From then on every commit that changes
   index entries of the model applies each change to the run's build keys too
   (:mod:`redisca.session.rebuild`), so what is built never falls behind;
2. *build*: ``SCAN`` the entity keys; per page, ``WATCH`` the hashes and the
   marker, read them, and write their index entries into the build keys in one
   ``MULTI``/``EXEC``: if a commit changed one of them meanwhile, ``EXEC`` fails
   and the page is read again. Whoever writes a build key records it in the
   build directory ``H#b:<run>``;
3. *switch*: one script, atomic like every script: if the marker is still this
   run's, rename every build key over its live key, delete live index keys that
   have no build key (no entity holds their value any more), delete the
   directory and the marker. Commits that had read the marker fail their
   ``EXEC`` (they watched it) and are retried against the new keys.

The marker expires ``ttl`` seconds after the run last refreshed it, so a run
that dies leaves the application mirroring for at most that long; the build
keys it leaves behind are deleted by the next run (``check`` reports them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import attrs
from redis.exceptions import ResponseError

from ..conf import Client
from ..mapping.keys import INDEX_KINDS, NO_VALUE
from ..mapping.mapper import MappedField, Mapper
from ..session import executor
from ..session.expiry import SCORED_ADD
from ..session.plan import Command
from ..session.rebuild import ALL_IDS, marker_value
from .check import expectations
from .common import (
    MaintenanceError,
    Progress,
    Ticker,
    UnknownName,
    by_hash_field,
    each_shard,
    in_shard,
    model_name,
    resolve_client,
    run,
    select_mappers,
    show,
)
from .placement import Keyspace, send
from .problems import PlainSummary, Problem, ProblemReport
from .shardclaims import covers, repair

#: Seconds a marker outlives the last sign of life of its run.
DEFAULT_TTL = 60.0
#: A page whose hashes keep changing is retried this often before it is split.
PAGE_TRIES = 5
KEY_TRIES = 200

#: KEYS: marker, directory. ARGV: run token, then live index keys that may have to go.
#: ``UNLINK`` first: a big old index is freed in the background, not inside the script.
SWITCH = b"""\
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then return {-1, 0} end
local built = redis.call('HGETALL', KEYS[2])
local onto = {}
local renamed, deleted = 0, 0
for i = 1, #built, 2 do
  local b, l = built[i], built[i + 1]
  onto[l] = true
  if redis.call('EXISTS', b) == 1 then
    redis.call('UNLINK', l)
    redis.call('RENAME', b, l)
    renamed = renamed + 1
  else
    deleted = deleted + redis.call('UNLINK', l)
  end
end
for i = 2, #ARGV do
  if not onto[ARGV[i]] then deleted = deleted + redis.call('UNLINK', ARGV[i]) end
end
redis.call('DEL', KEYS[2], KEYS[1])
return {renamed, deleted}
"""

#: KEYS: marker. ARGV: run token, ttl in ms. Refreshes the marker while it is this run's.
REFRESH = b"""\
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""

#: KEYS: marker. ARGV: run token. Ends a run that gives up (commits stop mirroring).
ABANDON = b"""\
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class RunLost(MaintenanceError):
    """The run's marker is gone (it expired, or someone removed it): nothing was switched."""


@attrs.define
class ModelReindex(PlainSummary):
    """What a run did to one model."""

    model: str
    prefix: str
    run: str
    rebuilt: list[str]
    entities: int = 0
    entries: int = 0
    pages: int = 0
    #: Pages read again because a commit changed one of their hashes meanwhile.
    retries: int = 0
    renamed: int = 0
    deleted: int = 0
    #: Milliseconds the switch script held the server.
    switch_ms: float = 0.0
    seconds: float = 0.0
    #: A sharded model with a unique field: claims repaired (created, taken down, their
    #: leftover tokens and registrations removed) by the protocol's own steps.
    claims_repaired: int = 0


@attrs.define
class ReindexReport(ProblemReport):
    """The runs, and what they could not index (``ok`` when nothing)."""

    models: list[ModelReindex] = attrs.field(factory=list)
    problems: list[Problem] = attrs.field(factory=list)


def reindex(
    registry_or_classes: Any,
    client: Client | None = None,
    *,
    models: Iterable[Any] | None = None,
    fields: Iterable[Any] | None = None,
    batch: int = 500,
    progress: Progress | None = None,
    ttl: float = DEFAULT_TTL,
) -> ReindexReport:
    """Rebuild the indexes of each model (equality, range, unique and all-ids), or only
    those of ``fields`` (attribute names or attributes, indexed ones), from the hashes.

    The application may keep committing throughout: queries answer from the old
    indexes until one atomic switch puts the new ones in place. Values that cannot
    be indexed (undecodable, a unique value two entities hold) are reported in the
    returned report's ``problems``; the rest is rebuilt all the same.
    """
    client = resolve_client(client)
    report = ReindexReport()
    for mapper in select_mappers(registry_or_classes, models, sharded=True):
        members = _members(mapper, fields)
        # A sharded model's unique claims are repaired across its shards (shardclaims),
        # after the shards' own runs (in parallel, each on its master) rebuilt the rest.
        uniques = {f.hash_field for f in mapper.indexed if f.unique} if covers(mapper) else set()
        own = [m for m in members if m not in uniques]

        def one(
            k: int, view: Mapper, shown: Progress | None, own: list[bytes] = own
        ) -> tuple[ModelReindex, list[Problem]]:
            task = _Run(client, view, own, max(1, batch), shown, ttl, full=fields is None)
            return task.run(), task.problems

        done: ModelReindex | None = None
        for part, problems in each_shard(mapper, one, progress) if own else []:
            done = part if done is None else _added(done, part)
            report.problems += problems
        if done is None:
            done = ModelReindex(model_name(mapper), mapper.prefix, "", [])
        if uniques & set(members):
            started = time.monotonic()
            fixed = repair(client, mapper, max(1, batch))
            done.claims_repaired = fixed.repaired
            done.rebuilt += [m.decode() for m in members if m in uniques]
            done.seconds = round(done.seconds + time.monotonic() - started, 3)
            report.problems += fixed.problems
        report.models.append(done)
    return report


def _added(total: ModelReindex, part: ModelReindex) -> ModelReindex:
    """Two shards' runs as one model's (``run``: their tokens, comma-separated)."""
    return ModelReindex(
        total.model,
        total.prefix,
        f"{total.run},{part.run}",
        total.rebuilt,
        entities=total.entities + part.entities,
        entries=total.entries + part.entries,
        pages=total.pages + part.pages,
        retries=total.retries + part.retries,
        renamed=total.renamed + part.renamed,
        deleted=total.deleted + part.deleted,
        switch_ms=round(total.switch_ms + part.switch_ms, 3),
        seconds=round(total.seconds + part.seconds, 3),
        claims_repaired=total.claims_repaired + part.claims_repaired,
    )


def _members(mapper: Mapper, fields: Iterable[Any] | None) -> list[bytes]:
    """What a run rebuilds: hash field names, and ``#all`` for the all-ids set ``H#all``
    of a model without a range index (with one, its first range field's index holds
    every id: rebuilding that field rebuilds the all-ids index)."""
    if fields is None:
        indexed = [f.hash_field for f in (*mapper.indexed, *_member_indexed(mapper))]
        return indexed if mapper.layout.all_ids_is_range else [ALL_IDS, *indexed]
    collections = {f.name: f for f in mapper.collections}
    chosen: list[bytes] = []
    for wanted in [fields] if isinstance(fields, str) else fields:
        name = getattr(wanted, "name", wanted)
        field = mapper.by_name.get(name) or collections.get(name) if isinstance(name, str) else None
        if field is None:
            raise UnknownName(f"{model_name(mapper)} has no mapped attribute {wanted!r}")
        if not field.indexed:
            raise UnknownName(
                f"{model_name(mapper)}.{field.name} is not indexed: declare index=True first"
            )
        chosen.append(field.hash_field)
    return list(dict.fromkeys(chosen))


def _member_indexed(mapper: Mapper) -> list[MappedField]:
    """The collections with a member index (``Set`` / ``References`` with ``index=True``):
    rebuilt from their members' keys (``H#m:<field>:<id>``), not from the hashes."""
    return [f for f in mapper.collections if f.indexed]


class _Run:
    def __init__(
        self,
        client: Client,
        mapper: Mapper,
        members: list[bytes],
        batch: int,
        progress: Progress | None,
        ttl: float,
        *,
        full: bool,
    ) -> None:
        self.client = client
        #: Every index of the model is rebuilt (not only some fields'): indexes of
        #: fields that have none go too.
        self.full = full
        self.mapper = mapper
        self.layout = mapper.layout
        self.members = members
        self.batch = batch
        self.progress = progress
        self.ttl_ms = max(1000, int(ttl * 1000))
        self.token = os.urandom(8).hex().encode()
        self.directory = self.layout.build_dir(self.token)
        self.built_name = self.layout.builder(self.token)
        self.fields = by_hash_field(mapper)
        #: The member indexes this run rebuilds.
        self.collections = [f for f in _member_indexed(mapper) if f.hash_field in members]
        self.name = model_name(mapper)
        self.problems: list[Problem] = []
        self.summary = ModelReindex(
            self.name,
            mapper.prefix,
            self.token.decode(),
            [m.decode() for m in members],
        )
        self._refreshed = 0.0

    def run(self) -> ModelReindex:
        started = time.monotonic()
        self.space = Keyspace(self.client, self.mapper, "reindex")
        self.start()
        try:
            self.clean_leftovers()
            self.build()
            candidates = self.live_keys()
            self.space.done()  # the slot stayed put: the build saw every entity
            self.switch(candidates)
        except BaseException:
            self.abandon()
            raise
        self.summary.seconds = round(time.monotonic() - started, 3)
        return self.summary

    # -- start and end ----------------------------------------------------------

    def start(self) -> None:
        marker = self.layout.marker
        with self.space.connection() as conn:
            replies = send(conn, [(b"WATCH", marker), (b"LRANGE", marker, 0, -1)], "WATCH")
            if replies[1]:
                executor.roundtrip(conn, [(b"UNWATCH",)])
                if isinstance(replies[1], ResponseError):
                    raise MaintenanceError(
                        f"{show(marker)} is not a reindex marker ({replies[1]}); "
                        "commits of the model cannot read it either: delete it"
                    )
                other = show(bytes(replies[1][0]))
                raise MaintenanceError(
                    f"a reindex of {self.name} is running already (run {other}, marker "
                    f"{show(marker)}); a run that died lets its marker expire within "
                    f"{self.ttl_ms // 1000} s of its last sign of life"
                )
            value = marker_value(self.token, self.members)
            done = executor.transaction(
                conn, [(b"RPUSH", marker, *value), (b"PEXPIRE", marker, self.ttl_ms)]
            )
        if done is None:
            raise MaintenanceError(f"another reindex of {self.name} started at the same moment")
        self._refreshed = time.monotonic()

    def refresh(self) -> None:
        """Keep the marker alive (a run that stops refreshing it loses it)."""
        if time.monotonic() - self._refreshed < self.ttl_ms / 3000:
            return
        refresh = (b"EVAL", REFRESH, 1, self.layout.marker, self.token, self.ttl_ms)
        reply = run(self.client, [refresh])
        if reply[0] != 1:
            raise RunLost(f"the reindex marker of {self.name} expired or was removed")
        self._refreshed = time.monotonic()

    def abandon(self) -> None:
        """Give up: drop the marker (if still ours) and whatever was built."""
        try:
            run(self.client, [(b"EVAL", ABANDON, 1, self.layout.marker, self.token)])
            self.delete_build_keys(lambda run_: run_ == self.token, alive=False)
        except Exception:  # the original error matters more; check reports what is left
            pass

    def clean_leftovers(self) -> None:
        """Delete build keys of runs that died (any run but this one)."""
        self.delete_build_keys(lambda run_: run_ != self.token)

    def delete_build_keys(self, chosen: Any, *, alive: bool = True) -> None:
        pattern = self.layout.namespace_pattern
        for keys in self.space.scan(pattern, self.batch):
            doomed = [
                key
                for key in keys
                if self.layout.parse(key).kind in ("build", "build_dir")
                and chosen(self.layout.parse(key).run)
            ]
            if doomed:
                run(self.client, [(b"DEL", *doomed)])
            if alive:
                self.refresh()

    # -- build ------------------------------------------------------------------

    def build(self) -> None:
        total = run(self.client, [(b"ZCARD", self.layout.all_ids)])[0]
        ticker = Ticker(
            self.progress, self.name, "entities", None if isinstance(total, Exception) else total
        )
        for keys in self.space.scan(self.layout.entity_pattern, self.batch):
            self.build_page(keys)
            ticker.add(len(keys))
            self.refresh()
        ticker.finish()

    def build_page(self, keys: list[bytes]) -> None:
        """A page whose hashes keep changing is split; one key alone is retried, with a
        growing pause, until the commits on it leave it a moment."""
        tries = PAGE_TRIES if len(keys) > 1 else KEY_TRIES
        for attempt in range(tries):
            if self.try_page(keys):
                self.summary.pages += 1
                return
            self.summary.retries += 1
            if len(keys) == 1:
                time.sleep(min(0.05, 0.001 * attempt))
                self.refresh()
        if len(keys) == 1:
            raise MaintenanceError(f"{show(keys[0])} kept changing while the reindex read it")
        half = len(keys) // 2
        self.build_page(keys[:half])
        self.build_page(keys[half:])

    def try_page(self, keys: list[bytes]) -> bool:
        """Index one page of entities as they are at ``EXEC``; ``False`` if one changed."""
        marker = self.layout.marker
        # The members of the page's indexed sets, watched too: a commit may change a set
        # and not its entity's hash.
        sets = [self.members_key(key, f) for key in keys for f in self.collections]
        with self.space.connection() as conn:
            reads: list[Command] = [(b"WATCH", marker, *keys, *sets), (b"LINDEX", marker, 0)]
            reads += [(b"HGETALL", k) for k in keys]
            reads += [(b"SMEMBERS", k) for k in sets]
            replies = send(conn, reads, "a page's reads")
            if replies[1] != self.token:
                executor.roundtrip(conn, [(b"UNWATCH",)])
                raise RunLost(f"the reindex marker of {self.name} expired or was removed")
            page = _Page(self)
            members = iter(replies[2 + len(keys) :])
            for key, reply in zip(keys, replies[2 : 2 + len(keys)], strict=True):
                held = {f: next(members) for f in self.collections}
                page.add(key, reply, held)
            result = executor.transaction(conn, page.commands())
        if result is None:
            return False
        self.summary.entities += page.entities
        self.summary.entries += page.entries
        self.problems += page.problems
        self.claimed(page, result)
        return True

    def members_key(self, key: bytes, field: MappedField) -> bytes:
        ident = key[self.layout.entity_prefix_len() :]
        return self.layout.members(field.hash_field, ident)

    def claimed(self, page: _Page, result: list[Any]) -> None:
        """Unique values another entity had claimed in the build stripe: two hold them."""
        replies = result[page.claims_at :]
        lost = [c for c, reply in zip(page.claims, replies, strict=True) if reply == 0]
        if not lost:
            return
        owners = run(self.client, [(b"HGET", built, value) for built, _, _, value, _ in lost])
        for (_, live, field, value, ident), owner in zip(lost, owners, strict=True):
            if owner is None or bytes(owner) == ident:
                continue  # a commit claimed it for this very entity meanwhile
            other = show(bytes(owner))
            detail = (
                f"value {show(value)!r}: {show(ident)} and {other} both hold the value; "
                f"it names {other}"
            )
            self.problems.append(
                Problem("duplicate_unique", self.name, show(live), field.name, detail)
            )

    # -- switch -----------------------------------------------------------------

    def live_keys(self) -> list[bytes]:
        """Live index keys the switch deletes unless a build key replaces them: those of
        what is rebuilt (unique keys of the layout before 2.0 included: a key per value,
        which the stripes replace), and, in a full run, indexes of fields that have none.
        ``H#all`` goes with the all-ids index it was or is: on a model with a range index,
        a leftover of the layout before that the rebuilt range index replaces."""
        rebuilt = set(self.members)
        everything = self.full
        ids_rebuilt = ALL_IDS in rebuilt or (
            self.mapper.default_order is not None
            and self.mapper.default_order.hash_field in rebuilt
        )
        found: list[bytes] = []
        # Member indexes of collections this run does not rebuild stay as they are.
        kept = {f.hash_field for f in _member_indexed(self.mapper)} - rebuilt
        for keys in self.space.scan(self.layout.namespace_pattern, self.batch):
            for key in keys:
                parsed = self.layout.parse(key)
                if parsed.kind not in INDEX_KINDS and parsed.kind != "old_unique":
                    continue
                if parsed.kind == "eq" and parsed.field in kept:
                    continue
                if parsed.kind == "all":
                    if ids_rebuilt:
                        found.append(key)
                elif (everything and not self.indexes(parsed)) or parsed.field in rebuilt:
                    found.append(key)
            self.refresh()
        return found

    def indexes(self, parsed: Any) -> bool:
        field = self.fields.get(parsed.field)
        if field is None:
            return False
        if parsed.kind in ("unique", "old_unique"):
            return bool(field.unique)
        return bool(field.index == parsed.kind)

    def switch(self, candidates: list[bytes]) -> None:
        self.refresh()
        started = time.monotonic()
        reply = run(
            self.client,
            [(b"EVAL", SWITCH, 2, self.layout.marker, self.directory, self.token, *candidates)],
        )[0]
        self.summary.switch_ms = round((time.monotonic() - started) * 1000, 1)
        if isinstance(reply, ResponseError):
            raise MaintenanceError(f"the switch of {self.name} failed: {reply}")
        renamed, deleted = (int(n) for n in reply)
        if renamed < 0:
            raise RunLost(f"the reindex marker of {self.name} expired before the switch")
        self.summary.renamed, self.summary.deleted = renamed, deleted


class _Page:
    """The build-key writes of one page of entities."""

    def __init__(self, task: _Run) -> None:
        self.task = task
        self.layout = task.layout
        self.rebuilt = set(task.members)
        self.writes: dict[tuple[bytes, bytes], list[bytes]] = {}
        #: An expiring model's equality entries: build key → ids, written by
        #: ``expiry.SCORED_ADD`` with the instants ``H#exp`` holds at ``EXEC``.
        self.scored: dict[bytes, list[bytes]] = {}
        self.built: dict[bytes, bytes] = {}
        #: Unique claims: (build stripe, live stripe, field, value, id), answered after
        #: the writes (``HSETNX``: 0 when another entity claimed the value first).
        self.claims: list[tuple[bytes, bytes, MappedField, bytes, bytes]] = []
        self.claims_at = 0
        self.entities = 0
        self.entries = 0
        self.problems: list[Problem] = []

    def add(self, key: bytes, reply: Any, held: dict[MappedField, Any]) -> None:
        """One entity's entries: from its hash, and (``held``: ``SMEMBERS`` replies)
        from its indexed sets."""
        name = self.task.name
        if isinstance(reply, ResponseError):
            self.problems.append(Problem("wrong_type", name, show(key), None, "not a hash"))
            return
        values = executor.hash_reply(reply)
        if not values:
            return  # deleted since SCAN saw it
        ident = key[self.layout.entity_prefix_len() :]
        if not in_shard(self.task.mapper, ident):  # not this shard's to index
            detail = "in another shard than its id's: not indexed here (see check)"
            self.problems.append(Problem("wrong_shard", name, show(key), None, detail))
            return
        self.entities += 1
        expects, bad = expectations(self.task.mapper, values)
        for field, raw, exc in bad:
            if field.hash_field in self.rebuilt:
                detail = f"holds {raw[:60]!r}, which cannot be indexed ({exc})"
                self.problems.append(Problem("undecodable", name, show(key), field.name, detail))
        for expect in expects:
            member = ALL_IDS if expect.field is None else expect.field.hash_field
            if member not in self.rebuilt:
                continue
            self.entries += 1
            if expect.kind == "eq":
                self.members_of(b"SADD", expect.key).append(ident)
            elif expect.kind == "xeq":  # a sorted set scored by the instant (a set before)
                self.scored.setdefault(self.build_key(expect.key), []).append(ident)
            elif expect.kind == "all":
                self.members_of(b"ZADD", expect.key).extend((b"0", ident))
            elif expect.kind == "range":
                score = NO_VALUE if expect.score == float("inf") else repr(expect.score).encode()
                self.members_of(b"ZADD", expect.key).extend((score, ident))
            else:
                assert expect.field is not None and expect.value is not None
                built = self.build_key(expect.key)
                self.claims.append((built, expect.key, expect.field, expect.value, ident))
        for field, members in held.items():
            self.add_members(key, ident, field, members)

    def add_members(self, key: bytes, ident: bytes, field: MappedField, members: Any) -> None:
        name = self.task.name
        if isinstance(members, ResponseError):
            where = show(self.layout.members(field.hash_field, ident))
            self.problems.append(Problem("wrong_type", name, where, field.name, "not a set"))
            return
        for raw in members:
            try:
                value = field.index_key(bytes(raw))
            except Exception as exc:
                detail = f"holds the member {bytes(raw)[:60]!r}, which cannot be indexed ({exc})"
                self.problems.append(Problem("undecodable", name, show(key), field.name, detail))
                continue
            self.entries += 1
            self.members_of(b"SADD", self.layout.eq_index(field.hash_field, value)).append(ident)

    def members_of(self, command: bytes, live: bytes) -> list[bytes]:
        """The arguments of the page's one write to a build key (``SADD``/``ZADD``)."""
        return self.writes.setdefault((command, self.build_key(live)), [])

    def build_key(self, live: bytes) -> bytes:
        built = self.task.built_name(live)
        self.built[built] = live
        return built

    def commands(self) -> list[Command]:
        out: list[Command] = [(name, key, *args) for (name, key), args in self.writes.items()]
        if self.scored:
            counted: list[Any] = []
            for ids in self.scored.values():
                counted += (len(ids), *ids)
            keys = (self.layout.expiry, *self.scored)
            out.append((b"EVAL", SCORED_ADD, len(keys), *keys, *counted))
        if self.built:
            pairs = [k for pair in self.built.items() for k in pair]
            out.append((b"HSET", self.task.directory, *pairs))
        self.claims_at = len(out)
        out += [(b"HSETNX", built, value, ident) for built, _, _, value, ident in self.claims]
        return out


__all__ = ["DEFAULT_TTL", "ModelReindex", "ReindexReport", "RunLost", "reindex"]

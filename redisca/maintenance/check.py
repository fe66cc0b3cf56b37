"""check: compare every index key of a model with the entity hashes it stands for.

Three passes over the keyspace with ``SCAN``, batched and pipelined (``H`` is
the model's head, ``{P}`` or ``{G}P``: see ``docs/keylayout.rst``):

1. entities (``H:*``): each page of hashes is read and decoded, and what it
   calls for is probed in one more round trip (``SMISMEMBER`` and ``ZMSCORE``
   per index key, ``HMGET`` per unique stripe): its id in ``H#all`` (a model
   with a range index has none: its first range index holds the ids), its entry
   in each equality set and range sorted set (with the right score, ``+inf``
   where it holds no value), its unique values naming it. Each index key's
   expected size is counted;
2. the model's other keys (``H#*``): an index key holding more members than the
   entities that call for it has orphans, and only then is it read member by
   member; a unique field's stripes likewise, field by field. Keys the model
   does not use are reported too, and keys of an earlier layout (``reindex``
   converts them) as such: among them ``H#all`` on a model with a range index;
3. the layout before hash tags (``P:*`` and ``P#*`` of ``layout.untagged()``,
   where ``P`` is the bare prefix): each key found there is ``old_layout``, an
   entity hash that ``python -m redisca migrate`` moves or an old index key it
   deletes (``untagged.fate`` says which; a type it leaves is ``stray_key``),
   so data left behind by an upgrade never goes unnoticed. It costs one more
   ``SCAN`` of the whole keyspace per model (``MATCH`` filters on the server,
   but the cursor still walks every key; one pattern covers both namespaces)
   and a ``TYPE`` per key found, pipelined per page.

What the first two passes find is only a suspicion, since the application may
be committing meanwhile: each one is confirmed by a :class:`.Snapshot` read of
the keys involved before it is reported. Each commit is atomic, so a snapshot
never shows a commit half done.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from redis.exceptions import ResponseError

from ..conf import Client
from ..errors import MappingError
from ..mapping.keys import NO_VALUE, KeyLayout, head_shards, shard_of
from ..mapping.mapper import MappedField, Mapper
from ..session import executor
from ..session import sweep as sweeping
from .common import (
    Progress,
    Ticker,
    by_hash_field,
    each_shard,
    in_shard,
    model_name,
    read_marker,
    resolve_client,
    run,
    scan_hash,
    scan_members,
    select_mappers,
    show,
    to_float,
    type_of,
)
from .placement import Keyspace
from .problems import PlainSummary, Problem, ProblemReport, Snapshot
from .shardclaims import check as check_claims
from .shardclaims import covers, owned_kind
from .untagged import fate

#: Suspects confirmed per snapshot; a snapshot that keeps failing is split.
CONFIRM_GROUP = 25
CONFIRM_TRIES = 4

#: The Redis type of each kind of index key (and of an expiring model's ``H#exp``, whose
#: members are checked against the hashes as the all-ids index's are).
#: ``xeq``: an expiring model's equality index, a sorted set scored by each entity's
#: expiry instant (``+inf``: none); see ``MappedField.scored``.
TYPES = {
    "all": b"zset",
    "eq": b"set",
    "xeq": b"zset",
    "range": b"zset",
    "unique": b"hash",
    "expiry": b"zset",
}

#: Keys of other kinds whose type is checked (``members``: an indexed set's).
_OTHER_TYPES = {"marker": b"list", "guard": b"string", "members": b"set"}

#: The type an index key had in the layout before redisca 2.0, where it differs.
_OLD_TYPES = {"all": b"set", "unique": b"string"}

#: The command that probes many members of one index key at once (Redis 6.2).
_MULTI = {
    "all": b"ZMSCORE",
    "eq": b"SMISMEMBER",
    "xeq": b"ZMSCORE",
    "range": b"ZMSCORE",
    "unique": b"HMGET",
}

#: The command that counts an index key's entries (``member``: a collection's member
#: index, an equality set per member value).
_SIZE = {
    "all": b"ZCARD",
    "eq": b"SCARD",
    "xeq": b"ZCARD",
    "range": b"ZCARD",
    "unique": b"HLEN",
    "member": b"SCARD",
}

_INF = float("inf")

#: A suspect found in the second pass: (what to confirm, key, member, field).
Entry = tuple[str, bytes, bytes | None, MappedField | None]

#: An expiring model's ``H#exp`` is sized as the all-ids index is.
_SIZE["expiry"] = _SIZE["all"]


@attrs.define
class ModelSummary(PlainSummary):
    """What check saw of one model."""

    model: str
    prefix: str
    entities: int = 0
    index_keys: int = 0
    entries: int = 0
    problems: int = 0
    #: Suspicions neither confirmed nor ruled out: their keys kept changing.
    unconfirmed: int = 0
    #: Keys found among the names of the layout before hash tags (``P:*``, ``P#*``):
    #: each is a problem (``old_layout``, or ``stray_key`` for a type never written there).
    old_keys: int = 0
    #: A reindex was running: its build keys were left alone.
    reindexing: bool = False
    seconds: float = 0.0
    #: Entities expired and not yet swept (``python -m redisca sweep``), and the index
    #: entries and unique claims they still hold: what they left, not problems.
    expired: int = 0
    expired_entries: int = 0


@attrs.define
class CheckReport(ProblemReport):
    """``ok`` when no problem was found; ``problems`` lists each one."""

    problems: list[Problem] = attrs.field(factory=list)
    models: list[ModelSummary] = attrs.field(factory=list)


def check(
    registry_or_classes: Any,
    client: Client | None = None,
    *,
    models: Iterable[Any] | None = None,
    batch: int = 500,
    progress: Progress | None = None,
) -> CheckReport:
    """Check the indexes of every model of a registry (or of the classes given).

    ``models`` narrows the models (classes, class names or prefixes); ``batch`` is
    the number of keys read per round trip; ``progress(model, phase, done, total)``
    is called as the check advances. Nothing is written.
    """
    client = resolve_client(client)
    report = CheckReport()
    for mapper in select_mappers(registry_or_classes, models, sharded=True):

        def one(
            k: int, view: Mapper, shown: Progress | None, whole: Mapper = mapper
        ) -> tuple[list[Problem], Any]:
            return _ModelCheck(client, view, batch, shown, whole=whole, first=k == 0).run()

        summary: ModelSummary | None = None
        for found, part in each_shard(mapper, one, progress):
            report.problems += found
            summary = part if summary is None else _added(summary, part)
        assert summary is not None
        if covers(mapper):  # its unique claims: the whole model at once (shardclaims)
            started = time.monotonic()
            claims, leftovers = check_claims(client, mapper, max(1, batch))
            report.problems += claims
            summary.problems += len(claims)
            summary.expired_entries += leftovers
            summary.seconds = round(summary.seconds + time.monotonic() - started, 3)
        report.models.append(summary)
    return report


def _added(total: ModelSummary, part: ModelSummary) -> ModelSummary:
    """Two shards' summaries as one model's."""
    return ModelSummary(
        total.model,
        total.prefix,
        entities=total.entities + part.entities,
        index_keys=total.index_keys + part.index_keys,
        entries=total.entries + part.entries,
        problems=total.problems + part.problems,
        unconfirmed=total.unconfirmed + part.unconfirmed,
        old_keys=total.old_keys + part.old_keys,
        reindexing=total.reindexing or part.reindexing,
        seconds=round(total.seconds + part.seconds, 3),
        expired=total.expired + part.expired,
        expired_entries=total.expired_entries + part.expired_entries,
    )


@attrs.frozen
class Expect:
    """One index entry an entity's hash calls for."""

    kind: str  # "all", "eq", "xeq", "range" or "unique"
    key: bytes
    field: MappedField | None = None
    score: float | None = None
    raw: bytes | None = None
    #: A unique value's index form: its field in the stripe hash ``key``.
    value: bytes | None = None

    def arg(self, ident: bytes) -> bytes:
        """What a probe of ``key`` asks for: the id, or a unique stripe's value."""
        return self.value if self.value is not None else ident

    def probe(self, ident: bytes) -> tuple[Any, ...]:
        if self.kind in ("range", "all", "xeq"):
            return (b"ZSCORE", self.key, ident)
        if self.kind == "unique":
            return (b"HGET", self.key, self.value)
        return (b"SISMEMBER", self.key, ident)

    def verdict(self, ident: bytes, reply: Any) -> str | None:
        """The problem a probe's reply shows, if any (a unique owner needs a second look)."""
        if isinstance(reply, ResponseError):
            return "wrong_type"
        if self.kind == "all":
            return None if reply is not None else "missing_from_all"
        if self.kind == "eq":
            return None if reply else "missing_entry"
        if self.kind in ("range", "xeq"):  # xeq: scored by the entity's instant
            if reply is None:
                return "missing_entry"
            if self.score is None:  # an instant that could not be read
                return None
            return None if to_float(reply) == self.score else "wrong_score"
        if reply is None:
            return "missing_unique"
        return None if bytes(reply) == ident else "wrong_owner"


def expectations(
    mapper: Mapper, values: dict[bytes, bytes], instant: float | None = _INF
) -> tuple[list[Expect], list[Any]]:
    """The index entries a hash calls for, and its fields that cannot be read:
    ``(field, raw, exception)``. ``instant``: the entity's expiry instant (an expiring
    model's equality entries are scored by it; ``+inf``: none; ``None``: unknown, its
    scores are not checked)."""
    layout = mapper.layout
    # A model with a range index keeps every id in its first one: the range entry
    # below stands for the all-ids entry.
    expects = [] if layout.all_ids_is_range else [Expect("all", layout.all_ids)]
    bad: list[Any] = []
    for field in mapper.fields:
        raw = values.get(field.hash_field)
        if raw is None:
            if field.index == "range":  # no value: the entity sorts last, at +inf
                expects.append(Expect("range", layout.range_index(field.hash_field), field, _INF))
            continue
        try:
            field.decode(raw)
            if field.index == "eq":
                key = layout.eq_index(field.hash_field, field.index_key(raw))
                if field.scored:
                    expects.append(Expect("xeq", key, field, instant, raw))
                else:
                    expects.append(Expect("eq", key, field, raw=raw))
            elif field.index == "range":
                score = float(field.score(raw))
                key = layout.range_index(field.hash_field)
                expects.append(Expect("range", key, field, score, raw))
            if field.unique:
                value = field.index_key(raw)
                key = layout.unique_stripe(field.hash_field, value)
                expects.append(Expect("unique", key, field, raw=raw, value=value))
        except Exception as exc:
            bad.append((field, raw, exc))
    return expects, bad


def holds(field: MappedField, raw: Any, value: bytes | None) -> bool:
    """Whether an entity's stored ``raw`` gives the index key's ``value`` (ranges: any)."""
    if raw is None or isinstance(raw, ResponseError):
        return False
    if value is None:
        return True
    try:
        return bool(field.index_key(bytes(raw)) == value)
    except Exception:
        return True  # undecodable: the entity pass reports the value itself


class _ModelCheck:
    def __init__(
        self,
        client: Client,
        mapper: Mapper,
        batch: int,
        progress: Progress | None,
        *,
        whole: Mapper | None = None,
        first: bool = True,
    ) -> None:
        """``mapper``: the model, or one shard's view of it (``whole`` the model);
        ``first``: the layout before hash tags is scanned (once per model)."""
        self.client = client
        self.mapper = mapper
        self.whole = mapper if whole is None else whole
        self.first = first
        self.layout = mapper.layout
        self.batch = max(1, batch)
        self.progress = progress
        self.name = model_name(mapper)
        self.fields = by_hash_field(mapper)
        self.summary = ModelSummary(self.name, mapper.prefix)
        self.problems: dict[Problem, None] = {}
        #: Unique values (stripe, value) whose problem the entity pass already tells.
        self.told: set[tuple[bytes, bytes | None]] = set()
        #: Entity keys of the page being checked that are expired (not yet swept).
        self.expired: set[bytes] = set()
        #: The expiry instants of the page's entities (an expiring model's), by key;
        #: ``None`` when ``H#exp`` cannot be read (its scores are then not checked).
        self.instants: dict[bytes, float] | None = {}
        self.entity_suspects: dict[bytes, None] = {}
        #: Index keys (equality, range, all-ids) by how many entities call for them.
        self.expected: Counter[bytes] = Counter()
        #: ... and those an entity was missing from, or found of the wrong type.
        self.doubtful: set[bytes] = set()
        #: Unique values whose holder the entity pass saw named, by hash field.
        self.owned: Counter[bytes] = Counter()
        #: The unique stripes found, by hash field.
        self.stripes: dict[bytes, list[bytes]] = {}
        self.entry_suspects: dict[Entry, None] = {}
        self.marker_run: bytes | None = None
        #: The indexed collections (``Set``, ``References`` with ``index=True``).
        self.member_fields = [f for f in mapper.collections if f.indexed]
        #: A sharded model with a unique field: its claims are checked by shardclaims.
        self.claimed = covers(self.whole)

    def run(self) -> tuple[list[Problem], ModelSummary]:
        started = time.monotonic()
        self.space = Keyspace(self.client, self.mapper, "check")
        rebuild = read_marker(self.client, self.mapper)
        self.marker_run = rebuild.run if rebuild is not None else None
        self.summary.reindexing = rebuild is not None
        self.entity_pass()
        self.index_pass()
        if self.first:
            self.untagged_pass()
            if self.whole.shards > 1:
                self.other_layouts_pass()
        self.confirm()
        self.space.done()
        self.summary.seconds = round(time.monotonic() - started, 3)
        found = sorted(self.problems, key=lambda p: (p.key, p.kind, p.detail))
        self.summary.problems = len(found)
        return found, self.summary

    # -- pass 1: entities ---------------------------------------------------

    def entity_pass(self) -> None:
        total = run(self.client, [(b"ZCARD", self.layout.all_ids)])[0]
        ticker = Ticker(self.progress, self.name, "entities", _int(total))
        for keys in self.space.scan(self.layout.entity_pattern, self.batch):
            self.check_entities(keys)
            ticker.add(len(keys))
        ticker.finish()

    def check_entities(self, keys: list[bytes]) -> None:
        """One page: the hashes in one round trip, then what they call for in another,
        a command per index key (``SMISMEMBER``, ``ZMSCORE``, ``HMGET``)."""
        hashes = run(self.client, [(b"HGETALL", key) for key in keys])
        self.expired = self.expired_of(keys, hashes)
        probes: dict[tuple[bytes, bytes], list[tuple[bytes, bytes, Expect]]] = {}
        references: list[tuple[bytes, MappedField, bytes]] = []
        held: list[bytes] = []  # the ids of the page's entities with an indexed set
        for key, reply in zip(keys, hashes, strict=True):
            if isinstance(reply, ResponseError):
                self.entity_suspects[key] = None
                continue
            values = executor.hash_reply(reply)
            if not values:
                continue  # deleted since SCAN saw it
            self.summary.entities += 1
            ident = self.ident(key)
            if not in_shard(self.mapper, ident):
                self.problems[self.wrong_shard(key, ident)] = None
                continue
            instant = None if self.instants is None else self.instants.get(key, _INF)
            expects, bad = expectations(self.mapper, values, instant)
            if bad or not _utf8(ident):
                self.entity_suspects[key] = None
            references += self.references_of(key, values)
            if self.member_fields:
                held.append(ident)
            for expect in self.own(expects):
                group = (_MULTI[expect.kind], expect.key)
                probes.setdefault(group, []).append((key, ident, expect))
        commands = [
            (name, key, *(e.arg(i) for _, i, e in items)) for (name, key), items in probes.items()
        ]
        for items, reply in zip(probes.values(), run(self.client, commands), strict=True):
            answers = [reply] * len(items) if isinstance(reply, ResponseError) else reply
            for (key, ident, expect), answer in zip(items, answers, strict=True):
                self.tally(key, ident, expect, answer)
            self.summary.entries += len(items)
        self.check_references(references)
        if held:
            self.check_members(held)

    def check_members(self, idents: list[bytes]) -> None:
        """Each member of a page's indexed sets against its member index entry
        (``H#i:<field>:<member>`` must hold the id): one ``SMEMBERS`` per set, then one
        ``SMISMEMBER`` per member index key, in two round trips per page."""
        wanted = [(ident, f) for ident in idents for f in self.member_fields]
        sets = [(b"SMEMBERS", self.layout.members(f.hash_field, i)) for i, f in wanted]
        probes: dict[bytes, list[tuple[bytes, MappedField]]] = {}
        references: list[tuple[bytes, MappedField, bytes]] = []
        for (ident, field), reply in zip(wanted, run(self.client, sets), strict=True):
            if isinstance(reply, ResponseError):
                key = self.layout.members(field.hash_field, ident)
                self.entry_suspects[("type", key, None, field)] = None
                continue
            if field.is_reference:
                references += self.members_referred(ident, field, reply)
            for raw in reply:
                index = _member_index(self.layout, field, bytes(raw))
                if index is None:
                    continue  # cannot be indexed: no entry to look for
                self.expected[index] += 1
                probes.setdefault(index, []).append((ident, field))
        commands = [
            (b"SMISMEMBER", index, *(i for i, _ in items)) for index, items in probes.items()
        ]
        for (index, items), reply in zip(probes.items(), run(self.client, commands), strict=True):
            answers = [reply] * len(items) if isinstance(reply, ResponseError) else reply
            self.summary.entries += len(items)
            for (ident, field), answer in zip(items, answers, strict=True):
                if isinstance(answer, ResponseError):
                    self.entry_suspects[("type", index, None, field)] = None
                elif not answer:
                    self.entry_suspects[("member", index, ident, field)] = None
                    self.doubtful.add(index)
        self.check_references(references)

    def members_referred(
        self, ident: bytes, field: MappedField, members: Any
    ) -> list[tuple[bytes, MappedField, bytes]]:
        """A ``References`` set's members, as (the entity's key, field, the target's
        key): each is looked up as a reference is (``dangling_reference``)."""
        try:
            target = field.target_mapper()
        except MappingError:
            return []  # the target class is not mapped (yet): nothing to look up
        key = self.layout.entity_of(ident)
        found = []
        for raw in members:
            if _utf8(bytes(raw)):
                member = bytes(raw).decode()
                found.append((key, field, target.layout.for_id(member).entity(member)))
        return found

    def references_of(
        self, key: bytes, values: dict[bytes, bytes]
    ) -> list[tuple[bytes, MappedField, bytes]]:
        """An entity's references, as (its key, field, the target's key)."""
        found = []
        for field in self.whole.references:
            raw = values.get(field.hash_field)
            if raw is None or raw == NO_VALUE or not _utf8(raw):
                continue
            try:
                target = field.target_mapper()
            except MappingError:
                continue  # the target class is not mapped (yet): nothing to look up
            ident = raw.decode()
            found.append((key, field, target.layout.for_id(ident).entity(ident)))
        return found

    def check_references(self, references: list[tuple[bytes, MappedField, bytes]]) -> None:
        """A reference whose target hash is missing is reported, whatever its
        ``on_delete`` (one ``EXISTS`` per reference, in one round trip per page)."""
        references = [r for r in references if r[0] not in self.expired]  # refer to nothing
        if not references:
            return
        replies = run(self.client, [(b"EXISTS", target) for _, _, target in references])
        for (key, field, target), reply in zip(references, replies, strict=True):
            if reply == 0:
                detail = f"refers to {show(target)}, which does not exist"
                found = self.problem("dangling_reference", key, field.name, detail)
                self.problems[found] = None

    def expired_of(self, keys: list[bytes], hashes: list[Any]) -> set[bytes]:
        """The page's entities that are expired by the server's clock (an expiring model's
        only: one ``ZMSCORE`` of ``H#exp``), counted; each found in it counts toward its
        size."""
        if not self.mapper.expiring or not keys:
            return set()
        expiry = self.layout.expiry
        ids = [self.ident(key) for key in keys]
        now, scores = run(
            self.client, [sweeping.now_command(self.mapper), (b"ZMSCORE", expiry, *ids)]
        )
        if isinstance(scores, ResponseError):
            self.instants = None
            return set()  # not a sorted set: the index pass reports the key
        self.instants = {
            k: _INF if at is None else to_float(at) for k, at in zip(keys, scores, strict=True)
        }
        self.expected[expiry] += sum(score is not None for score in scores)
        gone = sweeping.expired_ids(scores, now)
        expired = {k for k, h, g in zip(keys, hashes, gone, strict=True) if g and h}
        self.summary.expired += len(expired)
        return expired

    def tally(self, key: bytes, ident: bytes, expect: Expect, answer: Any) -> None:
        verdict = expect.verdict(ident, answer)
        if key in self.expired:  # what it left: counted; missing or taken over, no matter
            if verdict is not None:
                return
            self.summary.expired_entries += 1
        if expect.kind == "unique":
            if verdict is None and expect.field is not None:
                self.owned[expect.field.hash_field] += 1
        else:
            self.expected[expect.key] += 1
            if verdict is not None:
                self.doubtful.add(expect.key)
        if verdict is not None:
            self.entity_suspects[key] = None

    # -- pass 2: index keys ---------------------------------------------------

    def index_pass(self) -> None:
        """Every index key's size against the entities that call for it: a key holding
        more members than that has orphans, and only such keys are read member by
        member. Unique stripes likewise: a field whose stripes hold more values than
        the entity pass saw named by their holders has a dangling one, and only such
        a field's stripes are read value by value."""
        ticker = Ticker(self.progress, self.name, "index keys")
        unique_sizes: Counter[bytes] = Counter()
        for keys in self.space.scan(self.layout.namespace_pattern, self.batch):
            sized: list[tuple[bytes, str, MappedField | None]] = []
            for key in keys:
                self.summary.index_keys += 1
                found = self.classify(key)
                if found is not None:
                    sized.append((key, *found))
            self.check_sizes(sized, unique_sizes)
            ticker.add(len(keys))
        for hash_field, size in unique_sizes.items():
            if size != self.owned[hash_field]:
                self.check_unique_field(self.fields[hash_field])
        ticker.finish()

    # -- pass 3: the layout before hash tags ------------------------------------------

    def untagged_pass(self) -> None:
        """Keys of the layout before hash tags, with what ``migrate`` does to each: a
        ``TYPE`` per key and, for an entity's, ``EXISTS`` of its new name, per page."""
        if not self.layout.tagged:
            return
        old = self.layout.untagged()
        ticker = Ticker(self.progress, self.name, "old layout")
        for keys in self.space.scan(old.pattern, self.batch):
            targets = [self.untagged_target(old, key) for key in keys]
            exists = [(b"EXISTS", t) for t in targets if t is not None]
            replies = run(self.client, [*((b"TYPE", k) for k in keys), *exists])
            types, taken = replies[: len(keys)], iter(replies[len(keys) :])
            for key, kind, target in zip(keys, types, targets, strict=True):
                held = bool(next(taken)) if target is not None else False
                found = self.untagged_problem(old, key, type_of(kind), target, held)
                if found is not None and found not in self.problems:
                    self.summary.old_keys += 1
                    self.problems[found] = None
            ticker.add(len(keys))
        ticker.finish()

    def other_layouts_pass(self) -> None:
        """Keys of the model's layouts with another shard count (``{P}``: one shard;
        ``{P@M.k.s}``: ``M``), which redisca does not read: a ``reshard`` not run yet,
        or stopped half-way. Each is ``old_layout``. A sharded model's only (another
        count's keys of a model of one shard would cost every model a scan of every
        master)."""
        whole = self.whole
        prefix = whole.prefix.encode()
        heads = {layout.hashtag for layout in whole.shard_layouts()}
        for pattern in (b"{" + prefix + b"}*", b"{" + prefix + b"@*"):
            for keys in self.space.scan(pattern, self.batch):
                for key in keys:
                    found = head_shards(prefix, key)
                    if found is None or found[0] in heads:
                        continue
                    detail = (
                        f"a key of the layout with {found[1]} shard(s), which redisca does "
                        f"not read (the model has {whole.shards}): python -m redisca "
                        f"reshard MODULE:registry {self.name} {whole.shards} moves its data"
                    )
                    problem = self.problem("old_layout", key, None, detail)
                    if problem not in self.problems:
                        self.summary.old_keys += 1
                        self.problems[problem] = None

    def untagged_target(self, old: KeyLayout, key: bytes) -> bytes | None:
        """Where ``migrate`` would move the key, were it an entity hash."""
        parsed = old.parse(key)
        if parsed.kind != "entity":
            return None
        return self.whole.layout.entity_of(parsed.value or b"")

    def untagged_problem(
        self, old: KeyLayout, key: bytes, kind: bytes, target: bytes | None, taken: bool
    ) -> Problem | None:
        """The problem a key of the untagged layout is, by what ``migrate`` does to it."""
        what = fate(old, key, kind)
        if what == "move" and target is not None:
            template = _UNTAGGED_KEPT if taken else _UNTAGGED_HASH
            detail = template.format(show(target))
        elif what == "delete":
            writer = "redisca 1.x" if target is not None else "redisca 2.0 development builds"
            detail = _UNTAGGED_INDEX.format(writer)
        elif kind == b"none":
            return None  # gone since SCAN saw it (a migrate running)
        else:
            return self.problem("stray_key", key, None, _UNTAGGED_OTHER.format(show(kind)))
        return self.problem("old_layout", key, None, detail)

    def check_sizes(
        self, keys: list[tuple[bytes, str, MappedField | None]], unique_sizes: Counter[bytes]
    ) -> None:
        commands = [(_SIZE[kind], key) for key, kind, _ in keys]
        for (key, kind, field), size in zip(keys, run(self.client, commands), strict=True):
            if isinstance(size, ResponseError):
                self.entry_suspects[("type", key, None, field)] = None
            elif kind == "unique" and field is not None:
                unique_sizes[field.hash_field] += int(size)
                self.stripes.setdefault(field.hash_field, []).append(key)
            elif int(size) != self.expected[key] or key in self.doubtful:
                if kind == "member" and field is not None:
                    self.check_member_index(key, field)
                else:
                    self.check_index(key, kind, field)

    def check_unique_field(self, field: MappedField) -> None:
        for stripe in dict.fromkeys(self.stripes.get(field.hash_field, [])):
            try:
                for pairs in scan_hash(self.client, stripe, self.batch):
                    self.check_unique_values(stripe, field, pairs)
            except ResponseError:
                self.entry_suspects[("type", stripe, None, field)] = None

    def own(self, expects: list[Expect]) -> list[Expect]:
        """The expectations this pass checks: a claimed model's unique ones are not."""
        return [e for e in expects if e.kind != "unique"] if self.claimed else expects

    def classify(self, key: bytes) -> tuple[str, MappedField | None] | None:
        """An index key's kind and field; anything else is a suspect or left alone."""
        parsed = self.layout.parse(key)
        if self.claimed and owned_kind(parsed.kind):
            return None  # a claim key of a sharded model: shardclaims checks it
        if parsed.kind == "marker":  # a reindex's; but commits cannot read one of another type
            self.entry_suspects[("type", key, None, None)] = None
            return None
        if parsed.kind == "guard":  # a counter commits bump
            self.entry_suspects[("type", key, None, None)] = None
            return None
        if parsed.kind in ("build", "build_dir") and parsed.run == self.marker_run:
            return None
        if parsed.kind == "old_unique":
            self.entry_suspects[("old", key, None, None)] = None
            return None
        if parsed.kind == "expiry":
            if self.mapper.expiring:
                return "expiry", None
            self.entry_suspects[("stray", key, None, None)] = None
            return None
        collection = next(
            (f for f in self.mapper.collections if f.hash_field == parsed.field), None
        )
        if collection is not None and parsed.kind == "eq" and collection.indexed:
            return "member", collection  # a member index: against the members' keys
        if collection is not None and parsed.kind == "members":
            return None  # read with its entity (pass 1)
        if parsed.kind not in TYPES:
            self.entry_suspects[("stray", key, None, None)] = None
            return None
        if parsed.kind == "all":
            if self.layout.all_ids_is_range:  # the layout before: its range index has them
                self.entry_suspects[("old", key, None, None)] = None
                return None
            return "all", None
        field = self.fields.get(parsed.field or b"")
        if field is None or not _indexes(field, parsed.kind):
            self.entry_suspects[("stray", key, None, None)] = None
            return None
        if parsed.kind == "eq" and field.scored:
            return "xeq", field
        return parsed.kind, field

    def check_index(self, key: bytes, kind: str, field: MappedField | None) -> None:
        value = self.layout.parse(key).value
        try:
            for members in scan_members(self.client, key, TYPES[kind], self.batch):
                self.summary.entries += len(members)
                entities = [self.layout.entity_of(m) for m, _ in members]
                if field is None:
                    probes: list[tuple[bytes, ...]] = [(b"EXISTS", e) for e in entities]
                elif kind == "range":
                    probes = [c for e in entities for c in _range_probes(e, field)]
                else:
                    probes = [(b"HGET", e, field.hash_field) for e in entities]
                replies = run(self.client, probes)
                for n, (member, score) in enumerate(members):
                    if field is None:
                        found = bool(replies[n])
                    elif kind == "range":
                        found = _in_range(replies[2 * n], replies[2 * n + 1], score)
                    else:
                        found = holds(field, replies[n], value)
                    if not found:
                        self.entry_suspects[(kind, key, member, field)] = None
        except ResponseError:
            self.entry_suspects[("type", key, None, field)] = None

    def check_member_index(self, key: bytes, field: MappedField) -> None:
        """Each id of a member index against the set of the entity it names (read only
        when the index holds more ids than the entity pass saw call for it)."""
        try:
            for members in scan_members(self.client, key, b"set", self.batch):
                self.summary.entries += len(members)
                idents = [m for m, _ in members]
                sets = [(b"SMEMBERS", self.layout.members(field.hash_field, i)) for i in idents]
                for ident, reply in zip(idents, run(self.client, sets), strict=True):
                    if not _holds_member(self.layout, field, reply, key):
                        self.entry_suspects[("member", key, ident, field)] = None
        except ResponseError:
            self.entry_suspects[("type", key, None, field)] = None

    def check_unique_values(
        self, stripe: bytes, field: MappedField, pairs: list[tuple[bytes, bytes]]
    ) -> None:
        """Each value of a stripe against the hash of the entity it names."""
        commands = [(b"HGET", self.layout.entity_of(owner), field.hash_field) for _, owner in pairs]
        self.summary.entries += len(pairs)
        for (value, _), raw in zip(pairs, run(self.client, commands), strict=True):
            if not holds(field, raw, value):
                self.entry_suspects[("unique", stripe, value, field)] = None

    # -- confirming -------------------------------------------------------------

    def confirm(self) -> None:
        suspects = len(self.entity_suspects) + len(self.entry_suspects)
        ticker = Ticker(self.progress, self.name, "confirm", suspects)
        for group in _groups(list(self.entity_suspects)):
            self.settle(group, self.confirm_entities)
            ticker.add(len(group))
        for group in _groups(list(self.entry_suspects)):
            self.settle(group, self.confirm_entries)
            ticker.add(len(group))
        ticker.finish()

    def settle(
        self, group: list[Any], confirm: Callable[[Snapshot, list[Any]], list[Problem]]
    ) -> None:
        """Confirm a group in one snapshot; a group whose keys keep changing is split."""
        for _ in range(CONFIRM_TRIES):
            with self.space.connection() as conn:
                snap = Snapshot(conn)
                found = confirm(snap, group)
                if snap.holds():
                    self.problems.update(dict.fromkeys(found))
                    return
        if len(group) > 1:
            half = len(group) // 2
            self.settle(group[:half], confirm)
            self.settle(group[half:], confirm)
        else:
            self.summary.unconfirmed += 1

    def confirm_entities(self, snap: Snapshot, keys: list[bytes]) -> list[Problem]:
        replies = snap.read(keys, [c for k in keys for c in ((b"TYPE", k), (b"HGETALL", k))])
        expired, instants = self.expired_in(snap, keys)
        found: list[Problem] = []
        probes: list[tuple[bytes, bytes, Expect]] = []
        for n, key in enumerate(keys):
            kind, reply = replies[2 * n], replies[2 * n + 1]
            if kind != b"hash":
                if kind != b"none":
                    found.append(
                        self.problem("wrong_type", key, None, f"a {show(kind)}, not a hash")
                    )
                continue
            ident = self.ident(key)
            if not _utf8(ident):
                found.append(self.problem("undecodable", key, None, "its id is not UTF-8"))
            instant = None if instants is None else instants.get(key, _INF)
            expects, bad = expectations(self.mapper, executor.hash_reply(reply), instant)
            for field, raw, exc in bad:
                name = field.codec.name if field.codec is not None else "id"
                detail = f"holds {raw[:60]!r}: not a valid {name} ({exc})"
                found.append(self.problem("undecodable", key, field.name, detail))
            if key not in expired:  # an expired entity's entries are leftovers
                probes += [(key, ident, e) for e in self.own(expects)]
        replies = snap.read([e.key for *_, e in probes], [e.probe(i) for _, i, e in probes])
        owned: list[tuple[bytes, Expect, bytes]] = []
        for (key, ident, expect), reply in zip(probes, replies, strict=True):
            verdict = expect.verdict(ident, reply)
            if verdict == "wrong_owner":
                owned.append((ident, expect, bytes(reply)))
            elif verdict == "wrong_type":  # told once, by the index key's own confirmation
                self.entry_suspects[("type", expect.key, None, expect.field)] = None
            elif verdict is not None:
                found.append(self.missing(verdict, key, ident, expect, reply))
        return found + self.owners(snap, owned)

    def expired_in(
        self, snap: Snapshot, keys: list[bytes]
    ) -> tuple[set[bytes], dict[bytes, float] | None]:
        """The entities among ``keys`` expired at the snapshot (``H#exp`` watched), and
        their instants."""
        if not self.mapper.expiring or not keys:
            return set(), {}
        expiry = self.layout.expiry
        ids = [self.ident(key) for key in keys]
        now, scores = snap.read(
            [expiry], [sweeping.now_command(self.mapper), (b"ZMSCORE", expiry, *ids)]
        )
        if isinstance(scores, ResponseError):
            return set(), None
        gone = sweeping.expired_ids(scores, now)
        instants = {
            k: _INF if at is None else to_float(at) for k, at in zip(keys, scores, strict=True)
        }
        return {k for k, g in zip(keys, gone, strict=True) if g}, instants

    def owners(self, snap: Snapshot, owned: list[tuple[bytes, Expect, bytes]]) -> list[Problem]:
        """Unique keys naming another entity: a duplicate if that one holds the value too."""
        keys = [self.layout.entity_of(owner) for *_, owner in owned]
        fields = [e.field.hash_field for _, e, _ in owned if e.field is not None]
        replies = snap.read(keys, [(b"HGET", k, f) for k, f in zip(keys, fields, strict=True)])
        found = []
        for (ident, expect, owner), raw in zip(owned, replies, strict=True):
            field = expect.field
            assert field is not None and expect.raw is not None
            self.told.add((expect.key, expect.value))
            if holds(field, raw, expect.value):
                kind = "duplicate_unique"
                detail = (
                    f"{show(ident)} and {show(owner)} both hold the value; it names {show(owner)}"
                )
            else:
                kind = "wrong_owner"
                detail = f"names {show(owner)}, but {show(ident)} holds the value"
            found.append(self.problem(kind, expect.key, field.name, _of(expect.value, detail)))
        return found

    def missing(
        self, verdict: str, key: bytes, ident: bytes, expect: Expect, reply: Any
    ) -> Problem:
        name = expect.field.name if expect.field is not None else None
        who = show(ident)
        if verdict == "missing_from_all":
            detail = f"{who} has a hash ({show(key)}) but is not in it"
        elif verdict == "wrong_score" and expect.kind == "xeq":
            at = "none (+inf)" if expect.score == _INF else repr(expect.score)
            detail = f"{who} has score {to_float(reply)!r}, its expiry instant is {at}"
        elif verdict == "wrong_score":
            detail = f"{who} has score {to_float(reply)!r}, its value gives {expect.score!r}"
        elif verdict == "missing_unique":
            self.told.add((expect.key, expect.value))
            detail = _of(expect.value, f"{who} holds the value, the stripe does not name it")
        elif expect.score == _INF and expect.kind == "range":
            detail = f"{who} holds no value, but is not in it (at {NO_VALUE.decode()})"
        else:
            detail = f"{who} holds the value, but is not in it"
        return self.problem(verdict, expect.key, name, detail)

    def confirm_entries(self, snap: Snapshot, group: list[Entry]) -> list[Problem]:
        found = [self.confirm_entry(snap, *entry) for entry in group]
        return [p for p in found if p is not None]

    def confirm_entry(
        self, snap: Snapshot, kind: str, key: bytes, member: bytes | None, field: MappedField | None
    ) -> Problem | None:
        name = field.name if field is not None else None
        parsed = self.layout.parse(key)
        if kind == "stray":
            marker = self.layout.marker
            exists, run_now = snap.read([key, marker], [(b"EXISTS", key), (b"LINDEX", marker, 0)])
            if not exists or (parsed.run is not None and parsed.run == run_now):
                return None
            return self.problem("stray_key", key, None, _stray_detail(parsed.kind))
        if kind == "old":
            if not snap.read([key], [(b"EXISTS", key)])[0]:
                return None
            if parsed.kind == "all":
                detail = _OLD_ALL.format(show(self.layout.all_ids))
                return self.problem("old_layout", key, None, detail)
            return self.problem("old_layout", key, None, _OLD_DETAIL["unique"])
        if kind == "type":
            now = snap.read([key], [(b"TYPE", key)])[0]
            expected = _OTHER_TYPES.get(parsed.kind) or TYPES[parsed.kind]
            if parsed.kind == "eq" and field is not None and field.scored:
                expected = TYPES["xeq"]  # a set here is the layout before: reindex
            if now in (expected, b"none"):
                return None
            if now == _OLD_TYPES.get(parsed.kind):
                return self.problem("old_layout", key, None, _OLD_DETAIL[parsed.kind])
            return self.problem(
                "wrong_type", key, name, f"a {show(now)}, not a {expected.decode()}"
            )
        if kind == "unique":
            return self.confirm_unique(snap, key, member, field)
        if kind == "member":
            assert member is not None and field is not None
            return self.confirm_member(snap, key, member, field)
        assert member is not None
        entity = self.layout.entity_of(member)
        if kind in ("all", "expiry"):
            present, exists = snap.read(
                [key, entity], [(b"ZSCORE", key, member), (b"EXISTS", entity)]
            )
            if present is not None and not isinstance(present, ResponseError) and not exists:
                stale = "stale_id" if kind == "all" else "stale_expiry"
                return self.problem(stale, key, None, f"{show(member)} has no hash")
            return None
        assert field is not None
        if kind == "eq":
            probes: list[tuple[bytes, ...]] = [(b"SISMEMBER", key, member)]
        elif kind == "xeq":
            probes = [(b"ZSCORE", key, member)]
        else:
            probes = [(b"ZSCORE", key, member), (b"EXISTS", entity)]
        present, *rest = snap.read([key, entity], [*probes, (b"HGET", entity, field.hash_field)])
        raw = rest[-1]
        if present in (0, None) or isinstance(present, ResponseError):
            return None
        if kind == "range" and _in_range(rest[0], raw, to_float(present)):
            return None
        if kind in ("eq", "xeq") and holds(field, raw, parsed.value):
            return None
        holding = "has no such value (or no hash)" if raw is None else f"holds {show(raw)!r}"
        return self.problem("orphan_entry", key, name, f"{show(member)} {holding}")

    def confirm_member(
        self, snap: Snapshot, key: bytes, ident: bytes, field: MappedField
    ) -> Problem | None:
        """A member index entry against the entity's set, both read in one snapshot: an
        entry naming an entity whose set lacks the member (or that does not exist) is
        stale, a member whose entry is missing is missing."""
        entity = self.layout.entity_of(ident)
        members = self.layout.members(field.hash_field, ident)
        present, held, exists = snap.read(
            [key, members, entity],
            [(b"SISMEMBER", key, ident), (b"SMEMBERS", members), (b"EXISTS", entity)],
        )
        if any(isinstance(r, ResponseError) for r in (present, held, exists)):
            return None  # a wrong type: told by the key's own confirmation
        value = self.layout.parse(key).value
        holds_it = bool(exists) and _holds_member(self.layout, field, held, key)
        shown = show(value or b"")
        if present and not holds_it:
            holding = f"its {field.name} lacks {shown!r}" if exists else "it has no hash"
            return self.problem("stale_member_entry", key, field.name, f"{show(ident)}: {holding}")
        if not present and holds_it:
            detail = f"{show(ident)} holds {shown!r} in {field.name}, but is not in it"
            return self.problem("missing_member_entry", key, field.name, detail)
        return None

    def confirm_unique(
        self, snap: Snapshot, key: bytes, value: bytes | None, field: MappedField | None
    ) -> Problem | None:
        assert value is not None
        owner = snap.read([key], [(b"HGET", key, value)])[0]
        if owner is None or isinstance(owner, ResponseError) or (key, value) in self.told:
            return None
        assert field is not None
        entity = self.layout.entity_of(bytes(owner))
        raw = snap.read([entity], [(b"HGET", entity, field.hash_field)])[0]
        if holds(field, raw, value):
            return None
        detail = _of(value, f"names {show(bytes(owner))}, which does not hold the value")
        return self.problem("dangling_unique", key, field.name, detail)

    # -- helpers ------------------------------------------------------------------

    def wrong_shard(self, key: bytes, ident: bytes) -> Problem:
        whole = self.whole.layout
        detail = (
            f"the id's shard is {shard_of(ident, whole.shards)} of {whole.shards} "
            f"({show(whole.entity_of(ident))}); redisca reads it there only"
        )
        return self.problem("wrong_shard", key, None, detail)

    def ident(self, key: bytes) -> bytes:
        return key[self.layout.entity_prefix_len() :]

    def problem(self, kind: str, key: bytes, field: str | None, detail: str) -> Problem:
        return Problem(kind, self.name, show(key), field, detail)


def _indexes(field: MappedField, kind: str) -> bool:
    return field.unique if kind == "unique" else field.index == kind


def _member_index(layout: KeyLayout, field: MappedField, raw: bytes) -> bytes | None:
    """The member index key of one stored member, ``None`` if its value cannot be
    indexed (undecodable)."""
    try:
        return layout.eq_index(field.hash_field, field.index_key(raw))
    except Exception:
        return None


def _holds_member(layout: KeyLayout, field: MappedField, members: Any, key: bytes) -> bool:
    """Whether an entity's set (an ``SMEMBERS`` reply) has a member indexed under the
    member index ``key``."""
    if isinstance(members, ResponseError) or not members:
        return False
    return any(_member_index(layout, field, bytes(m)) == key for m in members)


def _range_probes(entity: bytes, field: MappedField) -> tuple[tuple[bytes, ...], ...]:
    return (b"EXISTS", entity), (b"HGET", entity, field.hash_field)


def _in_range(exists: Any, raw: Any, score: float | None) -> bool:
    """Whether a range entry stands for an entity: it exists, and holds a value unless
    the score is ``+inf`` (a wrong score is the entity pass's ``wrong_score``)."""
    if not exists or isinstance(raw, ResponseError):
        return False
    return raw is not None or score == _INF


def _of(value: bytes | None, detail: str) -> str:
    """A unique problem's detail, naming the value (the key names only its stripe)."""
    return detail if value is None else f"value {show(value)!r}: {detail}"


_OLD_DETAIL = {
    "all": "the all-ids SET of the layout before redisca 2.0 (now a sorted set): "
    "`python -m redisca reindex` converts it",
    "unique": "a unique key of the layout before redisca 2.0 (a key per value, now "
    "stripe hashes): `python -m redisca reindex` converts it",
}

#: ``H#all`` on a model with a range index (one added since, or the layout before
#: redisca 2.0's development versions dropped it there).
_OLD_ALL = (
    "an all-ids set the model no longer keeps: it has a range index, and its first one, "
    "{}, holds every id; `python -m redisca reindex` builds that index from the hashes "
    "and deletes this key (until then queries of the model see only what the range "
    "index holds)"
)


_UNTAGGED_HASH = (
    "an entity hash of the layout before hash tags, which redisca no longer reads: "
    "`python -m redisca migrate` moves it to {} and indexes it"
)
_UNTAGGED_KEPT = (
    "an entity hash of the layout before hash tags, which redisca no longer reads; its "
    "new name {} holds an entity already (written since the upgrade), so `python -m "
    "redisca migrate` leaves both: compare them and delete one"
)
_UNTAGGED_INDEX = (
    "an index key of the layout before hash tags ({}), which redisca no longer reads: "
    "`python -m redisca migrate` deletes it and builds the indexes from the hashes"
)
_UNTAGGED_OTHER = (
    "a {} among the names of the layout before hash tags, which redisca never wrote "
    "there: `python -m redisca migrate` leaves it alone"
)


def _stray_detail(kind: str) -> str:
    return {
        "eq": "an equality index of a field that has none",
        "range": "a range index of a field that has none",
        "unique": "a unique key of a field that is not unique",
        "scratch": "a query's scratch key outside its transaction",
        "build": "a build key of a reindex that is not running",
        "build_dir": "the build directory of a reindex that is not running",
        "expiry": "expiry instants of a model that does not expire (not mapped with ttl= "
        "or expiring=True): its reads ignore them",
    }.get(kind, "not a key redisca writes")


def _groups(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + CONFIRM_GROUP] for i in range(0, len(items), CONFIRM_GROUP)]


def _int(reply: Any) -> int | None:
    return None if isinstance(reply, ResponseError) else int(reply)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


__all__ = ["TYPES", "CheckReport", "Expect", "ModelSummary", "check", "expectations", "holds"]

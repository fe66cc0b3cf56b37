"""Key layout: every key name comes from KeyLayout, and no id or value can make two things
share a key (property tests with awkward ids and values), checked again on a real server.
"""

import zlib

import attrs
import pytest
from helpers import as_str, guard_key, stripe_key, unique_owner
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

import redisca
from redisca import Email, Integer, Reference, Registry, Session, String
from redisca.mapping.keys import NAME_RE, RUN_RE, KeyLayout, ParsedKey

registry = Registry()


@registry.mapped(prefix="co")
@attrs.define
class Company:
    name: str = String(index=True)
    id: str | None = None


@registry.mapped(prefix="usr")
@attrs.define
class User:
    email: str = Email(field="eml", unique=True)
    age: int | None = Integer(index=True, default=None)
    tag: str | None = String(index=True, default=None)
    company: Company | None = Reference(Company, index=True, default=None)
    id: str | None = None


def test_layout_of_a_model():
    layout = redisca.inspect(User).layout
    assert isinstance(layout, KeyLayout) and layout.prefix == "usr"
    assert (layout.tag, layout.head, layout.hashtag) == (b"usr", b"{usr}", b"{usr}")
    assert layout.entity("01h") == b"{usr}:01h"
    assert layout.entity("") == b"{usr}:"
    assert layout.all_ids == b"{usr}#r:age"  # its first range index holds every id
    assert layout.all_ids_is_range and layout.all_set == b"{usr}#all"
    assert layout.eq_index(b"tag", b"a:b") == b"{usr}#i:tag:a:b"
    assert layout.range_index(b"age") == b"{usr}#r:age"
    # n = crc32(value) % 128, in decimal (docs/keylayout.rst)
    assert zlib.crc32(b"ann@x") % 128 == 113 and zlib.crc32(b"01h") % 128 == 90
    assert layout.unique_stripe(b"eml", b"ann@x") == b"{usr}#u:eml:113"
    assert layout.guard(b"01h") == b"{usr}#g:90"
    assert layout.unique_stripes(b"eml") == [b"{usr}#u:eml:%d" % n for n in range(128)]
    scratches = {layout.scratch() for _ in range(500)}
    assert len(scratches) == 500
    assert all(s.startswith(b"{usr}#t:") and len(s) > len(b"{usr}#t:") + 16 for s in scratches)


def test_the_layout_before_hash_tags_and_slot_groups():
    """``untagged()`` names the keys redisca wrote before hash tags (``migrate`` reads
    them); a slot group's models share the group's tag, the prefix after it."""
    old = redisca.inspect(User).layout.untagged()
    assert not old.tagged and old.entity("1") == b"usr:1" and old.all_set == b"usr#all"
    assert old.unique_stripe(b"eml", b"ann@x") == b"usr#u:eml:113"
    grouped = KeyLayout("post", b"at", "blog")
    assert grouped.tagged and (grouped.tag, grouped.head) == (b"blog", b"{blog}post")
    assert grouped.entity("1") == b"{blog}post:1" and grouped.all_ids == b"{blog}post#r:at"
    assert grouped.untagged().entity("1") == b"post:1"


@registry.mapped(prefix="gpost", slot_group="blog")
@attrs.define
class GroupedPost:
    title: str = String(unique=True)
    id: str | None = None


def test_key_for_and_slot_groups_on_the_mapper():
    assert redisca.inspect(User).key_for("a{b}") == "{usr}:a{b}"
    assert redisca.inspect(User).key_for(7) == "{usr}:7"
    mapper = redisca.inspect(GroupedPost)
    assert mapper.slot_group == "blog" and mapper.key_for("1") == "{blog}gpost:1"
    assert redisca.inspect(GroupedPost(title="t", id="9")).key == "{blog}gpost:9"
    with pytest.raises(redisca.ValidationError):
        mapper.key_for(None)  # type: ignore[arg-type]
    for bad in ("a:b", "{x}", "", "a b"):
        with pytest.raises(redisca.MappingError, match="slot_group"):
            thing = attrs.define(type("Thing", (), {"__annotations__": {"id": "str"}}))
            Registry().mapped(slot_group=bad)(thing)


@registry.mapped(prefix="two")
@attrs.define
class TwoRanges:
    tag: str | None = String(index=True, default=None)
    late: int | None = Integer(field="b", index=True, default=None)
    early: int | None = Integer(field="a", index=True, default=None)
    id: str | None = None


def test_the_all_ids_key_is_the_first_range_index_or_p_all():
    """``P#all`` only for a model without a range field; otherwise the index of its first
    range field in declaration order (not in name order), which holds every id."""
    two = redisca.inspect(TwoRanges)
    assert two.default_order is two.by_name["late"]
    assert two.layout.all_ids == b"{two}#r:b" and two.layout.all_ids_is_range
    assert two.layout.parse(two.layout.all_ids) == ParsedKey("range", b"b")
    company = redisca.inspect(Company).layout
    assert company.all_ids == company.all_set == b"{co}#all" and not company.all_ids_is_range
    assert redisca.inspect(Company).default_order is None
    assert company.parse(b"{co}#all") == ParsedKey("all")
    bare = KeyLayout("x")
    assert (bare.all_ids, bare.all_ids_is_range) == (b"{x}#all", False)
    assert KeyLayout("x", b"f").all_ids == KeyLayout("x").range_index(b"f") == b"{x}#r:f"


def test_inspect_prefix_and_key():
    assert redisca.inspect(User).prefix == "usr" and redisca.inspect(Company).prefix == "co"
    for ident in ("01h", "", "a:b", "#all", "line\nbreak", "ünï🙂"):
        user = User("a@b", id=ident)
        assert redisca.inspect(user).key == "{usr}:" + user.id
    assert redisca.inspect(User("a@b", id=7)).key == "{usr}:7"
    assert redisca.inspect(User("a@b")).key is None  # no id yet


# -- injectivity ------------------------------------------------------------------------------

AWKWARD = [
    "",
    ":",
    "::",
    "{",
    "}",
    "{x}",
    "*",
    "#",
    "\n",
    "line\nbreak",
    "ünï",
    "🙂",
    "all",
    "#all",
    "x#i:f:v",
    "i:eml:a",
    "{usr}:1",
    "{usr}#all",
    "#u:eml:x",
    "r:age",
    "t:00",
    ":all",
    "a:b",
]
NAMES = st.sampled_from(["usr", "co", "usr.x", "u", "usr-", "a.b", "all", "i", "t"]) | (
    st.from_regex(NAME_RE, fullmatch=True).filter(lambda s: len(s) < 12)
)
#: A model's (prefix, slot group): no group, or a group named like a prefix; or
#: (prefix, (shards, shard)): one shard of a sharded model.
SHARDS = st.sampled_from([2, 3, 16, 64, 1024]).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n - 1))
)
PREFIXES = st.tuples(NAMES, st.none() | NAMES) | st.tuples(NAMES, SHARDS)
FIELDS = st.sampled_from(["eml", "age", "tag", "all", "i", "u", "r", "a.b", "company"])
TEXT = (
    st.sampled_from(AWKWARD) | st.text(alphabet=":{}*#\nia é🙂.", max_size=8) | st.text(max_size=8)
)
VALUES = TEXT.map(str.encode) | st.binary(max_size=8)

DESCRIPTORS = st.one_of(
    st.tuples(st.just("entity"), PREFIXES, st.none(), TEXT),
    st.tuples(st.just("all_ids"), PREFIXES, st.none(), st.none()),
    st.tuples(st.just("eq_index"), PREFIXES, FIELDS, VALUES),
    st.tuples(st.just("range_index"), PREFIXES, FIELDS, st.none()),
    st.tuples(st.just("unique"), PREFIXES, FIELDS, VALUES),
    st.tuples(st.just("guard"), PREFIXES, st.none(), VALUES),
    st.tuples(st.just("tokens"), PREFIXES, FIELDS, VALUES),
    st.tuples(st.just("registry"), PREFIXES, st.none(), VALUES),
    st.tuples(st.just("marker"), PREFIXES, st.none(), st.none()),
    st.tuples(st.just("expiry"), PREFIXES, st.none(), st.none()),
    st.tuples(st.just("members"), PREFIXES, FIELDS, VALUES),
)
RUNS = st.from_regex(RUN_RE, fullmatch=True).map(lambda run: run[:10])
#: A reindex run's keys: its directory, and the build key of any live index key.
REINDEX = st.one_of(
    st.tuples(st.just("build_dir"), PREFIXES, RUNS, st.none()),
    st.tuples(st.just("build"), PREFIXES, RUNS, DESCRIPTORS.filter(lambda d: d[0] in INDEXES)),
)
INDEXES = ("all_ids", "eq_index", "range_index", "unique")


def layout_of(model):
    prefix, group = model
    if isinstance(group, tuple):
        return KeyLayout(prefix, shards=group[0], shard=group[1])
    return KeyLayout(prefix, group=group)


def build(descriptor):
    kind, prefix, field, value = descriptor
    layout = layout_of(prefix)
    if kind == "entity":
        return layout.entity(value)
    if kind == "all_ids":
        return layout.all_ids
    if kind == "marker":
        return layout.marker
    if kind == "expiry":
        return layout.expiry
    if kind == "build_dir":
        return layout.build_dir(field)
    if kind == "build":
        return layout.build(field, build((value[0], prefix, *value[2:])))
    if kind == "range_index":
        return layout.range_index(field.encode())
    if kind == "guard":
        return layout.guard(value)
    if kind == "registry":
        return layout.registry(value)
    if kind == "tokens":
        return layout.claim_tokens(field.encode(), value)
    if kind == "unique":
        return layout.unique_stripe(field.encode(), value)
    return getattr(layout, kind)(field.encode(), value)


def parse(key):
    """The left inverse of ``build``: the key alone tells what it is (hence: injective).
    A key starts with ``{tag}``; a name follows for a slot group's model only."""
    assert key.startswith(b"{"), key
    close = key.index(b"}")
    tag, after = key[1:close].decode(), key[close + 1 :]
    cut = min(i for i in (after.find(b":"), after.find(b"#")) if i >= 0)
    name, sep, rest = after[:cut].decode(), after[cut : cut + 1], after[cut + 1 :]
    prefix = (tag, None) if not name else (name, tag)
    if "@" in tag:  # a shard's tag: <prefix>@<shards>.<shard>.<s>; no name follows it
        assert not name, key
        base, numbers = tag.split("@")
        shards, shard, _ = numbers.split(".")
        prefix = (base, (int(shards), int(shard)))
    if sep == b":":
        return ("entity", prefix, None, rest.decode())
    if rest == b"all":
        return ("all_ids", prefix, None, None)
    if rest == b"x":
        return ("marker", prefix, None, None)
    if rest == b"exp":
        return ("expiry", prefix, None, None)
    kind, colon, rest = rest[:1], rest[1:2], rest[2:]
    assert colon == b":", key
    if kind == b"r":
        return ("range_index", prefix, rest.decode(), None)
    if kind == b"t":
        return ("scratch", prefix, None, rest)
    if kind == b"g":
        return ("guard", prefix, None, rest)
    if kind == b"c":
        return ("registry", prefix, None, rest)
    if kind == b"b":
        run, colon, live = rest.partition(b":")
        if not colon:
            return ("build_dir", prefix, run, None)
        return ("build", prefix, run, parse(layout_of(prefix).head + b"#" + live))
    field, _, value = rest.partition(b":")
    kinds = {b"i": "eq_index", b"u": "unique", b"o": "tokens", b"m": "members"}
    return (kinds[kind], prefix, field.decode(), value)


def _stripe(value):
    """A unique value's or an id's stripe, as the key names it: crc32 % 128, decimal."""
    return b"%d" % (zlib.crc32(value) % 128)


def _same(descriptor):
    """What a key tells of its descriptor: a build key names its live key by the build's
    prefix; a unique stripe and a guard tell their stripe, not the value or id."""
    kind, prefix, run, value = descriptor
    if kind == "build":
        return (kind, prefix, run, _same((value[0], prefix, *value[2:])))
    if kind in ("unique", "guard", "tokens", "registry"):
        return (kind, prefix, run, _stripe(value))
    return descriptor


def library_view(descriptor):
    """What ``KeyLayout.parse`` must return for the key of ``descriptor``."""
    kind, prefix, field, value = descriptor
    name = field.encode() if isinstance(field, str) else None
    if kind == "entity":
        return ParsedKey("entity", value=value.encode())
    if kind in ("all_ids", "marker", "expiry"):
        return ParsedKey({"all_ids": "all"}.get(kind, kind))
    if kind == "eq_index":
        return ParsedKey("eq", name, value)
    if kind == "members":
        return ParsedKey("members", name, value)
    if kind == "range_index":
        return ParsedKey("range", name)
    if kind == "unique":
        return ParsedKey("unique", name, _stripe(value))
    if kind in ("guard", "registry"):
        return ParsedKey(kind, value=_stripe(value))
    if kind == "tokens":
        return ParsedKey("tokens", name, _stripe(value))
    if kind == "build_dir":
        return ParsedKey("build_dir", run=field)
    live = build((value[0], prefix, *value[2:]))
    return ParsedKey("build", value=live, run=field)


@given(DESCRIPTORS | REINDEX)
def test_prop_every_key_tells_what_it_is(descriptor):
    assert parse(build(descriptor)) == _same(descriptor)
    assert layout_of(descriptor[1]).parse(build(descriptor)) == library_view(descriptor)


@given(DESCRIPTORS | REINDEX, TEXT)
def test_prop_every_key_of_a_model_hashes_to_its_tags_slot(descriptor, ident):
    """Braces in ids and values never move a key: Redis Cluster hashes the first
    ``{...}`` of a key, and the model's tag comes first."""
    tag = layout_of(descriptor[1]).tag
    assert key_slot(build(descriptor)) == key_slot(tag) == key_slot(b"{" + tag + b"}x")
    assert key_slot(layout_of(descriptor[1]).entity(ident)) == key_slot(tag)


BRACES = ["a{b}", "{b}a", "}{", "{}", "{", "}", "{}{x}", "{usr}", "x}{y", ""]


def test_the_clusters_own_keyslot_puts_every_key_in_its_tags_slot(redis_cluster):
    """What the property above checks with redis-py's ``key_slot``, a cluster node's own
    ``CLUSTER KEYSLOT`` says too: ids and values with ``{``, ``}`` and ``{}`` never move
    a key; in the layout before hash tags, they did."""
    node = redis_cluster.masters[0].client()
    try:

        def slot(key):
            return int(node.execute_command("CLUSTER", "KEYSLOT", key))

        for model in (User, GroupedPost):
            layout = redisca.inspect(model).layout
            home = slot(layout.hashtag)
            for text in BRACES:
                raw = text.encode()
                keys = [
                    layout.entity(text), layout.eq_index(b"tag", raw), layout.all_ids,
                    layout.unique_stripe(b"eml", raw), layout.guard(raw), layout.marker,
                    layout.members(b"tags", raw),
                    layout.build(b"ab", layout.eq_index(b"tag", raw)), layout.build_dir(b"ab"),
                ]  # fmt: skip
                assert {k: slot(k) for k in keys} == dict.fromkeys(keys, home)
        assert home == slot(b"blog") != slot(b"gpost")  # a group's slot is its name's
        assert slot(b"usr:a{x}") == slot(b"x") != slot(b"{usr}:a{x}") == slot(b"usr")
    finally:
        node.close()


@given(PREFIXES, FIELDS, VALUES)
def test_prop_old_unique_keys_are_told_from_stripes(prefix, field, value):
    """A unique key of the layout before 2.0 (``H#u:<field>:<value>``) parses as such,
    unless its value is a stripe's name (0..127 in decimal): only its type tells then."""
    layout = layout_of(prefix)
    head = layout.head
    parsed = layout.parse(b"%s#u:%s:%s" % (head, field.encode(), value))
    stripe = value in {b"%d" % n for n in range(128)}
    assert parsed == ParsedKey("unique" if stripe else "old_unique", field.encode(), value)
    if not stripe:
        with pytest.raises(ValueError):
            layout.builder(b"ab")(b"%s#u:%s:%s" % (head, field.encode(), value))


@given(st.lists(DESCRIPTORS | REINDEX, min_size=2, max_size=30))
def test_prop_distinct_descriptors_give_distinct_keys(descriptors):
    """Distinct up to the stripe: values (ids) of one stripe share its hash (counter)."""
    keys = {}
    for descriptor in descriptors:
        key = build(descriptor)
        assert keys.setdefault(key, _same(descriptor)) == _same(descriptor), key


@given(PREFIXES, TEXT, DESCRIPTORS.filter(lambda d: d[0] != "entity"))
def test_prop_no_entity_key_is_an_index_key(prefix, ident, other):
    entity = layout_of(prefix).entity(ident)
    assert entity != build(other)
    scratch = layout_of(other[1]).scratch()
    assert parse(scratch)[:2] == ("scratch", other[1]) and scratch != build(other)


@given(
    st.sampled_from([User, Company, GroupedPost]),
    st.sampled_from([User, Company, GroupedPost]),
    TEXT,
    TEXT,
)
def test_prop_two_models_never_share_entity_keys(a, b, id_a, id_b):
    key_a = redisca.inspect(a).key(id_a)
    key_b = redisca.inspect(b).key(id_b)
    assert (key_a == key_b) == (a is b and id_a == id_b)


# -- on a real server -------------------------------------------------------------------------

IDS = ["all", "#all", "", "a:b", "{x}", "*", "line\nbreak", "ünï🙂", "x#i:f:v", "{usr}#all", ":"]
TAGS = ["all", ":", "{x}", "*", "", "line\nbreak", "a:b", "#all", "all", None, "x#i:f:v"]


def awkward_data():
    companies = [Company("all", id="all"), Company("#all", id=""), Company("a:b", id="{usr}:all")]
    users = [
        User(f"U{n}:{ident!r}@Ex.{{x}}*", age=n, tag=tag, company=companies[n % 3], id=ident)
        for n, (ident, tag) in enumerate(zip(IDS, TAGS, strict=True))
    ]
    return companies, users


def stripes(users):
    return {as_str(stripe_key("usr", "eml", u.email.lower())) for u in users}


def guards(prefix, entities):
    return {as_str(guard_key(prefix, e.id)) for e in entities}


def expected_keys(companies, users, gone=()):
    """Every key of the data; guard stripes of every entity ever written (gone ones too:
    a guard counts commits and stays)."""
    keys = {"{usr}#r:age", "{co}#all"}  # usr#r:age holds every user: no usr#all
    keys |= guards("usr", [*users, *gone]) | guards("co", companies)
    keys |= {f"{{co}}:{c.id}" for c in companies} | {f"{{co}}#i:name:{c.name}" for c in companies}
    keys |= {f"{{usr}}:{u.id}" for u in users} | stripes(users)
    keys |= {f"{{usr}}#i:tag:{u.tag}" for u in users if u.tag is not None}
    keys |= {f"{{usr}}#i:company:{u.company.id}" for u in users}
    return keys


def scan(r):
    return {as_str(k) for k in r.scan_iter(count=1000)}


def test_awkward_ids_and_values_on_redis(r):
    companies, users = awkward_data()
    with Session(r) as session:
        session.add_all(users)
        session.commit()
    expected = expected_keys(companies, users)
    counted = 2 + 2 * 3 + 11 + len(stripes(users)) + 9 + 3
    counted += len(guards("usr", users)) + len(guards("co", companies))
    assert len(expected) == counted  # nothing coincides
    assert scan(r) == expected
    for user in users:
        key = f"{{usr}}:{user.id}"
        assert redisca.inspect(user).key == key
        assert as_str(r.type(key)) == "hash"
        assert as_str(r.hget(key, "eml")) == user.email
        assert unique_owner(r, "usr", "eml", user.email.lower()) == user.id
    assert {as_str(m) for m in r.zrange("{usr}#r:age", 0, -1)} == set(IDS)
    assert {as_str(m) for m in r.zrange("{co}#all", 0, -1)} == {"all", "", "{usr}:all"}
    assert {as_str(m) for m in r.smembers("{usr}#i:tag:all")} == {"all", "x#i:f:v"}
    assert {as_str(m) for m in r.smembers("{usr}#i:company:")} == {IDS[1], IDS[4], IDS[7], IDS[10]}
    ages = [(as_str(m), s) for m, s in r.zrange("{usr}#r:age", 0, -1, withscores=True)]
    assert ages == [(ident, float(n)) for n, ident in enumerate(IDS)]

    with Session(r) as session:
        loaded = session.get_many(User, IDS)
        for original, copy in zip(users, loaded, strict=True):
            assert copy is not original
            assert (copy.id, copy.email, copy.age, copy.tag) == (
                original.id,
                original.email,
                original.age,
                original.tag,
            )
            assert copy.company.id == original.company.id
            assert copy.company.name == original.company.name
        assert session.get(Company, "").name == "#all"


@pytest.mark.parametrize("ident", ["all", "#all", "", "{usr}#all"])
def test_deleting_an_awkward_id_touches_only_its_own_keys(r, ident):
    companies, users = awkward_data()
    with Session(r) as session:
        session.add_all(users)
        session.commit()
        victim = next(u for u in users if u.id == ident)
        session.delete(victim)
        session.commit()
    rest = [u for u in users if u.id != ident]
    assert scan(r) == expected_keys(companies, rest, gone=[victim])
    assert {as_str(m) for m in r.zrange("{usr}#r:age", 0, -1)} == {u.id for u in rest}
    with Session(r) as session:
        assert session.get(User, ident) is None
        assert [u.id for u in session.get_many(User, [u.id for u in rest])] == [u.id for u in rest]
